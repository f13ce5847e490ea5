"""FLOPs and per-exit costs against hand counts (2 FLOPs per multiply-add)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exitlab.errors import ConfigError
from exitlab.models import build_model, from_module
from exitlab.models.costs import exit_costs
from exitlab.models.flops import count_flops
from exitlab.models.vit import Attention


def test_conv_matches_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    rep = count_flops(lambda: conv(torch.randn(2, 3, 16, 16)))
    # every output element [2, 8, 16, 16] is 3*3*3 multiply-adds
    assert rep.total == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)
    assert rep.macs == rep.total // 2


def test_grouped_strided_conv_matches_hand_count():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    rep = count_flops(lambda: conv(torch.randn(1, 8, 10, 10)))
    assert rep.total == 2 * (16 * 5 * 5) * (8 // 4 * 3 * 3)


def test_linear_matches_hand_count():
    lin = nn.Linear(32, 7)
    assert count_flops(lambda: lin(torch.randn(4, 32))).total == 2 * 4 * 32 * 7
    lin3 = nn.Linear(32, 7, bias=False)  # a 3-D input goes through a matmul, not addmm
    assert count_flops(lambda: lin3(torch.randn(2, 5, 32))).total == 2 * 2 * 5 * 32 * 7


def test_attention_kernel_is_counted_on_cpu():
    B, H, N, M, d = 2, 3, 5, 9, 4
    q, k, v = torch.randn(B, H, N, d), torch.randn(B, H, M, d), torch.randn(B, H, M, d)
    rep = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    # q @ k^T: B*H*N*M*d multiply-adds; attn @ v: the same again
    assert rep.total == 2 * 2 * B * H * N * M * d
    assert not any("scaled_dot_product" in op for op in rep.uncounted)


def test_vit_attention_block_matches_hand_count():
    B, N, D, heads = 2, 17, 32, 2
    attn = Attention(D, heads).eval()
    rep = count_flops(lambda: attn(torch.randn(B, N, D)))
    qkv, scores_and_mix, proj = 2 * B * N * D * 3 * D, 2 * 2 * B * N * N * D, 2 * B * N * D * D
    assert rep.total == qkv + scores_and_mix + proj


def test_whole_vit_backbone_matches_hand_count():
    D, depth, C, img, patch = 32, 2, 7, 16, 4
    model = build_model("vit", num_classes=C, in_chans=3, img_size=img, exits=[0], head="cls",
                        backbone_kwargs=dict(dim=D, depth=depth, heads=2, patch_size=patch))
    P = (img // patch) ** 2
    N = P + 1
    stem = 2 * P * D * (3 * patch * patch)
    block = 2 * N * D * 3 * D + 4 * N * N * D + 2 * N * D * D + 2 * (2 * N * D * 4 * D)
    final = 2 * D * C
    costs = exit_costs(model)
    assert costs.backbone_flops == stem + depth * block + final
    head = 2 * D * C  # cls head: LayerNorm (uncounted) + linear on the CLS token
    assert [e.flops for e in costs.exits] == [stem + block + head, stem + depth * block + head + final]


def test_uncounted_ops_are_reported_and_free_ops_are_not():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()).eval()
    rep = count_flops(lambda: net(torch.randn(1, 3, 8, 8)))
    assert "aten.native_batch_norm" in rep.uncounted or "aten._native_batch_norm_legit_no_training" in rep.uncounted
    assert any("relu" in op for op in rep.uncounted)
    assert not any(op.endswith((".view", ".reshape", "._unsafe_view", ".t")) for op in rep.uncounted)
    assert rep.by_op == {"aten.convolution": rep.total}


def _chain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),  # "1": exit 0 after it
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.ReLU(),  # "3": exit 1 after it
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )


def test_exit_costs_of_adapted_model_match_hand_counts():
    model = from_module(_chain(), ["1", "3"], num_classes=5, input_shape=(3, 8, 8), head="pooled")
    costs = exit_costs(model, (3, 8, 8))
    conv1 = 2 * (4 * 8 * 8) * (3 * 9)
    conv2 = 2 * (6 * 4 * 4) * (4 * 9)
    fc = 2 * 6 * 5
    head0, head1 = 2 * 4 * 5, 2 * 6 * 5  # pooled heads: mean (uncounted) + linear
    assert costs.backbone_flops == conv1 + conv2 + fc
    assert [e.flops for e in costs.exits] == [conv1 + head0, conv1 + conv2 + head0 + head1,
                                             conv1 + conv2 + fc + head0 + head1]
    assert [e.macs for e in costs.exits] == [e.flops // 2 for e in costs.exits]
    p_conv1, p_conv2, p_fc = 3 * 4 * 9, 4 * 6 * 9, 6 * 5 + 5
    p_head0, p_head1 = 4 * 5 + 5, 6 * 5 + 5
    assert [e.params for e in costs.exits] == [p_conv1 + p_head0, p_conv1 + p_conv2 + p_head0 + p_head1,
                                              p_conv1 + p_conv2 + p_fc + p_head0 + p_head1]
    assert costs.exits[-1].params == sum(p.numel() for p in model.parameters())
    assert costs.fractions[-1].item() == pytest.approx((conv1 + conv2 + fc + head0 + head1) / (conv1 + conv2 + fc))


@pytest.mark.parametrize("backbone,kwargs,head", [
    ("resnet8", {}, "sdn"),
    ("vit", dict(dim=32, depth=4, heads=2), "cls"),
])
def test_cumulative_costs_strictly_increase(backbone, kwargs, head):
    model = build_model(backbone, num_classes=7, in_chans=3, img_size=16, exits="every:1", head=head,
                        backbone_kwargs=kwargs)
    costs = exit_costs(model)
    flops = [e.flops for e in costs.exits]
    params = [e.params for e in costs.exits]
    assert all(a < b for a, b in zip(flops, flops[1:]))
    assert all(a < b for a, b in zip(params, params[1:]))
    assert costs.exits[-1].fraction > 1.0  # the final exit also pays for every IC on the way
    assert costs.exits[-1].params == sum(p.numel() for p in model.parameters())
    assert [e.block for e in costs.exits] == model.exits + [len(model.backbone.feature_info) - 1]
    assert model.training  # left in the mode it was in


def test_adapted_models_record_their_input_shape_and_a_model_without_one_needs_it():
    model = from_module(_chain(), ["1"], num_classes=5, input_shape=(3, 8, 8))
    assert model.input_shape == (3, 8, 8) and exit_costs(model).input_shape == (3, 8, 8)
    model.spec = None
    with pytest.raises(ConfigError, match="input_shape"):
        exit_costs(model)


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_a_convolution_backward_costs_twice_its_forward_whatever_the_groups(groups):
    """Input and weight gradient each cost one forward; torch's own formula ignores groups (33x for depthwise)."""
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=groups)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    fwd = count_flops(lambda: conv(x)).total
    assert fwd == 2 * 2 * 16 * 16 * 32 * (32 // groups) * 9  # 2 FLOPs per multiply-add
    assert count_flops(lambda: conv(x).sum().backward(), grad=True).total == 3 * fwd
    frozen_input = torch.randn(2, 32, 16, 16)  # a frozen trunk's output: only the weight gradient
    assert count_flops(lambda: conv(frozen_input).sum().backward(), grad=True).total == 2 * fwd
