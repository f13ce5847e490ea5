"""Failure prediction per exit (evaluation.failure): AUROC and AURC against hand computations with ties, brute
force over tie orderings, the all-right/all-wrong edge cases, and orientation of "below" policies."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from exitlab.evaluation.failure import aurc, confidence_failure, failure_metrics, mann_whitney
from exitlab.evaluation.policies import make_policy


def test_auroc_and_aurc_by_hand_on_a_tiny_example_with_ties():
    """Scores 0.9, 0.8, 0.8, 0.5; right, wrong, right, wrong.
    AUROC: pairs (right, wrong) = (0.9, 0.8) 1, (0.9, 0.5) 1, (0.8, 0.8) 1/2, (0.8, 0.5) 1 -> 3.5 / 4.
    AURC: coverage 1: {0.9} risk 0; coverage 2: 0.9 and half of the tied pair, whose error rate is 1/2 -> 0.5 / 2;
    coverage 3: one error in three -> 1/3; coverage 4: 2/4. Mean (0 + 1/4 + 1/3 + 1/2) / 4 = 13/48."""
    score = torch.tensor([0.9, 0.8, 0.8, 0.5])
    right = torch.tensor([True, False, True, False])
    assert mann_whitney(score[right], score[~right]) == pytest.approx(3.5 / 4)
    assert aurc(score, right) == pytest.approx(13 / 48)
    # the two orderings of the tie give 5/24 and 8/24; the tie rule is their mean, whatever the input order
    assert aurc(score.flip(0), right.flip(0)) == pytest.approx(13 / 48)


def _aurc_over_orderings(score: list[float], right: list[bool]) -> float:
    """Brute force: the mean over every ordering of the samples consistent with decreasing score of the mean
    selective risk at coverages 1..N."""
    n, total, count = len(score), 0.0, 0
    for perm in itertools.permutations(range(n)):
        if any(score[perm[i]] < score[perm[i + 1]] for i in range(n - 1)):
            continue
        errors = 0
        risks = []
        for k, i in enumerate(perm, 1):
            errors += not right[i]
            risks.append(errors / k)
        total += sum(risks) / n
        count += 1
    return total / count


def _auroc_by_pairs(score: list[float], right: list[bool]) -> float:
    pairs = [(a, b) for a, ra in zip(score, right) if ra for b, rb in zip(score, right) if not rb]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(6))
def test_both_equal_brute_force_on_small_tied_samples(seed):
    g = torch.Generator().manual_seed(seed)
    score = (torch.randint(0, 3, (7,), generator=g).double() / 2).tolist()  # many ties among 0, 0.5, 1
    right = (torch.rand(7, generator=g) < 0.6).tolist()
    right[0], right[1] = True, False  # both classes present
    s, r = torch.tensor(score), torch.tensor(right)
    assert aurc(s, r) == pytest.approx(_aurc_over_orderings(score, right), abs=1e-12)
    assert mann_whitney(s[r], s[~r]) == pytest.approx(_auroc_by_pairs(score, right), abs=1e-12)


def test_perfect_and_reversed_rankings():
    score = torch.tensor([0.9, 0.7, 0.4, 0.2])
    right = torch.tensor([True, True, False, False])
    assert mann_whitney(score[right], score[~right]) == 1.0
    assert aurc(score, right) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)  # the floor at 50% accuracy
    assert mann_whitney(score[~right], score[right]) == 0.0
    assert aurc(score, ~right) == pytest.approx((1 + 1 + 2 / 3 + 2 / 4) / 4)
    flat = torch.full((4,), 0.5)  # no information: every ordering equally likely -> the error rate at every coverage
    assert mann_whitney(flat[right], flat[~right]) == 0.5 and aurc(flat, right) == pytest.approx(0.5)


def test_all_right_or_all_wrong_give_one_clear_value_never_nan():
    score = torch.tensor([0.3, 0.9, 0.9])
    everyone = torch.ones(3, dtype=torch.bool)
    assert mann_whitney(score[everyone], score[~everyone]) is None  # no wrong answer to rank against: n/a
    assert mann_whitney(score[~everyone], score[everyone]) is None
    assert aurc(score, everyone) == 0.0 and aurc(score, ~everyone) == 1.0
    rows = failure_metrics(torch.stack([score, score]), torch.tensor([[0, 0, 0], [1, 1, 1]]), torch.zeros(3).long())
    assert rows == [{"auroc": None, "aurc": 0.0}, {"auroc": None, "aurc": 1.0}]
    with pytest.raises(ValueError, match="at least one sample"):
        aurc(torch.empty(0), torch.empty(0, dtype=torch.bool))


def test_below_policies_are_oriented_so_that_lower_means_more_sure():
    """Entropy: low entropy = sure. Its AUROC must match that of minus the entropy, and be high on logits where the
    confident samples are the right ones."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (400,), generator=g)
    logits = torch.randn(2, 400, 7, generator=g)
    easy = torch.rand(400, generator=g) < 0.5
    logits[:, torch.arange(400), labels] += torch.where(easy, 6.0, 0.0)
    ent = make_policy("entropy")
    scores, preds = ent.scores(logits)
    rows = failure_metrics(scores, preds, labels, ent.exit_when)
    above = failure_metrics(-scores, preds, labels, "above")
    assert rows == above and all(r["auroc"] > 0.8 for r in rows)
    conf = confidence_failure(logits, labels)
    assert all(c["auroc"] > 0.8 and c["aurc"] < 0.3 for c in conf)
    flipped = failure_metrics(scores, preds, labels, "above")  # wrongly oriented: worse than chance
    assert all(f["auroc"] < 0.2 for f in flipped)


def test_float32_ties_at_one_are_kept():
    """Over-confident logits saturate the float32 softmax at exactly 1.0: those samples are one tie group."""
    logits = torch.tensor([[[40.0, 0.0], [50.0, 0.0], [45.0, 0.0], [0.0, 0.1]]])  # [1, 4, 2]
    labels = torch.tensor([0, 1, 0, 1])  # the second saturated sample is wrong
    conf = logits.float().softmax(-1).max(-1).values[0]
    assert conf[:3].tolist() == [1.0, 1.0, 1.0]
    got = confidence_failure(logits, labels)[0]
    right = torch.tensor([True, False, True, True])
    assert got["auroc"] == pytest.approx(_auroc_by_pairs(conf.tolist(), right.tolist()))
    assert got["aurc"] == pytest.approx(_aurc_over_orderings(conf.tolist(), right.tolist()))
    assert not math.isnan(got["aurc"])
