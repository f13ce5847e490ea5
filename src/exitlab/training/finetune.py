"""Fine-tuning options applied to a phase's optimizer: per-parameter learning-rate scales (backbone and heads,
layer-wise decay over an encoder's layers) and frozen embeddings (see :mod:`exitlab.runs.finetune`).

Each optimizer group carries an ``lr_scale``; the training loop sets a group's learning rate to the scheduled
rate times it, so warm-up and the schedule shape every group alike.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..models.core import MultiExitModel
from ..models.hf import HFEncoder
from ..runs.finetune import FinetuneConfig


def _encoder(model: nn.Module, what: str) -> HFEncoder:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, HFEncoder):
        raise ConfigError(f"finetune.{what} applies to text encoders (model.backbone hf:...), not "
                          f"{type(backbone).__name__}; remove it")
    return backbone


def embedding_params(model: MultiExitModel) -> list[nn.Parameter]:
    """An encoder's embedding parameters (tokens, positions, token types, their norm; ELECTRA's projection)."""
    enc = _encoder(model, "freeze_embeddings")
    parts = [enc.base.embeddings, getattr(enc.base, "embeddings_project", None)]
    return [p for m in parts if m is not None for p in m.parameters()]


def freeze_embeddings(model: MultiExitModel, ft: FinetuneConfig) -> None:
    """With ``ft.freeze_embeddings``, take the embeddings out of training (after the phase set what trains)."""
    if ft.freeze_embeddings:
        for p in embedding_params(model):
            p.requires_grad_(False)


def final_classifier_params(model: MultiExitModel) -> list[nn.Parameter]:
    """The backbone's own classifier (the final exit's head): an encoder's parameters outside its base model."""
    enc = _encoder(model, "final classifier")
    inside = {id(p) for p in enc.base.parameters()}
    return [p for p in enc.parameters() if id(p) not in inside]


def lr_scales(model: MultiExitModel, ft: FinetuneConfig, lr: float) -> dict[int, float]:
    """Each parameter's learning rate relative to the phase's ``lr``, by ``id``. Heads are the ICs and the final
    classifier (an encoder's parameters outside its base model); the rest is the backbone, whose encoder layer k
    (0-based) of L is scaled by ``layer_decay^(L - k)`` and embeddings by ``layer_decay^(L + 1)`` (the pooler is
    not)."""
    head = (ft.head_lr or lr) / lr
    body = (ft.backbone_lr or lr) / lr
    scales = {id(p): head for p in model.parameters()}
    base = model.backbone.base if isinstance(model.backbone, HFEncoder) else model.backbone
    for p in base.parameters():
        scales[id(p)] = body
    if ft.layer_decay != 1:
        enc = _encoder(model, "layer_decay")
        n = len(enc.layers)
        for k, layer in enumerate(enc.layers):
            for p in layer.parameters():
                scales[id(p)] = body * ft.layer_decay ** (n - k)
        for p in embedding_params(model):
            scales[id(p)] = body * ft.layer_decay ** (n + 1)
    return scales


def finetune_groups(model: MultiExitModel, groups: list[dict], ft: FinetuneConfig, lr: float) -> list[dict]:
    """``groups`` (each with its weight decay) split by learning-rate scale; each new group has an ``lr_scale``."""
    if ft == FinetuneConfig():
        return groups
    scales = lr_scales(model, ft, lr)
    out = []
    for g in groups:
        by_scale: dict[float, list[nn.Parameter]] = {}
        for p in g["params"]:
            by_scale.setdefault(scales.get(id(p), 1.0), []).append(p)
        out += [{**g, "params": ps, "lr_scale": s} for s, ps in sorted(by_scale.items())]
    return out
