"""GPF heads (Liao et al., NAACL 2021, "A Global Past-Future Early Exit Method"), as the authors' code computes them.

Each IC ``k`` (of ``K``) maps its block's feature to a state ``s_k = ReLU(state_k(h_k))`` of ``dim`` values
(``state_k`` is an ordinary head kind, ``inner``, with ``dim`` outputs). With per-IC projections ``P_i(s) = s W_i +
b_i`` to the classes, imitators ``m_j(s) = ReLU(A_j s + a_j)`` that guess IC ``j``'s state from an earlier one, and
gate projections ``G_i(s) = s V_i + c_i``, exit ``k``'s logits are

    past_k   = sum_{i<=k} P_i(s_i)           (earlier states detached: they only carry information forward)
    future_k = sum_{j>k} P_j(m_j(s_k))       (0 at the last IC)
    beta_k   = sigmoid(B ReLU(mean_{i<=k} G_i(s_i)) + b)
    logits_k = beta_k * past_k + (1 - beta_k) * future_k

and the imitation loss is ``L_imit = 1/(K-1) sum_{k<K-1} mean_{j>k, samples} (1 - cos(m_j(s_k), sg(s_j)))``. The
past aggregation is the authors' implementation (lancopku/Early-Exit), which the paper code base also follows,
rather than the paper's text. The backbone's own classifier stays the final exit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .contract import ExitPoint
from .heads import HEADS, build_head


class GPFShared(nn.Module):
    """What every GPF exit reads: the projections of all ICs, their imitators and the balance gate."""

    def __init__(self, count: int, dim: int, num_classes: int):
        super().__init__()
        std = 1 / math.sqrt(dim)
        self.reduce_w = nn.Parameter(torch.randn(count, dim, num_classes) * std)  # [K, D, C]
        self.reduce_b = nn.Parameter(torch.zeros(count, num_classes))  # [K, C]
        self.gate_w = nn.Parameter(torch.randn(count, dim, num_classes) * std)
        self.gate_b = nn.Parameter(torch.zeros(count, num_classes))
        self.imitators = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for _ in range(count)])
        self.balance = nn.Sequential(nn.ReLU(), nn.Linear(num_classes, num_classes), nn.Sigmoid())


@HEADS.register("gpf")
class GPFHead(nn.Module):
    """GPF exit ``index``: returns its logits and the carry for the next exit (the detached states so far,
    ``[B, index + 1, dim]``). Built by :func:`gpf_heads`; the first one owns the shared parameters."""

    def __init__(self, point: ExitPoint, num_classes: int, *, index: int = 0, shared: GPFShared | None = None,
                 inner: str = "pooled", dim: int = 128, **inner_kwargs):
        super().__init__()
        if shared is None:
            raise ConfigError("head 'gpf' is built for all exits at once; use model.head=gpf (the model builds it)")
        if inner == "gpf" or inner_kwargs.get("cascade"):
            raise ConfigError("model.head_kwargs: GPF's inner head must be a plain head kind (sdn, pooled, cls, text, "
                              "mlp2, ...) without cascade")
        self.index = index
        self.state = nn.Sequential(build_head(inner, point, dim, **inner_kwargs), nn.ReLU())
        if index == 0:
            self.shared = shared  # registered once, so its parameters are saved and trained once
        else:
            self.__dict__["_shared"] = shared  # a plain reference: the same tensors, not registered again

    @property
    def gpf(self) -> GPFShared:
        return self.shared if self.index == 0 else self.__dict__["_shared"]

    def forward(self, x, prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k, sh = self.index, self.gpf
        s = self.state(x)  # [B, D]
        states = s[:, None] if prev is None else torch.cat([prev.to(s.dtype), s[:, None]], 1)  # [B, k+1, D]
        past = torch.einsum("bid,idc->bc", states, sh.reduce_w[: k + 1]) + sh.reduce_b[: k + 1].sum(0)  # [B, C]
        future = torch.zeros_like(past)
        for j in range(k + 1, len(sh.imitators)):
            future = future + sh.imitators[j](s) @ sh.reduce_w[j] + sh.reduce_b[j]
        gate = (torch.einsum("bid,idc->bic", states, sh.gate_w[: k + 1]) + sh.gate_b[: k + 1]).mean(1)  # [B, C]
        beta = sh.balance(gate)
        carry = s.detach()[:, None] if prev is None else torch.cat([prev, s.detach()[:, None].to(prev.dtype)], 1)
        return beta * past + (1 - beta) * future, carry


def gpf_heads(points: list[ExitPoint], num_classes: int, **kwargs) -> list[GPFHead]:
    """One GPF head per IC, sharing one :class:`GPFShared` (``kwargs``: ``inner``, ``dim`` and the inner head's)."""
    dim = kwargs.get("dim", 128)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"model.head_kwargs.dim must be a whole number >= 1, got {dim!r}")
    shared = GPFShared(len(points), dim, num_classes)
    return [GPFHead(p, num_classes, index=j, shared=shared, **kwargs) for j, p in enumerate(points)]


def gpf_imitation_terms(heads: nn.ModuleList, feats: list) -> list[torch.Tensor]:
    """Each IC's part of GPF's imitation loss, from the ICs' input features (``feats[k]``, as the forward pass
    collected them): for IC ``k`` (all but the last), the mean cosine distance between its imitators' predictions
    of the later ICs' states and those states (detached, so IC ``k``'s term pulls on IC ``k`` alone). Empty with
    fewer than two ICs."""
    states = [head.state(h) for head, h in zip(heads, feats)]  # [B, D] each
    K = len(states)
    terms = []
    for k in range(K - 1):
        imitators = heads[0].gpf.imitators
        pred = torch.cat([imitators[j](states[k]) for j in range(k + 1, K)]).float()  # [(K-k-1) B, D]
        actual = torch.cat([states[j].detach() for j in range(k + 1, K)]).float()
        terms.append((1 - F.cosine_similarity(pred, actual, dim=1)).mean())
    return terms


def imitation_total(terms: list[torch.Tensor]) -> torch.Tensor:
    """GPF's imitation loss from the per-IC terms: their mean (a 0-d zero without terms)."""
    if not terms:
        return torch.zeros(())
    total = terms[0].new_zeros(()).float()
    for t in terms:  # added one by one, in order: the loss is bit for bit what it always was
        total = total + t
    return total / len(terms)


def gpf_imitation_loss(heads: nn.ModuleList, feats: list) -> torch.Tensor:
    """GPF's imitation loss from the ICs' input features: the mean of :func:`gpf_imitation_terms`."""
    return imitation_total(gpf_imitation_terms(heads, feats))
