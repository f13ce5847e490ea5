"""Numerical rank of activations: how many directions a block's representation really uses.

A block's outputs on ``N`` fixed inputs form an ``N x D`` matrix ``A`` (flattened, columns centred). From its singular
values ``s_1 >= s_2 >= ...`` (``lambda_i = s_i^2 / (N - 1)`` are the eigenvalues of the feature covariance) it reports:

- numerical rank under two conventions, both with a relative threshold ``tau`` (``1e-3`` by default):

  - ``covariance`` (the default): ``#{i : lambda_i > tau * lambda_1}``, i.e.
    ``torch.linalg.matrix_rank(torch.cov(A.T), hermitian=True, rtol=tau)``, the form of the public rank code of the
    tunnel-effect line of work (8000 sampled features); on singular values it is ``s_i > sqrt(tau) * s_1``
    (``tau = 1e-3``: ``0.032 s_1``);
  - ``singular``: ``#{i : s_i > tau * s_1}`` (``tau = 1e-3`` on eigenvalues would be ``1e-6``).

  ``rank`` is the chosen convention's count; ``rank_covariance`` and ``rank_singular`` are both always reported;
- effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = s_i / sum_j s_j``;
- stable rank: ``sum_i s_i^2 / s_1^2 = ||A||_F^2 / ||A||_2^2``;
- the normalised spectrum ``s_i / s_1`` (at up to ``SPECTRUM_POINTS`` log-spaced indices ``i``).

Singular values come from the eigenvalues of the float64 Gram matrix of the smaller side (``A A^T`` or ``A^T A``)
or from ``torch.linalg.svdvals``. The Gram route costs ``~m^2 M`` multiply-adds plus an ``m x m`` symmetric
eigensolve and measured 1.5-6x cheaper than ``svdvals`` on every shape tried (benchmarks/bench_rank.py), but it
squares the condition number: in float64 it resolves singular values down to about ``sqrt(m * eps) * s_1``
(``~7e-7 s_1`` at ``m = 4096``). ``method="auto"`` therefore takes the Gram route whenever the threshold on singular
values (``tau``, or ``sqrt(tau)`` for the covariance convention) is at least ``1e-5``, and float64 ``svdvals`` below
that. An explicit ``method="svd"`` above that threshold runs ``svdvals`` in float32 (its absolute error,
``~eps32 * s_1 = 6e-8 s_1``, is far below the threshold).
"""

from __future__ import annotations

import math
import time

import torch

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from .common import Batches, block_features, check_blocks, preserved

CONVENTIONS = ("covariance", "singular")
DEFAULT_CONVENTION = "covariance"  # the tunnel-effect code's form; see docs/analysis.md for why it is the default
GRAM_MIN_TAU = 1e-5  # below this threshold on singular values the float64 Gram route cannot resolve it; svdvals
MIN_SAMPLES = 10
SPECTRUM_POINTS = 200  # spectra longer than this are stored at log-spaced indices


def singular_threshold(tau: float, convention: str = DEFAULT_CONVENTION) -> float:
    """The threshold on ``s_i / s_1`` that ``tau`` means under ``convention`` (``sqrt(tau)`` for covariance)."""
    if convention not in CONVENTIONS:
        raise ExitlabError(f"rank convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return math.sqrt(tau) if convention == "covariance" else tau


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
    """All ``min(N, D)`` singular values of ``a`` ``[N, D]`` in descending order (float64), and the method used.

    ``tau`` is the relative threshold *on singular values* that the result must resolve (it picks the method)."""
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


def covariance_rank(a: torch.Tensor, tau: float = 1e-3) -> int:
    """The covariance convention spelled out: ``matrix_rank(cov(a.T), hermitian=True, rtol=tau)`` (a ``D x D``
    eigensolve, so only for small ``D``; :func:`matrix_rank_stats` gets the same count from the smaller side)."""
    return int(torch.linalg.matrix_rank(torch.cov(a.double().T), hermitian=True, rtol=tau))


def spectrum_points(s: torch.Tensor, max_points: int = SPECTRUM_POINTS) -> tuple[list[int], list[float]]:
    """1-based indices and values of ``s / s_1``: all of them, or ``max_points`` log-spaced ones (first and last
    always included)."""
    m = len(s)
    if m == 0 or float(s[0]) <= 0:
        return [], []
    if m <= max_points:
        idx = list(range(1, m + 1))
    else:
        idx = sorted({round(v) for v in torch.logspace(0, math.log10(m), max_points, dtype=torch.float64).tolist()})
    norm = (s / s[0]).tolist()
    return idx, [norm[i - 1] for i in idx]


def spectrum_stats(s: torch.Tensor, tau: float = 1e-3, convention: str = DEFAULT_CONVENTION) -> dict:
    """Numerical rank (both conventions), effective and stable rank from descending singular values ``s``."""
    t = singular_threshold(tau, convention)
    smax = float(s[0]) if len(s) else 0.0
    if smax <= 0:
        return {"rank": 0, "rank_covariance": 0, "rank_singular": 0, "effective_rank": 0.0, "stable_rank": 0.0,
                "sigma_max": 0.0}
    p = s / s.sum()
    p = p[p > 0]
    entropy = float(-(p * p.log()).sum())
    ranks = {"rank_covariance": int((s ** 2 > tau * smax ** 2).sum()), "rank_singular": int((s > tau * smax).sum())}
    return {"rank": int((s > t * smax).sum()) if convention == "singular" else ranks["rank_covariance"], **ranks,
            "effective_rank": math.exp(entropy), "stable_rank": float((s ** 2).sum()) / smax ** 2, "sigma_max": smax}


def matrix_rank_stats(a: torch.Tensor, *, tau: float = 1e-3, convention: str = DEFAULT_CONVENTION,
                      center: bool = True, method: str = "auto") -> dict:
    """Rank statistics and the normalised spectrum of one ``[N, D]`` matrix (columns centred unless ``center``
    is False)."""
    if a.dim() != 2:
        raise ExitlabError(f"rank needs an N x D matrix, got shape {tuple(a.shape)}")
    if not 0 < tau < 1:
        raise ExitlabError(f"tau must be in (0, 1), got {tau}")
    t = singular_threshold(tau, convention)
    N, D = a.shape
    if N < MIN_SAMPLES:
        raise ExitlabError(f"a rank estimate needs at least {MIN_SAMPLES} samples, got {N}; raise --samples")
    if center:
        a = a - a.mean(0, keepdim=True)
    # the method must resolve both conventions' thresholds, since both counts are reported
    s, used = singular_values(a, method=method, tau=min(t, tau))
    ceiling = min(N - 1 if center else N, D)
    stats = spectrum_stats(s, tau, convention)
    index, values = spectrum_points(s)
    return {**stats, "ceiling": ceiling, "saturated": stats["rank"] >= ceiling, "method": used,
            "spectrum_index": index, "spectrum": values}


def rank_profile(model: MultiExitModel, batches: Batches, *, blocks: list[int] | None = None, tau: float = 1e-3,
                 convention: str = DEFAULT_CONVENTION, max_features: int | None = 8192, seed: int = 0,
                 method: str = "auto", pool: int = 0) -> dict:
    """Rank statistics and spectra of every block's output (or of ``blocks``) on ``batches``, in eval mode.

    Blocks wider than ``max_features`` keep ``max_features`` random columns (recorded in ``features_used`` and
    ``sampling``); a rank that reaches its ceiling ``min(N - 1, D_used)`` is flagged ``saturated`` (a lower bound:
    more samples or features would be needed to see the true rank). ``pool > 0`` first averages feature maps down
    to ``pool x pool`` (tokens to their mean): with ``D`` far above ``N`` the flattened rank sits at its ceiling, and
    pooling measures the dimension of the channel space instead.
    """
    singular_threshold(tau, convention)  # a bad convention fails before any model work
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
        stats = matrix_rank_stats(feats.pop(b), tau=tau, convention=convention, method=method)
        rows.append({"features": dims[b], "features_used": min(dims[b], max_features or dims[b]),
                     "seconds": time.perf_counter() - t0, **stats})
    out = {"analysis": "rank", "tau": tau, "convention": convention,
           "singular_threshold": singular_threshold(tau, convention), "samples": n, "max_features": max_features,
           "pool": pool,
           "sampling": f"{n} fixed inputs; " + (f"maps average-pooled to {pool}x{pool}; " if pool else "") +
                       f"blocks wider than {max_features} features keep that many columns drawn "
                       f"uniformly without replacement (seed {seed} + block index)",
           "exits": list(model.exits)}
    out["blocks"] = blocks
    for k in ("rank", "rank_covariance", "rank_singular", "effective_rank", "stable_rank", "sigma_max", "ceiling",
              "saturated", "features", "features_used", "method", "seconds", "spectrum_index", "spectrum"):
        out[k] = [r[k] for r in rows]  # one value per block
    return out
