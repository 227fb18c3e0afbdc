"""Databricks: the Asset Bundle and its jobs (python_wheel_task), for Unity Catalog: one job on job clusters
per runtime line (GPUs for preprocess), and one on serverless compute.
"""
from __future__ import annotations

from typing import Optional

from imgshards.deploy.contract import RUNTIMES, gpu_tasks, platform_spec, runtimes, task_args
from imgshards.jobs import console_script
from imgshards.session import spark_defaults


def databricks_jobs(contract: dict) -> dict:
    """One job per runtime line on job clusters: ``imgshards`` on the default one, ``imgshards_<runtime>`` on
    the others; and ``imgshards_serverless``."""
    jobs = {("imgshards" if runtime == RUNTIMES[0] else f"imgshards_{runtime}"): databricks_job(contract, runtime)
            for runtime in runtimes(contract, "databricks")}
    jobs["imgshards_serverless"] = databricks_serverless_job(contract)
    return jobs


def _wheel_task(contract: dict, task: dict, previous: Optional[str], gpu: bool) -> dict:
    entry = {
        "task_key": task["job"],
        "python_wheel_task": {"package_name": "imgshards", "entry_point": console_script(task["job"]),
                              "parameters": task_args(contract, dict(task, gpu=gpu), "databricks")},
    }
    if previous:
        entry["depends_on"] = [{"task_key": previous}]
    return entry


def databricks_serverless_job(contract: dict) -> dict:
    """The pipeline on serverless compute (a Spark Connect session; docs/clusters.md says what degrades):
    the wheel comes through the tasks' environment, every task runs on CPU, and Spark settings are the
    platform's (serverless takes none from a job)."""
    spec = platform_spec(contract, "databricks", RUNTIMES[0])
    tasks, previous = [], None
    for task in contract["tasks"]:
        tasks.append({**_wheel_task(contract, task, previous, gpu=False), "environment_key": "imgshards"})
        previous = task["job"]
    return {"name": "imgshards-serverless-${bundle.target}", "max_concurrent_runs": 1, "tasks": tasks,
            "environments": [{"environment_key": "imgshards", "spec": {
                "environment_version": spec["serverless_environment_version"], "dependencies": ["../dist/*.whl"]}}]}


def databricks_job(contract: dict, runtime: str) -> dict:
    spec = platform_spec(contract, "databricks", runtime)
    conf = spark_defaults()  # Spark, Delta and the master come with the runtime
    clusters = [{"job_cluster_key": "cpu", "new_cluster": {
        "spark_version": spec["spark_version"], "node_type_id": spec["node_type_id"],
        "num_workers": spec["num_workers"], "data_security_mode": "SINGLE_USER", "spark_conf": conf}}]
    if gpu_tasks(contract):
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
        tasks.append({**_wheel_task(contract, task, previous, gpu=bool(task.get("gpu"))),
                      "job_cluster_key": "gpu" if task.get("gpu") else "cpu", "libraries": libraries})
        previous = task["job"]
    name = "imgshards" if runtime == RUNTIMES[0] else f"imgshards-{runtime}"
    return {"name": f"{name}-${{bundle.target}}", "max_concurrent_runs": 1, "job_clusters": clusters, "tasks": tasks}


_VARIABLES = {
    "catalog": "the Unity Catalog catalog of the tables (tables.catalog)",
    "schema": "the schema of the tables images, quarantine, duplicates and processed (tables.schema), and of the Volumes",
    "input": "--input of the jobs: the raw images (a Volume path)",
    "warehouse": "--warehouse of the jobs: the run state and the stream's checkpoint (a Volume path)",
    "output": "--output of the jobs: the shards and the report (a Volume path)",
    "workdir": "run summaries (--set workdir; a Volume path)",
}


def databricks_bundle(contract: dict) -> dict:
    spec = contract["platforms"]["databricks"]
    used = set(spec["paths"]) | {"catalog", "schema"}
    variables = {name: {"description": text} for name, text in _VARIABLES.items() if name in used}

    def target(stage: str, mode: str) -> dict:
        catalog, schema = "main", f"imgshards_{stage}"
        volumes = {name: f"/Volumes/{catalog}/{schema}/{volume}" for name, volume in spec["volumes"].items()}
        return {"mode": mode, "variables": {"catalog": catalog, "schema": schema, **volumes}}

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
