"""Which samples the settings call for: every live image once (copy 0) and its augmented copies, each keyed by
(sha256, copy, config_fingerprint). Preprocess makes the ones ``processed`` lacks; export reads the current
ones (:func:`select_current`) from what preprocess wrote."""
from __future__ import annotations

from typing import Optional

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from imgshards.config import PipelineConfig
from imgshards.imaging.augment import copies_per_image
from imgshards.schemas import SAMPLE_KEY


def samples_to_make(images: DataFrame, config: PipelineConfig) -> DataFrame:
    """The samples the current images should have: every image once (copy 0) and its augmented copies
    (see augmented_copies). Columns: sha256, copy, augment_seed, config_fingerprint."""
    samples = as_original(images.select("sha256"), config)
    copies = augmented_copies(images, config)
    return samples if copies is None else samples.unionByName(copies)


def as_original(frame: DataFrame, config: PipelineConfig) -> DataFrame:
    return frame.select("*", F.lit(0).alias("copy"), F.lit(None).cast("long").alias("augment_seed"),
                        F.lit(config.output_fingerprint()).alias("config_fingerprint"))


def augmented_copies(images: DataFrame, config: PipelineConfig) -> Optional[DataFrame]:
    """The augmented copies 1..n of the images in ``augment.splits`` (None when augmentation is off): each
    with a seed from (augment.seed, sha256, copy) and the fingerprint of the settings that make it.
    Columns: sha256, copy, augment_seed, config_fingerprint."""
    augment = config.preprocess.augment
    if not augment.enabled:
        return None
    eligible = images.filter(F.col("split").isin(list(augment.splits))).select("sha256", "label")
    sizes = {r["label"]: r["count"] for r in eligible.groupBy("label").count().collect()}
    plan = copies_per_image(sizes, augment.copies, augment.balance_classes)
    # Within a class, images ordered by sha256 take the remainder's extra copies first.
    rank = F.row_number().over(Window.partitionBy("label").orderBy("sha256")) - 1
    each, remainder = F.lit(0), F.lit(0)
    for name, (per_image, extra) in plan.items():
        is_class = F.col("label").isNull() if name is None else F.col("label") == name
        each = F.when(is_class, F.lit(per_image)).otherwise(each)
        remainder = F.when(is_class, F.lit(extra)).otherwise(remainder)
    n_copies = each + F.when(rank < remainder, 1).otherwise(0)
    return (
        eligible.select("sha256", n_copies.alias("n"))
        .filter(F.col("n") > 0)
        .select("sha256", F.explode(F.sequence(F.lit(1), F.col("n"))).alias("copy"))
        .select(
            "sha256", "copy",
            # 31 bits: the seed must survive pandas, where a column with nulls is float64.
            F.xxhash64(F.lit(augment.seed), "sha256", "copy").bitwiseAND(F.lit(0x7FFFFFFF).cast("long")).alias("augment_seed"),
            F.lit(config.augment_fingerprint()).alias("config_fingerprint"),
        )
    )


def select_current(processed: DataFrame, images: DataFrame, config: PipelineConfig, broadcast: bool = False) -> DataFrame:
    """The processed samples the images in ``images`` (one Delta version) should have with the current
    settings (see samples_to_make); label and split come from ``images`` so they match the version read.

    ``broadcast`` (the images are at most tables.BROADCAST_ROWS): the wanted samples' keys go to the tasks
    reading ``processed``, so the image bytes are not shuffled for the join. A sample key that ``processed``
    holds twice (concurrent appends, see tables.append, seen before they were resolved) is read once; the
    check for one reads the key columns only."""
    wanted = samples_to_make(images, config).join(images.select("sha256", "path", "label", "split"), "sha256")
    made = processed.filter(F.col("config_fingerprint").isin(config.sample_fingerprints())).select(*SAMPLE_KEY, "image")
    if made.groupBy(*SAMPLE_KEY).count().filter(F.col("count") > 1).limit(1).count():
        made = made.dropDuplicates(list(SAMPLE_KEY))
    return made.join(F.broadcast(wanted) if broadcast else wanted, list(SAMPLE_KEY))
