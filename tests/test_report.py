"""The report's gathering from the tables, on tables written here (the rendered report in a browser:
test_observability)."""
from __future__ import annotations

import dataclasses
import datetime

from imgshards.config import load_config
from imgshards.observe.report import collect
from imgshards.schemas import QUARANTINE_SCHEMA, QUARANTINE_TABLE


def test_quarantine_fates_count_every_reason_and_show_its_first_paths(spark, tmp_path):
    now = datetime.datetime(2026, 1, 1)
    rows = ([(f"t/{i:02d}.jpg", "ingest", "truncated", f"cut at {i}", 10, None, now, "r") for i in range(7)]
            + [(f"z/{i}.png", "ingest", "zero_byte", None, 0, None, now, "r") for i in (2, 1)]
            + [("p/x.jpg", "preprocess", "truncated", "decoder", 5, "ab", now, "r")])
    for k in (3, 0):
        config = dataclasses.replace(load_config(overrides=[f"report.examples_per_reason={k}"]),
                                     warehouse=str(tmp_path / f"warehouse-{k}"))
        spark.createDataFrame(rows, QUARANTINE_SCHEMA).write.format("delta").save(config.table(QUARANTINE_TABLE).path)

        found = collect.fates(spark, config)["quarantine"]

        assert [(q["stage"], q["reason"], q["count"]) for q in found] == [
            ("ingest", "truncated", 7), ("ingest", "zero_byte", 2), ("preprocess", "truncated", 1)]
        assert [len(q["examples"]) for q in found] == [min(k, 7), min(k, 2), min(k, 1)]
        if k:
            assert found[0]["examples"] == [{"path": f"t/{i:02d}.jpg", "detail": f"cut at {i}"} for i in range(3)]
            assert [e["path"] for e in found[1]["examples"]] == ["z/1.png", "z/2.png"]
