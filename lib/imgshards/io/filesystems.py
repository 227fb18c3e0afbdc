"""pyarrow file systems for local paths and URLs, with S3 endpoints from settings or the environment.

Only pyarrow here (no Spark, no Petastorm): the training-side loader uses it in a modern environment too.
``s3://`` and ``s3a://`` are both S3. Credentials are never passed in: pyarrow's AWS SDK finds them the
standard way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, the instance role).
"""
from __future__ import annotations

import functools
import os
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEMES = ("s3", "s3a")
# Object stores replace an object with one PUT atomically; they have no atomic rename.
OBJECT_STORE_SCHEMES = S3_SCHEMES + ("gs", "gcs", "abfs", "abfss", "wasb", "wasbs")


def s3_endpoint(endpoint: Optional[str] = None) -> Optional[str]:
    """The S3 endpoint URL: ``endpoint`` if given, else ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL``."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region(region: Optional[str] = None) -> Optional[str]:
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def is_s3(url: str) -> bool:
    return urlparse(url).scheme in S3_SCHEMES


def is_object_store(url: str) -> bool:
    return urlparse(url).scheme in OBJECT_STORE_SCHEMES


def s3_filesystem(endpoint: Optional[str] = None, path_style: Optional[bool] = None, region: Optional[str] = None,
                  *, timeout_s: Optional[float] = None) -> pafs.S3FileSystem:
    """An S3FileSystem for AWS, or for the S3-compatible server at ``endpoint`` (path-style requests unless
    ``path_style`` is False). ``timeout_s`` bounds connecting and each request, with no retries."""
    endpoint = s3_endpoint(endpoint)
    options = {}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        if path_style is False:
            options["force_virtual_addressing"] = True
    elif path_style:
        raise ValueError("path-style S3 requests need an endpoint (storage.s3.endpoint or AWS_ENDPOINT_URL)")
    region = s3_region(region)
    if region:
        options["region"] = region
    if timeout_s is not None:
        options.update(connect_timeout=timeout_s, request_timeout=timeout_s,
                       retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return pafs.S3FileSystem(**options)


def arrow_filesystem(url: str, endpoint: Optional[str] = None, path_style: Optional[bool] = None,
                     region: Optional[str] = None, *, timeout_s: Optional[float] = None):
    """(pyarrow FileSystem, path inside it) for a local path or a ``file://``, ``s3://``, ``s3a://``, ``gs://``
    or ``hdfs://`` URL."""
    if url.startswith("file:"):  # file:///x, and Spark's file:/x
        return pafs.LocalFileSystem(), "/" + url[len("file:"):].lstrip("/")
    if "://" not in url:
        return pafs.LocalFileSystem(), os.path.abspath(url)
    parsed = urlparse(url)
    if parsed.scheme in S3_SCHEMES:
        return s3_filesystem(endpoint, path_style, region, timeout_s=timeout_s), (parsed.netloc + parsed.path).rstrip("/")
    return pafs.FileSystem.from_uri(url)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: Optional[str], path_style: Optional[bool], region: Optional[str]) -> pafs.S3FileSystem:
    return s3_filesystem(endpoint, path_style, region)


def open_source(path: str, s3: tuple = (None, None, None)):
    """An open pyarrow input file for a path as Spark names it (``file:/x``, ``s3a://bucket/key``, ...),
    in a Python worker: the bytes do not pass through the JVM. ``s3``: (endpoint, path style, region); one
    S3 client per process and settings."""
    parsed = urlparse(path)
    if parsed.scheme in S3_SCHEMES:
        return _s3_client(*s3).open_input_file(parsed.netloc + parsed.path)
    fs, inner = arrow_filesystem(path)
    return fs.open_input_file(inner)
