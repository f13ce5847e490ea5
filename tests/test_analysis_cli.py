"""``exitlab analyze``: every analysis writes JSON + PNG, figures redraw from the JSON alone, bad input is refused."""

import json
import shutil

import pytest
import torch

from exitlab.checkpoint import save_pretrained
from exitlab.cli import main
from exitlab.config import dump_config, load_config
from exitlab.models import build_model

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
    assert len(data["paths"]) == 3 and data["runs"] == ["joint", "mixed", "disjoint"]
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
