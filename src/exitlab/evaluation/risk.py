"""Risk-controlled exit thresholds: a threshold chosen on calibration data with a distribution-free guarantee.

After Jazbec et al. (NeurIPS 2024, "Fast yet Safe: Early-Exiting with Risk Control"), in its high-probability
(Learn-then-Test) form. For a policy and a threshold ``t``, every sample leaves at some exit; its **loss** compares
that exit's prediction with the final exit's. The risk ``R(t)`` is the loss's expectation over the data
distribution. Given a risk level ``alpha`` and a confidence ``1 - delta``, :func:`risk_threshold` returns a
threshold ``t_hat`` with

    P_calibration( R(t_hat) <= alpha ) >= 1 - delta

for any data distribution, as long as calibration and deployment samples are i.i.d. (exchangeable) draws of it.

Losses (``kind``), per sample, for the exit ``j`` it leaves at (0 at the final exit):

- ``"gap"`` (default; the performance-gap risk with the 0-1 loss, clipped at 0): ``1[pred_j wrong and final right]``.
  Its risk bounds the **accuracy drop** against the final exit from above, since
  ``drop = P(j wrong, final right) - P(j right, final wrong) <= R``; so ``R(t_hat) <= alpha`` guarantees a drop of at
  most ``alpha``.
- ``"disagree"`` (the prediction-gap risk; needs no labels): ``1[pred_j != final pred]``. Also bounds the drop.
- ``"drop"``: ``1[pred_j wrong] - 1[final wrong]`` in {-1, 0, 1}; its risk IS the accuracy drop. Tighter in
  principle, but only the Hoeffding bound (for a range of 2) is valid for it, which is loose.

The procedure (Angelopoulos et al. 2021, "Learn then Test"): every candidate threshold ``t_i`` is a null hypothesis
``H_i: R(t_i) > alpha`` with a p-value from the ``n`` calibration losses (``bound``):

- ``"binomial"`` (default; exact for 0/1 losses): ``p = P(Binomial(n, alpha) <= k)``, ``k`` the summed loss
  (the Clopper-Pearson test);
- ``"hoeffding_bentkus"``: ``min(exp(-n h(min(r, alpha), alpha)), e * P(Binomial(n, alpha) <= ceil(n r)))``,
  ``h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))``, ``r = k / n`` (Bates et al. 2021; never smaller than the binomial
  one for 0/1 losses, offered because the literature uses it);
- ``"hoeffding"``: ``exp(-2 n (alpha - r)_+^2 / w^2)`` with ``w`` the loss range (1, or 2 for ``"drop"``).

**Fixed-sequence testing** orders the thresholds from conservative (nobody leaves early) to aggressive and rejects
``H_i`` while ``p_i <= delta``, stopping at the first that is not rejected. This controls the family-wise error at
``delta`` without assuming that ``R`` is monotone in ``t``: with probability ``>= 1 - delta`` every rejected
threshold has ``R <= alpha``, so any of them may be used; exitlab takes the one with the lowest calibration cost
(ties: the more conservative). When none is rejected, no threshold is certified and everyone takes the final exit.

**Candidates from the data, ties included.** Learn-then-Test is stated for candidates fixed before the data are seen;
exitlab's default candidates are every distinct running maximum of the calibration scores plus one beyond the
largest (:func:`exitlab.sweep.score_thresholds`, never subsampled here). The guarantee still holds, atoms (many
scores exactly 1.0) included, because this is the same as fixed-sequence testing over *every* real threshold:

1. The empirical loss at ``t`` depends on ``t`` only through which running maxima are below it, so it is constant on
   each interval between neighbouring candidates, ``(m_(j-1), m_j]`` (and ``(m_max, inf)``, where nobody leaves
   early, represented by the candidate beyond the largest). So is every p-value. Testing the candidates in order
   therefore rejects exactly the thresholds that the procedure over all reals, ``U = {t : p(t') <= delta for every
   t' >= t}``, rejects, down to a candidate; the chosen threshold is in ``U``.
2. Over all reals the family-wise error is at most ``delta``. Let ``V = {t : R(t) > alpha}`` (fixed: it depends on
   the distribution only) and ``s = sup V``; take fixed ``t_1 <= t_2 <= ...`` in ``V`` converging to ``s`` (all
   equal to ``s`` when ``s`` is in ``V``). ``U`` is an upper set, so if it holds some ``t`` of ``V`` it holds every
   ``t_n >= t``, hence all ``t_n`` from some ``n`` on: ``{U meets V}`` is the increasing union of ``{t_n in U}``, and
   ``P(U meets V) = lim P(t_n in U) <= sup_n P(p(t_n) <= delta) <= delta``, each ``t_n`` being a fixed threshold
   whose losses are i.i.d. draws with mean ``R(t_n) > alpha`` whatever the ties.

For ``"above"`` policies larger thresholds are more conservative; ``"below"`` ones are the mirror image. The same
comparison (``score >= t`` in the scores' float32) is used here, in :func:`exitlab.sweep.simulate` and in real
early exit, so the certified rule is the deployed rule exactly, atoms included. Quantile-subsampled candidates (what
a sweep uses past 4096 distinct values) would break step 1 and are not used. Given ``thresholds`` (patience's
``1..E``) are a fixed grid: Learn-then-Test's own argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .policies import Policy
from .sweep import score_thresholds, simulate

KINDS = ("gap", "disagree", "drop")
BOUNDS = ("binomial", "hoeffding_bentkus", "hoeffding")


def sample_losses(preds: torch.Tensor, labels: torch.Tensor, kind: str = "gap") -> torch.Tensor:
    """Loss ``[E, N]`` (int64) of every sample if it leaves at each exit; the final exit's row is 0."""
    final = preds[-1]
    if kind == "gap":
        loss = (preds != labels[None]) & (final == labels)[None]
    elif kind == "disagree":
        loss = preds != final[None]
    elif kind == "drop":
        loss = (preds != labels[None]).long() - (final != labels).long()[None]
    else:
        raise ConfigError(f"unknown risk {kind!r}; choose one of: {', '.join(KINDS)}")
    return loss.long()


def loss_sums(scores: torch.Tensor, losses: torch.Tensor, thresholds: torch.Tensor, exit_when: str = "above"
              ) -> torch.Tensor:
    """Summed loss ``[T]`` (int64, exact) of the samples at the exit each takes, for every threshold.

    ``scores``/``losses``: ``[E, N]``. The same counting as :func:`exitlab.sweep.simulate`: a sample reaches exit
    ``k`` iff the running maximum of its scores over exits ``0..k-1`` is below ``t``."""
    E, N = scores.shape
    t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
    tt = t.to(scores.dtype) if exit_when == "above" else -t.to(scores.dtype)
    s = scores if exit_when == "above" else -scores
    running = s[:-1].cummax(0).values  # [E-1, N]
    total = torch.full((len(t),), int(losses[0].sum()), dtype=torch.long)
    for k in range(1, E):
        r, order = running[k - 1].sort()
        reach = torch.searchsorted(r, tt, side="left")  # [T]: samples still running at exit k
        gain = torch.cat([torch.zeros(1, dtype=torch.long), (losses[k] - losses[k - 1])[order].cumsum(0)])
        total += gain[reach]
    return total


def binomial_cdf(k: torch.Tensor, n: int, p: float) -> torch.Tensor:
    """``P(Binomial(n, p) <= k)`` for integer ``k`` ``[T]`` (float64; exact up to rounding)."""
    ks = torch.arange(n + 1, dtype=torch.float64)
    logpmf = (math.lgamma(n + 1) - torch.lgamma(ks + 1) - torch.lgamma(n - ks + 1)
              + ks * math.log(p) + (n - ks) * math.log1p(-p))  # [n+1]
    cdf = torch.logcumsumexp(logpmf, 0).exp().clamp(max=1.0)
    k = torch.as_tensor(k).long()
    return torch.where(k < 0, torch.zeros_like(cdf[0]), cdf[k.clamp(0, n)])


def p_values(loss_sum: torch.Tensor, n: int, alpha: float, bound: str = "binomial", width: float = 1.0
             ) -> torch.Tensor:
    """p-values ``[T]`` of ``H: R > alpha`` from summed losses ``[T]`` of ``n`` samples (see the module docstring)."""
    r = loss_sum.double() / n
    if bound == "hoeffding":
        return torch.exp(-2 * n * ((alpha - r).clamp(min=0) / width) ** 2)
    if bound == "binomial":
        return binomial_cdf(loss_sum, n, alpha)
    if bound == "hoeffding_bentkus":
        a = r.clamp(max=alpha)
        h = torch.xlogy(a, a / alpha) + torch.xlogy(1 - a, (1 - a) / (1 - alpha))
        bentkus = math.e * binomial_cdf(torch.ceil(n * r - 1e-9), n, alpha)
        return torch.minimum(torch.exp(-n * h), bentkus).clamp(max=1.0)
    raise ConfigError(f"unknown risk bound {bound!r}; choose one of: {', '.join(BOUNDS)}")


@dataclass
class RiskChoice:
    """The outcome of fixed-sequence testing on the calibration split."""

    threshold: float | None  # None: no threshold certified; everyone takes the final exit
    index: int | None  # position of the threshold in ``thresholds``
    thresholds: torch.Tensor  # [T] candidates, from conservative to aggressive
    p_values: torch.Tensor  # [T]
    risks: torch.Tensor  # [T] empirical calibration risk
    rejected: int  # how many leading hypotheses were rejected (the certified thresholds)


def conservative_first(thresholds: torch.Tensor, exit_when: str) -> torch.Tensor:
    """Thresholds ordered from the one where the fewest samples leave early to the one where the most do."""
    t = torch.unique(torch.as_tensor(thresholds, dtype=torch.float64))  # ascending
    return t.flip(0) if exit_when == "above" else t


def check_risk_args(alpha: float, confidence: float, kind: str, bound: str) -> None:
    """ConfigError for a risk level, confidence, risk kind or bound that the procedure cannot use."""
    if kind not in KINDS:
        raise ConfigError(f"unknown risk {kind!r}; choose one of: {', '.join(KINDS)}")
    if bound not in BOUNDS:
        raise ConfigError(f"unknown risk bound {bound!r}; choose one of: {', '.join(BOUNDS)}")
    if not 0 < alpha < 1:
        raise ConfigError(f"risk level must be in (0, 1), got {alpha}; e.g. --risk 0.01 for a 1-point accuracy drop")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}; e.g. --confidence 0.9")
    if kind == "drop" and bound != "hoeffding":
        raise ConfigError("risk 'drop' takes values in {-1, 0, 1}, for which only --risk-bound hoeffding is valid; "
                          "use it, or --risk-kind gap (which bounds the drop with the exact binomial test)")


def risk_threshold(scores: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, costs: torch.Tensor, alpha: float,
                   delta: float, *, exit_when: str = "above", kind: str = "gap", bound: str = "binomial",
                   thresholds: torch.Tensor | None = None) -> RiskChoice:
    """Fixed-sequence Learn-then-Test on calibration scores/predictions ``[E, N]`` and labels ``[N]``: the
    cheapest threshold certified to have risk at most ``alpha`` with probability ``1 - delta`` (module docstring).

    ``costs``: cumulative FLOPs per exit ``[E]`` (or ``[E, N]`` per sample, where :func:`simulate` takes them).
    ``thresholds`` default to every distinct running maximum of the scores and one beyond them (all of them, never
    quantiles: the module docstring proves the guarantee for exactly these candidates, ties included).
    """
    check_risk_args(alpha, 1 - delta, kind, bound)
    E, N = scores.shape
    cand = score_thresholds(scores, exit_when, max_n=scores.numel() + 1) if thresholds is None else thresholds
    t = conservative_first(cand, exit_when)
    sums = loss_sums(scores, sample_losses(preds, labels, kind), t, exit_when)
    p = p_values(sums, N, alpha, bound, width=2.0 if kind == "drop" else 1.0)
    failed = torch.nonzero(p > delta).flatten()
    rejected = int(failed[0]) if len(failed) else len(t)
    risks = sums.double() / N
    if rejected == 0:
        return RiskChoice(None, None, t, p, risks, 0)
    cost = simulate(scores, preds, labels, costs, t[:rejected], exit_when).cost  # [rejected]
    i = int(torch.nonzero(cost == cost.min()).flatten()[0])  # the cheapest; ties: the most conservative
    return RiskChoice(float(t[i]), i, t, p, risks, rejected)


def charged(costs) -> torch.Tensor:
    """What a simulation charges from an :class:`exitlab.costs.ExitCosts`: its ``table`` (``[E, N]`` per sample for
    text) where it has one, else the per-exit FLOPs ``[E]``."""
    table = getattr(costs, "table", None)
    return costs.flops if table is None else table


def _at(policy: Policy, logits, labels, costs, threshold: float | None, kind: str) -> dict:
    """Accuracy, risk, cost and exit shares of one threshold on one split (None: everyone at the final exit)."""
    scores, preds = policy.scores(logits)
    table = charged(costs)
    final_cost = float(table[-1].mean())  # per-sample costs (text): the mean cost of the final exit
    if threshold is None:
        t = torch.tensor([math.inf if policy.exit_when == "above" else -math.inf], dtype=torch.float64)
    else:
        t = torch.tensor([threshold], dtype=torch.float64)
    sw = simulate(scores, preds, labels, table, t, policy.exit_when, backbone_flops=costs.backbone_flops)
    final_acc = (preds[-1] == labels).double().mean().item()
    loss = loss_sums(scores, sample_losses(preds, labels, kind), t, policy.exit_when)
    return {"accuracy": sw.accuracy.item(), "final_accuracy": final_acc, "drop": final_acc - sw.accuracy.item(),
            "risk": loss.item() / len(labels), "flops": sw.cost.item(), "fraction": sw.fraction.item(),
            "saved": 1 - sw.cost.item() / final_cost, "exit_fractions": sw.exit_fractions[0].tolist()}


def risk_controlled(policy: Policy, val: tuple, test: tuple, costs, alpha: float, confidence: float = 0.9, *,
                    kind: str = "gap", bound: str = "binomial", val_costs=None) -> dict:
    """Choose ``policy``'s threshold on the calibration (validation) logits and labels ``val`` with risk at most
    ``alpha`` at ``confidence``, and report it on ``test``: accuracy, the drop against the final exit, the risk, mean
    FLOPs (from ``costs``, an :class:`exitlab.costs.ExitCosts` of the test split) and the share of the final exit's
    FLOPs saved. ``val_costs``: the validation split's own costs where they differ per sample (default ``costs``)."""
    vc = val_costs or costs
    if policy.task != "classification":
        raise ConfigError(f"risk control is defined here for classification (a 0-1 loss against the final exit); "
                          f"policy {policy.name!r} is a {policy.task} policy, so drop --risk")
    check_risk_args(alpha, confidence, kind, bound)
    scores, preds = policy.scores(val[0])
    E, _, C = val[0].shape
    cand = policy.default_thresholds(E, C) if policy.integer else None  # whole numbers 1..E for patience
    choice = risk_threshold(scores, preds, val[1], charged(vc), alpha, 1 - confidence, exit_when=policy.exit_when,
                            kind=kind, bound=bound, thresholds=cand)
    out = {"risk": kind, "alpha": alpha, "confidence": confidence, "bound": bound, "threshold": choice.threshold,
           "certified": choice.threshold is not None, "calibration_samples": len(val[1]),
           "tested": min(choice.rejected + 1, len(choice.thresholds)), "rejected": choice.rejected,
           "val": _at(policy, *val, vc, choice.threshold, kind), "test": _at(policy, *test, costs, choice.threshold,
                                                                                 kind)}
    if choice.index is not None:
        out["val_p_value"] = choice.p_values[choice.index].item()
    return out


def format_risk(risk: dict) -> list[str]:
    """The risk-control lines of the eval report: per policy, threshold, test drop and compute saved."""
    first = next((r for r in risk.values() if isinstance(r, dict)), None)
    if first is None:  # every policy refused (regression)
        return ["\nrisk control: " + "; ".join(f"{name}: {r}" for name, r in risk.items())]
    lines = [f"\nrisk control ({first['risk']} risk <= {first['alpha']:g} with confidence {first['confidence']:g}, "
             f"{first['bound']} bound, fixed-sequence test on val, {first['calibration_samples']} samples), on test:"]
    for name, r in risk.items():
        if isinstance(r, str):
            lines.append(f"  {name:<11} {r}")
        elif not r["certified"]:
            lines.append(f"  {name:<11} no threshold meets the bound on val: the final exit for everyone "
                         f"(acc {r['test']['accuracy']:.2%})")
        else:
            te = r["test"]
            lines.append(f"  {name:<11} t={r['threshold']:<8.4g} acc {te['accuracy']:.2%} (final "
                         f"{te['final_accuracy']:.2%}, drop {te['drop']:+.2%}, risk {te['risk']:.2%}) at "
                         f"{te['fraction']:.1%} of backbone FLOPs, {te['saved']:.1%} saved vs the final exit")
    return lines


__all__ = ["BOUNDS", "KINDS", "RiskChoice", "binomial_cdf", "charged", "format_risk", "loss_sums", "p_values",
           "risk_controlled", "risk_threshold", "sample_losses"]
