"""Databricks: the Jobs API definition and the Asset Bundle (python_wheel_task on job clusters).
"""
from __future__ import annotations

from imgshards.deploy.contract import RUNTIMES, gpu_tasks, platform_spec, runtimes, task_args
from imgshards.jobs import console_script
from imgshards.session import spark_defaults


def databricks_jobs(contract: dict) -> dict:
    """One job per runtime line: ``imgshards`` on the default one, ``imgshards_<runtime>`` on the others."""
    return {("imgshards" if runtime == RUNTIMES[0] else f"imgshards_{runtime}"): databricks_job(contract, runtime)
            for runtime in runtimes(contract, "databricks")}


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
    name = "imgshards" if runtime == RUNTIMES[0] else f"imgshards-{runtime}"
    return {"name": f"{name}-${{bundle.target}}", "max_concurrent_runs": 1, "job_clusters": clusters, "tasks": tasks}


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
