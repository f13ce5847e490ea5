"""Figures for the analyses, drawn from their JSON alone (``redraw(json_path)`` rebuilds any figure).

Every ``draw_*`` takes the dict that ``exitlab analyze`` writes (``{"analysis": kind, "runs": [...]}``, with
``groups`` when several seeds of a regime were given; connectivity holds its comparison at the top level) and
returns a matplotlib ``Figure``. With seed groups, a group is drawn once, as its mean with error bars of one
standard deviation over seeds. Figures are built without pyplot, on the Agg canvas, so nothing here touches the
user's global backend. Landscapes and connectivity are drawn in :mod:`exitlab.analysis.plots_space`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .plotkit import DPI, SAT, arr, entries, err
from .plots_space import draw_connectivity, draw_landscape

# ---------------------------------------------------------------- gradients


def draw_gradients(data: dict) -> Figure:
    """Exits x parts heatmaps per run: each exit's share of the phase gradient, by norm and by projection."""
    rows = entries(data)
    fig = Figure(figsize=(12, 2.2 + 1.9 * len(rows)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for r, (run, std) in enumerate(rows):
        frozen = np.array(run.get("frozen") or [False] * len(run["blocks"]), dtype=bool)
        for c, (key, title, cmap, lim) in enumerate([("share_norm", "share by norm", "viridis", (0, 1)),
                                                      ("share_projection", "share by projection", "RdBu_r", (-1, 1))]):
            ax = axes[r][c]
            vals = arr(run[key])
            vals[~(np.nan_to_num(arr(run["norm"])) > 0)] = np.nan  # the exit contributes nothing here: blank, not 0
            sd = arr(std[key]) if std and key in std else None
            im = ax.imshow(vals, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
            for (i, j), v in np.ndenumerate(vals):
                if np.isfinite(v):
                    text = f"{v:.2f}" + (f"\n±{sd[i, j]:.2f}" if sd is not None and np.isfinite(sd[i, j]) else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=6,
                            color="white" if (cmap == "viridis" and v < 0.5) else "black")
            for j in np.flatnonzero(frozen):
                ax.axvspan(j - 0.5, j + 0.5, color="0.85", hatch="//", zorder=0)
                ax.text(j, (len(run["exits"]) - 1) / 2, "frozen", rotation=90, ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(run["blocks"])), [b.replace("block ", "b") for b in run["blocks"]], fontsize=7)
            ax.set_yticks(range(len(run["exits"])), run["exits"], fontsize=7)
            ax.set_title(f"{run.get('label', '')}: {title}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    o = rows[0][0].get("objective") or {"phase": 2}
    extras = ", ".join(k for k in ("distill", "grad_equilibrium") if o.get(k))
    fig.suptitle(f"Each exit's share of the phase-{o['phase']} gradient per backbone part"
                 f"{' (with ' + extras + ')' if extras else ''}; {rows[0][0].get('samples', '?')} samples, BN mode "
                 f"{rows[0][0].get('mode', '?')}; blank: no contribution; hatched: frozen in the phase", fontsize=10)
    return fig


def draw_gradient_log(records: list[dict]) -> Figure:
    """The ICs' combined share of each backbone part's phase gradient over training, from ``gradients.jsonl``
    (written when the config sets ``grad_log_every``); one line per part, phases separated by grey lines, gaps where
    a phase froze the part."""
    fig = Figure(figsize=(11, 3.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    blocks = records[0]["blocks"]
    x = np.arange(len(records))
    for ax, key, title in ((axes[0], "share_norm", "by norm"), (axes[1], "share_projection", "by projection")):
        for j, name in enumerate(blocks):
            ic = [np.nan if all(r[key][k][j] is None for k in range(len(r["exits"]))) else
                  sum(r[key][k][j] or 0.0 for k in range(len(r["exits"]) - 1)) for r in records]  # all but final
            ax.plot(x, ic, marker="o", ms=3, label=name)
        for i in range(1, len(records)):
            if records[i].get("phase") != records[i - 1].get("phase"):
                ax.axvline(i - 0.5, color="0.6", lw=1)
        ax.set_xticks(x, [f"p{r.get('phase', '?')}:{r.get('step', i)}" for i, r in enumerate(records)], fontsize=6,
                      rotation=90)
        ax.set(xlabel="phase:step", ylabel="ICs' share", title=f"ICs' share of the phase gradient, {title}")
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=7)
    return fig


# ---------------------------------------------------------------- rank


def _mark_exits(ax, exits: list[int]) -> None:
    for e in exits:
        ax.axvline(e, color="0.85", lw=0.8, zorder=0)


def _draw_spectrum(ax, run: dict, grouped: bool) -> None:
    cmap = colormaps["viridis"]
    n = len(run["blocks"])
    for i, (b, idx, vals) in enumerate(zip(run["blocks"], run.get("spectrum_index", []), run.get("spectrum", []))):
        v = np.maximum(arr(vals), 1e-12)
        ax.loglog(idx, v, color=cmap(i / max(n - 1, 1)), lw=1, label=f"block {b}")
    tau = run["tau"]
    ax.axhline(tau, color="0.3", ls=":", lw=0.8, label=f"tau = {tau:g} (singular)")
    ax.axhline(tau ** 0.5, color="0.3", ls="--", lw=0.8, label=f"sqrt(tau) = {tau ** 0.5:.3g} (covariance)")
    ax.set(xlabel="index i", ylabel="s_i / s_1", ylim=(max(1e-7, ax.get_ylim()[0]), 1.5))
    who = f"{run.get('label') or 'model'}" + (f", spectrum of seed {run.get('run_seed')}" if grouped else "")
    ax.set_title(f"{who}: normalised singular values", fontsize=9)
    ax.legend(fontsize=6, ncols=2)


def draw_rank(data: dict) -> Figure:
    """Numerical (both conventions), effective and stable rank against block index, and each run's spectra."""
    rows = entries(data)
    cols = max(3, len(rows))
    fig = Figure(figsize=(4 * cols, 7), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False)
    r0 = rows[0][0]
    conv = r0.get("convention", "singular")
    other = "rank_singular" if conv == "covariance" else "rank_covariance"
    for run, std in rows:
        for ax, key in zip(axes[0], ("rank", "effective_rank", "stable_rank")):
            line = ax.errorbar(run["blocks"], arr(run[key]), yerr=err(std, key), marker="o", capsize=3,
                               label=run.get("label") or "model")[0]
            ax.set_xticks(run["blocks"])
            if key == "rank":
                ax.plot(run["blocks"], run["ceiling"], ls=":", color=line.get_color(), lw=1)
                if other in run:
                    ax.plot(run["blocks"], arr(run[other]), ls="--", color=line.get_color(), lw=1, alpha=0.6)
    thresholds = {"covariance": "lambda_i > tau*lambda_1", "singular": "s_i > tau*s_1"}
    titles = (f"numerical rank, {conv}: {thresholds.get(conv, conv)}, tau={r0['tau']:g}\n"
              "(dashed: the other convention; dotted: ceiling)", "effective rank", "stable rank")
    for ax, title in zip(axes[0], titles):
        _mark_exits(ax, r0.get("exits", []))
        ax.set_xlabel("block (grey: IC positions)")
        ax.set_title(title, fontsize=8)
    axes[0][0].legend(fontsize=8)
    for ax, (run, std) in zip(axes[1], rows):
        _draw_spectrum(ax, run, std is not None)
    for ax in [*axes[0][3:], *axes[1][len(rows):]]:
        ax.set_axis_off()
    pooled = f", maps pooled to {r0['pool']}x{r0['pool']}" if r0.get("pool") else ", flattened"
    fig.suptitle(f"Rank of block outputs ({r0['samples']} samples, centred{pooled})", fontsize=10)
    return fig


# ---------------------------------------------------------------- mutual information


def _mi_run(plane, zy, xz, run: dict, std: dict | None) -> None:
    kde, label, blocks = run["kde"], run.get("label") or "model", run["blocks"]
    x, y = arr(kde["i_xt_upper"]), arr(kde["i_ty"])
    line = plane.errorbar(x, y, xerr=err(std, "kde.i_xt_upper", run, "kde.i_xt_upper_se"),
                          yerr=err(std, "kde.i_ty", run, "kde.i_ty_se"), marker="o", capsize=2, label=label)[0]
    col = line.get_color()
    sat = np.array(kde.get("saturated") or [False] * len(blocks), dtype=bool)
    if sat.any():
        plane.scatter(x[sat], y[sat], **SAT)
    for b, xv, yv in zip(blocks, x, y):
        plane.annotate(str(b), (xv, yv), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ex = run["exits"]
    plane.scatter(arr(ex["h_yhat"]), arr(ex["i_yhat_y"]), marker="*", s=60, color=col, edgecolor="k", lw=0.4)
    zy.errorbar(blocks, y, yerr=err(std, "kde.i_ty", run, "kde.i_ty_se"), ls="--", color=col, capsize=2,
                label=f"{label} KDE estimate")
    if run.get("probe"):
        zy.errorbar(blocks, arr(run["probe"]["i_zy_lower"]), marker="o", color=col, capsize=2,
                    yerr=err(std, "probe.i_zy_lower", run, "probe.i_zy_lower_se"), label=f"{label} probe lower")
    xz.errorbar(blocks, x, yerr=err(std, "kde.i_xt_upper", run, "kde.i_xt_upper_se"), ls="--", color=col,
                capsize=2, label=f"{label} KDE upper")
    xz.plot(blocks, arr(kde["i_xt_lower"]), color=col, marker="o", label=f"{label} KDE lower")
    if sat.any():
        xz.scatter(np.array(blocks)[sat], x[sat], **SAT)
    bsat = np.array(run["binning"].get("saturated") or [False] * len(blocks), dtype=bool)
    for ax, key in ((zy, "i_zy"), (xz, "i_xz")):
        vals = arr(run["binning"][key])
        ax.plot(blocks, vals, ls=":", color=col, marker="x")
        if bsat.any():
            ax.scatter(np.array(blocks)[bsat], vals[bsat], **SAT)
        ax.set_xticks(blocks)


def draw_mi(data: dict) -> Figure:
    """Information plane (KDE) and the estimators of I(Z;Y) and I(X;Z) against depth, one colour per run; error bars
    are standard errors (one run) or the std over seeds (a group); red rings mark saturated estimates."""
    rows = entries(data)
    fig = Figure(figsize=(15, 4.6), dpi=DPI, layout="constrained")
    plane, zy, xz = fig.subplots(1, 3)
    for run, std in rows:
        _mi_run(plane, zy, xz, run, std)
    r0 = rows[0][0]
    plane.set(xlabel="I(X;T) bits (KDE upper bound)", ylabel="I(T;Y) bits (KDE estimate, reads high)")
    plane.set_title("information plane over depth (numbers: block; red ring: saturated)\nstars: exits' "
                    "(H(Yhat), I(Yhat;Y))", fontsize=8)
    plane.legend(fontsize=7)
    zy.axhline(r0["h_y"], color="0.5", lw=0.8)
    zy.set(xlabel="block", ylabel="bits", title="I(Z;Y): probe lower bound, KDE estimate, binning (x)\ngrey: H(Y); "
           "red ring: binning saturated")
    xz.axhline(r0["log2_n"], color="0.5", lw=0.8)
    xz.set(xlabel="block", ylabel="bits",
           title="I(X;Z): KDE upper and lower bounds, binning (x)\ngrey: log2 N; red ring: saturated at log2 N")
    for ax in (zy, xz):
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.suptitle(f"Mutual information ({r0['samples']} samples; KDE noise: {r0['kde']['noise']}; error bars: "
                 f"{'std over seeds' if data.get('groups') else 'first-order standard errors'})", fontsize=10)
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
