"""The train split's per-channel pixel statistics (mean and std), written into the manifest."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from imgshards import imaging

_LEVELS = np.arange(256, dtype=np.int64)


def _channel_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: per-channel sum and sum of squares of the 0..255 pixel values, and pixel count.
    Integers, so the totals (and the statistics) do not depend on how rows fell into partitions. From a
    histogram per channel (imaging.channel_histogram), several times cheaper than summing int64 copies of the
    pixels."""
    histogram = np.zeros((3, 256), np.int64)
    for batch in batches:
        for data in batch["image"]:
            histogram += imaging.channel_histogram(data)
    sums, squares = histogram @ _LEVELS, histogram @ (_LEVELS * _LEVELS)
    yield pd.DataFrame([{"s0": sums[0], "s1": sums[1], "s2": sums[2],
                         "q0": squares[0], "q1": squares[1], "q2": squares[2], "n": int(histogram[0].sum())}])


def normalization_stats(train: DataFrame) -> Optional[dict]:
    """Per-channel mean and std of the train split's pixels (scaled to [0, 1]), or None if it is empty."""
    schema = "s0 long, s1 long, s2 long, q0 long, q1 long, q2 long, n long"
    total = train.select("image").mapInPandas(_channel_sums, schema).groupBy().sum().head()
    n = total["sum(n)"] if total else 0
    if not n:
        return None
    mean = [total[f"sum(s{c})"] / n / 255.0 for c in range(3)]
    std = [max(total[f"sum(q{c})"] / n / 255.0**2 - mean[c] ** 2, 0.0) ** 0.5 for c in range(3)]
    return {"mean": mean, "std": std, "pixels": n}
