"""The job definitions under deploy/, validated offline the way each platform's own tools would:

- they are exactly what deploy/contract.yaml generates (so they cannot drift from the jobs), and every job
  run they name passes that job's own argument parser and config schema;
- Databricks: every job through the ``databricks-bundles`` typed models (``Job.from_dict`` rejects unknown
  and missing fields and bad enum values), the bundle's variables, includes and paths checked by hand;
- EMR: every request through botocore's parameter validation against the real service models, plus the
  enum values and ``sparkSubmitParameters`` it does not check, and every uploaded artifact traced to a file;
- Kubernetes: every SparkApplication against the spark-operator CRD's openAPIV3Schema (vendored in
  ../shared) with unknown keys rejected, as the API server's pruning would not.

Each validator is also shown a definition edited into a wrong shape, and must reject it.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import re

import pytest
import yaml

from imgshards.deploy import contract as deploy_contract
from imgshards.deploy import generate as deploy

from helpers import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
CRD = os.path.join(os.path.dirname(ROOT), "shared", "vendor", "spark-operator", "sparkoperator.k8s.io_sparkapplications.yaml")


@pytest.fixture(scope="module")
def contract():
    return deploy_contract.load_contract(os.path.join(DEPLOY, "contract.yaml"))


@pytest.fixture(scope="module")
def files(contract):
    return deploy.render(contract)


def read(relpath: str) -> str:
    with open(os.path.join(DEPLOY, relpath)) as f:
        return f.read()


def test_definitions_are_what_the_contract_generates(files):
    assert len(files) == 21  # 14 for the Spark 4 line, 7 more for EMR 7 (Databricks: a second job in one file)
    for relpath, text in files.items():
        assert read(relpath) == text, f"deploy/{relpath} differs from the contract: run scripts/gen_deploy.py"
    committed = {os.path.relpath(p, DEPLOY) for p in glob.glob(os.path.join(DEPLOY, "**", "*.*"), recursive=True)
                 if deploy_contract.GENERATED_NOTE in open(p).read() or p.endswith(".json")}
    assert committed == set(files), "a generated definition is no longer generated: remove it"


def test_every_job_run_in_the_definitions_is_a_real_invocation(files):
    # Per runtime line: Databricks 4 tasks, EMR Serverless 4, EMR on EC2 4 + 4 (GPU); two lines of each. And
    # Databricks serverless 4, Kubernetes 4 + 1 (GPU preprocess).
    assert deploy.check_definitions(files) == 2 * (4 + 4 + 8) + 4 + 5


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("imgshards-preprocess", "imgshards-prepare"), "unknown job 'prepare'"),
    (lambda text: text.replace("workdir=${var.workdir}", "workdir_path=${var.workdir}", 1), "workdir_path"),
    (lambda text: text.replace("preprocess.backend=auto", "preprocess.backend=cuda"), "preprocess.backend"),
    (lambda text: text.replace("- --warehouse", "- --warehous", 1), "--warehous"),
])
def test_a_definition_naming_a_missing_job_argument_or_key_fails_naming_it(files, edit, message):
    relpath = "databricks/resources/imgshards.job.yml"
    edited = edit(files[relpath])
    assert edited != files[relpath]
    with pytest.raises(deploy_contract.ContractError, match=re.escape(message)):
        deploy.check_definitions({relpath: edited})


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tasks"][1].update(job="augment"), "unknown job 'augment'"),
    (lambda c: c["settings"].update({"ingest.colour": "red"}), "ingest.colour"),
    (lambda c: c["tasks"][0]["args"].append("--stream-now"), "--stream-now"),
])
def test_a_contract_naming_a_missing_job_or_key_fails_naming_it(tmp_path, edit, message):
    with open(os.path.join(DEPLOY, "contract.yaml")) as f:
        data = yaml.safe_load(f)
    edit(data)
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(deploy_contract.ContractError, match=re.escape(message)):
        deploy_contract.load_contract(str(path))


# --- Databricks ---------------------------------------------------------------------------------------------

def validate_databricks_bundle(bundle: dict, resources: dict, bundle_dir: str) -> None:
    from databricks.bundles.jobs import Job

    variables = set(bundle["variables"])
    for target, spec in bundle["targets"].items():
        missing = variables - set(spec.get("variables", {}))
        assert not missing, f"target {target} sets no value for {missing}"
    for pattern in bundle["include"]:
        assert glob.glob(os.path.join(bundle_dir, pattern)), f"include {pattern} matches nothing"
    for artifact in bundle["artifacts"].values():
        assert artifact["type"] == "whl"
        script = re.search(r"bash (\S+)", artifact["build"]).group(1)
        assert os.path.isfile(os.path.normpath(os.path.join(bundle_dir, artifact["path"], script))), script
    def check_wheel(path: str) -> None:  # relative to the resources file; the artifact builds into <bundle>/dist
        assert os.path.dirname(os.path.normpath(os.path.join(bundle_dir, "resources", path))) == \
            os.path.join(bundle_dir, "dist"), f"whl {path}"

    for name, job in resources["resources"]["jobs"].items():
        Job.from_dict(job)  # raises on unknown or missing fields and bad enum values
        used = set(re.findall(r"\$\{var\.([a-z_]+)\}", json.dumps(job)))
        assert used <= variables, f"job {name} uses undefined variables {used - variables}"
        clusters = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
        environments = {e["environment_key"]: e["spec"] for e in job.get("environments", [])}
        for spec in environments.values():  # serverless: the wheel comes through the environment
            wheels = [d for d in spec["dependencies"] if d.endswith(".whl")]
            assert spec["environment_version"] and wheels, spec
            for wheel in wheels:
                check_wheel(wheel)
        for task in job["tasks"]:
            # Python wheel tasks run on a job cluster, or on serverless with an environment (never both).
            assert (task.get("job_cluster_key") in clusters) != (task.get("environment_key") in environments), task["task_key"]
            for library in task.get("libraries", []):
                if "whl" in library:
                    check_wheel(library["whl"])
        gpu = [c["new_cluster"] for c in job.get("job_clusters", []) if c["job_cluster_key"] == "gpu"]
        for cluster in gpu:
            assert "gpu-ml" in cluster["spark_version"] and cluster["num_workers"] >= 1
            assert 0 < float(cluster["spark_conf"]["spark.task.resource.gpu.amount"]) < 1
            assert cluster["spark_conf"]["spark.executor.resource.gpu.discoveryScript"]
            assert cluster["data_security_mode"] == "SINGLE_USER"


def databricks_definitions(files):
    return (yaml.safe_load(files["databricks/databricks.yml"]),
            yaml.safe_load(files["databricks/resources/imgshards.job.yml"]))


def test_databricks_bundle_validates(files):
    pytest.importorskip("databricks.bundles", reason="databricks-bundles needs Python >= 3.10")
    bundle, resources = databricks_definitions(files)
    validate_databricks_bundle(bundle, resources, os.path.join(DEPLOY, "databricks"))
    jobs = resources["resources"]["jobs"]
    # The newest LTS with a Spark 4 key, and 15.4 LTS for the Spark 3.5 line; the same wheel in both.
    runtimes = {name: {c["new_cluster"]["spark_version"] for c in job.get("job_clusters", [])} for name, job in jobs.items()}
    assert runtimes == {"imgshards": {"17.3.x-scala2.13", "17.3.x-gpu-ml-scala2.13"},
                        "imgshards_spark35": {"15.4.x-scala2.12", "15.4.x-gpu-ml-scala2.12"},
                        "imgshards_serverless": set()}
    for name, job in jobs.items():
        assert [t["task_key"] for t in job["tasks"]] == ["ingest", "preprocess", "export", "report"]
        assert job["tasks"][1]["depends_on"] == [{"task_key": "ingest"}]
        if name == "imgshards_serverless":
            assert {t["environment_key"] for t in job["tasks"]} == {"imgshards"}
            assert "preprocess.backend=auto" not in job["tasks"][1]["python_wheel_task"]["parameters"]  # no GPUs
        else:
            assert {t["job_cluster_key"] for t in job["tasks"]} == {"cpu", "gpu"}
        # Unity Catalog: every task names the tables by the bundle's catalog and schema.
        for task in job["tasks"]:
            parameters = task["python_wheel_task"]["parameters"]
            assert "tables.catalog=${var.catalog}" in parameters and "tables.schema=${var.schema}" in parameters
    for target in bundle["targets"].values():
        values = target["variables"]
        for path in ("input", "warehouse", "output", "workdir"):
            assert values[path].startswith(f"/Volumes/{values['catalog']}/{values['schema']}/"), (path, values)


@pytest.mark.parametrize("edit, message", [
    (lambda b, r: r["resources"]["jobs"]["imgshards"]["tasks"][0]["python_wheel_task"].update(entrypoint="x"), "entrypoint"),
    (lambda b, r: r["resources"]["jobs"]["imgshards"]["job_clusters"][0]["new_cluster"].update(
        data_security_mode="SHARED_BY_ANYONE"), "SHARED_BY_ANYONE"),
    (lambda b, r: r["resources"]["jobs"]["imgshards"]["tasks"][0].update(job_cluster_key="tiny"), "ingest"),
    (lambda b, r: b["targets"]["prod"]["variables"].pop("output"), "output"),
    (lambda b, r: r["resources"]["jobs"]["imgshards"]["tasks"][0]["libraries"][0].update(whl="../../dist/*.whl"), "whl"),
    (lambda b, r: r["resources"]["jobs"]["imgshards_serverless"]["tasks"][2].update(environment_key="gpu"), "export"),
    (lambda b, r: r["resources"]["jobs"]["imgshards_serverless"]["environments"][0]["spec"].update(
        dependencies=["imgshards"]), "environment_version"),
])
def test_databricks_validation_rejects_a_wrong_shape(files, edit, message):
    pytest.importorskip("databricks.bundles", reason="databricks-bundles needs Python >= 3.10")
    bundle, resources = copy.deepcopy(databricks_definitions(files))
    edit(bundle, resources)
    with pytest.raises((ValueError, AssertionError), match=message):
        validate_databricks_bundle(bundle, resources, os.path.join(DEPLOY, "databricks"))


# --- EMR ------------------------------------------------------------------------------------------------------

def check_enums(value, shape, path: str) -> None:
    """The enum values botocore's validator lets through."""
    if shape.type_name == "structure":
        for key, item in value.items():
            check_enums(item, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list":
        for index, item in enumerate(value):
            check_enums(item, shape.member, f"{path}[{index}]")
    elif shape.type_name == "map":
        for key, item in value.items():
            check_enums(item, shape.value, f"{path}.{key}")
    elif shape.type_name == "string" and shape.enum and value not in shape.enum:
        raise ValueError(f"{path}: {value!r} is not one of {shape.enum}")


def validate_aws_request(service: str, operation: str, request: dict) -> None:
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape
    # The CLI and SDKs fill idempotency tokens themselves.
    request = {**{name: "token" for name, member in shape.members.items() if member.metadata.get("idempotencyToken")},
               **request}
    try:
        validate_parameters(request, shape)  # unknown keys, missing required ones, wrong types
    except ParamValidationError as e:
        raise ValueError(f"{operation}: {e}") from e
    check_enums(request, shape, operation)


def check_artifacts(request: dict, spec: dict) -> None:
    """Every artifact a request names is one of platforms.emr.uploads, copied from a file we have or build."""
    for url in re.findall(r"%s/[^\s\"#,]+" % re.escape(spec["artifacts"]), json.dumps(request)):
        name = url[len(spec["artifacts"]) + 1:]
        assert name in spec["uploads"], f"{url} is not in platforms.emr.uploads"
        source = spec["uploads"][name]
        if source.startswith("dist/"):  # built by scripts/package.sh --no-spark or deploy/emr/Dockerfile.env
            assert re.fullmatch(r"imgshards(-spark35)?-nospark(-gpu)?-env\.tar\.gz", os.path.basename(source)), source
        else:
            assert os.path.isfile(os.path.join(ROOT, source)), source


def check_packed_python(conf: dict, keys: tuple) -> None:
    assert conf["spark.archives"].endswith("#environment"), conf["spark.archives"]
    for key in keys:
        assert conf[key] == deploy_contract.PACKED_PYTHON, key


def validate_serverless_run(request: dict, spec: dict) -> None:
    validate_aws_request("emr-serverless", "StartJobRun", request)
    conf = deploy.spark_submit_conf(request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    check_packed_python(conf, ("spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON",
                               "spark.emr-serverless.driverEnv.PYSPARK_PYTHON", "spark.executorEnv.PYSPARK_PYTHON"))
    assert conf["spark.sql.extensions"] == deploy_contract.DELTA_SQL_CONF["spark.sql.extensions"]
    assert all(jar.startswith("/usr/share/aws/delta/lib/") for jar in conf["spark.jars"].split(","))
    check_artifacts(request, spec)


def validate_job_flow(request: dict, spec: dict) -> None:
    validate_aws_request("emr", "RunJobFlow", request)
    assert {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}} in request["Configurations"]
    for step in request["Steps"]:
        args = step["HadoopJarStep"]["Args"]
        assert step["HadoopJarStep"]["Jar"] == "command-runner.jar" and args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
        conf = {"spark.archives": args[args.index("--archives") + 1]}
        for index, word in enumerate(args):
            if word == "--conf":
                key, sep, value = args[index + 1].partition("=")
                assert sep, args[index + 1]
                conf[key] = value
        check_packed_python(conf, ("spark.yarn.appMasterEnv.PYSPARK_PYTHON", "spark.executorEnv.PYSPARK_PYTHON"))
    check_artifacts(request, spec)


@pytest.mark.parametrize("folder, release", [("emr", "emr-spark-8.0.0"), ("emr/spark35", "emr-7.13.0")])
def test_emr_requests_validate_against_the_service_models(files, contract, folder, release):
    """The Spark 4 line (emr-spark-8.0.0) in emr/, the Spark 3.5 line (EMR 7) in emr/spark35/."""
    pytest.importorskip("botocore")
    spec = contract["platforms"]["emr"]
    application = json.loads(files[f"{folder}/serverless/create-application.json"])
    validate_aws_request("emr-serverless", "CreateApplication", application)
    assert application["releaseLabel"] == release
    for job in ("ingest", "preprocess", "export"):
        validate_serverless_run(json.loads(files[f"{folder}/serverless/start-job-run-{job}.json"]), spec)
    validate_job_flow(json.loads(files[f"{folder}/ec2/run-job-flow.json"]), spec)
    gpu = json.loads(files[f"{folder}/ec2/run-job-flow-gpu.json"])
    assert gpu["ReleaseLabel"] == release
    validate_job_flow(gpu, spec)
    classifications = {c["Classification"]: c for c in gpu["Configurations"]}
    assert {"yarn-site", "container-executor", "capacity-scheduler", "spark-defaults"} <= set(classifications)
    assert classifications["spark-defaults"]["Properties"]["spark.executor.resource.gpu.discoveryScript"]
    environment = "imgshards-spark35" if folder.endswith("spark35") else "imgshards"
    assert f"/{environment}-nospark-gpu-env.tar.gz#environment" in json.dumps(gpu["Steps"][1])
    # Tables by name in the Glue Data Catalog database, external under the warehouse.
    glue = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
    assert classifications["spark-hive-site"]["Properties"]["hive.metastore.client.factory.class"] == glue
    run = json.loads(files[f"{folder}/serverless/start-job-run-ingest.json"])["jobDriver"]["sparkSubmit"]
    assert f"spark.hadoop.hive.metastore.client.factory.class={glue}" in run["sparkSubmitParameters"]
    assert f"tables.schema={spec['glue_database']}" in run["entryPointArguments"]
    assert "tables.external=true" in run["entryPointArguments"]


@pytest.mark.parametrize("relpath, edit, message", [
    ("emr/ec2/run-job-flow.json", lambda r: r["Steps"][0].update(ActionOnFailure="STOP"), "STOP"),
    ("emr/ec2/run-job-flow.json", lambda r: r["Instances"].update(InstanceGroup=[]), "InstanceGroup"),
    ("emr/ec2/run-job-flow.json", lambda r: r["Instances"]["InstanceGroups"][0].update(InstanceRole="LEADER"), "LEADER"),
    ("emr/ec2/run-job-flow.json",
     lambda r: r["Steps"][0]["HadoopJarStep"]["Args"].__setitem__(4, "s3://YOUR-BUCKET/imgshards/env.tar.gz#environment"),
     "env.tar.gz"),
    ("emr/serverless/start-job-run-ingest.json",
     lambda r: r["jobDriver"]["sparkSubmit"].update(entryPointArgs=[]), "entryPointArgs"),
    ("emr/serverless/start-job-run-ingest.json", lambda r: r.update(executionTimeoutMinutes="soon"), "executionTimeoutMinutes"),
    ("emr/serverless/start-job-run-ingest.json",
     lambda r: r["jobDriver"]["sparkSubmit"].update(sparkSubmitParameters="--conf spark.archives=x.tar.gz --py-files"),
     "--py-files"),
])
def test_emr_validation_rejects_a_wrong_shape(files, contract, relpath, edit, message):
    pytest.importorskip("botocore")
    request = json.loads(files[relpath])
    edit(request)
    validate = validate_job_flow if "job-flow" in relpath else validate_serverless_run
    with pytest.raises((ValueError, AssertionError, KeyError), match=re.escape(message)):
        validate(request, contract["platforms"]["emr"])


# --- Kubernetes -------------------------------------------------------------------------------------------------

def strict(schema):
    """The CRD schema with ``additionalProperties: false`` on every object that lists its properties."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if result.get("type") == "object" and "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    return result


@pytest.fixture(scope="module")
def spark_application_schema():
    pytest.importorskip("jsonschema")
    if not os.path.isfile(CRD):
        pytest.skip("../shared/vendor/spark-operator is not present (it is beside the project in CI)")
    with open(CRD) as f:
        crd = yaml.safe_load(f)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta2"]
    return strict(version["schema"]["openAPIV3Schema"])


def validate_spark_application(app: dict, schema: dict) -> None:
    import jsonschema

    jsonschema.validate(app, schema)  # ValidationError (not a ValueError) on unknown keys and bad values
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and app["kind"] == "SparkApplication"
    job_file = app["spec"]["mainApplicationFile"].removeprefix("local:///opt/imgshards/")
    assert os.path.isfile(os.path.join(ROOT, job_file)), job_file
    with open(os.path.join(DEPLOY, "kubernetes", "Dockerfile")) as f:
        dockerfile = f.read()
    assert "COPY jobs/ /opt/imgshards/jobs/" in dockerfile
    script = app["spec"]["sparkConf"].get("spark.executor.resource.gpu.discoveryScript")
    if script:
        assert app["spec"]["executor"]["gpu"]["quantity"] >= 1
        assert f" {script}\n" in dockerfile, f"the image has no {script}"


def test_spark_applications_validate_against_the_operator_crd(files, spark_application_schema):
    apps = {relpath: yaml.safe_load(text) for relpath, text in files.items() if relpath.startswith("kubernetes/")}
    assert len(apps) == 5
    for app in apps.values():
        validate_spark_application(app, spark_application_schema)
    gpu = apps["kubernetes/imgshards-preprocess-gpu.yaml"]["spec"]
    assert gpu["executor"]["gpu"] == {"name": "nvidia.com/gpu", "quantity": 1}
    assert "--set" in gpu["arguments"] and "preprocess.backend=auto" in gpu["arguments"]


@pytest.mark.parametrize("edit, message", [
    (lambda a: a["spec"]["executor"].update(gpus=1), "gpus"),
    (lambda a: a["spec"].update(mode="batch"), "batch"),
    (lambda a: a["spec"].pop("sparkVersion"), "sparkVersion"),
    (lambda a: a["spec"]["driver"].update(cores="one"), "one"),
    (lambda a: a["spec"].update(mainApplicationFile="local:///opt/imgshards/jobs/train.py"), "train.py"),
])
def test_spark_application_validation_rejects_a_wrong_shape(files, spark_application_schema, edit, message):
    import jsonschema

    app = yaml.safe_load(files["kubernetes/imgshards-ingest.yaml"])
    edit(app)
    with pytest.raises((jsonschema.ValidationError, AssertionError), match=re.escape(message)):
        validate_spark_application(app, spark_application_schema)
