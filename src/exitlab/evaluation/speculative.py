"""Self-speculative decoding (LayerSkip, Elhoushi et al. 2024) at any batch size, and plain greedy decoding.

Each round drafts ``k`` tokens greedily with the first ``E`` layers and the exit after them, then verifies them
with the full model in one pass. Verification reuses the draft: the first ``E`` layers' keys and values of the
drafted tokens are already in the cache, and their layer-``E`` states are kept, so only the last draft token runs
through the first ``E`` layers again and the other ``L - E`` layers run once on all ``k + 1`` positions. The
accepted tokens are the longest prefix of the draft that the full model's greedy choice agrees with, plus the full
model's own next token, so the output is plain greedy decoding of the full model, token for token.

**Batches.** Prompts are left-padded. Sequences accept different numbers of tokens per round; the cache stays one
tensor per layer: after a round each row's window of ``k + 1`` slots is rotated so that its accepted entries end at
the last column, the rejected ones become masked holes, and the columns that are holes in every row are dropped.
Every row's next token then sits at the same slot; positions (rotary) are counted per row and skip the holes.
A row that has its tokens keeps decoding with the others and its extra tokens are cut off (greedy tokens never
depend on later ones). transformers' ``generate(assistant_early_exit=E)`` refuses batches above one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..models.causal import HFCausal, causal_mask, is_causal
from ..models.core import MultiExitModel, eval_mode


class SlotCache:
    """Keys and values per layer, ``[B, H, S, d]``, appended by the layers (the ``update`` transformers calls)."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.k[layer_idx] is None:
            self.k[layer_idx], self.v[layer_idx] = k, v
        else:
            self.k[layer_idx] = torch.cat([self.k[layer_idx], k], 2)
            self.v[layer_idx] = torch.cat([self.v[layer_idx], v], 2)
        return self.k[layer_idx], self.v[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.k[layer_idx] is None else self.k[layer_idx].shape[2]

    def realign(self, start: int, shift: torch.Tensor, drop: int) -> None:
        """Rotate each row's slots ``start:`` right by ``shift[b]`` (its rejected entries to the front of the
        window), then drop the first ``drop`` slots of the window (rejected in every row)."""
        for store in (self.k, self.v):
            for i, t in enumerate(store):
                store[i] = torch.cat([t[:, :, :start], rotate(t[:, :, start:], shift, 2)[:, :, drop:]], 2)


def rotate(t: torch.Tensor, shift: torch.Tensor, dim: int) -> torch.Tensor:
    """Each row ``b`` of ``t`` rolled right by ``shift[b]`` along ``dim`` (rows are dim 0)."""
    n = t.shape[dim]
    j = torch.arange(n, device=t.device)
    src = (j[None, :] - shift[:, None]) % n  # [B, n]
    shape = [t.shape[0]] + [1] * (t.ndim - 1)
    shape[dim] = n
    return t.gather(dim, src.view(shape).expand_as(t))


@dataclass
class _State:
    """The decoding state: the cache, which slots hold real tokens, each row's next position and pending token."""

    cache: SlotCache
    valid: torch.Tensor  # [B, S] bool: slot holds a real token
    pos: torch.Tensor  # [B] the next position (rotary) of each row
    pending: torch.Tensor  # [B] the last token, not yet in the cache


@dataclass
class Decoded:
    """Generated tokens per row (``max_new_tokens`` each) and the decoding statistics."""

    tokens: list[list[int]]
    rounds: int = 0
    drafted: int = 0  # draft tokens proposed, summed over rows
    accepted: int = 0  # draft tokens accepted, summed over rows
    seconds: float = 0.0
    per_round: list[list[int]] = field(default_factory=list)  # accepted draft tokens per row, per round

    @property
    def acceptance(self) -> float:
        """Accepted draft tokens over proposed ones."""
        return self.accepted / self.drafted if self.drafted else 0.0


def _backbone(model: MultiExitModel) -> HFCausal:
    if not is_causal(model):
        raise ConfigError("self-speculative decoding takes a causal LM with exits (exitlab.from_hf_causal)")
    return model.backbone


def check_draft(model: MultiExitModel, draft_layer: int) -> None:
    """The draft exit must be after a layer before the last one, and an exit of the model unless the exits share
    the final head (LayerSkip's: any layer can draft)."""
    n = len(model.backbone.layers)
    if not isinstance(draft_layer, int) or draft_layer < 0 or draft_layer >= n:
        raise ConfigError(f"draft exit after layer {draft_layer} is past the last layer: this LM has layers "
                          f"0..{n - 1}; draft from layers 0..{n - 2}")
    if draft_layer == n - 1:
        raise ConfigError(f"draft exit after layer {draft_layer} is the final layer: drafting with the full model "
                          f"saves nothing; draft from an earlier layer (0..{n - 2})")
    if model.head_name != "shared" and draft_layer not in model.exits:
        raise ConfigError(f"draft exit after layer {draft_layer} has no head: this model's exits are after layers "
                          f"{model.exits} (per-exit heads); pick one of them")


def prepare_prompts(model: MultiExitModel, prompts, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids ``[B, T]`` and mask ``[B, T]`` from a list of token-id lists (ragged), or from ``(ids,
    mask)`` already left-padded; checked against the vocabulary and the context."""
    bb = _backbone(model)
    device = next(model.parameters()).device
    if isinstance(prompts, tuple):
        ids, mask = torch.as_tensor(prompts[0]).long(), torch.as_tensor(prompts[1]).bool()
        if ids.shape != mask.shape or ids.ndim != 2:
            raise ConfigError(f"prompts (ids, mask) must both be [B, T], got {tuple(ids.shape)}, {tuple(mask.shape)}")
        if not bool(mask[:, -1].all()):
            raise ConfigError("prompts must be left-padded: every row's last column must be a real token")
    else:
        rows = [list(map(int, p)) for p in prompts]
        if not rows or any(len(r) == 0 for r in rows):
            raise ConfigError("give at least one prompt, each of at least one token")
        T = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])
        mask = torch.tensor([[False] * (T - len(r)) + [True] * len(r) for r in rows])
    longest = int(mask.sum(1).max())
    if longest + max_new_tokens > bb.max_length:
        raise ConfigError(f"a prompt of {longest} tokens plus {max_new_tokens} new ones is longer than this model's "
                          f"context ({bb.max_length}); shorten the prompt or ask for fewer tokens")
    bb.check_ids(ids)
    return ids.to(device), mask.to(device)


def encode_prompts(model: MultiExitModel, tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts through a transformers tokenizer, left-padded; refuses a tokenizer that does not fit the model and a
    batch of several prompts when the tokenizer has no padding token."""
    bb = _backbone(model)
    size = len(tokenizer)
    if size > bb.num_classes:
        raise ConfigError(f"the tokenizer has {size} tokens but the model's vocabulary has {bb.num_classes}: the "
                          "tokenizer does not fit the model; use the tokenizer it was trained with")
    if len(texts) > 1 and tokenizer.pad_token_id is None:
        raise ConfigError("batch prompts need padding but the tokenizer has no padding token; set one "
                          "(tokenizer.pad_token = tokenizer.eos_token) or decode one prompt at a time")
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=len(texts) > 1)
    return enc["input_ids"], enc["attention_mask"].bool()


def _prefill(bb: HFCausal, ids: torch.Tensor, mask: torch.Tensor) -> _State:
    """Every prompt token but the last through all layers into the cache; the last one is pending."""
    cache = SlotCache(len(bb.layers))
    pos_all = (mask.long().cumsum(1) - 1).clamp_min(0)  # [B, T]
    state = _State(cache, mask[:, :-1], pos_all[:, -1], ids[:, -1])
    if ids.shape[1] > 1:
        h = bb.embed(ids[:, :-1])
        rope = bb.rotary(h, pos_all[:, :-1])
        m = causal_mask(state.valid, ids.shape[1] - 1, h.dtype)
        for i in range(len(bb.layers)):
            h = bb.layer_step(i, h, m, rope, cache)
    return state


def _run_layers(bb: HFCausal, h: torch.Tensor, layers: range, state: _State, pos: torch.Tensor) -> torch.Tensor:
    """States ``h [B, Q, D]`` at positions ``pos [B, Q]`` through ``layers``; their slots are already ``valid``."""
    rope = bb.rotary(h, pos)
    masks: dict[int, torch.Tensor] = {}  # by key count: the layers of one range hold equally many entries
    for i in layers:
        keys = state.cache.get_seq_length(i) + h.shape[1]
        if keys not in masks:
            masks[keys] = causal_mask(state.valid[:, :keys], h.shape[1], h.dtype)
        h = bb.layer_step(i, h, masks[keys], rope, state.cache)
    return h


def _grow(state: _State, n: int) -> None:
    """``n`` more valid slots at the end (every row's next tokens)."""
    more = torch.ones(state.valid.shape[0], n, dtype=torch.bool, device=state.valid.device)
    state.valid = torch.cat([state.valid, more], 1)


@torch.no_grad()
def greedy(model: MultiExitModel, prompts, max_new_tokens: int) -> Decoded:
    """Plain greedy decoding of the full model with the same cache: the reference for self-speculative decoding."""
    bb = _backbone(model)
    ids, mask = prepare_prompts(model, prompts, max_new_tokens)
    start = time.perf_counter()
    with eval_mode(model):
        state = _prefill(bb, ids, mask)
        out = []
        for _ in range(max_new_tokens):
            _grow(state, 1)
            h = _run_layers(bb, bb.embed(state.pending[:, None]), range(len(bb.layers)), state, state.pos[:, None])
            state.pending = bb.final(h)[:, -1].argmax(-1)
            state.pos = state.pos + 1
            out.append(state.pending)
    tokens = torch.stack(out, 1).tolist() if out else [[] for _ in range(len(ids))]
    return Decoded(tokens, rounds=max_new_tokens, seconds=time.perf_counter() - start)


@torch.no_grad()
def self_speculative(model: MultiExitModel, prompts, max_new_tokens: int, *, draft_layer: int,
                     draft_tokens: int = 4) -> Decoded:
    """Greedy decoding of the full model, drafted ``draft_tokens`` at a time by the exit after ``draft_layer``
    (0-based; it runs ``draft_layer + 1`` layers, transformers' ``assistant_early_exit=draft_layer + 1``).
    ``prompts``: token-id lists (ragged; padded here) or left-padded ``(ids, mask)``."""
    bb = _backbone(model)
    check_draft(model, draft_layer)
    if not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise ConfigError(f"draft_tokens must be a whole number >= 1, got {draft_tokens!r}")
    ids, mask = prepare_prompts(model, prompts, max_new_tokens)
    head = bb.final if model.head_name == "shared" else model.heads[model.exits.index(draft_layer)]
    start = time.perf_counter()
    result = Decoded([[] for _ in range(len(ids))])
    with eval_mode(model):
        state = _prefill(bb, ids, mask)
        while min(len(t) for t in result.tokens) < max_new_tokens:
            accepted = _round(bb, head, state, draft_layer + 1, draft_tokens, result)
            result.per_round.append(accepted)
    result.tokens = [t[:max_new_tokens] for t in result.tokens]
    result.seconds = time.perf_counter() - start
    return result


def _round(bb: HFCausal, head, state: _State, E: int, k: int, result: Decoded) -> list[int]:
    """One draft-and-verify round; appends each row's new tokens to ``result`` and returns its accepted drafts."""
    L, S = len(bb.layers), state.valid.shape[1]
    offsets = torch.arange(k + 1, device=state.pos.device)
    pos = state.pos[:, None] + offsets  # [B, k+1]
    _grow(state, k + 1)
    draft_states, x = [], state.pending
    drafts = []
    for s in range(k):  # the draft: E layers and the exit, one token at a time
        h = _run_layers(bb, bb.embed(x[:, None]), range(E), state, pos[:, s:s + 1])
        draft_states.append(h)
        x = head(h)[:, -1].argmax(-1)
        drafts.append(x)
    d = torch.stack(drafts, 1)  # [B, k]
    # verification: the last draft through the first E layers, then all k+1 positions through the rest
    draft_states.append(_run_layers(bb, bb.embed(d[:, -1:]), range(E), state, pos[:, k:]))
    h = _run_layers(bb, torch.cat(draft_states, 1), range(E, L), state, pos)
    g = bb.final(h).argmax(-1)  # [B, k+1]: the full model's greedy token after each position
    a = (d == g[:, :k]).long().cumprod(1).sum(1)  # [B] accepted drafts
    for row, (toks, n) in enumerate(zip(g.tolist(), a.tolist())):
        result.tokens[row].extend(toks[: n + 1])
    result.rounds += 1
    result.drafted += k * len(a)
    result.accepted += int(a.sum())
    shift, drop = k - a, int(k - a.max())
    state.cache.realign(S, shift, drop)
    window = offsets[None, :] >= shift[:, None]  # [B, k+1] after the rotation: holes first
    state.valid = torch.cat([state.valid[:, :S], window[:, drop:]], 1)
    state.pos = state.pos + a + 1
    state.pending = g.gather(1, a[:, None])[:, 0]
    return a.tolist()
