"""The pipeline configuration: one YAML file plus ``--set key=value`` overrides, validated once.

Unknown keys and bad values raise :class:`ConfigError` naming the key and the value received.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from imgshards.imaging import OUTPUT_FORMATS, RESIZE_MODES

# The default config travels inside the package (conf/pipeline.yaml in a checkout links to it), so a job
# installed from the wheel runs without a checkout.
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "pipeline.yaml")


class ConfigError(ValueError):
    """A setting that is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def validate(self) -> None:
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"ingest.split.{name} must be between 0 and 1, got {value!r}")
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"ingest.split fractions must add up to 1, got {total:g}")


LABEL_SOURCES = ("folder", "file", "none")
LABEL_KEYS = ("path", "name")
MISSING_POLICIES = ("keep", "mark_deleted", "purge")
# Symbolic links under a local input: followed where they stay inside it (the default), anywhere, or never.
FOLLOW_LINKS = ("within_input", "all", "none")
# copy: images.content holds the file's bytes; reference: only its path, sha256 and header fields (the
# source stays where it is and preprocess reads it by path, checking the sha256).
CONTENT_MODES = ("copy", "reference")
LABEL_CONFLICT_POLICIES = ("report", "majority", "quarantine")


def _check_regex(key: str, pattern: Optional[str], group: str) -> None:
    if pattern is None:
        return
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key} is not a valid regular expression: {pattern!r} ({e})") from e
    if group not in compiled.groupindex:
        raise ConfigError(f"{key} must have a named group (?P<{group}>...), got {pattern!r}")


@dataclass(frozen=True)
class LabelsConfig:
    source: str = "folder"
    folder_level: int = 1
    folder_regex: Optional[str] = None
    file: Optional[str] = None
    key: str = "path"
    required: bool = False

    def validate(self) -> None:
        if self.source not in LABEL_SOURCES:
            raise ConfigError(f"ingest.labels.source must be one of {list(LABEL_SOURCES)}, got {self.source!r}")
        if self.folder_level < 1:
            raise ConfigError(f"ingest.labels.folder_level must be >= 1 (1 = parent folder), got {self.folder_level!r}")
        _check_regex("ingest.labels.folder_regex", self.folder_regex, "label")
        if self.source == "file" and not self.file:
            raise ConfigError("ingest.labels.file must name a CSV or JSON-lines file when ingest.labels.source is 'file'")
        if self.key not in LABEL_KEYS:
            raise ConfigError(f"ingest.labels.key must be one of {list(LABEL_KEYS)}, got {self.key!r}")
        if self.required and self.source == "none":
            raise ConfigError("ingest.labels.required cannot be true when ingest.labels.source is 'none'")


@dataclass(frozen=True)
class NearDuplicatesConfig:
    enabled: bool = True
    max_distance: int = 7
    confirm_distance: int = 100
    max_aspect_change: float = 0.05
    same_split: bool = True

    def validate(self) -> None:
        if not 0 <= self.max_distance <= 16:
            raise ConfigError(f"ingest.near_duplicates.max_distance must be in 0..16 bits, got {self.max_distance!r}")
        if not 0 <= self.confirm_distance <= 256:
            raise ConfigError("ingest.near_duplicates.confirm_distance must be in 0..256 bits, "
                              f"got {self.confirm_distance!r}")
        if not 0 <= self.max_aspect_change <= 1:
            raise ConfigError("ingest.near_duplicates.max_aspect_change must be in 0..1 (a fraction), "
                              f"got {self.max_aspect_change!r}")


# Quality signals an image can be flagged for (imgshards.quality), each with its threshold setting.
QUALITY_SIGNALS = ("dark", "bright", "low_contrast", "blurry", "small", "odd_aspect")


@dataclass(frozen=True)
class QualityConfig:
    dark: float = 35.0
    bright: float = 225.0
    low_contrast: float = 10.0
    blurry: float = 0.03
    small: int = 64
    odd_aspect: float = 3.0
    quarantine: tuple = ()

    def validate(self) -> None:
        unknown = [s for s in self.quarantine if s not in QUALITY_SIGNALS]
        if unknown:
            raise ConfigError(f"ingest.quality.quarantine names unknown signals {unknown}; known: {list(QUALITY_SIGNALS)}")
        if not 0 <= self.dark < self.bright <= 255:
            raise ConfigError(f"ingest.quality.dark and bright must satisfy 0 <= dark < bright <= 255, "
                              f"got {self.dark!r} and {self.bright!r}")
        for name in ("low_contrast", "blurry", "small"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ingest.quality.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.odd_aspect < 1:
            raise ConfigError(f"ingest.quality.odd_aspect must be >= 1 (long side over short side), got {self.odd_aspect!r}")


@dataclass(frozen=True)
class StreamConfig:
    trigger: str = "available_now"
    checkpoint: Optional[str] = None
    max_files_per_trigger: int = 1000
    max_file_age: Optional[str] = None  # e.g. '30d'; None: no limit (see conf/pipeline.yaml)

    def validate(self) -> None:
        if self.max_file_age is not None and not re.fullmatch(r"[1-9]\d*\s*(d|h|m|s|days?|hours?|minutes?|seconds?)",
                                                                self.max_file_age):
            raise ConfigError(f"ingest.stream.max_file_age must be null or a duration like '30d', got {self.max_file_age!r}")
        if self.trigger != "available_now" and not re.fullmatch(r"\d+\s+(seconds?|minutes?|hours?)", self.trigger):
            raise ConfigError("ingest.stream.trigger must be 'available_now' or an interval like '30 seconds', "
                              f"got {self.trigger!r}")
        if self.max_files_per_trigger < 1:
            raise ConfigError(f"ingest.stream.max_files_per_trigger must be >= 1, got {self.max_files_per_trigger!r}")


@dataclass(frozen=True)
class IngestConfig:
    extensions: tuple = ("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp")
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 89_478_485
    split: SplitConfig = field(default_factory=SplitConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    group_regex: Optional[str] = None
    near_duplicates: NearDuplicatesConfig = field(default_factory=NearDuplicatesConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    label_conflicts: str = "report"
    missing: str = "keep"
    content: str = "copy"
    skip_unchanged: bool = True
    follow_links: str = "within_input"
    stream: StreamConfig = field(default_factory=StreamConfig)

    def validate(self) -> None:
        self.labels.validate()
        self.near_duplicates.validate()
        self.quality.validate()
        self.stream.validate()
        _check_regex("ingest.group_regex", self.group_regex, "group")
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"ingest.missing must be one of {list(MISSING_POLICIES)}, got {self.missing!r}")
        if self.content not in CONTENT_MODES:
            raise ConfigError(f"ingest.content must be one of {list(CONTENT_MODES)}, got {self.content!r}")
        if self.label_conflicts not in LABEL_CONFLICT_POLICIES:
            raise ConfigError(f"ingest.label_conflicts must be one of {list(LABEL_CONFLICT_POLICIES)}, "
                              f"got {self.label_conflicts!r}")
        if self.follow_links not in FOLLOW_LINKS:
            raise ConfigError(f"ingest.follow_links must be one of {list(FOLLOW_LINKS)}, got {self.follow_links!r}")
        if not self.extensions:
            raise ConfigError("ingest.extensions must name at least one extension")
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or "." in ext or "/" in ext or (ext != "*" and "*" in ext):
                raise ConfigError(f"ingest.extensions: {ext!r} is not a bare extension like 'jpg' (or '*' for any file)")
        # Spark's binaryFile reader cannot hold a file above 2 GiB - 1 in one row.
        if not 0 < self.max_bytes <= 2**31 - 1:
            raise ConfigError(f"ingest.max_bytes must be in 1..{2**31 - 1}, got {self.max_bytes!r}")
        if self.max_pixels <= 0:
            raise ConfigError(f"ingest.max_pixels must be positive, got {self.max_pixels!r}")
        self.split.validate()


BACKENDS = ("opencv", "pil", "dali-cpu", "dali-gpu", "auto")
CPU_BACKENDS = ("opencv", "pil")  # the backends that need no DALI
AUGMENT_OPS = ("random_resized_crop", "flip", "rotate", "color", "blur")
SPLIT_NAMES = ("train", "val", "test")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be in {low:g}..{high:g}, got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Offline augmentation: extra copies of images, made by DALI with per-copy random parameters drawn
    from a seed that depends only on (seed, parent sha256, copy number)."""

    copies: int = 0
    balance_classes: bool = False
    seed: int = 0
    splits: tuple = ("train",)
    ops: tuple = AUGMENT_OPS
    crop_scale_min: float = 0.35
    crop_ratio_max: float = 4.0 / 3.0
    flip_probability: float = 0.5
    rotate_degrees: float = 15.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue_degrees: float = 10.0
    blur_probability: float = 0.3
    blur_sigma_max: float = 1.5

    @property
    def enabled(self) -> bool:
        return self.copies > 0 or self.balance_classes

    def validate(self) -> None:
        _check_range("preprocess.augment.copies", self.copies, 0, 100)
        for op in self.ops:
            if op not in AUGMENT_OPS:
                raise ConfigError(f"preprocess.augment.ops: unknown op {op!r}; known: {list(AUGMENT_OPS)}")
        for split in self.splits:
            if split not in SPLIT_NAMES:
                raise ConfigError(f"preprocess.augment.splits: unknown split {split!r}; known: {list(SPLIT_NAMES)}")
        _check_range("preprocess.augment.crop_scale_min", self.crop_scale_min, 0.01, 1.0)
        _check_range("preprocess.augment.crop_ratio_max", self.crop_ratio_max, 1.0, 10.0)
        _check_range("preprocess.augment.rotate_degrees", self.rotate_degrees, 0.0, 180.0)
        _check_range("preprocess.augment.hue_degrees", self.hue_degrees, 0.0, 180.0)
        _check_range("preprocess.augment.blur_sigma_max", self.blur_sigma_max, 0.0, 10.0)
        for name in ("flip_probability", "blur_probability", "brightness", "contrast", "saturation"):
            _check_range(f"preprocess.augment.{name}", getattr(self, name), 0.0, 1.0)


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 224
    resize: str = "crop"
    pad_value: int = 0
    output_format: str = "jpeg"
    quality: int = 90
    draft: bool = True
    backend: str = "opencv"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"preprocess.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        dali = self.backend not in CPU_BACKENDS
        if (dali or self.augment.enabled) and importlib.util.find_spec("nvidia.dali") is None:
            what = f"preprocess.backend={self.backend}" if dali else "preprocess.augment"
            raise ConfigError(f"{what} needs NVIDIA DALI: pip install 'imgshards[gpu]'")
        if not 8 <= self.size <= 4096:
            raise ConfigError(f"preprocess.size must be in 8..4096, got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"preprocess.resize must be one of {list(RESIZE_MODES)}, got {self.resize!r}")
        _check_range("preprocess.pad_value", self.pad_value, 0, 255)
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"preprocess.output_format must be one of {list(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"preprocess.quality must be in 1..100, got {self.quality!r}")
        self.augment.validate()


EXPORT_CODECS = ("compressed", "ndarray")
EXPORT_FORMATS = ("petastorm", "mds", "webdataset")
# MDS's compression names, with the levels it accepts (gzip is the standard library's; zstd needs zstandard)
MDS_COMPRESSIONS = {"gz": range(0, 10), "zstd": range(1, 23)}


@dataclass(frozen=True)
class ExportConfig:
    row_group_size_mb: int = 32
    files_per_split: int = 4
    codec: str = "compressed"
    shuffle_seed: int = 0
    keep_versions: int = 2
    # petastorm is always written: the project's loader, the report and forget read it
    formats: tuple = ("petastorm",)
    shard_size_mb: int = 64
    min_shards: int = 64
    mds_compression: Optional[str] = None

    def validate(self) -> None:
        unknown = [f for f in self.formats if f not in EXPORT_FORMATS]
        if unknown or "petastorm" not in self.formats or len(set(self.formats)) != len(self.formats):
            raise ConfigError(f"export.formats must list petastorm (the project's loader, the report and forget read "
                              f"it) and any of mds, webdataset, each once; got {list(self.formats)!r}")
        if not 1 <= self.shard_size_mb <= 1024:
            raise ConfigError(f"export.shard_size_mb must be in 1..1024 (an MDS shard is under 4 GiB), "
                              f"got {self.shard_size_mb!r}")
        if self.min_shards < 1:
            raise ConfigError(f"export.min_shards must be >= 1, got {self.min_shards!r}")
        _check_mds_compression(self.mds_compression)
        if not 1 <= self.row_group_size_mb <= 1024:
            raise ConfigError(f"export.row_group_size_mb must be in 1..1024, got {self.row_group_size_mb!r}")
        if self.files_per_split < 1:
            raise ConfigError(f"export.files_per_split must be >= 1, got {self.files_per_split!r}")
        if self.codec not in EXPORT_CODECS:
            raise ConfigError(f"export.codec must be one of {list(EXPORT_CODECS)}, got {self.codec!r}")
        if self.keep_versions < 1:
            raise ConfigError(f"export.keep_versions must be >= 1, got {self.keep_versions!r}")


def _check_mds_compression(setting: Optional[str]) -> None:
    if setting is None:
        return
    name, _, level = str(setting).partition(":")
    if name not in MDS_COMPRESSIONS:
        raise ConfigError(f"export.mds_compression must be null or one of {sorted(MDS_COMPRESSIONS)} "
                          f"(optionally name:level), got {setting!r}")
    levels = MDS_COMPRESSIONS[name]
    if level and (not level.isdigit() or int(level) not in levels):
        raise ConfigError(f"export.mds_compression: {name} levels are {levels.start}..{levels.stop - 1}, "
                          f"got {setting!r}")
    if name == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise ConfigError("export.mds_compression=zstd needs the zstandard package (pip install zstandard), "
                              "on the executors too") from None


@dataclass(frozen=True)
class S3Config:
    """How to reach S3 or an S3-compatible server. Credentials never go here: they come from the standard
    AWS environment variables, a profile or the instance role, as the AWS SDKs find them."""

    endpoint: Optional[str] = None  # None: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS itself
    path_style: Optional[bool] = None  # None: true when an endpoint is set (S3-compatible servers)
    region: Optional[str] = None  # None: $AWS_REGION or $AWS_DEFAULT_REGION

    def validate(self) -> None:
        if self.endpoint is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+/?", self.endpoint):
            raise ConfigError(f"storage.s3.endpoint must be http(s)://host[:port], got {self.endpoint!r}")


@dataclass(frozen=True)
class StorageConfig:
    s3: S3Config = field(default_factory=S3Config)

    def validate(self) -> None:
        self.s3.validate()


@dataclass(frozen=True)
class ConnectConfig:
    """What a job does on a Spark Connect session (Databricks serverless and standard access mode, a Spark 4
    Connect server)."""

    environment: Optional[str] = None  # a packed environment (scripts/package.sh) uploaded as an artifact

    def validate(self) -> None:
        if self.environment is not None and not self.environment.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
            raise ConfigError(f"connect.environment must be a .tar.gz, .tgz, .tar or .zip archive, got {self.environment!r}")


# A catalog or schema name: what Unity Catalog, Glue and Hive all accept unquoted.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


@dataclass(frozen=True)
class TablesConfig:
    """Where the Delta tables live: folders under ``warehouse`` (the default), or tables by name in the Spark
    session's catalog (Unity Catalog, the Glue or Hive metastore). With names, ``warehouse`` still holds the
    run state and the stream's checkpoint (a Volume path on Databricks)."""

    schema: Optional[str] = None  # the schema (database) of the four tables; None: folders under warehouse
    catalog: Optional[str] = None  # the catalog that holds the schema (Unity Catalog); None: the session's current catalog
    external: bool = False  # named tables at <warehouse>/<table> (external); False: managed by the catalog

    def validate(self) -> None:
        for key in ("schema", "catalog"):
            value = getattr(self, key)
            if value is not None and not _IDENTIFIER.fullmatch(value):
                raise ConfigError(f"tables.{key} must be a name of letters, digits and underscores, got {value!r}")
        if self.catalog is not None and self.schema is None:
            raise ConfigError("tables.catalog needs tables.schema (the schema in that catalog that holds the tables)")
        if self.external and self.schema is None:
            raise ConfigError("tables.external needs tables.schema: tables without a name are always at <warehouse>/<table>")


@dataclass(frozen=True)
class Table:
    """One Delta table: a folder (``path`` only), or a name in the session's catalog (``name``, with the
    table's folder as ``path`` where it is an external table at a known location)."""

    path: Optional[str] = None
    name: Optional[str] = None  # quoted: `catalog`.`schema`.`table`

    def __str__(self) -> str:
        return self.name or self.path or ""


@dataclass(frozen=True)
class MetricsConfig:
    """Where a job pushes its outcome (imgshards.observe.metrics); metrics never fail a run."""

    pushgateway: Optional[str] = None  # http(s)://host:port of a Prometheus Pushgateway; None: $IMGSHARDS_PUSHGATEWAY, else off
    timeout_seconds: float = 5.0

    def validate(self) -> None:
        if self.pushgateway is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?", self.pushgateway):
            raise ConfigError(f"metrics.pushgateway must be http(s)://host:port, got {self.pushgateway!r}")
        _check_range("metrics.timeout_seconds", self.timeout_seconds, 0.1, 300)


@dataclass(frozen=True)
class ProgressConfig:
    interval_seconds: float = 10.0  # one progress line this often while a job runs; 0: off

    def validate(self) -> None:
        _check_range("progress.interval_seconds", self.interval_seconds, 0, 86400)


@dataclass(frozen=True)
class ReportConfig:
    """The HTML dataset report (imgshards.report), written beside the export."""

    enabled: bool = True  # the pipeline's last step; the report job runs regardless
    samples_per_class: int = 8  # processed samples shown per class
    max_classes: int = 24  # classes shown in the sample grid (the largest first)
    near_duplicate_clusters: int = 12  # clusters shown with thumbnails, those crossing splits first
    examples_per_reason: int = 5  # example paths per quarantine reason and for duplicates
    thumbnail_size: int = 96  # longer side of a thumbnail, pixels

    def validate(self) -> None:
        for name in ("samples_per_class", "max_classes", "near_duplicate_clusters", "examples_per_reason"):
            _check_range(f"report.{name}", getattr(self, name), 0, 1000)
        _check_range("report.thumbnail_size", self.thumbnail_size, 16, 512)


@dataclass(frozen=True)
class ForgetConfig:
    """Removing images for good: the forget job and ingest.missing=purge (imgshards.ingest.forget)."""

    retention_hours: int = 168

    def validate(self) -> None:
        _check_range("forget.retention_hours", self.retention_hours, 0, 24 * 365 * 10)


@dataclass(frozen=True)
class PipelineConfig:
    input: Optional[str] = None
    warehouse: str = ".work/warehouse"
    output: str = ".work/shards"
    workdir: str = ".work"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    connect: ConnectConfig = field(default_factory=ConnectConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)

    def validate(self) -> None:
        for name in ("warehouse", "output", "workdir"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must be a path, got {getattr(self, name)!r}")
        self.storage.validate()
        self.tables.validate()
        self.connect.validate()
        self.ingest.validate()
        self.preprocess.validate()
        self.export.validate()
        self.metrics.validate()
        self.progress.validate()
        self.report.validate()
        self.forget.validate()
        if self.preprocess.output_format == "raw" and self.export.codec != "ndarray":
            raise ConfigError("preprocess.output_format=raw needs export.codec=ndarray (raw arrays are not "
                              "JPEG/PNG), got export.codec=" + repr(self.export.codec))

    def table(self, table: str) -> Table:
        """Where the table ``table`` (images, quarantine, duplicates, processed) is: a folder under the
        warehouse, or its name in the catalog (see :class:`TablesConfig`)."""
        t = self.tables
        if t.schema is None:
            return Table(path=join_path(self.warehouse, table))
        name = ".".join(f"`{part}`" for part in (t.catalog, t.schema, table) if part is not None)
        return Table(path=join_path(self.warehouse, table) if t.external else None, name=name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def output_fingerprint(self) -> str:
        """What an unaugmented processed row depends on: the preprocess settings except the backend
        (backends agree within a pixel tolerance; each row records which one made it) and augment."""
        return _short_hash({k: v for k, v in self.to_dict()["preprocess"].items() if k not in ("backend", "augment")})

    def augment_fingerprint(self) -> str:
        """What an augmented copy depends on: the output settings and the augmentation settings."""
        return _short_hash({k: v for k, v in self.to_dict()["preprocess"].items() if k != "backend"})

    def sample_fingerprints(self) -> list:
        """The fingerprints of the processed rows the current settings want: the originals', and the
        augmented copies' when augmentation is on."""
        return [self.output_fingerprint()] + ([self.augment_fingerprint()] if self.preprocess.augment.enabled else [])

    def fingerprint(self, *sections: str) -> str:
        """A short, stable hash of the named sections (all of them when none are named)."""
        data = self.to_dict()
        if sections:
            data = {name: data[name] for name in sections}
        return _short_hash(data)


def _short_hash(data: dict) -> str:
    canonical = json.dumps(data, sort_keys=True, default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def join_path(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs alike (os.path.join would mangle s3a://)."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def resolve_local(path: str) -> str:
    """Make a local relative path absolute (so Spark, Delta and Petastorm agree); leave URLs alone."""
    if "://" in path:
        return path
    return os.path.abspath(path)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a dataclass field type and convert where it is safe (int -> float, list -> tuple)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(key, value, args[0])
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _build(annotation, value, prefix=key + ".")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(str(v).lower() for v in value)
    raise TypeError(f"no coercion for {key} of type {annotation!r}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(prefix + name, value, hints[name]) for name, value in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'preprocess.size=128'`` -> ``('preprocess.size', 128)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from e
    return key.strip(), value


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Load ``path`` (default: the package's pipeline.yaml), apply ``key=value`` overrides, validate, return the config."""
    data = _read_yaml(path or DEFAULT_CONFIG_PATH)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    config = _build(PipelineConfig, data)
    config.validate()
    return config
