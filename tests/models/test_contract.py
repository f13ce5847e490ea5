"""Contract tests over every registered backbone and head kind, on tiny inputs."""

import pytest
import torch

from exitlab.models import BACKBONES, HEADS, build_model, from_module

SMALL = {  # shrink the big ones so the contract runs in seconds; the architecture code paths are the same
    "resnet18_cifar": {"width": 8}, "resnet34_cifar": {"width": 8}, "resnet50_cifar": {"width": 4},
    "wrn28": {"k": 1}, "vgg16_bn": {"width_mult": 0.125}, "mobilenetv2": {"width_mult": 0.25, "last_channels": 64},
    "vit": {"dim": 32, "depth": 4, "heads": 2}, "vit_tiny": {"depth": 3}, "vit_small": {"depth": 2},
    "msdnet": {"blocks": 3, "base": 1, "step": 1, "channels": 4, "growth": 2, "head_width": 8},
}
TOKEN_HEADS = ["pooled", "mlp1", "mlp2", "mlp3", "cls"]
MAP_HEADS = ["sdn", "pooled", "mlp1", "mlp2", "mlp3"]


def _model(name, head, size=16, chans=3, cascade=False):
    torch.manual_seed(0)
    kw = dict(SMALL.get(name, {}))
    if name.startswith("vit"):
        kw["patch_size"] = 4
    head_kwargs = {"cascade": True} if cascade else {}
    return build_model(name, num_classes=7, in_chans=chans, img_size=size, exits="every:1", head=head,
                       backbone_kwargs=kw, head_kwargs=head_kwargs)


def _heads_for(name):
    if name == "msdnet":  # its own classifiers first (the default), then map heads on the coarsest scale
        return ["msdnet", *MAP_HEADS]
    return TOKEN_HEADS if name.startswith("vit") else MAP_HEADS


@pytest.mark.parametrize("name", BACKBONES.names())
def test_outputs_one_per_exit_and_final_equals_backbone(name):
    m = _model(name, _heads_for(name)[0]).eval()
    x = torch.randn(3, 3, 16, 16)
    outs = m(x)
    assert len(outs) == m.num_exits == len(m.exits) + 1
    assert all(o.shape == (3, 7) for o in outs)
    assert all(torch.isfinite(o).all() for o in outs)
    torch.testing.assert_close(outs[-1], m.backbone(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_forward_to_is_a_prefix(name):
    m = _model(name, _heads_for(name)[0]).eval()
    x = torch.randn(2, 3, 16, 16)
    full = m(x)
    for k in sorted({0, len(full) // 2, len(full) - 1}):
        part = m.forward_to(x, k)
        assert len(part) == k + 1
        for a, b in zip(part, full[: k + 1]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["resnet20", "vit", "mobilenetv2", "wrn28", "vgg16_bn", "resnet50_cifar", "msdnet"])
@pytest.mark.parametrize("cascade", [False, True])
def test_every_parameter_gets_a_gradient(name, cascade):
    for head in _heads_for(name):
        m = _model(name, head, cascade=cascade).train()
        outs = m(torch.randn(4, 3, 16, 16))
        sum(o.square().mean() for o in outs).backward()
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}/{head}: no gradient for {missing[:5]}"
        # An SDN head's max/avg mixing weight has an exactly-zero gradient when the map is already the grid size
        # (both poolings are the identity then), and a cascade's LayerNorm gets none while the cascade weight after it
        # is still at its initial 0; everything else must get a non-zero gradient.
        zero = [n for n, p in m.named_parameters()
                if p.grad is not None and not p.grad.any() and "alpha" not in n and "cascade_norm" not in n]
        assert not zero, f"{name}/{head}: zero gradient for {zero[:5]}"


@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_kind_builds_where_it_applies(head):
    if head == "text":  # text encoders' head: on a Hugging Face encoder (the nlp extra)
        pytest.importorskip("transformers")
        from exitlab.models.hf import from_hf, pack
        from tests.models.test_hf import batch, tiny

        m = from_hf(tiny("bert"), exits=[0, 1], head="mean")
        assert len(m(pack(*batch()))) == m.num_exits
        return
    if head == "lm":  # causal LMs' per-exit LM heads (the nlp extra)
        pytest.importorskip("transformers")
        from exitlab.models.causal import from_hf_causal, tiny_llama

        m = from_hf_causal(tiny_llama(vocab_size=11, layers=3, hidden=32, heads=2), exits=[0, 1], head="lm")
        assert [o.shape for o in m(torch.randint(0, 11, (2, 5)))] == [(2, 5, 11)] * 3
        return
    name = "vit" if head in ("cls", "shared") else "resnet20"
    m = _model(name, head)
    assert len(m(torch.randn(2, 3, 16, 16))) == m.num_exits


def test_28x28_single_channel_inputs():
    for name in BACKBONES.names():
        m = _model(name, _heads_for(name)[0], size=28, chans=1).eval()
        outs = m(torch.randn(2, 1, 28, 28))
        assert outs[-1].shape == (2, 7), name


def test_adapter_matches_the_user_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 7),
    ).eval()
    m = from_module(net, ["1", "3"], num_classes=7, input_shape=(3, 16, 16)).eval()
    x = torch.randn(5, 3, 16, 16)
    outs = m(x)
    assert len(outs) == 3
    assert torch.equal(outs[-1], net(x))
    assert [p.channels for p in m.backbone.feature_info[:2]] == [8, 16]
    first = m.forward_to(x, 0)
    assert len(first) == 1 and torch.equal(first[0], outs[0])


def test_cascading_heads_read_the_previous_logits_layer_normalised_and_detached():
    """As in ZTW's reference, the previous logits are layer-normalised and detached before the head reads them."""
    torch.manual_seed(0)
    m = _model("resnet20", "sdn", cascade=True).eval()
    head = m.heads[1]
    assert head.cascade is not None and isinstance(head.cascade_norm, torch.nn.LayerNorm)
    torch.nn.init.normal_(head.cascade.weight)
    feats = {}
    m.backbone.run(torch.randn(3, 3, 16, 16), {m.exits[1]}, lambda i, f: feats.setdefault(i, f))
    h = feats[m.exits[1]]
    prev = torch.randn(3, m.num_classes, requires_grad=True)
    out = head(h, prev)
    plain = head(h, None)
    assert not torch.allclose(out, plain)  # it does read prev
    assert torch.allclose(out, head(h, 10 * prev + 3), atol=1e-3)  # ...through LayerNorm: affine invariant (up to eps)
    out.sum().backward()
    assert prev.grad is None  # detached
