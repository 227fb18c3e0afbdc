"""Training side: stream an exported split into PyTorch through Petastorm.

    from imgshards.loader import make_dataloader
    with make_dataloader("file:///data/shards/train", batch_size=64) as loader:
        for batch in loader:
            images, labels = batch["image"], batch["label"]   # float32 N x 3 x H x W, int64 N

Imports torch and petastorm lazily, so the rest of the package does not need them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_chw(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W float32, scaled to [0, 1] then normalized per channel."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
    return (chw - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


class _Normalize:
    """A picklable row transform for Petastorm's worker pool."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, row: dict) -> dict:
        row["image"] = normalize_chw(row["image"], self.mean, self.std)
        row["label"] = np.int64(row["label"])
        return row


def make_dataloader(
    url: str,
    batch_size: int = 32,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    shuffle: bool = True,
    seed: Optional[int] = None,
    num_epochs: int = 1,
    workers: int = 2,
    cur_shard: Optional[int] = None,
    shard_count: Optional[int] = None,
):
    """A ``petastorm.pytorch.DataLoader`` over one exported split (``url`` like ``file:///.../train``).

    Yields dicts with ``image`` (float32 tensor N x 3 x H x W, normalized with ``mean``/``std``),
    ``label`` (int64 tensor N) and ``label_name`` / ``sha256`` (lists of str). Use it as a context
    manager so the reader's workers stop. ``num_epochs=None`` loops forever.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {mean!r} and {std!r}")
    from petastorm import TransformSpec, make_reader
    from petastorm.pytorch import DataLoader

    transform = TransformSpec(
        _Normalize(mean, std),
        edit_fields=[("image", np.float32, (3, None, None), False), ("label", np.int64, (), False)],
    )
    reader = make_reader(
        url,
        num_epochs=num_epochs,
        transform_spec=transform,
        shuffle_row_groups=shuffle,
        seed=seed,
        workers_count=workers,
        cur_shard=cur_shard,
        shard_count=shard_count,
        reader_pool_type="thread",
    )
    return DataLoader(reader, batch_size=batch_size)
