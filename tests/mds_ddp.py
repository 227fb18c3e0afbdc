"""One rank of a two-rank DDP read of an MDS split with streaming.StreamingDataset, as a trainer runs it:
``mds_ddp.py first|resume <remote> <local> <out> [batches]`` with RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (as torchrun sets them). ``first`` reads ``batches``
batches and saves the loader's state_dict (rank 0); ``resume`` loads it and reads the rest of the epoch.
Writes the sample ids this rank read to <out>/<phase>-<rank>.json."""
import datetime
import json
import os
import sys

import torch.distributed as dist
from streaming import StreamingDataLoader, StreamingDataset

BATCH = 2


def main(phase: str, remote: str, local: str, out: str, batches: int = 0) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # a lost peer ends the rank
    rank = dist.get_rank()
    remote = None if remote == "-" else remote
    dataset = StreamingDataset(remote=remote, local=local, shuffle=True, shuffle_seed=7, batch_size=BATCH)
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=1,
                                 collate_fn=lambda samples: {"sample_id": [s["sample_id"] for s in samples]})
    state_file = os.path.join(out, "state.json")
    if phase == "resume":
        with open(state_file) as f:
            dataset.load_state_dict(json.load(f))
    seen = []
    for number, batch in enumerate(loader, 1):
        seen.extend(batch["sample_id"])
        if phase == "first" and number == batches:
            break  # before the loader yields (and counts) another batch
    if phase == "first" and rank == 0:
        with open(state_file, "w") as f:
            json.dump(loader.state_dict(), f)
    with open(os.path.join(out, f"{phase}-{rank}.json"), "w") as f:
        json.dump(seen, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5], *map(int, sys.argv[5:]))
