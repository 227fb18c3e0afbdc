"""Reading the input: Spark's binaryFile source, the driver's listing as a DataFrame, and the one pass over
the files' bytes (sha256, header probe, perceptual hash) that decides every file's fate.
"""
from __future__ import annotations

import hashlib
import logging
import posixpath
import zlib
from typing import Iterator, Optional

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from imgshards import imaging
from imgshards.config import LabelsConfig, PipelineConfig
from imgshards.delta import tables
from imgshards.ingest.rules import extension_glob, group_from_path, label_from_path
from imgshards.io.filesystems import open_source
from imgshards.session import default_parallelism

log = logging.getLogger(__name__)


INGEST_STAGE = "ingest"

# Spark's binaryFile schema; a streaming source must be given it.
BINARY_FILE_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("modificationTime", TimestampType(), False),
        StructField("length", LongType(), False),
        StructField("content", BinaryType(), True),
    ]
)

PROBED_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("relative", StringType(), False),
        StructField("label", StringType(), True),
        StructField("group_key", StringType(), True),
        StructField("sha256", StringType(), True),
        StructField("size_bytes", LongType(), False),
        StructField("format", StringType(), True),
        StructField("width", IntegerType(), True),
        StructField("height", IntegerType(), True),
        StructField("phash", LongType(), True),
        StructField("phash_fine", ArrayType(LongType(), False), True),
        StructField("brightness", FloatType(), True),
        StructField("contrast", FloatType(), True),
        StructField("sharpness", FloatType(), True),
        # CRC32 of the bytes the probe hashed, when the bytes are kept (ingest.content=copy): the check
        # that the bytes read again to write are the same (see _write_rows). Not a table column.
        StructField("crc32", LongType(), True),
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
    ]
)
_PROBED_INTEGERS = [f.name for f in PROBED_SCHEMA.fields if isinstance(f.dataType, (IntegerType, LongType))]

def _read_local(path: str, max_bytes: int) -> bytes:
    """The bytes of a local file read in this Python worker; raises :class:`imaging.ImageError`."""
    try:
        with open_source(path) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:  # gone since the listing, denied
        raise imaging.ImageError("unreadable", f"could not be read: {e}"[:500]) from e
    if len(data) > max_bytes:
        raise imaging.ImageError("too_large_bytes", f"more than ingest.max_bytes {max_bytes} bytes when read")
    return data


# The bytes one output batch of with_local_contents holds at most (its input batches are sized by paths).
CONTENT_BATCH_BYTES = 64 * 1024 * 1024


def with_local_contents(batches: Iterator[pa.RecordBatch], max_bytes: int) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: rows with a ``path`` of a local file -> the same rows with the file's ``content``,
    read in this Python worker (null for a file that can no longer be read as probed: its row is then not
    written, and the write's count check says so), in batches of at most CONTENT_BATCH_BYTES. The rows pass
    through as Arrow, so no join brings the bytes and the rows back together (and no 64-bit column goes
    through pandas). Any name the listing took is opened as it is: Hadoop's paths are not involved."""
    for batch in batches:
        # The binary type that matches the strings Spark sent (large types where it uses them).
        binary = pa.large_binary() if batch.schema.field("path").type == pa.large_string() else pa.binary()
        start, contents, size = 0, [], 0
        for i, path in enumerate(batch.column("path").to_pylist()):
            try:
                contents.append(_read_local(path, max_bytes))
                size += len(contents[-1])
            except imaging.ImageError:
                contents.append(None)
            if size >= CONTENT_BATCH_BYTES or i == batch.num_rows - 1:
                part = batch.slice(start, len(contents))
                yield pa.RecordBatch.from_arrays([*part.columns, pa.array(contents, binary)],
                                                 names=[*part.schema.names, "content"])
                start, contents, size = i + 1, [], 0


def probe_batches(
    batches: Iterator[pd.DataFrame], *, base: str, max_pixels: int, labels: LabelsConfig,
    group_regex: Optional[str], phash: bool, done=None, max_bytes: int = 2**31 - 1, crc32: bool = False,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: sha256, header probe (+ hashes and quality signals, + ``crc32`` of the bytes) per file; errors
    become reason/detail. Batches of (path, length) are local files this worker reads itself; batches with
    content come from the JVM's reader (object stores). Returns metadata only: the bytes are read again when
    the table is written."""
    for batch in batches:
        rows = []
        local = "content" not in batch
        unread = [None] * len(batch)
        for path, length, content in zip(batch["path"], batch["length"], unread if local else batch["content"]):
            relative = path[len(base) + 1 :] if path.startswith(base + "/") else posixpath.basename(path)
            row = dict.fromkeys(PROBED_SCHEMA.fieldNames())
            row.update(path=path, relative=relative, size_bytes=int(length),
                       label=label_from_path(relative, labels), group_key=group_from_path(relative, group_regex))
            try:
                if local:
                    content = _read_local(path, max_bytes)
                elif content is None:
                    raise imaging.ImageError("unreadable", "no content returned by the reader")
                # Here, not by Spark's sha2: the JVM's SHA-256 is an order of magnitude slower than
                # Python's without the C2 compiler (the local profile's JIT).
                row["sha256"] = hashlib.sha256(content).hexdigest()
                if crc32:
                    row["crc32"] = zlib.crc32(content)
                opened = imaging.open_image(content, max_pixels)  # the header, parsed once for both
                info = imaging.probe(content, max_pixels, opened)
                row.update(format=info.format, width=info.width, height=info.height)
                if phash:
                    found = imaging.fingerprint(content, max_pixels, opened)
                    row.update(phash=found.phash, phash_fine=list(found.fine), brightness=found.brightness,
                               contrast=found.contrast, sharpness=found.sharpness)
            except imaging.ImageError as e:
                row.update(reason=e.reason, detail=e.detail)
            rows.append(row)
        # Integer columns as nullable integers from the start: a batch with one failed probe would otherwise
        # make them float64, which rounds 64-bit perceptual hashes (so near-duplicates depended on how files
        # fell into batches).
        yield pd.DataFrame({
            name: pd.array([row[name] for row in rows], dtype="Int64") if name in _PROBED_INTEGERS
            else [row[name] for row in rows]
            for name in PROBED_SCHEMA.fieldNames()
        })
        if done is not None:  # the progress accumulator
            done.add(len(rows))


NO_FILE_AGE_LIMIT = "36500d"  # a century: ingest.stream.max_file_age null


def read_files(spark: SparkSession, input_root: str, config: PipelineConfig, *, stream: bool = False) -> DataFrame:
    """binaryFile over the image files under ``input_root``: path, length, content (read lazily)."""
    reader = spark.readStream if stream else spark.read
    reader = (
        reader.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", extension_glob(config.ingest.extensions))
    )
    # A file deleted between the listing and the read is skipped, not a failed job: the batch run
    # quarantines it from its own listing (ingest_batch's ``listed``); a stream, whose restart would plan the
    # same files again, goes on without it.
    reader = reader.option("ignoreMissingFiles", "true")
    if stream:
        stream_config = config.ingest.stream
        reader = reader.schema(BINARY_FILE_SCHEMA).option("maxFilesPerTrigger", stream_config.max_files_per_trigger)
        # Spark's default (7 days) silently passes over files older than the newest seen.
        reader = reader.option("maxFileAge", stream_config.max_file_age or NO_FILE_AGE_LIMIT)
    return reader.load(input_root).select("path", "length", "content")


# Tasks per core of the pass over files listed on the driver: images differ in cost, and a last task left
# alone would idle the other cores.
LISTED_TASKS_PER_CORE = 4
LISTED_TASK_BYTES = 128 << 20


def listed_files(spark: SparkSession, listed: dict) -> DataFrame:
    """(path, length) of the files the driver listed (path -> size in bytes), in tasks of at most
    LISTED_TASK_BYTES: the input of the pass over local files, which the Python workers read themselves.
    Spark's binaryFile would list the folder a second time for nothing."""
    tasks = max(LISTED_TASKS_PER_CORE * default_parallelism(spark), -(-sum(listed.values()) // LISTED_TASK_BYTES))
    paths = sorted(listed)
    frame = pd.DataFrame({"id": range(len(paths)), "path": paths, "length": [listed[p] for p in paths]})
    # Through Arrow into the JVM, then spread over the tasks by a range join: every scan of it stays in the
    # JVM. sc.parallelize would hand each scan's rows to the RDD Python workers (another pool than the
    # pandas UDFs'), a second start-up on every scan, and ingest scans it more than once.
    with tables.temporary_conf(spark, "spark.sql.execution.arrow.pyspark.enabled", "true"):
        rows = spark.createDataFrame(frame, "id long, path string, length long")
    if len(paths) <= tables.BROADCAST_ROWS:
        rows = F.broadcast(rows)
    return spark.range(0, len(paths), numPartitions=max(1, min(tasks, len(paths)))).join(rows, "id").drop("id")
