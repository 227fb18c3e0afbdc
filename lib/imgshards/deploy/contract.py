"""The job contract of deploy/contract.yaml: its tasks and their arguments, checked against the jobs
themselves (:func:`check_invocation`: a task whose job, argument or ``--set`` key does not exist fails).
"""
from __future__ import annotations

import contextlib
import io
import re

import yaml

from imgshards.config import ConfigError, load_config
from imgshards.jobs import JOBS, get_job

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
    parser = get_job(job).parser()
    errors = io.StringIO()
    # A Databricks bundle variable (${var.schema}) stands for a value the bundle's target gives: checked as
    # its name, which is a valid value of every setting the contract gives one to.
    args = [re.sub(r"\$\{var\.([A-Za-z_]+)\}", r"\1", str(a)) for a in args]
    try:
        with contextlib.redirect_stderr(errors):
            parsed = parser.parse_args(args)
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
    """The job arguments of ``task`` on ``platform``: its args, then ``--set`` for each setting (the
    contract's, the platform's, and the GPU task's)."""
    spec = contract["platforms"][platform]
    values = {**spec["paths"], "artifacts": spec.get("artifacts", "")}
    settings = {**(contract.get("settings") or {}), **(spec.get("settings") or {})}
    if spec.get("glue_database"):
        settings.update({"tables.schema": spec["glue_database"], "tables.external": "true"})
    if task.get("gpu"):
        settings.update(contract.get("gpu_settings") or {})
    args = [_fill(a, values) for a in task["args"]]
    for key, value in settings.items():
        args += ["--set", f"{key}={_fill(str(value), values)}"]
    return args


# The runtime lines a platform's definitions are made for (scripts/setup.sh's stacks); the first is the default.
RUNTIMES = ("spark4", "spark35")


def runtimes(contract: dict, platform: str) -> list:
    """The runtime lines ``platform`` has definitions for, in :data:`RUNTIMES` order (one, unnamed, where
    the platform names none)."""
    named = contract["platforms"][platform].get("runtimes")
    if not named:
        return [RUNTIMES[0]]
    unknown = set(named) - set(RUNTIMES)
    if unknown:
        raise ContractError(f"platforms.{platform}.runtimes: unknown {sorted(unknown)}; known: {list(RUNTIMES)}")
    return [name for name in RUNTIMES if name in named]


def platform_spec(contract: dict, platform: str, runtime: str) -> dict:
    """``platforms.<platform>`` with the settings of its runtime line ``runtime`` merged in."""
    spec = dict(contract["platforms"][platform])
    spec.update((spec.pop("runtimes", None) or {}).get(runtime, {}))
    return spec


def gpu_tasks(contract: dict) -> list:
    return [t for t in contract["tasks"] if t.get("gpu")]


# --- Databricks: a bundle with a wheel artifact, one multi-task job, CPU and GPU job clusters ---------------
