"""Gradient contributions: per-exit contributions add up to the gradient of the phase objective the optimiser sees
(weights, self-distillation, gradient equilibrium), frozen parts are null, and the model is left untouched."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from exitlab.analysis.common import block_groups
from exitlab.analysis.gradients import gradient_contributions, objective_phase, per_exit_gradients
from exitlab.errors import ExitlabError
from exitlab.models import build_model, from_module
from exitlab.runs.phase_config import GPFConfig, PhaseConfig
from exitlab.training.loop import set_trainable
from exitlab.training.objective import exit_losses, exit_terms, phase_loss, phase_module
from exitlab.training.phases import Phase, exit_weights, loss_weights, plan_phases


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
    per_exit = per_exit_gradients(model, batches, params, objective_phase(3, w))
    joint = _joint_grad(model, batches, w, params)
    for i, ref in enumerate(joint):
        combined = sum(per_exit[k][i] for k in range(model.num_exits))  # contributions are already weighted
        assert torch.allclose(combined.float(), ref, atol=1e-6, rtol=1e-4)


def _phase(kind, **options):
    o = PhaseConfig(**options)
    return Phase(kind, 1, o, exit_weights(kind, o, 3))


def _phase_grad(model, phase, batches, params):
    """Reference: torch.autograd.grad of training.loop.phase_loss itself, averaged over the equal-sized batches."""
    net = phase_module(model, phase)
    total = sum(phase_loss(net, phase, x, y)[0] for x, y in batches) / len(batches)
    return torch.autograd.grad(total, params, allow_unused=True)


@pytest.mark.parametrize("kind", [1, 2])
def test_contributions_sum_to_the_gradient_of_phase_loss_with_distillation_and_equilibrium(kind):
    model = _model().train()  # BatchNorm batch statistics, as in training
    extras = dict(distill=0.7, distill_temperature=2.0, label_smoothing=0.1, loss_weights=[1.0, 2.0, 3.0])
    if kind == 2:
        extras["grad_equilibrium"] = True
    else:
        extras = dict(label_smoothing=0.1)  # phase 1 refuses the IC-only settings
    phase = _phase(kind, **extras)
    batches = _batches()
    params = list(model.backbone.parameters())
    per_exit = per_exit_gradients(model, batches, params, phase)
    ref = _phase_grad(model, phase, batches, params)
    for i, r in enumerate(ref):
        total = sum(per_exit[k][i] for k in range(3))
        assert torch.allclose(total.float(), r, atol=1e-6, rtol=1e-4), i
    if kind == 1:
        assert all(float(g.abs().max()) == 0 for k in (0, 1) for g in per_exit[k])  # phase 1: the ICs send nothing
        return
    # the extras matter: without distillation or equilibrium the gradient is a different one
    for other in (_phase(2, **{**extras, "grad_equilibrium": False}), _phase(2, **{**extras, "distill": 0.0})):
        diff = _phase_grad(model, other, batches, params)
        assert any(not torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(ref, diff))
    out = gradient_contributions(model, batches, phase=phase, mode="current")
    assert out["objective"] == {"phase": 2, "weights": list(phase.weights), "label_smoothing": 0.1, "distill": 0.7,
                                "distill_temperature": 2.0, "grad_equilibrium": True, "trains": "all"}
    groups = block_groups(model)
    i = 0
    for j, (_, g) in enumerate(groups):
        norm = torch.cat([t.flatten() for t in ref[i:i + len(g)]]).norm()
        i += len(g)
        assert out["total_norm"][j] == pytest.approx(float(norm), rel=1e-4)


def test_phase3_backbone_parts_are_null():
    model = _model()
    phase = _phase(3, distill=0.5)
    out = gradient_contributions(model, _batches(), phase=phase, mode="train")
    assert out["frozen"] == [True] * 5 and out["objective"]["trains"] == "heads"
    for key in ("norm", "share_norm", "share_projection", "cosine"):
        assert all(v is None for row in out[key] for v in row)
    assert out["total_norm"] == [None] * 5
    assert out["weights"] == [0.5, 0.5, 0.0]
    json.dumps(out, allow_nan=False)
    with pytest.raises(ExitlabError, match="either a phase or loss weights"):
        gradient_contributions(model, _batches(), torch.ones(3) / 3, phase=phase)


def test_contribution_table_matches_joint_gradient_and_shares_add_up():
    model = _model().eval()
    batches = _batches()
    w = loss_weights([1.0, 2.0, 3.0], 3)
    out = gradient_contributions(model, batches, w, mode="eval")
    assert out["frozen"] == [False] * 5 and out["objective"]["phase"] == 2
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


def _assert_total_is_the_training_gradient(model, phase, x, y):
    """The analysis's total (its per-exit contributions summed) against torch.autograd.grad of the real phase loss,
    over every parameter the optimiser updates in the phase."""
    params = set_trainable(model, phase)
    per_exit = per_exit_gradients(model, [(x, y)], params, phase)
    loss, _ = phase_loss(phase_module(model, phase), phase, x, y)
    ref = torch.autograd.grad(loss, params, allow_unused=True)
    for i, (p, r) in enumerate(zip(params, ref)):
        total = sum(per_exit[k][i] for k in range(model.num_exits)).float()
        assert torch.allclose(total, torch.zeros_like(p) if r is None else r, atol=1e-6, rtol=1e-4), (phase.name, i)
    return ref


@pytest.mark.parametrize("regime, extra", [
    ("joint", {"phase2.loss_weights": "sdn"}),
    ("[1, 2, 3]", {"phase2.label_smoothing": 0.1, "phase2.distill": 0.7, "phase2.distill_temperature": 2.0,
                   "phase3.distill": 0.5}),
])
def test_the_analysis_total_is_the_gradient_of_the_training_loss_in_every_planned_phase(tiny_cfg, regime, extra):
    model = _model().train()  # BatchNorm batch statistics, as in training
    ((x, y),) = _batches(1)
    phases = plan_phases(tiny_cfg(regime=regime, **extra), model.num_exits)
    assert [p.kind for p in phases] == ([2] if regime == "joint" else [1, 2, 3])
    assert regime == "joint" or [bool(p.options.distill) for p in phases] == [False, True, True]
    for phase in phases:
        ref = _assert_total_is_the_training_gradient(model, phase, x, y)
        if phase.options.distill:  # the distillation term is in it: without it the gradient is another one
            plain = dataclasses.replace(phase, options=dataclasses.replace(phase.options, distill=0.0))
            without = torch.autograd.grad(phase_loss(model, plain, x, y)[0], set_trainable(model, plain))
            assert any(not torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(ref, without))


def test_the_analysis_total_includes_gpf_imitation():
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1], head="gpf",
                        head_kwargs={"inner": "pooled", "dim": 5}).train()
    ((x, y),) = _batches(1)
    phase = _phase(2, gpf=GPFConfig(imitation=1.0))
    _assert_total_is_the_training_gradient(model, phase, x, y)
    terms = exit_terms(model, phase, x, y)
    assert len(terms.imitation) == 1 and float(terms.imitation[0].detach()) > 0  # IC 0 imitates IC 1
    torch.testing.assert_close(terms.per_exit(3).sum(), terms.loss(), rtol=1e-6, atol=1e-6)
