"""Failure prediction per exit: how well an exit's confidence tells its right answers from its wrong ones.

An early exit is only as good as its exit rule's ranking: a threshold lets the most confident samples go, so what
matters is whether the confident ones are the right ones, not whether the confidence is calibrated (ECE). Two
threshold-free measures of that ranking, per exit, for a score oriented so that higher means "more sure"
(max softmax as it is; a ``"below"`` policy's score, e.g. entropy, negated):

- **AUROC** (higher is better; 0.5 = chance): the probability that a right answer scores higher than a wrong one,
  ties counted as half: the Mann-Whitney statistic ``P(s_right > s_wrong) + P(s_right = s_wrong) / 2``, computed
  from ranks with tied scores given their average rank. Undefined (``None``, shown ``n/a``) when the exit is right on
  every sample or wrong on every sample: there is no pair to rank.
- **AURC** (lower is better): the area under the risk-coverage curve (Geifman et al. 2018). Sort the ``N`` samples
  by decreasing score; at coverage ``k / N`` (``k = 1..N``) the selective risk is the error rate among the ``k`` most
  confident; AURC is the mean of those ``N`` risks. Ties are resolved deterministically by their expectation: within
  a group of tied scores the errors are spread evenly (the group's error rate per sample), which is exactly the mean
  of the AURC over every ordering of the tied samples, so the value never depends on sort order. Always defined:
  0 when every answer is right, 1 when every answer is wrong. Its floor for a given accuracy ``a`` (a perfect
  ranking) is ``1/N sum_{k > aN} (k - aN) / k``, not 0, so compare AURC between exits of similar accuracy.

arXiv 2508.21495 argues that these predict early-exit efficiency better than calibration error does.
"""

from __future__ import annotations

import torch


def mann_whitney(pos: torch.Tensor, neg: torch.Tensor) -> float | None:
    """AUROC of scores ``pos`` ``[P]`` against ``neg`` ``[Q]``: ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``, from
    average ranks; None when either side is empty."""
    P, Q = len(pos), len(neg)
    if P == 0 or Q == 0:
        return None
    s = torch.cat([pos, neg]).double()
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)  # values ascending
    ends = counts.cumsum(0).double()  # rank of the last member of each tie group (1-based)
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # [P + Q]: average rank within ties
    return ((ranks[:P].sum() - P * (P + 1) / 2) / (P * Q)).item()


def aurc(score: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk-coverage curve of one exit: scores ``[N]`` (higher = more sure), ``correct`` ``[N]`` bool;
    ties by expectation (module docstring)."""
    N = len(score)
    if N == 0:
        raise ValueError("AURC needs at least one sample")
    _, inverse, counts = torch.unique(-score.double(), return_inverse=True, return_counts=True)  # most sure first
    wrong = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, (~correct.bool()).double())
    before = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])  # samples in earlier groups
    wrong_before = torch.cat([torch.zeros(1, dtype=torch.float64), wrong.cumsum(0)[:-1]])
    group = torch.repeat_interleave(torch.arange(len(counts)), counts)  # [N]: group of the k-th most sure sample
    k = torch.arange(1, N + 1, dtype=torch.float64)
    errors = wrong_before[group] + (k - before[group]) * (wrong / counts)[group]  # expected errors among the top k
    return (errors / k).mean().item()


def failure_metrics(scores: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, exit_when: str = "above"
                    ) -> list[dict]:
    """Per exit, ``{"auroc", "aurc"}`` of scores ``[E, N]`` for telling right predictions ``preds`` ``[E, N]`` from
    wrong ones (labels ``[N]``). ``exit_when="below"`` scores (lower = more sure) are negated first."""
    oriented = scores if exit_when == "above" else -scores
    right = preds == labels[None]  # [E, N]
    return [{"auroc": mann_whitney(s[r], s[~r]), "aurc": aurc(s, r)} for s, r in zip(oriented, right)]


def confidence_failure(logits: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """:func:`failure_metrics` of every exit's max softmax (in float32, as the confidence policy computes it, so
    its exact ties such as 1.0 stay ties) and its argmax, from ``[E, N, C]`` logits."""
    conf, pred = logits.float().softmax(-1).max(-1)  # [E, N]
    return failure_metrics(conf, pred, labels)


__all__ = ["aurc", "confidence_failure", "failure_metrics", "mann_whitney"]
