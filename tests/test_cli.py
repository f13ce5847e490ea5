"""The CLI turns bad input into one clear error line and a non-zero exit, and never touches existing results."""

import subprocess
import sys

import pytest

from exitlab.cli import main
from tests.conftest import tiny_overrides


def _train(tmp_path, *sets, out="run", resume=False):
    argv = ["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / out)]
    for s in tiny_overrides(**dict(x.split("=", 1) for x in sets)):
        argv += ["--set", s]
    return main(argv + (["--resume"] if resume else []))


@pytest.fixture
def cfg_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text("# exitlab train cfg.yaml\nregime: joint\n")
    return tmp_path / "cfg.yaml"


@pytest.mark.parametrize("override,message", [
    ("regime=jont", "error: regime: unknown regime 'jont'; choose one of: disjoint, joint, layerskip, mixed"),
    ("regime=[1, 5]", "error: regime: phase list [1, 5] must be non-empty and use only phases 1, 2 and 3"),
    ("model.backbone=resnet9", "error: unknown backbone 'resnet9'; choose one of: mobilenetv2, msdnet, resnet110"),
    ("model.head=sdnn", "error: unknown head 'sdnn'; choose one of: cls, gpf, lm, mlp, mlp1, mlp2, mlp3, msdnet, "
                        "pooled, sdn, shared, text"),
    ("model.exits=[0, 5]", "error: model.exits [5] out of range: this backbone has blocks 0..2"),
    ("model.exits=[1, 0]", "error: model.exits must be sorted and unique, got [1, 0]; e.g. [0, 1]"),
    ("phase2.epochs=-2", "error: phase2.epochs must be >= 0, got -2"),
    ("data.name=cifar10", "error: cifar10 not found"),
])
def test_bad_input_is_one_clear_line(tmp_path, cfg_file, capsys, override, message, monkeypatch):
    monkeypatch.setenv("EXITLAB_DATA", str(tmp_path / "cache"))
    overrides = [override] + (["data.download=false", f"data.root={tmp_path}"] if "cifar" in override else [])
    assert _train(tmp_path, *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupt_dataset_file(tmp_path, cfg_file, capsys, fashion_dir):
    import shutil

    d = tmp_path / "fm"
    shutil.copytree(fashion_dir, d)
    f = d / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-100])
    assert _train(tmp_path, "data.name=fashion_mnist", f"data.root={d}", "data.download=false") == 2
    assert "train-labels-idx1-ubyte.gz is truncated or corrupt" in capsys.readouterr().err


def test_bad_input_never_overwrites_an_existing_run(tmp_path, cfg_file, capsys):
    assert _train(tmp_path) == 0
    ckpts = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert _train(tmp_path, "phase2.lr=0.9") == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert _train(tmp_path, "model.backbone=nope", resume=True) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()} == ckpts


def test_corrupt_checkpoints_are_named_and_kept(tmp_path, cfg_file, capsys, caplog):
    assert _train(tmp_path) == 0
    (tmp_path / "run" / "run.json").write_text('{"status": "running"}')
    for p in (tmp_path / "run" / "checkpoints").iterdir():
        p.write_bytes(p.read_bytes()[: 200])
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert _train(tmp_path, resume=True) == 2
    err = capsys.readouterr().err
    assert "every checkpoint in" in err and "is corrupt" in err
    assert "00-phase2-end.safetensors is truncated or corrupt" in caplog.text
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()} == before


def test_python_dash_m_and_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "exitlab", "train", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: config file {tmp_path / 'missing.yaml'} not found; pass a YAML "
                                             "file such as configs/fashion_mnist.yaml"]
    r = subprocess.run([sys.executable, "-m", "exitlab", "ls", "regimes"], capture_output=True, text=True)
    assert r.returncode == 0 and "mixed = phases [1, 2]" in r.stdout
