"""Shared pieces of the analyses: runs and their data, fixed sample sets, block activations, parameter groups.

Every analysis evaluates the model in eval mode (BatchNorm running statistics, no dropout) unless it says otherwise,
and restores the model's modes, ``requires_grad`` flags, parameters and buffers before it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import RunData
from ..errors import ExitlabError
from ..models.contract import BlocksBackbone, MultiScaleFeature, TextFeature
from ..models.core import MultiExitModel
from ..runs.checkpoint import load_state, load_tensors
from ..runs.config import RunConfig
from ..runs.rundir import RunDir, checkpoints
from ..training.phases import regime_label
from ..training.planning import model_from_config

Batches = list[tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------- runs and data


@dataclass
class Run:
    """A run directory, its model (on CPU, eval mode: the final one, or an intermediate ``checkpoint``) and its data
    splits."""

    path: Path
    model: MultiExitModel
    cfg: RunConfig
    data: RunData
    checkpoint: Path | None = None

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def label(self) -> str:
        """The regime (as recorded with the model, else from the config), with ``@<checkpoint>`` for a checkpoint."""
        regime = getattr(self.model, "info", {}).get("regime")
        label = str(regime) if isinstance(regime, str) else regime_label(self.cfg.regime)
        return label + (f"@{self.checkpoint.stem}" if self.checkpoint is not None else "")


def find_checkpoint(run: RunDir, name: str | Path) -> Path:
    """A checkpoint of ``run`` by file name (with or without ``.safetensors``) or path."""
    direct = Path(name)
    if direct.is_file():
        return direct
    d = run / RunDir.CHECKPOINTS
    for cand in (d / str(name), d / f"{name}.safetensors"):
        if cand.is_file():
            return cand
    have = ", ".join(p.stem for p in checkpoints(run.path)) or "none"
    raise ExitlabError(f"{run.path} has no checkpoint {str(name)!r} (it has: {have}); pass --checkpoint with one of "
                       "those names, or a checkpoint file")


def _checkpoint_model(run: RunDir, cfg: RunConfig, data: RunData, path: Path) -> MultiExitModel:
    """The run's architecture (from model.json when the run finished, else from its config) with ``path``'s weights."""
    if (run / RunDir.MODEL_INFO).is_file():
        model = run.model()  # this RunDir is private to load_run: its cached model may take other weights
    else:  # an unfinished run: build the architecture its config names (weights come from the checkpoint)
        vocab = len(data.tokenizer) if data.tokenizer is not None else None
        model = model_from_config(dataclasses.replace(cfg.model, pretrained=False), len(data.classes), data.shape,
                                  task=cfg.data.text.task, vocab_size=vocab)
    tensors, _ = load_tensors(path)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    return model.eval()


def load_run(path: str | Path | RunDir, checkpoint: str | Path | None = None) -> Run:
    """Load a run directory: its model and the data its config names (see :class:`RunDir`).

    ``checkpoint``: an intermediate checkpoint (a name in ``RUN/checkpoints/`` or a path) to load instead of the final
    model. ``path`` may itself be a checkpoint file inside a run's ``checkpoints/``."""
    if not isinstance(path, RunDir) and Path(path).is_file():
        file = Path(path)
        if file.parent.name != RunDir.CHECKPOINTS:
            raise ExitlabError(f"{file} is not a run directory or a checkpoint in one (RUN/checkpoints/*.safetensors)")
        path, checkpoint = file.parent.parent, file
    run = path if isinstance(path, RunDir) else RunDir(path)
    if not (run / RunDir.CONFIG).is_file():
        raise ExitlabError(f"{run.path} is not a run directory (no config.yaml); pass directories written by exitlab "
                           "train")
    cfg, data = run.config(), run.data()
    if checkpoint is None:
        return Run(run.path, run.model(), cfg, data)
    file = find_checkpoint(run, checkpoint)
    model = _checkpoint_model(run, cfg, data, file)
    return Run(run.path, model, cfg, data, checkpoint=file)


def split_loader(run: Run, split: str):
    return run.data.split(split)


def fixed_batches(loader, n: int, batch_size: int = 500, seed: int = 0, what: str = "this analysis") -> Batches:
    """``n`` samples of a split, drawn once with ``seed``, normalised like training but never augmented."""
    if n > loader.num_samples:
        raise ExitlabError(f"{what} asks for {n} samples but the split holds only {loader.num_samples}; lower "
                           f"--samples to at most {loader.num_samples} or pick a larger --split")
    return loader.sample(n, seed, batch_size)


# ---------------------------------------------------------------- state that analyses must give back


@contextlib.contextmanager
def preserved(model: nn.Module, *, params: bool = False) -> Iterator[None]:
    """Restore train/eval modes, ``requires_grad`` flags and buffers (and parameter values when ``params``)."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    values = {k: p.detach().clone() for k, p in model.named_parameters()} if params else {}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
            for k, p in model.named_parameters():
                if k in values:
                    p.copy_(values[k])
        for p, f in flags.items():
            p.requires_grad_(f)
        for m, t in modes.items():
            m.train(t)


# ---------------------------------------------------------------- blocks


def num_blocks(model: MultiExitModel) -> int:
    return len(model.backbone.feature_info)


def check_blocks(model: MultiExitModel, blocks: list[int] | None) -> list[int]:
    """The requested block indices (all blocks when None); an index the backbone lacks is an error."""
    n = num_blocks(model)
    if blocks is None:
        return list(range(n))
    bad = [b for b in blocks if not isinstance(b, int) or not 0 <= b < n]
    if bad:
        raise ExitlabError(f"block {bad[0]} does not exist: this backbone has blocks 0..{n - 1}; "
                           f"pass --blocks with indices in that range")
    return sorted(set(blocks))


@torch.no_grad()
def tap_points(model: MultiExitModel) -> list[int]:
    """Blocks whose outputs ``backbone.run`` can hand out; an adapter's last "block" is its logits, not a tap."""
    return [i for i, p in enumerate(model.backbone.feature_info) if p.kind != "logits"]


def block_outputs(model: MultiExitModel, x: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
    """Output of each block in ``blocks`` for input ``x`` (eval mode is the caller's job). A text encoder's block
    output is the representation its exits read: the CLS token or the masked mean of the tokens (``[B, D]``)."""
    got: dict[int, torch.Tensor] = {}
    taps = set(blocks) & set(tap_points(model))
    last = max(taps) if taps == set(blocks) else None  # stop early unless the model's output is wanted too
    pool = model.head_kwargs.get("pool", "cls")

    def on_tap(i: int, h) -> torch.Tensor | None:
        rep = h.pooled(pool) if isinstance(h, TextFeature) else h  # text: the vector the heads read
        # clone: later blocks may work in place on h
        got[i] = rep.apply(lambda m: m.detach().clone()) if isinstance(rep, MultiScaleFeature) else rep.detach().clone()
        return None if i == last else h

    out = model.backbone.run(x, taps, on_tap)
    for i in set(blocks) - taps:
        got[i] = out.detach()
    return got


def pool_feature(h: torch.Tensor, pool: int) -> torch.Tensor:
    """``pool > 0``: average maps ``[B, C, H, W]`` down to ``pool x pool`` and token sequences ``[B, N, D]`` to their
    mean token; ``pool = 0`` keeps the output as it is. A multi-scale output (MSDNet) is every scale's map, each
    pooled so, flattened and concatenated: ``[B, sum_s D_s]``."""
    if isinstance(h, MultiScaleFeature):
        return torch.cat([pool_feature(m, pool).flatten(1) for m in h.maps], 1)
    if pool <= 0:
        return h
    if h.dim() == 4:
        return F.adaptive_avg_pool2d(h.float(), pool)
    return h.float().mean(1) if h.dim() == 3 else h


def block_features(model: MultiExitModel, batches: Batches, blocks: list[int], max_features: int | None = None,
                   seed: int = 0, pool: int = 0) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
    """Flattened block outputs over all batches, ``{block: [N, D']}`` (float32, CPU), and each block's full ``D``.

    ``pool`` averages spatially first (see :func:`pool_feature`). When a block has more than ``max_features``
    features, the same ``max_features`` columns, drawn uniformly at random without replacement with ``seed``, are kept
    for every batch (so a large layer never sits in memory whole).
    """
    parts: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    cols: dict[int, torch.Tensor | None] = {}
    dims: dict[int, int] = {}
    for x, _ in batches:
        for b, h in block_outputs(model, x, blocks).items():
            flat = pool_feature(h, pool).float().flatten(1).cpu()  # [B, D]
            if b not in cols:
                dims[b] = flat.shape[1]
                keep = max_features is not None and flat.shape[1] > max_features
                g = torch.Generator().manual_seed(seed + b)
                cols[b] = torch.randperm(flat.shape[1], generator=g)[:max_features].sort().values if keep else None
            parts[b].append(flat if cols[b] is None else flat[:, cols[b]])
    return {b: torch.cat(v) for b, v in parts.items()}, dims


def block_groups(model: MultiExitModel, example: torch.Tensor | None = None) -> list[tuple[str, list[nn.Parameter]]]:
    """The backbone's parameters in depth order: ``stem``, ``block 0`` .. ``block n-1``, ``final``.

    Built-in backbones name these parts directly. For adapters (``from_module``) a parameter belongs to the block
    during which its module first runs, found by tracing one forward pass on ``example`` (an input batch).
    """
    bb = model.backbone
    if isinstance(bb, BlocksBackbone):
        groups = [("stem", list(bb.stem.parameters()))]
        groups += [(f"block {i}", list(b.parameters())) for i, b in enumerate(bb.blocks)]
        return [*groups, ("final", list(bb.final.parameters()))]
    if example is None:
        raise ExitlabError("grouping an adapter model's parameters by block needs an example input batch")
    return _traced_groups(model, example[:2])


def _traced_groups(model: MultiExitModel, x: torch.Tensor) -> list[tuple[str, list[nn.Parameter]]]:
    bb = model.backbone
    segment = [0]
    owner: dict[nn.Module, int] = {}

    def pre_hook(mod: nn.Module, inp) -> None:
        owner.setdefault(mod, segment[0])

    handles = [m.register_forward_pre_hook(pre_hook) for m in bb.modules()
               if any(True for _ in m.parameters(recurse=False))]

    def on_tap(i: int, h: torch.Tensor) -> torch.Tensor:
        segment[0] = i + 1
        return h

    try:
        with preserved(model), torch.no_grad():
            model.eval()
            bb.run(x, set(tap_points(model)), on_tap)
    finally:
        for h in handles:
            h.remove()
    taps = segment[0]  # blocks that are tap points; an adapter's last "block" is its output, not a tap
    groups: list[list[nn.Parameter]] = [[] for _ in range(taps + 1)]
    for m, s in owner.items():
        groups[s].extend(m.parameters(recurse=False))
    return [(f"block {i}", g) for i, g in enumerate(groups[:taps])] + [("final", groups[taps])]


def exit_names(model: MultiExitModel) -> list[str]:
    return [f"IC{j} (block {b})" for j, b in enumerate(model.exits)] + ["final"]


# ---------------------------------------------------------------- evaluation and output


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Batches) -> bool:
    """Recompute every BatchNorm's running statistics as the plain average over ``batches`` (momentum ``None``).

    Only the BatchNorm layers run in train mode, so dropout stays off. Leaves the model in eval mode. Returns
    whether the model has BatchNorm at all.
    """
    bns = batchnorms(model)
    if not bns:
        return False
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()
    for x, _ in batches:
        model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
        m.eval()
    return True



@torch.no_grad()
def exit_metrics(model: MultiExitModel, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of every exit over ``batches``: two ``[E]`` float64 tensors (regression:
    the mean squared error and minus it, as training's ``val_acc``)."""
    return logits_metrics((model(x), y) for x, y in batches)


def logits_metrics(pairs: Iterable[tuple[list[torch.Tensor], torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy per exit from ``(per-exit logits, labels)`` batches; for float labels
    (regression, one output) the mean squared error and minus it."""
    loss_sum = acc_sum = None
    n = 0
    for outs, y in pairs:
        logits = torch.stack(outs).float()  # [E, B, C]
        E, B, C = logits.shape
        if y.is_floating_point():
            se = (logits[..., 0].double() - y.double()) ** 2  # [E, B]
            ls, hs = se.sum(1), -se.sum(1)
        else:
            ce = F.cross_entropy(logits.reshape(E * B, C), y.repeat(E), reduction="none").view(E, B)
            ls, hs = ce.double().sum(1), (logits.argmax(-1) == y).double().sum(1)
        loss_sum = ls if loss_sum is None else loss_sum + ls
        acc_sum = hs if acc_sum is None else acc_sum + hs
        n += B
    if not n:
        raise ExitlabError("no samples to evaluate; raise --samples")
    return loss_sum.cpu() / n, acc_sum.cpu() / n


def finite(v: float) -> float | None:
    """JSON has no NaN or infinity: such values are written as null."""
    return v if math.isfinite(v) else None


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False))
    return path
