"""Train a small CNN over an exported split, streamed through Petastorm, and print the loss per epoch.

    .venv/bin/python scripts/train_example.py --shards .work/shards [--epochs 1] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
from torch import nn

from imgshards.export import dataset_url
from imgshards.loader import make_dataloader


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
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    # Petastorm 0.12 calls pyarrow 14 APIs marked deprecated; they work, the warnings are noise.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
    with open(os.path.join(args.shards, "manifest.json")) as f:
        manifest = json.load(f)
    classes = manifest["classes"]
    if not classes:
        print("the export has no labels; nothing to train", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = small_cnn(len(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    url = dataset_url(os.path.abspath(manifest["splits"][args.split]["url"]))
    for epoch in range(args.epochs):
        total, batches = 0.0, 0
        with make_dataloader(url, batch_size=args.batch_size, seed=args.seed + epoch) as loader:
            for batch in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(batch["image"]), batch["label"])
                loss.backward()
                optimizer.step()
                total += loss.item()
                batches += 1
        print(f"epoch {epoch}: {batches} batches, mean loss {total / max(batches, 1):.4f}")
    return 0


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
