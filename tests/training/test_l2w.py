"""L2W: the weighted loss, the meta subsets and the meta-gradient equal a hand computation (a manual unrolled
look-ahead with autograd on a 2-parameter model)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exitlab.errors import ConfigError
from exitlab.training.l2w import (
    WeightNet,
    meta_step,
    meta_subsets,
    per_sample_losses,
    sample_weights,
    target_shares,
    weighted_loss,
)
from tests.conftest import train_and_resume


class TwoParams(nn.Module):
    """Two exits from two scalars: exit 0 = a x, exit 1 = b a x."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))
        self.b = nn.Parameter(torch.tensor(-1.3))

    def forward(self, x):
        h = self.a * x
        return [h, self.b * h]


def test_target_shares_are_the_references_geometric_profile():
    q = target_shares(4, 10)  # p = 0.5: q_j proportional to 0.5^j
    torch.testing.assert_close(q, torch.tensor([8.0, 4.0, 2.0, 1.0]) / 15)
    with pytest.raises(ConfigError, match="l2w target index must be in 1..39"):
        target_shares(4, 40)


def test_meta_subsets_record_the_used_samples_unless_told_not_to():
    # confidences at exit 0: sample 3 > 1 > 0 > 2; at exit 1: 3 > 0 > 2 > 1 (one-hot-ish logits)
    c0 = torch.tensor([[2.0, 0], [3.0, 0], [1.0, 0], [4.0, 0]])
    c1 = torch.tensor([[3.0, 0], [1.0, 0], [2.0, 0], [4.0, 0]])
    c2 = torch.zeros(4, 2)
    shares = torch.tensor([0.5, 0.25, 0.25])
    assert meta_subsets([c0, c1, c2], shares) == [[3, 1], [0], [2]]  # exit 1 cannot take 3 again: it takes 0
    assert meta_subsets([c0, c1, c2], shares, record_used=False) == [[3, 1], [3], [0, 1, 2, 3]]


def test_weighted_loss_and_the_meta_gradient_equal_a_manual_unroll():
    torch.manual_seed(0)
    B, C, lr, eps = 8, 3, 0.3, 0.8
    x, y = torch.randn(B, C), torch.randint(0, C, (B,))
    xm, ym = torch.randn(B, C), torch.randint(0, C, (B,))
    model, net = TwoParams(), WeightNet(2, hidden=5)
    shares = torch.tensor([0.5, 0.5])

    # by hand: losses, weights, the look-ahead of (a, b), the meta subsets and the meta loss
    a, b = model.a, model.b
    ce = lambda z, t: -F.log_softmax(z, -1).gather(1, t[:, None])[:, 0]  # noqa: E731
    losses = torch.stack([ce(a * x, y), ce(b * a * x, y)], 1)  # [B, 2]
    u = net(losses.detach())
    w = 1 + eps * (u - u.mean())
    lw = sum((w[:, j] * losses[:, j]).sum() / B for j in range(2))
    torch.testing.assert_close(weighted_loss(per_sample_losses(model(x), y), sample_weights(net, losses, eps)), lw)
    ga, gb = torch.autograd.grad(lw, [a, b], create_graph=True)
    a2, b2 = a - lr * ga, b - lr * gb
    m0, m1 = a2 * xm, b2 * a2 * xm
    conf0 = F.softmax(m0.detach(), -1).max(-1).values
    first = sorted(range(B), key=lambda i: -conf0[i].item())[: math.floor(B * 0.5)]
    rest = [i for i in range(B) if i not in first]
    meta = ce(m0[first], ym[first]).mean() + ce(m1[rest], ym[rest]).mean()
    want = torch.autograd.grad(meta, list(net.parameters()))

    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the weight net keeps its values, its grads stay to read
    got = meta_step(model, net, opt, (x, y), (xm, ym), lr=lr, epsilon=eps, shares=shares)
    torch.testing.assert_close(got, meta.detach())
    for p, g in zip(net.parameters(), want):
        torch.testing.assert_close(p.grad, g)
    assert sum(g.abs().sum() for g in want) > 0  # the meta-gradient is not trivially zero
    assert (model.a.item(), model.b.item()) == pytest.approx((0.7, -1.3)) and model.a.grad is None


def test_the_meta_step_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, nn.Linear(4, 3)

        def forward(self, x):
            h = self.body(x)
            return [h[:, :3], self.head(h)]

    m, net = Two().train(), WeightNet(2, hidden=4)
    before = model[1].running_mean.clone()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    meta_step(m, net, torch.optim.Adam(net.parameters(), 1e-3), (x, y), (x, y), lr=0.1, epsilon=0.5,
              shares=torch.tensor([0.5, 0.5]))
    assert torch.equal(model[1].running_mean, before)


def test_l2w_trains_from_a_config_resumes_exactly_and_weights_the_losses(tiny_cfg, tmp_path):
    from exitlab.recipes.train import train
    from exitlab.runs import checkpoint as ckpt

    over = {"phase2.epochs": 2, "phase2.l2w.epsilon": 0.8, "phase2.l2w.meta_lr": 0.01, "phase2.l2w.hidden": 8,
            "data.synthetic": "{size: 16, n_train: 280, n_test: 70}"}  # 4 steps per epoch: enough, and fast
    cfg = tiny_cfg(regime="joint", **over)
    full, part = train_and_resume(cfg, tmp_path, "00-phase2-e001.safetensors")
    a, _ = ckpt.load_tensors(full / "model.safetensors")
    b, _ = ckpt.load_tensors(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    mid, _ = ckpt.load_tensors(part / "checkpoints" / "00-phase2-e001.safetensors")
    assert any(k.startswith("l2w.net.") for k in mid) and any(k.startswith("l2w.optim.") for k in mid)
    plain = train(tiny_cfg(regime="joint", **{**over, "phase2.l2w.epsilon": 0.0}), tmp_path / "plain")
    c, _ = ckpt.load_tensors(plain / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the weights changed what was trained


def test_l2w_is_refused_where_it_does_not_apply(tiny_cfg):
    from exitlab.training.phases import plan_phases

    with pytest.raises(ConfigError, match=r"phase3.l2w.epsilon is set, but phase 3 ignores it"):
        plan_phases(tiny_cfg(regime="disjoint", **{"phase3.l2w.epsilon": 0.5}), 3)
    with pytest.raises(ConfigError, match=r"phase2.l2w.meta_subsets: 'all'; choose disjoint or overlapping"):
        tiny_cfg(**{"phase2.l2w.meta_subsets": "all"})


def test_the_phase_loss_with_sample_weights_is_the_weighted_mean_per_exit():
    from exitlab.models import build_model
    from exitlab.runs.phase_config import PhaseConfig
    from exitlab.training.objective import phase_loss
    from exitlab.training.phases import Phase

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, img_size=16, exits=[0, 1], head="pooled")
    x, y = torch.randn(5, 3, 16, 16), torch.randint(0, 7, (5,))
    w = torch.rand(5, 3) + 0.5
    loss, per_exit = phase_loss(model, Phase(2, 1, PhaseConfig(), (0.2, 0.3, 0.5)), x, y, weigh=lambda _: w)
    outs = model(x)
    hand = sum(lam * (w[:, j] * F.cross_entropy(outs[j], y, reduction="none")).mean()
               for j, lam in enumerate((0.2, 0.3, 0.5)))
    torch.testing.assert_close(loss, hand)
    torch.testing.assert_close(per_exit, torch.stack([F.cross_entropy(o, y) for o in outs]))  # reported unweighted
