"""What the regimes mean on a pretrained backbone (``model.pretrained`` set), and how tables name them.

Phase 1 fine-tunes the pretrained backbone on the task (the paper's BERT setting), so disjoint and mixed start
with a fine-tuned backbone. With ``phase1.epochs: 0`` on a pretrained backbone, phase 1 is left out instead of
refused: disjoint then trains the heads on the untouched pretrained backbone (EE-Tuning style) and mixed fine-tunes
everything from the pretrained weights (what joint does). Joint is phase 2 from the pretrained weights. Under
``budget`` the remaining phases share the whole budget. Regime ``[3]`` on a pretrained backbone is the same as
disjoint without phase 1. Phase 3 that comes first trains the backbone's new classifier with the ICs. Without
pretrained weights ``phase1.epochs: 0`` is still refused (phase 1 would train nothing).
"""

from __future__ import annotations

import dataclasses

from ..models.pretrained import tokenizer_source

LABELS = {  # (regime, phase 1 kept) -> what a table calls it on a pretrained backbone
    ("joint", True): "joint (from pretrained)",
    ("joint", False): "joint (from pretrained)",
    ("disjoint", True): "disjoint (fine-tuned backbone)",
    ("disjoint", False): "disjoint (frozen pretrained)",
    ("mixed", True): "mixed (fine-tuned, then all)",
    ("mixed", False): "mixed (all from pretrained)",
}


def skips_phase1(cfg) -> bool:
    """Whether phase 1 is left out: a pretrained backbone, a regime that starts with phase 1, ``phase1.epochs: 0``."""
    regime = cfg.regime
    first = regime[0] if isinstance(regime, list) else {"disjoint": 1, "mixed": 1}.get(regime, 0)
    return bool(cfg.model.pretrained) and first == 1 and cfg.phase1.epochs == 0


def pretrained_kinds(cfg, kinds: tuple[int, ...]) -> tuple[int, ...]:
    """The regime's phases on this backbone: without phase 1 when :func:`skips_phase1`."""
    return kinds[1:] if skips_phase1(cfg) and len(kinds) > 1 else kinds


def regime_title(cfg) -> str:
    """The regime as tables name it: ``disjoint (frozen pretrained)`` and the like on a pretrained backbone, else
    the regime's own name."""
    name = cfg.regime if isinstance(cfg.regime, str) else "phases" + "".join(map(str, cfg.regime))
    if not cfg.model.pretrained:
        return name
    if name == "phases3":  # heads (and the new classifier) on the untouched backbone: disjoint without phase 1
        return LABELS[("disjoint", False)]
    return LABELS.get((name, not skips_phase1(cfg)), f"{name} (from pretrained)")


def resolve_tokenizer(d):
    """The data settings with ``data.text.tokenizer: hf:minilm`` (a known model) as that model's checked folder."""
    folder = tokenizer_source(d.text.tokenizer)
    if folder == d.text.tokenizer:
        return d
    return dataclasses.replace(d, text=dataclasses.replace(d.text, tokenizer=folder))
