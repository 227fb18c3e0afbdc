"""File-system access through Hadoop's FileSystem, so local paths and s3a://, gs://, abfss://, hdfs://
URLs behave the same and credentials come from the cluster's Hadoop configuration."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

from pyspark.sql import SparkSession


class InputPathError(FileNotFoundError):
    """The input path does not exist or is not readable."""


@dataclass(frozen=True)
class ListedFile:
    path: str  # fully qualified, as Spark's binaryFile reports it (file:/..., s3a://...)
    relative: str  # relative to the listed root
    size_bytes: int


def _fs_and_path(spark: SparkSession, url: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(url)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def qualify(spark: SparkSession, url: str) -> str:
    """The fully qualified form of ``url`` (``/data`` -> ``file:/data``)."""
    fs, path = _fs_and_path(spark, url)
    return fs.makeQualified(path).toString()


def require_dir(spark: SparkSession, root: str):
    """Raise :class:`InputPathError` unless ``root`` is an existing folder; returns (fs, path)."""
    fs, path = _fs_and_path(spark, root)
    if not fs.exists(path):
        raise InputPathError(f"input path does not exist: {root}")
    if fs.getFileStatus(path).isFile():
        raise InputPathError(f"input path is a file, not a folder: {root}")
    return fs, path


def list_files(spark: SparkSession, root: str) -> Iterator[ListedFile]:
    """Every file under ``root``, recursively (hidden ones included: the caller decides).

    Local folders are walked with os.scandir (about 4 us a file); other file systems through Hadoop's
    FileSystem over py4j, which costs a few milliseconds a file on the driver.
    """
    fs, path = require_dir(spark, root)
    base = fs.makeQualified(path).toString().rstrip("/")
    if base.startswith("file:"):
        yield from _walk_local(base)
        return
    files = fs.listFiles(path, True)
    while files.hasNext():
        st = files.next()
        full = st.getPath().toString()
        yield ListedFile(path=full, relative=full[len(base) + 1 :], size_bytes=int(st.getLen()))


def _walk_local(base: str) -> Iterator[ListedFile]:
    """The local equivalent of Hadoop's recursive listFiles, with the same ``file:/...`` paths."""
    local_root = base[len("file:"):]
    stack = [local_root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    yield ListedFile(path="file:" + entry.path, relative=entry.path[len(local_root) + 1:],
                                     size_bytes=entry.stat().st_size)


def write_text(spark: SparkSession, url: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``url``, replacing it."""
    fs, path = _fs_and_path(spark, url)
    out = fs.create(path, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def delete(spark: SparkSession, url: str) -> None:
    fs, path = _fs_and_path(spark, url)
    fs.delete(path, True)


def rename(spark: SparkSession, src: str, dst: str) -> None:
    fs, src_path = _fs_and_path(spark, src)
    dst_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(dst)
    if not fs.rename(src_path, dst_path):
        raise OSError(f"could not rename {src} to {dst}")
