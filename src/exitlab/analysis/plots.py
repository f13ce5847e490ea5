"""Figures for the analyses, drawn from their JSON alone (``redraw(json_path)`` rebuilds any figure).

Every ``draw_*`` takes the dict that ``exitlab analyze`` writes (``{"analysis": kind, "runs": [...]}``; connectivity
holds its comparison at the top level) and returns a matplotlib ``Figure``. Figures are built without pyplot, on
the Agg canvas, so nothing here touches the user's global backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DPI = 80


def _runs(data: dict) -> list[dict]:
    return data.get("runs", [data])


def draw_gradients(data: dict) -> Figure:
    """Exits x blocks heatmaps per run: each exit's share of the joint gradient, by norm and by projection."""
    runs = _runs(data)
    fig = Figure(figsize=(12, 2.2 + 1.9 * len(runs)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for r, run in enumerate(runs):
        for c, (key, title, cmap, lim) in enumerate([("share_norm", "share by norm", "viridis", (0, 1)),
                                                      ("share_projection", "share by projection", "RdBu_r", (-1, 1))]):
            ax = axes[r][c]
            vals = np.array([[np.nan if v is None else v for v in row] for row in run[key]], dtype=float)
            vals[np.array(run["norm"]) == 0] = np.nan  # the exit does not reach this part: blank, not 0
            im = ax.imshow(vals, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
            for (i, j), v in np.ndenumerate(vals):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if (cmap == "viridis" and v < 0.5) else "black")
            ax.set_xticks(range(len(run["blocks"])), [b.replace("block ", "b") for b in run["blocks"]], fontsize=7)
            ax.set_yticks(range(len(run["exits"])), run["exits"], fontsize=7)
            ax.set_title(f"{run.get('label', '')}: {title}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Each exit's share of the joint gradient per backbone part ({runs[0].get('samples', '?')} samples, "
                 f"BN mode {runs[0].get('mode', '?')}; blank: exit does not reach the part)", fontsize=10)
    return fig


def draw_gradient_log(records: list[dict]) -> Figure:
    """The ICs' combined share of each backbone part's joint gradient over training, from ``gradients.jsonl``
    (written when the config sets ``grad_log_every``); one line per part, phases separated by grey lines."""
    fig = Figure(figsize=(11, 3.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    blocks = records[0]["blocks"]
    x = np.arange(len(records))
    for ax, key, title in ((axes[0], "share_norm", "by norm"), (axes[1], "share_projection", "by projection")):
        for j, name in enumerate(blocks):
            ic = [sum(r[key][k][j] or 0.0 for k in range(len(r["exits"]) - 1)) for r in records]  # all but final
            ax.plot(x, ic, marker="o", ms=3, label=name)
        for i in range(1, len(records)):
            if records[i].get("phase") != records[i - 1].get("phase"):
                ax.axvline(i - 0.5, color="0.6", lw=1)
        ax.set_xticks(x, [f"p{r.get('phase', '?')}:{r.get('step', i)}" for i, r in enumerate(records)], fontsize=6,
                      rotation=90)
        ax.set(xlabel="phase:step", ylabel="ICs' share", title=f"ICs' share of the joint gradient, {title}")
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=7)
    return fig


def _mark_exits(ax, exits: list[int]) -> None:
    for e in exits:
        ax.axvline(e, color="0.85", lw=0.8, zorder=0)


def draw_rank(data: dict) -> Figure:
    """Numerical, effective and stable rank against block index, one line per run."""
    runs = _runs(data)
    fig = Figure(figsize=(12, 3.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    for run in runs:
        for ax, key in zip(axes, ("rank", "effective_rank", "stable_rank")):
            line, = ax.plot(run["blocks"], run[key], marker="o", label=run.get("label") or "model")
            ax.set_xticks(run["blocks"])
            if key == "rank":
                ax.plot(run["blocks"], run["ceiling"], ls=":", color=line.get_color(), lw=1)
    for ax, title in zip(axes, (f"numerical rank (tau={runs[0]['tau']:g}; dotted: ceiling)", "effective rank",
                                "stable rank")):
        _mark_exits(ax, runs[0].get("exits", []))
        ax.set_xlabel("block (grey: IC positions)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    pooled = f", maps pooled to {runs[0]['pool']}x{runs[0]['pool']}" if runs[0].get("pool") else ", flattened"
    fig.suptitle(f"Rank of block outputs ({runs[0]['samples']} samples, centred{pooled})", fontsize=10)
    return fig


def draw_mi(data: dict) -> Figure:
    """Information plane (KDE) and the estimators of I(Z;Y) and I(X;Z) against depth, one colour per run."""
    runs = _runs(data)
    fig = Figure(figsize=(13, 3.8), dpi=DPI, layout="constrained")
    plane, zy, xz = fig.subplots(1, 3)
    for run in runs:
        kde, label = run["kde"], run.get("label") or "model"
        line, = plane.plot(kde["i_xt_upper"], kde["i_ty"], marker="o", label=label)
        col = line.get_color()
        for b, x, y in zip(run["blocks"], kde["i_xt_upper"], kde["i_ty"]):
            plane.annotate(str(b), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ex = run["exits"]
        plane.scatter(ex["h_yhat"], ex["i_yhat_y"], marker="*", s=60, color=col, edgecolor="k", lw=0.4)
        zy.plot(run["blocks"], kde["i_ty"], ls="--", color=col, label=f"{label} KDE")
        if run.get("probe"):
            zy.plot(run["blocks"], run["probe"]["i_zy_lower"], color=col, marker="o", label=f"{label} probe lower")
        xz.plot(run["blocks"], kde["i_xt_upper"], ls="--", color=col, label=f"{label} KDE upper")
        xz.plot(run["blocks"], kde["i_xt_lower"], color=col, marker="o", label=f"{label} KDE lower")
        for ax, key in ((zy, "i_zy"), (xz, "i_xz")):
            ax.plot(run["blocks"], run["binning"][key], ls=":", color=col, marker="x")
            ax.set_xticks(run["blocks"])
    plane.set(xlabel="I(X;T) bits (KDE upper bound)", ylabel="I(T;Y) bits (KDE)")
    plane.set_title("information plane over depth (numbers: block; stars: exits' H(Yhat), I(Yhat;Y))", fontsize=8)
    plane.legend(fontsize=7)
    zy.axhline(runs[0]["h_y"], color="0.5", lw=0.8)
    zy.set(xlabel="block", ylabel="bits", title="I(Z;Y): probe lower bound, KDE estimate, binning (x); grey H(Y)")
    xz.axhline(runs[0]["log2_n"], color="0.5", lw=0.8)
    xz.set(xlabel="block", ylabel="bits", title="I(X;Z): KDE upper and lower bounds, binning (x); grey log2 N")
    for ax in (zy, xz):
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.suptitle(f"Mutual information ({runs[0]['samples']} samples; KDE noise: {runs[0]['kde']['noise']})",
                 fontsize=10)
    return fig


def _landscape_row(fig, axes, run: dict) -> None:
    c = np.array(run["coords"])
    surfaces = [*zip(run["exits"], run["loss"]), ("objective", run["objective"])]
    mid = len(c) // 2
    for ax, (name, z) in zip(axes[:-1], surfaces):
        z = np.log(np.maximum(np.array(z, dtype=float), 1e-6))
        cs = ax.contourf(c, c, z, levels=20, cmap="viridis")
        ax.contour(c, c, z, levels=10, colors="k", linewidths=0.3)
        ax.plot([0], [0], "r+", ms=8)
        ax.set_title(f"{run.get('label', '')} {name}", fontsize=8)
        ax.tick_params(labelsize=6)
        fig.colorbar(cs, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
    for name, z in surfaces:
        z = np.array(z, dtype=float)
        axes[-1].plot(c, z[mid], label=name, **({"color": "k", "lw": 1.8} if name == "objective" else {"lw": 1}))
    axes[-1].set_yscale("log")
    axes[-1].set_title("1-D slice along d1 (d2 = 0)", fontsize=8)
    axes[-1].legend(fontsize=6)


def draw_landscape(data: dict) -> Figure:
    """Contours of log loss per exit and of the objective on the plane, plus the 1-D slice through the model."""
    runs = _runs(data)
    if runs[0]["dims"] == 1:
        fig = Figure(figsize=(5 * len(runs), 3.4), dpi=DPI, layout="constrained")
        for ax, run in zip(fig.subplots(1, len(runs), squeeze=False)[0], runs):
            for name, z in [*zip(run["exits"], run["loss"]), ("objective", run["objective"])]:
                ax.plot(run["coords"], z, label=name)
            ax.set(yscale="log", xlabel="step along a filter-normalised direction", title=run.get("label", ""))
            ax.legend(fontsize=7)
    else:
        cols = len(runs[0]["exits"]) + 2
        fig = Figure(figsize=(2.9 * cols, 2.5 * len(runs) + 0.4), dpi=DPI, layout="constrained")
        axes = fig.subplots(len(runs), cols, squeeze=False)
        for row, run in zip(axes, runs):
            _landscape_row(fig, row, run)
    r0 = runs[0]
    fig.suptitle(f"Loss landscape, log loss (params: {r0['params']}, BN: {r0['bn']}, {r0['samples']} samples, "
                 f"filter-normalised directions, seed {r0['seed']})", fontsize=10)
    return fig


def draw_connectivity(data: dict) -> Figure:
    """Objective and final-exit accuracy along every path, and the objective on the plane through three models."""
    has_plane = "plane" in data
    fig = Figure(figsize=(14 if has_plane else 10, 4.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3 if has_plane else 2)
    for p in data["paths"]:
        extra = f", above line {p['above_line']['objective']:.3f}" if "above_line" in p else ""
        label = f"{p['from']} - {p['to']} {p['kind']} (barrier {p['barrier']['objective']:.3f}{extra})"
        ls = "-" if p["kind"] == "linear" else "--"
        line, = axes[0].plot(p["t"], p["objective"], marker="o", ms=3, ls=ls, label=label)
        axes[1].plot(p["t"], p["accuracy"][-1], color=line.get_color(), ls=ls, marker="o", ms=3)
    axes[0].set(xlabel="t", ylabel="objective (weighted exit losses)")
    axes[0].set_title("objective along each path (interior points: BN re-estimated)", fontsize=9)
    axes[1].set(xlabel="t", ylabel="final-exit accuracy")
    axes[1].set_title("final-exit accuracy along each path", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    if has_plane:
        pl = data["plane"]
        cs = axes[2].contourf(pl["x"], pl["y"], np.array(pl["objective"], dtype=float), levels=20, cmap="viridis")
        fig.colorbar(cs, ax=axes[2], shrink=0.8)
        for (x, y), name in zip(pl["positions"], data["runs"]):
            axes[2].plot(x, y, "r*", ms=10)
            axes[2].annotate(name, (x, y), color="w", fontsize=8, xytext=(4, 4), textcoords="offset points")
        axes[2].set_aspect("equal")
        axes[2].set_title("objective on the plane through the three models", fontsize=9)
    fig.suptitle(f"Mode connectivity ({data['samples']} samples, BN statistics from {data['bn_samples']})",
                 fontsize=10)
    return fig


DRAW = {"gradients": draw_gradients, "rank": draw_rank, "mi": draw_mi, "landscape": draw_landscape,
        "connectivity": draw_connectivity}


def draw(data: dict) -> Figure:
    """The figure for any analysis JSON dict."""
    return DRAW[data["analysis"]](data)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a 256-colour PNG (a third of the size of a true-colour one, no visible difference here)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    img = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    img.convert("RGB").quantize(256).save(path, optimize=True)
    return path


def redraw(json_path: str | Path, png_path: str | Path | None = None) -> Path:
    """Rebuild the PNG of an analysis from its JSON file alone (next to it unless ``png_path`` is given)."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    return save(draw(data), png_path or json_path.with_suffix(".png"))
