"""``exitlab analyze``: run one analysis on finished run directories and write ``<kind>.json`` plus ``<kind>.png``.

With one run the files go to ``RUN_DIR/analysis/``; with several, to ``analysis/`` in the runs' common parent
directory (next to the runs); ``--out`` overrides both. The PNG is drawn from the JSON alone
(``exitlab analyze plot FILE.json`` redraws it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ExitlabError
from ..phases import loss_weights
from ..rundir import check_out_dir, read_json
from .common import Run, check_blocks, fixed_batches, load_run, split_loader, write_json
from .connectivity import check_same_architecture, connectivity
from .gradients import gradient_contributions
from .landscape import landscape_1d, landscape_2d
from .mi import mi_profile
from .plots import DRAW, draw, draw_gradient_log, redraw, save
from .rank import rank_profile

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
    tau: float = 1e-3
    max_features: int = 8192
    pool: int = 0
    bins: int = 30
    noise_ratio: float = 0.1
    noise_var: float | None = None
    probe: bool = True
    mode: str = "train"
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


def _batches(run: Run, kind: str, opts: Options):
    split = opts.split or DEFAULT_SPLIT[kind]
    n = opts.samples or DEFAULT_SAMPLES[kind]
    return fixed_batches(split_loader(run, split), n, opts.batch_size, opts.seed, what=f"analyze {kind}")


def _bn_batches(run: Run, opts: Options):
    return fixed_batches(run.data.train, opts.bn_samples, opts.batch_size, opts.seed + 1,
                         what="BatchNorm re-estimation (--bn-samples)")


def _joint_weights(run: Run) -> torch.Tensor:
    """The phase-2 (joint) loss weights of the run's config over all exits: the objective analyses report."""
    return loss_weights(run.cfg.phase2.loss_weights, run.model.num_exits, "phase2.loss_weights").double()


def _fast_layout(run: Run, batches):
    """channels_last for convolutional models: the same numbers, 1.5-2x faster on CPU."""
    run.model.to(memory_format=torch.channels_last)
    return [(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x, y) for x, y in batches]


def _one(run: Run, kind: str, opts: Options) -> dict:
    model = run.model
    check_blocks(model, opts.blocks)  # before any data work: a bad index fails at once
    batches = _batches(run, kind, opts)
    if kind == "gradients":
        return gradient_contributions(model, batches, _joint_weights(run), mode=opts.mode)
    if kind == "rank":
        return rank_profile(model, batches, blocks=opts.blocks, tau=opts.tau, max_features=opts.max_features,
                            seed=opts.seed, pool=opts.pool)
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
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):
        labels = [r.path.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [str(r.path) for r in runs]
    return labels


def out_dir(run_dirs: list[Path], out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if len(run_dirs) == 1:
        return run_dirs[0] / "analysis"
    return Path(os.path.commonpath([str(p.resolve()) for p in run_dirs])) / "analysis"


def _connectivity(runs: list[Run], labels: list[str], opts: Options) -> dict:
    check_same_architecture([r.model for r in runs], [str(r.path) for r in runs])
    first = runs[0]
    for r in runs[1:]:
        if r.cfg.data.name != first.cfg.data.name or r.data.classes != first.data.classes:
            raise ExitlabError(f"{first.path} and {r.path} were trained on different data "
                               f"({first.cfg.data.name} vs {r.cfg.data.name}); connectivity needs one data set")
    batches = _fast_layout(first, _batches(first, "connectivity", opts))
    bn_batches = _fast_layout(first, _bn_batches(first, opts))
    for r in runs[1:]:
        r.model.to(memory_format=torch.channels_last)
    return connectivity([r.model for r in runs], labels, batches, bn_batches, points=opts.points,
                        plane_steps=opts.plane_steps, weights=_joint_weights(first), bezier=opts.bezier,
                        bezier_steps=opts.bezier_steps)


def analyze(kind: str, run_dirs: list[str | Path], opts: Options | None = None, out: str | Path | None = None
            ) -> tuple[Path, Path]:
    """Run analysis ``kind`` on ``run_dirs``; returns the JSON and PNG paths it wrote."""
    if kind not in KINDS:
        raise ExitlabError(f"unknown analysis {kind!r}; choose one of {', '.join(KINDS)}")
    opts = opts or Options()
    dirs = [Path(d) for d in run_dirs]
    if kind == "connectivity" and len(dirs) not in (2, 3):
        raise ExitlabError(f"connectivity compares 2 or 3 runs, got {len(dirs)}")
    check_out_dir(out_dir(dirs, out))  # before any work: --out must be a directory
    runs = [load_run(d) for d in dirs]
    labels = _labels(runs)
    if kind == "connectivity":
        data = {**_connectivity(runs, labels, opts), "run_dirs": [str(d) for d in dirs]}
    else:
        results = []
        for run, label in zip(runs, labels):
            log.info("analyze %s: %s", kind, run.path)
            results.append({"label": label, "run_dir": str(run.path), **_one(run, kind, opts)})
        data = {"analysis": kind, "runs": results}
    name = kind
    if kind == "landscape":
        name = f"landscape-{opts.params}" + ("-1d" if opts.dims == 1 else "")
    elif kind == "rank" and opts.pool:
        name = f"rank-pool{opts.pool}"
    target = out_dir(dirs, out)
    json_path = write_json(target / f"{name}.json", data)
    return json_path, save(draw(data), target / f"{name}.png")


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
