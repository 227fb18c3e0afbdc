"""Publishing an export: the manifest replaced atomically, old version folders pruned, and the check
whether the published export is already what a new one would write.

Exports may run at the same time (two drivers writing to one output): each writes its own version folder
``v-<run_id>/`` and its manifest there last, then publishes. So that none loses data to another:

- an export publishes only if the published manifest is not newer than its own (by ``created_at``): a slow
  export finishing after a newer one leaves its finished folder unpublished instead of replacing the newer;
- pruning removes only finished versions (their folder has its manifest), never the published one (read
  again before each removal), and keeps the newest ``export.keep_versions``; a folder without a manifest is
  another export still writing, and is removed only once nothing in it has changed for a day (a killed
  export's leftovers);
- the manifest is replaced with no moment without one: locally by os.replace, on object stores by one PUT
  (which replaces an object atomically), on HDFS by FileContext's rename with OVERWRITE (one atomic
  operation on the NameNode), each from a temporary name of its own run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

from pyspark.sql import DataFrame, SparkSession

from imgshards.config import join_path
from imgshards.io import storage
from imgshards.io.filesystems import is_object_store
from imgshards.manifest import MANIFEST_FILE, VERSION_PREFIX, Manifest

log = logging.getLogger(__name__)

ABANDONED_AFTER_S = 24 * 3600  # a version folder without a manifest, unchanged this long, is a killed export's


def published(spark: SparkSession, output: str) -> Optional[dict]:
    """The published manifest's data (None when there is none, or it is not JSON)."""
    text = storage.read_text(spark, join_path(output, MANIFEST_FILE))
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def publish_manifest(spark: SparkSession, output: str, text: str, run_id: str) -> bool:
    """Replace ``<output>/manifest.json`` with ``text`` so that readers always find one, the old or the new;
    False (nothing replaced) when the published one was created after this one."""
    current = published(spark, output)
    mine = json.loads(text)
    if current and str(current.get("created_at", "")) > str(mine.get("created_at", "")):
        log.warning("export %s: %s was published meanwhile by a newer export (%s); this one stays unpublished in %s",
                    run_id, join_path(output, MANIFEST_FILE), current.get("run_id"), mine.get("version_dir"))
        return False
    target = join_path(output, MANIFEST_FILE)
    temporary = f"{target}.{run_id}.tmp"
    if "://" not in output:
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, target)
    elif is_object_store(output):
        storage.write_text(spark, target, text)
    else:
        storage.write_text(spark, temporary, text)
        storage.replace(spark, temporary, target)
    return True


def previous_versions(spark: SparkSession, output: str) -> list:
    """The finished version folders under ``output`` (their manifest written), oldest first (by the time
    their manifest was written)."""
    return _versions(spark, output)[0]


def _versions(spark: SparkSession, output: str) -> tuple:
    """(finished version folders, oldest first; unfinished ones unchanged for ABANDONED_AFTER_S)."""
    import pyarrow.fs as pafs

    fs, root = storage.arrow_fs(spark, output)
    folders = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
               if i.type == pafs.FileType.Directory and i.base_name.startswith(VERSION_PREFIX)]
    manifests = fs.get_file_info([f"{i.path}/{MANIFEST_FILE}" for i in folders])
    finished = sorted((m.mtime_ns, f.base_name) for f, m in zip(folders, manifests) if m.type == pafs.FileType.File)
    abandoned = []
    for folder, manifest in zip(folders, manifests):
        if manifest.type == pafs.FileType.File:
            continue
        files = fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
        newest = max([i.mtime_ns or 0 for i in files] + [folder.mtime_ns or 0])
        if newest and time.time_ns() - newest > ABANDONED_AFTER_S * 1_000_000_000:
            abandoned.append(folder.base_name)
    return [name for _, name in finished], abandoned


def prune(spark: SparkSession, output: str, keep: int, own: str) -> list:
    """Remove finished versions beyond the newest ``keep`` (never ``own`` nor the published one) and
    abandoned unfinished ones; returns the names removed."""
    finished, abandoned = _versions(spark, output)
    doomed = [name for name in finished[: max(len(finished) - keep, 0)] if name != own] + abandoned
    removed = []
    for name in doomed:
        current = published(spark, output)
        if current and current.get("version_dir") == name:
            continue  # published by an export that finished after our listing
        storage.delete(spark, join_path(output, name))
        removed.append(name)
    return removed


def versions_holding(spark: SparkSession, output: str, sha256s: DataFrame) -> list:
    """The finished export versions under ``output`` with a sample of one of ``sha256s`` (column sha256)."""
    holding = []
    for name in previous_versions(spark, output):
        text = storage.read_text(spark, join_path(output, name, MANIFEST_FILE))
        manifest = Manifest.from_json(text, where=name) if text else None
        if manifest is None:
            continue
        for split in manifest.splits.values():
            frame = spark.read.parquet(join_path(output, name, split["path"])).select("sha256")
            if frame.join(sha256s, "sha256", "left_semi").limit(1).count():
                holding.append(name)
                break
    return holding
