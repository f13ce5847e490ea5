"""Per-token early exit in greedy decoding (CALM, Schuster et al. 2022): each new token leaves at the first exit
whose top softmax probability reaches a threshold, and the KV cache of the layers it skipped is filled by a rule.

KV rules for the skipped layers of a token that left after layer ``e``:

- ``copy`` (CALM's state propagation): the exited hidden state ``h_e`` is the input of every skipped layer's
  keys and values (its input norm, then the key and value projections with rotary positions). A later token
  attends to these approximate entries. When every row of the batch has left, only these projections run, which
  is where the saving comes from.
- ``recompute``: the skipped layers run anyway and store their true keys and values (the token is still chosen at
  the exit). Nothing is saved; it isolates what the early token choice alone costs in quality, so the gap between
  the two rules is the cost of the approximate cache.

In a batch, rows leave at different layers; the layers still run for the whole batch until every row has left
(rows that left keep their state, as ``copy`` says), so the saving at batch > 1 is only the layers after the last
row left.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.causal import causal_mask
from ..models.core import MultiExitModel, eval_mode
from .speculative import _backbone, _grow, _prefill, prepare_prompts

KV_RULES = ("copy", "recompute")


@dataclass
class Exited:
    """Tokens per row and, per token, the number of layers it ran (``depth``, L for the final exit)."""

    tokens: list[list[int]]
    depth: list[list[int]]
    layers: int
    seconds: float = 0.0

    @property
    def mean_depth(self) -> float:
        """The mean share of the layers a token ran (1.0: every token used the whole model)."""
        flat = [d for row in self.depth for d in row]
        return sum(flat) / (len(flat) * self.layers) if flat else 1.0


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def fill_kv(layer, h: torch.Tensor, rope, cache, index: int) -> None:
    """The ``copy`` rule for one skipped layer: keys and values from ``h [B, 1, D]`` (its input norm, the key and
    value projections, rotary positions on the keys), appended to the cache without running the layer."""
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    B, Q, _ = x.shape
    k = attn.k_proj(x).view(B, Q, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(B, Q, -1, attn.head_dim).transpose(1, 2)
    if hasattr(attn, "k_norm"):  # Qwen3 normalises keys per head before the rotation
        k = attn.k_norm(k)
    cos, sin = rope
    k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    cache.update(k, v, index)


@torch.no_grad()
def confident_decode(model: MultiExitModel, prompts, max_new_tokens: int, *, threshold: float, kv: str = "copy",
                     skip_when_all_left: bool = True) -> Exited:
    """Greedy decoding where each token leaves at the first exit whose top probability is at least ``threshold``
    (1.0 or more: never, plain greedy); ``kv``: the rule for the skipped layers' cache (see the module doc).
    ``skip_when_all_left=False`` runs the layers with frozen states instead of the projection-only path (the two
    give the same tokens; a test checks it)."""
    bb = _backbone(model)
    if kv not in KV_RULES:
        raise ConfigError(f"kv rule {kv!r}: choose one of {', '.join(KV_RULES)}")
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold <= 0:
        raise ConfigError(f"threshold must be a probability in (0, 1] (above 1: never exit), got {threshold!r}")
    ids, mask = prepare_prompts(model, prompts, max_new_tokens)
    heads = {e: (bb.final if model.head_name == "shared" else model.heads[j]) for j, e in enumerate(model.exits)}
    L, start = len(bb.layers), time.perf_counter()
    tokens, depth = [], []
    with eval_mode(model):
        state = _prefill(bb, ids, mask)
        for _ in range(max_new_tokens):
            tok, used = _token(bb, heads, state, threshold, kv, skip_when_all_left)
            state.pending, state.pos = tok, state.pos + 1
            tokens.append(tok)
            depth.append(used)
    as_rows = (lambda ts: torch.stack(ts, 1).tolist()) if tokens else (lambda ts: [[] for _ in range(len(ids))])
    return Exited(as_rows(tokens), as_rows(depth), L, time.perf_counter() - start)


def _token(bb, heads: dict, state, threshold: float, kv: str, skip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One new token per row: (token [B], layers it ran [B])."""
    L = len(bb.layers)
    _grow(state, 1)
    h = bb.embed(state.pending[:, None])  # [B, 1, D]
    rope = bb.rotary(h, state.pos[:, None])
    B = h.shape[0]
    left = torch.zeros(B, dtype=torch.bool, device=h.device)
    token = torch.zeros(B, dtype=torch.long, device=h.device)
    used = torch.full((B,), L, dtype=torch.long, device=h.device)
    for i in range(L):
        if kv == "copy" and skip and bool(left.all()):
            for rest in range(i, L):
                fill_kv(bb.layers[rest], h, rope, state.cache, rest)
            break
        keys = state.cache.get_seq_length(i) + 1
        out = bb.layer_step(i, h, causal_mask(state.valid[:, :keys], 1, h.dtype), rope, state.cache)
        h = torch.where(left[:, None, None], h, out) if kv == "copy" else out
        if i in heads:
            probs = torch.softmax(heads[i](h)[:, -1].float(), -1)  # [B, V]
            conf, arg = probs.max(-1)
            now = ~left & (conf >= threshold)
            token = torch.where(now, arg, token)
            used = torch.where(now, torch.full_like(used, i + 1), used)
            left = left | now
    final = bb.final(h)[:, -1].argmax(-1)
    return torch.where(left, token, final), used
