"""save_pretrained / load: bit-identical outputs in a fresh process, metadata kept, and no pickle on load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import exitlab
from exitlab.errors import CheckpointError
from exitlab.evaluation.policies import make_policy, policy_from_dict
from exitlab.models import MultiExitModel, build_model
from exitlab.runs.checkpoint import save_pretrained

CLASSES = ["a", "b", "c", "d", "e", "f", "g"]  # 7: an odd class count shows shape bugs

# Runs in a fresh interpreter: any unpickling (pickle.find_class audit event, pickle.load*, torch.load) aborts it.
_CHILD = r"""
import sys, pickle
import torch
from safetensors.torch import load_file, save_file
import exitlab  # imported first: only loading must not unpickle
def _no_pickle(event, args):
    if event == "pickle.find_class":
        raise RuntimeError(f"unpickled {args}")
sys.addaudithook(_no_pickle)
def _refuse(*a, **k):
    raise RuntimeError("pickle used while loading")
pickle.load = pickle.loads = pickle.Unpickler = _refuse
torch.load = _refuse
torch.set_num_threads(1)
model = exitlab.load(sys.argv[1]).eval()
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    outs = model(x)
save_file({f"exit{k}": o.contiguous() for k, o in enumerate(outs)}, sys.argv[3])
"""


def _model(head_kwargs: dict | None = None) -> MultiExitModel:
    torch.manual_seed(0)
    m = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1], head_kwargs=head_kwargs,
                    backbone_kwargs={"width": 4})
    m.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from their defaults
        for _ in range(3):
            m(torch.randn(8, 1, 16, 16) * 2 + 0.5)
    return m.eval()


def test_round_trip_in_fresh_process_is_bit_identical(tmp_path):
    model = _model({"cascade": True})
    for h in model.heads[1:]:  # the first IC has nothing to cascade from
        torch.nn.init.normal_(h.cascade.weight, std=0.3)  # cascade weights start at 0: make them matter
    policy = make_policy("confidence", threshold=0.625)
    save_pretrained(model, tmp_path / "m", classes=CLASSES, policy=policy, normalize={"mean": [0.3], "std": [0.2]})
    x = torch.randn(5, 1, 16, 16)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    with torch.no_grad():
        want = model(x)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m"), str(tmp_path / "x.safetensors"),
                    str(tmp_path / "out.safetensors")], check=True, env=env, timeout=120)
    got = load_file(str(tmp_path / "out.safetensors"))
    assert len(got) == model.num_exits == 3
    for k, w in enumerate(want):
        assert torch.equal(got[f"exit{k}"], w), f"exit {k} differs after reloading in a fresh process"


def test_metadata_round_trip(tmp_path):
    model = _model()
    policy = make_policy("patience", threshold=2)
    save_pretrained(model, tmp_path, classes=CLASSES, policy=policy, extra={"dataset": "synthetic"})
    loaded = exitlab.load(tmp_path)
    info = loaded.info
    assert info["classes"] == CLASSES and info["dataset"] == "synthetic"
    assert info["spec"] == model.spec.to_json() and loaded.spec == model.spec and loaded.exits == model.exits
    back = policy_from_dict(info["policy"])
    assert type(back) is type(policy) and back.threshold == 2
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_policy_with_tensor_params_survives_json(tmp_path):
    model = _model()
    E, C = model.num_exits, 7
    ztw = make_policy("ztw", weight=torch.rand(E - 1, E - 1), bias=torch.randn(E - 1, C), threshold=0.5)
    save_pretrained(model, tmp_path, policy=ztw)
    back = policy_from_dict(json.loads((tmp_path / "model.json").read_text())["policy"])
    assert torch.equal(back.weight, ztw.weight) and torch.equal(back.bias, ztw.bias)


def test_pickle_file_is_rejected_not_loaded(tmp_path, monkeypatch):
    model = _model()
    save_pretrained(model, tmp_path)
    torch.save(model.state_dict(), tmp_path / "model.safetensors")  # a pickle where safetensors should be
    called = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: called.append(a))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        exitlab.load(tmp_path)
    assert not called


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="plain JSON"):
        save_pretrained(_model(), tmp_path, extra={"bad": object()})


def test_model_json_without_spec_is_a_clear_error(tmp_path):
    save_pretrained(_model(), tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"classes": CLASSES}))
    with pytest.raises(CheckpointError, match="no model spec"):
        exitlab.load(tmp_path)
