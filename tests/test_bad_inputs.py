"""The bad-input catalogue: every bad input the CLI rejects, with the exact error line it must produce.

Each case is (command line, expected last line of stderr). ``{d}`` stands for the test's working directory, which
holds two finished tiny runs (``run``: ResNet-8 with exits [0, 1]; ``run20``: ResNet-20 with exit [2]) and the
files each case needs. Every case must exit with code 2 and leave existing results untouched. The HTTP inputs that
``exitlab serve`` rejects with a 4xx JSON answer are catalogued next to the server, in ``tests/test_serve.py``
(``BAD``); DDP launch errors that need two processes are in ``tests/test_distributed.py``.
"""

import json
import shutil

import pytest
import yaml

from exitlab.cli import main
from exitlab.config import dump_config, load_config
from exitlab.train import train
from tests.conftest import tiny_overrides

T = ["train", "{d}/cfg.yaml", "--out", "{d}/new"]
CASES = {
    # ---- train: config values
    "unknown regime": (T + ["--set", "regime=jont"],
                       "error: regime: unknown regime 'jont'; choose one of: disjoint, joint, mixed, or a list of "
                       "phases such as [1, 2, 3]"),
    "unknown phase": (T + ["--set", "regime=[1, 4]"],
                      "error: regime: phase list [1, 4] must be non-empty and use only phases 1, 2 and 3"),
    "unknown backbone": (T + ["--set", "model.backbone=resnet9"],
                         "error: unknown backbone 'resnet9'; choose one of: mobilenetv2, resnet110, resnet18_cifar, "
                         "resnet20, resnet32, resnet34_cifar, resnet50_cifar, resnet56, resnet8, vgg16_bn, vit, "
                         "vit_small, vit_tiny, wrn28"),
    "unknown head": (T + ["--set", "model.head=sdnn"],
                     "error: unknown head 'sdnn'; choose one of: cls, mlp, mlp1, mlp2, mlp3, pooled, sdn"),
    "head for the wrong feature kind": (T + ["--set", "model.head=cls"],
                                        "error: head 'cls' reads a CLS token and needs a token exit (ViT); for CNNs "
                                        "use 'sdn' or 'pooled'"),
    "exit index out of range": (T + ["--set", "model.exits=[0, 5]"],
                                "error: model.exits [5] out of range: this backbone has blocks 0..2, and ICs go after "
                                "blocks 0..1 (the last block feeds the final exit)"),
    "exit indices unsorted": (T + ["--set", "model.exits=[1, 0]"],
                              "error: model.exits must be sorted and unique, got [1, 0]; e.g. [0, 1]"),
    "bad placement spec": (T + ["--set", "model.exits=every:x"],
                           "error: model.exits 'every:x': 'x' is not an integer"),
    "negative epochs": (T + ["--set", "phase2.epochs=-2"], "error: phase2.epochs must be >= 0, got -2"),
    "wrong type": (T + ["--set", "phase2.epochs=two"], "error: phase2.epochs: expected int, got 'two'"),
    "unknown key": (T + ["--set", "phase2.epoch=3"],
                    "error: phase2.epoch: unknown key; valid keys here: distill, distill_temperature, epochs, "
                    "grad_equilibrium, loss_weights, lr, momentum, optimizer, patience, schedule, weight_decay"),
    "unknown optimizer": (T + ["--set", "phase1.optimizer=adam"],
                          "error: phase1.optimizer: unknown optimizer 'adam'; choose sgd or adamw"),
    "validation share out of range": (T + ["--set", "data.val_fraction=1.5"],
                                      "error: data.val_fraction must be in [0, 1), got 1.5"),
    "unsupported amp": (T + ["--set", "amp=fp16"], "error: amp: 'fp16' is not supported; choose none or bf16"),
    "no CUDA": (T + ["--set", "device=cuda"],
                "error: device: 'cuda' requested but CUDA is not available; use device=cpu or auto"),
    "budget too small to split": (T + ["--set", "regime=[1, 2, 3]", "--set", "budget=2"],
                                  "error: budget: 2 epochs cannot be split over phases [1, 2, 3] (got [1, 1, 0]); "
                                  "raise budget or adjust phase1_share"),
    "malformed --set": (T + ["--set", "budget"], "error: --set 'budget': expected key=value, e.g. --set phase2.lr=0.1"),
    # ---- train: files
    "missing config file": (["train", "{d}/nope.yaml"],
                            "error: config file {d}/nope.yaml not found; pass a YAML file such as "
                            "configs/fashion_mnist.yaml"),
    "config is not YAML": (["train", "{d}/broken.yaml"],
                           "error: {d}/broken.yaml is not valid YAML: while parsing a flow sequence"),
    "missing dataset files": (T + ["--set", "data.name=mnist", "--set", "data.root={d}/empty", "--set",
                                   "data.download=false"],
                              "error: mnist not found (looked in {d}/empty, {d}/cache/mnist, download disabled); put "
                              "the four *-ubyte.gz files in a directory and set data.root to it"),
    "truncated dataset file": (T + ["--set", "data.name=fashion_mnist", "--set", "data.root={d}/fm", "--set",
                                    "data.download=false"],
                               "error: {d}/fm/t10k-labels-idx1-ubyte.gz is truncated or corrupt (Compressed file "
                               "ended before the end-of-stream marker was reached); delete it and reinstall or "
                               "re-download the dataset"),
    "run directory already used": (["train", "{d}/cfg.yaml", "--out", "{d}/run"],
                                   "error: {d}/run already holds a run; pass --resume to continue it, or choose "
                                   "another --out"),
    "resume with another config": (["train", "{d}/cfg.yaml", "--out", "{d}/run", "--resume", "--set",
                                     "phase2.lr=0.3"],
                                   "error: {d}/run holds a run with a different config; resume it with its own config "
                                   "({d}/run/config.yaml), or choose another --out"),
    "corrupt phase-1 checkpoint": (T + ["--set", "regime=mixed", "--phase1-from", "{d}/garbage.safetensors"],
                                   "error: checkpoint {d}/garbage.safetensors is truncated or corrupt (Error while "
                                   "deserializing header: header too large); delete it to fall back to an earlier "
                                   "one"),
    "phase-1 checkpoint of another run": (T + ["--set", "regime=mixed", "--phase1-from",
                                               "{d}/run/checkpoints/00-phase2-end.safetensors"],
                                          "error: {d}/run/checkpoints/00-phase2-end.safetensors is not a finished "
                                          "phase 1 with this run's model, data, seed and phase-1 settings; train phase "
                                          "1 here instead"),
    # ---- eval
    "eval: no such run": (["eval", "{d}/nope"],
                          "error: run directory {d}/nope does not exist; pass a directory written by `exitlab train`"),
    "eval: run without a model": (["eval", "{d}/empty"],
                                  "error: {d}/empty holds no trained model (model.safetensors / model.json missing); "
                                  "finish the run with `exitlab train CONFIG --out {d}/empty --resume`, or point at a "
                                  "finished run"),
    "eval: unknown policy": (["eval", "{d}/run", "--policy", "foo"],
                             "error: unknown policy 'foo'; choose one of: confidence, entropy, patience, ztw"),
    "eval: unknown split": (["eval", "{d}/run", "--split", "dev"],
                            "error: unknown split 'dev'; choose one of: train, val, test"),
    "eval: threshold out of range": (["eval", "{d}/run", "--thresholds", "2"],
                                     "error: policy 'confidence': threshold 2 is outside its range [0, 1] for 3 exits "
                                     "and 7 classes"),
    # ---- analyze
    "analyze: different architectures": (["analyze", "connectivity", "{d}/run", "{d}/run20"],
                                         "error: {d}/run and {d}/run20 have different architectures (backbone: "
                                         "'resnet8' vs 'resnet20', exits: [0, 1] vs [2]); connectivity needs models "
                                         "of one architecture, e.g. the joint, disjoint and mixed runs of one "
                                         "comparison"),
    "analyze: no such block": (["analyze", "rank", "{d}/run", "--blocks", "7"],
                               "error: block 7 does not exist: this backbone has blocks 0..2; pass --blocks with "
                               "indices in that range"),
    "analyze: too few samples for rank": (["analyze", "rank", "{d}/run", "--samples", "1"],
                                          "error: a rank estimate needs at least 10 samples, got 1; raise --samples"),
    "analyze: too few samples for MI": (["analyze", "mi", "{d}/run", "--samples", "3"],
                                        "error: mutual information estimates need at least 20 samples, got 3; raise "
                                        "--samples"),
    "analyze: connectivity of one run": (["analyze", "connectivity", "{d}/run"],
                                         "error: connectivity compares 2 or 3 runs, got 1"),
    # ---- compare and report
    "compare: unknown regime": (["compare", "{d}/cmp-regime.yaml", "--out", "{d}/cmp"],
                                "error: regimes: unknown regime 'mixd'; choose from disjoint, joint, mixed or give a "
                                "phase list such as [1, 2, 3]"),
    "compare: unknown variant": (["compare", "{d}/cmp-variant.yaml", "--out", "{d}/cmp"],
                                 "error: variants: unknown variant 'sdn-wieghts'; choose from distill, exits-every2, "
                                 "grad-equilibrium, head-mlp2, head-pooled, head-sdn, sdn-weights, uniform-weights or "
                                 "define one as {name: {dotted.key: value}}"),
    "compare: empty seed list": (["compare", "{d}/cmp-seeds.yaml", "--out", "{d}/cmp"],
                                 "error: seeds: the seed list is empty; give at least one seed, e.g. seeds: [0, 1, 2]"),
    "compare: output holds another comparison": (["compare", "{d}/cmp-ok.yaml", "--out", "{d}/other-cmp"],
                                                 "error: {d}/other-cmp holds a comparison with a different config "
                                                 "({d}/other-cmp/compare.yaml); use another --out, or rerun with that "
                                                 "config to resume it"),
    "report: no results": (["report", "{d}/empty"],
                           "error: {d}/empty holds no comparison results (summary.json missing); run `exitlab compare "
                           "CONFIG --out {d}/empty` first"),
    # ---- export and serve
    "export: no model": (["export", "{d}/empty"],
                         "error: {d}/empty holds no model (model.json missing); point at a finished run directory"),
    "serve: no export": (["serve", "{d}/nope"],
                         "error: export directory {d}/nope does not exist; create one with `exitlab export RUN_DIR`"),
    "serve: truncated manifest": (["serve", "{d}/badexp"],
                                  "error: {d}/badexp/manifest.json is not valid JSON (Expecting property name enclosed "
                                  "in double quotes: line 2 column 1 (char 2)); the export is truncated or corrupt, "
                                  "re-export"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, fashion_dir):
    d = tmp_path_factory.mktemp("bad")
    train(load_config(None, tiny_overrides(regime="joint")), d / "run")
    train(load_config(None, tiny_overrides(regime="joint", **{"model.backbone": "resnet20", "model.exits": "[2]"})),
          d / "run20")
    (d / "cfg.yaml").write_text("# exitlab train cfg.yaml\n" + dump_config(load_config(None, tiny_overrides(
        regime="joint"))))
    (d / "broken.yaml").write_text("model: [unclosed")
    (d / "empty").mkdir()
    (d / "garbage.safetensors").write_bytes(b"\xff" * 64)
    shutil.copytree(fashion_dir, d / "fm")
    f = d / "fm" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-100])
    (d / "badexp").mkdir()
    (d / "badexp" / "manifest.json").write_text("{\n")
    base = {"base": {"data": {"name": "synthetic"}}, "regimes": ["joint"], "seeds": [0]}
    for name, change in (("regime", {"regimes": ["joint", "mixd"]}), ("variant", {"variants": ["sdn-wieghts"]}),
                         ("seeds", {"seeds": []}), ("ok", {})):
        (d / f"cmp-{name}.yaml").write_text(yaml.safe_dump({**base, **change}))
    (d / "other-cmp").mkdir()
    (d / "other-cmp" / "compare.yaml").write_text(yaml.safe_dump({**base, "seeds": [5]}))
    return d


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_exact_error(world, case, capsys, monkeypatch):
    monkeypatch.setenv("EXITLAB_DATA", str(world / "cache"))
    argv, expected = CASES[case]
    argv = [a.replace("{d}", str(world)) for a in argv]
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*.safetensors")}
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1] == expected.replace("{d}", str(world)), err[-1:]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing overwritten
    assert not (world / "new" / "checkpoints").exists()


def test_catalogue_size():
    """The closing note reports this count; keep it honest."""
    assert len(CASES) >= 40
    assert json.dumps(sorted(CASES))  # names are unique by construction of the dict
