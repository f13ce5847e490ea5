"""Comparison tables (mean ± std over seeds) as Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ...analysis.seeds import mean_std

BUDGET_COLS = ("25", "50", "75", "100")


@dataclass
class Values:
    """One table cell: the per-seed values of a number, shown as mean ± std after multiplying by ``scale``."""

    values: list
    scale: float = 1.0
    digits: int = 2


def _as_values(v) -> Values:
    return v if isinstance(v, Values) else Values(v, 100.0)  # a plain list is an accuracy: shown in percent


def scaled_mean_std(values: list, scale: float = 100.0) -> tuple[float, float] | None:
    """Mean and sample std over seeds (0 for one seed), times ``scale`` (percent by default); None when any seed has
    no value (it could not reach the budget)."""
    if not values or any(v is None for v in values):
        return None
    m, s = mean_std(values)
    return scale * m, scale * (s or 0.0)


def cell_text(v, latex: bool = False) -> str:
    v = _as_values(v)
    ms = scaled_mean_std(v.values, v.scale)
    if ms is None:
        return "--" if latex else "n/a"
    pm = " $\\pm$ " if latex else " ± "
    return f"{ms[0]:.{v.digits}f}{pm}{ms[1]:.{v.digits}f}"


def regression(summary: dict) -> bool:
    """A comparison of regression runs: its scores are minus the MSE, shown as the MSE itself."""
    return summary.get("task") == "regression"


def metric(summary: dict) -> str:
    return "MSE" if regression(summary) else "acc"


def score(values: list, summary: dict) -> Values:
    """Per-seed scores as a cell: accuracy in percent, or for regression the MSE (4 decimals)."""
    if regression(summary):
        return Values([None if v is None else -v for v in values], 1.0, 4)
    return Values(values, 100.0)


def paper_table(summary: dict) -> tuple[list[str], list[list]]:
    """Rows = regime (and variant); columns = accuracy (regression: MSE) at 25/50/75/100% of backbone FLOPs
    (operating points chosen on validation), final exit, AUC (classification), and the measured training compute
    (TFLOPs) and time (minutes) per run."""
    m = metric(summary)
    header = ["regime"] + [f"{m}@{b}%" for b in BUDGET_COLS] + ["final exit", "AUC", "train TFLOPs", "train min"]
    body = [[r["row"], *[score(r["budget"].get(b, [None]), summary) for b in BUDGET_COLS], score(r["final"], summary),
             Values(r["auc"], 100.0), Values(r.get("train_flops", [None]), 1e-12, 1),
             Values(r.get("train_seconds", [None]), 1 / 60, 1)]
            for r in summary["rows"]]
    return header, body


def caption(summary: dict) -> str:
    """What every table shows: the seeds behind each mean, how budgets were chosen, which budget was matched."""
    n = len(summary["config"]["seeds"])
    score = "Test MSE (regression; no AUC)" if regression(summary) else "Accuracy"
    return (f"Mean ± sample std over n = {n} seed{'s' if n != 1 else ''}. {score} at a budget: the operating point "
            f"chosen on the validation split, reported on test. {budget_line(summary.get('budget_matched'))}")


def budget_line(fact) -> str:
    """The budget sentence, from the budgets the runs recorded (see ``compare.run.recorded_budget``)."""
    if isinstance(fact, str):  # summaries written before the budgets were read from the runs
        fact = {"matched": fact}
    fact = fact or {"matched": "unknown"}
    kind = fact["matched"]
    if kind == "differs":
        cells = "; ".join(f"{row}: " + ", ".join(f"{k} {v}" if v is not None else k for k, v in budgets)
                          for row, budgets in fact.get("rows", {}).items())
        return f"Budget NOT matched: the runs recorded different budgets ({cells})."
    what = {"flops": "training FLOPs (compute-matched)", "epochs": "epochs (not compute: phase 3 steps are cheaper)",
            "none": "nothing (each phase ran its own epochs or early stopping)"}.get(kind, kind)
    spread = fact.get("flops_spread")
    measured = f"; measured training FLOPs differ by up to {100 * spread:.1f}%" if spread is not None else ""
    return f"Budget matched across regimes, as every run recorded: {what}{measured}."


def exit_table(summary: dict) -> tuple[list[str], list[list]]:
    """Per-exit test accuracy (regression: MSE) for each regime."""
    n = len(summary["rows"][0]["exit_accuracy"][0])
    fr = summary["rows"][0]["exit_fraction_flops"]
    header = ["regime"] + [f"exit {k} ({100 * fr[k]:.0f}% FLOPs)" if k < n - 1 else f"final ({100 * fr[k]:.0f}%)"
                           for k in range(n)]
    body = [[r["row"], *[score([seed[k] for seed in r["exit_accuracy"]], summary) for k in range(n)]]
            for r in summary["rows"]]
    return header, body


def overthinking_table(summary: dict) -> tuple[list[str], list[list]]:
    """Per IC, SDN's overthinking (right there, wrong at the final exit) for each regime; test split."""
    fr = summary["rows"][0]["exit_fraction_flops"]
    header = ["regime"] + [f"exit {k} ({100 * fr[k]:.0f}% FLOPs)" for k in range(len(fr) - 1)]
    body = [[r["row"], *[[seed[k] for seed in r["overthinking"]] for k in range(len(fr) - 1)]]
            for r in summary["rows"]]
    return header, body


def improvability_table(summary: dict) -> tuple[list[str], list[list]]:
    """Per exit, ZTW's hindsight improvability (of the samples it gets wrong, the share an earlier exit got
    right) for each regime; test split. Exit 0 is 0 by definition."""
    fr = summary["rows"][0]["exit_fraction_flops"]
    header = ["regime"] + [f"exit {k} ({100 * fr[k]:.0f}% FLOPs)" if k < len(fr) - 1 else f"final ({100 * fr[k]:.0f}%)"
                           for k in range(len(fr))]
    body = [[r["row"], *[[seed[k] for seed in r["improvability"]] for k in range(len(fr))]] for r in summary["rows"]]
    return header, body


FAILURE_METRICS = ("ece", "auroc", "aurc")


def failure_table(summary: dict) -> tuple[list[str], list[list]]:
    """Per exit, the max softmax's calibration error (ECE) and failure prediction (AUROC, AURC) on test: three rows
    per regime. Three decimals, not percent; n/a where some seed has no value (AUROC when an exit is all right or all
    wrong)."""
    fr = summary["rows"][0]["exit_fraction_flops"]
    header = ["regime: metric"] + [f"exit {k} ({100 * fr[k]:.0f}% FLOPs)" if k < len(fr) - 1
                                   else f"final ({100 * fr[k]:.0f}%)" for k in range(len(fr))]
    body = [[f"{r['row']}: {m.upper()}", *[Values([seed[k] for seed in r[f"exit_{m}"]], 1.0, 3)
                                           for k in range(len(fr))]]
            for r in summary["rows"] for m in FAILURE_METRICS]
    return header, body


def has_failure(summary: dict) -> bool:
    """Classification summaries written since the failure metrics were added have them."""
    return not regression(summary) and "exit_auroc" in summary["rows"][0]


EXTRA_CAPTIONS = {
    "failure": "Per exit, the max softmax on test: ECE (calibration error, 15 bins), AUROC (probability that a right "
               "answer is more confident than a wrong one, ties as half; higher is better) and AURC (mean error "
               "rate among the k most confident, k = 1..N; lower is better). n/a: on some seed the exit got every "
               "sample right (or every one wrong), so there is nothing to rank.",
    "overthinking": "SDN's overthinking: share of test samples an internal classifier gets right and the final exit "
                    "gets wrong, in %.",
    "improvability": "ZTW's hindsight improvability: of the test samples an exit gets wrong, the share some earlier "
                     "exit got right, in % (n/a: the exit got none wrong on some seed).",
}


def markdown(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([row[0], *map(cell_text, row[1:])]) + " |" for row in body]
    return "\n".join(lines) + "\n"


def latex(header: list[str], body: list[list]) -> str:
    esc = lambda s: s.replace("%", "\\%").replace("_", "\\_")  # noqa: E731
    lines = ["\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
             " & ".join(map(esc, header)) + " \\\\", "\\midrule"]
    lines += [" & ".join([esc(row[0]), *(cell_text(v, latex=True) for v in row[1:])]) + " \\\\" for row in body]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"]) + "\n"


def csv_text(header: list[str], body: list[list]) -> str:
    """Mean and std in separate columns, in percent."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([header[0]] + [f"{h} {s}" for h in header[1:] for s in ("mean", "std")])
    for row in body:
        cells = []
        for v in map(_as_values, row[1:]):
            ms = scaled_mean_std(v.values, v.scale)
            cells += ["", ""] if ms is None else [f"{ms[0]:.4f}", f"{ms[1]:.4f}"]
        w.writerow([row[0], *cells])
    return buf.getvalue()


def write_tables(summary: dict, directory: Path) -> dict[str, str]:
    """Write ``paper.{md,csv,tex}``, ``exits.{md,csv,tex}``, ``overthinking.*``, ``improvability.*`` and
    ``failure.*``; returns the Markdown texts."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = {}
    tables = [("paper", paper_table(summary)), ("exits", exit_table(summary))]
    if "overthinking" in summary["rows"][0]:  # summaries written before exitlab had the extras lack them
        tables += [("overthinking", overthinking_table(summary)), ("improvability", improvability_table(summary))]
    if has_failure(summary):
        tables.append(("failure", failure_table(summary)))
    for name, (header, body) in tables:
        extra = EXTRA_CAPTIONS.get(name, "")
        texts[name] = markdown(header, body) + "\n" + caption(summary) + (" " + extra if extra else "") + "\n"
        (directory / f"{name}.md").write_text(texts[name])
        (directory / f"{name}.csv").write_text(csv_text(header, body))
        (directory / f"{name}.tex").write_text(latex(header, body))
    return texts
