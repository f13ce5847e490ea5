"""``exitlab compare``: train the grid, evaluate every run, aggregate over seeds, write tables and plots."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from ...errors import ExitlabError
from ...evaluation.evaluate import evaluate_run
from ...runs.files import atomic_write, check_out_dir, read_jsonl, read_status
from ...runs.rundir import environment, signature
from ...runs.typed import from_dict
from ..grid import Job, plan_grid, run_grid
from ..procs import worker_pool
from .analyses import run_analyses
from .config import CompareConfig, upgrade_compare
from .layout import rows, run_dir
from .plots import write_plots
from .tables import FAILURE_METRICS, write_tables


def plan(cc: CompareConfig, out: Path) -> list[Job]:
    """Every training job of the comparison; variants get their own phase-1 runs (their settings may differ)."""
    jobs: list[Job] = []
    for variant in cc.variant_overrides():
        cfg = dataclasses.replace(cc.run_config(variant), threads=cc.threads, progress=False)
        overrides = {label: cc.overrides_for(label) for label in cc.regime_overrides}
        jobs += plan_grid(cfg, cc.regimes, cc.seeds, out, variant, overrides)
    return jobs


def check_out(cc: CompareConfig, out: Path) -> None:
    """Refuse an output directory that holds a comparison with a different config; never mix runs."""
    check_out_dir(out)
    saved = out / "compare.yaml"
    if saved.exists():
        try:
            old = yaml.safe_load(saved.read_text())
            old_sig = signature(from_dict(CompareConfig, upgrade_compare(old)).signature_dict())
        except (yaml.YAMLError, ExitlabError, TypeError):
            old_sig = None
        if old_sig != signature(cc.signature_dict()):
            raise ExitlabError(f"{out} holds a comparison with a different config ({saved}); use another --out, or "
                               "rerun with that config to resume it")
    elif out.exists() and any(p.name.startswith("seed") for p in out.iterdir()):
        raise ExitlabError(f"{out} holds runs but no compare.yaml; choose an empty or new --out")


def run_compare(cc: CompareConfig, out: Path, on_event: Callable[[str], None] = lambda s: None) -> dict:
    """Train (resuming and reusing finished runs), evaluate, aggregate; returns the summary written to summary.json."""
    check_out(cc, out)
    jobs = plan(cc, out)  # every grid cell is validated before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "compare.yaml").exists():  # an existing one has this config's signature (check_out)
        atomic_write(out / "compare.yaml",
                     lambda p: p.write_text(yaml.safe_dump(dataclasses.asdict(cc), sort_keys=False)))
    on_event(f"{len(jobs)} training jobs ({len(cc.regimes)} regimes x {len(cc.seeds)} seeds"
             f"{f' x {len(cc.variants)} variants' if cc.variants else ''}, phase 1 shared per seed)")
    t0 = time.perf_counter()
    train_seconds = run_grid(jobs, workers=cc.workers, threads=cc.threads, on_event=on_event)
    on_event("evaluating every run")
    dirs = [run_dir(out, s, r, v) for s in cc.seeds for _, r, v in rows(cc)]
    evals = evaluate_all(dirs, cc.policy, cc.workers, cc.threads)
    summary = aggregate(cc, out, evals)
    summary["timing"] = {"train_seconds": train_seconds, "total_seconds": time.perf_counter() - t0,
                         "per_run_seconds": {str(d.relative_to(out)): _seconds(d) for d in dirs}}
    summary["environment"] = environment()
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
    write_tables(summary, out / "tables")
    write_plots(summary, out / "plots")
    if cc.analyses:
        run_analyses(cc, out, on_event)
    return summary


def _seconds(d: Path) -> float | None:
    return read_status(d).get("seconds")


def _eval(run: str, policy: str | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    return evaluate_run(run, policy=policy, split="test")


def evaluate_all(dirs: list[Path], policy: str | None, workers: int, threads: int) -> dict[Path, dict]:
    """``evaluate_run`` on every run, in parallel processes (cached logits make a rerun cheap)."""
    with worker_pool(workers) as pool:
        futures = {d: pool.submit(_eval, str(d), policy, threads) for d in dirs}
        return {d: f.result() for d, f in futures.items()}


def _curve(ev: dict, policy: str) -> dict:
    c = ev["policies"][policy]
    return {"fraction": c["fraction"], "accuracy": c["accuracy"]}


def recorded_budget(table: list[dict]) -> dict:
    """Which budget the runs were matched on, from what each run recorded (never from the config's intent).

    ``matched`` is the kind every run recorded ("flops", "epochs" or "none") when all runs recorded the same kind and
    value; otherwise "differs", with each row's budgets in ``rows``. ``flops_spread``: the largest relative difference
    of the measured training FLOPs between runs (compute-matched runs agree within one step)."""
    per_row = {r["row"]: sorted({(c.get("budget", {}).get("matched", "unknown"), c.get("budget", {}).get("value"))
                                 for c in r["compute"]}, key=str) for r in table}
    kinds = {kv for budgets in per_row.values() for kv in budgets}
    flops = [f for r in table for f in r["train_flops"] if f]
    spread = (max(flops) - min(flops)) / max(flops) if flops else None
    if len(kinds) == 1:
        kind, value = next(iter(kinds))
        return {"matched": kind, "value": value, "flops_spread": spread}
    return {"matched": "differs", "rows": {k: [list(kv) for kv in v] for k, v in per_row.items()},
            "flops_spread": spread}


def aggregate(cc: CompareConfig, out: Path, evals: dict[Path, dict]) -> dict:
    """Per row: the per-seed values of every reported number (tables take mean and std from these)."""
    key = f"budget_{round(cc.distribution_budget * 100)}"
    table = []
    for label, regime, variant in rows(cc):
        seeds = [evals[run_dir(out, s, regime, variant)] for s in cc.seeds]
        compute = [read_status(run_dir(out, s, regime, variant)).get("compute", {}) for s in cc.seeds]
        table.append({
            "row": label, "regime": regime, "variant": variant, "seeds": cc.seeds,
            "budget": {b: [e["budget_table"][b] for e in seeds] for b in seeds[0]["budget_table"]},
            "final": [e["final_accuracy"] for e in seeds],
            "auc": [e["auc"] for e in seeds],
            "test_frontier": {"budget": {b: [e["test_frontier"]["budget_table"][b] for e in seeds]
                                         for b in seeds[0]["budget_table"]},
                              "auc": [e["test_frontier"]["auc"] for e in seeds]},
            "train_flops": [c.get("train_flops") for c in compute],
            "train_seconds": [c.get("seconds") for c in compute],
            "compute": compute,
            "exit_accuracy": [[x["accuracy"] for x in e["exits"]] for e in seeds],
            "exit_fraction_flops": [x["fraction"] for x in seeds[0]["exits"]],
            **{f"exit_{m}": [[x.get(m) for x in e["exits"]] for e in seeds] for m in FAILURE_METRICS},
            **({"overthinking": [e["extras"]["overthinking"]["per_exit"] for e in seeds],
                "improvability": [e["extras"]["improvability"] for e in seeds]}
               if "overthinking" in seeds[0].get("extras", {}) else {}),  # classification only
            "curves": [_curve(e, e["policy"]) for e in seeds],
            "distribution": [(e["policies"][e["policy"]]["selected"] or {}).get(key) for e in seeds],
            "training": [read_jsonl(run_dir(out, s, regime, variant) / "metrics.jsonl") for s in cc.seeds],
            "phase1_from": [read_status(run_dir(out, s, regime, variant)).get("phase1_from") for s in cc.seeds],
        })
    matched = recorded_budget(table)
    policy = next(iter(evals.values()))["policy"]  # cc.policy, or the task's default
    return {"config": dataclasses.asdict(cc), "policy": policy, "distribution_budget": cc.distribution_budget,
            "rows": table, "samples": next(iter(evals.values()))["samples"], "budget_matched": matched,
            "task": next(iter(evals.values())).get("task", "classification")}
