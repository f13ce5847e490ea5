"""Evaluation extras from cached per-exit logits: overthinking, hindsight improvability, top-5 accuracy, per-class
exit statistics.

- **Overthinking** (Kaya et al., ICML 2019, "Shallow-Deep Networks"): a sample is overthought when an internal
  classifier gets it right and the final exit gets it wrong. Per IC ``k``: the share of samples right at ``k`` and
  wrong at the final exit; ``any``: the share right at some IC and wrong at the final exit.
- **Hindsight improvability** (Wołczyk et al., NeurIPS 2021, "Zero Time Waste"): per exit ``k``, among the samples
  exit ``k`` gets wrong, the share that some earlier exit got right; 0 at exit 0. This is the ``improvability``
  function of ZTW's analysis notebook (gmum/Zero-Time-Waste, ztw_cv_original/notebooks/plots_and_analysis.ipynb),
  on each head's own logits; None where exit ``k`` gets nothing wrong (the notebook would give NaN).
- **Top-5 accuracy** per exit, where there are at least 10 classes.
- **Per-class exit statistics** at one operating point of a policy (a threshold chosen on validation for a FLOPs
  budget): per class, the share of its samples leaving at each exit and the accuracy of the predictions made there.
"""

from __future__ import annotations

import torch

from .policies import Policy
from .sweep import exit_indices, score_thresholds, select, simulate

TOPK_MIN_CLASSES = 10
MAX_PRINTED_CLASSES = 20  # the report prints this many classes; eval.json has them all


def overthinking(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """SDN's overthinking from logits ``[E, N, C]``: ``per_exit`` (one value per internal classifier, the final
    exit excluded) and ``any``."""
    right = logits.argmax(-1) == labels[None]  # [E, N]
    wrong_final = ~right[-1]
    per_exit = (right[:-1] & wrong_final[None]).double().mean(1)  # [E-1]
    any_ic = (right[:-1].any(0) & wrong_final).double().mean() if len(right) > 1 else torch.tensor(0.0)
    return {"per_exit": per_exit.tolist(), "any": any_ic.item()}


def hindsight_improvability(logits: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    """ZTW's hindsight improvability of every exit from logits ``[E, N, C]`` (see the module docstring)."""
    right = logits.argmax(-1) == labels[None]  # [E, N]
    earlier = torch.cat([torch.zeros_like(right[:1]), right.cummax(0).values[:-1]])  # [E, N]: right at some j < k
    out: list[float | None] = [0.0]
    for k in range(1, len(right)):
        wrong = ~right[k]
        out.append(earlier[k][wrong].double().mean().item() if bool(wrong.any()) else None)
    return out


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> list[float] | None:
    """Top-``k`` accuracy of every exit from logits ``[E, N, C]``; None with fewer than 10 classes."""
    if logits.shape[-1] < max(TOPK_MIN_CLASSES, k):
        return None
    top = logits.topk(k, dim=-1).indices  # [E, N, k]
    return (top == labels[None, :, None]).any(-1).double().mean(1).tolist()


def per_class_exits(exits: torch.Tensor, correct: torch.Tensor, labels: torch.Tensor, num_exits: int,
                    num_classes: int, classes: list[str] | None = None) -> list[dict]:
    """Per class: its samples, the share leaving at each exit and the accuracy, from the exit each sample took
    ``[N]`` and whether its prediction there was right ``[N]``. Classes without samples get None shares."""
    counts = torch.zeros(num_classes, num_exits, dtype=torch.float64)
    counts.index_put_((labels, exits), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    hits = torch.bincount(labels, correct.double(), minlength=num_classes)
    n = counts.sum(1)
    out = []
    for c in range(num_classes):
        name = classes[c] if classes and c < len(classes) else str(c)
        m = int(n[c])
        out.append({"class": c, "name": name, "samples": m,
                    "exit_fractions": (counts[c] / m).tolist() if m else None,
                    "accuracy": hits[c].item() / m if m else None})
    return out


def operating_point(policy: Policy, val: tuple, costs, budget: float) -> float | None:
    """The threshold chosen on validation for ``budget`` (the most accurate within it): None when none is.
    ``costs``: the validation split's :class:`exitlab.costs.ExitCosts`."""
    scores, preds = policy.scores(val[0])
    t = score_thresholds(scores, policy.exit_when)
    table = getattr(costs, "table", None)  # [E, N] per sample (text) where the costs have one
    sw = simulate(scores, preds, val[1], costs.flops if table is None else table, t, policy.exit_when,
                  backbone_flops=costs.backbone_flops)
    i = select(sw, budget=budget)
    return None if i is None else sw.thresholds[i].item()


def exit_extras(policy: Policy, logits: torch.Tensor, labels: torch.Tensor, val: tuple, costs, *,
                budget: float = 0.5, classes: list[str] | None = None, threshold=...) -> dict:
    """Overthinking, hindsight improvability and top-5 accuracy per exit on ``logits``/``labels``, and the
    per-class exit statistics of ``policy`` at the threshold chosen on ``val`` for ``budget`` (a fraction of the
    backbone's FLOPs; without one, everyone leaves at the final exit). ``costs``: the validation split's
    :class:`exitlab.costs.ExitCosts`. A ``threshold`` given (None: the final exit) replaces that choice."""
    E, N, C = logits.shape
    t = operating_point(policy, val, costs, budget) if threshold is ... else threshold
    scores, preds = policy.scores(logits)
    if t is None:
        exits = torch.full((N,), E - 1, dtype=torch.long)
    else:
        exits = exit_indices(scores, torch.tensor([t], dtype=torch.float64), policy.exit_when)[0]
    correct = preds[exits, torch.arange(N)] == labels
    return {
        "overthinking": overthinking(logits, labels), "improvability": hindsight_improvability(logits, labels),
        "top5": topk_accuracy(logits, labels, 5),
        "per_class": {"policy": policy.name, "budget": budget, "threshold": t,
                      "classes": per_class_exits(exits, correct, labels, E, C, classes)},
    }


def format_extras(extras: dict) -> list[str]:
    """The extras' lines of the eval report."""
    ot, hi, top5 = extras["overthinking"], extras["improvability"], extras["top5"]
    fmt = lambda v: f"{v:>7.2%}" if v is not None else f"{'-':>7}"  # noqa: E731
    E = len(hi)
    lines = ["\nper exit: " + " ".join(f"{k:>7}" for k in range(E)),
             "overthink " + " ".join(fmt(v) for v in ot["per_exit"]) + f" {'':>7}  (any IC: {ot['any']:.2%})",
             "improvab. " + " ".join(fmt(v) for v in hi)]
    if top5 is not None:
        lines.append("top-5 acc " + " ".join(fmt(v) for v in top5))
    pc = extras["per_class"]
    at = "no threshold meets it: final exit" if pc["threshold"] is None else f"t={pc['threshold']:.4g}"
    lines.append(f"per class ({pc['policy']} at {pc['budget']:.0%} of backbone FLOPs on val, {at}): "
                 "share leaving at each exit, accuracy")
    shown = [c for c in pc["classes"] if c["samples"]]
    for c in shown[:MAX_PRINTED_CLASSES]:
        lines.append(f"  {c['name'][:12]:<12} " + " ".join(f"{v:>6.1%}" for v in c["exit_fractions"]) +
                     f"  acc {c['accuracy']:.2%} (n={c['samples']})")
    if len(shown) > MAX_PRINTED_CLASSES:
        lines.append(f"  ... {len(shown) - MAX_PRINTED_CLASSES} more classes in eval.json (extras.per_class)")
    return lines


__all__ = ["exit_extras", "format_extras", "hindsight_improvability", "operating_point", "overthinking",
           "per_class_exits", "topk_accuracy"]
