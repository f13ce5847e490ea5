"""Speed options that leave the multi-exit protocol intact: ``torch.compile`` of the backbone, part by part.

``model.backbone.run(x, taps, on_tap)`` is a Python loop that hands each tapped block's output to ``on_tap``, which
may shrink the batch (early-exit compaction) or stop the pass. Compiling the whole model would break the graph at
every tap anyway, so :func:`maybe_compile` compiles the pieces between taps instead -- the stem, each block and the
final classifier -- in place. The loop, the taps and the state-dict keys stay exactly as they were, so checkpoints,
``forward_to`` and real early exit keep working on a compiled model.
"""

from __future__ import annotations

import logging

from torch import nn

from .errors import ConfigError
from .models.core import BlocksBackbone, MultiExitModel

log = logging.getLogger("exitlab")


def compile_parts(model: MultiExitModel) -> list[nn.Module]:
    """The backbone modules that :func:`maybe_compile` compiles: stem, every block, final classifier."""
    bb = model.backbone
    if not isinstance(bb, BlocksBackbone):
        raise ConfigError(f"compile: backbone {type(bb).__name__} is not an ordered-blocks backbone; compile the "
                          "wrapped module yourself (module.compile()) before exitlab.from_module, or set compile=false")
    return [bb.stem, *bb.blocks, bb.final]


def maybe_compile(model: MultiExitModel, enabled: bool, *, heads: bool = False, backend: str = "inductor",
                  dynamic: bool | None = None) -> MultiExitModel:
    """Compile ``model.backbone``'s stem, blocks and final classifier in place when ``enabled``; return ``model``.

    ``heads`` also compiles the internal classifiers. ``backend`` is passed to ``torch.compile`` (``"inductor"``
    generates C++ on CPU and needs a C compiler; ``"aot_eager"`` only traces, which is useful in tests).
    ``dynamic=None`` lets torch switch to dynamic shapes when it sees a second batch size (a short last batch,
    early-exit compaction) instead of recompiling for every size.

    Compilation happens lazily, on the first forward pass of each part. Parameters, buffers and ``state_dict``
    keys are unchanged (``nn.Module.compile`` works in place, unlike ``torch.compile(module)`` which wraps the
    module and prefixes its keys with ``_orig_mod.``).
    """
    if not enabled:
        return model
    parts = compile_parts(model)
    if heads:
        parts += list(model.heads)
    for part in parts:
        part.compile(backend=backend, dynamic=dynamic)
    log.info("torch.compile(backend=%r): %d modules compiled in place%s", backend, len(parts),
             " (heads included)" if heads else "")
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether ``nn.Module.compile`` was called on ``module`` (it then runs through a compiled call)."""
    return getattr(module, "_compiled_call_impl", None) is not None

