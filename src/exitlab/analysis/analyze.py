"""``exitlab analyze``: run one analysis on run directories and write ``<kind>.json`` plus ``<kind>.png``.

With one run the files go to ``RUN_DIR/analysis/``; with several, to ``analysis/`` in the runs' common parent
directory (next to the runs); ``--out`` overrides both. The PNG is drawn from the JSON alone
(``exitlab analyze plot FILE.json`` redraws it). Runs of one regime with different seeds are aggregated (``groups``:
mean and std over seeds); ``--checkpoint`` (or a checkpoint file given as a run) analyses an intermediate model.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ExitlabError
from ..runs.files import check_out_dir, read_json
from ..runs.rundir import RunDir
from ..training.phases import Phase, exit_weights, loss_weights
from .common import Run, check_blocks, fixed_batches, load_run, split_loader, write_json
from .connectivity import check_same_architecture, connectivity
from .gradients import gradient_contributions
from .landscape import landscape_1d, landscape_2d
from .mi import mi_profile
from .plots import DRAW, draw, draw_gradient_log, redraw, save
from .rank import DEFAULT_CONVENTION, rank_profile
from .seeds import aggregate

log = logging.getLogger("exitlab")
KINDS = ("gradients", "rank", "mi", "landscape", "connectivity")
DEFAULT_SPLIT = {"gradients": "train", "rank": "test", "mi": "test", "landscape": "train", "connectivity": "train"}
DEFAULT_SAMPLES = {"gradients": 512, "rank": 2000, "mi": 2000, "landscape": 2000, "connectivity": 2000}


@dataclass
class Options:
    """Options of ``exitlab analyze`` (see ``exitlab analyze --help``); ``None`` means the analysis's default."""

    split: str | None = None
    samples: int | None = None
    batch_size: int = 250
    seed: int = 0
    blocks: list[int] | None = None
    checkpoint: str | None = None  # every run: this checkpoint (name in RUN/checkpoints/ or a path), not the final
    tau: float = 1e-3
    convention: str = DEFAULT_CONVENTION  # rank: "covariance" (eigenvalues > tau lambda_max) or "singular"
    max_features: int = 8192
    pool: int = 0
    bins: int = 30
    noise_ratio: float = 0.1
    noise_var: float | None = None
    probe: bool = True
    mode: str = "train"
    phase: int = 2  # gradients: the phase whose objective (as the run's config sets it) is measured
    steps: int = 21
    span: float = 1.0
    params: str = "all"
    dims: int = 2
    bn: str = "fixed"
    points: int = 11
    plane_steps: int = 11
    bezier: bool = False
    bezier_steps: int = 200
    bn_samples: int = 2000
    align: bool = False  # connectivity: weight matching before interpolating (built-in ResNets)
    baselines: list[str] | None = None  # connectivity: extra same-regime runs (other seeds) as baselines
    find_baselines: bool = True  # connectivity: also use seed siblings found in <root>/seed<S>/<run name>


def _batches(run: Run, kind: str, opts: Options):
    split = opts.split or DEFAULT_SPLIT[kind]
    n = opts.samples or DEFAULT_SAMPLES[kind]
    return fixed_batches(split_loader(run, split), n, opts.batch_size, opts.seed, what=f"analyze {kind}")


def _bn_batches(run: Run, opts: Options):
    return fixed_batches(run.data.train, opts.bn_samples, opts.batch_size, opts.seed + 1,
                         what="BatchNorm re-estimation (--bn-samples)")


def _joint_weights(run: Run) -> torch.Tensor:
    """The phase-2 (joint) loss weights of the run's config over all exits: the objective landscapes report."""
    return loss_weights(run.cfg.phase2.loss_weights, run.model.num_exits, "phase2.loss_weights").double()


def run_phase(run: Run, kind: int) -> Phase:
    """Phase ``kind`` as the run's config sets it (its options and per-exit weights), for the gradient analysis."""
    if kind not in (1, 2, 3):
        raise ExitlabError(f"--phase must be 1, 2 or 3, got {kind}")
    if kind != 1 and run.model.num_exits < 2:
        raise ExitlabError(f"this model has no IC, so phase {kind} has no objective here; use --phase 1")
    options = getattr(run.cfg, f"phase{kind}")
    return Phase(kind, 1, options, exit_weights(kind, options, run.model.num_exits, run.cfg.regime))


def _fast_layout(run: Run, batches):
    """channels_last for convolutional models: the same numbers, 1.5-2x faster on CPU."""
    run.model.to(memory_format=torch.channels_last)
    return [(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x, y) for x, y in batches]


def _one(run: Run, kind: str, opts: Options) -> dict:
    model = run.model
    check_blocks(model, opts.blocks)  # before any data work: a bad index fails at once
    phase = run_phase(run, opts.phase) if kind == "gradients" else None
    batches = _batches(run, kind, opts)
    if kind == "gradients":
        return gradient_contributions(model, batches, phase=phase, mode=opts.mode)
    if kind == "rank":
        return rank_profile(model, batches, blocks=opts.blocks, tau=opts.tau, convention=opts.convention,
                            max_features=opts.max_features, seed=opts.seed, pool=opts.pool)
    if kind == "mi":
        return mi_profile(model, batches, blocks=opts.blocks, bins=opts.bins, noise_ratio=opts.noise_ratio,
                          noise_var=opts.noise_var, probe=opts.probe, max_features=opts.max_features,
                          seed=opts.seed)
    if opts.dims not in (1, 2):
        raise ExitlabError(f"--dims must be 1 or 2, got {opts.dims}")
    batches = _fast_layout(run, batches)
    bn_batches = _fast_layout(run, _bn_batches(run, opts)) if opts.bn == "reestimate" else None
    fn = landscape_2d if opts.dims == 2 else landscape_1d
    return fn(model, batches, steps=opts.steps, span=opts.span, params=opts.params, seed=opts.seed,
              weights=_joint_weights(run), bn=opts.bn, bn_batches=bn_batches)


def _labels(runs: list[Run]) -> list[str]:
    """Regime labels; runs sharing a label are seeds of one regime unless they also share a seed (then they are told
    apart by directory name, or by path)."""
    ckpt = [f"@{r.checkpoint.stem}" if r.checkpoint is not None else "" for r in runs]
    for labels in ([r.label for r in runs], [r.path.name + c for r, c in zip(runs, ckpt)],
                   [str(r.path) + c for r, c in zip(runs, ckpt)]):
        keys = list(zip(labels, (r.seed for r in runs)))
        if len(set(keys)) == len(keys):
            return labels
    return labels


def run_dir_of(path: Path) -> Path:
    """The run directory of a run path, or of a checkpoint file given in its place."""
    return path.parent.parent if path.is_file() and path.parent.name == RunDir.CHECKPOINTS else path


def out_dir(run_dirs: list[Path], out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    dirs = [run_dir_of(Path(p)) for p in run_dirs]
    if len(set(dirs)) == 1:
        return dirs[0] / "analysis"
    return Path(os.path.commonpath([str(p.resolve()) for p in dirs])) / "analysis"


def _seed_number(path: Path) -> int | None:
    m = re.fullmatch(r"seed(\d+)", path.parent.name)
    return int(m.group(1)) if m else None


def seed_siblings(path: Path) -> list[Path]:
    """Runs of the same name under the other ``seed<S>`` folders of a comparison (``<root>/seed<S>/<name>``)."""
    path = run_dir_of(path)
    if _seed_number(path) is None:
        return []
    found = [p for p in path.parent.parent.glob(f"seed*/{path.name}") if _seed_number(p) is not None]
    return [p for p in sorted(found, key=_seed_number)
            if p.resolve() != path.resolve() and (p / RunDir.CONFIG).is_file()]


def _baseline_runs(runs: list[Run], dirs: list[Path], opts: Options) -> list[Run]:
    """Extra same-regime runs for connectivity's seed baselines: ``--baseline`` runs and seed siblings."""
    given = [Path(b) for b in opts.baselines or []]
    seen = {run_dir_of(d).resolve() for d in dirs}
    candidates = [(p, True) for p in given]
    if opts.find_baselines:
        candidates += [(s, False) for d in dirs for s in seed_siblings(d)]
    out = []
    for path, explicit in candidates:
        if run_dir_of(path).resolve() in seen:
            continue
        seen.add(run_dir_of(path).resolve())
        try:
            out.append(load_run(path, opts.checkpoint))
        except ExitlabError as e:  # a sibling that is unfinished or lacks the checkpoint is skipped
            if explicit:
                raise
            log.info("connectivity: seed sibling %s skipped (%s)", path, e)
    return out


def _connectivity(runs: list[Run], labels: list[str], dirs: list[Path], opts: Options) -> dict:
    extra = _baseline_runs(runs, dirs, opts)
    check_same_architecture([r.model for r in runs + extra], [str(r.path) for r in runs + extra])
    first = runs[0]
    for r in runs[1:] + extra:
        if r.cfg.data.name != first.cfg.data.name or r.data.classes != first.data.classes:
            raise ExitlabError(f"{first.path} and {r.path} were trained on different data "
                               f"({first.cfg.data.name} vs {r.cfg.data.name}); connectivity needs one data set")
    batches = _fast_layout(first, _batches(first, "connectivity", opts))
    bn_batches = _fast_layout(first, _bn_batches(first, opts))
    for r in runs[1:] + extra:
        r.model.to(memory_format=torch.channels_last)
    data = connectivity([r.model for r in runs], labels, batches, bn_batches, seeds=[r.seed for r in runs],
                        baselines=[(r.model, r.label, r.seed) for r in extra], points=opts.points,
                        plane_steps=opts.plane_steps, weights=_joint_weights(first), bezier=opts.bezier,
                        bezier_steps=opts.bezier_steps, align=opts.align)
    return {**data, "run_dirs": [str(r.path) for r in runs], "baseline_dirs": [str(r.path) for r in extra]}


def _file_name(kind: str, opts: Options, runs: list[Run]) -> str:
    name = kind
    if kind == "landscape":
        name = f"landscape-{opts.params}" + ("-1d" if opts.dims == 1 else "")
    elif kind == "rank":
        name += (f"-pool{opts.pool}" if opts.pool else "") + ("" if opts.convention == DEFAULT_CONVENTION
                                                               else f"-{opts.convention}")
    elif kind == "gradients" and opts.phase != 2:
        name += f"-phase{opts.phase}"
    elif kind == "connectivity" and opts.align:
        name += "-aligned"
    stems = {r.checkpoint.stem for r in runs if r.checkpoint is not None}
    if stems:
        name += f"-{stems.pop()}" if len(stems) == 1 and all(r.checkpoint for r in runs) else "-checkpoints"
    return name


def analyze(kind: str, run_dirs: list[str | Path], opts: Options | None = None, out: str | Path | None = None
            ) -> tuple[Path, Path]:
    """Run analysis ``kind`` on ``run_dirs``; returns the JSON and PNG paths it wrote."""
    if kind not in KINDS:
        raise ExitlabError(f"unknown analysis {kind!r}; choose one of {', '.join(KINDS)}")
    opts = opts or Options()
    dirs = [Path(d) for d in run_dirs]
    if kind == "connectivity" and len(dirs) < 2:
        raise ExitlabError(f"connectivity compares 2 or 3 runs, got {len(dirs)}")
    check_out_dir(out_dir(dirs, out))  # before any work: --out must be a directory
    runs = [load_run(d, opts.checkpoint) for d in dirs]
    labels = _labels(runs)
    if kind == "connectivity":
        data = _connectivity(runs, labels, dirs, opts)
    else:
        results = []
        for run, label in zip(runs, labels):
            log.info("analyze %s: %s", kind, run.path)
            results.append({"label": label, "run_dir": str(run.path), "run_seed": run.seed,
                            "checkpoint": run.checkpoint.stem if run.checkpoint else None, **_one(run, kind, opts)})
        data = {"analysis": kind, "runs": results}
        groups = aggregate(kind, results, labels, [r.seed for r in runs])
        if groups:
            data["groups"] = groups
    target = out_dir(dirs, out)
    json_path = write_json(target / f"{_file_name(kind, opts, runs)}.json", data)
    return json_path, save(draw(data), json_path.with_suffix(".png"))


def redraw_files(paths: list[str | Path]) -> list[Path]:
    """Redraw the PNG next to each analysis JSON file (or training-time ``gradients.jsonl`` log)."""
    done = []
    for p in map(Path, paths):
        if p.suffix == ".jsonl":  # the training-time gradient log
            try:
                records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ExitlabError(f"{p} is not a gradient log ({e})") from None
            if not records or any(r.get("analysis") != "gradients" for r in records):
                raise ExitlabError(f"{p} is not a gradient log (gradients.jsonl from grad_log_every)")
            done.append(save(draw_gradient_log(records), p.with_suffix(".png")))
            continue
        kind = read_json(p, "analysis JSON file", "pass a <kind>.json written by exitlab analyze").get("analysis")
        if kind not in DRAW:
            raise ExitlabError(f"{p} is not an analysis JSON file (analysis: {kind!r})")
        done.append(redraw(p))
    return done
