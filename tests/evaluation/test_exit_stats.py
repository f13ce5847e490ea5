"""Evaluation extras (exitlab.evaluation.exit_stats, exitlab.evaluation.ood): hand-computed values on tiny logits."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from exitlab.evaluation.exit_stats import (
    exit_extras,
    hindsight_improvability,
    overthinking,
    per_class_exits,
    topk_accuracy,
)
from exitlab.evaluation.ood import auroc, ood_detection
from exitlab.evaluation.policies import make_policy

C = 7


def one_hot_logits(preds: list[list[int]], num_classes: int = C) -> torch.Tensor:
    return F.one_hot(torch.tensor(preds), num_classes).float() * 5  # [E, N, C]


# exit 0 is right on samples 0-4, exit 1 on 0, 1, 3, the final exit on 0, 2, 4
PREDS = [[0, 1, 2, 3, 4, 6], [0, 1, 0, 3, 0, 0], [0, 0, 2, 0, 4, 6]]
LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def test_overthinking_by_hand():
    ot = overthinking(one_hot_logits(PREDS), LABELS)
    # right at the IC and wrong at the final exit: exit 0 -> samples 1, 3; exit 1 -> samples 1, 3
    assert ot["per_exit"] == pytest.approx([2 / 6, 2 / 6])
    assert ot["any"] == pytest.approx(2 / 6)


def test_overthinking_any_counts_each_sample_once():
    # sample 0 right at IC 1 only, sample 1 at IC 0 only, sample 2 at both; the final exit wrong on all three
    preds = [[1, 1, 2], [0, 0, 2], [2, 2, 3]]
    ot = overthinking(one_hot_logits(preds), torch.tensor([0, 1, 2]))
    assert ot["per_exit"] == pytest.approx([2 / 3, 2 / 3]) and ot["any"] == 1.0


def test_hindsight_improvability_by_hand():
    hi = hindsight_improvability(one_hot_logits(PREDS), LABELS)
    # exit 1 is wrong on 2, 4, 5, of which exit 0 got 2 and 4 right; the final exit is wrong on 1, 3, 5, of which
    # 1 and 3 were right earlier
    assert hi == pytest.approx([0.0, 2 / 3, 2 / 3])
    assert hindsight_improvability(one_hot_logits([[0, 1], [0, 1]]), torch.tensor([0, 1])) == [0.0, None]


def test_top5_by_hand_and_only_with_ten_classes():
    ranks = [[0, 4, 5], [6, 6, 6]]  # the label's rank per exit and sample (0 = top)
    labels = torch.tensor([3, 7, 11])
    z = torch.zeros(2, 3, 12)
    for e, n in itertools.product(range(2), range(3)):
        order = [c for c in range(12) if c != labels[n]]
        order.insert(ranks[e][n], int(labels[n]))
        z[e, n, order] = torch.arange(12, 0, -1).float()  # order[0] gets the largest logit
    assert topk_accuracy(z, labels, 5) == pytest.approx([2 / 3, 0.0])
    assert topk_accuracy(z, labels, 1) == pytest.approx([1 / 3, 0.0])
    assert topk_accuracy(one_hot_logits(PREDS), LABELS) is None  # 7 classes


def test_per_class_exits_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    exits = torch.tensor([0, 2, 1, 1, 2, 0])
    correct = torch.tensor([True, False, True, True, False, True])
    out = per_class_exits(exits, correct, labels, 3, 4, ["a", "b", "c", "d"])
    assert [c["samples"] for c in out] == [2, 3, 1, 0]
    assert out[0]["exit_fractions"] == [0.5, 0.0, 0.5] and out[0]["accuracy"] == 0.5
    assert out[1]["exit_fractions"] == pytest.approx([0, 2 / 3, 1 / 3]) and out[1]["accuracy"] == pytest.approx(2 / 3)
    assert out[2]["exit_fractions"] == [1.0, 0.0, 0.0] and out[2]["accuracy"] == 1.0
    assert out[3] == {"class": 3, "name": "d", "samples": 0, "exit_fractions": None, "accuracy": None}


class _Costs:
    def __init__(self, flops):
        self.flops = torch.as_tensor(flops, dtype=torch.float64)
        self.backbone_flops = float(self.flops[-1])


def test_exit_extras_per_class_at_the_validation_threshold():
    """Confidence at exit 0 is 1.0 for class 0 and flat otherwise; a 50% budget on val picks a threshold at which
    exactly the class-0 samples leave at exit 0."""
    labels = torch.arange(14) % C
    z = torch.zeros(2, 14, C)
    z[1, torch.arange(14), labels] = 10.0  # the final exit is confident and right
    z[0, labels == 0, 0] = 20.0  # exit 0: sure of class 0 samples, flat on the others
    res = exit_extras(make_policy("confidence"), z, labels, (z, labels), _Costs([1.0, 2.0]), budget=0.95)
    pc = res["per_class"]
    assert pc["threshold"] is not None and pc["threshold"] > 1 / C
    assert pc["classes"][0]["exit_fractions"] == [1.0, 0.0] and pc["classes"][0]["accuracy"] == 1.0
    assert all(c["exit_fractions"] == [0.0, 1.0] and c["accuracy"] == 1.0 for c in pc["classes"][1:])
    assert res["top5"] is None and res["improvability"][1] is None  # the final exit is never wrong


def test_auroc_by_hand_with_ties():
    # pairs (pos, neg): 0.9 beats both, 0.8 beats both, 0.5 ties 0.5 (1/2) and beats 0.3 -> 5.5 / 6
    assert auroc(torch.tensor([0.9, 0.8, 0.5]), torch.tensor([0.5, 0.3])) == pytest.approx(5.5 / 6)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    assert auroc(torch.tensor([0.1]), torch.tensor([0.2, 0.3])) == 0.0


def test_auroc_equals_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    pos = (torch.rand(40, generator=g) * 10).round() / 10  # many ties
    neg = (torch.rand(30, generator=g) * 10).round() / 10 - 0.1
    pairs = sum((p > q) + 0.5 * (p == q) for p in pos.tolist() for q in neg.tolist()) / (40 * 30)
    assert auroc(pos, neg) == pytest.approx(pairs, abs=1e-12)


def test_ood_detection_per_exit_and_along_thresholds():
    g = torch.Generator().manual_seed(1)
    E, N, M = 3, 60, 40
    id_logits = torch.randn(E, N, C, generator=g)
    id_logits[:, torch.arange(N), torch.arange(N) % C] += torch.tensor([1.0, 3.0, 6.0])[:, None]  # sharper later
    ood_logits = torch.randn(E, M, C, generator=g) * 0.5
    costs = _Costs([1.0, 2.0, 4.0])
    for name in ("confidence", "entropy"):
        res = ood_detection(make_policy(name), id_logits, ood_logits, costs)
        msp_id, msp_ood = id_logits.softmax(-1).amax(-1), ood_logits.softmax(-1).amax(-1)
        for j, e in enumerate(res["per_exit"]):
            pairs = (msp_id[j][:, None] > msp_ood[j][None]).double().mean().item()  # no ties in continuous data
            assert e["auroc_msp"] == pytest.approx(pairs) and e["flops"] == costs.flops[j]
        if name == "confidence":
            assert [e["auroc_score"] for e in res["per_exit"]] == [e["auroc_msp"] for e in res["per_exit"]]
        curve = res["curve"]
        i_final = curve["flops"].index(max(curve["flops"]))
        assert curve["flops"][i_final] == 4.0 and curve["auroc_msp"][i_final] == res["per_exit"][-1]["auroc_msp"]
        assert all(1.0 <= f <= 4.0 for f in curve["flops"]) and len(curve["flops"]) == len(curve["thresholds"])
