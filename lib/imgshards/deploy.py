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
import contextlib
import io
import json
import os
import re
import shlex
from typing import Iterator

import yaml

from imgshards.config import ConfigError, load_config
from imgshards.jobs import JOBS, console_script, job_parser
from imgshards.session import spark_defaults

PLACEHOLDERS = ("input", "warehouse", "output", "workdir", "artifacts")
GENERATED_NOTE = "Generated from deploy/contract.yaml by scripts/gen_deploy.py: edit the contract, not this file."
DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
PACKED_PYTHON = "./environment/bin/python"


class ContractError(ValueError):
    """A job contract or definition that names a job, argument or config key imgshards does not have."""


def check_invocation(job: str, args: list, where: str) -> None:
    """Raise ContractError unless ``job`` exists and takes ``args`` (its own parser decides, and every
    ``--set KEY=VALUE`` must be a valid config key and value)."""
    if job not in JOBS:
        raise ContractError(f"{where}: unknown job {job!r}; jobs: {', '.join(JOBS)}")
    parser = job_parser(job)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = parser.parse_args([str(a) for a in args])
    except SystemExit as e:
        message = errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else str(e)
        raise ContractError(f"{where}: job {job} rejects its arguments: {message}") from None
    try:
        load_config(None, parsed.overrides)
    except ConfigError as e:
        raise ContractError(f"{where}: job {job}: {e}") from None


def load_contract(path: str) -> dict:
    """The contract at ``path``, with every task's job, arguments and settings checked on every platform."""
    with open(path) as f:
        contract = yaml.safe_load(f)
    for name in contract["platforms"]:
        for task in contract["tasks"]:
            check_invocation(task["job"], task_args(contract, task, name), f"{path}: task {task['job']} on {name}")
    return contract


def _fill(text: str, values: dict) -> str:
    return re.sub(r"\{(%s)\}" % "|".join(PLACEHOLDERS), lambda m: values[m.group(1)], text)


def task_args(contract: dict, task: dict, platform: str) -> list:
    """The job arguments of ``task`` on ``platform``: its args, then ``--set`` for each setting."""
    spec = contract["platforms"][platform]
    values = {**spec["paths"], "artifacts": spec.get("artifacts", "")}
    settings = dict(contract.get("settings") or {})
    if task.get("gpu"):
        settings.update(contract.get("gpu_settings") or {})
    args = [_fill(a, values) for a in task["args"]]
    for key, value in settings.items():
        args += ["--set", f"{key}={_fill(str(value), values)}"]
    return args


def _gpu_tasks(contract: dict) -> list:
    return [t for t in contract["tasks"] if t.get("gpu")]


# --- Databricks: a bundle with a wheel artifact, one multi-task job, CPU and GPU job clusters ---------------

def databricks_job(contract: dict) -> dict:
    spec = contract["platforms"]["databricks"]
    conf = spark_defaults()  # Spark, Delta and the master come with the runtime
    clusters = [{"job_cluster_key": "cpu", "new_cluster": {
        "spark_version": spec["spark_version"], "node_type_id": spec["node_type_id"],
        "num_workers": spec["num_workers"], "data_security_mode": "SINGLE_USER", "spark_conf": conf}}]
    if _gpu_tasks(contract):
        clusters.append({"job_cluster_key": "gpu", "new_cluster": {
            "spark_version": spec["gpu_spark_version"], "node_type_id": spec["gpu_node_type_id"],
            "num_workers": spec["gpu_num_workers"], "data_security_mode": "SINGLE_USER",
            "spark_conf": {**conf, **contract["gpu_spark_conf"],
                           "spark.executor.resource.gpu.discoveryScript": spec["gpu_discovery_script"]}}})
    tasks = []
    previous = None
    for task in contract["tasks"]:
        libraries = [{"whl": "../dist/*.whl"}]
        if task.get("gpu"):
            libraries.append({"pypi": {"package": spec["dali"]}})
        entry = {
            "task_key": task["job"],
            "job_cluster_key": "gpu" if task.get("gpu") else "cpu",
            "python_wheel_task": {"package_name": "imgshards", "entry_point": console_script(task["job"]),
                                  "parameters": task_args(contract, task, "databricks")},
            "libraries": libraries,
        }
        if previous:
            entry["depends_on"] = [{"task_key": previous}]
        tasks.append(entry)
        previous = task["job"]
    return {"name": "imgshards-${bundle.target}", "max_concurrent_runs": 1, "job_clusters": clusters, "tasks": tasks}


def databricks_bundle(contract: dict) -> dict:
    paths = contract["platforms"]["databricks"]["paths"]
    variables = {name: {"description": f"--{name} of the jobs" if name != "workdir" else "run summaries (--set workdir)"}
                 for name in paths}

    def target(stage: str, mode: str) -> dict:
        base = f"/Volumes/main/imgshards_{stage}"
        return {"mode": mode, "variables": {"input": f"{base}/raw", "warehouse": f"{base}/delta",
                                            "output": f"{base}/shards", "workdir": f"{base}/work"}}

    return {
        "bundle": {"name": "imgshards"},
        "include": ["resources/*.yml"],
        "artifacts": {"imgshards_wheel": {
            "type": "whl", "path": ".",
            # Builds ../../dist's wheel and copies it here: a bundle uploads only files under its root.
            "build": "bash ../../scripts/package.sh --wheel-only --dist dist",
        }},
        "variables": variables,
        "targets": {"dev": {**target("dev", "development"), "default": True},
                    "prod": target("prod", "production")},
    }


# --- EMR: Serverless StartJobRun requests and EMR on EC2 RunJobFlow requests ------------------------------

def _artifact(spec: dict, name: str) -> str:
    if name not in spec["uploads"]:
        raise ContractError(f"platforms.emr.uploads names no {name!r}")
    return f"{spec['artifacts']}/{name}"


def _emr_spark_conf(spec: dict, gpu: bool) -> dict:
    conf = {**spark_defaults(), **DELTA_SQL_CONF}
    env = "imgshards-nospark-gpu-env.tar.gz" if gpu else "imgshards-nospark-env.tar.gz"
    conf["spark.archives"] = _artifact(spec, env) + "#environment"
    return conf


def emr_serverless_application(contract: dict) -> dict:
    spec = contract["platforms"]["emr"]
    return {"name": "imgshards", "releaseLabel": spec["release"], "type": "SPARK", "architecture": "X86_64",
            "autoStopConfiguration": {"enabled": True, "idleTimeoutMinutes": 15},
            "maximumCapacity": {"cpu": "64 vCPU", "memory": "256 GB", "disk": "1000 GB"}}


def emr_serverless_job_run(contract: dict, task: dict) -> dict:
    spec = contract["platforms"]["emr"]
    # EMR Serverless has no GPU workers: every task, preprocess included, runs on CPU (backend from the task).
    conf = {**_emr_spark_conf(spec, gpu=False), "spark.jars": spec["delta_jars"],
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": PACKED_PYTHON,
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": PACKED_PYTHON,
            "spark.executorEnv.PYSPARK_PYTHON": PACKED_PYTHON}
    args = task_args(contract, dict(task, gpu=False), "emr")
    return {
        "applicationId": spec["serverless_application_id"],
        "executionRoleArn": spec["serverless_execution_role"],
        "name": f"imgshards-{task['job']}",
        "jobDriver": {"sparkSubmit": {
            "entryPoint": _artifact(spec, f"jobs/{task['job']}.py"),
            "entryPointArguments": args,
            "sparkSubmitParameters": " ".join(f"--conf {k}={v}" for k, v in conf.items()),
        }},
        "configurationOverrides": {"monitoringConfiguration": {
            "s3MonitoringConfiguration": {"logUri": f"{spec['logs']}/emr-serverless/"}}},
    }


def emr_step(contract: dict, task: dict, gpu: bool) -> dict:
    spec = contract["platforms"]["emr"]
    conf = {**_emr_spark_conf(spec, gpu), "spark.yarn.appMasterEnv.PYSPARK_PYTHON": PACKED_PYTHON,
            "spark.executorEnv.PYSPARK_PYTHON": PACKED_PYTHON}
    args = ["spark-submit", "--deploy-mode", "cluster", "--archives", conf.pop("spark.archives")]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    args.append(_artifact(spec, f"jobs/{task['job']}.py"))
    args += task_args(contract, dict(task, gpu=gpu and task.get("gpu")), "emr")
    return {"Name": f"imgshards-{task['job']}", "ActionOnFailure": "CANCEL_AND_WAIT",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args}}


def emr_job_flow(contract: dict, gpu: bool) -> dict:
    spec = contract["platforms"]["emr"]
    configurations = [
        {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}},
    ]
    bootstrap = []
    if gpu:
        # EMR release guide, "emr-spark-rapids": YARN's GPU plugin, cgroups for GPU isolation, the dominant
        # resource calculator, and Spark's discovery script; pandas UDFs, so not the RAPIDS SQL plugin.
        configurations += [
            {"Classification": "spark", "Properties": {"enableSparkRapids": "false"}},
            {"Classification": "yarn-site", "Properties": {
                "yarn.nodemanager.resource-plugins": "yarn.io/gpu",
                "yarn.resource-types": "yarn.io/gpu",
                "yarn.nodemanager.resource-plugins.gpu.allowed-gpu-devices": "auto",
                "yarn.nodemanager.resource-plugins.gpu.path-to-discovery-executables": "/usr/bin",
                "yarn.nodemanager.linux-container-executor.cgroups.mount": "true",
                "yarn.nodemanager.linux-container-executor.cgroups.mount-path": "/spark-rapids-cgroup",
                "yarn.nodemanager.linux-container-executor.cgroups.hierarchy": "yarn",
                "yarn.nodemanager.container-executor.class":
                    "org.apache.hadoop.yarn.server.nodemanager.LinuxContainerExecutor"}},
            {"Classification": "container-executor", "Properties": {}, "Configurations": [
                {"Classification": "gpu", "Properties": {"module.enabled": "true"}},
                {"Classification": "cgroups", "Properties": {"root": "/spark-rapids-cgroup", "yarn-hierarchy": "yarn"}}]},
            {"Classification": "capacity-scheduler", "Properties": {
                "yarn.scheduler.capacity.resource-calculator":
                    "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"}},
            {"Classification": "spark-defaults", "Properties": {
                **contract["gpu_spark_conf"],
                "spark.executor.resource.gpu.discoveryScript": spec["gpu_discovery_script"]}},
        ]
        bootstrap = [{"Name": "cgroups for YARN GPU isolation",
                      "ScriptBootstrapAction": {"Path": _artifact(spec, "emr-gpu-cgroups.sh")}}]
    instance_type = spec["gpu_instance_type"] if gpu else spec["instance_type"]
    request = {
        "Name": "imgshards-gpu" if gpu else "imgshards",
        "ReleaseLabel": spec["release"],
        "LogUri": f"{spec['logs']}/emr/",
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Configurations": configurations,
        "Instances": {
            "InstanceGroups": [
                {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": spec["instance_type"], "InstanceCount": 1},
                {"Name": "core", "InstanceRole": "CORE", "InstanceType": instance_type,
                 "InstanceCount": spec["core_instances"]},
            ],
            "KeepJobFlowAliveWhenNoSteps": False,
        },
        "Steps": [emr_step(contract, task, gpu) for task in contract["tasks"]],
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "VisibleToAllUsers": True,
    }
    if bootstrap:
        request["BootstrapActions"] = bootstrap
    return request


# --- Kubernetes: one SparkApplication per job (kubeflow/spark-operator), and a GPU variant -----------------

def spark_application(contract: dict, task: dict, gpu: bool) -> dict:
    spec = contract["platforms"]["kubernetes"]
    conf = {**spark_defaults(), **DELTA_SQL_CONF}
    executor = {"cores": spec["executor_cores"], "instances": spec["executors"], "memory": spec["executor_memory"],
                "labels": {"app.kubernetes.io/name": "imgshards", "imgshards/job": task["job"]}}
    if gpu:
        conf.update(contract["gpu_spark_conf"])
        conf["spark.executor.resource.gpu.vendor"] = "nvidia.com"
        conf["spark.executor.resource.gpu.discoveryScript"] = spec["gpu_discovery_script"]
        executor["gpu"] = {"name": "nvidia.com/gpu", "quantity": 1}
    name = f"imgshards-{task['job']}" + ("-gpu" if gpu else "")
    return {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": spec["namespace"]},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": spec["gpu_image"] if gpu else spec["image"],
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": f"local:///opt/imgshards/jobs/{task['job']}.py",
            "arguments": task_args(contract, dict(task, gpu=gpu), "kubernetes"),
            "sparkVersion": spec["spark_version"],
            "sparkConf": conf,
            "restartPolicy": {"type": "Never"},
            "driver": {"cores": 1, "memory": spec["driver_memory"], "serviceAccount": spec["service_account"],
                       "labels": {"app.kubernetes.io/name": "imgshards", "imgshards/job": task["job"]}},
            "executor": executor,
        },
    }


# --- Rendering and reading back ------------------------------------------------------------------------------

def _yaml(data: dict) -> str:
    return f"# {GENERATED_NOTE}\n" + yaml.safe_dump(data, sort_keys=False, width=120)


def _json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"


def render(contract: dict) -> dict:
    """Every generated definition: path relative to ``deploy/`` -> file text."""
    files = {
        "databricks/databricks.yml": _yaml(databricks_bundle(contract)),
        "databricks/resources/imgshards.job.yml": _yaml({"resources": {"jobs": {"imgshards": databricks_job(contract)}}}),
        "emr/serverless/create-application.json": _json(emr_serverless_application(contract)),
        "emr/ec2/run-job-flow.json": _json(emr_job_flow(contract, gpu=False)),
    }
    if _gpu_tasks(contract):
        files["emr/ec2/run-job-flow-gpu.json"] = _json(emr_job_flow(contract, gpu=True))
    for task in contract["tasks"]:
        files[f"emr/serverless/start-job-run-{task['job']}.json"] = _json(emr_serverless_job_run(contract, task))
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
    parser.add_argument("--deploy-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "deploy"))
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
