"""Ingest's pure per-file rules: which listed files are hidden or not images, the label and group a path
gives, and the split a file's content (or group) hashes to. No Spark jobs; the split rule also as a Column."""
from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Optional

from pyspark.sql import functions as F

from imgshards.config import LabelsConfig, SplitConfig

EXAMPLES = 5  # examples kept per report entry (labels, near-duplicates)

def is_hidden(relative_path: str) -> bool:
    """Hidden the way Spark's file index sees it: a path part starting with '.' or '_'."""
    return any(part.startswith((".", "_")) for part in relative_path.split("/"))


ANY_EXTENSION = "*"


def extension_glob(extensions) -> str:
    """A Hadoop glob matching the extensions case-insensitively: ``*.{[jJ][pP][gG],...}`` (``*``: any file)."""
    if ANY_EXTENSION in extensions:
        return "*"
    alternatives = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext) for ext in extensions]
    return "*.{" + ",".join(alternatives) + "}"


def has_extension(relative_path: str, extensions) -> bool:
    if ANY_EXTENSION in extensions:
        return True
    return posixpath.splitext(relative_path)[1].lower().lstrip(".") in extensions


def label_from_path(relative_path: str, labels: LabelsConfig) -> Optional[str]:
    """The label that the folder layout gives: a named regex group, or the folder ``folder_level`` up."""
    if labels.source != "folder":
        return None
    if labels.folder_regex:
        match = re.search(labels.folder_regex, relative_path)
        return match.group("label") if match else None
    folders = relative_path.split("/")[:-1]
    return folders[-labels.folder_level] if len(folders) >= labels.folder_level else None


def group_from_path(relative_path: str, group_regex: Optional[str]) -> Optional[str]:
    if not group_regex:
        return None
    match = re.search(group_regex, relative_path)
    return match.group("group") if match else None


def split_key_column(sha256: F.Column, group_key: F.Column) -> F.Column:
    """The hash that decides the split: the content's, or the group's when the row has a group."""
    return F.when(group_key.isNull(), sha256).otherwise(F.sha2(group_key, 256))


def split_column(key_sha256: F.Column, split: SplitConfig) -> F.Column:
    """train/val/test from the first 32 bits of a sha256 hex string: stable across runs and machines."""
    position = F.conv(F.substring(key_sha256, 1, 8), 16, 10).cast("double") / float(2**32)
    return (
        F.when(position < split.train, F.lit("train"))
        .when(position < split.train + split.val, F.lit("val"))
        .otherwise(F.lit("test"))
    )


def split_of(sha256: str, split: SplitConfig, group_key: Optional[str] = None) -> str:
    """The same rule as :func:`split_column` on :func:`split_key_column`, in Python."""
    key = sha256 if group_key is None else hashlib.sha256(group_key.encode()).hexdigest()
    position = int(key[:8], 16) / float(2**32)
    if position < split.train:
        return "train"
    if position < split.train + split.val:
        return "val"
    return "test"
