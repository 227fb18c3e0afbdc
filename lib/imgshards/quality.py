"""Quality signals: which images are too dark, too bright, blank, blurry, small or oddly shaped, by the
thresholds of ``ingest.quality``. The signals themselves are measured in the probe pass
(imgshards.imaging.fingerprint) and stored in ``images``; the rules that flag them are defined here once, as
Spark columns, for the quarantine at ingest, the run's counts and the report."""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from imgshards.config import QUALITY_SIGNALS, QualityConfig


def measures() -> dict:
    """Signal -> (the column it is judged on, what that is called, whether its low end is the bad one)."""
    short, long = F.least("width", "height"), F.greatest("width", "height")
    return {
        "dark": (F.col("brightness"), "brightness", True),
        "bright": (F.col("brightness"), "brightness", False),
        "low_contrast": (F.col("contrast"), "contrast", True),
        "blurry": (F.col("sharpness"), "sharpness", True),
        "small": (short, "shorter side", True),
        "odd_aspect": (long / F.greatest(short, F.lit(1)), "aspect ratio", False),
    }


def flags(settings: QualityConfig) -> dict[str, Column]:
    """Signal -> a boolean column over an images-like frame (width, height, brightness, contrast, sharpness):
    true where the image is past that signal's threshold; null where the signal was not measured."""
    return {name: value < getattr(settings, name) if low else value > getattr(settings, name)
            for name, (value, _, low) in measures().items()}


def quarantine(probed: DataFrame, settings: QualityConfig) -> DataFrame:
    """``probed`` with reason ``low_quality`` (and a detail naming the signal, its value and its threshold) on
    the files that passed so far and are flagged for a signal that ``settings.quarantine`` names."""
    if not settings.quarantine:
        return probed
    flagged = flags(settings)
    measured = measures()
    detail = F.lit(None).cast("string")
    for name in reversed([s for s in QUALITY_SIGNALS if s in settings.quarantine]):
        value, what, _ = measured[name]
        text = F.format_string(f"{name}: {what} %s past ingest.quality.{name} {getattr(settings, name)}",
                               F.round(value, 3).cast("string"))
        detail = F.when(F.coalesce(flagged[name], F.lit(False)), text).otherwise(detail)
    hit = F.col("reason").isNull() & detail.isNotNull()
    return (probed.withColumn("detail", F.when(hit, detail).otherwise(F.col("detail")))
            .withColumn("reason", F.when(hit, F.lit("low_quality")).otherwise(F.col("reason"))))


def counts(images: DataFrame, settings: QualityConfig) -> dict:
    """{signal: images flagged} over ``images`` (one aggregation)."""
    row = images.agg(*(F.count(F.when(flag, 1)).alias(name) for name, flag in flags(settings).items())).head()
    return {name: row[name] for name in QUALITY_SIGNALS}
