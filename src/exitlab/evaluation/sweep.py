"""Simulated early exit from cached per-exit outputs: threshold sweeps, Pareto budgets, AUC, calibration.

Everything here is vectorised tensor code over already-computed scores (see :meth:`exitlab.policies.Policy.scores`).

How a sweep works. With scores ``s[j, n]`` (exit ``j``, sample ``n``) and a policy that exits when
``s >= t``, sample ``n`` leaves at the first ``j`` with ``s[j, n] >= t``, or at the final exit. That equals the
number of exits ``j < E-1`` whose running maximum ``max(s[0..j, n])`` is below ``t`` (``"below"`` policies negate
score and threshold). :func:`exit_indices` finds it per sample and threshold with ``torch.searchsorted``;
:func:`simulate` only needs counts, so it sorts each exit's running maxima once and searches the thresholds in them,
never building a ``[T, N]`` tensor.

How budgets are read off the curve. Each threshold gives one point (mean cost, accuracy). A point is on the
**Pareto frontier** when no other point is at most as costly and strictly more accurate (or equally accurate and
strictly cheaper). Between two neighbouring frontier points the accuracy at budget ``b`` is interpolated
linearly: routing a share ``lambda`` of samples with one threshold and the rest with the other achieves exactly
that mean cost and accuracy. Below the cheapest point a budget is unreachable (``None``); above the costliest
frontier point the accuracy stays at its value. Budgets are fractions of the bare backbone's FLOPs.

AUC is the mean of that budget curve over budgets uniform in [0, 1] (0 to 100% of the backbone's FLOPs),
counting unreachable budgets as accuracy 0: the exact integral of the piecewise-linear frontier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ExitlabError

BUDGETS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Sweep:
    """Simulated early exit at each of ``T`` thresholds."""

    thresholds: torch.Tensor  # [T] float64
    accuracy: torch.Tensor  # [T] float64
    cost: torch.Tensor  # [T] float64: mean FLOPs per sample
    fraction: torch.Tensor  # [T] float64: cost / bare backbone FLOPs
    exit_fractions: torch.Tensor  # [T, E] float64: share of samples leaving at each exit

    def to_dict(self) -> dict:
        return {"thresholds": self.thresholds.tolist(), "accuracy": self.accuracy.tolist(), "flops": self.cost.tolist(),
                "fraction": self.fraction.tolist(), "exit_fractions": self.exit_fractions.tolist()}


def sample_scores(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What every exit earns on every sample, ``[E, N]``: 1 or 0 for a right or wrong class, or for regression
    (float predictions) minus the squared error, so that the mean is accuracy or minus the mean squared error and
    higher is better either way."""
    if preds.is_floating_point():
        return -(preds.double() - labels.double()[None]) ** 2
    return (preds == labels[None]).long()


def exit_indices(scores: torch.Tensor, thresholds: torch.Tensor, exit_when: str = "above") -> torch.Tensor:
    """Exit taken by every sample at every threshold: ``[T, N]`` int64, from scores ``[E, N]``.

    Thresholds are cast to the scores' dtype, as :meth:`Policy.decide` does, so the comparisons are identical.
    """
    E, N = scores.shape
    t = torch.as_tensor(thresholds).to(scores.dtype).reshape(-1)  # [T]
    if E == 1:
        return torch.zeros(len(t), N, dtype=torch.long)
    s = scores[:-1] if exit_when == "above" else -scores[:-1]  # [E-1, N]: the final exit always takes the rest
    t = t if exit_when == "above" else -t
    running = s.cummax(0).values.T.contiguous()  # [N, E-1], non-decreasing along exits
    idx = torch.searchsorted(running, t.expand(N, -1).contiguous(), side="left")  # [N, T]: count of running < t
    return idx.T


def simulate(scores: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, costs: torch.Tensor,
             thresholds: torch.Tensor, exit_when: str = "above", *, backbone_flops: float = 1.0) -> Sweep:
    """Accuracy, mean cost and exit distribution at every threshold.

    ``scores``/``preds``: ``[E, N]``; ``labels``: ``[N]``; ``costs``: cumulative FLOPs per exit ``[E]``, or per exit
    and sample ``[E, N]`` (text: every sample at its own length; the mean cost is then summed the same way).
    Exact integer counting, without materialising ``[T, N]``: a sample reaches exit ``k`` iff the running
    maximum of its scores over exits ``0..k-1`` is below ``t``, so sorting each exit's running maxima once and
    ``searchsorted``-ing the thresholds gives how many samples reach every exit, and a cumulative sum of
    ``correct[k] - correct[k-1]`` in the same order gives how the number of correct predictions changes.
    """
    E, N = scores.shape
    if N == 0:
        raise ValueError("cannot simulate early exit on 0 samples")
    if not bool(torch.isfinite(scores).all()):
        raise ExitlabError(f"{int((~torch.isfinite(scores)).any(0).sum())} sample(s) have NaN or infinite exit scores; "
                           "a policy's scores must be finite numbers")
    t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
    tt = t.to(scores.dtype) if exit_when == "above" else -t.to(scores.dtype)
    s = scores if exit_when == "above" else -scores
    running = s[:-1].cummax(0).values  # [E-1, N]
    correct = sample_scores(preds, labels)  # [E, N]: 0/1, or minus the squared error (regression)
    reach = torch.full((len(t), E + 1), N, dtype=torch.long)  # reach[:, k]: samples that get to exit k
    reach[:, E] = 0
    hits = correct[0].sum().expand(len(t)).clone()  # exact integer counts for classification
    per_sample = torch.as_tensor(costs, dtype=torch.float64)
    per_sample = per_sample if per_sample.ndim == 2 else None  # [E, N] or None
    total = torch.full((len(t),), float(per_sample[0].sum()) if per_sample is not None else 0.0, dtype=torch.float64)
    for k in range(1, E):
        r, order = running[k - 1].sort()
        reach[:, k] = torch.searchsorted(r, tt, side="left")  # samples whose running max is below t
        gain = torch.cat([torch.zeros(1, dtype=correct.dtype), (correct[k] - correct[k - 1])[order].cumsum(0)])
        hits += gain[reach[:, k]]
        if per_sample is not None:  # the same prefix sums over what going on to exit k adds to each sample's cost
            extra = (per_sample[k] - per_sample[k - 1])[order].cumsum(0)
            total += torch.cat([torch.zeros(1, dtype=torch.float64), extra])[reach[:, k]]
    share = (reach[:, :-1] - reach[:, 1:]).double() / N  # [T, E]: leave at exactly exit k
    cost = total / N if per_sample is not None else share @ torch.as_tensor(costs, dtype=torch.float64)
    return Sweep(t, hits.double() / N, cost, cost / backbone_flops, share)


def pareto_frontier(cost: torch.Tensor, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-dominated points of a curve, by increasing cost (and strictly increasing accuracy)."""
    cost = torch.as_tensor(cost, dtype=torch.float64)
    acc = torch.as_tensor(acc, dtype=torch.float64)
    order = torch.argsort(-acc, stable=True)
    order = order[torch.argsort(cost[order], stable=True)]  # by cost, then best accuracy first
    a = acc[order]
    best_before = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), a.cummax(0).values[:-1]])
    keep = order[a > best_before]  # strictly better than every cheaper (or equally cheap, listed earlier) point
    return cost[keep], acc[keep]


def accuracy_at(cost: torch.Tensor, acc: torch.Tensor, budget: float) -> float | None:
    """Accuracy at mean cost ``budget``, interpolated on the Pareto frontier; None when below every point."""
    c, a = pareto_frontier(cost, acc)
    if len(c) == 0 or budget < c[0]:
        return None
    if budget >= c[-1]:
        return a[-1].item()
    i = int(torch.searchsorted(c, torch.tensor([budget], dtype=torch.float64), right=True))  # c[i-1] <= b < c[i]
    c0, c1, a0, a1 = c[i - 1].item(), c[i].item(), a[i - 1].item(), a[i].item()
    return a0 + (a1 - a0) * (budget - c0) / (c1 - c0)


def budget_table(fraction: torch.Tensor, acc: torch.Tensor, budgets=BUDGETS) -> dict[str, float | None]:
    """Accuracy at each budget (fractions of backbone FLOPs), keyed by percent: ``{"25": 0.81, ...}``."""
    return {f"{round(b * 100):d}": accuracy_at(fraction, acc, b) for b in budgets}


def auc(fraction: torch.Tensor, acc: torch.Tensor, upper: float = 1.0) -> float:
    """Mean accuracy over budgets uniform in [0, ``upper``] on the frontier (0 where a budget is unreachable)."""
    c, a = pareto_frontier(fraction, acc)
    if len(c) == 0 or c[0] >= upper:
        return 0.0
    inside = c < upper
    xs = torch.cat([c[inside], torch.tensor([upper], dtype=torch.float64)])
    ys = torch.cat([a[inside], torch.tensor([accuracy_at(c, a, upper)], dtype=torch.float64)])
    return torch.trapezoid(ys, xs).item() / upper


def exit_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Top-1 accuracy of every exit from ``[E, N, C]`` logits; for regression (float labels, one output) minus the
    mean squared error."""
    if labels.is_floating_point():
        return sample_scores(logits[..., 0], labels).mean(1).tolist()
    return (logits.argmax(-1) == labels[None]).double().mean(1).tolist()


def ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> list[float]:
    """Expected calibration error of every exit: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over ``bins``
    equal-width confidence bins (max softmax), from ``[E, N, C]`` logits."""
    conf, pred = logits.double().softmax(-1).max(-1)  # [E, N]
    hit = (pred == labels[None]).double()
    E, N = conf.shape
    b = (conf * bins).long().clamp_(0, bins - 1)  # bin of each sample; conf = 1 goes to the last bin
    offset = torch.arange(E)[:, None] * bins
    flat = (b + offset).reshape(-1)
    sum_conf = torch.bincount(flat, conf.reshape(-1), minlength=E * bins).view(E, bins)
    sum_hit = torch.bincount(flat, hit.reshape(-1), minlength=E * bins).view(E, bins)
    return ((sum_hit - sum_conf).abs().sum(1) / N).tolist()  # |B|/N * |acc - conf| = |sum_hit - sum_conf| / N


def select(sweep: Sweep, *, budget: float | None = None, accuracy: float | None = None) -> int | None:
    """Index of the threshold to use: the most accurate within ``budget`` (fraction of backbone FLOPs; ties go
    to the cheaper), or the cheapest reaching ``accuracy`` (ties go to the more accurate). None if none qualifies."""
    if (budget is None) == (accuracy is None):
        raise ValueError("give exactly one of budget or accuracy")
    if budget is not None:
        ok = sweep.fraction <= budget
        key_primary, key_secondary = sweep.accuracy, -sweep.fraction
    else:
        ok = sweep.accuracy >= accuracy
        key_primary, key_secondary = -sweep.fraction, sweep.accuracy
    cands = torch.nonzero(ok).flatten().tolist()
    if not cands:
        return None
    return max(cands, key=lambda i: (key_primary[i].item(), key_secondary[i].item()))


# ---------------------------------------------------------------- thresholds from the scores themselves
MAX_THRESHOLDS = 4096


def score_thresholds(scores: torch.Tensor, exit_when: str = "above", max_n: int = MAX_THRESHOLDS) -> torch.Tensor:
    """Thresholds that reach every operating point of ``scores`` ``[E, N]``.

    A sample's exit depends on the running maximum of its IC scores, so only those values matter: between two
    neighbouring distinct values every threshold gives the same exits. Returns all distinct running maxima (plus
    one beyond the last, where nobody leaves early) when there are at most ``max_n``, else ``max_n`` quantiles of
    them. An evenly spaced grid misses the operating points of over-confident models, whose scores crowd near 1.
    """
    E = scores.shape[0]
    if E == 1:
        return torch.zeros(1, dtype=torch.float64)
    s = scores[:-1].double() if exit_when == "above" else -scores[:-1].double()
    values = torch.unique(s.cummax(0).values.flatten())  # sorted
    if len(values) > max_n:
        values = torch.quantile(values, torch.linspace(0, 1, max_n, dtype=torch.float64))
    beyond = values[-1:] + values[-1:].abs().clamp_min(1.0) * 1e-6  # nobody leaves early
    t = torch.cat([values, beyond])
    return t if exit_when == "above" else -t


# ---------------------------------------------------------------- choosing on validation, reporting on test


def pareto_indices(cost: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Indices of the non-dominated points, by increasing cost and strictly increasing accuracy."""
    cost = torch.as_tensor(cost, dtype=torch.float64)
    acc = torch.as_tensor(acc, dtype=torch.float64)
    order = torch.argsort(-acc, stable=True)
    order = order[torch.argsort(cost[order], stable=True)]
    a = acc[order]
    best_before = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), a.cummax(0).values[:-1]])
    return order[a > best_before]


def chosen_at(val: Sweep, test: Sweep, budget: float) -> dict | None:
    """The operating point for ``budget`` chosen on the validation sweep, reported on the test sweep (both at the
    same thresholds). Between two validation-frontier thresholds a share ``lam`` of samples is routed with the
    costlier one, so the validation cost meets the budget exactly; test accuracy and cost are mixed alike."""
    idx = pareto_indices(val.fraction, val.accuracy)
    c = val.fraction[idx]
    if len(idx) == 0 or budget < c[0]:
        return None
    k = int(torch.searchsorted(c, torch.tensor([budget], dtype=torch.float64), right=True)) - 1  # c[k] <= b
    i0 = int(idx[k])
    i1, lam = i0, 0.0
    if k + 1 < len(idx):
        i1 = int(idx[k + 1])
        lam = (budget - c[k].item()) / (c[k + 1].item() - c[k].item())
    mix = lambda s: (1 - lam) * s[i0].item() + lam * s[i1].item()  # noqa: E731
    return {"accuracy": mix(test.accuracy), "fraction": mix(test.fraction), "val_accuracy": mix(val.accuracy),
            "val_fraction": mix(val.fraction), "thresholds": [val.thresholds[i0].item(), val.thresholds[i1].item()],
            "mix": lam}


def chosen_budget_table(val: Sweep, test: Sweep, budgets=BUDGETS) -> dict[str, float | None]:
    """Test accuracy at each budget with the operating point chosen on validation; keyed by percent."""
    out = {}
    for b in budgets:
        point = chosen_at(val, test, b)
        out[f"{round(b * 100):d}"] = None if point is None else point["accuracy"]
    return out


def chosen_auc(val: Sweep, test: Sweep, upper: float = 1.0) -> float:
    """Mean test accuracy over budgets uniform in [0, ``upper``], each budget's point chosen on validation (0 where
    validation cannot reach the budget). Exact: between validation-frontier costs the test accuracy is linear."""
    idx = pareto_indices(val.fraction, val.accuracy)
    c, a = val.fraction[idx], test.accuracy[idx]
    if len(c) == 0 or c[0] >= upper:
        return 0.0
    inside = c < upper
    end = chosen_at(val, test, upper)["accuracy"]
    xs = torch.cat([c[inside], torch.tensor([upper], dtype=torch.float64)])
    ys = torch.cat([a[inside], torch.tensor([end], dtype=torch.float64)])
    return torch.trapezoid(ys, xs).item() / upper


# ---------------------------------------------------------------- MSDNet's budgeted batch classification


def exits_per_exit_thresholds(scores: torch.Tensor, thresholds: torch.Tensor, exit_when: str = "above"
                              ) -> torch.Tensor:
    """Exit of every sample ``[N]`` when exit ``k`` has its own threshold ``thresholds[k]`` (scores ``[E, N]``)."""
    E, N = scores.shape
    s = scores[:-1] if exit_when == "above" else -scores[:-1]
    t = thresholds[:-1, None].to(s.dtype) if exit_when == "above" else -thresholds[:-1, None].to(s.dtype)
    leave = torch.cat([s >= t, torch.ones(1, N, dtype=torch.bool)])  # [E, N]; the final exit takes the rest
    return leave.to(torch.int8).argmax(0)


def geometric_thresholds(scores: torch.Tensor, p: float, exit_when: str = "above") -> torch.Tensor:
    """Per-exit thresholds on ``scores`` ``[E, N]`` so that shares proportional to ``p ** k`` leave at exit ``k``
    (Huang et al. 2018): at each exit, the most confident of the samples still running leave."""
    E, N = scores.shape
    share = torch.tensor([p**k for k in range(E)], dtype=torch.float64)
    counts = (share / share.sum() * N).round().long()
    s = scores.double() if exit_when == "above" else -scores.double()
    alive = torch.ones(N, dtype=torch.bool)
    thresholds = torch.full((E,), math.inf, dtype=torch.float64)
    for k in range(E - 1):
        vals = s[k][alive].sort(descending=True).values
        n = int(min(counts[k], len(vals)))
        if n > 0:
            thresholds[k] = vals[n - 1]
            alive &= ~(s[k] >= thresholds[k])
    thresholds[-1] = -math.inf
    return thresholds if exit_when == "above" else -thresholds


def budgeted_batch(val_scores, val_preds, val_labels, test_scores, test_preds, test_labels, costs, budget: float, *,
                   backbone_flops: float, exit_when: str = "above", val_costs=None,
                   val_backbone_flops: float | None = None) -> dict | None:
    """MSDNet's budgeted batch protocol: per-exit thresholds fitted on validation with a geometric exit profile
    whose parameter is searched (bisection on log p) until the mean validation cost meets ``budget`` (a fraction of
    backbone FLOPs); reported on test. None when even everyone leaving first costs more than the budget.
    ``costs``: ``[E]``, or ``[E, N]`` per test sample with ``val_costs`` ``[E, N_val]`` for the validation samples."""
    test_costs = torch.as_tensor(costs, dtype=torch.float64)
    val_costs = test_costs if val_costs is None else torch.as_tensor(val_costs, dtype=torch.float64)
    val = (val_scores, val_preds, val_labels, val_costs, val_backbone_flops or backbone_flops)

    def run(scores, preds, labels, c, base, t):
        e = exits_per_exit_thresholds(scores, t, exit_when)
        acc = sample_scores(preds[e, torch.arange(len(e))][None], labels)[0].double().mean().item()
        spent = c[e, torch.arange(len(e))] if c.ndim == 2 else c[e]
        return acc, spent.mean().item() / base, torch.bincount(e, minlength=len(c)).tolist()

    lo, hi = math.log(1e-4), math.log(1e4)  # small p: everyone leaves first; large p: everyone goes to the end
    if run(*val, geometric_thresholds(val_scores, 1e-4, exit_when))[1] > budget:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        cost = run(*val, geometric_thresholds(val_scores, math.exp(mid), exit_when))[1]
        lo, hi = (mid, hi) if cost <= budget else (lo, mid)
    p = math.exp(lo)
    t = geometric_thresholds(val_scores, p, exit_when)
    v_acc, v_cost, _ = run(*val, t)
    acc, cost, counts = run(test_scores, test_preds, test_labels, test_costs, backbone_flops, t)
    finite = [x if math.isfinite(x) else None for x in t.tolist()]  # JSON has no infinity
    return {"p": p, "thresholds": finite, "val_accuracy": v_acc, "val_fraction": v_cost, "accuracy": acc,
            "fraction": cost, "exit_counts": counts}
