"""Several seeds of one regime: results of one analysis aggregated over runs that share a label (mean, std, n).

``groups`` in an analysis JSON holds, for every label with two or more runs, the element-wise mean and sample
standard deviation (``ddof = 1``) of that analysis's main numbers over the runs (``None`` entries, such as the
frozen parts of a gradient table, are left out; an entry that is ``None`` in every run stays ``None``). The spread
is between runs: seeds of the initial weights, data order and augmentation, and the split when the seed sets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

FIELDS = {
    "gradients": ["share_norm", "share_projection", "norm", "total_norm", "cosine"],
    "rank": ["rank", "rank_covariance", "rank_singular", "effective_rank", "stable_rank", "sigma_max"],
    "mi": ["kde.i_xt_upper", "kde.i_xt_lower", "kde.i_ty", "kde.i_ty_upper", "kde.i_ty_lower", "binning.i_xz",
           "binning.i_zy", "probe.i_zy_lower", "exits.i_yhat_y", "exits.h_yhat", "exits.accuracy"],
    "landscape": ["loss", "accuracy", "objective"],
}


def get_field(run: dict, path: str):
    """``run["a"]["b"]`` for ``path = "a.b"``; None when absent."""
    node = run
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the non-None numbers (std None with fewer than two)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _elementwise(values: list, pick: Callable[[tuple], float | None]):
    """Reduce same-shaped nested lists (or scalars) element by element."""
    if all(isinstance(v, list) for v in values if v is not None) and any(isinstance(v, list) for v in values):
        present = [v for v in values if v is not None]
        return [_elementwise([v[i] for v in present], pick) for i in range(min(len(v) for v in present))]
    return pick(mean_std(values))


def scalar_stats(values: list) -> dict:
    """``{"mean", "std", "n", "values"}`` of a list of numbers (None entries not counted)."""
    m, s = mean_std(values)
    return {"mean": m, "std": s, "n": sum(v is not None for v in values), "values": values}


def aggregate(kind: str, runs: list[dict], labels: list[str], seeds: list[int | None]) -> list[dict]:
    """Groups of runs sharing a label (two or more runs), with the mean and std of the kind's fields."""
    order = list(dict.fromkeys(labels))
    groups = []
    for label in order:
        idx = [i for i, lab in enumerate(labels) if lab == label]
        if len(idx) < 2:
            continue
        mean, std = {}, {}
        for f in FIELDS.get(kind, []):
            vals = [get_field(runs[i], f) for i in idx]
            if all(v is None for v in vals):
                continue
            mean[f] = _elementwise(vals, lambda ms: ms[0])
            std[f] = _elementwise(vals, lambda ms: ms[1])
        groups.append({"label": label, "runs": idx, "seeds": [seeds[i] for i in idx], "n": len(idx), "mean": mean,
                       "std": std})
    return groups
