"""Gradient contributions: how hard each exit's part of the training objective pulls on each part of the backbone.

The objective is the one the optimiser sees in a phase: the training loss's own per-exit terms
(:func:`exitlab.training.objective.exit_terms`, whose weighted sum is ``phase_loss``): per-exit cross-entropies
(with the phase's label smoothing) weighted by ``phase.weights``, plus ``distill`` times the mean KL from the
detached final exit to each IC, plus ``gpf.imitation`` times the mean of the ICs' GPF imitation losses, computed
through the phase's forward (the bare backbone in phase 1, gradient equilibrium in phase 2 when set). It is a sum
of one term per exit,

    L = sum_k T_k,   T_k = w_k CE_k + distill / (E - 1) * KL_k + gpf / (K - 1) * I_k   (ICs),
    T_final = w_final CE_final,

(the distillation and imitation targets are detached, so those terms send nothing through later exits), and
``c_kj``, the gradient of ``T_k`` averaged over a fixed set of batches with respect to backbone part ``j`` (stem,
block 0..n-1, final), is exit ``k``'s contribution to the phase gradient ``G_j = sum_k c_kj`` exactly. Exit ``k``'s
share of it is reported two ways: by norm, ``||c_kj|| / sum_k' ||c_k'j||`` (in [0, 1]), and by projection onto the
total, ``<c_kj, G_j> / ||G_j||^2`` (the shares of a part sum to exactly 1; a negative one pulls against the update).
Parts the phase does not train (the whole backbone in phase 3) get ``null`` everywhere: the optimiser never sees
their gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from ..runs.files import append_jsonl
from ..runs.phase_config import PhaseConfig
from ..runs.rundir import RunDir
from ..training.loop import set_modes
from ..training.objective import exit_terms, phase_module
from ..training.phases import Phase, exit_weights
from .common import Batches, block_groups, exit_names, finite, preserved

MODES = ("current", "train", "eval")


def objective_phase(num_exits: int, weights=None) -> Phase:
    """A phase-2 objective with plain per-exit weights (uniform by default, the paper's mean) and no extras."""
    w = torch.full((num_exits,), 1.0 / num_exits, dtype=torch.float64) if weights is None else \
        torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (num_exits,):
        raise ExitlabError(f"weights must hold one loss weight per exit ({num_exits}), got shape {tuple(w.shape)}")
    return Phase(2, 1, PhaseConfig(), tuple(w.tolist()))


def phase_terms(model: MultiExitModel, phase: Phase, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each exit's additive term ``T_k`` of the phase objective on a batch, ``[num_exits]``: the training loss's own
    terms (:func:`exitlab.training.objective.exit_terms`), so they sum to ``phase_loss``."""
    opts = phase.options
    changing = [m for m in opts.methods_on() if m != "gpf"]  # GPF's imitation terms are split per exit
    if changing:
        raise ExitlabError(f"{phase.name}.{changing[0]}: the per-exit gradient terms do not model LayerSkip's layer "
                           "dropout and exit curriculum or L2W's sample weights yet (they change from step to step)")
    return exit_terms(phase_module(model, phase), phase, x, y).per_exit(model.num_exits)


def per_exit_gradients(model: MultiExitModel, batches: Batches, params: list[nn.Parameter],
                       phase: Phase | None = None) -> list[list[torch.Tensor]]:
    """Exit ``k``'s contribution to the gradient of the phase objective, for each of ``params``: ``[E][P]`` float64
    tensors (zeros where the exit's term does not reach a parameter). Summed over ``k`` they are the gradient of
    the objective averaged over all samples of ``batches`` (batches weighted by their size).

    ``phase`` defaults to :func:`objective_phase` (uniform weights). Uses ``torch.autograd.grad``, so no ``.grad``
    field is touched. The caller sets modes and ``requires_grad``.
    """
    E = model.num_exits
    phase = phase or objective_phase(E)
    n_total = sum(len(y) for _, y in batches)
    if not n_total:
        raise ExitlabError("gradient contributions need at least one non-empty batch")
    sums = [[torch.zeros_like(p, dtype=torch.float64) for p in params] for _ in range(E)]
    for x, y in batches:
        terms = phase_terms(model, phase, x, y)  # [E]
        live = [k for k in range(E) if terms[k].requires_grad]  # a zero-weight exit of phase 1 is a constant
        for i, k in enumerate(live):
            grads = torch.autograd.grad(terms[k], params, retain_graph=i < len(live) - 1, allow_unused=True)
            for acc, g in zip(sums[k], grads):
                if g is not None:
                    acc.add_(g.double(), alpha=len(y) / n_total)
    return sums


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ExitlabError(f"gradient mode must be one of {', '.join(MODES)}, got {mode!r}")


def _set_mode(model: MultiExitModel, mode: str, phase: Phase) -> None:
    if mode == "train":
        set_modes(model, phase)  # as the training loop: train mode, a frozen backbone in eval mode
    elif mode == "eval":
        model.eval()


def _objective(phase: Phase) -> dict:
    o = phase.options
    return {"phase": phase.kind, "weights": list(phase.weights), "label_smoothing": o.label_smoothing,
            "distill": o.distill if phase.kind != 1 else 0.0, "distill_temperature": o.distill_temperature,
            "grad_equilibrium": bool(o.grad_equilibrium and phase.kind == 2), "trains": phase.trains}


def gradient_contributions(model: MultiExitModel, batches: Batches, weights=None, *, phase: Phase | None = None,
                           mode: str = "current") -> dict:
    """Per-exit, per-part gradient contributions and shares under a phase's objective; JSON-serialisable.

    ``phase``: the :class:`~exitlab.phases.Phase` whose objective is measured (weights, label smoothing,
    self-distillation, gradient equilibrium, what is frozen). Without it, ``weights`` (one per exit, default
    uniform) give a plain phase-2 objective. ``mode``: ``"current"`` keeps the modes the model is in (inside the
    training loop, exactly the gradients the optimiser sees), ``"train"`` sets them as the training loop does for
    the phase (BatchNorm batch statistics; a frozen backbone in eval mode), ``"eval"`` uses running statistics.

    Nothing about the model changes: parameters are only read (``autograd.grad``, ``.grad`` untouched); BatchNorm
    buffers, which a train-mode forward updates, are saved and restored; train/eval modes and ``requires_grad``
    flags are restored; and the global RNG state is forked so that dropout here does not shift the training run's
    random stream.
    """
    E = model.num_exits
    _check_mode(mode)
    if phase is not None and weights is not None:
        raise ExitlabError("pass either a phase or loss weights, not both: the phase carries its own weights")
    if phase is None:
        phase = objective_phase(E, weights)
    elif not phase.weights:
        phase = Phase(phase.kind, phase.epochs, phase.options, exit_weights(phase.kind, phase.options, E))
    if not batches:
        raise ExitlabError("gradient contributions need at least one batch")
    groups = block_groups(model, batches[0][0])
    frozen = phase.trains == "heads"  # phase 3: the optimiser never sees a backbone gradient
    params = [] if frozen else [p for _, g in groups for p in g]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    grads = None
    if params:
        with preserved(model), torch.random.fork_rng(devices=devices):
            _set_mode(model, mode, phase)
            for p in params:
                p.requires_grad_(True)
            grads = per_exit_gradients(model, batches, params, phase)
    sizes = [len(g) for _, g in groups]
    table = _contribution_table(grads, sizes) if grads is not None else _frozen_table(E, len(groups))
    return {"analysis": "gradients", "exits": exit_names(model), "blocks": [name for name, _ in groups],
            "params": [sum(p.numel() for p in g) for _, g in groups], "weights": list(phase.weights),
            "objective": _objective(phase), "frozen": [frozen] * len(groups), "mode": mode,
            "samples": sum(len(y) for _, y in batches), "batches": len(batches), **table}


def _frozen_table(E: int, J: int) -> dict:
    nulls = [[None] * J for _ in range(E)]
    return {"norm": nulls, "share_norm": nulls, "share_projection": nulls, "cosine": nulls, "total_norm": [None] * J}


def _flat_by_group(grads: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    out, i = [], 0
    for s in sizes:
        part = grads[i:i + s]
        out.append(torch.cat([g.flatten().cpu() for g in part]) if part else torch.zeros(0, dtype=torch.float64))
        i += s
    return out


def _contribution_table(grads: list[list[torch.Tensor]], sizes: list[int]) -> dict:
    """Norms, norm shares, projection shares and cosines from per-exit contributions, grouped by backbone part."""
    contrib = [_flat_by_group(g, sizes) for g in grads]  # [E][J] flat float64 vectors
    E, J = len(contrib), len(sizes)
    norm = [[float(contrib[k][j].norm()) for j in range(J)] for k in range(E)]
    share_norm = [[None] * J for _ in range(E)]
    share_proj = [[None] * J for _ in range(E)]
    cosine = [[None] * J for _ in range(E)]
    total_norm = []
    for j in range(J):
        total = torch.stack([contrib[k][j] for k in range(E)]).sum(0)  # the phase gradient on part j
        tn = float(total.norm())
        total_norm.append(tn)
        norm_sum = sum(norm[k][j] for k in range(E))
        for k in range(E):
            if norm_sum > 0:
                share_norm[k][j] = norm[k][j] / norm_sum
            if tn > 0:
                share_proj[k][j] = finite(float(contrib[k][j] @ total) / tn ** 2)
                if norm[k][j] > 0:
                    cosine[k][j] = finite(float(contrib[k][j] @ total) / (norm[k][j] * tn))
    return {"norm": norm, "share_norm": share_norm, "share_projection": share_proj, "cosine": cosine,
            "total_norm": total_norm}


def gradient_logger(every: int, samples: int = 256):
    """A training probe: every ``every`` optimizer steps, append the per-exit gradient contributions on ``samples``
    fixed validation samples, under the running phase's own objective, to the run's ``gradients.jsonl``."""
    batches: list = []

    def probe(ctx) -> None:  # ctx: exitlab.train.ProbeContext
        if ctx.step % every:
            return
        if not batches:
            n = min(samples, ctx.data.val.num_samples)
            batches.extend(ctx.data.val.sample(n, seed=0, batch_size=128))
        record = gradient_contributions(ctx.model, batches, phase=ctx.phase)
        append_jsonl(ctx.run / RunDir.GRADIENTS, {"phase": ctx.phase.kind, "step": ctx.step, **record})

    return probe
