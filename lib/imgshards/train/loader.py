"""Training side: stream an exported split into PyTorch, sharded for DDP without hangs.

    from imgshards.train.loader import make_dataloader
    loader = make_dataloader("/data/shards", "train", batch_size=64, seed=0)   # rank/world from torch.distributed
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:                       # len(loader) batches, the same on every rank
            images, labels = batch["image"], batch["label"]   # float32 N x 3 x H x W, int64 N

The plan for an epoch comes from the export's manifest (row groups and their row counts) and the
sample_id column (unique per sample: an image's sha256, or ``<sha256>-<copy>`` for an augmented copy):
row groups are permuted with (seed, epoch), the samples concatenated, and rank r takes
the r-th of ``shard_count`` equal slices, so the shards cover the split exactly once (``remainder="drop"``
leaves out fewer than ``shard_count`` samples; ``"pad"`` repeats as many from the start) and every rank
yields the same number of batches. Within a rank, samples are shuffled in windows of ``shuffle_buffer``.

Two backends yield the same samples per rank and epoch:

- ``"arrow"``: plain pyarrow + Pillow + numpy (+ torch to collate). It never imports Petastorm or Spark,
  so it runs in a modern training environment (numpy 2, current pyarrow).
- ``"petastorm"``: Petastorm's ``make_reader`` restricted to the rank's samples (an ``in_set`` predicate
  on sample_id), for code that wants Petastorm's reader pool. Order within the rank follows Petastorm's.

Both are resumable: ``state_dict()`` / ``load_state_dict()`` continue mid-epoch without repeating or
skipping a sample.

Memory per rank does not grow with the split on the ``arrow`` backend: the plan is one run of rows per row
group (from the manifest's row counts), the shuffle window ``shuffle_buffer`` (row group, row) pairs, and at
most two row groups read at a time; resuming costs one window. The ``petastorm`` backend also holds the
rank's sample ids (its ``in_set`` predicate, and the ids yielded so far in ``state_dict``): 1/shard_count of
the split's ids.

Both treat the export as untrusted input (:mod:`imgshards.train.untrusted`): no code runs from any of its
files, and every image is decoded only as the manifest declares it and checked against its shape before it
is placed in a batch.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from imgshards.manifest import MANIFEST_FILE, Manifest
from imgshards.train.untrusted import (
    ExportError,
    check_array,
    declared_shape,
    image_decoder,
    petastorm_unpickles_safely,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("arrow", "petastorm")
REMAINDER_POLICIES = ("drop", "pad")
ID = "sample_id"  # unique within a split
FIELDS = ("image", "label", "label_name", ID, "sha256")  # what a batch carries


def normalize_chw(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, out: Optional[np.ndarray] = None) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W float32, scaled to [0, 1] then normalized per channel: one multiply
    and one add per channel, written into ``out`` when given (no intermediate arrays)."""
    if out is None:
        out = np.empty((3,) + image.shape[:2], np.float32)
    for c in range(3):
        np.multiply(image[..., c], np.float32(1.0 / (255.0 * std[c])), out=out[c], casting="unsafe")
        out[c] += np.float32(-mean[c] / std[c])
    return out


def _filesystem(url: str, s3_endpoint: Optional[str] = None):
    from imgshards.io.filesystems import arrow_filesystem

    return arrow_filesystem(url, s3_endpoint)


def _as_url(location: str) -> str:
    return location.rstrip("/") if "://" in location else "file://" + os.path.abspath(location)


def read_manifest(url: str, s3_endpoint: Optional[str] = None) -> dict:
    """The manifest of an export as JSON data: ``url`` is the export root (or one version folder), local or
    remote. Each split's ``url`` (and each of its formats' ``url``) is resolved against where the manifest was
    read from (its files are named relative to it), so a copy of an export reads from where the copy is;
    manifests from before that carry absolute URLs and are read as they are.
    :class:`~imgshards.manifest.ManifestError` for one this version cannot read."""
    fs, path = _filesystem(url, s3_endpoint)
    location = path.rstrip("/") + "/" + MANIFEST_FILE
    with fs.open_input_stream(location) as f:
        manifest = Manifest.from_json(f.read().decode("utf-8"), location).to_dict()
    for info in manifest["splits"].values():
        if "path" in info:
            info["url"] = f"{_as_url(url)}/{info['path']}"
        for entry in (info.get("formats") or {}).values():
            entry["url"] = f"{_as_url(url)}/{entry['path']}"
    return manifest


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _slice_runs(runs: list, start: int, stop: int) -> list:
    """The samples at positions [start, stop) of the sequence that ``runs`` [(group, first row, end row)]
    spell, as runs again."""
    out, offset = [], 0
    for g, a, b in runs:
        lo, hi = max(start - offset, 0), min(stop - offset, b - a)
        if lo < hi:
            out.append((g, a + lo, a + hi))
        offset += b - a
        if offset >= stop:
            break
    return out


def _distributed_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedImageLoader:
    """An iterable of collated batches over one split; see the module docstring. Build it with
    :func:`make_dataloader`."""

    def __init__(self, manifest: dict, split: str, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                 cur_shard: int, shard_count: int, transform: Optional[Callable], workers: int, backend: str,
                 remainder: str, shuffle_buffer: int, collate: bool, s3_endpoint: Optional[str] = None):
        self.manifest = manifest
        self.s3_endpoint = s3_endpoint
        self.split = split
        self.split_info = manifest["splits"][split]
        self.url = self.split_info["url"]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.cur_shard = cur_shard
        self.shard_count = shard_count
        self.transform = transform  # None: normalize_chw straight into the batch array
        self.workers = workers
        self.backend = backend
        self.remainder = remainder
        self.shuffle_buffer = shuffle_buffer
        self.collate = collate
        self.position = 0  # samples of the current epoch already yielded on this rank
        self._yielded: list = []  # petastorm backend: sample ids yielded this epoch (its order is not ours)
        self.shape = declared_shape(manifest["image"])  # every image's, checked before it joins a batch
        self._decode = image_decoder(manifest["image"])

    # -- planning ------------------------------------------------------------------------------------

    @property
    def total_rows(self) -> int:
        return self.split_info["rows"]

    @property
    def samples_per_shard(self) -> int:
        n, world = self.total_rows, self.shard_count
        return n // world if self.remainder == "drop" else math.ceil(n / world)

    def __len__(self) -> int:
        return math.ceil(self.samples_per_shard / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its order); restarts it from the beginning."""
        self.epoch = epoch
        self.position = 0
        self._yielded = []

    def _runs(self) -> list:
        """This rank's samples for the current epoch before the window shuffle, as runs of rows
        [(row group number, first row, end row)]: the row groups permuted with (seed, epoch), padded from the
        start for ``remainder="pad"``, and the rank's slice of them. Row counts come from the manifest: no
        file is read, and the plan holds one entry per row group, not per sample."""
        groups = self.split_info["row_groups"]
        order = list(range(len(groups)))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        runs = [(g, 0, groups[g]["rows"]) for g in order]
        per_shard = self.samples_per_shard
        if self.remainder == "pad":
            runs += _slice_runs(runs, 0, per_shard * self.shard_count - self.total_rows)
        return _slice_runs(runs, self.cur_shard * per_shard, (self.cur_shard + 1) * per_shard)

    def plan(self, start: int = 0) -> Iterator[tuple]:
        """This rank's samples for the current epoch from position ``start`` on, in order: (row group number,
        row). The rank's sequence is shuffled in windows of ``shuffle_buffer`` samples, each with its own
        generator (seed, epoch, rank, window), so resuming at any position costs one window, not the epoch
        so far; memory is one window."""
        window = max(self.shuffle_buffer, 1)
        runs = self._runs()
        first = start // window
        for w in itertools.count(first):
            positions = [(g, row) for g, a, b in _slice_runs(runs, w * window, (w + 1) * window) for row in range(a, b)]
            if not positions:
                return
            if self.shuffle and window > 1:
                order = np.random.default_rng([self.seed, self.epoch, self.cur_shard, w]).permutation(len(positions))
                positions = [positions[i] for i in order]
            yield from positions[start - w * window:] if w == first else positions

    # -- resuming ------------------------------------------------------------------------------------

    @property
    def export_version(self) -> str:
        """The export version this loader reads (its ``v-<run_id>`` folder)."""
        return self.manifest.get("version_dir") or self.manifest.get("run_id", "")

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position, "seed": self.seed, "export": self.export_version,
                 "cur_shard": self.cur_shard, "shard_count": self.shard_count, "backend": self.backend}
        if self.backend == "petastorm":
            state["yielded"] = list(self._yielded)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was saved. The plan depends on the export's row groups, so a state saved
        on another export version is refused (open the loader on that version's folder to resume it)."""
        if "export" in state and state["export"] != self.export_version:
            raise ValueError(f"state_dict was saved on export version {state['export']!r}; this loader reads "
                             f"{self.export_version!r}: open the loader on <export>/{state['export']} to resume "
                             "there, or start the epoch over")
        for key in ("seed", "cur_shard", "shard_count", "backend"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state_dict was saved with {key}={state[key]!r}, this loader has {getattr(self, key)!r}")
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._yielded = list(state.get("yielded", []))

    # -- iteration -----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        samples = self._arrow_samples() if self.backend == "arrow" else self._petastorm_samples()
        workers = max(self.workers, 1)
        pending: deque = deque()
        with ThreadPoolExecutor(workers) as pool:
            # Whole batches are decoded in the pool, up to `workers` ahead of the training loop.
            for chunk in _chunks(samples, self.batch_size):
                pending.append(pool.submit(self._build, chunk))
                if len(pending) > workers:
                    yield self._finish(pending.popleft().result())
            while pending:
                yield self._finish(pending.popleft().result())
        # A complete pass ends the epoch: the next iteration is the next epoch.
        self.set_epoch(self.epoch + 1)

    def _build(self, batch: list) -> dict:
        if self.transform is None:
            images = np.empty((len(batch), 3) + self.shape[:2], np.float32)  # sized by the manifest
            for i, sample in enumerate(batch):
                normalize_chw(self._pixels(sample), out=images[i])
        else:
            images = np.stack([self.transform(self._pixels(sample)) for sample in batch])
        return {"image": images, "label": np.asarray([s["label"] for s in batch], dtype=np.int64),
                **{name: [s[name] for s in batch] for name in ("label_name", ID, "sha256")}}

    def _finish(self, out: dict):
        """Runs on the consumer's thread, in order: the state advances with what was handed over."""
        self.position += len(out[ID])
        if self.backend == "petastorm":
            self._yielded.extend(out[ID])
        if self.collate:
            import torch

            out["image"] = torch.from_numpy(out["image"])
            out["label"] = torch.from_numpy(out["label"])
        return out

    def _arrow_samples(self) -> Iterator[dict]:
        import pyarrow.parquet as pq

        fs, root = _filesystem(self.url, self.s3_endpoint)
        groups = self.split_info["row_groups"]
        cache: dict = {}
        for g, row in self.plan(self.position):
            if g not in cache:
                if len(cache) >= 2:  # the shuffle window spans at most a few row groups
                    cache.pop(next(iter(cache)))
                with fs.open_input_file(f"{root.rstrip('/')}/{groups[g]['file']}") as f:
                    table = pq.ParquetFile(f).read_row_group(groups[g]["index"], columns=list(FIELDS))
                if table.num_rows != groups[g]["rows"]:
                    raise ExportError(f"{self.url}: row group {g} holds {table.num_rows} rows, the manifest says "
                                      f"{groups[g]['rows']}")
                cache[g] = table.to_pydict()
            columns = cache[g]
            yield {name: columns[name][row] for name in FIELDS}

    def _rank_ids(self) -> list:
        """sample_id of this rank's samples for the epoch, in plan order: read from the row groups the rank's
        runs touch (about 1/shard_count of the split)."""
        import pyarrow.parquet as pq

        fs, root = _filesystem(self.url, self.s3_endpoint)
        groups = self.split_info["row_groups"]
        by_file: dict = {}
        for g in {g for g, _, _ in self._runs()}:
            by_file.setdefault(groups[g]["file"], []).append(g)
        ids: dict = {}
        for name, touched in by_file.items():  # each file opened once
            with fs.open_input_file(f"{root.rstrip('/')}/{name}") as f:
                parquet = pq.ParquetFile(f)
                for g in touched:
                    ids[g] = parquet.read_row_group(groups[g]["index"], columns=[ID]).column(0).to_pylist()
        return [ids[g][row] for g, row in self.plan()]

    def _petastorm_samples(self) -> Iterator[dict]:
        from petastorm import make_reader
        from petastorm.predicates import in_set

        # Petastorm yields in its own order, so the rank's ids are counted and what was yielded before a
        # resume is taken off once (padding repeats an id).
        counts = Counter(self._rank_ids())
        counts.subtract(self._yielded)
        counts = +counts
        if not counts:
            return
        from imgshards.io.petastorm_fs import petastorm_location

        url, factory = petastorm_location(self.url, self.s3_endpoint)  # object stores: our file system
        filesystem = factory() if factory else None
        with petastorm_unpickles_safely():
            reader = make_reader(url, num_epochs=1, predicate=in_set(set(counts), ID), shuffle_row_groups=self.shuffle,
                                 seed=self.seed + self.epoch, workers_count=max(self.workers, 1),
                                 reader_pool_type="thread", schema_fields=list(FIELDS), filesystem=filesystem)
        with reader:
            for row in reader:
                for _ in range(counts.pop(getattr(row, ID), 0)):
                    yield {name: getattr(row, name) for name in FIELDS}

    def _pixels(self, sample: dict) -> np.ndarray:
        """The sample's H x W x 3 uint8 pixels as the manifest declares them: Petastorm's reader hands decoded
        arrays (checked), the arrow backend the stored bytes (decoded by the declared codec only)."""
        image = sample["image"]
        try:
            if isinstance(image, np.ndarray):
                return check_array(image, self.shape)
            if not isinstance(image, bytes):
                raise ExportError(f"an image stored as {type(image).__name__}, not bytes")
            return self._decode(image)
        except ExportError as e:
            raise ExportError(f"{self.url}: sample {sample.get(ID)!r}: {e}") from None


def make_dataloader(
    url: str,
    split: str,
    batch_size: int = 32,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    cur_shard: Optional[int] = None,
    shard_count: Optional[int] = None,
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    workers: int = 2,
    backend: str = "arrow",
    remainder: str = "drop",
    shuffle_buffer: int = 1024,
    collate: bool = True,
    s3_endpoint: Optional[str] = None,
) -> ShardedImageLoader:
    """A loader over ``split`` of the export at ``url`` (its root, local path or file://, s3://, gs://,
    hdfs:// URL; ``s3_endpoint`` or ``$AWS_ENDPOINT_URL_S3``/``$AWS_ENDPOINT_URL`` name an S3-compatible
    server, credentials come from the environment as for any AWS SDK). ``transform`` maps an H x W x 3 uint8
    array to the model's input (default: ImageNet normalization to 3 x H x W float32). Under
    ``torch.distributed`` the shard and shard count default to the rank and world size. ``collate=False``
    yields numpy arrays instead of torch tensors."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if remainder not in REMAINDER_POLICIES:
        raise ValueError(f"remainder must be one of {REMAINDER_POLICIES}, got {remainder!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    rank, world = _distributed_rank_world()
    cur_shard = rank if cur_shard is None else cur_shard
    shard_count = world if shard_count is None else shard_count
    if not 0 <= cur_shard < shard_count:
        raise ValueError(f"cur_shard must be in 0..{shard_count - 1}, got {cur_shard!r}")
    manifest = read_manifest(url, s3_endpoint)
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} is not in the export at {url}; it has {sorted(manifest['splits'])}")
    return ShardedImageLoader(manifest, split, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                              cur_shard=cur_shard, shard_count=shard_count, transform=transform, workers=workers,
                              backend=backend, remainder=remainder, shuffle_buffer=shuffle_buffer, collate=collate,
                              s3_endpoint=s3_endpoint)
