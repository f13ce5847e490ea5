"""FLOPs of a text encoder at each sample's real token length: one encoder layer matches a hand count at two
lengths (attention grows with the square of the length), and real early exit reports per-sample costs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.evaluation.inference import early_exit  # noqa: E402
from exitlab.evaluation.policies import make_policy  # noqa: E402
from exitlab.models.costs import exit_costs, length_costs  # noqa: E402
from exitlab.models.hf import pack  # noqa: E402
from tests.models.test_hf import C, batch, tiny  # noqa: E402

D, FF = 32, 64  # tiny(): hidden size and intermediate size


def layer_flops(n: int) -> int:
    """One BERT layer on n tokens, 2 FLOPs per multiply-add: Q, K, V and output projections (4 n D^2 MACs), the
    scores and the weighted sum (2 n^2 D MACs over all heads), the feed-forward block (2 n D FF MACs)."""
    return 2 * (4 * n * D * D + 2 * n * n * D + 2 * n * D * FF)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_one_encoder_layer_matches_the_hand_count_at_two_lengths(attn):
    model = exitlab.from_hf(tiny("bert", attn=attn), exits=[0, 1, 2])
    for n in (5, 12):
        flops = exit_costs(model, (3, n)).flops  # [E] cumulative
        assert flops[0] == layer_flops(n) + 2 * D * C  # embeddings are lookups: layer 0 and the linear IC
        assert flops[1] - flops[0] == layer_flops(n) + 2 * D * C  # one more layer and its IC (cumulative: every
        pooler_and_classifier = 2 * D * D + 2 * D * C  # head on the way counts)
        assert flops[3] - flops[2] == layer_flops(n) + pooler_and_classifier
    assert layer_flops(12) - 12 / 5 * layer_flops(5) > 0  # the quadratic term: not proportional to length


def test_early_exit_reports_each_samples_cost_at_its_own_length():
    model = exitlab.from_hf(tiny("bert"), exits=[0, 1, 2]).eval()
    ids, mask = batch(9, width=14, seed=2)
    lengths = mask.sum(1)
    costs = length_costs(model, lengths)  # [E, B]
    assert costs.shape == (4, 9) and bool((costs[1:] > costs[:-1]).all())
    for i in range(9):
        assert torch.equal(costs[:, i], exit_costs(model, (3, int(lengths[i]))).flops)
    pol = make_policy("confidence")
    with torch.no_grad():
        scores, _ = pol.scores(torch.stack(model(pack(ids, mask))))
    res = early_exit(model, pack(ids, mask), pol, scores[0].median().item(), costs=costs)
    assert torch.equal(res.flops, costs[res.exits, torch.arange(9)])
    assert len(set(res.exits.tolist())) > 1
    with pytest.raises(exitlab.errors.ConfigError, match="at least one token"):
        length_costs(model, [3, 0])
