"""The demo's wiring, on tiny synthetic data instead of Fashion-MNIST (the real demo takes minutes)."""

import json

import pytest

import exitlab.recipes.demo as demo
from exitlab.errors import ExitlabError


def test_demo_wiring_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO", {
        "model": {"backbone": "resnet8", "exits": [0, 1]},
        "data": {"name": "synthetic", "synthetic": {"size": 16, "n_train": 560, "n_test": 140}, "batch_size": 64},
        "device": "cpu", "threads": 1, "progress": False})
    lines = []
    assert demo.run_demo(tmp_path / "d", budget=2, workers=2, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "seed0/disjoint: seed0/phase1 + phase 3 x 1 epochs" in text
    assert "seed0/mixed: seed0/phase1 + phase 2 x 1 epochs" in text
    table = text[text.index("exit  "):].splitlines()
    assert table[0].split() == ["exit", "FLOPs", "joint", "disjoint", "mixed"]
    assert [r.split()[:2] for r in table[1:4]] == [["IC", "0"], ["IC", "1"], ["final", "100%"]]
    saved = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert set(saved["test_acc"]) == {"joint", "disjoint", "mixed"} and len(saved["test_acc"]["mixed"]) == 3
    assert saved["flops_fraction"][0] < saved["flops_fraction"][1] < saved["flops_fraction"][2]
    # a second call without --resume refuses to touch the finished runs
    with pytest.raises(ExitlabError, match="is not empty; pass --resume"):
        demo.run_demo(tmp_path / "d", budget=2, echo=lines.append)
