"""Gradient contributions: per-exit gradients add up to the joint loss's gradient, and the model is left untouched."""

import json

import pytest
import torch
from torch import nn

from exitlab.analysis.common import block_groups
from exitlab.analysis.gradients import gradient_contributions, per_exit_gradients
from exitlab.errors import ExitlabError
from exitlab.loop import exit_losses
from exitlab.models import build_model, from_module
from exitlab.phases import loss_weights


def _model():
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1])


def _batches(n=2, b=8):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(b, 1, 16, 16, generator=g), torch.randint(0, 7, (b,), generator=g)) for _ in range(n)]


def _joint_grad(model, batches, w, params):
    """Reference: backward through the joint loss (mean over the equal-sized batches)."""
    total = 0
    for x, y in batches:
        total = total + (w * exit_losses(model(x), y)).sum() / len(batches)
    return torch.autograd.grad(total, params)


def test_weighted_per_exit_gradients_equal_the_joint_gradient():
    model = _model().eval()
    batches = _batches()
    params = list(model.backbone.parameters())
    w = loss_weights("sdn", model.num_exits)  # unequal weights, so a wrong weighting would show
    per_exit = per_exit_gradients(model, batches, params)
    joint = _joint_grad(model, batches, w, params)
    for i, ref in enumerate(joint):
        combined = sum(w[k].double() * per_exit[k][i] for k in range(model.num_exits))
        assert torch.allclose(combined.float(), ref, atol=1e-6, rtol=1e-4)


def test_contribution_table_matches_joint_gradient_and_shares_add_up():
    model = _model().eval()
    batches = _batches()
    w = loss_weights([1.0, 2.0, 3.0], 3)
    out = gradient_contributions(model, batches, w, mode="eval")
    assert out["blocks"] == ["stem", "block 0", "block 1", "block 2", "final"]
    assert len(out["norm"]) == 3 and len(out["norm"][0]) == 5
    groups = block_groups(model)
    joint = _joint_grad(model, batches, w, [p for _, g in groups for p in g])
    i = 0
    for j, (_, g) in enumerate(groups):
        ref = torch.cat([t.flatten() for t in joint[i:i + len(g)]]).norm()
        i += len(g)
        assert out["total_norm"][j] == pytest.approx(float(ref), rel=1e-4)
        assert sum(out["share_projection"][k][j] for k in range(3)) == pytest.approx(1.0, abs=1e-9)
        assert sum(out["share_norm"][k][j] for k in range(3)) == pytest.approx(1.0, abs=1e-9)
    # IC0 sits after block 0: it cannot reach blocks 1, 2 or the final classifier; IC1 cannot reach block 2
    assert out["norm"][0][2:] == [0.0, 0.0, 0.0]
    assert out["norm"][1][3:] == [0.0, 0.0]
    assert out["share_projection"][2][4] == pytest.approx(1.0)
    assert all(v > 0 for row in out["norm"] for v in row[:2])
    json.dumps(out, allow_nan=False)


def test_model_parameters_buffers_modes_flags_and_rng_are_untouched():
    model = _model()
    model.train()
    model.heads[0].eval()
    for p in model.backbone.blocks[0].parameters():
        p.requires_grad_(False)
    model.heads[1].register_forward_hook(lambda m, i, o: nn.functional.dropout(o, 0.5))  # draws random numbers
    params = {k: v.clone() for k, v in model.state_dict().items()}  # includes BN running stats
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(123)
    gradient_contributions(model, _batches(), mode="train")
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_wrong_weight_count_is_an_error():
    with pytest.raises(ExitlabError, match="one loss weight per exit"):
        gradient_contributions(_model(), _batches(1), torch.ones(2))


def test_adapter_models_group_parameters_by_the_block_they_run_in():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    model = from_module(net, ["1", "3"], num_classes=5, input_shape=(1, 8, 8))
    with pytest.raises(ExitlabError, match="example input"):
        block_groups(model)
    groups = dict(block_groups(model, torch.randn(2, 1, 8, 8)))
    assert groups["block 0"] == list(net[0].parameters())
    assert groups["block 1"] == list(net[2].parameters())
    assert groups["final"] == list(net[5].parameters())
    out = gradient_contributions(model, [(torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,)))])
    assert out["norm"][0][1] == 0.0 and out["norm"][2][1] > 0
