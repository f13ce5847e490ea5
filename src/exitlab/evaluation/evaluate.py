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

from ..errors import ConfigError
from ..models import HFSpec
from ..models.costs import ExitCosts, exit_costs, length_table, text_costs
from ..runs.files import atomic_write
from ..runs.rundir import SPLITS, RunDir
from .extras import ExtraOptions, add_extras, format_extras_report
from .failure import confidence_failure, failure_metrics
from .policies import POLICIES, Policy, make_policy
from .sweep import (
    BUDGETS,
    MAX_THRESHOLDS,
    Sweep,
    auc,
    budget_table,
    budgeted_batch,
    chosen_at,
    chosen_auc,
    chosen_budget_table,
    ece,
    exit_accuracy,
    score_thresholds,
    select,
    simulate,
)
from .ztw import ztw_for_run

log = logging.getLogger("exitlab")
DEFAULT_POLICIES = ("confidence", "entropy", "patience")
NOTES = {
    "budget_table": "accuracy on this split at a mean cost of 25/50/75/100% of the bare backbone's FLOPs, the "
                    "operating point chosen on the validation split (between two frontier thresholds a share of "
                    "samples takes the costlier one, so the validation cost meets the budget); null = validation "
                    "cannot reach the budget",
    "auc": "mean of that accuracy over budgets uniform in [0, 1] of backbone FLOPs (0 where unreachable)",
    "selected": "one threshold per budget chosen on validation (the most accurate within it), reported here",
    "budgeted": "MSDNet's budgeted batch protocol: per-exit thresholds fitted on validation with a geometric exit "
                "profile to meet the budget, reported here",
    "test_frontier": "the Pareto frontier of this split's own sweep: thresholds chosen on the split they are reported "
                     "on, so optimistic",
    "thresholds": "every distinct running-maximum score (at most 4096 quantiles of them), not an even grid",
    "failure": "per exit, how well the score tells right from wrong answers on this split: auroc = P(right scores "
               "higher than wrong) with ties as half (null when the exit is all right or all wrong); aurc = mean "
               "error rate among the k most confident over k = 1..N, ties by expectation (lower is better)",
}  # ztw is added when asked for (it needs a fitting phase)


# ---------------------------------------------------------------- run directory and cached logits


def cached_logits(run_dir: str | Path | RunDir, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's per-exit logits on ``split`` (see :meth:`exitlab.rundir.RunDir.logits`)."""
    return as_run(run_dir).logits(split)


def as_run(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


# ---------------------------------------------------------------- evaluation from logits


def _selection(vs: Sweep, ts: Sweep, budgets, target_accuracy) -> dict:
    """One threshold chosen on validation per budget (the most accurate within it) and for a target accuracy (the
    cheapest reaching it), reported on the evaluated split: what a deployment with a single threshold gets."""
    targets = {f"budget_{round(b * 100)}": dict(budget=b) for b in budgets}
    if target_accuracy is not None:
        targets["accuracy"] = dict(accuracy=target_accuracy)
    out = {}
    for key, target in targets.items():
        i = select(vs, **target)
        out[key] = None if i is None else {
            "threshold": vs.thresholds[i].item(), "val_accuracy": vs.accuracy[i].item(),
            "val_fraction": vs.fraction[i].item(), "accuracy": ts.accuracy[i].item(),
            "fraction": ts.fraction[i].item(), "flops": ts.cost[i].item(),
            "exit_fractions": ts.exit_fractions[i].tolist()}
    return out


def policy_curve(policy: Policy, logits, labels, costs: ExitCosts, *, thresholds=None,
                 n_thresholds: int = MAX_THRESHOLDS, val=None, budgets=BUDGETS, target_accuracy: float | None = None,
                 val_costs: ExitCosts | None = None) -> dict:
    """One policy on the evaluated split: its curve, and with ``val`` logits and labels the headline budget table
    and AUC with every operating point chosen on validation and reported here; the frontier of this split's own
    sweep is kept under ``test_frontier`` (optimistic: it picks thresholds on the split it reports on).

    Thresholds come from the scores (:func:`exitlab.sweep.score_thresholds`, at most ``n_thresholds``), unless
    ``thresholds`` are given. ``val_costs``: the validation samples' own costs when they differ per sample (text)."""
    vc = val_costs or costs
    E, _, C = logits.shape
    given = None if thresholds is None else policy.check_thresholds(thresholds, E, C)
    scores, preds = policy.scores(logits)
    t = given if given is not None else score_thresholds(scores, policy.exit_when, n_thresholds)
    sw = simulate(scores, preds, labels, costs.table, t, policy.exit_when, backbone_flops=costs.backbone_flops)
    area = auc if policy.task == "classification" else (lambda *_: None)  # no area under minus an MSE
    frontier = {"budget_table": budget_table(sw.fraction, sw.accuracy, budgets), "auc": area(sw.fraction, sw.accuracy),
                "note": "thresholds chosen on this split itself: an optimistic upper bound"}
    out = {**sw.to_dict(), "exit_when": policy.exit_when, "test_frontier": frontier, "chosen_on": "test",
           "budget_table": frontier["budget_table"], "auc": frontier["auc"]}
    if policy.task == "classification":
        out["failure"] = failure_metrics(scores, preds, labels, policy.exit_when)
    if val is None:
        return out
    v_scores, v_preds = policy.scores(val[0])
    tv = given if given is not None else score_thresholds(v_scores, policy.exit_when, n_thresholds)
    vs = simulate(v_scores, v_preds, val[1], vc.table, tv, policy.exit_when, backbone_flops=vc.backbone_flops)
    ts = simulate(scores, preds, labels, costs.table, tv, policy.exit_when, backbone_flops=costs.backbone_flops)
    out.update(chosen_on="val", budget_table=chosen_budget_table(vs, ts, budgets),
               auc=chosen_auc(vs, ts) if policy.task == "classification" else None,
               chosen={f"budget_{round(b * 100)}": chosen_at(vs, ts, b) for b in budgets},
               selected=_selection(vs, ts, budgets, target_accuracy))
    if not policy.integer:
        out["budgeted"] = {f"budget_{round(b * 100)}": budgeted_batch(
            v_scores, v_preds, val[1], scores, preds, labels, costs.table, b, backbone_flops=costs.backbone_flops,
            exit_when=policy.exit_when, val_costs=vc.table, val_backbone_flops=vc.backbone_flops) for b in budgets}
    return out


def exit_table(logits, labels, costs: ExitCosts) -> list[dict]:
    """Per exit: index, block, cumulative FLOPs/MACs/params, fraction of backbone FLOPs, accuracy, ECE, and the
    failure-prediction AUROC and AURC of the max softmax (:mod:`exitlab.evaluation.failure`; regression: minus the
    mean squared error as the accuracy, and None for the rest)."""
    regression = labels.is_floating_point()
    accs = exit_accuracy(logits, labels)
    eces = [None] * len(accs) if regression else ece(logits, labels)
    fails = [{"auroc": None, "aurc": None}] * len(accs) if regression else confidence_failure(logits, labels)
    return [{"exit": c.exit, "block": c.block, "flops": c.flops, "macs": c.macs, "params": c.params,
             "fraction": c.fraction, "accuracy": a, "ece": e, **f}
            for c, a, e, f in zip(costs.exits, accs, eces, fails)]


def split_costs(run: RunDir, model, split: str) -> tuple[ExitCosts, ExitCosts]:
    """The costs the evaluated split and the validation split are charged: the model's per-exit costs on one sample,
    or for a text encoder every sample's own cost at its token length (one measurement per length for both)."""
    if not isinstance(model.spec, HFSpec):
        costs = exit_costs(model)
        return costs, costs
    n, nv = run.lengths(split), run.lengths("val")
    table = length_table(model, torch.cat([n, nv]).unique().tolist())
    return text_costs(model, n, table), text_costs(model, nv, table)


def _resolve_policy(run: RunDir, name: str) -> Policy:
    return ztw_for_run(run) if name == "ztw" else make_policy(name)


def evaluate_run(run_dir: str | Path | RunDir, policy: str | None = None, split: str = "test", *, thresholds=None,
                 n_thresholds: int = MAX_THRESHOLDS, budgets=BUDGETS, target_accuracy: float | None = None,
                 policies=DEFAULT_POLICIES, write: bool = True, extras: ExtraOptions | None = None) -> dict:
    """Evaluate a finished run and (with ``write``) save the result as ``RUN_DIR/eval.json``; returns it.

    Curves are computed for ``policies`` plus ``policy``; ``thresholds`` (checked against the policy's range)
    replace the score-derived ones for ``policy`` only. The top-level ``budget_table`` and ``auc`` (operating points
    chosen on the validation split, reported on ``split``), ``selected`` (one threshold per budget, chosen on
    validation) and ``test_frontier`` (chosen on ``split`` itself: optimistic) are ``policy``'s (default:
    confidence, or regression_patience for a regression model). ``extras`` adds risk-controlled thresholds and OOD
    detection (:mod:`exitlab.evalextras`); the per-exit extras always come (classification only).

    A regression run (one output per exit, e.g. STS-B) is evaluated the same way with minus the mean squared error
    in place of accuracy (higher is better, so budgets and selection read the same), its own policies only, no AUC
    and no ECE.
    """
    if policy is not None:
        POLICIES.get(policy)  # an unknown name fails before any work
    extras = extras or ExtraOptions()
    extras.check()
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if n_thresholds < 2:
        raise ConfigError(f"n_thresholds must be >= 2, got {n_thresholds}")
    run = as_run(run_dir).require_model()
    model = run.model()
    task = model.task
    policy = policy or ("regression_patience" if task == "regression" else "confidence")
    if POLICIES.get(policy).task != task:
        raise ConfigError(f"policy {policy!r} is a {POLICIES.get(policy).task} policy but {run.path} is a {task} run; "
                          f"use {'regression_patience' if task == 'regression' else 'confidence, entropy or patience'}")
    policies = [p for p in policies if POLICIES.get(p).task == task]  # the defaults are classification policies
    if thresholds is not None and policy != "ztw":  # bad thresholds fail before any logits are computed
        make_policy(policy).check_thresholds(thresholds, model.num_exits, model.num_classes)
    logits, labels = run.logits(split)
    val = run.logits("val") if split != "val" else (logits, labels)
    costs, val_costs = split_costs(run, model, split)
    names = list(dict.fromkeys([*policies, policy]))
    curves, pols = {}, {}
    for name in names:
        pol = pols[name] = _resolve_policy(run, name)
        curves[name] = policy_curve(pol, logits, labels, costs, thresholds=thresholds if name == policy else None,
                                    n_thresholds=n_thresholds, val=val, budgets=budgets,
                                    target_accuracy=target_accuracy, val_costs=val_costs)
    exits = exit_table(logits, labels, costs)
    result = {
        "run_dir": str(run.path), "split": split, "samples": len(labels), "policy": policy, "task": task,
        "model_sha256": run.model_digest(), "costs": costs.to_dict(), "exits": exits,
        "final_accuracy": exits[-1]["accuracy"], "budget_table": curves[policy]["budget_table"],
        "auc": curves[policy]["auc"], "chosen_on": curves[policy]["chosen_on"],
        "selected": curves[policy].get("selected"), "budgeted": curves[policy].get("budgeted"),
        "test_frontier": curves[policy]["test_frontier"], "policies": curves, "notes": NOTES,
    }
    add_extras(result, run, pols, policy, logits, labels, val, costs, extras, val_costs=val_costs)
    if write:
        atomic_write(run / RunDir.EVAL, lambda p: p.write_text(json.dumps(result, indent=1)))
    return result


def format_report(result: dict) -> str:
    """The per-exit table and the budget table of an ``evaluate_run`` result, as text (the CLI prints it)."""
    c = result["costs"]
    reg = result.get("task") == "regression"
    score = (lambda v: f"{-v:>8.4f}") if reg else (lambda v: f"{v:>7.2%}")  # regression: the MSE itself
    lines = [f"{result['run_dir']}: {result['split']} split, {result['samples']} samples; backbone "
             f"{c['backbone_flops'] / 1e6:.2f} MFLOPs ({c['backbone_macs'] / 1e6:.2f} MMACs; FLOPs = 2 x MACs)"
             + ("; text: the mean over the texts, each at its own length" if "per_sample" in c else ""),
             f"{'exit':>4} {'block':>5} {'MFLOPs':>9} {'backbone':>8} {'params':>9} "
             + (f"{'MSE':>8}" if reg else f"{'acc':>7} {'ECE':>6} {'AUROC':>6} {'AURC':>6}")]
    for e in result["exits"]:
        lines.append(f"{e['exit']:>4} {e['block']:>5} {e['flops'] / 1e6:>9.3f} {e['fraction']:>8.1%} "
                     f"{e['params']:>9,d} {score(e['accuracy'])}"
                     + ("" if reg else f" {e['ece']:>6.3f} {_num(e.get('auroc'))} {_num(e.get('aurc'))}"))
    if not reg:
        lines.append("  (ECE: calibration error of the max softmax; AUROC/AURC: how well it tells right from wrong "
                     "answers, higher/lower is better, n/a = the exit is all right or all wrong)")
    lines += _failure_lines(result)
    lines += _budget_lines(result, score)
    what = "MSE" if reg else "acc"
    if result.get("selected"):
        lines.append("\none threshold chosen on val, reported on " + result["split"] + ":")
        for key, sel in result["selected"].items():
            if sel is None:
                lines.append(f"  {key:<11} no threshold meets it on val")
            else:
                lines.append(f"  {key:<11} t={sel['threshold']:<8.4g} val {what} {score(sel['val_accuracy']).strip()} "
                             f"at {sel['val_fraction']:.1%} -> {what} {score(sel['accuracy']).strip()} at "
                             f"{sel['fraction']:.1%}")
    if result.get("budgeted"):
        lines.append("\nbudgeted batch (MSDNet protocol: per-exit thresholds fitted on val, geometric exit profile):")
        for key, bb in result["budgeted"].items():
            lines.append(f"  {key:<11} " + ("val cannot meet it" if bb is None else
                         f"acc {bb['accuracy']:.2%} at {bb['fraction']:.1%} (val {bb['val_fraction']:.1%})"))
    lines += format_extras_report(result)
    return "\n".join(lines)


def _num(v: float | None, width: int = 6) -> str:
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}.3f}"


def _failure_lines(result: dict) -> list[str]:
    """Per policy, the AUROC / AURC of its own score at every exit (what its threshold ranks samples by)."""
    rows = {name: c["failure"] for name, c in result["policies"].items() if c.get("failure")}
    if not rows:
        return []
    lines = [f"\nfailure prediction by each policy's score on {result['split']}, per exit (AUROC / AURC):"]
    for name, per_exit in rows.items():
        lines.append(f"  {name:<11} " + "  ".join(f"{_num(f['auroc'], 0)}/{_num(f['aurc'], 0)}" for f in per_exit))
    return lines


def _budget_lines(result: dict, score) -> list[str]:
    """The headline budget table (chosen on val) and the optimistic test frontier under it."""
    width = len(score(0.0))

    def row(table: dict, value) -> str:
        cells = "  ".join(score(v) if v is not None else f"{'-':>{width}}" for v in table.values())
        return cells + (f"  {value:>7.4f}" if value is not None else "")

    bt, tf = result["budget_table"], result["test_frontier"]
    what = "MSE" if result.get("task") == "regression" else "accuracy"
    return [f"\npolicy {result['policy']}: {what} on {result['split']} at a share of backbone FLOPs, operating "
            f"points chosen on {result['chosen_on']}",
            "  ".join(f"{k + '%':>{width}}" for k in bt) + (f"  {'AUC':>7}" if result["auc"] is not None else ""),
            row(bt, result["auc"]), f"  (optimistic: chosen on {result['split']} itself)",
            row(tf["budget_table"], tf["auc"])]


__all__ = ["as_run", "cached_logits", "evaluate_run", "exit_table", "format_report", "policy_curve"]
