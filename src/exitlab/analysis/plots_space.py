"""Figures of the analyses in parameter space: loss landscapes and mode connectivity (see :mod:`.plots`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .plotkit import DPI, arr, entries

D1 = "alpha along d1"
D2 = "beta along d2"
COORDS = ("coordinates: multiples of filter-normalised random directions d1, d2 (at 1, every filter of the "
          "perturbed parameters has moved by its own norm; 1-D parameters do not move)")


def _log_levels(rows: list[tuple[dict, dict | None]], n: int = 21) -> np.ndarray:
    """One set of contour levels (log loss) for every panel of the figure, so that colours compare across panels."""
    vals = np.concatenate([np.log(np.maximum(arr(z), 1e-6)).ravel() for run, _ in rows
                           for z in [*run["loss"], run["objective"]]])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    return np.linspace(lo, hi if hi > lo else lo + 1e-6, n)


def _landscape_row(axes, run: dict, std: dict | None, levels: np.ndarray, last_row: bool):
    c = np.array(run["coords"])
    surfaces = [*zip(run["exits"], run["loss"]), ("objective", run["objective"])]
    mid = len(c) // 2
    cs = None
    for i, (ax, (name, z)) in enumerate(zip(axes[:-1], surfaces)):
        z = np.log(np.maximum(arr(z), 1e-6))
        cs = ax.contourf(c, c, z, levels=levels, cmap="viridis", extend="both")
        ax.contour(c, c, z, levels=levels[::2], colors="k", linewidths=0.3)
        ax.plot([0], [0], "r+", ms=8)
        ax.set_title(f"{run.get('label', '')} {name}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_ylabel(D2 if i == 0 else "", fontsize=7)
        ax.set_xlabel(D1 if last_row else "", fontsize=7)
    sl = axes[-1]
    for k, (name, z) in enumerate(surfaces):
        z = arr(z)
        style = {"color": "k", "lw": 1.8} if name == "objective" else {"lw": 1}
        line, = sl.plot(c, z[mid], label=name, **style)
        key = "objective" if name == "objective" else "loss"
        if std and key in std:
            s = arr(std[key])[mid] if name == "objective" else arr(std[key])[k][mid]
            sl.fill_between(c, z[mid] - s, z[mid] + s, color=line.get_color(), alpha=0.2, lw=0)
    sl.set_yscale("log")
    sl.set_title("1-D slice along d1 (beta = 0)" + (", band: std over seeds" if std else ""), fontsize=8)
    sl.set(xlabel=D1 if last_row else "", ylabel="loss (nats)")
    sl.legend(fontsize=6)
    return cs


def draw_landscape(data: dict) -> Figure:
    """Contours of log loss per exit and of the objective on the plane (one colour scale for all panels), plus the
    1-D slice through the model."""
    rows = entries(data)
    r0 = rows[0][0]
    if r0["dims"] == 1:
        fig = Figure(figsize=(5 * len(rows), 3.6), dpi=DPI, layout="constrained")
        for ax, (run, std) in zip(fig.subplots(1, len(rows), squeeze=False)[0], rows):
            for k, (name, z) in enumerate([*zip(run["exits"], run["loss"]), ("objective", run["objective"])]):
                z = arr(z)
                line, = ax.plot(run["coords"], z, label=name)
                s = (std or {}).get("objective" if name == "objective" else "loss")
                if s is not None:
                    s = arr(s) if name == "objective" else arr(s)[k]
                    ax.fill_between(run["coords"], z - s, z + s, color=line.get_color(), alpha=0.2, lw=0)
            ax.set(yscale="log", xlabel=D1 + " (a filter-normalised random direction)", ylabel="loss (nats)",
                   title=run.get("label", ""))
            ax.legend(fontsize=7)
    else:
        cols = len(r0["exits"]) + 2
        fig = Figure(figsize=(2.9 * cols, 2.6 * len(rows) + 0.8), dpi=DPI, layout="constrained")
        axes = fig.subplots(len(rows), cols, squeeze=False)
        levels = _log_levels(rows)
        cs = None
        for n, (row, (run, std)) in enumerate(zip(axes, rows)):
            cs = _landscape_row(row, run, std, levels, n == len(rows) - 1)
        fig.colorbar(cs, ax=axes[:, :-1].ravel().tolist(), shrink=0.8, label="log loss (one scale for all panels)")
    fig.suptitle(f"Loss landscape, log loss (params: {r0['params']}, BN: {r0['bn']}, {r0['samples']} samples, seed "
                 f"{r0['seed']}{', mean over seeds' if data.get('groups') else ''})\n{COORDS}", fontsize=9)
    return fig


# ---------------------------------------------------------------- connectivity


def _path_label(p: dict) -> str:
    seeds = "" if p.get("seed_from") is None else f" (seeds {p['seed_from']}-{p['seed_to']})"
    extra = f", above line {p['above_line']['objective']:.3f}" if "above_line" in p else ""
    role = " seed baseline" if p.get("role") == "baseline" else ""
    return f"{p['from']} - {p['to']}{seeds}{role} {p['kind']} (barrier {p['barrier']['objective']:.3f}{extra})"


def _summary_bars(ax, summary: list[dict]) -> None:
    names = [f"{s['from']}-{s['to']}{' (baseline)' if s['role'] == 'baseline' else ''} {s['kind']}" for s in summary]
    y = np.arange(len(summary))
    for off, key, col, lab in ((-0.2, "barrier_objective", "C0", "barrier"), (0.2, "above_line_objective", "C1",
                                                                                "above line")):
        means = [s[key]["mean"] for s in summary]
        stds = [s[key]["std"] or 0.0 for s in summary]
        ax.barh(y + off, means, 0.4, xerr=stds, color=col, label=lab, capsize=3)
    for i, s in enumerate(summary):
        ax.text(0, i, f" n={s['barrier_objective']['n']}", va="center", fontsize=6)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="objective barrier (nats), mean +- std over seeds")
    ax.set_title("barriers per regime pair and seed baseline", fontsize=9)
    ax.legend(fontsize=7)


def _plane_panel(fig, ax, pl: dict, names: list[str]) -> None:
    cs = ax.contourf(pl["x"], pl["y"], arr(pl["objective"]), levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, shrink=0.8, label="objective")
    for (x, y), name in zip(pl["positions"], pl.get("runs", names)):
        ax.plot(x, y, "r*", ms=10)
        ax.annotate(name, (x, y), color="w", fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_aspect("equal")
    ax.set(xlabel="along model 2 - model 1 (parameter-space units)", ylabel="towards model 3, orthogonalised")
    ax.set_title("objective on the plane through three models" + (" (aligned)" if pl.get("aligned") else ""),
                 fontsize=9)


def draw_connectivity(data: dict) -> Figure:
    """Objective and final-exit accuracy along every path (seed baselines dashed), the barriers per pair and
    baseline with their spread over seeds, and the objective on the plane through three models."""
    has_plane, summary = "plane" in data, data.get("summary") or []
    n = 2 + bool(summary) + has_plane
    fig = Figure(figsize=(5 * n, 4.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, n)
    for p in data["paths"]:
        base = p.get("role") == "baseline"
        ls = (":" if base else "-") if p["kind"] == "linear" else "--"
        line, = axes[0].plot(p["t"], p["objective"], marker="o", ms=3, ls=ls, label=_path_label(p),
                             alpha=0.7 if base else 1.0)
        axes[1].plot(p["t"], p["accuracy"][-1], color=line.get_color(), ls=ls, marker="o", ms=3)
    axes[0].set(xlabel="t (0: first model, 1: second)", ylabel="objective (weighted exit losses, nats)")
    axes[0].set_title("objective along each path (dotted: seed baselines)", fontsize=9)
    axes[1].set(xlabel="t (0: first model, 1: second)", ylabel="final-exit accuracy")
    axes[1].set_title("final-exit accuracy along each path", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)
    if summary:
        _summary_bars(axes[2], summary)
    if has_plane:
        _plane_panel(fig, axes[-1], data["plane"], data["runs"])
    scale = "" if any(p.get("role") == "baseline" for p in data["paths"]) else \
        "\nno seed baseline: a barrier here has no same-regime scale (give several seeds of a regime)"
    fig.suptitle(f"Mode connectivity ({data['samples']} samples; every point, endpoints included, with BatchNorm "
                 f"re-estimated on {data['bn_samples']} train samples"
                 f"{'; weight-matched' if data.get('aligned') else '; not aligned: permutations not removed'}){scale}",
                 fontsize=10)
    return fig
