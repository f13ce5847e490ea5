"""Self-speculative decoding: token-for-token plain greedy at batch 1 and ragged batches, transformers' early-exit
assisted generation, and the refusals."""

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from exitlab.errors import ConfigError  # noqa: E402
from exitlab.evaluation.speculative import greedy, rotate, self_speculative  # noqa: E402
from exitlab.models.causal import from_hf_causal, tiny_llama  # noqa: E402

V = 61


def _lm(dtype=torch.float64):
    # a larger init spread than Llama's 0.02 so that greedy text is not one repeated token
    lm = tiny_llama(vocab_size=V, layers=4, hidden=32, heads=4, kv_heads=2, context=96, seed=3)
    with torch.no_grad():
        for p in lm.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return lm.to(dtype).eval()


@pytest.fixture(scope="module")
def lm():
    return _lm()


def _hf_greedy(lm, prompt, n):
    ids = torch.tensor([prompt])
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def test_rotate_rolls_each_row_by_its_own_shift():
    t = torch.arange(8).view(2, 4)
    assert rotate(t, torch.tensor([1, 3]), 1).tolist() == [[3, 0, 1, 2], [5, 6, 7, 4]]


def test_batch_one_equals_plain_greedy_of_the_full_model(lm):
    m = from_hf_causal(lm, exits=[0, 1, 2])
    prompt = _prompts([6])[0]
    ref = _hf_greedy(lm, prompt, 30)
    assert len(set(ref)) > 5  # not a degenerate repetition
    assert greedy(m, [prompt], 30).tokens == [ref]
    for layer in (0, 1, 2):
        for k in (1, 3, 6):
            out = self_speculative(m, [prompt], 30, draft_layer=layer, draft_tokens=k)
            assert out.tokens == [ref], (layer, k)


def test_ragged_batch_with_different_acceptance_counts_equals_each_prompt_alone(lm):
    m = from_hf_causal(lm, exits=[2])
    prompts = _prompts([7, 1, 12, 3, 5], seed=1)
    ref = [_hf_greedy(lm, p, 25) for p in prompts]
    assert greedy(m, prompts, 25).tokens == ref
    out = self_speculative(m, prompts, 25, draft_layer=2, draft_tokens=4)
    assert out.tokens == ref
    rows_differ = [len(set(r)) > 1 for r in out.per_round]
    assert any(rows_differ)  # some round accepted different numbers of drafts in different rows
    assert 0 < out.acceptance < 1


def test_per_exit_heads_draft_and_the_output_is_still_the_full_model(lm):
    m = from_hf_causal(lm, exits=[1], head="lm", init="random")
    prompts = _prompts([4, 9], seed=2)
    ref = [_hf_greedy(lm, p, 12) for p in prompts]
    assert self_speculative(m, prompts, 12, draft_layer=1, draft_tokens=3).tokens == ref


@pytest.mark.skipif("assistant_early_exit" not in inspect.signature(transformers.GenerationConfig).parameters
                    and not hasattr(transformers.GenerationConfig(), "assistant_early_exit"),
                    reason="this transformers has no generate(assistant_early_exit=...)")
def test_equals_transformers_early_exit_assisted_generation_at_batch_one():
    lm = _lm(torch.float32)
    m = from_hf_causal(lm, exits=[0, 1, 2])
    prompt = _prompts([5], seed=4)[0]
    ids = torch.tensor([prompt])
    for E in (1, 3):
        hf = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                         assistant_early_exit=E, pad_token_id=0)[0, len(prompt):].tolist()
        assert self_speculative(m, [prompt], 20, draft_layer=E - 1, draft_tokens=5).tokens == [hf]
    with pytest.raises(ValueError, match="batch_size = 1"):  # what exitlab adds: batches
        lm.generate(torch.tensor([prompt, prompt]), max_new_tokens=2, do_sample=False, assistant_early_exit=1,
                    pad_token_id=0)


def test_bad_input_one_clear_line_each(lm):
    m = from_hf_causal(lm, exits=[1], head="lm")
    shared = from_hf_causal(lm, exits=[1])
    with pytest.raises(ConfigError, match="past the last layer"):
        self_speculative(shared, [[1, 2]], 3, draft_layer=4)
    with pytest.raises(ConfigError, match="is the final layer"):
        self_speculative(shared, [[1, 2]], 3, draft_layer=3)
    with pytest.raises(ConfigError, match="has no head"):
        self_speculative(m, [[1, 2]], 3, draft_layer=0)
    with pytest.raises(ConfigError, match="longer than this model's context"):
        self_speculative(shared, [[1] * 90], 10, draft_layer=1)
    with pytest.raises(ConfigError, match="tokenizer does not fit the model"):
        self_speculative(shared, [[1, V + 3]], 3, draft_layer=1)
    with pytest.raises(ConfigError, match="left-padded"):
        ids = torch.tensor([[1, 2, 0]])
        self_speculative(shared, (ids, torch.tensor([[1, 1, 0]])), 3, draft_layer=1)


def test_per_exit_lm_metrics_agree_with_their_definitions(lm):
    from exitlab.evaluation.lm_metrics import lm_exit_metrics

    m = from_hf_causal(lm, exits=[0, 2])
    g = torch.Generator().manual_seed(5)
    seq = torch.randint(0, V, (4, 11), generator=g)
    x, y = seq[:, :-1], seq[:, 1:]
    rows = lm_exit_metrics(m, x, y, prompts=3, prompt_tokens=4, new_tokens=6, draft_tokens=2)
    assert [r["layer"] for r in rows] == [0, 2, 3] and rows[-1]["agreement"] == 1.0 and rows[-1]["acceptance"] is None
    with torch.no_grad():
        logits = m(x)
    ce = torch.nn.functional.cross_entropy(logits[0].reshape(-1, V).float(), y.reshape(-1))
    assert rows[0]["perplexity"] == pytest.approx(float(ce.exp()), rel=1e-6)
    assert rows[1]["agreement"] == pytest.approx(float((logits[1].argmax(-1) == logits[2].argmax(-1)).double().mean()))
    sp = self_speculative(m, x[:3, :4].tolist(), 6, draft_layer=2, draft_tokens=2)
    assert rows[1]["acceptance"] == sp.acceptance


def test_texts_through_a_tokenizer_are_left_padded_and_bad_tokenizers_refused(lm):
    from transformers import PreTrainedTokenizerFast

    from exitlab.data.corpus import as_transformers, train_tokenizer
    from exitlab.evaluation.speculative import encode_prompts

    texts = ["Who's there?", "Nay, answer me: stand, and unfold yourself."]
    tok = train_tokenizer(texts * 20, 300)
    big = from_hf_causal(tiny_llama(vocab_size=320, layers=2, hidden=16, heads=2, context=64), exits=[0])
    ids, mask = encode_prompts(big, as_transformers(tok), texts)
    assert bool(mask[:, -1].all()) and not bool(mask[0, 0])  # left-padded: the short text starts late
    assert self_speculative(big, (ids, mask), 4, draft_layer=0).tokens == greedy(big, (ids, mask), 4).tokens
    with pytest.raises(ConfigError, match="no padding token"):
        encode_prompts(big, PreTrainedTokenizerFast(tokenizer_object=tok), texts)
    with pytest.raises(ConfigError, match="does not fit the model"):
        encode_prompts(from_hf_causal(lm, exits=[1]), as_transformers(tok), texts[:1])
