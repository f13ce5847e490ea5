"""Exits on Hugging Face decoder-only causal language models (Llama, Mistral, Qwen2/3 layouts).

The model is ordered blocks like every exitlab backbone: the token embeddings, each decoder layer, then the final
norm and LM head (the final exit). An exit after layer ``e`` (0-based, as ``model.exits`` everywhere in exitlab)
reads that layer's hidden states ``[B, T, D]`` and gives next-token logits ``[B, T, V]``, so it runs ``e + 1``
layers: exit ``e`` is transformers' ``assistant_early_exit=e + 1``.

Two kinds of exit head:

- ``shared`` (the default, LayerSkip): the model's own final norm and LM head read the exit's states. No new
  parameters; an exit can be read after any layer (self-speculative decoding may draft from any depth).
- ``lm`` (EE-Tuning style): each exit has its own RMSNorm and linear LM head, initialised as copies of the final
  ones (``init="copy"``) or at random. Only these train in a disjoint regime's head phase.

The backbone takes ``[B, T]`` token ids without padding (training chunks of a corpus); decoding with padding and a
KV cache goes through :meth:`HFCausal.layer_step` (see :mod:`exitlab.evaluation.speculative`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .contract import ExitPoint, TapFn
from .core import MultiExitModel, eval_mode
from .flops import count_flops
from .heads import HEADS
from .hf import require_transformers
from .spec import CausalSpec

CAUSAL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # decoder layers (h, mask, position embeddings, cache)
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "deberta", "deberta-v2")


class LMOut(nn.Module):
    """The final exit: the model's final norm, then its LM head (``[B, T, D]`` -> ``[B, T, V]``). Both are the
    wrapped model's own modules, referenced, not registered again (a checkpoint holds each tensor once)."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.__dict__["norm"], self.__dict__["lm_head"] = norm, lm_head

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.norm(h))


@HEADS.register("lm")
class LMExitHead(nn.Module):
    """An exit's own RMSNorm and linear LM head (EE-Tuning's exit layer), ``[B, T, D]`` -> ``[B, T, V]``."""

    def __init__(self, point: ExitPoint, num_classes: int, *, eps: float = 1e-6):
        super().__init__()
        if point.kind != "causal":
            raise ConfigError("head 'lm' reads a causal LM's hidden states; use it with hf-causal backbones")
        self.norm = nn.RMSNorm(point.channels, eps=eps)
        self.lm_head = nn.Linear(point.channels, num_classes, bias=False)

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.norm(h))


def causal_mask(valid: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``[B, 1, Q, S]`` for the last ``queries`` of ``S`` key slots: a query sees the
    valid keys (``valid [B, S]`` True) at or before its own slot, and nothing else."""
    S = valid.shape[1]
    q_slot = torch.arange(S - queries, S, device=valid.device)[:, None]  # [Q, 1]
    seen = torch.arange(S, device=valid.device)[None, :] <= q_slot  # [Q, S]
    ok = seen[None] & valid[:, None, :]  # [B, Q, S]
    return (~ok)[:, None].to(dtype) * torch.finfo(dtype).min


class HFCausal(nn.Module):
    """A Hugging Face causal LM as ordered blocks: embeddings, each decoder layer, final norm + LM head."""

    layers_skippable = True  # layer dropout may skip any decoder layer: residual, same width in and out

    def __init__(self, model: nn.Module):
        super().__init__()
        config = getattr(model, "config", None)
        kind = getattr(config, "model_type", None)
        check_causal_type(kind, type(model).__name__)
        if not hasattr(model, "lm_head") or not hasattr(getattr(model, "model", None), "layers"):
            raise ConfigError(f"{type(model).__name__} has no LM head; load it with AutoModelForCausalLM")
        self.model, self.kind = model, kind
        self.num_classes = int(config.vocab_size)
        self.max_length = int(config.max_position_embeddings)
        self.final = LMOut(model.model.norm, model.lm_head)
        self.feature_info = [ExitPoint(int(config.hidden_size), 1, "causal") for _ in self.layers]
        names = inspect.signature(self.layers[0].forward).parameters  # transformers 5: cache; 4.x: past_key_value(s)
        self.cache_arg = next((n for n in ("cache", "past_key_values", "past_key_value") if n in names), "cache")

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token states after the embeddings: ``[B, T, D]``."""
        return self.model.model.embed_tokens(ids)

    def rotary(self, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary position embeddings (cos, sin) of ``positions [B, T]``."""
        return self.model.model.rotary_emb(h, position_ids=positions)

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` int64 ids below the vocabulary size and no longer than the context, or one clear error."""
        ids = torch.as_tensor(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.is_floating_point():
            raise ConfigError(f"a causal LM takes [B, T] integer token ids, got {ids.dtype} {tuple(ids.shape)}")
        if ids.shape[1] > self.max_length:
            raise ConfigError(f"a sequence of {ids.shape[1]} tokens is longer than this model's context "
                              f"({self.max_length}); truncate it or use a model with a longer context")
        # the id range is read back only on the CPU: on an accelerator it would stall every step (LMSource checks
        # its data once, and embedding lookups fail loudly on a bad id)
        if ids.device.type == "cpu" and ids.numel() and (int(ids.max()) >= self.num_classes or int(ids.min()) < 0):
            raise ConfigError(f"token id {int(ids.max())} is outside this model's vocabulary of {self.num_classes}; "
                              "the tokenizer does not fit the model (use the tokenizer it was trained with)")
        return ids.long()

    def layer_step(self, i: int, h: torch.Tensor, mask: torch.Tensor, rope, cache=None) -> torch.Tensor:
        """Decoder layer ``i`` on states ``h [B, Q, D]`` with additive mask ``[B, 1, Q, S]``; ``cache`` (an object
        with ``update(k, v, layer_idx, **kw)``) receives the layer's keys and values and returns all ``S``."""
        kw = {self.cache_arg: cache} if cache is not None else {}
        out = self.layers[i](h, attention_mask=mask, position_embeddings=rope, use_cache=cache is not None, **kw)
        return out[0] if isinstance(out, tuple) else out

    def run(self, x, taps: set[int], on_tap: TapFn) -> torch.Tensor | None:
        """Embeddings, then layer by layer; the states of every layer in ``taps`` go to ``on_tap``."""
        ids = self.check_ids(x)
        h = self.embed(ids)
        T = ids.shape[1]
        rope = self.rotary(h, torch.arange(T, device=ids.device)[None])
        mask = causal_mask(torch.ones(1, T, dtype=torch.bool, device=ids.device), T, h.dtype)
        for i in range(len(self.layers)):
            h = self.layer_step(i, h, mask, rope)
            if i in taps:
                h = on_tap(i, h)
                if h is None:
                    return None
        return self.final(h)

    def forward(self, x) -> torch.Tensor:
        """The plain LM: next-token logits ``[B, T, V]``."""
        return self.run(x, set(), lambda i, h: h)


def check_causal_type(kind: str | None, what: str) -> None:
    """Refuse, in one line, a model that is not a supported decoder-only causal LM (an encoder above all)."""
    if kind in ENCODER_TYPES:
        raise ConfigError(f"{what} holds a {kind} encoder, not a causal LM; put exits on encoders with "
                          "exitlab.from_hf (model.backbone: hf:...), or give a decoder-only LM folder")
    if kind not in CAUSAL_TYPES:
        raise ConfigError(f"{what} (model_type {kind!r}) is not a supported causal LM; exitlab.from_hf_causal takes "
                          f"decoder-only models of type {', '.join(CAUSAL_TYPES)}")


def load_causal(source) -> nn.Module:
    """A causal LM: a module as given, or a local folder written by ``save_pretrained`` (checked before loading)."""
    if isinstance(source, nn.Module):
        return source
    tf = require_transformers()
    path = Path(str(source)).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{source!r} is not a model folder (no config.json); give a folder written by "
                          "save_pretrained")
    config = tf.AutoConfig.from_pretrained(str(path))
    check_causal_type(config.model_type, f"folder {source}")
    try:
        return tf.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"cannot load a causal LM from {source!r} ({first})") from None


def tiny_llama(*, vocab_size: int, layers: int = 6, hidden: int = 256, heads: int = 4, kv_heads: int | None = None,
               context: int = 256, seed: int = 0, tie: bool = False) -> nn.Module:
    """A randomly initialised small Llama (transformers ``LlamaConfig``), seeded: ``layers`` decoder layers of width
    ``hidden``, ``heads`` attention heads, a context of ``context`` tokens."""
    tf = require_transformers()
    cfg = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         max_position_embeddings=context, tie_word_embeddings=tie, attn_implementation="sdpa",
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tf.LlamaForCausalLM(cfg)


def from_hf_causal(model, *, exits="every:1", head: str = "shared", init: str = "copy") -> MultiExitModel:
    """Attach exits to a Hugging Face causal LM after chosen layers; its own norm and LM head are the final exit.

    ``model``: a loaded ``AutoModelForCausalLM`` model or a local folder. ``exits``: 0-based layer indices (the
    last layer feeds the final exit) or ``"every:K"``. ``head``: ``"shared"`` (LayerSkip: the final norm and LM
    head at every exit) or ``"lm"`` (a norm and LM head per exit; ``init``: ``"copy"`` of the final ones, as
    EE-Tuning, or ``"random"``)."""
    if head not in ("shared", "lm"):
        raise ConfigError(f"head {head!r}: a causal LM's exits use head 'shared' (LayerSkip) or 'lm' (one per exit)")
    if init not in ("copy", "random"):
        raise ConfigError(f"init {init!r}: choose copy (the final norm and LM head) or random")
    module = untie(load_causal(model))
    backbone = HFCausal(module)
    blocks = exit_layers(exits, len(backbone.layers))
    spec = CausalSpec(config=module.config.to_dict(), num_classes=backbone.num_classes, exits=tuple(blocks),
                      head=head, init=init, source=None if isinstance(model, nn.Module) else str(model))
    multi = MultiExitModel(backbone, blocks, head, spec=spec)
    final = backbone.final.lm_head.weight
    multi.heads.to(device=final.device, dtype=final.dtype)
    if head == "lm" and init == "copy":
        for h in multi.heads:
            h.norm.weight.data.copy_(backbone.final.norm.weight.data)
            h.lm_head.weight.data.copy_(backbone.final.lm_head.weight.data)
            h.norm.eps = getattr(backbone.final.norm, "variance_epsilon", h.norm.eps)
    return multi


def untie(module: nn.Module) -> nn.Module:
    """A model whose LM head shares the token embeddings' weights gets its own copy (the same values): exits then
    train the head alone, and a checkpoint holds each tensor once (safetensors refuses shared ones). The config
    says so, so the model rebuilt from it has the same parameters."""
    head, emb = module.get_output_embeddings(), module.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
        module.config.tie_word_embeddings = False
    return module


def model_from_causal_spec(spec: CausalSpec) -> MultiExitModel:
    """Rebuild a :func:`from_hf_causal` model from its spec (random weights; a checkpoint's load after)."""
    tf = require_transformers()
    d = dict(spec.config)
    cfg = tf.AutoConfig.for_model(d.pop("model_type"), **d)
    module = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return from_hf_causal(module, exits=list(spec.exits), head=spec.head, init=spec.init)


def exit_layers(exits, n: int) -> list[int]:
    """Layer indices from a list or ``"every:K"``; exits go after layers 0..n-2 (the last feeds the final exit)."""
    if isinstance(exits, str):
        kind, _, k = exits.partition(":")
        if kind != "every" or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"exits {exits!r}: give layer indices or 'every:K'")
        return list(range(int(k) - 1, n - 1, int(k)))
    exits = list(exits)
    if any(not isinstance(e, int) or isinstance(e, bool) for e in exits) or exits != sorted(set(exits)):
        raise ConfigError(f"exits {exits}: give sorted, unique layer indices")
    bad = [e for e in exits if not 0 <= e < n - 1]
    if bad:
        raise ConfigError(f"exit after layer {bad[0]} is past the last layer: this LM has layers 0..{n - 1}, and exits "
                          f"go after layers 0..{n - 2} (layer {n - 1} feeds the final exit)")
    return exits


def is_causal(model: MultiExitModel) -> bool:
    """Whether ``model`` is a causal LM with exits (:func:`from_hf_causal`)."""
    return isinstance(getattr(model, "backbone", None), HFCausal)


def flops_per_token(model: MultiExitModel, context: int = 128) -> list[float]:
    """Measured FLOPs per token of each exit (final last), FlopCounterMode (1 multiply-add = 2 FLOPs): one forward
    pass of ``context`` tokens up to that exit, divided by ``context``. Attention grows with the context, so the
    number holds at that context length only. Exit ``j`` is counted alone (its layers and its own head, no earlier
    exit's head), as a draft model or a per-token exit uses it."""
    if not is_causal(model):
        raise ConfigError("flops_per_token takes a causal LM with exits (exitlab.from_hf_causal)")
    if not 1 <= context <= model.backbone.max_length:
        raise ConfigError(f"context {context}: give 1..{model.backbone.max_length} tokens")
    ids = torch.zeros(1, context, dtype=torch.long, device=next(model.parameters()).device)
    with eval_mode(model):
        return [count_flops(lambda j=j: exit_logits(model, ids, j)).total / context for j in range(model.num_exits)]


def exit_logits(model: MultiExitModel, ids: torch.Tensor, j: int) -> torch.Tensor:
    """Logits ``[B, T, V]`` of exit ``j`` alone: the layers up to it and its head, no other exit's head."""
    if j == model.num_exits - 1:
        return model.backbone(ids)
    got = []
    model.backbone.run(ids, {model.exits[j]}, lambda i, h: got.append(model.heads[j](h)))
    return got[0]
