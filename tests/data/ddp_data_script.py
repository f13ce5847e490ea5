"""Run under torchrun by tests/data/test_ddp_data.py: build each data set's loaders on this rank, run the given epochs
and save what the rank saw (sample indices, batches, step counts) to ``<out>/<kind>-rank<r>.pt``."""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from exitlab.data import build_run_data
from tests.data.helpers import data_config


def epoch_seed(epoch: int) -> int:
    """What the trainer's seed_epoch gives: the same on every rank, from (run seed, phase, epoch) only."""
    return 0 * 1_000_003 + 1 * 10_007 + epoch


def record(loader, epochs: list[int]) -> dict:
    out = {}
    for e in epochs:
        loader.set_epoch_seed(epoch_seed(e))
        ids = [loader.indices[b].tolist() for b in loader.batch_indices()]
        batches = [(x.clone(), y.clone()) for x, y in loader]
        out[e] = {"ids": ids, "x": [x for x, _ in batches], "y": [y for _, y in batches], "steps": len(batches)}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", required=True)  # e.g. 0,1,2
    p.add_argument("--data", required=True)  # JSON: {kind: {data key: value}}
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    for kind, opts in json.loads(a.data).items():
        run = build_run_data(data_config(**opts), 0, torch.device("cpu"), shard=(rank, world))
        seen = record(run.train, [int(e) for e in a.epochs.split(",")])
        steps = torch.tensor([seen[e]["steps"] for e in seen])
        gathered = [torch.zeros_like(steps) for _ in range(world)]
        dist.all_gather(gathered, steps)  # a collective per data set: every rank must reach it
        torch.save({"epochs": seen, "steps_all_ranks": [g.tolist() for g in gathered]},
                   Path(a.out) / f"{kind}-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
