"""Fine-tuning options of a phase (``phaseN.finetune``): separate learning rates for the backbone and the heads,
layer-wise learning-rate decay for encoders, and frozen embeddings. Applied where the phase's optimizer groups
are built (:func:`exitlab.training.finetune.finetune_groups`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class FinetuneConfig:
    """How a phase fine-tunes a (pretrained) backbone; the defaults change nothing."""

    backbone_lr: float = 0.0  # > 0: the backbone's peak learning rate (0: the phase's lr); the schedule scales it
    head_lr: float = 0.0  # > 0: the heads' peak learning rate, ICs and final classifier (0: the phase's lr)
    layer_decay: float = 1.0  # in (0, 1]: encoder layer k (0-based) of L: decay^(L - k); embeddings decay^(L + 1)
    freeze_embeddings: bool = False  # encoders: keep the token, position and type embeddings fixed

    @property
    def encoder_only(self) -> bool:
        """Whether an option that only an encoder has (layers, embeddings) is set."""
        return self.layer_decay != 1 or self.freeze_embeddings


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_finetune(phase: str, ft: FinetuneConfig, backbone: str) -> None:
    """Range checks, then refuse fine-tuning options that ``phase`` (phase1, phase2, phase3) or the backbone would
    ignore. Each error names the dotted key."""
    for key in ("backbone_lr", "head_lr"):
        v = getattr(ft, key)
        if not _number(v) or v < 0:
            raise ConfigError(f"{phase}.finetune.{key} must be >= 0 (0: the phase's lr), got {v!r}")
    if not _number(ft.layer_decay) or not 0 < ft.layer_decay <= 1:
        raise ConfigError(f"{phase}.finetune.layer_decay must be in (0, 1] (1: no decay), got {ft.layer_decay!r}")
    if not isinstance(ft.freeze_embeddings, bool):
        raise ConfigError(f"{phase}.finetune.freeze_embeddings must be true or false, got {ft.freeze_embeddings!r}")
    if phase == "phase3" and (ft.backbone_lr or ft.encoder_only):
        raise ConfigError(f"{phase}.finetune: backbone_lr, layer_decay and freeze_embeddings are set, but phase 3 "
                          "trains the heads alone on a frozen backbone; remove them (head_lr applies)")
    if ft.encoder_only and not backbone.startswith("hf:"):
        raise ConfigError(f"{phase}.finetune.layer_decay/freeze_embeddings apply to text encoders (model.backbone "
                          f"hf:...), not {backbone!r}; remove them")
