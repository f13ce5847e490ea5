"""L2W (Han et al., ECCV 2022, "Learning to Weight Samples for Dynamic Early-exiting Networks"): a weight-prediction
network, trained by meta-learning, that weights each sample's loss at each exit.

One meta step, as the reference code (LeapLabTHU/L2W-DEN) does it:

1. the weight net maps a training batch's per-sample, per-exit losses ``l [B, E]`` (detached) to ``u = f_phi(l)``;
   the weights are ``w = 1 + eps (u - mean(u))`` (``constraint="mat"``: the mean over the whole matrix; ``row``: per
   exit; ``col``: per sample);
2. a one-step look-ahead of the model, ``theta' = theta - lr grad_theta L_w(theta, phi)``, with the weighted loss
   ``L_w = sum_j mean_b w_bj l_bj``, kept differentiable in ``phi`` (``torch.func.functional_call``);
3. the meta loss of the looked-ahead model on a meta batch: the samples are shared out over the exits as an early-exit
   policy with target exit shares ``q`` would send them (the most confident ``floor(n q_j)`` at exit ``j``; the last
   exit takes the rest), ``L_meta = sum_j mean_{b in S_j} CE_j(theta')``; ``phi`` takes one step on it.

The model then trains on ``L_w`` with ``w`` from the updated ``phi`` (detached). ``record_used=True`` is the
reference's behaviour: a sample given to one exit's meta subset is not offered to the next. The paper code base
(kamadforge/early-exit-benchmark) never records the used samples, so its subsets overlap and the last exit takes the
whole batch; ``record_used=False`` reproduces that. The look-ahead is plain SGD (the reference loads the optimizer's
state into its look-ahead SGD, momentum included).

In ``exitlab train`` (phase 2, ``phase2.l2w.epsilon > 0``; :class:`L2W`): every ``l2w.meta_interval`` steps the
batch's halves take the look-ahead and meta roles (swapped at the next meta step), then the model trains on the whole
batch with ``sum_j lambda_j mean_b w_bj l_bj`` (``lambda``: the phase's per-exit weights; ``uniform`` gives the
reference's objective divided by the number of exits). The reference instead makes two half-batch steps per batch,
one per role. The weight net and its Adam optimizer are checkpointed, so a resumed run is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import ConfigError
from ..runs.phase_config import L2WConfig


class WeightNet(nn.Module):
    """The reference's weight-prediction MLP: ``E`` losses in, ``E`` values in (-1, 1) out (tanh)."""

    def __init__(self, num_exits: int, hidden: int = 100, layers: int = 1):
        super().__init__()
        dims = [num_exits] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(hidden, num_exits), nn.Tanh())

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return self.net(losses)  # [B, E]


def target_shares(num_exits: int, index: int = 20) -> torch.Tensor:
    """The reference's target exit shares: ``q_j ∝ p^j`` (j = 1..E) with ``p = index / 20`` (index 1..39)."""
    if not 1 <= index <= 39:
        raise ConfigError(f"l2w target index must be in 1..39 (p = index / 20), got {index}")
    q = torch.tensor(index / 20.0).pow(torch.arange(1, num_exits + 1, dtype=torch.float32))
    return q / q.sum()


def sample_weights(weight_net: nn.Module, losses: torch.Tensor, epsilon: float, constraint: str = "mat"
                   ) -> torch.Tensor:
    """``w = 1 + eps (u - mean(u))`` with ``u = f_phi(losses.detach())``; ``[B, E]``."""
    u = weight_net(losses.detach())
    dims = {"mat": (0, 1), "row": (0,), "col": (1,)}
    if constraint not in dims:
        raise ConfigError(f"l2w constraint: {constraint!r}; choose mat, row or col")
    return 1 + epsilon * (u - u.mean(dims[constraint], keepdim=True))


def per_sample_losses(outs: list[torch.Tensor], y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of every sample at every exit: ``[B, E]``."""
    if y.is_floating_point():
        raise ConfigError("L2W weights per-sample cross-entropies; float (regression) labels are not supported")
    return torch.stack([F.cross_entropy(o.float(), y, reduction="none", label_smoothing=label_smoothing)
                        for o in outs], 1)


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L2W's training loss: the weighted per-sample losses, mean over the batch, summed over the exits."""
    return (weights * losses).mean(0).sum()


def meta_subsets(outs: list[torch.Tensor], shares: torch.Tensor, record_used: bool = True) -> list[list[int]]:
    """Which meta samples each exit's meta loss uses: the most confident ``floor(n q_j)`` at exit ``j`` (among those
    not yet used, with ``record_used``), and every sample left for the last exit."""
    n, used, subsets = outs[0].shape[0], set(), []
    for j, o in enumerate(outs):
        order = F.softmax(o.detach().float(), -1).max(-1).values.argsort(descending=True).tolist()
        free = [i for i in order if i not in used]
        pick = free if j == len(outs) - 1 else free[: math.floor(n * float(shares[j]))]
        if record_used:
            used.update(pick)
        subsets.append(pick)
    return subsets


def meta_loss(outs: list[torch.Tensor], y: torch.Tensor, subsets: list[list[int]]) -> torch.Tensor:
    """``sum_j mean_{b in S_j} CE_j`` over the exits whose subset is not empty."""
    terms = [F.cross_entropy(o[s].float(), y[s]) for o, s in zip(outs, subsets) if s]
    return torch.stack(terms).sum()


def lookahead(model: nn.Module, loss: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
    """``theta' = theta - lr grad L`` for every trainable parameter, differentiable (create_graph)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return {n: p - lr * g if g is not None else p for n, p, g in zip(names, params, grads)}


def meta_step(model: nn.Module, weight_net: nn.Module, meta_opt: torch.optim.Optimizer, train_batch, meta_batch, *,
              lr: float, epsilon: float, shares: torch.Tensor, constraint: str = "mat", record_used: bool = True
              ) -> torch.Tensor:
    """One update of the weight net (steps 1-3 above); returns the meta loss. The model's parameters and buffers
    (BatchNorm statistics) are left as they were: the look-ahead runs on copies of the buffers."""
    (x, y), (xm, ym) = train_batch, meta_batch
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    losses = per_sample_losses(functional_call(model, {**dict(model.named_parameters()), **buffers}, (x,)), y)
    w = sample_weights(weight_net, losses, epsilon, constraint)
    ahead = lookahead(model, weighted_loss(losses, w), lr)
    outs = functional_call(model, {**dict(model.named_parameters()), **ahead, **buffers}, (xm,))
    loss = meta_loss(outs, ym, meta_subsets(outs, shares, record_used))
    meta_opt.zero_grad(set_to_none=True)
    phi = list(weight_net.parameters())
    grads = torch.autograd.grad(loss, phi, allow_unused=True)
    for p, g in zip(phi, grads):
        p.grad = g
    meta_opt.step()
    return loss.detach()


@dataclass
class L2W:
    """The state L2W adds to a phase: the weight net, its optimizer and the target exit shares."""

    net: WeightNet
    opt: torch.optim.Optimizer
    shares: torch.Tensor
    options: L2WConfig

    @classmethod
    def for_phase(cls, o: L2WConfig, num_exits: int, device: torch.device, seed: int) -> L2W | None:
        """A fresh state for a phase whose ``l2w`` section has ``epsilon > 0`` (seeded: the same net on every run),
        else None."""
        if not o.on:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = WeightNet(num_exits, o.hidden).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=o.meta_lr)
        return cls(net, opt, target_shares(num_exits, o.target).to(device), o)

    def before_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, step: int) -> None:
        """The meta step of training step ``step`` (every ``meta_interval``-th step)."""
        o = self.options
        if step % o.meta_interval:
            return
        if not torch.is_tensor(x) or len(y) < 2:
            raise ConfigError("L2W splits each batch into a look-ahead half and a meta half: it needs tensor inputs "
                              "and batches of at least 2 samples")
        half = len(y) // 2
        a, b = slice(0, half), slice(half, None)
        if (step // o.meta_interval) % 2:
            a, b = b, a
        meta_step(model, self.net, self.opt, (x[a], y[a]), (x[b], y[b]), lr=lr, epsilon=o.epsilon,
                  shares=self.shares, constraint=o.constraint, record_used=o.meta_subsets == "disjoint")

    @torch.no_grad()
    def weigh(self, losses: torch.Tensor) -> torch.Tensor:
        """The training weights ``[B, E]`` for per-sample losses ``[B, E]`` (no gradient)."""
        return sample_weights(self.net, losses, self.options.epsilon, self.options.constraint)

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
