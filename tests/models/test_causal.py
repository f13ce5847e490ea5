"""Causal LMs with exits: the ordered-blocks contract, heads, loading, refusals, and FLOPs per token."""

import pytest
import torch

pytest.importorskip("transformers")

from exitlab.errors import ConfigError  # noqa: E402
from exitlab.models import model_from_spec  # noqa: E402
from exitlab.models.causal import exit_logits, flops_per_token, from_hf_causal, tiny_llama  # noqa: E402
from exitlab.models.flops import count_flops  # noqa: E402

V = 53


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(vocab_size=V, layers=4, hidden=32, heads=2, context=64, seed=1)


def test_final_exit_is_the_plain_lm_and_exits_are_the_truncated_lm(lm):
    m = from_hf_causal(lm, exits=[0, 2])
    ids = torch.randint(0, V, (2, 9))
    outs = m(ids)
    assert [o.shape for o in outs] == [(2, 9, V)] * 3
    torch.testing.assert_close(outs[-1], lm(ids).logits, rtol=0, atol=0)
    # the shared exit after layer 2 is what transformers' assistant_early_exit=3 drafts with: 3 layers, norm, head
    h = lm.model.embed_tokens(ids)
    ref = lm.model(ids, output_hidden_states=True).hidden_states[3]  # after 3 layers
    torch.testing.assert_close(outs[1], lm.lm_head(lm.model.norm(ref)))
    assert h.shape == (2, 9, 32)


def test_per_exit_heads_start_as_copies_of_the_final_one_and_train_alone(lm):
    m = from_hf_causal(lm, exits=[1], head="lm")
    ids = torch.randint(0, V, (1, 6))
    shared = from_hf_causal(lm, exits=[1])
    torch.testing.assert_close(m(ids)[0], shared(ids)[0])
    assert sum(p.numel() for p in m.head_parameters()) == 32 * V + 32
    assert sum(p.numel() for p in shared.head_parameters()) == 0  # LayerSkip's exits own nothing
    rnd = from_hf_causal(lm, exits=[1], head="lm", init="random")
    assert not torch.allclose(rnd(ids)[0], shared(ids)[0])


def test_rebuilt_from_spec_with_the_weights_gives_the_same_logits(lm):
    m = from_hf_causal(lm, exits=[0, 1], head="lm")
    again = model_from_spec(m.spec)
    again.load_state_dict(m.state_dict())
    ids = torch.randint(0, V, (2, 5))
    for a, b in zip(m(ids), again(ids)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_folder_holding_a_causal_lm_loads_and_an_encoder_is_refused(lm, tmp_path):
    lm.save_pretrained(tmp_path / "lm")
    m = from_hf_causal(str(tmp_path / "lm"), exits="every:2")
    assert m.exits == [1] and m.spec.source == str(tmp_path / "lm")
    ids = torch.randint(0, V, (1, 4))
    torch.testing.assert_close(m(ids)[-1], lm(ids).logits)
    import transformers

    bert = transformers.BertModel(transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="holds a bert encoder, not a causal LM"):
        from_hf_causal(str(tmp_path / "bert"))
    with pytest.raises(ConfigError, match="not a model folder"):
        from_hf_causal(str(tmp_path / "nothing"))


def test_bad_exits_and_inputs_get_one_clear_line(lm):
    with pytest.raises(ConfigError, match="past the last layer"):
        from_hf_causal(lm, exits=[5])
    with pytest.raises(ConfigError, match="head 'shared'"):
        from_hf_causal(lm, head="sdn")
    m = from_hf_causal(lm, exits=[0])
    with pytest.raises(ConfigError, match="longer than this model's context"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ConfigError, match="tokenizer does not fit the model"):
        m(torch.full((1, 3), V))


def test_flops_per_token_against_flop_counter_mode(lm):
    m = from_hf_causal(lm, exits=[0, 1, 2], head="lm")
    T = 16
    got = flops_per_token(m, context=T)
    ids = torch.zeros(1, T, dtype=torch.long)
    with torch.no_grad():
        final = count_flops(lambda: lm(ids).logits).total / T
    assert got[-1] == final  # the final exit is the plain model's forward
    # by hand: per layer q,k,v,o (4 d^2) + MLP (3 d f) multiply-adds per token, attention 2 T d per token on average
    d, f = 32, lm.config.intermediate_size
    layer = 2 * (4 * d * d + 3 * d * f) + 2 * 2 * d * T
    head = 2 * d * V
    assert got == [(j + 1) * layer + head for j in range(3)] + [4 * layer + head]
    assert got == sorted(got)
    torch.testing.assert_close(exit_logits(m, ids, 1), m(ids)[1])


def test_a_tied_lm_head_is_untied_with_the_same_values_and_saves(tmp_path):
    import exitlab

    lm = tiny_llama(vocab_size=V, layers=2, hidden=16, heads=2, context=8, tie=True)
    ids = torch.randint(0, V, (1, 5))
    before = lm(ids).logits
    m = from_hf_causal(lm, exits=[0])
    assert lm.lm_head.weight is not lm.model.embed_tokens.weight
    torch.testing.assert_close(m(ids)[-1], before, rtol=0, atol=0)
    exitlab.save_pretrained(m, tmp_path / "m")
    torch.testing.assert_close(exitlab.load(tmp_path / "m")(ids)[-1], before, rtol=0, atol=0)


def test_the_model_description_round_trips_through_json(lm):
    from exitlab.models import CausalSpec, spec_from_json

    m = from_hf_causal(lm, exits=[0, 2], head="lm", init="random")
    assert isinstance(m.spec, CausalSpec) and m.spec.rebuildable
    assert spec_from_json(m.spec.to_json()) == m.spec
