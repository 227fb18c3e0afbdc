"""Ingest: raw image files -> the Delta tables images, quarantine and duplicates (:mod:`.run` for the entry points)."""
