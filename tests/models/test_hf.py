"""Exits on Hugging Face encoders (tiny random configs, no network): the final exit is the model's own forward,
padding changes nothing, every parameter trains, and bad models and exits fail with one clear line."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.errors import ConfigError  # noqa: E402
from exitlab.models.hf import HFEncoder, pack  # noqa: E402

C, V, L = 7, 211, 12
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=V,
            max_position_embeddings=64, num_labels=C)


def tiny(kind: str, *, bare: bool = False, attn: str | None = None, **over):
    """A seeded, randomly initialised tiny encoder of ``kind`` (with its classification head unless ``bare``)."""
    torch.manual_seed(0)
    common = {**TINY, **over}
    if kind == "distilbert":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=4, n_heads=2, hidden_dim=64, vocab_size=V,
                                            max_position_embeddings=64, num_labels=common["num_labels"])
    elif kind == "electra":
        cfg = transformers.ElectraConfig(embedding_size=16, **common)  # projected embeddings
    else:
        cfg = transformers.AutoConfig.for_model(kind, **common)
    auto = transformers.AutoModel if bare else transformers.AutoModelForSequenceClassification
    return auto.from_config(cfg, **({"attn_implementation": attn} if attn else {})).eval()


def batch(n: int = 5, width: int = L, seed: int = 0, min_len: int = 2):
    """Token ids and a right-padded attention mask with mixed real lengths (ids start at 5: no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (n, width), generator=g)
    n_real = torch.randint(min_len, width + 1, (n,), generator=g)
    n_real[0] = width  # one full-length sample
    mask = (torch.arange(width) < n_real[:, None]).long()
    return ids * mask + (1 - mask), mask  # padding id 1 (RoBERTa's)


KINDS = ["bert", "roberta", "electra", "distilbert"]


@pytest.mark.parametrize("kind", KINDS)
def test_final_exit_is_the_models_own_forward_and_exits_are_a_prefix(kind):
    hf = tiny(kind)
    model = exitlab.from_hf(hf, exits=[0, 1, 2]).eval()
    ids, mask = batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        outs = model({"input_ids": ids, "attention_mask": mask})
        part = model.forward_to(pack(ids, mask), 1)
    assert len(outs) == 4 and all(o.shape == (5, C) for o in outs)
    assert torch.allclose(outs[-1], want, atol=1e-5, rtol=1e-5)
    assert len(part) == 2 and all(torch.equal(a, b) for a, b in zip(part, outs[:2]))


@pytest.mark.parametrize("head,attn", [("cls", "sdpa"), ("mean", "eager")])
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_padding_changes_no_exit(kind, head, attn):
    """Every exit's output for a sample is the same in a padded batch as alone at its real length: the attention
    mask reaches every layer and the mean-pooling heads."""
    model = exitlab.from_hf(tiny(kind, attn=attn), exits=[0, 1, 2], head=head, layers=2).eval()
    assert model.backbone.impl == attn
    ids, mask = batch(6)
    with torch.no_grad():
        outs = torch.stack(model(pack(ids, mask)))  # [E, B, C]
        for i in range(6):
            n = int(mask[i].sum())
            alone = torch.stack(model(pack(ids[i:i + 1, :n])))  # [E, 1, C]
            assert torch.allclose(alone[:, 0], outs[:, i], atol=1e-5), (i, n)


def test_a_bare_encoder_gets_an_exitlab_final_head_and_every_parameter_a_gradient():
    model = exitlab.from_hf(tiny("bert", bare=True), exits="every:2", num_labels=C, head="mean")
    assert model.exits == [1] and model.backbone.head is not None
    ids, mask = batch()
    outs = model(pack(ids, mask))
    torch.stack([o.sum() for o in outs]).sum().backward()
    unused = ("pooler",)  # a bare BertModel's pooler is not on the path of the exitlab head
    missing = [n for n, p in model.named_parameters() if p.grad is None and not any(u in n for u in unused)]
    assert len(outs) == 2 and missing == []


def test_every_parameter_of_a_classifier_gets_a_gradient():
    model = exitlab.from_hf(tiny("bert"), exits=[0, 2], cascade=True)
    ids, mask = batch()
    torch.stack([o.sum() for o in model(pack(ids, mask))]).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_bad_models_exits_and_inputs_fail_with_one_clear_line():
    hf = tiny("bert")
    with pytest.raises(ConfigError, match=r"layer indices in 0\.\.2 .*4 layers"):
        exitlab.from_hf(hf, exits=[0, 3])
    with pytest.raises(ConfigError, match="places no IC"):
        exitlab.from_hf(hf, exits="every:4")
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=V))
    with pytest.raises(ConfigError, match="not a supported text encoder"):
        exitlab.from_hf(gpt, num_labels=C)
    mlm = transformers.BertForMaskedLM(hf.config)
    with pytest.raises(ConfigError, match="BertForMaskedLM is neither a sequence classifier nor a bare encoder"):
        exitlab.from_hf(mlm, num_labels=C)
    with pytest.raises(ConfigError, match="7 labels but num_labels=3"):
        HFEncoder(hf, 3)
    with pytest.raises(ConfigError, match="head 'text'"):
        exitlab.MultiExitModel(HFEncoder(hf, C), [0], "pooled")
    with pytest.raises(ConfigError, match="pool must be 'cls' or 'mean'"):
        exitlab.from_hf(hf, exits=[0], head="max")
    model = exitlab.from_hf(hf, exits=[0])
    with pytest.raises(ConfigError, match="65 tokens is longer than .* takes \\(64\\)"):
        model(pack(torch.full((1, 65), 5)))
    with pytest.raises(ConfigError, match="packed \\[B, 3, L\\]"):
        model(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="not load a Hugging Face model|cannot load"):
        exitlab.from_hf("/nonexistent/model/dir", num_labels=C)


def test_a_local_save_pretrained_folder_loads_with_its_weights(tmp_path):
    hf = tiny("roberta")
    hf.save_pretrained(tmp_path / "enc")
    model = exitlab.from_hf(str(tmp_path / "enc"), exits=[1], num_labels=C).eval()
    ids, mask = batch()
    with torch.no_grad():
        assert torch.allclose(model(pack(ids, mask))[-1], hf(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
    assert model.spec.source == str(tmp_path / "enc")


def test_padding_columns_leave_with_the_samples_that_filled_them():
    """Compaction drops rows, and then every column that only the leavers filled: later layers run narrower, and
    the samples that stay get exactly what the full batch gives them."""
    model = exitlab.from_hf(tiny("bert"), exits=[0, 1, 2]).eval()
    ids, mask = batch(6, width=14, seed=3)
    mask[1:, 9:] = 0  # only sample 0 is longer than 9 tokens
    widths = []
    hook = model.backbone.layers[1].register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    with torch.no_grad():
        full = model.backbone(pack(ids, mask))
        part = model.backbone.run(pack(ids, mask), {0}, lambda i, f: f[1:])
    hook.remove()
    assert widths == [14, int(mask[1:].sum(1).max())]
    assert torch.allclose(part, full[1:], atol=1e-5)
