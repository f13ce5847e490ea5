"""Measured speed of real early exit, next to what FLOPs and segment times predict.

Three speed-ups over the all-exits run (every sample through the whole backbone and every head), from one session
with the variants interleaved repeat by repeat so machine noise hits all of them alike:

- **FLOPs-predicted**: cost of the final exit / mean cost of the exits taken (:mod:`exitlab.costs`);
- **segment-time ideal**: the all-exits run is timed segment by segment (blocks up to an exit plus its head, at
  the full batch); the ideal time weights segment ``s`` by the share of samples that reach it;
- **measured**: time of the all-exits run / time of :func:`exitlab.inference.early_exit`.

Each ratio is taken within one repeat (adjacent runs) and the median over repeats is reported; times are
reported as median and p95. At batch 1 the overheads are likewise medians over inputs of per-input ratios.

On a CPU the first is not a ceiling: early stages cost more time per FLOP than late ones.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import torch

from ..errors import ConfigError, ExitlabError
from ..models.costs import exit_costs
from ..runs.files import atomic_write
from ..runs.rundir import RunDir
from .inference import early_exit
from .policies import POLICIES, Policy, make_policy
from .sweep import select, simulate
from .ztw import ztw_for_run


def summary(times: list[float]) -> dict:
    """Median and 95th percentile (nearest rank) of a list of seconds."""
    s = sorted(times)
    return {"median": statistics.median(s), "p95": s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))], "n": len(s)}


def _device_clock() -> float:
    """Wall time once queued GPU work is done: CUDA kernels run asynchronously, so a plain clock would time their
    launch only. Without CUDA it is the wall clock."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


# cpu: this thread's CPU time, robust to other load; device: wall time after synchronising a GPU
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time, "device": _device_clock}


def _clock(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


@torch.no_grad()
def timed_all_exits(model, x: torch.Tensor, clock: Callable[[], float] = time.perf_counter
                    ) -> tuple[list[torch.Tensor], list[float]]:
    """Every exit's logits, and the seconds spent in each segment (blocks up to an exit, plus its head)."""
    marks = [clock()]
    outs: list[torch.Tensor] = []

    def on_exit(j: int, logits: torch.Tensor, h: torch.Tensor) -> bool:
        outs.append(logits)
        marks.append(clock())
        return True

    outs.append(model.walk(x, on_exit))
    marks.append(clock())
    return outs, [b - a for a, b in zip(marks, marks[1:])]


@torch.no_grad()
def batched_speedups(model, x: torch.Tensor, policy: Policy, threshold: float, costs: torch.Tensor, *,
                     warmup: int = 1, repeats: int = 5, clock: str = "wall") -> dict:
    """The three speed-ups at batch ``len(x)``, plus times, exit shares and the logits check.

    ``clock``: "wall" (latency as a user sees it) or "cpu" (this thread's CPU time: with one torch thread, all the
    compute, and insensitive to other processes competing for the core)."""
    tick = CLOCKS[clock]
    costs = torch.as_tensor(costs, dtype=torch.float64)
    for _ in range(warmup):
        timed_all_exits(model, x)
        early_exit(model, x, policy, threshold)
        model.backbone(x)
    t_all, t_early, t_bare, segs = [], [], [], []
    for _ in range(repeats):
        t0 = tick()
        outs, seg = timed_all_exits(model, x, tick)
        t_all.append(tick() - t0)
        segs.append(seg)
        t0 = tick()
        res = early_exit(model, x, policy, threshold)
        t_early.append(tick() - t0)
        t_bare.append(_clock(lambda: model.backbone(x), tick))
    E = model.num_exits
    seg = torch.tensor(segs, dtype=torch.float64)  # [R, E]
    exits = res.exits.cpu()
    reach = torch.tensor([(exits >= k).double().mean().item() for k in range(E)], dtype=torch.float64)
    ref = torch.stack(outs)[res.exits, torch.arange(len(x), device=res.exits.device)]  # [B, C]: at the exit taken
    ideal_time = seg @ reach  # [R]: each repeat's segments weighted by the share of samples reaching them
    early = torch.tensor(t_early, dtype=torch.float64)
    return {
        "batch": len(x), "threshold": threshold, "policy": policy.name, "clock": clock, "repeats": repeats,
        "exit_shares": torch.bincount(exits, minlength=E).div(len(x)).tolist(), "reach": reach.tolist(),
        "segment_seconds": seg.median(0).values.tolist(),
        "all_exits": summary(t_all), "early_exit": summary(t_early), "bare_backbone": summary(t_bare),
        "speedup_flops": (costs[-1] / costs[exits].mean()).item(),
        # ratios are paired within a repeat (adjacent runs), then the median over repeats: robust to drifting load
        "speedup_segment_ideal": (seg.sum(1) / ideal_time).median().item(),
        "speedup_measured": (torch.tensor(t_all, dtype=torch.float64) / early).median().item(),
        "measured_over_ideal": (ideal_time / early).median().item(),
        "logits_max_abs_diff": (res.logits - ref).abs().max().item(), "logits_equal": torch.equal(res.logits, ref),
    }


@torch.no_grad()
def batch1_latency(model, xs: torch.Tensor, policy: Policy, threshold: float, no_exit_threshold: float, *,
                   warmup: int = 5, clock: str = "wall") -> dict:
    """Per-sample latency at batch 1 over the samples ``xs``: bare backbone, all exits, early exit at
    ``threshold``, and early exit at ``no_exit_threshold`` (the policy checked at every exit, nobody leaving)."""
    runs = {
        "bare_backbone": lambda x: model.backbone(x),
        "all_exits": lambda x: model(x),
        "early_exit": lambda x: early_exit(model, x, policy, threshold),
        "no_exit": lambda x: early_exit(model, x, policy, no_exit_threshold),
    }
    for i in range(min(warmup, len(xs))):
        for fn in runs.values():
            fn(xs[i:i + 1])
    times: dict[str, list[float]] = {k: [] for k in runs}
    left_early = 0
    for i in range(len(xs)):
        x = xs[i:i + 1]
        for k, fn in runs.items():
            times[k].append(_clock(lambda fn=fn, x=x: fn(x), CLOCKS[clock]))
        left_early += int(early_exit(model, x, policy, no_exit_threshold).exits.item() < model.num_exits - 1)
    out: dict = {k: summary(v) for k, v in times.items()}
    out["clock"] = clock
    ratio = {k: torch.tensor(v, dtype=torch.float64) / torch.tensor(times["bare_backbone"], dtype=torch.float64)
             for k, v in times.items()}  # paired per input (adjacent runs), median over inputs
    out["no_exit_overhead_vs_bare"] = ratio["no_exit"].median().item() - 1
    out["no_exit_overhead_vs_all_exits"] = (ratio["no_exit"] / ratio["all_exits"]).median().item() - 1
    out["all_exits_overhead_vs_bare"] = ratio["all_exits"].median().item() - 1
    out["no_exit_samples_that_left_early"] = left_early
    out["throughput_per_s"] = {k: 1.0 / out[k]["median"] for k in runs}
    return out


def strictest(policy: Policy, num_exits: int, num_classes: int) -> float:
    """The threshold at which the fewest samples leave early (top of the range, or bottom for "below")."""
    lo, hi = policy.valid_range(num_exits, num_classes)
    return hi if policy.exit_when == "above" else lo


def bench_run(run_dir, *, policy: str = "confidence", threshold: float | None = None, budget: float = 0.5,
              split: str = "test", batch: int = 256, samples: int = 50, repeats: int = 5, warmup: int = 1,
              clock: str = "wall", write: bool = True) -> dict:
    """Benchmark a run's model on its ``split``: batched speed-ups and batch-1 latency; saves ``bench.json``.

    Without ``threshold``, the threshold is the one chosen on the validation split for ``budget`` (a fraction of
    backbone FLOPs), as in ``eval.json``.
    """
    POLICIES.get(policy)
    if clock not in CLOCKS:
        raise ConfigError(f"--clock {clock!r}: choose one of {', '.join(CLOCKS)}")
    for key, val in (("batch", batch), ("samples", samples), ("repeats", repeats)):
        if val < 1:
            raise ConfigError(f"--{key} must be >= 1, got {val}")
    run = (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)).require_model()
    model = run.model()
    pol = ztw_for_run(run) if policy == "ztw" else make_policy(policy)
    E, C = model.num_exits, model.num_classes
    costs = exit_costs(model)
    if threshold is None:
        threshold = _threshold_for_budget(pol, run.logits("val"), costs, budget)
    pol.check_thresholds([threshold], E, C)
    x = _first_inputs(run.loader(split), max(batch, samples))
    result = {
        "run_dir": str(run.path), "split": split, "threads": torch.get_num_threads(),
        "batched": batched_speedups(model, x[:batch], pol, threshold, costs.flops, warmup=warmup, repeats=repeats,
                                    clock=clock),
        "batch1": batch1_latency(model, x[:samples], pol, threshold, strictest(pol, E, C), clock=clock),
    }
    if write:
        atomic_write(run / RunDir.BENCH, lambda p: p.write_text(json.dumps(result, indent=1)))
    return result


def _first_inputs(loader, n: int) -> torch.Tensor:
    """The first ``n`` normalised inputs of a loader, as one tensor."""
    xs, got = [], 0
    for x, _ in loader:
        xs.append(x)
        got += len(x)
        if got >= n:
            break
    return torch.cat(xs)[:n]


def _threshold_for_budget(policy: Policy, val, costs, budget: float) -> float:
    logits, labels = val
    E, _, C = logits.shape
    scores, preds = policy.scores(logits)
    sw = simulate(scores, preds, labels, costs.flops, policy.default_thresholds(E, C), policy.exit_when,
                  backbone_flops=costs.backbone_flops)
    i = select(sw, budget=budget)
    if i is None:
        raise ExitlabError(f"no {policy.name} threshold keeps the validation cost within {budget:.0%} of the "
                           "backbone's FLOPs; raise --budget or pass --threshold")
    return sw.thresholds[i].item()


def format_bench(result: dict) -> str:
    """The CLI's text for a :func:`bench_run` result."""
    b, one = result["batched"], result["batch1"]
    ms = 1e3
    lines = [f"{result['run_dir']}: {b['policy']} at threshold {b['threshold']:.4g}, {result['threads']} thread(s), "
             f"{b['clock']} clock",
             f"batch {b['batch']}: exit shares " + " ".join(f"{s:.2f}" for s in b["exit_shares"]),
             f"  all exits   median {b['all_exits']['median'] * ms:8.2f} ms  p95 {b['all_exits']['p95'] * ms:8.2f} ms"
             f"  ({b['batch'] / b['all_exits']['median']:.0f} samples/s)",
             f"  early exit  median {b['early_exit']['median'] * ms:8.2f} ms  p95 {b['early_exit']['p95'] * ms:8.2f} ms"
             f"  ({b['batch'] / b['early_exit']['median']:.0f} samples/s)",
             f"  speed-up    FLOPs-predicted {b['speedup_flops']:.2f}x | segment-time ideal "
             f"{b['speedup_segment_ideal']:.2f}x | measured {b['speedup_measured']:.2f}x "
             f"({b['measured_over_ideal']:.0%} of ideal)",
             f"  logits vs all-exits run: max |diff| {b['logits_max_abs_diff']:.2e}"
             f" ({'identical' if b['logits_equal'] else 'not bit-identical'})",
             f"batch 1 ({one['bare_backbone']['n']} samples), median / p95 ms:"]
    for k in ("bare_backbone", "all_exits", "early_exit", "no_exit"):
        lines.append(f"  {k:<14}{one[k]['median'] * ms:8.3f} / {one[k]['p95'] * ms:8.3f}")
    lines.append(f"  no-exit overhead vs bare backbone {one['no_exit_overhead_vs_bare']:+.1%}, "
                 f"vs all-exits forward {one['no_exit_overhead_vs_all_exits']:+.1%}")
    return "\n".join(lines)
