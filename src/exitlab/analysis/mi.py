"""Mutual information between inputs X, block representations Z, exit predictions and labels Y, in bits.

The paper's estimator is not public, so several are provided, each named in the output. Every estimate comes with
``*_se``: a first-order (delta-method) standard error of its average over samples, ``std(pointwise term) / sqrt(N)``.
It covers sampling noise only, not an estimator's bias (below) nor the refitting of a probe; spread over seeds is
what ``exitlab analyze`` adds when given several seeds of one regime.

- ``binning`` (Shwartz-Ziv & Tishby 2017): every unit of Z is cut into ``bins`` equal-width bins over the layer's
  range; each sample's binned vector is one symbol. ``I(X;Z) = H(Z_bin)`` (the network is deterministic and every
  input distinct) and ``I(Z;Y) = H(Z_bin) - H(Z_bin | Y)``, plug-in. Wide layers put every sample in its own cell,
  and then both read exactly ``log2 N`` and ``H(Y)`` whatever the representation: such blocks are flagged
  ``saturated`` (``distinct_fraction`` = distinct cells / N says how close a block is).
- ``kde`` (Kolchinsky & Tracey 2017, as used by Saxe et al. 2018): Z plus Gaussian noise of variance ``s2`` per unit is
  a mixture of Gaussians centred on the samples. Pairwise-distance bounds on mixture entropy give
  ``I(X;T) <= -mean_i log mean_j exp(-|z_i - z_j|^2 / (2 s2))`` (KL) and ``>=`` the same with ``8 s2``
  (Bhattacharyya). These are bounds for X uniform over the N samples (the empirical distribution), not for the
  population; they never exceed ``log2 N``, and a block whose upper bound is within ``KDE_SATURATION`` bits of it is
  flagged ``saturated`` (no two noisy samples overlap: the number says only that the samples are distinct).
  ``I(T;Y) = H(T) - sum_c p_c H(T | Y=c)``: ``i_ty`` applies the KL form to both terms (Saxe et al.'s estimate; not
  a bound, and biased upwards, strongly so as the dimension grows: see docs/analysis.md for measured errors);
  ``i_ty_upper``/``i_ty_lower`` combine opposite bounds and are bounds for the empirical distribution (the upper one
  also capped at ``H(Y)``), usually too loose to say much. ``s2`` is ``noise_ratio`` times the layer's total
  variance (scale-free, default) or a fixed ``noise_var`` (Saxe et al.'s choice).
- ``probe``: a multinomial logistic regression trained on half the samples (4x4-average-pooled maps, or CLS token
  plus mean token); ``H(Y) - CE_heldout`` estimates a lower bound on ``I(Z;Y)``, because the cross-entropy of any
  predictor is at least ``H(Y|Z)``; it is a bound in expectation, the held-out average carries sampling noise.
- ``exits``: plug-in ``I(Yhat_k; Y)`` from the confusion table of exit ``k``, with ``H(Yhat_k) = I(X; Yhat_k)``.
  Its upward bias is about ``(K-1)^2 / (2 N ln 2)`` bits to first order (Miller-Madow; an approximation, not a
  bound), reported as ``bias_first_order``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ExitlabError
from ..models.contract import MultiScaleFeature
from ..models.core import MultiExitModel
from .common import Batches, block_outputs, check_blocks, exit_names, pool_feature, preserved

LN2 = math.log(2)
MIN_SAMPLES = 20
MAX_PLUGIN_BIAS = 0.1  # bits; the exit plug-in estimate refuses sample sizes whose first-order bias is larger
KDE_SATURATION = 0.05  # bits below log2 N at which a KDE upper bound on I(X;T) says only "the samples are distinct"


# ---------------------------------------------------------------- discrete plug-in


def se(terms: torch.Tensor) -> float:
    """First-order standard error of ``terms.mean()``: ``std / sqrt(N)``."""
    return float(terms.double().std() / math.sqrt(len(terms))) if len(terms) > 1 else 0.0


def _log2_freq(x: torch.Tensor) -> torch.Tensor:
    """``log2 p(x_i)`` of each sample under the empirical distribution of ``x`` ``[N]`` (or of rows ``[N, D]``)."""
    x = x.reshape(len(x), -1)
    if x.shape[1] > 1:  # rows: one symbol each
        x = torch.unique(x, dim=0, return_inverse=True)[1]
    inverse, counts = torch.unique(x.flatten(), return_inverse=True, return_counts=True)[1:]
    return (counts.double() / len(x)).log2()[inverse]


def entropy_bits(labels: torch.Tensor) -> float:
    """Plug-in entropy of a discrete sample ``[N]`` (or of the rows of ``[N, D]``), in bits."""
    return float(-_log2_freq(labels).mean())


def mi_terms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pointwise plug-in MI ``log2 p(a_i, b_i) / (p(a_i) p(b_i))`` of paired discrete samples; its mean is the
    plug-in ``I(A;B)``."""
    if len(a) != len(b):
        raise ExitlabError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    a = a.reshape(len(a), -1).long()
    b = b.reshape(len(b), -1).long()
    return _log2_freq(torch.cat([a, b], 1)) - _log2_freq(a) - _log2_freq(b)


def discrete_mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in ``I(A;B) = H(A) + H(B) - H(A,B)`` of paired discrete samples ``[N]`` (or rows ``[N, D]``), in bits."""
    return max(0.0, float(mi_terms(a, b).mean()))


def bin_values(z: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins over the global range of ``z``: integer codes of the same shape."""
    if bins < 2:
        raise ExitlabError(f"binning needs at least 2 bins, got {bins}")
    lo, hi = float(z.min()), float(z.max())
    if hi <= lo:
        return torch.zeros_like(z, dtype=torch.long)
    return ((z.double() - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)


def binning_estimates(z: torch.Tensor, y: torch.Tensor, bins: int = 30) -> dict:
    """``I(X;Z)`` and ``I(Z;Y)`` by binning the representation ``z`` ``[N, D]`` (plug-in, bits), with standard errors.

    ``saturated``: every sample has a cell of its own, so ``i_xz = log2 N`` and ``i_zy = H(Y)`` say nothing about
    the representation."""
    codes = torch.unique(bin_values(z, bins), dim=0, return_inverse=True)[1]  # [N] one symbol per binned row
    h_terms, i_terms = -_log2_freq(codes), mi_terms(codes, y)
    distinct = int(codes.max()) + 1 if len(codes) else 0
    return {"i_xz": float(h_terms.mean()), "i_xz_se": se(h_terms), "i_zy": max(0.0, float(i_terms.mean())),
            "i_zy_se": se(i_terms), "distinct_fraction": distinct / max(len(z), 1),
            "saturated": distinct == len(z)}


# ---------------------------------------------------------------- Gaussian-noise KDE bounds


def pairwise_sq_dists(z: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``z`` ``[N, D]``: ``[N, N]`` float64."""
    z = z.double()
    z = z - z.mean(0)
    sq = (z * z).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min_(0).fill_diagonal_(0)


def _mixture_terms(d2: torch.Tensor, scale: float) -> torch.Tensor:
    """``-log mean_j exp(-d2_ij / scale)`` per sample ``i`` in nats; their mean is the mixture entropy above the
    per-component entropy."""
    n = d2.shape[0]
    return -(torch.logsumexp(-d2 / scale, dim=1) - math.log(n))


def kde_estimates(z: torch.Tensor, y: torch.Tensor, noise_var: float) -> dict:
    """Pairwise-distance bounds on ``I(X;T)`` and ``I(T;Y)`` for ``T = Z + N(0, noise_var I)`` (X uniform over the
    samples), Saxe et al.'s ``I(T;Y)`` estimate, their standard errors, and the saturation flag; in bits."""
    if noise_var <= 0:
        raise ExitlabError(f"the KDE noise variance must be > 0, got {noise_var}")
    d2 = pairwise_sq_dists(z)
    kl, bd = 2 * noise_var, 8 * noise_var  # exp(-KL) and exp(-Bhattacharyya) for equal isotropic Gaussians
    h_kl, h_bd = _mixture_terms(d2, kl) / LN2, _mixture_terms(d2, bd) / LN2  # [N] bits
    cond_kl, cond_bd = torch.empty_like(h_kl), torch.empty_like(h_bd)  # each sample within its own class
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        sub = d2[idx][:, idx]
        cond_kl[idx], cond_bd[idx] = _mixture_terms(sub, kl) / LN2, _mixture_terms(sub, bd) / LN2
    h_y = entropy_bits(y)  # I(T;Y) <= H(Y) as well
    upper, log2_n = float(h_kl.mean()), math.log2(len(z))
    return {"i_xt_upper": upper, "i_xt_upper_se": se(h_kl), "i_xt_lower": float(h_bd.mean()),
            "i_xt_lower_se": se(h_bd), "i_ty": float((h_kl - cond_kl).mean()), "i_ty_se": se(h_kl - cond_kl),
            "i_ty_upper": min(h_y, float((h_kl - cond_bd).mean())),
            "i_ty_lower": max(0.0, float((h_bd - cond_kl).mean())), "noise_var": noise_var,
            "saturated": upper >= log2_n - KDE_SATURATION}


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


def _ce_bits(z: torch.Tensor, y: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-sample cross-entropy in bits, ``[n]``."""
    return F.cross_entropy(z @ wb[0] + wb[1], y, reduction="none") / LN2


def probe_lower_bound(z: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                      weight_decays: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0), max_iter: int = 100,
                      seed: int = 0) -> dict:
    """Lower bound ``H(Y) - CE`` on ``I(Z;Y)`` from a logistic regression fitted on one half and scored on the other.

    The L2 strength is picked from ``weight_decays`` on a third of the fitting half, then the probe is refitted on
    the whole fitting half. The bound holds in expectation; on a finite held-out half it carries sampling noise of
    about ``std(log q) / sqrt(N / 2)`` (``i_zy_lower_se``). ``i_zy_lower`` is clipped at 0 (``h_y - ce_bits`` is the
    raw value).
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
    scores = [float(_ce_bits(z[sel], y[sel], _fit_probe(z[fit], y[fit], num_classes, wd, max_iter)).mean())
              for wd in weight_decays]
    wd = weight_decays[min(range(len(scores)), key=scores.__getitem__)]
    ce = _ce_bits(z[te], y[te], _fit_probe(z[tr], y[tr], num_classes, wd, max_iter))  # [n_test]
    gain = -_log2_freq(y[te]) - ce  # pointwise H(Y) - CE
    h_y = entropy_bits(y[te])
    return {"i_zy_lower": max(0.0, float(gain.mean())), "i_zy_lower_se": se(gain), "ce_bits": float(ce.mean()),
            "h_y": h_y, "weight_decay": wd, "train": len(tr), "test": len(te)}


# ---------------------------------------------------------------- exits


def plugin_bias(n: int, num_classes: int) -> float:
    """First-order (Miller-Madow) upward bias of plug-in MI on a K x K table, ``(K-1)^2 / (2 n ln 2)`` bits: an
    approximation, exact to leading order for independent variables, not a bound. Refuses a value above
    ``MAX_PLUGIN_BIAS``."""
    bias = (num_classes - 1) ** 2 / (2 * n * LN2) if n else math.inf
    if bias > MAX_PLUGIN_BIAS:
        need = math.ceil((num_classes - 1) ** 2 / (2 * MAX_PLUGIN_BIAS * LN2))
        raise ExitlabError(f"too few samples for the plug-in MI of {num_classes}-class predictions: {n} give a "
                           f"first-order bias of {bias:.2f} bits (> {MAX_PLUGIN_BIAS}); use at least {need} samples")
    return bias


def prediction_mi(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Plug-in ``I(Yhat; Y)`` and ``H(Yhat)`` (= ``I(X; Yhat)``) from paired predictions and labels, in bits."""
    bias = plugin_bias(len(y), num_classes)
    terms, h_terms = mi_terms(pred, y), -_log2_freq(pred)
    return {"i_yhat_y": max(0.0, float(terms.mean())), "i_yhat_y_se": se(terms), "h_yhat": float(h_terms.mean()),
            "h_yhat_se": se(h_terms), "bias_first_order": bias}


# ---------------------------------------------------------------- per model

NOTES = [
    "*_se: first-order standard error of the average over samples (sampling noise only: not an estimator's bias, "
    "not the refit of a probe)",
    "binning.saturated: every sample has a cell of its own, so i_xz = log2 N and i_zy = H(Y) whatever the "
    "representation",
    f"kde.saturated: the upper bound on I(X;T) is within {KDE_SATURATION} bits of log2 N (no two noisy samples "
    "overlap)",
    "kde bounds hold for X uniform over the N samples, not for the population; kde.i_ty is an estimate, not a bound, "
    "and reads high (docs/analysis.md)",
    "probe.i_zy_lower: H(Y) - held-out cross-entropy, a lower bound on I(Z;Y) in expectation",
    "exits.bias_first_order: the plug-in MI's first-order (Miller-Madow) bias, an approximation, not a bound",
]



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
            if isinstance(h, MultiScaleFeature):  # MSDNet: every scale's map flattened; pooled, its channel means
                h, p = pool_feature(h, 0), pool_feature(h, 1).float()
            else:
                p = _pool(h)
            f = h.float().flatten(1).cpu()  # [B, D]
            if b not in cols:
                g = torch.Generator().manual_seed(seed + b)
                big = max_features is not None and f.shape[1] > max_features
                cols[b] = torch.randperm(f.shape[1], generator=g)[:max_features].sort().values if big else None
            flat[b].append(f if cols[b] is None else f[:, cols[b]])
            pooled[b].append(p.cpu())
        preds.append(torch.stack(model(x)).argmax(-1).cpu())  # [E, B]
        ys.append(y.cpu())
    cat = lambda d: {b: torch.cat(v) for b, v in d.items()}  # noqa: E731
    return cat(flat), cat(pooled), torch.cat(preds, 1), torch.cat(ys)


def mi_profile(model: MultiExitModel, batches: Batches, *, blocks: list[int] | None = None, bins: int = 30,
               noise_ratio: float = 0.1, noise_var: float | None = None, probe: bool = True,
               max_features: int | None = 4096, seed: int = 0) -> dict:
    """All estimators on every block (or ``blocks``) and every exit of ``model`` over ``batches``, in eval mode."""
    blocks = check_blocks(model, blocks)
    if model.task == "regression":
        raise ExitlabError("analyze mi estimates I(Z;Y) over classes; a regression run has none (its target is a "
                           "number); use rank, gradients, landscape or connectivity")
    n = sum(len(y) for _, y in batches)
    if n < MIN_SAMPLES:
        raise ExitlabError(f"mutual information estimates need at least {MIN_SAMPLES} samples, got {n}; "
                           "raise --samples")
    plugin_bias(n, model.num_classes)  # fail before the expensive part
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
            "blocks": blocks, "max_features": max_features, "notes": NOTES,
            "binning": {"bins": bins, **columns(rows["binning"])},
            "kde": {"noise": f"fixed variance {noise_var}" if noise_var else
                    f"{noise_ratio} x the layer's total variance", **columns(rows["kde"])},
            "probe": columns(rows["probe"]),
            "exits": {"names": exit_names(model), "blocks": [*model.exits, None],
                      "accuracy": [float((preds[k] == y).double().mean()) for k in range(model.num_exits)],
                      **columns(exits)}}
