"""Per-token early exit in decoding (CALM): the threshold, the KV rules for skipped layers, and batches."""

import pytest
import torch

pytest.importorskip("transformers")

from exitlab.errors import ConfigError  # noqa: E402
from exitlab.evaluation.calm import confident_decode, fill_kv  # noqa: E402
from exitlab.evaluation.speculative import SlotCache, greedy  # noqa: E402
from exitlab.models.causal import causal_mask, from_hf_causal  # noqa: E402
from tests.evaluation.test_speculative import _lm  # noqa: E402

PROMPTS = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11]]


@pytest.fixture(scope="module")
def model():
    return from_hf_causal(_lm(), exits=[0, 1, 2])


def test_copy_rule_fills_the_cache_exactly_as_the_layer_would_from_the_exited_state(model):
    bb = model.backbone
    h = torch.randn(2, 1, 32, dtype=torch.float64)
    rope = bb.rotary(h, torch.tensor([[3], [5]]))
    ran, filled = SlotCache(4), SlotCache(4)
    bb.layer_step(2, h, causal_mask(torch.ones(2, 1, dtype=torch.bool), 1, h.dtype), rope, ran)
    fill_kv(bb.layers[2], h, rope, filled, 2)
    torch.testing.assert_close(filled.k[2], ran.k[2])
    torch.testing.assert_close(filled.v[2], ran.v[2])


def test_threshold_above_one_is_plain_greedy_and_lower_thresholds_exit_earlier(model):
    ref = greedy(model, PROMPTS, 16).tokens
    never = confident_decode(model, PROMPTS, 16, threshold=1.01)
    assert never.tokens == ref and never.mean_depth == 1.0
    depths = [confident_decode(model, PROMPTS, 16, threshold=t).mean_depth for t in (0.9, 0.5, 0.2, 0.05)]
    assert depths == sorted(depths, reverse=True) and depths[-1] < 0.5


@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_projection_only_path_batches_and_rows_alone_give_the_same_tokens(model, threshold):
    fast = confident_decode(model, PROMPTS, 12, threshold=threshold)
    slow = confident_decode(model, PROMPTS, 12, threshold=threshold, skip_when_all_left=False)
    assert fast.tokens == slow.tokens and fast.depth == slow.depth
    alone = [confident_decode(model, [p], 12, threshold=threshold).tokens[0] for p in PROMPTS]
    assert fast.tokens == alone


def test_recompute_rule_differs_from_copy_only_through_the_cache(model):
    copy = confident_decode(model, PROMPTS, 16, threshold=0.5, kv="copy")
    exact = confident_decode(model, PROMPTS, 16, threshold=0.5, kv="recompute")
    assert copy.depth[0][0] == exact.depth[0][0]  # the first token sees no approximate entry: same exit
    with pytest.raises(ConfigError, match="kv rule"):
        confident_decode(model, PROMPTS, 2, threshold=0.5, kv="zero")
    with pytest.raises(ConfigError, match="threshold"):
        confident_decode(model, PROMPTS, 2, threshold=0.0)
