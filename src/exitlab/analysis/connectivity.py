"""Mode connectivity between trained models of one architecture: linear paths, a plane, a quadratic Bezier curve.

Along a path every point's BatchNorm running statistics are re-estimated from ``bn_batches`` before it is
evaluated (interpolated statistics are meaningless inside a path). The endpoints are the trained models exactly as
they are, own running statistics included, so the path starts and ends at the models' own losses and accuracies;
``endpoints_reestimated`` additionally reports the endpoints with re-estimated statistics, to show how much the
re-estimation alone moves the numbers. Barrier height (``barrier``) = the largest loss on the path minus the mean of
the two endpoint losses, per exit and for the objective ``sum_k w_k L_k``. Because a path whose loss merely falls
from one endpoint to the other also scores half the endpoint difference on that measure, ``above_line`` adds Frankle
et al. (2020)'s version: the largest excess of the loss over the straight line between the endpoint losses.

The plane through three models has its origin at the first, its first axis towards the second and its second axis
towards the third, orthogonalised (Gram-Schmidt); coordinates are in parameter-space units.
"""

from __future__ import annotations

import copy
import logging

import torch

from ..errors import ExitlabError
from ..loop import exit_losses
from ..models.core import MultiExitModel
from .common import Batches, exit_metrics, exit_names, reestimate_bn

log = logging.getLogger("exitlab")


def check_same_architecture(models: list[MultiExitModel], names: list[str]) -> None:
    """Connectivity needs one architecture: the same spec (when recorded) and the same parameter names and shapes."""
    ref, ref_name = models[0], names[0]
    for m, name in zip(models[1:], names[1:]):
        if ref.spec and m.spec and ref.spec != m.spec:
            diff = sorted(k for k in set(ref.spec) | set(m.spec) if ref.spec.get(k) != m.spec.get(k))
            detail = ", ".join(f"{k}: {ref.spec.get(k)!r} vs {m.spec.get(k)!r}" for k in diff[:3])
            raise ExitlabError(f"{ref_name} and {name} have different architectures ({detail}); connectivity needs "
                               "models of one architecture, e.g. the joint, disjoint and mixed runs of one comparison")
        a, b = ref.state_dict(), m.state_dict()
        bad = sorted(set(a) ^ set(b)) or [k for k in a if a[k].shape != b[k].shape]
        if bad:
            raise ExitlabError(f"{ref_name} and {name} have different architectures (first difference at {bad[0]}); "
                               "connectivity needs models of one architecture")


def _states(models: list[MultiExitModel]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


@torch.no_grad()
def _load_combination(work: MultiExitModel, states: list[dict], coefs: list[float]) -> None:
    """Floating tensors (parameters and buffers) become ``sum_i coefs[i] * states[i]``; others come from state 0."""
    combined = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            combined[k] = sum(c * s[k].double() for c, s in zip(coefs, states)).to(v.dtype)
        else:
            combined[k] = v
    work.load_state_dict(combined)


def _evaluate(work: MultiExitModel, batches: Batches, bn_batches: Batches, reestimate: bool, w: torch.Tensor):
    if reestimate:
        reestimate_bn(work, bn_batches)
    work.eval()
    loss, acc = exit_metrics(work, batches)
    return loss, acc, float(w @ loss)


def _weights(n: int, weights) -> torch.Tensor:
    w = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    if w.shape != (n,):
        raise ExitlabError(f"weights must hold one loss weight per exit ({n}), got shape {tuple(w.shape)}")
    return w


def _above_line(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``max_t v(t) - ((1 - t) v(0) + t v(1))`` along the last dimension (Frankle et al. 2020's barrier)."""
    line = v[..., :1] * (1 - t) + v[..., -1:] * t
    return (v - line).max(-1).values


def _path_summary(ts: list[float], losses: list, accs: list, objs: list[float]) -> dict:
    loss = torch.stack(losses, 1)  # [E, T]
    acc = torch.stack(accs, 1)
    obj = torch.tensor(objs, dtype=torch.float64)
    t = torch.tensor(ts, dtype=torch.float64)
    return {"t": ts, "loss": loss.tolist(), "accuracy": acc.tolist(), "objective": obj.tolist(),
            "barrier": {"loss": (loss.max(1).values - (loss[:, 0] + loss[:, -1]) / 2).tolist(),
                        "objective": float(obj.max() - (obj[0] + obj[-1]) / 2),
                        "accuracy_drop": ((acc[:, 0] + acc[:, -1]) / 2 - acc.min(1).values).tolist()},
            "above_line": {"loss": _above_line(loss, t).tolist(), "objective": float(_above_line(obj, t))}}


def _walk(work: MultiExitModel, ends: list[dict], coefs_of, ts: list[float], batches: Batches, bn_batches: Batches,
          w: torch.Tensor) -> dict:
    """Evaluate ``work`` at every ``t``: endpoints as trained, interior points with re-estimated BatchNorm."""
    losses, accs, objs = [], [], []
    for t in ts:
        if t in (0.0, 1.0):
            work.load_state_dict(ends[0] if t == 0.0 else ends[-1])
            loss, acc, obj = _evaluate(work, batches, bn_batches, False, w)
        else:
            coefs_of(t)
            loss, acc, obj = _evaluate(work, batches, bn_batches, True, w)
        losses.append(loss)
        accs.append(acc)
        objs.append(obj)
    out = _path_summary(ts, losses, accs, objs)
    reest = []
    for end in (ends[0], ends[-1]):
        work.load_state_dict(end)
        loss, acc, obj = _evaluate(work, batches, bn_batches, True, w)
        reest.append({"loss": loss.tolist(), "accuracy": acc.tolist(), "objective": obj})
    out["endpoints_reestimated"] = reest
    return out


def linear_path(model_a: MultiExitModel, model_b: MultiExitModel, batches: Batches, bn_batches: Batches, *,
                points: int = 11, weights=None) -> dict:
    """Loss and accuracy of every exit along ``(1 - t) theta_a + t theta_b`` at ``points`` evenly spaced ``t``."""
    if points < 2:
        raise ExitlabError(f"a path needs at least 2 points, got {points}")
    check_same_architecture([model_a, model_b], ["model a", "model b"])
    w = _weights(model_a.num_exits, weights)
    states = _states([model_a, model_b])
    work = copy.deepcopy(model_a)
    ts = [i / (points - 1) for i in range(points)]
    out = _walk(work, states, lambda t: _load_combination(work, states, [1 - t, t]), ts, batches, bn_batches, w)
    return {"kind": "linear", **out}


def bezier_path(model_a: MultiExitModel, model_b: MultiExitModel, train_batches: Batches, batches: Batches,
                bn_batches: Batches, *, steps: int = 200, lr: float = 0.01, points: int = 11, weights=None,
                seed: int = 0) -> dict:
    """Fit a quadratic Bezier curve ``(1-t)^2 a + 2t(1-t) c + t^2 b`` (Garipov et al. 2018) and evaluate along it.

    The control point ``c`` starts at the midpoint and is trained with SGD (momentum 0.9) for ``steps`` batches of
    ``train_batches`` at a uniformly drawn ``t`` each, on the objective ``sum_k w_k L_k`` (BatchNorm in train mode).
    """
    check_same_architecture([model_a, model_b], ["model a", "model b"])
    w = _weights(model_a.num_exits, weights)
    states = _states([model_a, model_b])
    work = copy.deepcopy(model_a)
    names = [k for k, _ in work.named_parameters()]
    a = {k: states[0][k] for k in names}
    b = {k: states[1][k] for k in names}
    ctrl = {k: ((a[k] + b[k]) / 2).requires_grad_(True) for k in names}
    opt = torch.optim.SGD(list(ctrl.values()), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    work.train()
    for step in range(steps):
        x, y = train_batches[step % len(train_batches)]
        t = float(torch.rand((), generator=g))
        params = {k: (1 - t) ** 2 * a[k] + 2 * t * (1 - t) * ctrl[k] + t ** 2 * b[k] for k in names}
        with torch.enable_grad():
            outs = torch.func.functional_call(work, params, (x,))
            loss = (w.to(outs[0].device).float() * exit_losses(outs, y)).sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
    fitted = {k: v.detach() for k, v in ctrl.items()}

    @torch.no_grad()
    def set_curve(t: float) -> None:
        for k, p in work.named_parameters():
            p.copy_((1 - t) ** 2 * a[k] + 2 * t * (1 - t) * fitted[k] + t ** 2 * b[k])

    ts = [i / (points - 1) for i in range(points)]
    out = _walk(work, states, set_curve, ts, batches, bn_batches, w)
    return {"kind": "bezier", "train_steps": steps, "lr": lr, **out}


def _flat(state: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([state[k].double().flatten() for k in names])


def plane(models: list[MultiExitModel], batches: Batches, bn_batches: Batches, *, steps: int = 11,
          margin: float = 0.25, weights=None) -> dict:
    """Loss of every exit and the objective on the plane through three models, BatchNorm re-estimated per point."""
    if len(models) != 3:
        raise ExitlabError(f"the plane needs exactly three models, got {len(models)}")
    check_same_architecture(models, ["model a", "model b", "model c"])
    w = _weights(models[0].num_exits, weights)
    states = _states(models)
    work = copy.deepcopy(models[0])
    names = [k for k, _ in work.named_parameters()]
    pa, pb, pc = (_flat(s, names) for s in states)
    u, v = pb - pa, pc - pa
    e1 = u / u.norm()
    v_perp = v - (v @ e1) * e1
    if float(v_perp.norm()) <= 1e-12 * float(u.norm()):
        raise ExitlabError("the three models lie on one line in parameter space; the plane is undefined")
    e2 = v_perp / v_perp.norm()
    pos = [[0.0, 0.0], [float(u.norm()), 0.0], [float(v @ e1), float(v_perp.norm())]]
    xs, ys = _axis([p[0] for p in pos], steps, margin), _axis([p[1] for p in pos], steps, margin)
    loss_grid = torch.zeros(models[0].num_exits, steps, steps, dtype=torch.float64)
    acc_grid = torch.zeros_like(loss_grid)
    sizes = [dict(work.named_parameters())[k].numel() for k in names]
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            flat = pa + xv * e1 + yv * e2
            with torch.no_grad():
                for p, chunk in zip(work.parameters(), torch.split(flat, sizes)):
                    p.copy_(chunk.view_as(p))
            loss, acc, _ = _evaluate(work, batches, bn_batches, True, w)
            loss_grid[:, i, j], acc_grid[:, i, j] = loss, acc
        log.info("connectivity plane: row %d/%d", i + 1, steps)
    return {"x": xs, "y": ys, "positions": pos, "loss": loss_grid.tolist(), "accuracy": acc_grid.tolist(),
            "objective": (w.view(-1, 1, 1) * loss_grid).sum(0).tolist()}


def _axis(values: list[float], steps: int, margin: float) -> list[float]:
    lo, hi = min(values), max(values)
    pad = margin * (hi - lo)
    return torch.linspace(lo - pad, hi + pad, steps, dtype=torch.float64).tolist()


def connectivity(models: list[MultiExitModel], labels: list[str], batches: Batches, bn_batches: Batches, *,
                 points: int = 11, plane_steps: int = 11, weights=None, bezier: bool = False,
                 train_batches: Batches | None = None, bezier_steps: int = 200) -> dict:
    """Linear paths between every pair of 2 or 3 models (optionally Bezier curves), and the plane through three."""
    if len(models) not in (2, 3):
        raise ExitlabError(f"connectivity compares 2 or 3 models, got {len(models)}")
    check_same_architecture(models, labels)
    paths = []
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            log.info("connectivity: %s -> %s", labels[i], labels[j])
            p = linear_path(models[i], models[j], batches, bn_batches, points=points, weights=weights)
            paths.append({"from": labels[i], "to": labels[j], **p})
            if bezier:
                p = bezier_path(models[i], models[j], train_batches or bn_batches, batches, bn_batches,
                                steps=bezier_steps, points=points, weights=weights)
                paths.append({"from": labels[i], "to": labels[j], **p})
    out = {"analysis": "connectivity", "runs": labels, "exits": exit_names(models[0]),
           "weights": _weights(models[0].num_exits, weights).tolist(), "samples": sum(len(y) for _, y in batches),
           "bn_samples": sum(len(y) for _, y in bn_batches), "paths": paths,
           "bn": "interior points: BatchNorm statistics re-estimated; endpoints: the models as trained"}
    if len(models) == 3 and plane_steps:
        out["plane"] = plane(models, batches, bn_batches, steps=plane_steps, weights=weights)
    return out
