"""Publishing an export: the manifest replaced atomically, old version folders pruned, and the check
whether the published export is already what a new one would write."""
from __future__ import annotations

import os

from pyspark.sql import SparkSession

from imgshards.config import join_path
from imgshards.io import storage
from imgshards.io.filesystems import is_object_store
from imgshards.manifest import MANIFEST_FILE, VERSION_PREFIX


def publish_manifest(spark: SparkSession, output: str, text: str) -> None:
    """Replace ``<output>/manifest.json`` so that readers always find one, the old or the new: locally by
    os.replace, on object stores by one PUT (which replaces an object atomically), elsewhere (HDFS) by a
    write and a rename."""
    target = join_path(output, MANIFEST_FILE)
    if "://" not in output:
        temporary = target + ".tmp"
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, target)
    elif is_object_store(output):
        storage.write_text(spark, target, text)
    else:
        temporary = target + ".tmp"
        storage.write_text(spark, temporary, text)
        storage.delete(spark, target)
        storage.rename(spark, temporary, target)


def previous_versions(spark: SparkSession, output: str) -> list:
    """The version folders under ``output``, oldest first (by the time their manifest was written)."""
    import pyarrow.fs as pafs

    fs, root = storage.arrow_fs(spark, output)
    folders = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
               if i.type == pafs.FileType.Directory and i.base_name.startswith(VERSION_PREFIX)]
    manifests = fs.get_file_info([f"{i.path}/{MANIFEST_FILE}" for i in folders])
    written = [(m.mtime_ns if m.type == pafs.FileType.File else 0, f.base_name) for f, m in zip(folders, manifests)]
    return [name for _, name in sorted(written)]
