"""Label conflicts through a real ingest: the same content filed under two classes, and a near-duplicate
under another label than most of its cluster; recorded, counted and, with ``majority``, resolved, or with
``quarantine``, quarantined."""
from __future__ import annotations

import glob
import io
import os

from PIL import Image
from test_ingest import make_config, table

from imgshards.delta import tables
from imgshards.ingest.run import run_ingest

from helpers import shared_dataset


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _conflicting(tmp_path):
    """ants/a.jpg and the same bytes as bees/a_again.jpg; ants/b.jpg, ants/b_q60.jpg and a half-size copy as
    bees/b_small.jpg; bees/c.jpg alone."""
    photos = sorted(glob.glob(os.path.join(shared_dataset("hymenoptera"), "train", "ants", "*.jpg")))[:3]
    a, b, c = (Image.open(p).convert("RGB") for p in photos)
    raw = tmp_path / "raw"
    for folder in ("ants", "bees"):
        (raw / folder).mkdir(parents=True)
    same = _jpeg(a, 90)
    (raw / "ants" / "a.jpg").write_bytes(same)
    (raw / "bees" / "a_again.jpg").write_bytes(same)  # the same bytes under another class
    (raw / "ants" / "b.jpg").write_bytes(_jpeg(b, 90))
    (raw / "ants" / "b_q60.jpg").write_bytes(_jpeg(b, 60))
    (raw / "bees" / "b_small.jpg").write_bytes(_jpeg(b.resize((b.width // 2, b.height // 2)), 80))
    (raw / "bees" / "c.jpg").write_bytes(_jpeg(c, 90))  # no conflict: alone
    return raw


def test_conflicting_labels_are_recorded_counted_and_resolved_by_majority(spark, tmp_path):
    """With ``majority`` (``report``, the default, records the same and changes no label: the pipeline's sample
    has a misfiled copy, checked in tests/test_observability.py and tests/test_end_to_end.py)."""
    raw = _conflicting(tmp_path)
    config = make_config(tmp_path, "ingest.label_conflicts=majority")
    counts = run_ingest(spark, config, str(raw), "r1")
    assert counts.duplicates == 1 and counts.ingested == 5
    assert {k: v for k, v in counts.label_conflicts.items() if k != "examples"} == {"duplicate": 1, "near_duplicate": 1}
    found = {r["path"].rsplit("/", 1)[1]: r for r in table(spark, config, "label_conflicts").collect()}
    assert set(found) == {"a_again.jpg", "b_small.jpg"}
    dup, near = found["a_again.jpg"], found["b_small.jpg"]
    def seen(row):
        return row["kind"], row["label"], row["other_label"], row["other_path"].rsplit("/", 1)[1]

    assert seen(dup) == ("duplicate", "bees", "ants", "a.jpg")
    assert seen(near) == ("near_duplicate", "bees", "ants", "b.jpg")
    labels = {r["path"].rsplit("/", 1)[1]: r["label"] for r in table(spark, config, "images").collect()}
    assert labels["b_small.jpg"] == "ants"  # its cluster's label (its own, bees, stays in label_conflicts)
    assert labels["c.jpg"] == "bees" and labels["a.jpg"] == "ants"
    # A re-run with nothing new reads nothing and reports what reading would: the duplicate's conflict again
    # (it is a duplicate again), not the near-duplicate's (its image is unchanged).
    again = run_ingest(spark, config, str(raw), "r2")
    assert again.read_bytes == 0 and {k: v for k, v in again.label_conflicts.items() if k != "examples"} == {"duplicate": 1}


def _names(rows) -> set:
    return {r["path"].rsplit("/", 1)[1] for r in rows}


def test_quarantine_takes_the_file_in_conflict_out_and_a_rerun_adds_nothing(spark, tmp_path):
    """With ``quarantine``, the copy under another class and the near-duplicate under the minority label are
    quarantined (the files they conflict with stay); reading everything again changes no table."""
    raw = _conflicting(tmp_path)
    config = make_config(tmp_path, "ingest.label_conflicts=quarantine", "ingest.skip_unchanged=false")
    counts = run_ingest(spark, config, str(raw), "r1")
    assert (counts.ingested, counts.duplicates, counts.quarantined) == (4, 0, 2)
    assert counts.quarantine_reasons == {"label_conflict": 2}
    assert {k: v for k, v in counts.label_conflicts.items() if k != "examples"} == {"duplicate": 1, "near_duplicate": 1}
    quarantined = {r["path"].rsplit("/", 1)[1]: r for r in table(spark, config, "quarantine").collect()}
    assert set(quarantined) == {"a_again.jpg", "b_small.jpg"}
    assert quarantined["a_again.jpg"]["detail"].startswith("labelled bees, but the same content at ")
    assert quarantined["a_again.jpg"]["detail"].endswith("/ants/a.jpg is labelled ants")
    assert quarantined["b_small.jpg"]["sha256"] and quarantined["b_small.jpg"]["size_bytes"] > 0
    assert _names(table(spark, config, "images").collect()) == {"a.jpg", "b.jpg", "b_q60.jpg", "c.jpg"}
    assert _names(table(spark, config, "label_conflicts").collect()) == {"a_again.jpg", "b_small.jpg"}
    assert not tables.is_delta_table(spark, config.table("duplicates")) or not table(spark, config, "duplicates").count()
    versions = {name: tables.latest_version(spark, config.table(name)) for name in ("images", "quarantine", "label_conflicts")}
    again = run_ingest(spark, config, str(raw), "r2")
    assert (again.unchanged, again.quarantined, again.read_bytes > 0) == (4, 2, True)
    assert {k: v for k, v in again.label_conflicts.items() if k != "examples"} == {"duplicate": 1, "near_duplicate": 1}
    assert {name: tables.latest_version(spark, config.table(name)) for name in versions} == versions
