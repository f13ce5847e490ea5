"""Small pieces shared by the figure modules: what to draw for seed groups, None-safe arrays, error bars."""

from __future__ import annotations

import copy

import numpy as np

from .seeds import get_field

DPI = 80
SAT = dict(marker="o", s=70, facecolors="none", edgecolors="red", linewidths=1.2, zorder=5)  # saturated estimates


def _runs(data: dict) -> list[dict]:
    return data.get("runs", [data])


def _set_field(d: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value


def entries(data: dict) -> list[tuple[dict, dict | None]]:
    """What a figure draws: ``(run-like dict, std dict or None)`` per run, a seed group in place of its runs (its
    mean over seeds in the fields the group holds, the first run's values elsewhere)."""
    runs, groups = _runs(data), data.get("groups") or []
    first = {g["runs"][0]: g for g in groups}
    grouped = {i for g in groups for i in g["runs"]}
    out = []
    for i, run in enumerate(runs):
        if i in first:
            g = first[i]
            mean, std = copy.deepcopy(run), {}
            for f, v in g["mean"].items():
                _set_field(mean, f, v)
                _set_field(std, f, g["std"][f])
            mean["label"] = f"{g['label']} (mean of {g['n']} seeds)"
            out.append((mean, std))
        elif i not in grouped:
            out.append((run, None))
    return out


def arr(values) -> np.ndarray:
    """A float array of (nested) lists of numbers, with NaN for None."""
    def conv(v):
        return [conv(x) for x in v] if isinstance(v, list) else (np.nan if v is None else v)

    return np.array(conv(values), dtype=float)


def err(std: dict | None, path: str, fallback: dict | None = None, se_path: str | None = None):
    """Error bars: the std over seeds when there is one, else a per-run standard error when given, else None."""
    if std is not None:
        v = get_field(std, path)
        return None if v is None else np.nan_to_num(arr(v))
    if fallback is not None and se_path is not None and get_field(fallback, se_path) is not None:
        return np.nan_to_num(arr(get_field(fallback, se_path)))
    return None
