"""Kubernetes: one SparkApplication (the Spark operator's CRD) per task.
"""
from __future__ import annotations

from imgshards.deploy.contract import DELTA_SQL_CONF, task_args
from imgshards.session import spark_defaults


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
