"""File-system access through Hadoop's FileSystem, so local paths and s3a://, gs://, abfss://, hdfs://
URLs behave the same and credentials come from the cluster's Hadoop configuration."""
from __future__ import annotations

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
    """Every file under ``root``, recursively (hidden ones included: the caller decides)."""
    fs, path = require_dir(spark, root)
    base = fs.makeQualified(path).toString().rstrip("/")
    files = fs.listFiles(path, True)
    while files.hasNext():
        st = files.next()
        full = st.getPath().toString()
        yield ListedFile(path=full, relative=full[len(base) + 1 :], size_bytes=int(st.getLen()))


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
