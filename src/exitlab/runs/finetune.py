"""Fine-tuning options of a phase (``phaseN.finetune``): separate learning rates for the backbone and the heads,
layer-wise learning-rate decay for encoders, and frozen embeddings. Applied where the phase's optimizer groups
are built (:func:`exitlab.training.finetune.finetune_groups`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError


@dataclass
class FinetuneConfig:
    """How a phase fine-tunes a (pretrained) backbone; the defaults change nothing."""

    backbone_lr: float = 0.0  # > 0: the backbone's peak learning rate (0: the phase's lr); the schedule scales it
    head_lr: float = 0.0  # > 0: the heads' peak learning rate, ICs and final classifier (0: the phase's lr)
    layer_decay: float = 1.0  # in (0, 1]: encoder layer k (0-based) of L: decay^(L - k); embeddings decay^(L + 1)
    freeze_embeddings: bool = False  # encoders: keep the token, position and type embeddings fixed

    IGNORED: ClassVar[dict[int, dict[str, str]]] = {3: {
        "backbone_lr": "it trains the heads alone on a frozen backbone (head_lr applies)",
        "layer_decay": "it trains the heads alone on a frozen backbone (head_lr applies)",
        "freeze_embeddings": "its backbone, embeddings included, is frozen anyway"}}

    def __post_init__(self) -> None:
        for key in ("backbone_lr", "head_lr"):
            v = getattr(self, key)
            if not _number(v) or v < 0:
                raise ConfigError(f"{key} must be >= 0 (0: the phase's lr), got {v!r}")
        if not _number(self.layer_decay) or not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1] (1: no decay), got {self.layer_decay!r}")
        if not isinstance(self.freeze_embeddings, bool):
            raise ConfigError(f"freeze_embeddings must be true or false, got {self.freeze_embeddings!r}")

    @property
    def on(self) -> bool:
        """Always False: fine-tuning options change the optimizer's groups, not the objective (the gradient
        analysis and the probes model the objective)."""
        return False

    @property
    def encoder_only(self) -> bool:
        """Whether an option that only an encoder has (layers, embeddings) is set."""
        return self.layer_decay != 1 or self.freeze_embeddings


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_finetune(phase: str, ft: FinetuneConfig, backbone: str) -> None:
    """Refuse the encoder-only fine-tuning options on a backbone that is not a text encoder."""
    if ft.encoder_only and not backbone.startswith("hf:"):
        raise ConfigError(f"{phase}.finetune.layer_decay/freeze_embeddings apply to text encoders (model.backbone "
                          f"hf:...), not {backbone!r}; remove them")
