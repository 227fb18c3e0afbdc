"""File-system access for the jobs: Hadoop's FileSystem (what Spark itself uses), so local paths and
s3a://, gs://, abfss://, hdfs:// URLs behave the same and credentials come from the cluster's Hadoop
configuration; and pyarrow's file systems, configured from that same Hadoop configuration, where one
native call does what would be a py4j round trip per file (listing an S3 prefix).

S3 endpoints come from ``storage.s3.*`` or the environment (:func:`configure_hadoop`); credentials only
from the environment, a profile or the instance role, never from settings.

A Spark Connect session has no way into the JVM: there the S3A settings go into the session's own
configuration (which Spark copies into the Hadoop configuration of the session's reads and writes), and
every file operation of the driver goes through pyarrow's file systems."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from stat import S_ISDIR as stat_is_dir
from stat import S_ISREG as stat_is_file
from typing import Iterator, Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pyspark.sql import SparkSession

from imgshards.config import PipelineConfig
from imgshards.io.filesystems import arrow_filesystem, is_s3, s3_endpoint, s3_region
from imgshards.session import is_connect, set_or_warn

log = logging.getLogger(__name__)

# Fail fast on an unreachable or misconfigured S3 endpoint instead of S3A's minutes of retries.
CHECK_TIMEOUT_S = 10.0


class InputPathError(FileNotFoundError):
    """The input path does not exist or is not readable."""


class StorageError(OSError):
    """A location that cannot be used: unreachable endpoint, missing bucket, rejected credentials."""


class _SessionHadoopConf:
    """The Hadoop settings of a Spark Connect session: its own configuration (``fs.*`` keys, which Spark
    copies into the Hadoop configuration of the session's reads and writes), then the cluster's
    ``spark.hadoop.*``. A platform that does not let a session set one (Databricks serverless) gets a
    warning, not a failed job: its own storage settings apply."""

    def __init__(self, spark: SparkSession):
        self._conf = spark.conf

    def get(self, key: str) -> Optional[str]:
        return self._conf.get(key, None) or self._conf.get("spark.hadoop." + key, None)

    def set(self, key: str, value: str) -> None:
        set_or_warn(self._conf, key, value)


def _hadoop_conf(spark: SparkSession):
    return _SessionHadoopConf(spark) if is_connect(spark) else spark.sparkContext._jsc.hadoopConfiguration()


def configure_hadoop(spark: SparkSession, config: PipelineConfig) -> None:
    """Point Hadoop's S3A connector (s3a://, and s3:// where the platform has not mapped it to its own) at
    ``storage.s3`` or the environment's endpoint. Nothing is set for AWS itself with no settings."""
    conf = _hadoop_conf(spark)
    # EMR maps s3:// to EMRFS and Databricks to its own; elsewhere S3A. A Spark Connect session cannot see
    # the server's Hadoop configuration: its operator maps s3:// there.
    if not is_connect(spark) and conf.get("fs.s3.impl") is None:
        conf.set("fs.s3.impl", "org.apache.hadoop.fs.s3a.S3AFileSystem")
    s3 = config.storage.s3
    endpoint = s3_endpoint(s3.endpoint)
    if endpoint:
        conf.set("fs.s3a.endpoint", endpoint)
        conf.set("fs.s3a.connection.ssl.enabled", "true" if endpoint.startswith("https://") else "false")
    path_style = s3.path_style if s3.path_style is not None else bool(endpoint)
    if path_style or not is_connect(spark):  # (false is S3A's default)
        conf.set("fs.s3a.path.style.access", "true" if path_style else "false")
    region = s3_region(s3.region)
    if region:
        conf.set("fs.s3a.endpoint.region", region)


def s3_settings(spark: SparkSession) -> tuple:
    """(endpoint URL, path style, region) of S3 as the session's Hadoop configuration has them."""
    conf = _hadoop_conf(spark)
    endpoint: Optional[str] = conf.get("fs.s3a.endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = ("https://" if conf.get("fs.s3a.connection.ssl.enabled") != "false" else "http://") + endpoint
    return endpoint, conf.get("fs.s3a.path.style.access") == "true", conf.get("fs.s3a.endpoint.region")


def arrow_fs(spark: SparkSession, url: str, *, timeout_s: Optional[float] = None):
    """(pyarrow FileSystem, path) for ``url``, with S3 reached the way the session's S3A is."""
    endpoint, path_style, region = s3_settings(spark) if is_s3(url) else (None, None, None)
    return arrow_filesystem(url, endpoint, path_style, region, timeout_s=timeout_s)


def check_s3_location(spark: SparkSession, url: str, *, need_objects: bool = False) -> None:
    """Raise :class:`StorageError` (or :class:`InputPathError`) naming ``url`` and the cause when its
    endpoint cannot be reached, its bucket does not exist, the credentials are rejected, or (with
    ``need_objects``) nothing is stored under it. A no-op for other URLs."""
    if not is_s3(url):
        return
    fs, path = arrow_fs(spark, url, timeout_s=CHECK_TIMEOUT_S)
    bucket = path.split("/", 1)[0]
    endpoint = s3_settings(spark)[0] or "AWS S3"
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"{url}: bucket {bucket!r} does not exist at {endpoint}")
        # One level (one delimited page), not the whole prefix: ingest lists it all right after.
        if need_objects and not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            raise InputPathError(f"input path does not exist or holds no objects: {url}")
    except OSError as e:
        if isinstance(e, (StorageError, InputPathError)):
            raise
        raise StorageError(f"{url}: {_s3_cause(str(e))} (endpoint {endpoint})") from None


def _s3_cause(message: str) -> str:
    text = message.upper()
    if "ACCESS_DENIED" in text or "INVALID_ACCESS_KEY" in text or "SIGNATURE" in text or "FORBIDDEN" in text:
        return "the credentials were rejected (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profile or role)"
    if "CONNECT" in text or "NETWORK" in text or "TIMEOUT" in text or "RESOLVE" in text:
        return "the S3 endpoint cannot be reached"
    return "S3 refused the request: " + message.strip().splitlines()[0][:200]


@dataclass(frozen=True)
class ListedFile:
    path: str  # fully qualified, as Spark's binaryFile reports it (file:/..., s3a://...)
    relative: str  # relative to the listed root
    size_bytes: int
    modified_ns: int = 0  # modification time (ns since the epoch; the store's resolution)
    # Set where the listing itself decides the file is not to be read (a local input's links, names and
    # listing errors): a quarantine reason (imaging.QUARANTINE_REASONS) and its detail.
    reason: Optional[str] = None
    detail: Optional[str] = None


def _fs_and_path(spark: SparkSession, url: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(url)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def qualify(spark: SparkSession, url: str) -> str:
    """The fully qualified form of ``url`` (``/data`` -> ``file:/data``)."""
    if is_connect(spark):
        return url if "://" in url else "file:" + os.path.abspath(url.removeprefix("file:"))
    fs, path = _fs_and_path(spark, url)
    return fs.makeQualified(path).toString()


def require_dir(spark: SparkSession, root: str) -> None:
    """Raise :class:`InputPathError` unless ``root`` is an existing folder."""
    if is_connect(spark):
        fs, path = arrow_fs(spark, root)
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise InputPathError(f"input path does not exist: {root}")
        if kind == pafs.FileType.File:
            raise InputPathError(f"input path is a file, not a folder: {root}")
        return
    fs, path = _fs_and_path(spark, root)
    if not fs.exists(path):
        raise InputPathError(f"input path does not exist: {root}")
    if fs.getFileStatus(path).isFile():
        raise InputPathError(f"input path is a file, not a folder: {root}")


def list_files(spark: SparkSession, root: str, follow_links: str = "within_input") -> Iterator[ListedFile]:
    """Every file under ``root``, recursively (hidden ones included: the caller decides).

    Local folders are walked with os.scandir (about 4 us a file; links as ``follow_links`` says, see
    :func:`_walk_local`), S3 prefixes listed in bulk by pyarrow (the object store's own paging: 1,000 keys a
    request); other file systems through Hadoop's FileSystem over py4j, which costs a few milliseconds a
    file on the driver (on a Spark Connect session, through pyarrow as well).
    """
    require_dir(spark, root)
    base = qualify(spark, root).rstrip("/")
    if base.startswith("file:"):
        yield from _walk_local(base, follow_links)
        return
    if is_s3(base) or is_connect(spark):
        yield from _list_arrow(spark, base)
        return
    yield from list_hadoop(spark, base)


def list_hadoop(spark: SparkSession, base: str) -> Iterator[ListedFile]:
    """Hadoop's recursive listFiles under the qualified ``base``: one py4j round trip per file."""
    fs, path = _fs_and_path(spark, base)
    files = fs.listFiles(path, True)
    while files.hasNext():
        st = files.next()
        full = st.getPath().toString()
        yield ListedFile(path=full, relative=full[len(base) + 1 :], size_bytes=int(st.getLen()),
                         modified_ns=int(st.getModificationTime()) * 1_000_000)


def _list_arrow(spark: SparkSession, base: str) -> Iterator[ListedFile]:
    """pyarrow's recursive listing: for S3 one call that pages through the keys natively."""
    arrow, path = arrow_fs(spark, base)
    scheme = urlparse(base).scheme
    for info in arrow.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File:
            yield ListedFile(path=f"{scheme}://{info.path}", relative=info.path[len(path) + 1:], size_bytes=info.size,
                             modified_ns=info.mtime_ns or 0)


def _display(path: str) -> str:
    """A local path as text every store takes: a name that is not UTF-8 (os.scandir gives its bytes as
    surrogates) with those bytes escaped as \\xNN."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _walk_local(base: str, follow_links: str = "within_input") -> Iterator[ListedFile]:
    """The local equivalent of Hadoop's recursive listFiles, with the same ``file:/...`` paths; whatever
    cannot be read as a file of the input is listed with its quarantine reason instead of failing the run:

    - symbolic links are followed as ``follow_links`` says (``within_input``: where the target is inside the
      input; ``all``; ``none``); a link to a folder listed already (back into what is being listed, or a
      second link to one folder) is ``link_loop``, and a dangling link ``broken_link``;
    - a name that is not UTF-8 is ``name_not_utf8`` (its path shown with \\xNN escapes);
    - a file gone between its listing and its size, and a folder that cannot be listed, are ``unreadable``.
    """
    local_root = base[len("file:"):]
    real_root = os.path.realpath(local_root)

    def entry(path: str, size: int = 0, modified_ns: int = 0, reason: Optional[str] = None,
              detail: Optional[str] = None) -> ListedFile:
        shown = _display(path)
        if reason is None and shown != path:
            reason, detail = "name_not_utf8", "the name's bytes are not UTF-8"
        return ListedFile(path="file:" + shown, relative=shown[len(local_root) + 1:], size_bytes=size,
                          modified_ns=modified_ns, reason=reason, detail=detail)

    def inside(target: str) -> bool:
        return target == real_root or target.startswith(real_root.rstrip("/") + "/")

    root_stat = os.stat(local_root)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack = [local_root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as e:
            yield entry(folder, reason="unreadable", detail=f"the folder could not be listed: {e.strerror or e}")
            continue
        for item in entries:
            link = item.is_symlink()
            if link and follow_links == "none":
                yield entry(item.path, reason="link_not_followed", detail=f"-> {_display(os.readlink(item.path))}")
                continue
            try:
                st = item.stat(follow_symlinks=True)
            except FileNotFoundError:
                if link:
                    yield entry(item.path, reason="broken_link", detail=f"-> {_display(os.readlink(item.path))}")
                else:
                    yield entry(item.path, reason="unreadable", detail="gone between its listing and its size")
                continue
            except OSError as e:  # ELOOP: a link to itself, or a chain too long
                yield entry(item.path, reason="broken_link" if link else "unreadable", detail=e.strerror or str(e))
                continue
            if link and follow_links == "within_input" and not inside(os.path.realpath(item.path)):
                yield entry(item.path, reason="link_outside_input",
                            detail=f"-> {_display(os.path.realpath(item.path))} (ingest.follow_links)")
                continue
            if stat_is_dir(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if link and key in visited:  # (a folder tree without links has no loops)
                    yield entry(item.path, reason="link_loop", detail=f"-> {_display(os.path.realpath(item.path))}")
                    continue
                visited.add(key)
                stack.append(item.path)
            elif stat_is_file(st.st_mode):
                yield entry(item.path, st.st_size, st.st_mtime_ns)
            # (sockets, FIFOs, devices: not files of a collection, and reading a FIFO would block)


def file_status(spark: SparkSession, url: str) -> tuple:
    """(size in bytes, modification time in ms) of the file at ``url``."""
    if is_connect(spark):
        arrow, where = arrow_fs(spark, url)
        info = arrow.get_file_info(where)
        if info.type != pafs.FileType.File:
            raise InputPathError(f"no such file: {url}")
        return int(info.size), int(info.mtime_ns or 0) // 1_000_000
    fs, path = _fs_and_path(spark, url)
    if not fs.exists(path):
        raise InputPathError(f"no such file: {url}")
    status = fs.getFileStatus(path)
    return int(status.getLen()), int(status.getModificationTime())


def write_text(spark: SparkSession, url: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``url``, replacing it."""
    if is_connect(spark):
        arrow, where = arrow_fs(spark, url)
        arrow.create_dir(where.rsplit("/", 1)[0], recursive=True)
        with arrow.open_output_stream(where) as out:
            out.write(text.encode("utf-8"))
        return
    fs, path = _fs_and_path(spark, url)
    out = fs.create(path, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def delete(spark: SparkSession, url: str) -> None:
    if is_connect(spark):
        arrow, where = arrow_fs(spark, url)
        kind = arrow.get_file_info(where).type
        if kind == pafs.FileType.Directory:
            arrow.delete_dir(where)
        elif kind == pafs.FileType.File:
            arrow.delete_file(where)
        return
    fs, path = _fs_and_path(spark, url)
    fs.delete(path, True)


def replace(spark: SparkSession, src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` in one step: Hadoop's FileContext rename with OVERWRITE (atomic on HDFS);
    on a Spark Connect session, pyarrow's move."""
    if is_connect(spark):
        arrow, source = arrow_fs(spark, src)
        arrow.move(source, arrow_fs(spark, dst)[1])
        return
    jvm = spark.sparkContext._jvm
    src_path, dst_path = jvm.org.apache.hadoop.fs.Path(src), jvm.org.apache.hadoop.fs.Path(dst)
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(src_path.toUri(),
                                                                 spark.sparkContext._jsc.hadoopConfiguration())
    options = spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
    options[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
    context.rename(src_path, dst_path, options)


def read_text(spark: SparkSession, url: str) -> Optional[str]:
    """The UTF-8 text at ``url``, or None when there is no such file."""
    fs, path = arrow_fs(spark, url)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")
