"""The export's manifest: what one exported version holds, read and written here and nowhere else.

An export writes ``manifest.json`` into its version folder ``<output>/v-<run_id>/`` and publishes a copy at
``<output>/manifest.json`` (see :mod:`imgshards.export.publish`); the training side reads it
(:mod:`imgshards.train.loader`), and so do the report and the pipeline's check for an export it can keep.
Each split's ``path`` is relative to the folder the manifest is written in, so a copy of an export (another
folder, another bucket, S3 to local disk) reads the same; manifests of format 1 carried absolute URLs.

Nothing here imports Spark, pyarrow or Petastorm: the training side reads manifests in environments that have
none of them.
"""
from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any, Optional

MANIFEST_FILE = "manifest.json"
CLASSES_FILE = "classes.json"
VERSION_PREFIX = "v-"  # an export's version folder: v-<run_id>
# 2: split paths relative to the manifest's folder; 1 (no field): absolute URLs. Readers take both.
MANIFEST_FORMAT = 2
READABLE_FORMATS = (1, 2)


class ManifestError(ValueError):
    """A manifest this version cannot read: not JSON, a format it does not know, or a required key missing."""


@dataclasses.dataclass
class Manifest:
    """One exported version. ``splits`` maps a split name to {path, rows, per_class, augmented, bytes,
    row_groups, formats}; ``image`` holds height, width, channels, format and codec; ``source`` the images table and
    the Delta version read."""

    classes: list
    splits: dict
    image: dict
    run_id: str = ""
    version_dir: str = ""
    source: dict = dataclasses.field(default_factory=dict)
    config_fingerprint: str = ""
    augment_fingerprint: Optional[str] = None
    processed_table: str = ""
    package_version: str = ""
    created_at: str = ""
    config: dict = dataclasses.field(default_factory=dict)
    schema: dict = dataclasses.field(default_factory=dict)
    normalization: Optional[dict] = None
    # The formats of every split: petastorm (the split's own path and row groups), and those of
    # export.formats (each split's "formats" maps the format to its path, index file, shards and bytes).
    formats: list = dataclasses.field(default_factory=lambda: ["petastorm"])
    manifest_format: int = MANIFEST_FORMAT

    @property
    def codec(self) -> str:
        """How the images are stored: ``compressed`` (JPEG/PNG bytes) or ``ndarray`` (np.save bytes)."""
        return self.image.get("codec", "compressed")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, folder: str = "") -> str:
        """The manifest as written into ``folder`` (relative to the export root, "" for the root): each
        split's path made relative to it."""
        data = self.to_dict()
        data["splits"] = {name: _relative(info, folder) for name, info in self.splits.items()}
        return json.dumps(data, indent=2, default=list)

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> "Manifest":
        """A manifest from its JSON data; :class:`ManifestError` naming ``where`` and what is wrong."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        found = data.get("manifest_format", 1)
        if found not in READABLE_FORMATS:
            raise ManifestError(f"{where}: manifest_format {found!r} is not one this version reads "
                                f"({', '.join(map(str, READABLE_FORMATS))}); upgrade imgshards")
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ManifestError(f"{where}: lacks {', '.join(missing)}")
        known = {key: value for key, value in data.items() if key in fields and key != "manifest_format"}
        return cls(**known, manifest_format=found)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> "Manifest":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ManifestError(f"{where}: not JSON ({e})") from e
        return cls.from_dict(data, where)


def _relative(split: dict, folder: str) -> dict:
    """A split's entry with its paths (its own and each format's) relative to ``folder``."""
    relative = {**split, "path": posixpath.relpath(split["path"], folder or ".")}
    if split.get("formats"):
        relative["formats"] = {name: {**entry, "path": posixpath.relpath(entry["path"], folder or ".")}
                               for name, entry in split["formats"].items()}
    return relative


def classes_json(classes: list) -> str:
    """``classes.json``: the label index of every class name."""
    return json.dumps({"classes": [{"index": i, "name": n} for i, n in enumerate(classes)]}, indent=2)
