"""Mode connectivity between trained models of one architecture: linear paths, a plane, a quadratic Bezier curve.

BatchNorm: one rule for every point, endpoints included. Before a point is evaluated, every BatchNorm layer's
running statistics are re-estimated on the same ``bn_batches`` (interpolated statistics do not describe the
interpolated network). A model connected to itself therefore has exactly zero barrier. ``endpoints_as_trained``
reports the endpoints with their own statistics, to show how much the re-estimation alone moves the numbers.

Barrier height (``barrier``) = the largest loss on the path minus the mean of the two endpoint losses, per exit and
for the objective ``sum_k w_k L_k``. Because a path whose loss merely falls from one endpoint to the other also
scores half the endpoint difference on that measure, ``above_line`` adds Frankle et al. (2020)'s version: the
largest excess of the loss over the straight line between the endpoint losses.

``align=True`` first permutes the second model's hidden units to match the first's (weight matching, see
:mod:`exitlab.analysis.matching`), so that a barrier due only to the ordering of units is removed. The plane through
three models has its origin at the first, its first axis towards the second and its second axis towards the third,
orthogonalised (Gram-Schmidt); coordinates are in parameter-space units. :func:`connectivity` also runs seed
baselines: paths between runs of one regime that differ only in their seed.
"""

from __future__ import annotations

import copy
import logging

import torch

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from ..training.objective import exit_losses
from .common import Batches, exit_metrics, exit_names, reestimate_bn
from .matching import align as weight_match
from .seeds import scalar_stats

log = logging.getLogger("exitlab")

NOTES = [
    "BatchNorm: every point of every path and of the plane, endpoints included, is evaluated after re-estimating "
    "the running statistics on the same bn_samples training samples; endpoints_as_trained gives the endpoints with "
    "their own statistics",
    "barrier = largest loss on the path minus the mean of the endpoint losses; above_line = largest excess over the "
    "straight line between the endpoint losses (Frankle et al. 2020); both are about the loss on the evaluation "
    "samples; accuracy_drop is the same for accuracy, and a small loss barrier does not imply a small accuracy drop",
    "without alignment, a barrier between separately trained models can come from the permutation symmetry of "
    "hidden units alone (Entezari et al. 2022; Ainsworth et al. 2023); with alignment (weight matching) only the "
    "permutations that weight matching finds are removed",
    "a path tests connectivity along itself only: a barrier on a straight line or one fitted Bezier curve does not "
    "show that no low-loss path exists; a low one shows that one does",
    "seed baselines (same regime, different seed) give the scale of a barrier: without one, a cross-regime barrier "
    "cannot be put down to the regime; runs that share training (a common phase 1) inherit part of their "
    "connectivity",
]


NO_BASELINE = ("this comparison has no seed baseline (no regime with two runs): its barriers have no same-regime scale "
               "and cannot be put down to the regime")


def check_same_architecture(models: list[MultiExitModel], names: list[str]) -> None:
    """Connectivity needs one architecture: the same spec (when recorded) and the same parameter names and shapes."""
    ref, ref_name = models[0], names[0]
    for m, name in zip(models[1:], names[1:]):
        if ref.spec is not None and m.spec is not None and ref.spec != m.spec:
            a, b = ref.spec.to_json(), m.spec.to_json()
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            detail = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diff[:3])
            raise ExitlabError(f"{ref_name} and {name} have different architectures ({detail}); connectivity needs "
                               "models of one architecture, e.g. the joint, disjoint and mixed runs of one comparison")
        a, b = ref.state_dict(), m.state_dict()
        bad = sorted(set(a) ^ set(b)) or [k for k in a if a[k].shape != b[k].shape]
        if bad:
            raise ExitlabError(f"{ref_name} and {name} have different architectures (first difference at {bad[0]}); "
                               "connectivity needs models of one architecture")


def _state(m: MultiExitModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _endpoint_states(models: list[MultiExitModel], align: bool) -> tuple[list[dict], dict | None]:
    """State dicts of ``models``, the later ones permuted to match the first when ``align``."""
    states = [_state(models[0])]
    infos = []
    for m in models[1:]:
        if align:
            aligned, info = weight_match(models[0], m)
            states.append(aligned)
            infos.append(info)
        else:
            states.append(_state(m))
    return states, (infos[0] if len(infos) == 1 else infos) if align else None


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


def _evaluate(work: MultiExitModel, batches: Batches, bn_batches: Batches | None, w: torch.Tensor):
    """Loss and accuracy per exit and the objective; BatchNorm re-estimated first unless ``bn_batches`` is None."""
    if bn_batches is not None:
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


def _walk(work: MultiExitModel, ends: list[dict], set_point, ts: list[float], batches: Batches, bn_batches: Batches,
          w: torch.Tensor) -> dict:
    """Evaluate ``work`` at every ``t`` (``set_point(t)`` puts it there), every point under the one BatchNorm rule."""
    losses, accs, objs = [], [], []
    for t in ts:
        set_point(t)
        loss, acc, obj = _evaluate(work, batches, bn_batches, w)
        losses.append(loss)
        accs.append(acc)
        objs.append(obj)
    out = _path_summary(ts, losses, accs, objs)
    as_trained = []
    for end in (ends[0], ends[-1]):
        work.load_state_dict(end)
        loss, acc, obj = _evaluate(work, batches, None, w)
        as_trained.append({"loss": loss.tolist(), "accuracy": acc.tolist(), "objective": obj})
    out["endpoints_as_trained"] = as_trained
    return out


def _ts(points: int) -> list[float]:
    if points < 2:
        raise ExitlabError(f"a path needs at least 2 points, got {points}")
    return [i / (points - 1) for i in range(points)]


def linear_path(model_a: MultiExitModel, model_b: MultiExitModel, batches: Batches, bn_batches: Batches, *,
                points: int = 11, weights=None, align: bool = False) -> dict:
    """Loss and accuracy of every exit along ``(1 - t) theta_a + t theta_b`` at ``points`` evenly spaced ``t``
    (``theta_b`` permuted to match ``theta_a`` first when ``align``)."""
    ts = _ts(points)
    check_same_architecture([model_a, model_b], ["model a", "model b"])
    w = _weights(model_a.num_exits, weights)
    states, info = _endpoint_states([model_a, model_b], align)
    work = copy.deepcopy(model_a)
    out = _walk(work, states, lambda t: _load_combination(work, states, [1 - t, t]), ts, batches, bn_batches, w)
    return {"kind": "linear", **out, **({"alignment": info} if align else {})}


def bezier_path(model_a: MultiExitModel, model_b: MultiExitModel, train_batches: Batches, batches: Batches,
                bn_batches: Batches, *, steps: int = 200, lr: float = 0.01, points: int = 11, weights=None,
                seed: int = 0, align: bool = False) -> dict:
    """Fit a quadratic Bezier curve ``(1-t)^2 a + 2t(1-t) c + t^2 b`` (Garipov et al. 2018) and evaluate along it.

    The control point ``c`` starts at the midpoint and is trained with SGD (momentum 0.9) for ``steps`` batches of
    ``train_batches`` at a uniformly drawn ``t`` each, on the objective ``sum_k w_k L_k`` (BatchNorm in train mode).
    """
    ts = _ts(points)
    check_same_architecture([model_a, model_b], ["model a", "model b"])
    w = _weights(model_a.num_exits, weights)
    states, info = _endpoint_states([model_a, model_b], align)
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

    out = _walk(work, states, set_curve, ts, batches, bn_batches, w)
    return {"kind": "bezier", "train_steps": steps, "lr": lr, **out, **({"alignment": info} if align else {})}


def _flat(state: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([state[k].double().flatten() for k in names])


def plane(models: list[MultiExitModel], batches: Batches, bn_batches: Batches, *, steps: int = 11,
          margin: float = 0.25, weights=None, align: bool = False) -> dict:
    """Loss of every exit and the objective on the plane through three models, BatchNorm re-estimated per point."""
    if len(models) != 3:
        raise ExitlabError(f"the plane needs exactly three models, got {len(models)}")
    check_same_architecture(models, ["model a", "model b", "model c"])
    w = _weights(models[0].num_exits, weights)
    states, _ = _endpoint_states(models, align)
    work = copy.deepcopy(models[0])
    names = [k for k, _ in work.named_parameters()]
    pa, pb, pc = (_flat(s, names) for s in states)
    u, v = pb - pa, pc - pa
    if float(u.norm()) == 0:
        raise ExitlabError("the first two models of the plane have the same parameters; the plane is undefined")
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
    work.load_state_dict(states[0])
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            flat = pa + xv * e1 + yv * e2
            with torch.no_grad():
                for p, chunk in zip(work.parameters(), torch.split(flat, sizes)):
                    p.copy_(chunk.view_as(p))
            loss, acc, _ = _evaluate(work, batches, bn_batches, w)
            loss_grid[:, i, j], acc_grid[:, i, j] = loss, acc
        log.info("connectivity plane: row %d/%d", i + 1, steps)
    return {"x": xs, "y": ys, "positions": pos, "loss": loss_grid.tolist(), "accuracy": acc_grid.tolist(),
            "objective": (w.view(-1, 1, 1) * loss_grid).sum(0).tolist(), "aligned": align,
            "axes": "x: along model 2 - model 1; y: towards model 3, orthogonalised; parameter-space units "
                    "(Euclidean norm over all parameters)"}


def _axis(values: list[float], steps: int, margin: float) -> list[float]:
    lo, hi = min(values), max(values)
    pad = margin * (hi - lo)
    return torch.linspace(lo - pad, hi + pad, steps, dtype=torch.float64).tolist()


# ---------------------------------------------------------------- a comparison: regime pairs and seed baselines


def _name(label: str, seed) -> str:
    return label if seed is None else f"{label} (seed {seed})"


def _pairs(members: dict[str, list], r1: str, r2: str) -> list[tuple]:
    """Runs of two regimes to connect: one pair per seed both have (matched by seed), else their first runs."""
    a, b = members[r1], members[r2]
    common = [s for s, _ in a if s is not None and s in {t for t, _ in b}]
    if not common:
        return [(a[0], b[0])]
    by_seed = dict(b)
    return [((s, m), (s, by_seed[s])) for s, m in a if s in common]


def summarise(paths: list[dict]) -> list[dict]:
    """Barrier statistics (mean, std, n over seeds) per regime pair and per seed baseline, and per path kind."""
    keys = list(dict.fromkeys((p["role"], p["from"], p["to"], p["kind"]) for p in paths))
    out = []
    for role, a, b, kind in keys:
        ps = [p for p in paths if (p["role"], p["from"], p["to"], p["kind"]) == (role, a, b, kind)]
        out.append({"role": role, "from": a, "to": b, "kind": kind,
                    "barrier_objective": scalar_stats([p["barrier"]["objective"] for p in ps]),
                    "above_line_objective": scalar_stats([p["above_line"]["objective"] for p in ps]),
                    "accuracy_drop_final": scalar_stats([p["barrier"]["accuracy_drop"][-1] for p in ps])})
    return out


def connectivity(models: list[MultiExitModel], labels: list[str], batches: Batches, bn_batches: Batches, *,
                 seeds: list[int | None] | None = None, baselines: list[tuple] = (), points: int = 11,
                 plane_steps: int = 11, weights=None, bezier: bool = False, train_batches: Batches | None = None,
                 bezier_steps: int = 200, align: bool = False) -> dict:
    """Linear paths (optionally also Bezier curves) between the runs of every pair of regimes, seed baselines, and
    the plane through the first runs of three regimes.

    ``models`` are the compared runs, labelled by regime (``labels``) and ``seeds``. Runs of two regimes are paired
    by seed (one path per seed both have, else their first runs). Seed baselines connect the first run of a regime
    to every other run of it: the other compared runs with that label and ``baselines``, a list of extra
    ``(model, label, seed)`` runs (used for baselines only). ``summary`` gives the barrier mean, std and n per
    regime pair and per baseline.
    """
    seeds = list(seeds) if seeds is not None else [None] * len(models)
    if len(models) + len(baselines) < 2 or not models:
        raise ExitlabError(f"connectivity compares 2 or 3 models, got {len(models)}")
    extra = list(baselines)
    check_same_architecture([*models, *[b[0] for b in extra]],
                            [_name(lab, s) for lab, s in zip(labels, seeds)] + [_name(b[1], b[2]) for b in extra])
    regimes = list(dict.fromkeys(labels))
    if len(regimes) > 3:
        raise ExitlabError(f"connectivity compares 2 or 3 regimes (several seeds each allowed), got {len(regimes)}: "
                           f"{', '.join(regimes)}")
    members = {r: [(s, m) for m, lab, s in zip(models, labels, seeds) if lab == r] for r in regimes}
    compared = {r: list(v) for r, v in members.items()}  # regime pairs come from these; baselines from all
    for m, lab, s in extra:
        if lab not in members:
            raise ExitlabError(f"baseline run {_name(lab, s)} matches none of the compared regimes "
                               f"({', '.join(regimes)}); a seed baseline needs a compared run of its regime")
        members[lab].append((s, m))
    paths = []

    def connect(a, b, la: str, lb: str, role: str) -> None:
        (sa, ma), (sb, mb) = a, b
        log.info("connectivity: %s -> %s (%s)", _name(la, sa), _name(lb, sb), role)
        tags = {"from": la, "to": lb, "seed_from": sa, "seed_to": sb, "role": role}
        paths.append({**tags, **linear_path(ma, mb, batches, bn_batches, points=points, weights=weights,
                                            align=align)})
        if bezier:
            paths.append({**tags, **bezier_path(ma, mb, train_batches or bn_batches, batches, bn_batches,
                                                steps=bezier_steps, points=points, weights=weights, align=align)})

    for i, r1 in enumerate(regimes):
        for r2 in regimes[i + 1:]:
            for a, b in _pairs(compared, r1, r2):
                connect(a, b, r1, r2, "pair")
    for r in regimes:
        for other in members[r][1:]:
            connect(members[r][0], other, r, r, "baseline")
    out = {"analysis": "connectivity", "runs": [_name(lab, s) for lab, s in zip(labels, seeds)],
           "regimes": regimes, "exits": exit_names(models[0]),
           "weights": _weights(models[0].num_exits, weights).tolist(),
           "samples": sum(len(y) for _, y in batches), "bn_samples": sum(len(y) for _, y in bn_batches),
           "aligned": align, "paths": paths, "summary": summarise(paths), "notes": NOTES + ([] if any(
               p["role"] == "baseline" for p in paths) else [NO_BASELINE]),
           "bn": "every point, endpoints included: BatchNorm statistics re-estimated on the same bn_samples"}
    if len(regimes) == 3 and plane_steps:
        firsts = [members[r][0] for r in regimes]
        out["plane"] = {**plane([m for _, m in firsts], batches, bn_batches, steps=plane_steps, weights=weights,
                                align=align), "runs": [_name(r, s) for r, (s, _) in zip(regimes, firsts)]}
    return out
