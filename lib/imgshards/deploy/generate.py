"""Job definitions for Databricks, EMR and Kubernetes, generated from one job contract (deploy/contract.yaml).

:func:`load_contract` reads the contract and checks every job, argument and config key it names against the
jobs themselves; :func:`render` turns it into the files under ``deploy/`` (path -> text);
:func:`invocations` reads (job, arguments) back out of any generated definition, so a definition edited by
hand is checked by the same rule (:func:`check_invocation`). The platforms' own validators (the
``databricks-bundles`` models, botocore's service models, the SparkApplication CRD) are applied in
tests/test_deploy.py. Nothing here talks to a platform.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from typing import Iterator

import yaml

from imgshards.deploy.contract import (
    GENERATED_NOTE,
    RUNTIMES,
    ContractError,
    check_invocation,
    gpu_tasks,
    load_contract,
    runtimes,
)
from imgshards.deploy.databricks import databricks_bundle, databricks_jobs
from imgshards.deploy.emr import emr_job_flow, emr_serverless_application, emr_serverless_job_run
from imgshards.deploy.kubernetes import spark_application


def _yaml(data: dict) -> str:
    return f"# {GENERATED_NOTE}\n" + yaml.safe_dump(data, sort_keys=False, width=120)


def _json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"


def render(contract: dict) -> dict:
    """Every generated definition: path relative to ``deploy/`` -> file text."""
    files = {
        "databricks/databricks.yml": _yaml(databricks_bundle(contract)),
        "databricks/resources/imgshards.job.yml": _yaml({"resources": {"jobs": databricks_jobs(contract)}}),
    }
    for runtime in runtimes(contract, "emr"):  # the default line in emr/, the others in emr/<runtime>/
        emr = "emr" if runtime == RUNTIMES[0] else f"emr/{runtime}"
        files[f"{emr}/serverless/create-application.json"] = _json(emr_serverless_application(contract, runtime))
        files[f"{emr}/ec2/run-job-flow.json"] = _json(emr_job_flow(contract, False, runtime))
        if gpu_tasks(contract):
            files[f"{emr}/ec2/run-job-flow-gpu.json"] = _json(emr_job_flow(contract, True, runtime))
        for task in contract["tasks"]:
            files[f"{emr}/serverless/start-job-run-{task['job']}.json"] = _json(
                emr_serverless_job_run(contract, task, runtime))
    for task in contract["tasks"]:
        files[f"kubernetes/imgshards-{task['job']}.yaml"] = _yaml(spark_application(contract, task, gpu=False))
        if task.get("gpu"):
            files[f"kubernetes/imgshards-{task['job']}-gpu.yaml"] = _yaml(spark_application(contract, task, gpu=True))
    return files


def _job_of_file(path: str) -> str:
    match = re.search(r"jobs/([a-z_]+)\.py$", path)
    if not match:
        raise ContractError(f"{path!r} is not a job entry file jobs/<job>.py")
    return match.group(1)


def invocations(relpath: str, text: str) -> Iterator[tuple]:
    """(job, args, where) for every job run a generated definition names."""
    if relpath.endswith("databricks/resources/imgshards.job.yml"):
        for job in yaml.safe_load(text)["resources"]["jobs"].values():
            for task in job["tasks"]:
                wheel = task["python_wheel_task"]
                name = wheel["entry_point"].removeprefix("imgshards-")
                yield name, wheel.get("parameters", []), f"{relpath}: task {task['task_key']}"
    elif "start-job-run-" in relpath:
        driver = json.loads(text)["jobDriver"]["sparkSubmit"]
        yield _job_of_file(driver["entryPoint"]), driver.get("entryPointArguments", []), relpath
    elif "run-job-flow" in relpath:
        for step in json.loads(text)["Steps"]:
            args = step["HadoopJarStep"]["Args"]
            [index] = [i for i, a in enumerate(args) if a.endswith(".py")]
            yield _job_of_file(args[index]), args[index + 1:], f"{relpath}: step {step['Name']}"
    elif relpath.startswith("kubernetes/") and relpath.endswith(".yaml"):
        spec = yaml.safe_load(text)["spec"]
        yield _job_of_file(spec["mainApplicationFile"]), spec.get("arguments", []), relpath


def check_definitions(files: dict) -> int:
    """Check every job run in ``files`` (path -> text) with :func:`check_invocation`; returns how many."""
    count = 0
    for relpath, text in files.items():
        for job, args, where in invocations(relpath, text):
            check_invocation(job, args, where)
            count += 1
    return count


def spark_submit_conf(parameters: str) -> dict:
    """``--conf k=v`` pairs of a sparkSubmitParameters string; ContractError for anything else in it."""
    words = shlex.split(parameters)
    conf = {}
    for flag, value in zip(words[::2], words[1::2]):
        if flag != "--conf" or "=" not in value:
            raise ContractError(f"sparkSubmitParameters: expected --conf key=value, got {flag} {value}")
        key, _, val = value.partition("=")
        conf[key] = val
    if len(words) % 2:
        raise ContractError(f"sparkSubmitParameters: {words[-1]!r} has no value")
    return conf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate deploy/ from deploy/contract.yaml")
    parser.add_argument("--deploy-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "deploy"))
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    contract = load_contract(os.path.join(args.deploy_dir, "contract.yaml"))
    files = render(contract)
    check_definitions(files)
    stale = []
    for relpath, text in files.items():
        path = os.path.join(args.deploy_dir, relpath)
        current = open(path).read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(relpath)
        if not args.check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    verb = "differ from the contract" if args.check else "written"
    print(f"{len(files)} definitions, {len(stale)} {verb}" + (": " + ", ".join(stale) if stale else ""))
    return 1 if args.check and stale else 0
