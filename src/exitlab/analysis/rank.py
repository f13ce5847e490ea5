"""Numerical rank of activations: how many directions a block's representation really uses.

A block's outputs on ``N`` fixed inputs form an ``N x D`` matrix (flattened, columns centred). From its singular
values ``s_1 >= s_2 >= ...`` three numbers are reported:

- numerical rank: ``#{i : s_i > tau * s_1}`` with ``tau = 1e-3`` by default (the counting rule of the paper's group);
- effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = s_i / sum_j s_j``;
- stable rank: ``sum_i s_i^2 / s_1^2 = ||A||_F^2 / ||A||_2^2``.

Singular values come from the eigenvalues of the float64 Gram matrix of the smaller side (``A A^T`` or ``A^T A``)
or from ``torch.linalg.svdvals``. The Gram route costs ``~m^2 M`` multiply-adds plus an ``m x m`` symmetric
eigensolve and measured 1.5-6x cheaper than ``svdvals`` on every shape tried (benchmarks/bench_rank.py), but it
squares the condition number: in float64 it resolves singular values down to about ``sqrt(m * eps) * s_1``
(``~7e-7 s_1`` at ``m = 4096``). ``method="auto"`` therefore takes the Gram route whenever ``tau >= 1e-5`` and
float64 ``svdvals`` below that. An explicit ``method="svd"`` with ``tau >= 1e-5`` runs ``svdvals`` in float32 (its
absolute error, ``~eps32 * s_1 = 6e-8 s_1``, is far below the threshold).
"""

from __future__ import annotations

import math
import time

import torch

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from .common import Batches, block_features, check_blocks, preserved

GRAM_MIN_TAU = 1e-5  # below this the float64 Gram route cannot resolve the threshold; svdvals is used
MIN_SAMPLES = 10


def _gram(a: torch.Tensor) -> torch.Tensor:
    """``a @ a.T`` for float64 ``a`` ``[m, M]``, computing only the upper block triangle for large ``m``."""
    m = a.shape[0]
    if m <= 1024:
        return a @ a.T
    g = torch.empty(m, m, dtype=a.dtype)
    edges = [round(i * m / 4) for i in range(5)]
    for i in range(4):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i, 4):
            cols = slice(edges[j], edges[j + 1])
            blk = a[rows] @ a[cols].T
            g[rows, cols] = blk
            if j > i:
                g[cols, rows] = blk.T
    return g


def singular_values(a: torch.Tensor, *, method: str = "auto", tau: float = 1e-3) -> tuple[torch.Tensor, str]:
    """All ``min(N, D)`` singular values of ``a`` ``[N, D]`` in descending order (float64), and the method used."""
    if method == "auto":
        method = "gram" if tau >= GRAM_MIN_TAU else "svd"
    if method == "svd":  # float32 resolves ~6e-8 s_1, enough unless tau is tiny or the input is float64 anyway
        precise = tau < GRAM_MIN_TAU or a.dtype == torch.float64
        return torch.linalg.svdvals(a.double() if precise else a.float()).double(), method  # descending
    if method != "gram":
        raise ExitlabError(f"rank method must be auto, gram or svd, got {method!r}")
    a64 = a.double()
    small = a64 if a64.shape[0] <= a64.shape[1] else a64.T  # [m, M] with m = min(N, D)
    eig = torch.linalg.eigvalsh(_gram(small))  # ascending
    return eig.clamp_min(0).sqrt().flip(0), method


def spectrum_stats(s: torch.Tensor, tau: float = 1e-3) -> dict:
    """Numerical, effective and stable rank from descending singular values ``s``."""
    smax = float(s[0]) if len(s) else 0.0
    if smax <= 0:
        return {"rank": 0, "effective_rank": 0.0, "stable_rank": 0.0, "sigma_max": 0.0}
    p = s / s.sum()
    p = p[p > 0]
    entropy = float(-(p * p.log()).sum())
    return {"rank": int((s > tau * smax).sum()), "effective_rank": math.exp(entropy),
            "stable_rank": float((s ** 2).sum()) / smax ** 2, "sigma_max": smax}


def matrix_rank_stats(a: torch.Tensor, *, tau: float = 1e-3, center: bool = True, method: str = "auto") -> dict:
    """Rank statistics of one ``[N, D]`` matrix (columns centred unless ``center=False``)."""
    if a.dim() != 2:
        raise ExitlabError(f"rank needs an N x D matrix, got shape {tuple(a.shape)}")
    if not 0 < tau < 1:
        raise ExitlabError(f"tau must be in (0, 1), got {tau}")
    N, D = a.shape
    if N < MIN_SAMPLES:
        raise ExitlabError(f"a rank estimate needs at least {MIN_SAMPLES} samples, got {N}; raise --samples")
    if center:
        a = a - a.mean(0, keepdim=True)
    s, used = singular_values(a, method=method, tau=tau)
    ceiling = min(N - 1 if center else N, D)
    stats = spectrum_stats(s, tau)
    return {**stats, "ceiling": ceiling, "saturated": stats["rank"] >= ceiling, "method": used}


def rank_profile(model: MultiExitModel, batches: Batches, *, blocks: list[int] | None = None, tau: float = 1e-3,
                 max_features: int | None = 8192, seed: int = 0, method: str = "auto", pool: int = 0) -> dict:
    """Rank statistics of every block's output (or of ``blocks``) on ``batches``, in eval mode.

    Blocks wider than ``max_features`` keep ``max_features`` random columns (recorded in ``features_used`` and
    ``sampling``); a rank that reaches its ceiling ``min(N - 1, D_used)`` is flagged ``saturated`` (a lower bound:
    more samples or features would be needed to see the true rank). ``pool > 0`` first averages feature maps down
    to ``pool x pool`` (tokens to their mean): with ``D`` far above ``N`` the flattened rank sits at its ceiling, and
    pooling measures the dimension of the channel space instead.
    """
    blocks = check_blocks(model, blocks)
    n = sum(len(y) for _, y in batches)
    if n < MIN_SAMPLES:
        raise ExitlabError(f"a rank estimate needs at least {MIN_SAMPLES} samples, got {n}; raise --samples")
    with preserved(model), torch.no_grad():
        model.eval()
        feats, dims = block_features(model, batches, blocks, max_features, seed, pool)
    rows = []
    for b in blocks:
        t0 = time.perf_counter()
        stats = matrix_rank_stats(feats.pop(b), tau=tau, method=method)
        rows.append({"features": dims[b], "features_used": min(dims[b], max_features or dims[b]),
                     "seconds": time.perf_counter() - t0, **stats})
    out = {"analysis": "rank", "tau": tau, "samples": n, "max_features": max_features, "pool": pool,
           "sampling": f"{n} fixed inputs; " + (f"maps average-pooled to {pool}x{pool}; " if pool else "") +
                       f"blocks wider than {max_features} features keep that many columns drawn "
                       f"uniformly without replacement (seed {seed} + block index)",
           "exits": list(model.exits)}
    out["blocks"] = blocks
    for k in ("rank", "effective_rank", "stable_rank", "sigma_max", "ceiling", "saturated", "features",
              "features_used", "method", "seconds"):
        out[k] = [r[k] for r in rows]  # one value per block
    return out
