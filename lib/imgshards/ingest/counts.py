"""What happened to every file an ingest saw: :class:`IngestCounts`, whose buckets add up.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from imgshards.ingest.rules import EXAMPLES

log = logging.getLogger(__name__)


@dataclass
class IngestCounts:
    """What happened to every file seen (``seen`` equals the sum of the buckets), plus reports."""

    seen: int = 0
    ingested: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    quarantined: int = 0
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    quarantine_reasons: dict = field(default_factory=dict)
    marked_deleted: int = 0
    purged: int = 0  # images rows removed for good (ingest.missing: purge)
    batches: int = 0
    read_bytes: int = 0  # bytes of the image files read (files over max_bytes are never read)
    labels_report: dict = field(default_factory=dict)
    near_duplicates: dict = field(default_factory=dict)
    # Images ingested or updated by this run that are flagged per quality signal (imgshards.quality).
    quality: dict = field(default_factory=dict)
    # Files under another label than their content's or their cluster's, by kind, with examples.
    label_conflicts: dict = field(default_factory=dict)
    # Rows of earlier runs retired because a file's verdict changed: table -> rows (see ingest.write).
    superseded: dict = field(default_factory=dict)

    _BUCKETS = ("ingested", "updated", "unchanged", "duplicates", "quarantined", "skipped_hidden", "skipped_non_image")

    def accounted(self) -> int:
        return sum(getattr(self, name) for name in self._BUCKETS)

    def check(self) -> None:
        if self.accounted() != self.seen:
            raise RuntimeError(f"ingest accounting does not add up: seen {self.seen} != accounted {self.accounted()} ({self})")
        if sum(self.quarantine_reasons.values()) != self.quarantined:
            raise RuntimeError(f"quarantine reasons {self.quarantine_reasons} do not add up to {self.quarantined}")

    def add(self, other: "IngestCounts") -> None:
        """Fold one micro-batch's counts into these totals (streaming)."""
        for name in ("seen", "marked_deleted", "purged", "batches", "read_bytes") + self._BUCKETS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantine_reasons = dict(sorted((Counter(self.quarantine_reasons) + Counter(other.quarantine_reasons)).items()))
        self.superseded = dict(sorted((Counter(self.superseded) + Counter(other.superseded)).items()))
        for report, new in ((self.labels_report, other.labels_report), (self.near_duplicates, other.near_duplicates),
                            (self.quality, other.quality), (self.label_conflicts, other.label_conflicts)):
            for key, value in new.items():
                if isinstance(value, list):
                    report[key] = (report.get(key, []) + value)[:EXAMPLES]
                else:
                    report[key] = report.get(key, 0) + value
