"""IC overhead: training-step time of a multi-exit model against its bare backbone, same data, same run.

Both variants go through exitlab's own training loop (``training.loop.train_epoch``): the backbone variant is
phase 1 (backbone alone, final exit only, heads not evaluated), the multi-exit variant is phase 2 (backbone and
all ICs, mean of the per-exit losses). They share one model, one optimizer recipe and the same batches (one
seeded ``TensorLoader``). Repeats interleave the variants in rotating order, so machine noise hits all of them alike;
the ratio is taken within each repeat and the median over repeats is reported.

Prototype variants (benchmark-only; exitlab's heads are unchanged) show where the overhead goes:

- ``joint-fixedpool``: the SDN head pools with ``max_pool2d``/``avg_pool2d`` of kernel ``H // grid`` when the map
  divides evenly -- the same numbers as the adaptive ops, with simpler kernels;
- ``joint-oldmix``: the SDN head as it was before the batch-1 work, ``a * max + (1 - a) * avg`` (four elementwise
  ops instead of three): an A/B of that change;
- ``joint-nopool``: heads reduced to global average pooling + linear (the ``pooled`` head): a floor for any SDN
  head with a linear classifier.

Run (1 thread, as every exitlab benchmark)::

    OMP_NUM_THREADS=1 python benchmarks/bench_ic_overhead.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from exitlab.data import TensorLoader
from exitlab.models import build_model
from exitlab.models.heads import SDNHead
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.loop import PhaseState, make_optimizer, set_modes, set_trainable, train_epoch
from exitlab.training.objective import phase_module
from exitlab.training.phases import Phase

Clocks = dict[str, dict[str, list[float]]]  # clock ("cpu" or "wall") -> variant -> seconds per unit, per repeat


def interleaved(variants: dict[str, Callable[[], int]], repeats: int, warmup: int = 1) -> Clocks:
    """Call every variant ``warmup`` times, then ``repeats`` rounds in rotating order.

    Each call does some work and returns how many units (steps, images) it did; both the process CPU time and the
    wall time per unit are recorded. On a shared machine CPU time is the steadier measure for 1-thread work: time
    the scheduler gives to other processes does not count, while wall time does.
    """
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    out: Clocks = {"cpu": {n: [] for n in names}, "wall": {n: [] for n in names}}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            units = variants[n]()
            out["cpu"][n].append((time.process_time() - c0) / units)
            out["wall"][n].append((time.perf_counter() - w0) / units)
    return out


def parse_exits(spec: str) -> str | list[int]:
    """``every:K`` / ``flops:N`` as they are, ``1,3,5`` as a list of block indices."""
    return spec if ":" in spec else [int(v) for v in spec.split(",")]


def ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over repeats of each variant's time divided by ``base``'s time in the same repeat."""
    return {n: statistics.median(a / b for a, b in zip(t, times[base])) for n, t in times.items()}


def _fixed_pool_forward(self: SDNHead, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """SDNHead.forward with plain pooling kernels when the map is a multiple of the grid (prototype)."""
    H, W = x.shape[-2:]
    if H % self.grid or W % self.grid:
        return SDNHead.forward(self, x, prev)
    k = (H // self.grid, W // self.grid)
    a = torch.sigmoid(self.alpha)
    pooled = a * F.max_pool2d(x, k) + (1 - a) * F.avg_pool2d(x, k)  # [B, C, grid, grid]
    return self._combine(self.fc(pooled.flatten(1)), prev)


def _old_mix_forward(self: SDNHead, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """SDNHead.forward with the mix as it was written before (prototype for the A/B)."""
    a = torch.sigmoid(self.alpha)
    pooled = a * F.adaptive_max_pool2d(x, self.grid) + (1 - a) * F.adaptive_avg_pool2d(x, self.grid)
    return self._combine(self.fc(pooled.flatten(1)), prev)


def make_loader(args: argparse.Namespace) -> TensorLoader:
    """``steps`` batches of seeded random CIFAR-shaped uint8 images, augmented on the fly like real training."""
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    x = torch.randint(0, 256, (n, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, args.classes, (n,), generator=g)
    return TensorLoader(x, y, args.batch_size, mean=torch.full((3,), 0.47), std=torch.full((3,), 0.25), shuffle=True,
                        pad=4, flip=True, drop_last=True, channels_last=args.channels_last)


def make_variants(args: argparse.Namespace) -> dict[str, Callable[[], int]]:
    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=args.classes, img_size=args.img_size, exits=args.exits,
                        head=args.head)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(args)
    opts = PhaseConfig(lr=0.01, schedule="constant")  # a small constant rate: the weights stay sane over repeats
    fixed = {h: h.forward for h in model.heads}

    def variant(kind: int, pool: str = "adaptive") -> Callable[[], float]:
        phase = Phase(kind, 1, opts)

        opt = make_optimizer([p for p in model.parameters()], phase)  # built once; only its params' grads are set

        def run() -> int:
            for h in model.heads:
                h.forward = fixed[h] if pool == "adaptive" else \
                    (_fixed_pool_forward if pool == "fixed" else _old_mix_forward).__get__(h)
            set_trainable(model, phase)
            set_modes(model, phase)
            train_epoch(PhaseState(phase_module(model, phase), phase, loader, opt, total_steps=args.steps))
            return args.steps

        return run

    variants = {"backbone": variant(1), "joint": variant(2)}
    if args.head == "sdn" and args.prototypes:
        variants["joint-fixedpool"] = variant(2, "fixed")
        variants["joint-oldmix"] = variant(2, "oldmix")
    return variants


def nopool_variant(args: argparse.Namespace) -> Callable[[], int]:
    """The same backbone with ``pooled`` heads (global average + linear), its own model instance."""
    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=args.classes, img_size=args.img_size, exits=args.exits,
                        head="pooled")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(args)
    phase = Phase(2, 1, PhaseConfig(lr=0.01, schedule="constant"))
    opt = make_optimizer(set_trainable(model, phase), phase)

    def run() -> int:
        set_modes(model, phase)
        train_epoch(PhaseState(model, phase, loader, opt, total_steps=args.steps))
        return args.steps

    return run


def _op_times(run: Callable[[], int], steps: int = 2) -> dict[str, float]:
    """Self CPU seconds per operator over ``steps`` calls of ``run``, after one warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    return {r.key: r.self_cpu_time_total / 1e6 / steps for r in prof.key_averages()}


def profile_joint(variants: dict[str, Callable[[], int]]) -> None:
    """Where the joint step's extra time goes: operator self times of the joint step minus the backbone step's."""
    base, joint = _op_times(variants["backbone"]), _op_times(variants["joint"])
    total_b, total_j = sum(base.values()), sum(joint.values())
    print(f"\nprofile, per step: backbone {total_b:.3f} s, joint {total_j:.3f} s (+{total_j / total_b - 1:.1%})")
    print(f"{'operator':<48}{'backbone s':>11}{'joint s':>9}{'extra, % of backbone step':>27}")
    delta = {k: joint.get(k, 0.0) - base.get(k, 0.0) for k in set(base) | set(joint)}
    for k in sorted(delta, key=lambda k: -abs(delta[k]))[:14]:
        print(f"{k[:47]:<48}{base.get(k, 0.0):>11.3f}{joint.get(k, 0.0):>9.3f}{delta[k] / total_b:>26.1%}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet56")
    p.add_argument("--exits", type=parse_exits, default="every:3",
                   help="every:K, flops:N or 1,3,5; every:3 on resnet56 gives 8 ICs (default)")
    p.add_argument("--head", default="sdn")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=1, help="training steps per timed call (default 1)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--prototypes", action="store_true", help="also time the prototype head fixes")
    p.add_argument("--profile", action="store_true", help="print the operator profile of the joint step and exit")
    p.add_argument("--json", help="write the raw times and ratios here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = make_variants(args)
    if args.profile:
        profile_joint(variants)
        return {}
    if args.prototypes:
        variants["joint-nopool"] = nopool_variant(args)
    clocks = interleaved(variants, args.repeats)
    print(f"{args.backbone}, exits {args.exits} ({args.head} heads), batch {args.batch_size}x3x{args.img_size}x"
          f"{args.img_size}, {args.threads} thread(s), channels_last={args.channels_last}, {args.steps} step(s) x "
          f"{args.repeats} interleaved repeats")
    result = {"args": vars(args), "seconds_per_step": clocks, "ratio_vs_backbone": {}}
    print(f"{'variant':<18}{'CPU s/step':>12}{'ratio':>9}{'wall s/step':>13}{'ratio':>9}")
    rel = {c: ratios(clocks[c], "backbone") for c in clocks}
    for n in variants:
        cpu, wall = statistics.median(clocks["cpu"][n]), statistics.median(clocks["wall"][n])
        print(f"{n:<18}{cpu:>12.3f}{rel['cpu'][n]:>8.3f}x{wall:>13.3f}{rel['wall'][n]:>8.3f}x")
    result["ratio_vs_backbone"] = rel
    print("ratio: median over repeats of (variant / backbone) within the same repeat")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
