"""Real batched early exit on a ResNet-56-style model with 8 exits, and the batch-1 no-exit overhead.

Batched (default batch 256): a fixed share of the remaining samples (``--leave``, default 35%) leaves at every
exit, so the speed-ups do not depend on training. Prints, measured in one session with the variants interleaved:
the FLOPs-predicted speed-up, the segment-time ideal and the measured speed-up over the all-exits run, and checks
that every sample's logits equal the all-exits run's logits at the exit it took.

Batch 1: the confidence policy is checked at every exit at threshold 1.0 (nobody leaves on this model), against
the bare backbone and the all-exits forward.

    OMP_NUM_THREADS=1 python benchmarks/bench_early_exit.py --threads 1
    OMP_NUM_THREADS=1 python benchmarks/bench_early_exit.py --threads 1 --batch1-only --profile   # where it goes
"""

from __future__ import annotations

import argparse
import json

import torch

from exitlab.evaluation.bench import batch1_latency, batched_speedups
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import Policy, Step, make_policy
from exitlab.models import build_model
from exitlab.models.costs import exit_costs


class Quota(Policy):
    """Benchmark policy: each sample leaves an exit with probability ``threshold``, independently per exit.

    A user-written policy in a few lines: the score is a uniform draw, re-seeded at exit 0 so that every call makes
    the same decisions on the same batch.
    """

    name = "quota"
    exit_when = "below"

    def __init__(self, threshold: float | None = None, seed: int = 0):
        super().__init__(threshold)
        self.seed, self.gen = seed, torch.Generator()

    def step(self, j, logits, state):
        if j == 0:
            self.gen.manual_seed(self.seed)
        score = torch.rand(len(logits), generator=self.gen).to(logits.device)  # decided where the logits are
        return Step(score, logits.argmax(-1), state)


def calibrated_model(args) -> torch.nn.Module:
    """Random weights, with BatchNorm statistics set from random inputs so activations and logits are sane."""
    torch.manual_seed(args.seed)
    model = build_model(f"resnet{args.depth}", num_classes=args.classes, in_chans=3, img_size=args.img,
                        exits=f"flops:{args.exits}", head=args.head)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(64, 3, args.img, args.img))
    return model.eval()


def profile_batch1(model, xs: torch.Tensor, rows: int = 12) -> None:
    """Operator self times per input at batch 1: bare backbone, all exits, policy at every exit (nobody leaving)."""
    from torch.profiler import ProfilerActivity, profile

    policy = make_policy("confidence")
    runs = {"bare backbone": model.backbone, "all exits": model,
            "policy at every exit": lambda x: early_exit(model, x, policy, 1.0)}
    tables = {}
    with torch.no_grad():
        for name, fn in runs.items():
            for i in range(5):
                fn(xs[i:i + 1])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(len(xs)):
                    fn(xs[i:i + 1])
            tables[name] = {r.key: (r.self_cpu_time_total / len(xs), r.count / len(xs)) for r in prof.key_averages()}
    base = tables["bare backbone"]
    for name, t in tables.items():
        total = sum(us for us, _ in t.values())
        print(f"\n{name}: {total / 1e3:.2f} ms of operator self time per input (profiler on)")
        extra = sorted(t, key=lambda k: -(t[k][0] - base.get(k, (0.0, 0))[0]))
        for k in (extra if name != "bare backbone" else sorted(t, key=lambda k: -t[k][0]))[:rows]:
            us, n = t[k]
            print(f"  {k[:40]:<40} {us:8.1f} us {n:5.1f} calls  (bare: {base.get(k, (0.0, 0))[0]:7.1f} us)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=56, help="CIFAR ResNet depth (default: 56)")
    ap.add_argument("--exits", type=int, default=8, help="number of ICs, placed evenly by FLOPs (default: 8)")
    ap.add_argument("--head", default="sdn", help="IC head (default: sdn)")
    ap.add_argument("--img", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--leave", type=float, default=0.35, help="share of remaining samples leaving at each exit")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--samples", type=int, default=200, help="inputs timed at batch 1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall time or this thread's CPU time")
    ap.add_argument("--json", help="also write the full results here")
    ap.add_argument("--batch1-only", action="store_true", help="skip the batched part")
    ap.add_argument("--profile", action="store_true", help="print the batch-1 operator profile and stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = calibrated_model(args)
    costs = exit_costs(model)
    xs = torch.randn(args.samples, 3, args.img, args.img)
    if args.profile:
        return profile_batch1(model, xs)
    print(f"resnet{args.depth}, exits after blocks {model.exits}, head {args.head}, {args.threads} thread(s), "
          f"{args.clock} clock")
    b = None
    if not args.batch1_only:
        x = torch.randn(args.batch, 3, args.img, args.img)
        b = batched_speedups(model, x, Quota(), args.leave, costs.flops, warmup=args.warmup, repeats=args.repeats,
                             clock=args.clock)
        print_batched(args, b)
    one = batch1_latency(model, xs, make_policy("confidence"), 0.9, 1.0, clock=args.clock)
    print(f"batch 1 ({args.samples} inputs), median ms: bare {one['bare_backbone']['median'] * 1e3:.2f}, "
          f"all exits {one['all_exits']['median'] * 1e3:.2f}, policy at every exit (nobody leaving) "
          f"{one['no_exit']['median'] * 1e3:.2f} [{one['no_exit_samples_that_left_early']} left early]")
    print(f"  overhead vs bare backbone {one['no_exit_overhead_vs_bare']:+.1%} (heads alone "
          f"{one['all_exits_overhead_vs_bare']:+.1%}); vs all-exits forward "
          f"{one['no_exit_overhead_vs_all_exits']:+.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "batched": b, "batch1": one}, f, indent=1)


def print_batched(args, b: dict) -> None:
    print(f"batch {args.batch}, {args.leave:.0%} of remaining leave per exit; exit shares "
          + " ".join(f"{s:.3f}" for s in b["exit_shares"]))
    print("  segment ms at full batch: " + " ".join(f"{s * 1e3:.1f}" for s in b["segment_seconds"]))
    print(f"  all exits {b['all_exits']['median'] * 1e3:.1f} ms (p95 {b['all_exits']['p95'] * 1e3:.1f}), "
          f"early exit {b['early_exit']['median'] * 1e3:.1f} ms (p95 {b['early_exit']['p95'] * 1e3:.1f}), "
          f"bare backbone {b['bare_backbone']['median'] * 1e3:.1f} ms")
    print(f"  speed-up: FLOPs-predicted {b['speedup_flops']:.2f}x | segment-time ideal "
          f"{b['speedup_segment_ideal']:.2f}x | measured {b['speedup_measured']:.2f}x = "
          f"{b['measured_over_ideal']:.1%} of ideal")
    print(f"  logits equal to the all-exits run: {b['logits_equal']} (max |diff| {b['logits_max_abs_diff']:.1e})")


if __name__ == "__main__":
    main()
