"""Adapter overhead: training-step time of a timm or torchvision model with exits against the same model without.

One model (``exitlab.from_torchvision`` / ``from_timm``), one optimizer recipe, the same batches (one seeded
``TensorLoader``), both through exitlab's own training loop (:func:`exitlab.training.loop.train_epoch`):

- ``backbone``: phase 1, the adapted module alone (its plain forward: no hooks, no heads), final exit only;
- ``exits``: phase 2, forward hooks at the taps, every IC evaluated, the weighted sum of the per-exit losses.

A step is forward, loss, backward and the SGD update. Repeats interleave the variants in rotating order
(``bench_ic_overhead.interleaved``), the ratio is taken within each repeat and the median over repeats reported.

Run (1 thread, as every exitlab benchmark; needs torchvision or timm, see docs/models.md)::

    OMP_NUM_THREADS=1 python benchmarks/bench_adapter.py --source torchvision:resnet18 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
from bench_ic_overhead import interleaved, make_loader, parse_exits, ratios

from exitlab.models import build_foreign
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.loop import PhaseState, make_optimizer, set_modes, set_trainable, step_flops, train_epoch
from exitlab.training.objective import phase_module
from exitlab.training.phases import Phase


def flops_ratio(model, loader) -> tuple[int, int]:
    """Measured FLOPs of one training step (forward + backward) of phase 1 and of phase 2 on one batch: what the
    ICs add in arithmetic, free of timing noise."""
    x, y = next(iter(loader))
    opts = PhaseConfig(lr=0.01)
    return step_flops(model, Phase(1, 1, opts), x, y), step_flops(model, Phase(2, 1, opts), x, y)


def make_variants(args: argparse.Namespace) -> tuple[dict[str, Callable[[], int]], object, tuple[int, int]]:
    """The two timed variants over one adapted model, the model, and the FLOPs of a step of each."""
    torch.manual_seed(0)
    model = build_foreign(args.source, num_classes=args.classes, exits=args.exits, head=args.head,
                          kwargs=json.loads(args.kwargs), input_shape=(3, args.img_size, args.img_size))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(args)
    opts = PhaseConfig(lr=0.01, schedule="constant")  # a small constant rate: the weights stay sane over repeats

    def variant(kind: int) -> Callable[[], int]:
        phase = Phase(kind, 1, opts)
        opt = make_optimizer(list(model.parameters()), phase)  # built once; only its params' grads are set

        def run() -> int:
            set_trainable(model, phase)
            set_modes(model, phase)
            train_epoch(PhaseState(phase_module(model, phase), phase, loader, opt, total_steps=args.steps))
            return args.steps

        return run

    return {"backbone": variant(1), "exits": variant(2)}, model, flops_ratio(model, loader)


def _op_times(run: Callable[[], int], steps: int = 2) -> dict[str, float]:
    """Self CPU seconds per operator over ``steps`` calls of ``run``, after one warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    return {r.key: r.self_cpu_time_total / 1e6 / steps for r in prof.key_averages()}


def profile_exits(variants: dict[str, Callable[[], int]]) -> None:
    """Where the extra time of the step with exits goes: operator self times minus the backbone step's."""
    base, full = _op_times(variants["backbone"]), _op_times(variants["exits"])
    total_b, total_e = sum(base.values()), sum(full.values())
    print(f"\nprofile, per step: backbone {total_b:.3f} s, exits {total_e:.3f} s (+{total_e / total_b - 1:.1%})")
    print(f"{'operator':<48}{'backbone s':>11}{'exits s':>9}{'extra, % of backbone step':>27}")
    delta = {k: full.get(k, 0.0) - base.get(k, 0.0) for k in set(base) | set(full)}
    for k in sorted(delta, key=lambda k: -abs(delta[k]))[:14]:
        print(f"{k[:47]:<48}{base.get(k, 0.0):>11.3f}{full.get(k, 0.0):>9.3f}{delta[k] / total_b:>26.1%}")


def report(args: argparse.Namespace, model, flops: tuple[int, int], clocks) -> dict:
    """Print the table and return the raw times and ratios."""
    taps = list(model.spec.exits)
    print(f"{args.source} {args.kwargs}, {len(taps)} {args.head} ICs after {taps}, batch {args.batch_size}x3x"
          f"{args.img_size}x{args.img_size}, {args.threads} thread(s), {args.steps} step(s) x {args.repeats} "
          f"interleaved repeats, torch {torch.__version__}")
    rel = {c: ratios(clocks[c], "backbone") for c in clocks}
    print(f"{'variant':<12}{'CPU s/step':>12}{'ratio':>9}{'wall s/step':>13}{'ratio':>9}")
    for n in clocks["cpu"]:
        cpu, wall = statistics.median(clocks["cpu"][n]), statistics.median(clocks["wall"][n])
        print(f"{n:<12}{cpu:>12.3f}{rel['cpu'][n]:>8.3f}x{wall:>13.3f}{rel['wall'][n]:>8.3f}x")
    print("ratio: median over repeats of (variant / backbone) within the same repeat")
    f1, f2 = flops
    q = sorted(a / b for a, b in zip(clocks["cpu"]["exits"], clocks["cpu"]["backbone"]))
    print(f"CPU ratio quartiles {q[len(q) // 4]:.3f}-{q[(3 * len(q)) // 4]:.3f}; measured FLOPs per step: backbone "
          f"{f1 / 1e9:.2f} G, exits {f2 / 1e9:.2f} G ({f2 / f1:.4f}x)")
    return {"args": vars(args), "exits": taps, "seconds_per_step": clocks, "ratio_vs_backbone": rel,
            "step_flops": {"backbone": f1, "exits": f2}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="torchvision:resnet18", help="timm:NAME or torchvision:NAME")
    p.add_argument("--kwargs", default="{}", help='builder options as JSON, e.g. \'{"img_size": 64}\'')
    p.add_argument("--exits", type=parse_exits, default="every:1", help="every:K, flops:N or 0,1,2 (stage indices)")
    p.add_argument("--head", default="pooled")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=1, help="training steps per timed call (default 1)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the operator profile of both steps and exit")
    p.add_argument("--json", help="write the raw times and ratios here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants, model, flops = make_variants(args)
    if args.profile:
        profile_exits(variants)
        return {}
    result = report(args, model, flops, interleaved(variants, args.repeats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
