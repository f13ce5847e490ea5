"""Loss landscapes around a trained model: filter-normalised random planes and lines (Li et al. 2018).

Directions. Each direction is a Gaussian random tensor per parameter; for every filter (slice along dim 0 of a
conv or linear weight) it is rescaled to the norm of that filter in the model, so a step of 1 moves every filter by
its own size. One-dimensional parameters (biases, BatchNorm and LayerNorm affine parameters) get a zero direction:
they are not perturbed (Li et al.'s default, ``ignore='biasbn'``). ``params`` restricts the perturbation to the
backbone (which includes the final classifier), to the IC heads, or to all parameters.

BatchNorm. ``bn="fixed"`` (default, as Li et al.) evaluates every point in eval mode with the model's own running
statistics. ``bn="reestimate"`` recomputes the running statistics at every point from ``bn_batches`` first (slower;
the surface is then the one a re-normalised network would have).

Every point is one batched, no-grad pass over the evaluation batches that yields all exits' losses and accuracies
at once. One surface per exit is reported, plus the training objective ``sum_k w_k L_k``. With ``params="heads"``
and fixed BatchNorm the backbone does not change, so its features are computed once and only the heads rerun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from .common import Batches, block_outputs, exit_metrics, exit_names, logits_metrics, preserved, reestimate_bn

log = logging.getLogger("exitlab")
PARAM_SETS = ("all", "backbone", "heads")
BN_MODES = ("fixed", "reestimate")


def select_params(model: MultiExitModel, which: str) -> list[nn.Parameter]:
    """The parameters a landscape perturbs: ``all``, ``backbone`` (with the final classifier) or ``heads`` (ICs)."""
    if which not in PARAM_SETS:
        raise ExitlabError(f"landscape params must be one of {', '.join(PARAM_SETS)}, got {which!r}")
    if which == "heads" and not model.exits:
        raise ExitlabError("this model has no IC heads; use params=backbone or all")
    return {"all": lambda: list(model.parameters()), "backbone": model.backbone_parameters,
            "heads": model.head_parameters}[which]()


def filter_normalized_direction(params: list[nn.Parameter], generator: torch.Generator) -> list[torch.Tensor]:
    """A random direction with every filter scaled to its parameter filter's norm; zero on 1-D parameters."""
    out = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
        if p.dim() <= 1:
            d.zero_()
        else:
            dn = d.flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1))  # [out, 1, ...]
            pn = p.detach().flatten(1).norm(dim=1).view_as(dn)
            d.mul_(pn / (dn + 1e-10))
        out.append(d)
    return out


def grid_coords(steps: int, span: float) -> list[float]:
    """``steps`` evenly spaced coordinates in ``[-span, span]``; the middle one is exactly 0 when ``steps`` is odd."""
    if steps < 2:
        raise ExitlabError(f"a landscape needs at least 2 steps per axis, got {steps}")
    c = (steps - 1) / 2
    return [span * (i - c) / c for i in range(steps)]


@torch.no_grad()
def _move(params: list[nn.Parameter], origin: list[torch.Tensor], dirs: list[list[torch.Tensor]],
          coefs: list[float]) -> None:
    """Set ``params = origin + sum_i coefs[i] * dirs[i]`` (exactly the origin when every coefficient is 0)."""
    for j, p in enumerate(params):
        p.copy_(origin[j])
        for d, c in zip(dirs, coefs):
            if c != 0:
                p.add_(d[j], alpha=c)


def _heads_only(model: MultiExitModel, batches: Batches) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """An evaluator that reruns only the IC heads on backbone features computed once."""
    cache = []
    with torch.no_grad():
        for x, y in batches:
            feats = block_outputs(model, x, list(model.exits))
            cache.append((feats, model.backbone.run(x, set(), lambda i, h: h), y))

    @torch.no_grad()
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return logits_metrics(([*model.heads_on(f), fin], y) for f, fin, y in cache)

    return run


def _evaluator(model: MultiExitModel, batches: Batches, params: str, bn: str, bn_batches: Batches | None):
    if bn not in BN_MODES:
        raise ExitlabError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if bn == "reestimate" and not bn_batches:
        raise ExitlabError("bn=reestimate needs batches to re-estimate BatchNorm statistics from")
    if params == "heads" and bn == "fixed":
        return _heads_only(model, batches)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        if bn == "reestimate":
            reestimate_bn(model, bn_batches)
        return exit_metrics(model, batches)

    return run


def _weights(model: MultiExitModel, weights) -> torch.Tensor:
    E = model.num_exits
    w = torch.full((E,), 1.0 / E, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    if w.shape != (E,):
        raise ExitlabError(f"weights must hold one loss weight per exit ({E}), got shape {tuple(w.shape)}")
    return w


def surface_points(model: MultiExitModel, batches: Batches, points: list[list[float]], *, params: str, seed: int,
             weights, bn: str, bn_batches: Batches | None) -> tuple[list, list, dict]:
    """Losses and accuracies ``[E]`` at ``origin + sum_i c_i d_i`` for every coefficient list in ``points``, plus
    metadata. The building block of :func:`landscape_2d` and :func:`landscape_1d` (and of partial grids)."""
    w = _weights(model, weights)
    chosen = select_params(model, params)
    n_dirs = len(points[0])
    g = torch.Generator().manual_seed(seed)
    with preserved(model, params=True):
        model.eval()
        dirs = [filter_normalized_direction(chosen, g) for _ in range(n_dirs)]
        origin = [p.detach().clone() for p in chosen]
        run = _evaluator(model, batches, params, bn, bn_batches)
        losses, accs = [], []
        t0, c0 = time.perf_counter(), time.process_time()
        for i, coefs in enumerate(points):
            _move(chosen, origin, dirs, coefs)
            loss, acc = run()
            losses.append(loss)
            accs.append(acc)
            if (i + 1) % 50 == 0:
                each = (time.perf_counter() - t0) / (i + 1)
                log.info("landscape: %d/%d points, %.2f s each", i + 1, len(points), each)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = {"params": params, "bn": bn, "seed": seed, "weights": w.tolist(), "exits": exit_names(model),
            "perturbed_parameters": sum(p.numel() for p, d in zip(chosen, dirs[0]) if d.abs().sum() > 0),
            "samples": sum(len(y) for _, y in batches), "seconds": seconds, "seconds_per_point": seconds / len(points),
            "cpu_seconds_per_point": cpu / len(points),
            "directions": "filter-normalised Gaussian (Li et al. 2018); 1-D parameters not perturbed"}
    return losses, accs, meta


def landscape_2d(model: MultiExitModel, batches: Batches, *, steps: int = 21, span: float = 1.0, params: str = "all",
                 seed: int = 0, weights=None, bn: str = "fixed", bn_batches: Batches | None = None) -> dict:
    """Losses and accuracies of every exit, and the objective, on a ``steps x steps`` filter-normalised plane.

    ``loss[k][i][j]`` is exit ``k``'s loss at ``coords[j]`` along the first direction and ``coords[i]`` along the
    second. The model is restored exactly afterwards.
    """
    coords = grid_coords(steps, span)
    points = [[a, b] for b in coords for a in coords]
    losses, accs, meta = surface_points(model, batches, points, params=params, seed=seed, weights=weights, bn=bn,
                                        bn_batches=bn_batches)
    w = torch.tensor(meta["weights"], dtype=torch.float64)
    grid = lambda vals: torch.stack(vals).view(steps, steps, -1).permute(2, 0, 1)  # noqa: E731  [E, i(d2), j(d1)]
    loss, acc = grid(losses), grid(accs)
    return {"analysis": "landscape", "dims": 2, "coords": coords, "span": span, "steps": steps, **meta,
            "loss": loss.tolist(), "accuracy": acc.tolist(), "objective": (w.view(-1, 1, 1) * loss).sum(0).tolist()}


def landscape_1d(model: MultiExitModel, batches: Batches, *, steps: int = 41, span: float = 1.0, params: str = "all",
                 seed: int = 0, weights=None, bn: str = "fixed", bn_batches: Batches | None = None) -> dict:
    """Losses and accuracies of every exit, and the objective, along one filter-normalised random direction."""
    coords = grid_coords(steps, span)
    losses, accs, meta = surface_points(model, batches, [[a] for a in coords], params=params, seed=seed,
                                        weights=weights, bn=bn, bn_batches=bn_batches)
    w = torch.tensor(meta["weights"], dtype=torch.float64)
    loss, acc = torch.stack(losses).T, torch.stack(accs).T  # [E, steps]
    return {"analysis": "landscape", "dims": 1, "coords": coords, "span": span, "steps": steps, **meta,
            "loss": loss.tolist(), "accuracy": acc.tolist(), "objective": (w @ loss).tolist()}
