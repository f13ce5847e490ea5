"""``exitlab analyze``: every analysis writes JSON + PNG, figures redraw from the JSON alone, seeds are aggregated,
seed baselines are found, checkpoints can be analysed, bad input is refused."""

import json
import shutil

import pytest
import torch

from exitlab.analysis.analyze import Options, analyze
from exitlab.analysis.common import load_run
from exitlab.cli import main
from exitlab.errors import ExitlabError
from exitlab.models import build_model
from exitlab.runs.checkpoint import save_pretrained, save_tensors
from exitlab.runs.config import dump_config, load_config

SETTINGS = ["data.name=synthetic", "data.synthetic={size: 16, n_train: 400, channels: 1}", "model.backbone=resnet8",
            "model.exits=[0,1]", "device=cpu", "threads=1"]


def _fake_run(path, regime, seed, exits=(0, 1)):
    """A run directory with an untrained model: enough for the analyses' mechanics, and instant to make."""
    cfg = load_config(None, [*SETTINGS, f"regime={regime}", f"seed={seed}"])
    torch.manual_seed(seed)
    model = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=list(exits))
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(dump_config(cfg))
    save_pretrained(model, path, extra={"regime": regime})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [_fake_run(root / name, name, seed) for seed, name in enumerate(["joint", "mixed", "disjoint"])]


SLOW = pytest.mark.slow  # the probe fits and the 2-D landscape figure take 5-15 s on this shared CPU


@pytest.mark.parametrize("kind, extra", [
    ("gradients", ["--samples", "32"]),
    ("rank", ["--split", "train", "--samples", "64", "--max-features", "300"]),
    ("mi", ["--split", "train", "--samples", "300", "--max-features", "300", "--no-probe"]),
    pytest.param("mi", ["--split", "train", "--samples", "300", "--max-features", "300"], marks=SLOW),
    pytest.param("landscape", ["--samples", "64", "--steps", "3"], marks=SLOW),
    ("landscape", ["--samples", "64", "--steps", "3", "--dims", "1"]),
])
def test_each_analysis_writes_json_and_a_png_that_redraws_from_the_json(runs, kind, extra, tmp_path):
    out = tmp_path / "out"
    assert main(["analyze", kind, str(runs[0]), str(runs[1]), "--out", str(out), *extra]) == 0
    name = {"landscape": "landscape-all" + ("-1d" if "--dims" in extra else "")}.get(kind, kind)
    data = json.loads((out / f"{name}.json").read_text())
    assert data["analysis"] == kind and [r["label"] for r in data["runs"]] == ["joint", "mixed"]
    assert (out / f"{name}.png").stat().st_size > 10_000
    alone = tmp_path / "alone"  # the JSON without its runs is enough to draw the figure again
    alone.mkdir()
    shutil.copy(out / f"{name}.json", alone)
    assert main(["analyze", "plot", str(alone / f"{name}.json")]) == 0
    assert (alone / f"{name}.png").stat().st_size > 10_000


def test_connectivity_of_three_runs_goes_next_to_the_runs(runs):
    assert main(["analyze", "connectivity", *map(str, runs), "--samples", "64", "--bn-samples", "64",
                 "--points", "3", "--plane-steps", "2"]) == 0
    data = json.loads((runs[0].parent / "analysis" / "connectivity.json").read_text())
    assert len(data["paths"]) == 3 and data["regimes"] == ["joint", "mixed", "disjoint"]
    assert data["runs"] == ["joint (seed 0)", "mixed (seed 1)", "disjoint (seed 2)"] and data["baseline_dirs"] == []
    assert (runs[0].parent / "analysis" / "connectivity.png").is_file()


def test_single_run_output_goes_into_the_run(runs):
    assert main(["analyze", "rank", str(runs[2]), "--split", "train", "--samples", "20", "--blocks", "0,2"]) == 0
    data = json.loads((runs[2] / "analysis" / "rank.json").read_text())
    assert data["runs"][0]["blocks"] == [0, 2]


def test_bad_input_gives_clear_errors(runs, tmp_path, capsys):
    other = _fake_run(tmp_path / "other", "joint", 5, exits=(1,))
    assert main(["analyze", "connectivity", str(runs[0]), str(other), "--samples", "16"]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main(["analyze", "rank", str(runs[0]), "--blocks", "0,9", "--out", str(tmp_path / "x")]) == 2
    assert "block 9 does not exist: this backbone has blocks 0..2" in capsys.readouterr().err
    assert main(["analyze", "rank", str(runs[0]), "--samples", "5", "--out", str(tmp_path / "x")]) == 2
    assert "at least 10 samples" in capsys.readouterr().err
    assert main(["analyze", "mi", str(runs[0]), "--samples", "100", "--out", str(tmp_path / "x")]) == 2
    assert "too few samples for the plug-in MI" in capsys.readouterr().err
    assert main(["analyze", "rank", str(runs[0]), "--samples", "5000", "--out", str(tmp_path / "x")]) == 2
    assert "split holds only" in capsys.readouterr().err
    assert main(["analyze", "connectivity", str(runs[0])]) == 2
    assert "2 or 3 runs" in capsys.readouterr().err
    assert main(["analyze", "plot", str(runs[0] / "config.yaml")]) == 2
    assert "not a valid analysis JSON file" in capsys.readouterr().err


def test_training_gradient_log_is_drawn(tmp_path):
    from exitlab.analysis.gradients import gradient_contributions

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1])
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 7, (8,)))]
    log = tmp_path / "gradients.jsonl"
    lines = [json.dumps({"phase": ph, "step": st, **gradient_contributions(model, batches)}) for ph, st in
             ((1, 3), (2, 3), (2, 6))]
    log.write_text("\n".join(lines) + "\n")
    assert main(["analyze", "plot", str(log)]) == 0
    assert (tmp_path / "gradients.png").stat().st_size > 5_000


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A comparison's layout, <root>/seed<S>/<regime>, with two seeds of two regimes."""
    root = tmp_path_factory.mktemp("cmp")
    for seed in (0, 1):
        for regime in ("joint", "mixed"):
            _fake_run(root / f"seed{seed}" / regime, regime, 10 * seed + len(regime))
    return root


def test_runs_of_one_regime_with_different_seeds_are_aggregated(comparison, tmp_path):
    dirs = [comparison / f"seed{s}" / r for s in (0, 1) for r in ("joint", "mixed")]
    assert main(["analyze", "rank", *map(str, dirs), "--split", "train", "--samples", "64", "--max-features", "300",
                 "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "rank.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["joint", "mixed", "joint", "mixed"]
    groups = {g["label"]: g for g in data["groups"]}
    assert groups["joint"]["runs"] == [0, 2] and groups["joint"]["seeds"] == [5, 15] and groups["joint"]["n"] == 2
    for key in ("effective_rank", "rank"):
        a, b = (torch.tensor(data["runs"][i][key], dtype=torch.float64) for i in (0, 2))
        assert groups["joint"]["mean"][key] == pytest.approx(((a + b) / 2).tolist())
        assert groups["joint"]["std"][key] == pytest.approx(torch.stack([a, b]).std(0).tolist())
    shutil.copy(tmp_path / "rank.json", tmp_path / "again.json")
    assert main(["analyze", "plot", str(tmp_path / "again.json")]) == 0  # error bars drawn from the JSON alone


@pytest.mark.parametrize("kind, extra", [
    ("gradients", ["--samples", "16"]),
    ("mi", ["--split", "train", "--samples", "300", "--max-features", "200", "--no-probe", "--blocks", "2"]),
    ("landscape", ["--samples", "32", "--steps", "3", "--dims", "1"]),
])
def test_seed_groups_of_the_other_analyses_redraw(comparison, tmp_path, kind, extra):
    dirs = [comparison / f"seed{s}" / "joint" for s in (0, 1)]
    assert main(["analyze", kind, *map(str, dirs), "--out", str(tmp_path), *extra]) == 0
    name = {"landscape": "landscape-all-1d"}.get(kind, kind)
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["groups"][0]["n"] == 2 and data["groups"][0]["mean"]
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_connectivity_finds_seed_baselines_in_a_comparison_layout(comparison, tmp_path):
    a, b = comparison / "seed0" / "joint", comparison / "seed0" / "mixed"
    common = ["--samples", "32", "--bn-samples", "32", "--points", "2", "--plane-steps", "0", "--out", str(tmp_path)]
    assert main(["analyze", "connectivity", str(a), str(b), *common]) == 0
    data = json.loads((tmp_path / "connectivity.json").read_text())
    roles = [(p["role"], p["from"], p["to"], p["seed_from"], p["seed_to"]) for p in data["paths"]]
    assert roles == [("pair", "joint", "mixed", 5, 5), ("baseline", "joint", "joint", 5, 15),
                     ("baseline", "mixed", "mixed", 5, 15)]
    assert sorted(data["baseline_dirs"]) == sorted(str(comparison / "seed1" / r) for r in ("joint", "mixed"))
    assert {(s["role"], s["from"]) for s in data["summary"]} == {("pair", "joint"), ("baseline", "joint"),
                                                                ("baseline", "mixed")}
    opts = Options(samples=32, bn_samples=32, points=2, plane_steps=0, find_baselines=False,
                   baselines=[str(comparison / "seed1" / "mixed")])
    json_path, _ = analyze("connectivity", [a, b], opts, out=tmp_path / "explicit")
    data = json.loads(json_path.read_text())
    assert [(p["role"], p["from"]) for p in data["paths"]] == [("pair", "joint"), ("baseline", "mixed")]
    json_path, _ = analyze("connectivity", [a, b], Options(samples=32, bn_samples=32, points=2, plane_steps=0,
                                                           find_baselines=False, align=True), out=tmp_path)
    data = json.loads(json_path.read_text())
    assert json_path.name == "connectivity-aligned.json" and data["aligned"] and len(data["paths"]) == 1
    assert data["paths"][0]["alignment"]["method"].startswith("weight matching")


def _checkpoint(run, name, seed):
    """A checkpoint file with other weights than the run's final model (as the training loop writes them)."""
    torch.manual_seed(seed)
    other = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1])
    path = run / "checkpoints" / f"{name}.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_tensors(path, {f"model.{k}": v for k, v in other.state_dict().items()}, {"phase": 2, "end": False})
    return path, other


def test_intermediate_checkpoints_are_analysed_instead_of_the_final_model(tmp_path):
    run = _fake_run(tmp_path / "joint", "joint", 0)
    path, other = _checkpoint(run, "00-phase2-e001", 7)
    for loaded in (load_run(run, "00-phase2-e001"), load_run(path)):
        assert loaded.label == "joint@00-phase2-e001" and loaded.checkpoint == path
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    unfinished = tmp_path / "running"  # no model.json yet: the architecture comes from the config
    unfinished.mkdir()
    shutil.copy(run / "config.yaml", unfinished)
    part, other2 = _checkpoint(unfinished, "00-phase2-e001", 8)
    loaded = load_run(part)
    assert all(torch.equal(v, other2.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    assert main(["analyze", "rank", str(path), "--split", "train", "--samples", "20", "--out",
                 str(tmp_path / "cli")]) == 0  # a checkpoint file in place of a run
    assert (tmp_path / "cli" / "rank-00-phase2-e001.json").is_file()
    json_path, _ = analyze("rank", [run], Options(split="train", samples=20, checkpoint="00-phase2-e001"))
    assert json_path == run / "analysis" / "rank-00-phase2-e001.json"
    data = json.loads(json_path.read_text())
    assert data["runs"][0]["checkpoint"] == "00-phase2-e001" and data["runs"][0]["label"] == "joint@00-phase2-e001"
    json_path, _ = analyze("rank", [path], Options(split="train", samples=20))  # a checkpoint file as the run
    assert json_path == run / "analysis" / "rank-00-phase2-e001.json"
    with pytest.raises(ExitlabError, match="has no checkpoint 'nope'.*it has: 00-phase2-e001"):
        load_run(run, "nope")


def test_gradients_of_phase_3_leave_the_frozen_backbone_null(runs, tmp_path):
    json_path, _ = analyze("gradients", [runs[0]], Options(samples=16, phase=3), out=tmp_path)
    data = json.loads(json_path.read_text())
    assert json_path.name == "gradients-phase3.json"
    run = data["runs"][0]
    assert run["objective"]["phase"] == 3 and all(run["frozen"])
    assert all(v is None for row in run["share_norm"] for v in row)
    assert (tmp_path / "gradients-phase3.png").stat().st_size > 5_000
