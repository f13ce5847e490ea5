"""Comparison plots: accuracy vs FLOPs with std bands, the exit distribution at a budget, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...evaluation.sweep import accuracy_at, pareto_frontier
from ...runs.files import read_jsonl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scale(summary: dict) -> tuple[float, str]:
    """How scores are drawn: accuracy in percent, or for regression (scores are minus the MSE) the MSE."""
    return (-1.0, "MSE") if summary.get("task") == "regression" else (100.0, "accuracy (%)")


def frontier_band(curves: list[dict], points: int = 120, scale: float = 100.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each seed's Pareto frontier interpolated on a common grid of budgets; mean and std over seeds, times
    ``scale`` (percent; -1 turns regression's minus-MSE scores into the MSE)."""
    fronts = [pareto_frontier(torch.tensor(c["fraction"]), torch.tensor(c["accuracy"])) for c in curves]
    lo = max(float(f[0][0]) for f in fronts)
    hi = min(float(f[0][-1]) for f in fronts)
    xs = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    ys = np.array([[accuracy_at(c, a, float(x)) for x in xs] for c, a in fronts], dtype=float) * scale  # [S, P]
    return xs, ys.mean(0), ys.std(0, ddof=1) if len(fronts) > 1 else np.zeros_like(xs)


def plot_accuracy_vs_flops(summary: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scale, label = _scale(summary)
    for i, row in enumerate(summary["rows"]):
        color = f"C{i}"
        xs, mean, std = frontier_band(row["curves"], scale=scale)
        ax.plot(xs * 100, mean, color=color, label=row["row"])
        ax.fill_between(xs * 100, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ex = np.array(row["exit_accuracy"]).mean(0) * scale
        ax.scatter(np.array(row["exit_fraction_flops"]) * 100, ex, color=color, marker="o", s=28, zorder=3,
                   edgecolor="white")
    ax.set_xlabel("mean cost (% of backbone FLOPs)")
    ax.set_ylabel(f"test {label}")
    ax.set_title(f"{label.split(' ')[0].capitalize()} vs compute ({summary['policy']} policy; dots = single exits; "
                 "band = ±1 std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_exit_distribution(summary: dict, path: Path) -> None:
    plt = _plt()
    rows = [r for r in summary["rows"] if any(d is not None for d in r["distribution"])]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    n_exits = len(summary["rows"][0]["exit_accuracy"][0])
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        fr = np.array([d["exit_fractions"] for d in row["distribution"] if d is not None]).mean(0) * 100
        ax.bar(np.arange(n_exits) + i * width - 0.4 + width / 2, fr, width, label=row["row"], color=f"C{i}")
    ax.set_xticks(range(n_exits), [f"exit {k}" if k < n_exits - 1 else "final" for k in range(n_exits)])
    ax.set_ylabel("% of test samples leaving here")
    ax.set_title(f"Exit distribution at {summary['distribution_budget'] * 100:.0f}% of backbone FLOPs "
                 "(threshold chosen on validation)", fontsize=9)
    if rows:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_history(records: list[dict], phase1_from: str | None) -> list[dict]:
    """A run's epoch records, preceded by its shared phase-1 run's records when it started from one."""
    if phase1_from:
        shared = Path(phase1_from).parent.parent / "metrics.jsonl"
        return read_jsonl(shared) + records
    return records


def plot_training_curves(summary: dict, path: Path) -> None:
    plt = _plt()
    rows = summary["rows"]
    scale, label = _scale(summary)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], rows):
        hist = training_history(row["training"][0], row["phase1_from"][0])
        if not hist:
            continue
        accs = np.array([h["val_acc"] for h in hist]) * scale  # [epochs, E]
        epochs = np.arange(1, len(hist) + 1)
        for k in range(accs.shape[1]):
            ax.plot(epochs, accs[:, k], marker=".", label="final" if k == accs.shape[1] - 1 else f"exit {k}")
        for i in range(1, len(hist)):
            if hist[i]["phase_index"] != hist[i - 1]["phase_index"] or hist[i]["phase"] != hist[i - 1]["phase"]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{row['row']} (phases {'-'.join(str(p) for p in dict.fromkeys(h['phase'] for h in hist))})",
                     fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"validation {label}, seed " + str(rows[0]["seeds"][0]))
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(summary: dict, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fn in (("accuracy_vs_flops", plot_accuracy_vs_flops), ("exit_distribution", plot_exit_distribution),
                     ("training_curves", plot_training_curves)):
        path = directory / f"{name}.png"
        fn(summary, path)
        out.append(path)
    return out
