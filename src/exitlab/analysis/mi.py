"""Mutual information between inputs X, block representations Z, exit predictions and labels Y, in bits.

The paper's estimator is not public, so several are provided, each named in the output:

- ``binning`` (Shwartz-Ziv & Tishby 2017): every unit of Z is cut into ``bins`` equal-width bins over the layer's
  range; each sample's binned vector is one symbol. ``I(X;Z) = H(Z_bin)`` (the network is deterministic and every
  input distinct) and ``I(Z;Y) = H(Z_bin) - H(Z_bin | Y)``, plug-in. Wide layers put every sample in its own cell,
  so both saturate at ``log2 N`` and ``H(Y)``; this is flagged ``saturated``.
- ``kde`` (Kolchinsky & Tracey 2017, as used by Saxe et al. 2018): Z plus Gaussian noise of variance ``s2`` per unit is
  a mixture of Gaussians centred on the samples. Pairwise-distance bounds on mixture entropy give
  ``I(X;T) <= -mean_i log mean_j exp(-|z_i - z_j|^2 / (2 s2))`` (KL) and ``>=`` the same with ``8 s2``
  (Bhattacharyya). ``I(T;Y) = H(T) - sum_c p_c H(T | Y=c)``: ``i_ty`` applies the KL estimate to both terms
  (Saxe et al.'s estimate, not itself a bound); ``i_ty_upper``/``i_ty_lower`` combine opposite bounds and are
  true bounds (the upper one also capped at ``H(Y)``), but loose when the noisy samples overlap. ``s2`` is
  ``noise_ratio`` times the layer's total variance (scale-free, default) or a fixed ``noise_var`` (Saxe et al.'s
  choice).
- ``probe``: a multinomial logistic regression trained on half the samples (4x4-average-pooled maps, or CLS token
  plus mean token); ``H(Y) - CE_heldout`` is a lower bound on ``I(Z;Y)`` because cross-entropy of any predictor is at
  least ``H(Y|Z)``.
- ``exits``: exact plug-in ``I(Yhat_k; Y)`` from the confusion table of exit ``k``, with ``H(Yhat_k) = I(X; Yhat_k)``.
  Its upward bias is at most about ``(K-1)^2 / (2 N ln 2)`` bits, reported as ``bias_bound``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from .common import Batches, block_outputs, check_blocks, exit_names, preserved

LN2 = math.log(2)
MIN_SAMPLES = 20
MAX_PLUGIN_BIAS = 0.1  # bits; the exit plug-in estimate refuses sample sizes whose bias bound is larger


# ---------------------------------------------------------------- discrete plug-in


def entropy_bits(labels: torch.Tensor) -> float:
    """Plug-in entropy of a discrete sample ``[N]`` (or of the rows of ``[N, D]``), in bits."""
    if labels.dim() > 1:
        labels = torch.unique(labels, dim=0, return_inverse=True)[1]
    counts = torch.unique(labels, return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def discrete_mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in ``I(A;B) = H(A) + H(B) - H(A,B)`` of paired discrete samples ``[N]`` (or rows ``[N, D]``), in bits."""
    if len(a) != len(b):
        raise ExitlabError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    a = a.reshape(len(a), -1).long()
    b = b.reshape(len(b), -1).long()
    return max(0.0, entropy_bits(a) + entropy_bits(b) - entropy_bits(torch.cat([a, b], 1)))


def bin_values(z: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins over the global range of ``z``: integer codes of the same shape."""
    if bins < 2:
        raise ExitlabError(f"binning needs at least 2 bins, got {bins}")
    lo, hi = float(z.min()), float(z.max())
    if hi <= lo:
        return torch.zeros_like(z, dtype=torch.long)
    return ((z.double() - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)


def binning_estimates(z: torch.Tensor, y: torch.Tensor, bins: int = 30) -> dict:
    """``I(X;Z)`` and ``I(Z;Y)`` by binning the representation ``z`` ``[N, D]`` (plug-in, bits)."""
    codes = torch.unique(bin_values(z, bins), dim=0, return_inverse=True)[1]  # [N] one symbol per binned row
    h = entropy_bits(codes)
    return {"i_xz": h, "i_zy": discrete_mi(codes, y), "saturated": bool(h >= math.log2(len(z)) - 1e-9)}


# ---------------------------------------------------------------- Gaussian-noise KDE bounds


def pairwise_sq_dists(z: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``z`` ``[N, D]``: ``[N, N]`` float64."""
    z = z.double()
    z = z - z.mean(0)
    sq = (z * z).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min_(0).fill_diagonal_(0)


def _mixture_term(d2: torch.Tensor, scale: float) -> float:
    """``-mean_i log mean_j exp(-d2_ij / scale)`` in nats: the mixture entropy above the per-component entropy."""
    n = d2.shape[0]
    return float(-(torch.logsumexp(-d2 / scale, dim=1) - math.log(n)).mean())


def kde_estimates(z: torch.Tensor, y: torch.Tensor, noise_var: float) -> dict:
    """Pairwise-distance bounds on ``I(X;T)`` and ``I(T;Y)`` for ``T = Z + N(0, noise_var I)``, in bits."""
    if noise_var <= 0:
        raise ExitlabError(f"the KDE noise variance must be > 0, got {noise_var}")
    d2 = pairwise_sq_dists(z)
    kl, bd = 2 * noise_var, 8 * noise_var  # exp(-KL) and exp(-Bhattacharyya) for equal isotropic Gaussians
    h_kl, h_bd = _mixture_term(d2, kl), _mixture_term(d2, bd)
    cond_kl = cond_bd = 0.0
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        p = len(idx) / len(y)
        sub = d2[idx][:, idx]
        cond_kl += p * _mixture_term(sub, kl)
        cond_bd += p * _mixture_term(sub, bd)
    h_y = entropy_bits(y)  # I(T;Y) <= H(Y) as well
    return {"i_xt_upper": h_kl / LN2, "i_xt_lower": h_bd / LN2, "i_ty": (h_kl - cond_kl) / LN2,
            "i_ty_upper": min(h_y, (h_kl - cond_bd) / LN2), "i_ty_lower": max(0.0, h_bd - cond_kl) / LN2,
            "noise_var": noise_var}


def relative_noise_var(z: torch.Tensor, noise_ratio: float) -> float:
    """``noise_ratio`` times the total variance of ``z``; a zero-variance layer gets a tiny positive value."""
    total = float(z.double().var(0, unbiased=False).sum())
    return noise_ratio * total if total > 0 else 1e-12


# ---------------------------------------------------------------- linear probe lower bound


def _fit_probe(z: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int):
    """Multinomial logistic regression on standardised float64 features, fitted with L-BFGS."""
    w = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _ce_bits(z: torch.Tensor, y: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(F.cross_entropy(z @ wb[0] + wb[1], y)) / LN2


def probe_lower_bound(z: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                      weight_decays: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0), max_iter: int = 100,
                      seed: int = 0) -> dict:
    """Lower bound ``H(Y) - CE`` on ``I(Z;Y)`` from a logistic regression fitted on one half and scored on the other.

    The L2 strength is picked from ``weight_decays`` on a third of the fitting half, then the probe is refitted on
    the whole fitting half. The bound holds in expectation; on a finite held-out half it carries sampling noise of
    about ``std(log q) / sqrt(N / 2)``. ``i_zy_lower`` is clipped at 0 (``h_y - ce_bits`` is the raw value).
    """
    n = len(y)
    need = max(MIN_SAMPLES, 4 * num_classes)
    if n < need:
        raise ExitlabError(f"the probe lower bound needs at least {need} samples for {num_classes} classes, got {n}; "
                           "raise --samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, te = perm[: n // 2], perm[n // 2:]
    z = z.double()
    mean, std = z[tr].mean(0), z[tr].std(0).clamp_min(1e-6)
    z = (z - mean) / std
    fit, sel = tr[: 2 * len(tr) // 3], tr[2 * len(tr) // 3:]
    scores = [_ce_bits(z[sel], y[sel], _fit_probe(z[fit], y[fit], num_classes, wd, max_iter)) for wd in weight_decays]
    wd = weight_decays[min(range(len(scores)), key=scores.__getitem__)]
    ce = _ce_bits(z[te], y[te], _fit_probe(z[tr], y[tr], num_classes, wd, max_iter))
    h_y = entropy_bits(y[te])
    return {"i_zy_lower": max(0.0, h_y - ce), "ce_bits": ce, "h_y": h_y, "weight_decay": wd, "train": len(tr),
            "test": len(te)}


# ---------------------------------------------------------------- exits


def plugin_bias_bound(n: int, num_classes: int) -> float:
    """Approximate upward bias of plug-in MI on a K x K table, ``(K-1)^2 / (2 n ln 2)`` bits; refuses larger than
    ``MAX_PLUGIN_BIAS``."""
    bias = (num_classes - 1) ** 2 / (2 * n * LN2) if n else math.inf
    if bias > MAX_PLUGIN_BIAS:
        need = math.ceil((num_classes - 1) ** 2 / (2 * MAX_PLUGIN_BIAS * LN2))
        raise ExitlabError(f"too few samples for the plug-in MI of {num_classes}-class predictions: {n} give a bias "
                           f"bound of {bias:.2f} bits (> {MAX_PLUGIN_BIAS}); use at least {need} samples")
    return bias


def prediction_mi(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Exact plug-in ``I(Yhat; Y)`` and ``H(Yhat)`` (= ``I(X; Yhat)``) from paired predictions and labels, in bits."""
    bias = plugin_bias_bound(len(y), num_classes)
    return {"i_yhat_y": discrete_mi(pred, y), "h_yhat": entropy_bits(pred), "bias_bound": bias}


# ---------------------------------------------------------------- per model


def _pool(h: torch.Tensor) -> torch.Tensor:
    """Probe features: 4x4 average pooling of maps, CLS token plus mean token of token sequences."""
    if h.dim() == 4:
        return F.adaptive_avg_pool2d(h.float(), 4).flatten(1)
    if h.dim() == 3:
        return torch.cat([h[:, 0], h[:, 1:].mean(1) if h.shape[1] > 1 else h[:, 0]], 1).float()
    return h.float().flatten(1)


@torch.no_grad()
def _collect(model: MultiExitModel, batches: Batches, blocks: list[int], max_features: int | None, seed: int):
    flat: dict[int, list] = {b: [] for b in blocks}
    pooled: dict[int, list] = {b: [] for b in blocks}
    cols: dict[int, torch.Tensor | None] = {}
    preds, ys = [], []
    for x, y in batches:
        for b, h in block_outputs(model, x, blocks).items():
            f = h.float().flatten(1).cpu()  # [B, D]
            if b not in cols:
                g = torch.Generator().manual_seed(seed + b)
                big = max_features is not None and f.shape[1] > max_features
                cols[b] = torch.randperm(f.shape[1], generator=g)[:max_features].sort().values if big else None
            flat[b].append(f if cols[b] is None else f[:, cols[b]])
            pooled[b].append(_pool(h).cpu())
        preds.append(torch.stack(model(x)).argmax(-1).cpu())  # [E, B]
        ys.append(y.cpu())
    cat = lambda d: {b: torch.cat(v) for b, v in d.items()}  # noqa: E731
    return cat(flat), cat(pooled), torch.cat(preds, 1), torch.cat(ys)


def mi_profile(model: MultiExitModel, batches: Batches, *, blocks: list[int] | None = None, bins: int = 30,
               noise_ratio: float = 0.1, noise_var: float | None = None, probe: bool = True,
               max_features: int | None = 4096, seed: int = 0) -> dict:
    """All estimators on every block (or ``blocks``) and every exit of ``model`` over ``batches``, in eval mode."""
    blocks = check_blocks(model, blocks)
    n = sum(len(y) for _, y in batches)
    if n < MIN_SAMPLES:
        raise ExitlabError(f"mutual information estimates need at least {MIN_SAMPLES} samples, got {n}; "
                           "raise --samples")
    plugin_bias_bound(n, model.num_classes)  # fail before the expensive part
    with preserved(model):
        model.eval()
        flat, pooled, preds, y = _collect(model, batches, blocks, max_features, seed)
    K = model.num_classes
    rows = {"binning": [], "kde": [], "probe": []}
    for b in blocks:
        rows["binning"].append(binning_estimates(flat[b], y, bins))
        rows["kde"].append(kde_estimates(flat[b], y, noise_var or relative_noise_var(flat[b], noise_ratio)))
        if probe:
            rows["probe"].append(probe_lower_bound(pooled.pop(b), y, K, seed=seed))
    exits = [prediction_mi(preds[k], y, K) for k in range(model.num_exits)]
    columns = lambda rs: {k: [r[k] for r in rs] for k in rs[0]} if rs else {}  # noqa: E731
    return {"analysis": "mi", "units": "bits", "samples": n, "h_y": entropy_bits(y), "log2_n": math.log2(n),
            "blocks": blocks, "max_features": max_features,
            "binning": {"bins": bins, **columns(rows["binning"])},
            "kde": {"noise": f"fixed variance {noise_var}" if noise_var else
                    f"{noise_ratio} x the layer's total variance", **columns(rows["kde"])},
            "probe": columns(rows["probe"]),
            "exits": {"names": exit_names(model), "blocks": [*model.exits, None],
                      "accuracy": [float((preds[k] == y).double().mean()) for k in range(model.num_exits)],
                      **columns(exits)}}
