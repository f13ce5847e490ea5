"""The streamed image folder and WebDataset shards under torchrun (two gloo processes): equal step counts, no
sample twice in an epoch, the one-process global batches, and an exact resume. tests/data/ddp_data_script.py builds
the loaders on each rank with ``build_run_data(..., shard=(rank, world))`` and saves what the rank saw."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exitlab.data import build_run_data
from tests.data.ddp_data_script import record
from tests.data.helpers import data_config, make_folder, make_shards

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, epochs: str, data: dict) -> None:
    out.mkdir(parents=True)
    path = f"{ROOT / 'src'}{os.pathsep}{ROOT}"  # this checkout's exitlab (not the installed one), and its tests
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(ROOT / "tests" / "data" / "ddp_data_script.py"), "--out", str(out),
           "--epochs", epochs, "--data", json.dumps(data)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


HAS_WDS = importlib.util.find_spec("webdataset") is not None  # writes the test shards
KINDS = ["folder", pytest.param("wds", marks=pytest.mark.skipif(not HAS_WDS, reason="needs webdataset"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both data sets run for epochs 0-2 on two ranks, then epoch 2 again in fresh processes (a resume)."""
    tmp = tmp_path_factory.mktemp("ddp")
    make_folder(tmp / "folder", n_train=12, n_val=2, sizes=(20, 28))
    common = dict(img_size=12, batch_size=8, eval_batch_size=8, workers=2, augment="imagenet")
    data = {"folder": dict(name="imagefolder", root=str(tmp / "folder"), stream=True, **common)}
    if HAS_WDS:
        make_shards(tmp / "wds" / "train", [9, 14, 6, 11])
        make_shards(tmp / "wds" / "val", [5], start=100)
        data["wds"] = dict(name="webdataset", root=str(tmp / "wds"), shuffle_buffer=10, **common)
    _torchrun(tmp / "full", "0,1,2", data)
    _torchrun(tmp / "resumed", "2", data)
    return tmp, data


def _load(d: Path, kind: str) -> list[dict]:
    return [torch.load(d / f"{kind}-rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_get_equal_steps_disjoint_samples_and_the_one_process_batches(runs, kind):
    tmp, data = runs
    ranks = _load(tmp / "full", kind)
    one = build_run_data(data_config(**{**data[kind], "workers": 0}), 0, torch.device("cpu")).train
    single = record(one, [0, 1, 2])
    for e in (0, 1, 2):
        steps = [r["epochs"][e]["steps"] for r in ranks]
        assert steps[0] == steps[1] == single[e]["steps"] == len(one) > 0
        assert ranks[0]["steps_all_ranks"] == ranks[1]["steps_all_ranks"]
        ids = [sum(r["epochs"][e]["ids"], []) for r in ranks]
        assert len(set(ids[0]) | set(ids[1])) == len(ids[0]) + len(ids[1]) == len(one) * 8  # no sample twice
        for b in range(len(one)):
            assert ranks[0]["epochs"][e]["ids"][b] + ranks[1]["epochs"][e]["ids"][b] == single[e]["ids"][b]
            x = torch.cat([r["epochs"][e]["x"][b] for r in ranks])
            assert torch.equal(x, single[e]["x"][b]), (kind, e, b)  # same pixels: decode and augmentation agree
    assert single[0]["ids"] != single[1]["ids"]  # epochs differ


@pytest.mark.parametrize("kind", KINDS)
def test_the_epoch_after_a_resume_sees_exactly_the_uninterrupted_batches(runs, kind):
    tmp, _ = runs
    full, resumed = _load(tmp / "full", kind), _load(tmp / "resumed", kind)
    for r in range(2):
        a, b = full[r]["epochs"][2], resumed[r]["epochs"][2]
        assert a["ids"] == b["ids"] and a["steps"] == b["steps"]
        assert all(torch.equal(x, u) for x, u in zip(a["x"], b["x"], strict=True))
        assert all(torch.equal(y, v) for y, v in zip(a["y"], b["y"], strict=True))
