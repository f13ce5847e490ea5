"""Exits on Hugging Face transformer encoders: BERT, RoBERTa, ELECTRA, DistilBERT and MiniLM-style (BERT) models.

exitlab drives the encoder layer by layer itself (it does not ask the model for ``output_hidden_states``), so a
sample that leaves at an exit stops computing, and its row of the attention mask leaves with it. It builds the
additive attention mask once per batch shape, which is what every encoder layer takes in both transformers 4.x and
5.x (eager and SDPA attention). The final exit is the model's own classification head.

Inputs are one ``[B, 3, L]`` int64 tensor, rows ``input_ids``, ``attention_mask``, ``token_type_ids`` (see
:func:`pack`): one tensor slices, moves to a device and batches like an image batch, so the training loop, the
evaluation and the logits cache need nothing text-specific. A tokenizer's output (a mapping) is packed on the way in.

``transformers`` is an optional extra (``pip install 'exitlab[nlp]'``), imported only when a model is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .contract import ExitPoint, TapFn, TextFeature
from .core import MultiExitModel
from .heads import build_head
from .spec import HFSpec

# model_type -> (path of the base model's layer list, how the final exit reads the last layer)
LAYOUTS = {
    "bert": ("encoder.layer", "pooler"),  # BERT and MiniLM-style checkpoints (BERT architecture)
    "roberta": ("encoder.layer", "classifier"),
    "xlm-roberta": ("encoder.layer", "classifier"),
    "camembert": ("encoder.layer", "classifier"),
    "electra": ("encoder.layer", "classifier"),
    "distilbert": ("transformer.layer", "distilbert"),
}
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}  # positions start after the padding index


def require_transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError("text encoders need transformers; install it with pip install 'exitlab[nlp]'") from None


def pack(input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """``[B, 3, L]`` int64: input ids, attention mask (1 real, 0 padding) and token type ids, one tensor."""
    ids = torch.as_tensor(input_ids).long()
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ConfigError(f"input_ids must be [B, L], got shape {tuple(ids.shape)}")
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long().view_as(ids)
    types = torch.zeros_like(ids) if token_type_ids is None else torch.as_tensor(token_type_ids).long().view_as(ids)
    return torch.stack([ids, mask.to(ids.device), types.to(ids.device)], 1)


def as_packed(x) -> torch.Tensor:
    """A tokenizer's output (a mapping with ``input_ids``) or an already packed ``[B, 3, L]`` tensor, packed."""
    if isinstance(x, Mapping):
        if "input_ids" not in x:
            raise ConfigError(f"text input needs input_ids; got keys {sorted(x)}")
        return pack(x["input_ids"], x.get("attention_mask"), x.get("token_type_ids"))
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"a text encoder takes a tokenizer's output or a packed [B, 3, L] tensor "
                          f"(exitlab.models.hf.pack), got {shape}")
    return x.long()


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, 1, L]``: 0 for real tokens, the dtype's most negative value for padding (added to the scores)."""
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def _width(mask: torch.Tensor) -> int:
    """The last column holding a real token in any row, plus one: padding to the right of it changes nothing (it
    is masked as a key, and its own states feed no head)."""
    cols = torch.nonzero(mask.any(0))
    return int(cols[-1]) + 1 if len(cols) else mask.shape[-1]


def _attr(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class HFEncoder(nn.Module):
    """A Hugging Face encoder as ordered blocks: the embeddings, each encoder layer, then the final classifier.

    ``model`` is an ``AutoModelForSequenceClassification`` model (its own head is the final exit) or a bare
    ``AutoModel`` encoder (then a fresh exitlab head of kind ``final_head`` reads the last layer)."""

    def __init__(self, model: nn.Module, num_labels: int, final_head: dict | None = None):
        super().__init__()
        config = getattr(model, "config", None)
        kind = getattr(config, "model_type", None)
        if kind not in LAYOUTS or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
            raise ConfigError(f"{type(model).__name__} (model_type {kind!r}) is not a supported text encoder; "
                              f"exitlab.from_hf takes encoders of type {', '.join(LAYOUTS)}")
        impl = getattr(config, "_attn_implementation", None) or "eager"
        if impl not in ("eager", "sdpa"):
            raise ConfigError(f"attention implementation {impl!r} is not supported for exits; load the model with "
                              "attn_implementation='sdpa' or 'eager'")
        self.model, self.kind, self.num_classes = model, kind, num_labels  # model: the one registered submodule
        self.layers_path, self.final_kind = LAYOUTS[kind]
        self.impl = impl
        # transformers 4.x DistilBERT layers take attn_mask: [B, L] 0/1 under eager attention, additive under SDPA
        self.old_distilbert = "attn_mask" in inspect.signature(self.layers[0].forward).parameters
        self.max_length = config.max_position_embeddings - POSITION_OFFSET.get(kind, 0)
        dim = config.hidden_size if kind != "distilbert" else config.dim
        self.feature_info = [ExitPoint(dim, 1, "text") for _ in self.layers]
        self.head = None  # a bare encoder's final exit
        if model.base_model is model:
            spec = dict(final_head or {"pool": "cls"})
            self.head = build_head("text", self.feature_info[-1], num_labels, **spec)
            self.final_kind = "head"
        elif not type(model).__name__.endswith("ForSequenceClassification"):
            raise ConfigError(f"{type(model).__name__} is neither a sequence classifier nor a bare encoder; load it "
                              "with AutoModelForSequenceClassification or AutoModel")
        elif getattr(config, "num_labels", None) != num_labels:
            raise ConfigError(f"{type(model).__name__} has {config.num_labels} labels but num_labels={num_labels}; "
                              "load it with num_labels=... (from_pretrained(path, num_labels=N))")

    @property
    def base(self) -> nn.Module:
        """The encoder without its classifier (``model.bert``, ``model.roberta``, ...; the model itself when bare)."""
        return self.model.base_model

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder layers, in order: the blocks exits attach after."""
        return _attr(self.base, self.layers_path)

    def embed(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Token states after the embeddings: ``[B, L, D]``."""
        if self.kind == "distilbert":
            return self.base.embeddings(ids)
        h = self.base.embeddings(input_ids=ids, token_type_ids=types)
        project = getattr(self.base, "embeddings_project", None)  # ELECTRA with embedding_size != hidden_size
        return project(h) if project is not None else h

    def final(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The model's own classification head on the last layer's states ``[B, L, D]``: ``[B, C]``."""
        m = self.model
        if self.final_kind == "head":
            return self.head(TextFeature(h, mask))
        if self.final_kind == "pooler":  # BERT: pooler (dense + tanh on CLS), dropout, linear
            return m.classifier(m.dropout(self.base.pooler(h)))
        if self.final_kind == "distilbert":
            z = torch.relu(m.pre_classifier(h[:, 0]))
            return m.classifier(m.dropout(z))
        return m.classifier(h)  # RoBERTa, ELECTRA: their classification head reads the CLS token itself

    layers_skippable = True  # layer dropout may skip any transformer layer: residual, same width in and out

    def run(self, x, taps: set[int], on_tap: TapFn) -> torch.Tensor | None:
        """Embeddings, then layer by layer; the feature of every layer in ``taps`` (a :class:`TextFeature`) goes
        to ``on_tap``, which may hand back fewer rows (their attention mask goes with them) or stop."""
        x = self.prepare_input(x)
        x = x[..., : _width(x[:, 1].bool())]  # no column that is padding in every row
        ids, mask, types = x[:, 0], x[:, 1].bool(), x[:, 2]  # [B, L] each
        h = self.embed(ids, types)
        ext = self.layer_mask(mask, h.dtype)
        for i, layer in enumerate(self.layers):
            out = layer(h, attn_mask=ext) if self.old_distilbert else layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple, 5.x the tensor
            if i in taps:
                feat = on_tap(i, TextFeature(h, mask))
                if feat is None:
                    return None
                if len(feat) != len(h):  # samples left: their mask rows go, and columns only they filled
                    width = _width(feat.mask)
                    feat = TextFeature(feat.hidden[:, :width], feat.mask[:, :width])
                    ext = self.layer_mask(feat.mask, h.dtype)
                h, mask = feat.hidden, feat.mask
        return self.final(h, mask)

    def layer_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The attention mask as this version's layers take it (see :func:`additive_mask`)."""
        if self.old_distilbert and self.impl == "eager":
            return mask.long()  # [B, L]
        return additive_mask(mask, dtype)

    def prepare_input(self, x) -> torch.Tensor:
        """A tokenizer's output or a packed tensor as a checked packed ``[B, 3, L]`` tensor."""
        x = as_packed(x)
        if x.shape[-1] > self.max_length:
            raise ConfigError(f"a sequence of {x.shape[-1]} tokens is longer than this {self.kind} model takes "
                              f"({self.max_length}); truncate it when tokenising (exitlab's text data does)")
        return x

    def forward(self, x) -> torch.Tensor:
        """The plain encoder with its classifier: ``[B, C]``."""
        return self.run(x, set(), lambda i, h: h)


def _load(source, num_labels: int, with_head: bool, attn: str | None) -> nn.Module:
    """A Hugging Face model from a local path (or the cache) with ``num_labels`` outputs, or the module itself."""
    if isinstance(source, nn.Module):
        return source
    tf = require_transformers()
    path = Path(str(source)).expanduser()
    kwargs = {"attn_implementation": attn} if attn else {}
    try:
        if with_head:
            return tf.AutoModelForSequenceClassification.from_pretrained(str(path) if path.exists() else source,
                                                                          num_labels=num_labels, **kwargs)
        return tf.AutoModel.from_pretrained(str(path) if path.exists() else source, **kwargs)
    except (OSError, ValueError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"cannot load a Hugging Face model from {source!r} ({first}); give a local folder "
                          "written by save_pretrained, or a name in the local cache") from None


def from_config(config: dict, with_head: bool = True) -> nn.Module:
    """A randomly initialised Hugging Face model from a config dict (``config.to_dict()``)."""
    tf = require_transformers()
    d = dict(config)
    cfg = tf.AutoConfig.for_model(d.pop("model_type"), **d)
    return (tf.AutoModelForSequenceClassification if with_head else tf.AutoModel).from_config(cfg)


def from_hf(model, *, exits="every:1", num_labels: int | None = None, head: str = "cls", layers: int = 1,
            cascade: bool = False, task: str = "classification", attn_implementation: str | None = None,
            gpf_dim: int = 0) -> MultiExitModel:
    """Attach exits to a Hugging Face encoder after chosen layers; the model's own classifier is the final exit.

    ``model``: a loaded ``AutoModelForSequenceClassification`` or ``AutoModel`` model, or a local folder (or cached
    name) loaded with ``from_pretrained(..., num_labels=num_labels)``. ``exits``: layer indices (0-based; the last
    layer feeds the final exit) or ``"every:K"``. ``head``: ``"cls"`` or ``"mean"`` (masked mean of the tokens);
    ``layers``: 1 (linear) or 2 (MLP). Inputs: a tokenizer's output or a packed tensor (:func:`pack`).
    ``task="regression"``: one output per exit (STS-B style; float labels train it with the mean squared error).
    ``gpf_dim > 0``: GPF's past-future heads (:mod:`exitlab.models.gpf`) with states of that size, each reading the
    layer's tokens as the text head would.
    """
    if task not in ("classification", "regression"):
        raise ConfigError(f"from_hf: task must be 'classification' or 'regression', got {task!r}")
    if task == "regression":
        if num_labels not in (None, 1):
            raise ConfigError(f"from_hf: a regression model has one output, got num_labels={num_labels}")
        num_labels = 1
    if isinstance(model, nn.Module):
        num_labels = num_labels or getattr(getattr(model, "config", None), "num_labels", None)
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ConfigError(f"from_hf: give num_labels (classes), got {num_labels!r}")
    module = _load(model, num_labels, with_head=True, attn=attn_implementation)
    head_kwargs = {"pool": head, "layers": layers, **({"cascade": True} if cascade else {})}
    kind = "gpf" if gpf_dim else "text"
    if gpf_dim:
        head_kwargs = {"inner": "text", "dim": gpf_dim, "pool": head, "layers": layers}
    backbone = HFEncoder(module, num_labels, final_head={"pool": head, "layers": layers})
    blocks = _exit_layers(exits, len(backbone.layers))
    if (task == "regression") != (num_labels == 1):
        raise ConfigError(f"from_hf: a model with {num_labels} output(s) is not a {task} model; pass "
                          f"task={'regression' if num_labels == 1 else 'classification'!r}")
    spec = HFSpec(config=module.config.to_dict(), num_classes=num_labels, exits=tuple(blocks), head=kind,
                  head_kwargs=dict(head_kwargs), task=task, with_head=backbone.head is None,
                  source=str(model) if not isinstance(model, nn.Module) else None)
    return MultiExitModel(backbone, blocks, kind, head_kwargs=head_kwargs, spec=spec)


HEAD_OPTIONS = {"text": ("pool", "layers", "cascade"), "gpf": ("pool", "layers", "dim")}


def build_hf(source: str, *, num_labels: int, exits="every:1", head: str | None = "text",
             head_kwargs: dict | None = None,
             backbone_kwargs: dict | None = None, pretrained: bool | str = False, task: str = "classification",
             vocab_size: int | None = None) -> MultiExitModel:
    """The model a config names with ``backbone: hf:SOURCE``. ``SOURCE`` is a model type (``bert``, ``roberta``,
    ``distilbert``, ``electra``: a randomly initialised encoder configured by ``backbone_kwargs``, its vocabulary
    sized to the tokenizer's), or a local folder or cached name: its config (random weights), or with
    ``pretrained: true`` its weights. ``head``: ``text`` (``head_kwargs``: ``pool``, cls or mean; ``layers``, 1 or
    2; ``cascade``) or ``gpf`` (GPF's past-future heads on that pooling; ``dim``, default 128)."""
    tf = require_transformers()
    name = source.removeprefix("hf:")
    kw = dict(backbone_kwargs or {})
    head = head or "text"  # none named: the encoder's own head kind
    if head not in HEAD_OPTIONS:
        raise ConfigError(f"model.head: an encoder's exits use the head kind text (options pool: cls|mean, layers: "
                          f"1|2, cascade) or gpf, not {head!r}; set model.head: text")
    opts = dict(head_kwargs or {})
    bad = sorted(set(opts) - set(HEAD_OPTIONS[head]))
    if bad:
        raise ConfigError(f"model.head_kwargs.{bad[0]}: unknown option of the {head} head; valid: "
                          f"{', '.join(HEAD_OPTIONS[head])}")
    scratch = check_hf_source(source, pretrained)
    if pretrained:
        if kw:
            raise ConfigError("model.backbone_kwargs: a pretrained encoder keeps its own configuration; drop them")
        module = _load(name, num_labels, with_head=True, attn=None)
    else:
        if vocab_size and "vocab_size" not in kw:
            kw["vocab_size"] = vocab_size
        try:
            cfg = (tf.AutoConfig.for_model(name, **kw) if scratch else
                   tf.AutoConfig.from_pretrained(str(Path(name).expanduser()) if Path(name).expanduser().exists()
                                                 else name, **kw))
        except (OSError, ValueError, TypeError) as e:
            first = (str(e).splitlines() or [""])[0][:160]
            raise ConfigError(f"model.backbone hf:{name}: no configuration ({first}); give a model type (bert, "
                              "roberta, distilbert, electra), a local folder or a cached name") from None
        cfg.num_labels = num_labels
        module = tf.AutoModelForSequenceClassification.from_config(cfg)
    return from_hf(module, exits=exits, num_labels=num_labels, head=opts.get("pool", "cls"),
                   layers=opts.get("layers", 1), cascade=bool(opts.get("cascade", False)), task=task,
                   gpf_dim=opts.get("dim", 128) if head == "gpf" else 0)


def check_hf_source(source: str, pretrained: bool | str) -> bool:
    """Check ``hf:SOURCE`` without importing transformers; True when it names a model type (a new encoder)."""
    name = source.removeprefix("hf:")
    if not name:
        raise ConfigError("model.backbone: hf: needs a model type (bert, roberta, distilbert, electra), a local folder "
                          "or a cached name, e.g. hf:bert")
    scratch = name in LAYOUTS and not Path(name).exists()
    if scratch and pretrained:
        raise ConfigError(f"model.pretrained: hf:{name} is a model type, which has no weights; give the folder (or "
                          "cached name) of a pretrained model, e.g. hf:/models/bert-base-uncased")
    return scratch


def vocab_size(model: MultiExitModel) -> int:
    """Rows of the encoder's word-embedding table: token ids must be below this."""
    return int(model.backbone.model.get_input_embeddings().num_embeddings)


def _exit_layers(exits, n: int) -> list[int]:
    """Layer indices from a list or ``"every:K"``; ICs go after layers 0..n-2 (the last one feeds the final exit)."""
    if isinstance(exits, str):
        kind, _, k = exits.partition(":")
        if kind != "every" or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"exits {exits!r}: give layer indices or 'every:K'")
        picks = list(range(int(k) - 1, n - 1, int(k)))
        if not picks:
            raise ConfigError(f"exits {exits!r} places no IC on an encoder of {n} layers; use every:K with K < {n}")
        return picks
    exits = list(exits)
    if any(not isinstance(e, int) or isinstance(e, bool) for e in exits) or exits != sorted(set(exits)) or \
            any(not 0 <= e < n - 1 for e in exits):
        raise ConfigError(f"exits {exits}: give sorted, unique layer indices in 0..{n - 2} (this encoder has {n} "
                          f"layers; the last one, {n - 1}, feeds the final exit)")
    return exits


def model_from_hf_spec(spec: HFSpec) -> MultiExitModel:
    """Rebuild a :func:`from_hf` model from its spec (random weights; the checkpoint's weights load after)."""
    module = from_config(spec.config, with_head=spec.with_head)
    kw = spec.head_kwargs
    backbone_head = {"pool": kw.get("pool", "cls"), "layers": kw.get("layers", 1)}
    backbone = HFEncoder(module, spec.num_classes, final_head=backbone_head)
    return MultiExitModel(backbone, list(spec.exits), spec.head, head_kwargs=kw, spec=spec)
