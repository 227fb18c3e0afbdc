"""Label conflicts through a real ingest: the same content filed under two classes, and a near-duplicate
under another label than most of its cluster; recorded, counted and, with ``majority``, resolved."""
from __future__ import annotations

import glob
import io
import os

from PIL import Image
from test_ingest import make_config, table

from imgshards.ingest.run import run_ingest

from helpers import shared_dataset


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_conflicting_labels_are_recorded_counted_and_resolved_by_majority(spark, tmp_path):
    """With ``majority`` (``report``, the default, records the same and changes no label: the pipeline's sample
    has a misfiled copy, checked in tests/test_observability.py and tests/test_end_to_end.py)."""
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
