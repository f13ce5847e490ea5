"""``exitlab demo --text --pretrained``: the pretrained MiniLM encoder (``scripts/install-weights text``) with ICs after
layers 1 and 3, on a subset of the Debian-descriptions task (a package's one-line description -> its section, built
from this machine's package index), under the regimes as they read on a pretrained backbone, one after another on
one thread:

- joint (from pretrained): phase 2 from the pretrained weights;
- disjoint (fine-tuned backbone): phase 1 fine-tunes the encoder, phase 3 trains the ICs on it, frozen;
- mixed (fine-tuned, then all): the same phase 1 (shared with disjoint), then phase 2;
- disjoint (frozen pretrained): ``phase1.epochs: 0``, heads and the new classifier on the untouched encoder.

Each run is an ordinary run directory (``exitlab eval`` works on it); the table prints the data's fingerprint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..errors import ExitlabError
from ..evaluation.evaluate import evaluate_run
from ..runs.config import RunConfig, load_config
from ..runs.files import check_out_dir
from ..runs.rundir import RunDir
from .train import train

FULL = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01, "warmup_epochs": 0.1,
        "finetune": {"head_lr": 2e-3}}  # the new heads learn faster than the pretrained encoder
HEADS = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01}
RUNS = {  # name -> (regime, overrides); disjoint first: mixed reuses its phase 1
    "joint": ("joint", {"phase2": {**FULL, "epochs": 2}}),
    "disjoint": ("disjoint", {"phase1": {**FULL, "epochs": 1}, "phase3": {**HEADS, "epochs": 1}}),
    "mixed": ("mixed", {"phase1": {**FULL, "epochs": 1}, "phase2": {**FULL, "epochs": 1}}),
    "disjoint-frozen": ("disjoint", {"phase1": {"epochs": 0}, "phase3": {**HEADS, "epochs": 2}}),
}


def demo_config(sections: int, per_section: int, max_length: int, seed: int) -> list[str]:
    """The ``--set`` overrides every run of the demo shares."""
    return ["model.backbone=hf:minilm", "model.pretrained=true", "model.exits=[1, 3]", "model.head_kwargs={pool: mean}",
            "data.name=debian_sections", "data.text.tokenizer=hf:minilm", f"data.text.max_length={max_length}",
            "data.text.length_buckets=8",
            f"data.debian={{sections: {sections}, max_per_section: {per_section}, test_fraction: 0.2}}",
            "data.batch_size=32", "data.eval_batch_size=128", "threads=1", "progress=false", "device=cpu",
            f"seed={seed}"]


def _config(name: str, base: list[str]) -> RunConfig:
    regime, over = RUNS[name]
    sets = [f"regime={regime}"] + [f"{phase}={json.dumps(o)}" for phase, o in over.items()]
    return load_config(None, base + sets)


def run_pretrained_demo(out: Path, *, sections: int = 6, per_section: int = 120, max_length: int = 32, seed: int = 0,
                        echo=print) -> int:
    """Train the four runs one after another on 1 thread, then print per-exit test accuracy of each."""
    check_out_dir(out)
    if out.exists() and any(out.iterdir()):
        raise ExitlabError(f"{out} is not empty; choose another --out")
    torch.set_num_threads(1)
    base = demo_config(sections, per_section, max_length, seed)
    configs = {name: _config(name, base) for name in RUNS}  # every option checked before anything trains
    echo(f"exitlab demo --text --pretrained: MiniLM (all-MiniLM-L6-v2, pretrained) with ICs after layers 1 and 3 on "
         f"the Debian-descriptions task, {sections} largest sections, up to {per_section} packages each, "
         f"{max_length} tokens; 1 thread; runs in {out}")
    t0, dirs = time.perf_counter(), {}
    for name, cfg in configs.items():
        shared = dirs["disjoint"] / RunDir.CHECKPOINTS / "00-phase1-end.safetensors" if name == "mixed" else None
        dirs[name] = train(cfg, out / name, phase1_from=shared)
        echo(f"  {name}: done ({time.perf_counter() - t0:.0f} s so far)")
    results = {name: evaluate_run(d) for name, d in dirs.items()}
    seconds = time.perf_counter() - t0
    summary = {name: {"regime": r.get("regime_title"), "test_acc": [e["accuracy"] for e in r["exits"]]}
               for name, r in results.items()}
    fingerprint = next(iter(results.values())).get("data_fingerprint", "")
    (out / "demo.json").write_text(json.dumps({"seconds": seconds, "data_sha256": fingerprint, "runs": summary},
                                              indent=2))
    echo(format_table(summary, seconds, fingerprint, next(iter(results.values()))["samples"]))
    return 0


def format_table(summary: dict, seconds: float, fingerprint: str, samples: int) -> str:
    """Per-exit test accuracy of every run, the regime named as on a pretrained backbone."""
    rows = [f"{'regime':<31}{'exit 0 (L1)':>12}{'exit 1 (L3)':>12}{'final (L5)':>12}"]
    for r in summary.values():
        rows.append(f"{r['regime']:<31}" + "".join(f"{100 * a:12.2f}" for a in r["test_acc"]))
    return "\n".join([f"test accuracy (%) per exit, {samples} test descriptions; data sha256 {fingerprint[:16]}...",
                      *rows, f"{seconds:.0f} s in all"])
