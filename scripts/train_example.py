"""Train a small CNN over an exported split, read in any of the export's formats, and print the mean loss per
epoch.

Single process:  .venv/bin/python scripts/train_example.py --shards .work/shards --epochs 2
DDP, 2 ranks:    .venv/bin/torchrun --nproc_per_node 2 scripts/train_example.py --shards .work/shards
Other formats:   --format mds | webdataset (the export must have written them: export.formats)

petastorm reads with the project's loader (each rank its own shard, from torch.distributed); mds with
Mosaic Streaming's StreamingDataset (its own rank and worker partitioning); webdataset with
webdataset.WebDataset (shards resampled, a fixed number of batches per rank). Every rank gets the same
number of batches, so DDP's all-reduce never waits forever. The images are decoded by the manifest's
declaration only (imgshards.train.untrusted): an export is untrusted input.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from imgshards.train.loader import make_dataloader, normalize_chw, read_manifest
from imgshards.train.untrusted import image_decoder

FORMATS = ("petastorm", "mds", "webdataset")


def small_cnn(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=".work/shards", help="export output folder (holds manifest.json)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="petastorm", choices=FORMATS)
    parser.add_argument("--backend", default="arrow", choices=["arrow", "petastorm"],
                        help="--format petastorm: the loader's reader")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (mds, webdataset)")
    return parser


def format_loader(args, manifest: dict, world: int):
    """(an iterable of {image, label} batches, batches per epoch) over ``args.split`` in ``args.format``."""
    if args.format == "petastorm":
        loader = make_dataloader(args.shards, args.split, args.batch_size, seed=args.seed, backend=args.backend)
        return loader, len(loader)
    split = manifest["splits"][args.split]
    if args.format not in split.get("formats", {}):
        raise SystemExit(f"the export has no {args.format} shards (export.formats: {manifest.get('formats')})")
    entry = split["formats"][args.format]
    url = entry["url"]
    local = url[len("file://"):] if url.startswith("file://") else None
    decode = image_decoder(manifest["image"])

    def to_tensor(image) -> torch.Tensor:  # the stored bytes (or an MDS ndarray) -> normalized 3 x H x W
        return torch.from_numpy(normalize_chw(image if not isinstance(image, bytes) else decode(image)))

    if args.format == "mds":
        from streaming import StreamingDataLoader, StreamingDataset

        class Images(StreamingDataset):
            def __getitem__(self, index):
                sample = super().__getitem__(index)
                return {"image": to_tensor(sample["image"]), "label": sample["label"]}

        remote = None if local else "s3://" + url.split("://", 1)[1]  # streaming's own S3 client
        dataset = Images(local=local or tempfile.mkdtemp(prefix="mds-cache-"), remote=remote, shuffle=True,
                         shuffle_seed=args.seed, batch_size=args.batch_size)
        loader = StreamingDataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, drop_last=True)
        return loader, len(loader)

    import webdataset as wds

    shards = f"{local or url}/{entry['pattern']}"
    if not local:  # object storage through the AWS CLI, as WebDataset reads any URL: a pipe
        shards = f"pipe:aws s3 cp s3://{shards.split('://', 1)[1]} -"
    batches = split["rows"] // (args.batch_size * world)
    dataset = (wds.WebDataset(shards, resampled=True, shardshuffle=True, seed=args.seed)
               .shuffle(1000).to_tuple("jpg;png;npy", "cls")
               .map_tuple(to_tensor, int).batched(args.batch_size, partial=False))
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=args.workers).with_epoch(batches)
    return Named(loader), batches


class Named:
    """WebDataset's (images, labels) batches as the {image, label} batches the loop reads."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return ({"image": images, "label": torch.as_tensor(labels)} for images, labels in self.loader)


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    manifest = read_manifest(args.shards)
    classes = manifest["classes"]
    if not classes:
        print("the export has no labels; nothing to train", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = small_cnn(len(classes))
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    world = dist.get_world_size() if distributed else 1
    loader, batches_per_epoch = format_loader(args, manifest, world)
    if rank == 0:
        print(f"world {world}: {batches_per_epoch} batches per rank per epoch ({args.format})")
    for epoch in range(args.epochs):
        if hasattr(loader, "set_epoch"):  # the project's loader; StreamingDataset counts epochs itself
            loader.set_epoch(epoch)
        total, batches = 0.0, 0
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        mean = torch.tensor([total / max(batches, 1)])
        if distributed:
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        if rank == 0:
            print(f"epoch {epoch}: {batches} batches, mean loss {mean.item():.4f}")
    if distributed:
        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()
    return 0


def main() -> None:
    code = _main()
    if "WORLD_SIZE" in os.environ:
        # Under torchrun, about 1 run in 3 aborted in interpreter teardown ("terminate called without an
        # active exception", after destroy_process_group) with gloo and pyarrow's thread pools both loaded.
        # The work is done and flushed by then, so skip the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
