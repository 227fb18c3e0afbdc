"""Forgetting images for good (the forget job) and ingest.missing=purge, on real Delta tables: no row of a
forgotten content in any table file (older versions vacuumed), the content refused by later ingests, the
export versions holding it named, and the next export without it."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil

import pyarrow.parquet as pq
import pytest
from test_ingest import make_config, photo, table, write_jpeg

from imgshards.export.run import run_export
from imgshards.ingest.run import run_ingest
from imgshards.jobs import forget as forget_job
from imgshards.preprocess.run import run_preprocess


def sha256s_in_table_files(folder: str) -> set:
    """Every sha256 that any Parquet file in a Delta table's folder holds, whatever version uses it."""
    found = set()
    for path in glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True):
        found.update(pq.read_table(path, columns=["sha256"]).column("sha256").to_pylist())
    return found


def exported_sha256s(version_dir: str) -> set:
    found = set()
    for path in glob.glob(os.path.join(version_dir, "*", "*.parquet")):
        found.update(pq.read_table(path, columns=["sha256"]).column("sha256").to_pylist())
    return found


def test_forget_removes_an_image_everywhere_and_refuses_it_later(spark, tmp_path):
    raw = tmp_path / "raw"
    taken_down = write_jpeg(raw / "cats" / "a.jpg", photo(60))
    (raw / "dogs" ).mkdir(parents=True)
    (raw / "dogs" / "copy.jpg").write_bytes(taken_down)  # the same bytes under another label and path
    for i in range(4):
        write_jpeg(raw / ("cats" if i % 2 else "dogs") / f"keep{i}.jpg", photo(61 + i))
    gone = hashlib.sha256(taken_down).hexdigest()
    config = make_config(tmp_path, "forget.retention_hours=0", "ingest.split.train=1.0", "ingest.split.val=0.0",
                         "ingest.split.test=0.0")
    run_ingest(spark, config, str(raw), "r1")
    run_preprocess(spark, config, "r1")
    first_export = run_export(spark, config, "e1")
    assert gone in exported_sha256s(os.path.join(config.output, first_export.version_dir))
    for name in ("images", "duplicates", "processed", "label_conflicts"):  # the copy under dogs is a conflict
        assert gone in sha256s_in_table_files(config.table(name).path), name

    def forget(*argv: str, run_id: str) -> dict:  # the job, in this session
        return forget_job.run(spark, config, forget_job.JOB.parser().parse_args(argv), run_id)

    summary = forget("--path", f"{raw}/cats/a.jpg", "--reason", "takedown #1", run_id="f1")
    assert summary["contents"] == 1 and summary["newly_forgotten"] == 1
    assert summary["removed_rows"] == {"images": 1, "duplicates": 1, "processed": 1, "label_conflicts": 1}
    assert set(summary["vacuumed_files"]) == {"images", "duplicates", "processed", "label_conflicts"}
    assert summary["exports_holding"] == [os.path.basename(first_export.version_dir)]
    for name in ("images", "duplicates", "processed", "label_conflicts"):
        assert gone not in sha256s_in_table_files(config.table(name).path), name
    assert table(spark, config, "images").count() == 4
    [blocked] = table(spark, config, "forgotten").collect()
    assert (blocked["sha256"], blocked["path"], blocked["reason"]) == (gone, f"file:{raw}/cats/a.jpg", "takedown #1")

    # Both files are still in the input: the next ingest refuses them, and the next export holds neither.
    again = run_ingest(spark, config, str(raw), "r2")
    assert again.quarantine_reasons == {"forgotten": 2} and again.ingested == 0
    assert {r["path"].rsplit("/", 1)[1]: r["reason"] for r in table(spark, config, "quarantine").collect()} == {
        "a.jpg": "forgotten", "copy.jpg": "forgotten"}
    assert gone not in sha256s_in_table_files(config.table("images").path)
    run_preprocess(spark, config, "r2")
    second_export = run_export(spark, config, "e2")
    exported = exported_sha256s(os.path.join(config.output, second_export.version_dir))
    assert gone not in exported and len(exported) == 4

    # Forgetting it again finds nothing new to remove; by hash it names the same content.
    assert forget("--sha256", gone.upper(), "--reason", "takedown #1", run_id="f2")["newly_forgotten"] == 0


def test_purge_removes_the_rows_of_files_gone_from_the_input(spark, tmp_path):
    raw = tmp_path / "raw"
    removed = write_jpeg(raw / "x" / "a.jpg", photo(70))
    write_jpeg(raw / "x" / "b.jpg", photo(71))
    config = make_config(tmp_path, "ingest.missing=purge", "forget.retention_hours=0")
    run_ingest(spark, config, str(raw), "r1")
    run_preprocess(spark, config, "r1")
    os.remove(raw / "x" / "a.jpg")
    counts = run_ingest(spark, config, str(raw), "r2")
    assert counts.purged == 1 and counts.marked_deleted == 0
    gone = hashlib.sha256(removed).hexdigest()
    for name in ("images", "processed"):
        assert gone not in sha256s_in_table_files(config.table(name).path), name
    assert [r["path"].rsplit("/", 1)[1] for r in table(spark, config, "images").collect()] == ["b.jpg"]
    shutil.copy(raw / "x" / "b.jpg", raw / "x" / "c.jpg")
    (raw / "x" / "a.jpg").write_bytes(removed)  # purged, not forgotten: it may come back
    back = run_ingest(spark, config, str(raw), "r3")
    assert (back.ingested, back.duplicates, back.purged) == (1, 1, 0)


def test_forget_job_arguments(tmp_path):
    parser = forget_job.JOB.parser()
    listing = tmp_path / "takedowns.txt"
    listing.write_text("# requests of 2026-12\n/data/raw/a b.jpg\n\n" + "AB" * 32 + "\n")
    args = parser.parse_args(["--from-file", str(listing), "--path", "s3://b/x.jpg", "--reason", "r"])
    assert forget_job._targets(args) == (["s3://b/x.jpg", "/data/raw/a b.jpg"], ["ab" * 32])
    with pytest.raises(ValueError, match="64 hex digits"):
        forget_job._targets(parser.parse_args(["--sha256", "abc", "--reason", "r"]))
    with pytest.raises(ValueError, match="at least one"):
        forget_job._targets(parser.parse_args(["--reason", "r"]))
