"""The GPU benchmark (benchmarks/gpu.sh -> bench_gpu.py) runs end to end on CPU in its tiny mode, and every row it
measures comes back with finite, positive numbers (a smoke test of the script, not of any speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = ("img_per_s", "ms_per_step")
SECTION_KEYS = {"early_exit": ("speedup_flops", "speedup_segment_ideal", "speedup_measured", "measured_over_ideal"),
                "batch1": ("bare_ms", "all_exits_ms", "no_exit_ms", "no_exit_over_bare")}


def _run(tmp_path: Path, *extra: str) -> dict:
    env = {**os.environ, "EXITLAB_BENCH_TINY": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("EXITLAB_REFERENCE", None)
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path), *extra]  # EXITLAB_BENCH_TINY: --tiny on CPU
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "gpu.md").read_text().startswith("# GPU benchmark (CPU)")
    return json.loads((tmp_path / "gpu.json").read_text())


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check(result: dict, compiled: bool) -> None:
    rows = result["rows"]
    assert not [r for r in rows if "error" in r]
    train = [r for r in rows if r["section"] == "train"]
    # 3 models x 2 variants x 2 batches x 2 dtypes x 2 modes
    assert len(train) == 48
    assert {(r["role"], r["variant"], r["batch"], r["dtype"], r["mode"]) for r in train} == {
        (m, v, b, d, c) for m in ("resnet18", "resnet34", "vit_t") for v in ("backbone", "joint") for b in (4, 8)
        for d in ("fp32", "bf16") for c in ("eager", "compiled")}
    for r in train:
        if r["mode"] == "compiled" and not compiled:
            assert r["skipped"] == "--skip-compiled"
        else:
            assert all(_positive(r[k]) for k in TRAIN_KEYS), r
    for section, keys in SECTION_KEYS.items():
        got = [r for r in rows if r["section"] == section]
        assert [r["head"] for r in got] == ["sdn", "pooled"]
        assert all(_positive(r[k]) for r in got for k in keys), got
    assert [r for r in rows if r["section"] == "reference"][0]["skipped"].startswith("EXITLAB_REFERENCE not set")


def test_gpu_script_tiny_mode_measures_every_eager_row_on_cpu(tmp_path):
    _check(_run(tmp_path, "--skip-compiled"), compiled=False)


@pytest.mark.slow
def test_gpu_script_tiny_mode_measures_every_row_on_cpu_compiled_too(tmp_path):
    _check(_run(tmp_path), compiled=True)
