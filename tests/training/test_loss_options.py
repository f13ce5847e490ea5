"""Gradient equilibrium, self-distillation and early stopping with the best weights restored."""

import torch

from exitlab.models import build_model
from exitlab.runs import checkpoint as ckpt
from exitlab.runs.files import read_jsonl
from exitlab.training.engine import train
from exitlab.training.objective import distill_loss, exit_losses


def _grads(model, x, y, k, ge):
    model.zero_grad()
    exit_losses(model(x, grad_equilibrium=ge), y)[k].backward()
    return torch.cat([p.grad.flatten() for p in model.backbone.blocks[0].parameters()])


def test_gradient_equilibrium_scales_the_shared_trunk_gradient():
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, img_size=16, exits=[0, 1], head="pooled").eval()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 7, (4,))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), model(x, grad_equilibrium=True)))  # identity forward
    # block 0 feeds exit 0 directly (scale 1/3) and the final exit through both taps (2/3 * 1/2 = 1/3)
    for k in (0, 2):
        plain, ge = _grads(model, x, y, k, False), _grads(model, x, y, k, True)
        torch.testing.assert_close(ge, plain / 3)
    plain, ge = _grads(model, x, y, 1, False), _grads(model, x, y, 1, True)  # exit 1: 2/3 at tap 0, 1/2 at tap 1
    torch.testing.assert_close(ge, plain * (2 / 3) * (1 / 2))


def test_self_distillation_pulls_ics_towards_the_detached_final_exit():
    final = torch.randn(5, 7, requires_grad=True)
    same = final.detach().clone().requires_grad_(True)
    other = torch.randn(5, 7, requires_grad=True)
    kl = distill_loss([same, other, final], temperature=3.0)
    assert kl.shape == (2,) and abs(kl[0].item()) < 1e-6 and kl[1].item() > 0
    kl.sum().backward()
    assert final.grad is None  # the teacher is detached
    assert other.grad is not None and other.grad.abs().sum() > 0


def test_early_stopping_stops_on_patience_and_restores_the_best(tiny_cfg, tmp_path):
    # phase 3 with a vanishing learning rate: the validation score cannot improve after epoch 1
    cfg = tiny_cfg(regime="disjoint", **{"phase3.epochs": 6, "phase3.patience": 1, "phase3.lr": 1e-12,
                                          "phase3.schedule": "constant"})
    out = train(cfg, tmp_path / "run")
    phase3 = [r for r in read_jsonl(out / "metrics.jsonl") if r["phase"] == 3]
    assert [r["epoch"] for r in phase3] == [1, 2]  # stopped after one epoch without improvement, not 6
    best, _ = ckpt.load_tensors(out / "checkpoints" / "01-phase3-e001.safetensors")
    final, _ = ckpt.load_tensors(out / "model.safetensors")
    assert all(torch.equal(final[k], best["model." + k]) for k in final)  # epoch 1's weights restored
