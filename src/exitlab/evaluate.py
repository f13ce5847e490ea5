"""Evaluate a run: cache every exit's logits per split, sweep exit policies, write ``eval.json``.

``evaluate_run(run_dir, policy, split)`` is the entry point (``exitlab eval`` and the comparison report call it).
Logits come from the run directory's cache (:meth:`exitlab.rundir.RunDir.logits`: ``logits_<split>.safetensors``,
tagged with the model's checksum and the data settings, and recomputed when either changes).
Simulation, budgets and AUC are in :mod:`exitlab.sweep`; per-exit costs in :mod:`exitlab.costs`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .costs import ExitCosts, exit_costs
from .errors import ConfigError
from .files import atomic_write
from .policies import POLICIES, Policy, make_policy
from .rundir import SPLITS, RunDir, compute_logits  # noqa: F401  (compute_logits: re-exported)
from .sweep import BUDGETS, auc, budget_table, ece, exit_accuracy, select, simulate
from .ztw import ztw_for_run

log = logging.getLogger("exitlab")
DEFAULT_POLICIES = ("confidence", "entropy", "patience")  # ztw is added when asked for (it needs a fitting phase)


# ---------------------------------------------------------------- run directory and cached logits


def cached_logits(run_dir: str | Path | RunDir, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's per-exit logits on ``split`` (see :meth:`exitlab.rundir.RunDir.logits`)."""
    return as_run(run_dir).logits(split)


def as_run(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


# ---------------------------------------------------------------- evaluation from logits


def _at_threshold(policy: Policy, logits, labels, costs: ExitCosts, t: float) -> dict:
    scores, preds = policy.scores(logits)
    sw = simulate(scores, preds, labels, costs.flops, [t], policy.exit_when, backbone_flops=costs.backbone_flops)
    return {"accuracy": sw.accuracy[0].item(), "fraction": sw.fraction[0].item(), "flops": sw.cost[0].item(),
            "exit_fractions": sw.exit_fractions[0].tolist()}


def _selection(policy: Policy, val, test, costs: ExitCosts, thresholds, budgets, target_accuracy) -> dict:
    """Thresholds chosen on validation (per budget, and for a target accuracy), reported on the evaluated split."""
    scores, preds = policy.scores(val[0])
    vs = simulate(scores, preds, val[1], costs.flops, thresholds, policy.exit_when, backbone_flops=costs.backbone_flops)
    targets = {f"budget_{round(b * 100)}": dict(budget=b) for b in budgets}
    if target_accuracy is not None:
        targets["accuracy"] = dict(accuracy=target_accuracy)
    out = {}
    for key, target in targets.items():
        i = select(vs, **target)
        if i is None:
            out[key] = None
            continue
        t = vs.thresholds[i].item()
        out[key] = {"threshold": t, "val_accuracy": vs.accuracy[i].item(), "val_fraction": vs.fraction[i].item(),
                    **_at_threshold(policy, test[0], test[1], costs, t)}
    return out


def policy_curve(policy: Policy, logits, labels, costs: ExitCosts, *, thresholds=None, n_thresholds: int = 100,
                 val=None, budgets=BUDGETS, target_accuracy: float | None = None) -> dict:
    """One policy's curve, budget table, AUC and (with ``val`` logits and labels) validation-selected thresholds."""
    E, _, C = logits.shape
    t = (policy.default_thresholds(E, C, n_thresholds) if thresholds is None
         else policy.check_thresholds(thresholds, E, C))
    scores, preds = policy.scores(logits)
    sw = simulate(scores, preds, labels, costs.flops, t, policy.exit_when, backbone_flops=costs.backbone_flops)
    out = {**sw.to_dict(), "exit_when": policy.exit_when,
           "budget_table": budget_table(sw.fraction, sw.accuracy, budgets), "auc": auc(sw.fraction, sw.accuracy)}
    if val is not None:
        out["selected"] = _selection(policy, val, (logits, labels), costs, t, budgets, target_accuracy)
    return out


def exit_table(logits, labels, costs: ExitCosts) -> list[dict]:
    """Per exit: index, block, cumulative FLOPs/MACs/params, fraction of backbone FLOPs, accuracy, ECE."""
    accs, eces = exit_accuracy(logits, labels), ece(logits, labels)
    return [{"exit": c.exit, "block": c.block, "flops": c.flops, "macs": c.macs, "params": c.params,
             "fraction": c.fraction, "accuracy": a, "ece": e} for c, a, e in zip(costs.exits, accs, eces)]


def _resolve_policy(run: RunDir, name: str) -> Policy:
    return ztw_for_run(run) if name == "ztw" else make_policy(name)


def evaluate_run(run_dir: str | Path | RunDir, policy: str = "confidence", split: str = "test", *, thresholds=None,
                 n_thresholds: int = 100, budgets=BUDGETS, target_accuracy: float | None = None,
                 policies=DEFAULT_POLICIES, write: bool = True) -> dict:
    """Evaluate a finished run and (with ``write``) save the result as ``RUN_DIR/eval.json``; returns it.

    Curves are computed for ``policies`` plus ``policy``; ``thresholds`` (checked against the policy's range)
    replace the default ``n_thresholds`` for ``policy`` only. The top-level ``budget_table``, ``auc`` and
    ``selected`` (thresholds fitted on the validation split for each budget, reported on ``split``) are
    ``policy``'s.
    """
    POLICIES.get(policy)  # an unknown name fails before any work
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if n_thresholds < 2:
        raise ConfigError(f"n_thresholds must be >= 2, got {n_thresholds}")
    run = as_run(run_dir).require_model()
    model = run.model()
    if thresholds is not None and policy != "ztw":  # bad thresholds fail before any logits are computed
        make_policy(policy).check_thresholds(thresholds, model.num_exits, model.num_classes)
    costs = exit_costs(model)
    logits, labels = run.logits(split)
    val = run.logits("val") if split != "val" else (logits, labels)
    names = list(dict.fromkeys([*policies, policy]))
    curves = {}
    for name in names:
        pol = _resolve_policy(run, name)
        curves[name] = policy_curve(pol, logits, labels, costs, thresholds=thresholds if name == policy else None,
                                    n_thresholds=n_thresholds, val=val, budgets=budgets,
                                    target_accuracy=target_accuracy)
    exits = exit_table(logits, labels, costs)
    result = {
        "run_dir": str(run.path), "split": split, "samples": len(labels), "policy": policy,
        "model_sha256": run.model_digest(), "costs": costs.to_dict(), "exits": exits,
        "final_accuracy": exits[-1]["accuracy"], "budget_table": curves[policy]["budget_table"],
        "auc": curves[policy]["auc"], "selected": curves[policy]["selected"], "policies": curves,
        "notes": {"budgets": "accuracy at a fraction of the bare backbone's FLOPs, linearly interpolated between "
                             "neighbouring points of the Pareto frontier of the threshold sweep; null = unreachable",
                  "auc": "mean frontier accuracy over budgets uniform in [0, 1] of backbone FLOPs (0 if unreachable)",
                  "selected": "thresholds chosen on the validation split, reported on this split"},
    }
    if write:
        atomic_write(run / RunDir.EVAL, lambda p: p.write_text(json.dumps(result, indent=1)))
    return result


def format_report(result: dict) -> str:
    """The per-exit table and the budget table of an ``evaluate_run`` result, as text (the CLI prints it)."""
    c = result["costs"]
    lines = [f"{result['run_dir']}: {result['split']} split, {result['samples']} samples; backbone "
             f"{c['backbone_flops'] / 1e6:.2f} MFLOPs ({c['backbone_macs'] / 1e6:.2f} MMACs; FLOPs = 2 x MACs)",
             f"{'exit':>4} {'block':>5} {'MFLOPs':>9} {'backbone':>8} {'params':>9} {'acc':>7} {'ECE':>6}"]
    for e in result["exits"]:
        lines.append(f"{e['exit']:>4} {e['block']:>5} {e['flops'] / 1e6:>9.3f} {e['fraction']:>8.1%} "
                     f"{e['params']:>9,d} {e['accuracy']:>7.2%} {e['ece']:>6.3f}")
    bt = result["budget_table"]
    lines.append(f"\npolicy {result['policy']}: accuracy at a share of backbone FLOPs (Pareto-interpolated)")
    lines.append("  ".join(f"{k + '%':>7}" for k in bt) + f"  {'AUC':>7}")
    lines.append("  ".join(f"{v:>7.2%}" if v is not None else f"{'-':>7}" for v in bt.values())
                 + f"  {result['auc']:>7.4f}")
    lines.append("\nthresholds chosen on val, reported on " + result["split"] + ":")
    for key, sel in result["selected"].items():
        if sel is None:
            lines.append(f"  {key:<11} no threshold meets it on val")
        else:
            lines.append(f"  {key:<11} t={sel['threshold']:<8.4g} val acc {sel['val_accuracy']:.2%} at "
                         f"{sel['val_fraction']:.1%} -> acc {sel['accuracy']:.2%} at {sel['fraction']:.1%}")
    return "\n".join(lines)


__all__ = ["as_run", "cached_logits", "compute_logits", "evaluate_run", "exit_table", "format_report",
           "policy_curve"]
