"""Amazon EMR: EMR Serverless applications and job runs, and EC2 clusters' job flows with spark-submit steps.
"""
from __future__ import annotations

from imgshards.deploy.contract import DELTA_SQL_CONF, PACKED_PYTHON, ContractError, platform_spec, task_args
from imgshards.session import spark_defaults


def _artifact(spec: dict, name: str) -> str:
    if name not in spec["uploads"]:
        raise ContractError(f"platforms.emr.uploads names no {name!r}")
    return f"{spec['artifacts']}/{name}"


# Spark's Hive client on the AWS Glue Data Catalog (EMR release guide, "Use the AWS Glue Data Catalog as the
# Apache Hive metastore for Spark"): the tables by name (glue_database in the contract) are kept there.
GLUE_FACTORY = {"hive.metastore.client.factory.class":
                "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"}


def _emr_spark_conf(spec: dict, gpu: bool) -> dict:
    conf = {**spark_defaults(), **DELTA_SQL_CONF}
    env = f"{spec['environment']}-nospark{'-gpu' if gpu else ''}-env.tar.gz"
    conf["spark.archives"] = _artifact(spec, env) + "#environment"
    return conf


def emr_serverless_application(contract: dict, runtime: str) -> dict:
    spec = platform_spec(contract, "emr", runtime)
    return {"name": spec["environment"], "releaseLabel": spec["release"], "type": "SPARK", "architecture": "X86_64",
            "autoStopConfiguration": {"enabled": True, "idleTimeoutMinutes": 15},
            "maximumCapacity": {"cpu": "64 vCPU", "memory": "256 GB", "disk": "1000 GB"}}


def emr_serverless_job_run(contract: dict, task: dict, runtime: str) -> dict:
    spec = platform_spec(contract, "emr", runtime)
    # EMR Serverless has no GPU workers: every task, preprocess included, runs on CPU (backend from the task).
    conf = {**_emr_spark_conf(spec, gpu=False), "spark.jars": spec["delta_jars"],
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": PACKED_PYTHON,
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": PACKED_PYTHON,
            "spark.executorEnv.PYSPARK_PYTHON": PACKED_PYTHON}
    if spec.get("glue_database"):
        conf.update({f"spark.hadoop.{k}": v for k, v in GLUE_FACTORY.items()})
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


def emr_step(contract: dict, task: dict, gpu: bool, spec: dict) -> dict:
    conf = {**_emr_spark_conf(spec, gpu), "spark.yarn.appMasterEnv.PYSPARK_PYTHON": PACKED_PYTHON,
            "spark.executorEnv.PYSPARK_PYTHON": PACKED_PYTHON}
    args = ["spark-submit", "--deploy-mode", "cluster", "--archives", conf.pop("spark.archives")]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    args.append(_artifact(spec, f"jobs/{task['job']}.py"))
    args += task_args(contract, dict(task, gpu=gpu and task.get("gpu")), "emr")
    return {"Name": f"imgshards-{task['job']}", "ActionOnFailure": "CANCEL_AND_WAIT",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args}}


def emr_job_flow(contract: dict, gpu: bool, runtime: str) -> dict:
    spec = platform_spec(contract, "emr", runtime)
    configurations = [
        {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}},
    ]
    if spec.get("glue_database"):
        configurations.append({"Classification": "spark-hive-site", "Properties": dict(GLUE_FACTORY)})
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
        "Name": spec["environment"] + ("-gpu" if gpu else ""),
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
        "Steps": [emr_step(contract, task, gpu, spec) for task in contract["tasks"]],
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "VisibleToAllUsers": True,
    }
    if bootstrap:
        request["BootstrapActions"] = bootstrap
    return request


# --- Kubernetes: one SparkApplication per job (kubeflow/spark-operator), and a GPU variant -----------------
