"""DDP under torchrun with gloo on CPU: same weights as one process on the same global batch, frozen backbone in
phase 3, resume under a different world size, and clear errors on every rank."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from exitlab.runs import checkpoint as ckpt
from exitlab.runs.config import load_config
from exitlab.training.engine import train
from tests.conftest import interrupt_after, tiny_overrides

VIT = {"model.backbone": "vit", "model.backbone_kwargs": "{dim: 32, depth: 4, heads: 2, patch_size: 4}",
       "model.head": "cls", "model.exits": "[0, 1, 2]", "regime": "[1, 2, 3]", "data.batch_size": 64}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_file(tmp_path, **extra):
    cfg = load_config(None, tiny_overrides(**{**VIT, **extra}))
    path = tmp_path / "cfg.yaml"
    path.write_text("# exitlab test\n" + yaml.safe_dump(__import__("dataclasses").asdict(cfg)))
    return cfg, path


def _torchrun(nproc, path, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EXITLAB_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "exitlab", "train", str(path), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _weights(run):
    t, _ = ckpt.load_tensors(run / "model.safetensors")
    return t


def test_two_ranks_match_one_process_and_phase3_freezes_the_backbone(tmp_path):
    cfg, path = _config_file(tmp_path)
    single = train(cfg, tmp_path / "single")
    r = _torchrun(2, path, tmp_path / "ddp")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(single), _weights(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # each phase's end state also matches, and phase 3 left the backbone bit-identical
    for name in ("00-phase1-end", "01-phase2-end", "02-phase3-end"):
        sa, _ = ckpt.load_tensors(single / "checkpoints" / f"{name}.safetensors")
        sb, _ = ckpt.load_tensors(tmp_path / "ddp" / "checkpoints" / f"{name}.safetensors")
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    p2, _ = ckpt.load_tensors(tmp_path / "ddp" / "checkpoints" / "01-phase2-end.safetensors")
    bb = [k for k in b if k.startswith("backbone.")]
    assert bb and all(torch.equal(b[k], p2["model." + k]) for k in bb)
    assert __import__("json").loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    # only rank 0 wrote the log: one line per epoch
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_under_a_different_world_size(tmp_path):
    cfg, path = _config_file(tmp_path)
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part")
    interrupt_after(part, "00-phase1-end.safetensors")
    r = _torchrun(2, path, part, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(full), _weights(part)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_batch_not_divisible_by_world_size_fails_on_every_rank(tmp_path):
    _, path = _config_file(tmp_path, **{"data.batch_size": 63})
    r = _torchrun(2, path, tmp_path / "run")
    assert r.returncode != 0
    assert r.stderr.count("data.batch_size 63 is not divisible by the world size 2") == 2, r.stderr[-2000:]


@pytest.mark.parametrize("env,message", [
    ({"RANK": "0"}, "torchrun environment incomplete"),
    ({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "torchrun environment inconsistent: RANK=3"),
])
def test_broken_torchrun_environment(tmp_path, env, message):
    _, path = _config_file(tmp_path)
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "exitlab", "train", str(path), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env={**clean, **env}, timeout=120)
    assert r.returncode == 2 and message in r.stderr
