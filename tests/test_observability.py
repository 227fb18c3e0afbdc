"""What a run shows: its metrics on a real Pushgateway (Debian's prometheus-pushgateway on 127.0.0.1), the
Grafana dashboard's queries, progress lines, Spark's own Prometheus endpoints, and the HTML dataset report
opened in headless Chromium (Debian's chromium, driven by Playwright)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imgshards.jobs import history as history_job
from imgshards.jobs import ingest as ingest_job
from imgshards.jobs import pipeline as pipeline_job
from imgshards.observe import metrics, progress
from imgshards.runtime import background, workers
from imgshards.sample import make_sample_dataset

from helpers import ROOT, free_port, server_process

DASHBOARD = os.path.join(ROOT, "conf", "grafana", "imgshards-dashboard.json")
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def pushgateway():
    if not os.access(PUSHGATEWAY, os.X_OK):
        pytest.skip("prometheus-pushgateway is not installed (scripts/test.sh installs Debian's package where apt-get can)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"], url + "/-/ready"):
        yield url


def gateway_samples(url: str, job: str, run_id: str) -> dict:
    """{(name, frozenset(labels without job/run_id/instance)): value} of one run's group on the gateway."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("job") == job and s.labels.get("run_id") == run_id:
                labels = frozenset((k, v) for k, v in s.labels.items() if k not in ("job", "run_id", "instance"))
                out[(s.name, labels)] = s.value
    return out


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def captured(logger_name: str = "imgshards"):
    """The job's stdout and the log records of ``logger_name`` while the block runs."""
    handler, out = _Records(), io.StringIO()
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # as the jobs' own logging set-up has it (pytest's root logger says WARNING)
    try:
        with contextlib.redirect_stdout(out):
            yield handler.records, out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_summary(workdir: str, run_id: str, job: str) -> dict:
    with open(os.path.join(workdir, "runs", f"{run_id}-{job}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def pipeline_run(spark, pushgateway, tmp_path_factory):
    """The pipeline job (argument parsing, metrics push, progress and report included) on the embedded
    sample, with one augmented copy per training image."""
    work = tmp_path_factory.mktemp("observed")
    run_id = "observed-run"
    args = ["--run-id", run_id, "--warehouse", str(work / "warehouse"), "--output", str(work / "shards"),
            "--set", f"workdir={json.dumps(str(work))}", "--set", f"metrics.pushgateway={pushgateway}",
            "--set", "progress.interval_seconds=1", "--set", "preprocess.size=64",
            "--set", "preprocess.augment.copies=1", "--set", "preprocess.backend=dali-cpu"]
    with captured() as (records, out):
        code = pipeline_job.main(args, stop_session=False)
    assert code == 0, out.getvalue()
    return {"summary": run_summary(str(work), run_id, "pipeline"), "records": records, "stdout": out.getvalue(),
            "run_id": run_id, "work": work}


def test_pushgateway_holds_the_run_summary(pipeline_run, pushgateway):
    summary, run_id = pipeline_run["summary"], pipeline_run["run_id"]
    got = gateway_samples(pushgateway, "imgshards_pipeline", run_id)
    ingest, pre, export = summary["ingest"], summary["preprocess"], summary["export"]

    def value(name, **labels):
        return got[(name, frozenset(labels.items()))]

    assert value("imgshards_files_seen_total") == ingest["seen"]
    for outcome, key in (("ingested", "ingested"), ("duplicate", "duplicates"), ("quarantined", "quarantined"),
                         ("unchanged", "unchanged"), ("updated", "updated")):
        assert value("imgshards_files_total", outcome=outcome) == ingest[key]
    assert value("imgshards_files_total", outcome="skipped") == ingest["skipped_hidden"] + ingest["skipped_non_image"]
    assert ingest["quarantine_reasons"], "the sample has damaged files"
    for reason, n in ingest["quarantine_reasons"].items():
        assert value("imgshards_quarantined_files_total", stage="ingest", reason=reason) == n
    for key, n in pre["backends"].items():
        backend, _, device = key.partition(" on ")
        assert value("imgshards_images_processed_total", backend=backend, device=device) == n
    assert value("imgshards_augmented_copies_total") == pre["augmented"] > 0
    for split, n in export["rows"].items():
        assert value("imgshards_exported_rows_total", split=split) == n
    for stage, read in (("ingest", ingest["read_bytes"]), ("preprocess", pre["read_bytes"]), ("export", export["read_bytes"])):
        assert value("imgshards_read_bytes_total", stage=stage) == read > 0
    assert value("imgshards_written_bytes_total", stage="export") == export["written_bytes"] > 0
    for stage, seconds in summary["seconds"].items():
        assert value("imgshards_stage_duration_seconds", stage=stage) == pytest.approx(seconds)
    assert set(summary["seconds"]) == {"ingest", "preprocess", "export", "report", "pipeline"}
    assert value("imgshards_stage_images_per_second", stage="preprocess") == pytest.approx(
        pre["processed"] / summary["seconds"]["preprocess"])
    for table, version in summary["delta_versions"].items():
        if version is None:  # a table no run has made yet (forgotten, until the forget job runs): no sample
            assert ("imgshards_delta_table_version", frozenset({("table", table)})) not in got
        else:
            assert value("imgshards_delta_table_version", table=table) == version >= 0
    assert {t for t, v in summary["delta_versions"].items() if v is not None} == {
        "images", "quarantine", "duplicates", "processed", "label_conflicts"}  # the sample has a misfiled copy
    assert value("imgshards_label_conflicts_total", kind="duplicate") == ingest["label_conflicts"]["duplicate"] == 1
    for signal, n in ingest["quality"].items():
        assert value("imgshards_quality_flagged_images_total", signal=signal) == n
    assert value("imgshards_run_ok") == 1
    assert abs(value("imgshards_last_success_timestamp_seconds") - time.time()) < 600


def test_dashboard_queries_name_only_pushed_metrics(pipeline_run):
    """Every metric the dashboard queries is one the jobs push (names as exposed: counters end in _total)."""
    registry = metrics.build_registry({**pipeline_run["summary"], "ok": True})
    pushed = set()
    for family in registry.collect():
        pushed.add(family.name + "_total" if family.type == "counter" else family.name)
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(queries) >= 14
    named = set()
    for query in queries:
        named |= set(re.findall(r"\b(imgshards_[a-z_]+)\b", query))
        # Anything else in selector position (name{...}) would be a metric we do not push.
        assert set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query)) <= pushed, query
    assert named <= pushed, named - pushed
    panels = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Images per second, by stage", "Quarantined, by stage and reason", "Stage wall time",
                   "Backend mix (samples made)", "Samples made by GPU tasks, by GPU"):
        assert wanted in panels


def test_progress_lines_while_the_job_runs(pipeline_run):
    lines = [r.getMessage() for r in pipeline_run["records"] if r.name == "imgshards.observe.progress"]
    assert lines, "a run longer than progress.interval_seconds reports progress"
    pattern = re.compile(r"progress (ingest|preprocess|export|report): \d+/\d+ tasks \(\d+%\)")
    assert all(pattern.match(line) for line in lines), lines
    # The longest stage's tasks (preprocess, with DALI and an augmented copy) outlast an interval. A stage's
    # wall time alone says nothing: listing and the Delta commit run on the driver, where no task reports.
    stages = {m.group(1) for m in map(pattern.match, lines)}
    assert "preprocess" in stages, lines
    assert any("images/s" in line for line in lines), lines
    # What the run prints on stdout is the summary, not progress or library warnings.
    assert "progress" not in pipeline_run["stdout"] and "Warning" not in pipeline_run["stdout"]
    assert f"report         {pipeline_run['summary']['report']}" in pipeline_run["stdout"]


def test_progress_leaves_out_the_background_start_of_python_workers(spark):
    # The warm-up job runs while a job lists its files; its tasks are no stage's progress (CI once printed
    # "progress pipeline: 2/2 tasks" from it before ingest began).
    lines = set()
    for _ in range(5):  # the status tracker is updated asynchronously: a race shows in some attempts
        with progress.track(spark, 3600, "pipeline") as reporter:
            started = workers.start(spark)
            while started.running():
                lines.add(reporter.line())
            lines.add(reporter.line())
    tracker = spark.sparkContext.statusTracker()
    assert tracker.getJobIdsForGroup(progress.BACKGROUND_GROUP), "the warm-up ran as a background job"
    assert lines == {""}, lines


def test_background_work_names_its_jobs_and_hands_back_its_result_or_error(spark):
    sc = spark.sparkContext
    sc.setLocalProperty("imgshards.test.marker", "from the caller")

    def count_with_properties(n):
        return (spark.range(n).count(), sc.getLocalProperty(progress.STAGE_PROPERTY),
                sc.getLocalProperty("imgshards.test.marker"))

    try:
        done = background.Background("report", count_with_properties, 7)
        assert done.result() == (7, "report", "from the caller")  # the caller's properties, then its own stage
        assert not done.running()
        assert sc.getLocalProperty(progress.STAGE_PROPERTY) != "report"  # the caller's thread keeps its own
        failed = background.Background("report", spark.sql, "SELECT * FROM no_such_table_here")
        failed.wait()  # waits without raising: the error is for result()
        with pytest.raises(Exception, match="no_such_table_here"):
            failed.result()
    finally:
        sc.setLocalProperty("imgshards.test.marker", None)


def test_short_run_is_quiet_and_an_unreachable_gateway_costs_one_warning(spark, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    args = ["--warehouse", str(tmp_path / "warehouse"), "--set", f"workdir={json.dumps(str(tmp_path))}",
            "--set", f"metrics.pushgateway={closed}", "--set", "metrics.timeout_seconds=2"]
    metrics._warned.discard(closed)
    with captured() as (records, out):
        assert history_job.main(args, stop_session=False) == 0
        assert history_job.main(args, stop_session=False) == 0  # same process: still one warning
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and closed in warnings[0], warnings
    assert not [r for r in records if r.name == "imgshards.observe.progress"]


def test_streaming_ingest_pushes_after_every_micro_batch(spark, pushgateway, tmp_path):
    root = str(tmp_path / "raw")
    make_sample_dataset(root, per_class=4, seed=3)
    run_id = "stream-run"
    args = ["--stream", "--run-id", run_id, "--input", root, "--warehouse", str(tmp_path / "warehouse"),
            "--set", f"workdir={json.dumps(str(tmp_path))}", "--set", f"metrics.pushgateway={pushgateway}",
            "--set", "ingest.stream.max_files_per_trigger=10"]
    with captured() as (records, out):
        assert ingest_job.main(args, stop_session=False) == 0
    summary = run_summary(str(tmp_path), run_id, "ingest")
    got = gateway_samples(pushgateway, "imgshards_ingest", run_id)
    assert summary["ingest"]["batches"] > 1
    assert got[("imgshards_stream_batches_total", frozenset())] == summary["ingest"]["batches"]
    assert got[("imgshards_files_seen_total", frozenset())] == summary["ingest"]["seen"]
    pushes = [r for r in records if r.name == "imgshards.observe.metrics" and "pushed" in r.getMessage()]
    assert len(pushes) == summary["ingest"]["batches"] + 1  # after each micro-batch, then the final summary


def _open_in_chromium(path: str, screenshot: str) -> dict:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium is not installed (scripts/test.sh installs Debian's package where apt-get can)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors, failed = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto("file://" + path, wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            counts = page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('[data-count]'))"
                                   ".map(e => [e.dataset.count, e.textContent.replace(/,/g, '')]))")
            text = page.inner_text("body")
            page.screenshot(path=screenshot)
        finally:
            browser.close()
    return {"errors": errors, "failed": failed, "images": images, "counts": counts, "text": text}


def test_report_opens_in_headless_chromium_with_the_summary_counts(pipeline_run, tmp_path):
    summary = pipeline_run["summary"]
    path = summary["report"]
    assert path == os.path.join(str(pipeline_run["work"] / "shards"), "report.html")
    assert os.path.getsize(path) < 5 * 2**20
    with open(path) as f:
        html = f.read()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not need a network"
    shot = str(tmp_path / "report.png")
    page = _open_in_chromium(path, shot)
    assert page["errors"] == [] and page["failed"] == []
    assert len(page["images"]) > 30 and all(ok for _, ok in page["images"]), [a for a, ok in page["images"] if not ok]
    ingest, pre = summary["ingest"], summary["preprocess"]
    counts = {k: int(v) for k, v in page["counts"].items()}
    assert counts["images"] == ingest["ingested"]
    assert counts["duplicates"] == ingest["duplicates"]
    assert counts["quarantined"] == ingest["quarantined"] + pre["quarantined"]
    assert counts["skipped"] == ingest["skipped_hidden"] + ingest["skipped_non_image"]
    for split, rows in summary["export"]["rows"].items():
        assert counts[f"rows-{split}"] == rows
    assert counts["source-version"] == summary["export"]["source_version"]
    assert counts["clusters"] == ingest["near_duplicates"]["clusters"]
    assert counts["quality-measured"] == ingest["ingested"]
    for signal, n in ingest["quality"].items():
        assert counts[f"quality-{signal}"] == n
    conflicts = ingest["label_conflicts"]
    assert conflicts["duplicate"] == 1  # the sample's misfiled copy
    assert counts["label-conflicts"] == conflicts["duplicate"] + conflicts.get("near_duplicate", 0)
    for section in ("Every file's fate", "Classes and splits", "Near-duplicates", "Label conflicts", "Image quality",
                    "Processed samples",
                    "Augmented copies beside their parent", "Lineage", "normalization"):
        assert section in page["text"]
    for reason in ingest["quarantine_reasons"]:
        assert reason in page["text"]
    with Image.open(shot) as img:
        assert img.size == (1280, 900)


@pytest.mark.parametrize("case", ["everything_quarantined", "unlabeled"])
def test_report_says_what_is_wrong_with_a_degenerate_dataset(spark, tmp_path, case):
    root = tmp_path / "raw"
    (root / "only").mkdir(parents=True)
    if case == "everything_quarantined":
        (root / "only" / "a.jpg").write_bytes(b"not a jpeg at all")
        (root / "only" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    else:
        for i in range(3):
            Image.new("RGB", (40 + i, 30), (60 * i, 90, 200)).save(root / "only" / f"{i}.png")
    args = ["--run-id", case, "--input", str(root), "--warehouse", str(tmp_path / "warehouse"),
            "--output", str(tmp_path / "shards"), "--set", f"workdir={json.dumps(str(tmp_path))}",
            "--set", "preprocess.size=32", "--set", "progress.interval_seconds=0"]
    if case == "unlabeled":
        args += ["--set", "ingest.labels.source=none"]
    with captured() as (records, out):
        assert pipeline_job.main(args, stop_session=False) == 0, out.getvalue()
    path = run_summary(str(tmp_path), case, "pipeline")["report"]
    page = _open_in_chromium(path, str(tmp_path / "report.png"))
    assert page["errors"] == [] and all(ok for _, ok in page["images"])
    if case == "everything_quarantined":
        assert "No images were accepted" in page["text"]
        assert page["counts"]["images"] == "0" and page["counts"]["quarantined"] == "2"
    else:
        assert "One class only (the images have no labels)" in page["text"]
        assert page["counts"]["images"] == "3"


@pytest.mark.spark
def test_spark_serves_its_own_prometheus_endpoints(tmp_path):
    """The settings every profile gets (spark-defaults.conf) turn on Spark's Prometheus servlet and executor
    metrics: a session started with its UI on serves both."""
    port = free_port()
    script = f"""
import urllib.request
from imgshards.session import build_session, checkout_jars
spark = build_session("local[2]", "prometheus-check", {{"spark.ui.enabled": "true", "spark.ui.port": "{port}"}},
                      jars_dir=checkout_jars("."))
spark.range(1000).selectExpr("sum(id)").collect()
for path in ("/metrics/prometheus", "/metrics/executors/prometheus"):
    body = urllib.request.urlopen("http://127.0.0.1:{port}" + path, timeout=30).read().decode()
    print(path, len(body.splitlines()))
    print(body)
spark.stop()
"""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^metrics_\w+_driver_BlockManager_memory_\w+\{", result.stdout, re.M), result.stdout[:2000]
    assert re.search(r'^metrics_executor_\w+\{application_id="local-', result.stdout, re.M), result.stdout[:2000]


def test_a_failed_run_pushes_its_failure(spark, pushgateway, tmp_path):
    """A run that fails once Spark is up (here: a missing input) still pushes its group, with
    imgshards_run_ok 0, so a dashboard or alert sees the failure instead of the last success."""
    from imgshards.jobs import ingest as ingest_job

    code = ingest_job.main(["--run-id", "failing-run", "--input", str(tmp_path / "missing"),
                            "--warehouse", str(tmp_path / "wh"), "--set", f"workdir={json.dumps(str(tmp_path))}",
                            "--set", f"metrics.pushgateway={pushgateway}"], stop_session=False)
    assert code == 2
    got = gateway_samples(pushgateway, "imgshards_ingest", "failing-run")
    assert got[("imgshards_run_ok", frozenset())] == 0
    assert not any(name == "imgshards_last_success_timestamp_seconds" for name, _ in got)
