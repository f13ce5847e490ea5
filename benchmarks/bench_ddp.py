"""Scaling: training images/s against the number of DDP processes on CPU (gloo), one thread per process.

exitlab's own torchrun/DDP trainer is not written yet, so this wraps an exitlab multi-exit model in plain
``torch.nn.parallel.DistributedDataParallel`` and drives it with exitlab's training loop
(``training.loop.train_epoch``, joint phase: every parameter gets a gradient, so no ``find_unused_parameters``).
Each process gets its own shard of seeded random CIFAR-shaped data; ``--batch-size`` is per process (weak
scaling: the global batch grows with the world size) unless ``--strong`` divides a fixed global batch.

World sizes are launched with ``torch.multiprocessing.spawn`` in interleaved rounds (1, 2, 1, 2, ...), so machine
noise hits them alike; each launch times ``--repeats`` chunks of ``--steps`` steps between barriers, after one warm-up
chunk, and reports the median chunk. Process start-up and gloo rendezvous are not timed.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp.py --procs 1,2 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_ic_overhead import parse_exits
from torch.nn.parallel import DistributedDataParallel as DDP

from exitlab.data import TensorLoader
from exitlab.models import build_model
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.loop import PhaseState, make_optimizer, set_modes, set_trainable, train_epoch
from exitlab.training.phases import Phase


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_loader(args: argparse.Namespace, rank: int, batch: int) -> TensorLoader:
    """This rank's ``batch * steps`` images (seeded by rank), augmented on the fly."""
    g = torch.Generator().manual_seed(1000 + rank)
    n = batch * args.steps
    x = torch.randint(0, 256, (n, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, args.classes, (n,), generator=g)
    return TensorLoader(x, y, batch, mean=torch.full((3,), 0.47), std=torch.full((3,), 0.25), shuffle=True, pad=4,
                        flip=True, drop_last=True)


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: mp.SimpleQueue) -> None:
    """One DDP rank: time ``repeats`` chunks of ``steps`` joint-training steps; rank 0 reports the chunk times."""
    torch.set_num_threads(args.threads)
    # 1x1 conv weight grads come back with strides [C, 1, C, C] instead of [C, 1, 1, 1]: the same memory layout for
    # a 1x1 kernel, but DDP compares strides literally and warns on every step.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=args.timeout))
    try:
        torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        model = build_model(args.backbone, num_classes=args.classes, img_size=args.img_size, exits=args.exits,
                            head=args.head)
        phase = Phase(2, 1, PhaseConfig(lr=0.01, schedule="constant"))
        params = set_trainable(model, phase)
        net = DDP(model)  # joint phase: every parameter is used, so no find_unused_parameters
        opt = make_optimizer(params, phase)
        batch = args.batch_size // world if args.strong else args.batch_size
        loader = shard_loader(args, rank, batch)
        set_modes(model, phase)
        wall, cpu = [], []
        for r in range(args.repeats + 1):  # chunk 0 is warm-up
            dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            train_epoch(PhaseState(net, phase, loader, opt, total_steps=args.steps))
            c1 = time.process_time()
            dist.barrier()
            if r:
                wall.append(time.perf_counter() - t0)
                busiest = torch.tensor([c1 - c0], dtype=torch.float64)
                dist.all_reduce(busiest, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
                cpu.append(busiest.item())
        if rank == 0:
            out.put({"world": world, "per_rank_batch": batch, "wall": wall, "cpu": cpu,
                     "images_per_chunk": batch * world * args.steps})
    finally:
        dist.destroy_process_group()


def launch(world: int, args: argparse.Namespace) -> dict:
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
    return out.get()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet20")
    p.add_argument("--exits", type=parse_exits, default="every:3", help="every:K, flops:N or 1,3,5")
    p.add_argument("--head", default="sdn")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="per process (global with --strong)")
    p.add_argument("--strong", action="store_true", help="divide a fixed global batch between the processes")
    p.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed chunks per launch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved launches of every world size")
    p.add_argument("--procs", default="1,2", help="world sizes, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--timeout", type=int, default=300, help="seconds before a stuck collective fails")
    p.add_argument("--json", help="write raw results here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # inherited by the spawned ranks
    worlds = [int(v) for v in args.procs.split(",")]
    runs = {c: {w: [] for w in worlds} for c in ("wall", "cpu")}
    for _ in range(args.rounds):
        for w in worlds:
            res = launch(w, args)
            for c in runs:
                runs[c][w] += [res["images_per_chunk"] / t for t in res[c]]
    print(f"{args.backbone}, exits {args.exits} ({args.head} heads), {args.img_size}x{args.img_size}, "
          f"{'global' if args.strong else 'per-process'} batch {args.batch_size}, {args.threads} thread(s) per "
          f"process, gloo on CPU, {os.cpu_count()} CPUs; {args.rounds} rounds x {args.repeats} chunks x "
          f"{args.steps} steps")
    for c, label in (("wall", "measured images/s (wall clock)"),
                     ("cpu", "images per CPU-second of the busiest rank (= images/s if each rank had a free core)")):
        base = statistics.median(runs[c][worlds[0]])
        print(f"\n{label}\n{'processes':>10}{'median':>10}{'min':>8}{'max':>8}{'speed-up':>10}{'efficiency':>12}")
        for w, ips in runs[c].items():
            m = statistics.median(ips)
            print(f"{w:>10}{m:>10.1f}{min(ips):>8.1f}{max(ips):>8.1f}{m / base:>9.2f}x"
                  f"{m / base / (w / worlds[0]):>11.0%}")
    result = {"args": vars(args), "images_per_s": {c: {str(w): v for w, v in r.items()} for c, r in runs.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
