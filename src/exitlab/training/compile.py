"""Speed options that leave the multi-exit protocol intact: ``torch.compile`` of the backbone, part by part.

``model.backbone.run(x, taps, on_tap)`` is a Python loop that hands each tapped block's output to ``on_tap``, which
may shrink the batch (early-exit compaction) or stop the pass. Compiling the whole model would break the graph at
every tap anyway, so :func:`maybe_compile` compiles the pieces between taps instead -- the stem, each block and the
final classifier -- in place. The loop, the taps and the state-dict keys stay exactly as they were, so checkpoints,
smaller batches and ``forward_to`` keep working on a compiled model.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn

from ..errors import ConfigError
from ..models.contract import BlocksBackbone
from ..models.core import MultiExitModel

log = logging.getLogger("exitlab")


def compile_parts(model: MultiExitModel) -> list[nn.Module]:
    """The backbone modules that :func:`maybe_compile` compiles: stem, every block, final classifier."""
    bb = model.backbone
    if not isinstance(bb, BlocksBackbone):
        raise ConfigError(f"compile: backbone {type(bb).__name__} is not an ordered-blocks backbone; compile the "
                          "wrapped module yourself (module.compile()) before exitlab.from_module, or set compile=false")
    return [bb.stem, *bb.blocks, bb.final]


def maybe_compile(model: MultiExitModel, enabled: bool, *, backend: str = "inductor", dynamic: bool | None = None
                  ) -> MultiExitModel:
    """Compile ``model.backbone``'s stem, blocks and final classifier in place when ``enabled``; return ``model``.

    ``backend`` is passed to ``torch.compile`` (``"inductor"`` generates C++ on CPU and needs a C compiler;
    ``"eager"`` only captures the graphs, which is useful in tests).
    ``dynamic=None`` lets torch switch to dynamic shapes when it sees a second batch size (a short last batch,
    early-exit compaction) instead of recompiling for every size.

    Compilation happens lazily, on the first forward pass of each part. Parameters, buffers and ``state_dict``
    keys are unchanged (``nn.Module.compile`` works in place, unlike ``torch.compile(module)`` which wraps the
    module and prefixes its keys with ``_orig_mod.``).

    The heads are left eager: they are a few percent of a step, and inductor (torch 2.13) fails to lower the SDN
    head's adaptive pooling once the heads' differing map sizes have made the spatial dimensions dynamic.
    """
    if not enabled:
        return model
    parts = compile_parts(model)
    raise_recompile_limit(recompiles_needed(model))
    for part in parts:
        part.compile(backend=backend, dynamic=dynamic)
    log.info("torch.compile(backend=%r): %d backbone modules compiled in place", backend, len(parts))
    return model


# Graph variants one part can need: train mode with grad (phases 1-2), eval mode without grad (evaluation), eval mode
# with grad but frozen parameters (phase 3); each first at a static batch size, then once more with a dynamic one.
VARIANTS_PER_SHAPE = 8


def recompiles_needed(model: MultiExitModel) -> int:
    """Compiled graphs the busiest ``forward`` may need: (input, output) feature shapes among the blocks that share
    it, times :data:`VARIANTS_PER_SHAPE`. An upper bound: the block fed by the stem counts as a shape of its own.

    Blocks of one class share one ``forward`` code object, and dynamo caches graphs per code object (8 by
    default). A ResNet-18's 8 basic blocks have 7 distinct shapes, so train plus eval (14 graphs) already exceed that
    limit; past it, dynamo falls back to eager silently apart from a warning.
    """
    bb = model.backbone
    shapes: dict[object, set] = defaultdict(set)
    for i, block in enumerate(bb.blocks):
        shapes[type(block).forward].add((bb.feature_info[i - 1] if i else "stem", bb.feature_info[i]))
    return VARIANTS_PER_SHAPE * max((len(v) for v in shapes.values()), default=1)


def raise_recompile_limit(n: int) -> None:
    """Raise dynamo's per-function graph limit to ``n`` (a process-wide setting; it is never lowered)."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # older torch: cache_size_limit
    if getattr(cfg, name) < n:
        log.info("raising torch._dynamo.config.%s from %d to %d for the per-block graphs", name, getattr(cfg, name), n)
        setattr(cfg, name, n)


def is_compiled(module: nn.Module) -> bool:
    """Whether ``nn.Module.compile`` was called on ``module`` (it then runs through a compiled call)."""
    return getattr(module, "_compiled_call_impl", None) is not None

