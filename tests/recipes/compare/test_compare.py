"""`exitlab compare`: the 3-regime grid with a shared phase 1, tables that match the evaluations, and clear errors
for bad grids. Resume after a kill is in tests/reliability/test_locks.py."""

import json

import pytest
import yaml

from exitlab.errors import ConfigError, ExitlabError
from exitlab.recipes.compare import load_compare_config, run_compare

TINY = {
    "base": {"data": {"name": "synthetic", "synthetic": {"size": 16, "n_train": 560, "n_test": 140},
                      "batch_size": 64, "eval_batch_size": 256},
             "model": {"backbone": "resnet8", "exits": [0, 1]}, "budget": 2, "device": "cpu",
             "phase1": {"lr": 0.02}, "phase2": {"lr": 0.02}, "phase3": {"lr": 0.02}},
    "regimes": ["joint", "disjoint", "mixed"],
    "seeds": [0],
}


def write_config(path, **changes):
    path.write_text("# exitlab compare " + path.name + "\n" + yaml.safe_dump({**TINY, **changes}))
    return path


def test_grid_shares_phase1_and_tables_match_the_evaluations(compared):
    out, summary = compared
    assert [r["row"] for r in summary["rows"]] == ["joint", "disjoint", "mixed"]
    shared = str((out / "seed0" / "phase1" / "checkpoints" / "00-phase1-end.safetensors").resolve())
    by = {r["row"]: r for r in summary["rows"]}
    assert by["disjoint"]["phase1_from"] == [shared] and by["mixed"]["phase1_from"] == [shared]
    assert by["joint"]["phase1_from"] == [None]
    md = (out / "tables" / "paper.md").read_text().splitlines()
    assert md[0] == ("| regime | acc@25% | acc@50% | acc@75% | acc@100% | final exit | AUC | train TFLOPs | "
                     "train min |")
    assert "n = 1 seed." in md[-1] and "chosen on the validation split" in md[-1] and "epochs" in md[-1]
    for line, regime in zip(md[2:], ["joint", "disjoint", "mixed"]):
        ev = json.loads((out / "seed0" / regime / "eval.json").read_text())
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == regime
        assert cells[5] == f"{100 * ev['final_accuracy']:.2f} ± 0.00"
        assert cells[6] == f"{100 * ev['auc']:.2f} ± 0.00"
        status = json.loads((out / "seed0" / regime / "run.json").read_text())
        assert cells[7] == f"{status['compute']['train_flops'] * 1e-12:.1f} ± 0.0"
    for ext in ("md", "csv", "tex"):
        assert (out / "tables" / f"exits.{ext}").read_text().count("mixed") == 1
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "accuracy_vs_flops.png", "exit_distribution.png", "training_curves.png"]


@pytest.mark.parametrize("changes,message", [
    ({"regimes": ["joint", "mixd"]}, "regimes: unknown regime 'mixd'"),
    ({"variants": ["sdn-wieghts"]}, "variants: unknown variant 'sdn-wieghts'; choose from"),
    ({"variants": [{"mine": {"phase2.loss_wieghts": "sdn"}}]}, "variants: 'mine': phase2.loss_wieghts: unknown key"),
    ({"seeds": []}, "seeds: the seed list is empty"),
])
def test_bad_grid_entries_fail_before_training(tmp_path, changes, message):
    cfg = write_config(tmp_path / "bad.yaml", **changes)
    with pytest.raises(ConfigError, match=message):
        cc = load_compare_config(cfg)
        run_compare(cc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_directory_with_another_config_is_refused(compared, tmp_path):
    out, _ = compared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    cc = load_compare_config(write_config(tmp_path / "other.yaml", seeds=[1]))
    with pytest.raises(ExitlabError, match="holds a comparison with a different config"):
        run_compare(cc, out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before


def test_variants_get_their_own_runs(tmp_path):
    variants = ["sdn-weights", {"wide": {"model.exits": [1]}}]
    cc = load_compare_config(write_config(tmp_path / "v.yaml", variants=variants))
    from exitlab.recipes.compare.run import plan

    names = [j.name for j in plan(cc, tmp_path / "out")]
    assert "seed0/mixed-sdn-weights" in names and "seed0/phase1-wide" in names and "seed0/joint-wide" in names
    jobs = {j.name: j for j in plan(cc, tmp_path / "out")}
    assert jobs["seed0/mixed-sdn-weights"].cfg.phase2.loss_weights == "sdn"
    assert jobs["seed0/joint-wide"].cfg.model.exits == [1]


def test_regime_overrides_change_one_regime_and_keep_phase1_shared(tmp_path):
    over = {"joint": {"phase2.lr": 0.1}, "mixed": {"phase2.lr": 0.01}}
    cc = load_compare_config(write_config(tmp_path / "o.yaml", regime_overrides=over))
    from exitlab.recipes.compare.run import plan

    jobs = {j.name: j for j in plan(cc, tmp_path / "out")}
    assert jobs["seed0/joint"].cfg.phase2.lr == 0.1 and jobs["seed0/mixed"].cfg.phase2.lr == 0.01
    assert jobs["seed0/disjoint"].cfg.phase2.lr == 0.02  # the base
    assert jobs["seed0/mixed"].after == jobs["seed0/disjoint"].after == "seed0/phase1"  # phase 1 is unchanged
    with pytest.raises(ConfigError, match=r"regime_overrides: 'mixd' is not one of the regimes"):
        load_compare_config(write_config(tmp_path / "bad.yaml", regime_overrides={"mixd": {"phase2.lr": 0.1}}))
    with pytest.raises(ConfigError, match=r"regime_overrides: 'joint': phase2.lr must be > 0"):
        load_compare_config(write_config(tmp_path / "bad2.yaml", regime_overrides={"joint": {"phase2.lr": 0}}))


def test_overthinking_and_improvability_tables_match_the_evaluations(compared):
    out, summary = compared
    md = (out / "tables" / "overthinking.md").read_text().splitlines()
    hi = (out / "tables" / "improvability.md").read_text().splitlines()
    assert md[0].startswith("| regime | exit 0 (") and "final" not in md[0] and "final (" in hi[0]
    assert "overthinking" in md[-1] and "hindsight improvability" in hi[-1]
    for line, hline, regime in zip(md[2:], hi[2:], ["joint", "disjoint", "mixed"]):
        ex = json.loads((out / "seed0" / regime / "eval.json").read_text())["extras"]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == regime
        assert cells[1:] == [f"{100 * v:.2f} ± 0.00" for v in ex["overthinking"]["per_exit"]]
        hcells = [c.strip() for c in hline.strip("|").split("|")][1:]
        assert hcells == [f"{100 * v:.2f} ± 0.00" if v is not None else "n/a" for v in ex["improvability"]]
    for ext in ("csv", "tex"):
        assert (out / "tables" / f"improvability.{ext}").read_text().count("mixed") == 1
    from exitlab.recipes.compare.report import build_report

    page = build_report(out).read_text()
    assert "<h2>Overthinking (SDN)</h2>" in page and "<h2>Hindsight improvability (ZTW)</h2>" in page


def test_failure_table_has_ece_auroc_and_aurc_per_exit_from_the_evaluations(compared):
    out, summary = compared
    md = (out / "tables" / "failure.md").read_text().splitlines()
    assert md[0].startswith("| regime: metric | exit 0 (") and "final (" in md[0]
    assert "AUROC (probability that a right answer is more confident" in md[-1] and "n/a:" in md[-1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md[2:11]]
    for i, regime in enumerate(["joint", "disjoint", "mixed"]):
        exits = json.loads((out / "seed0" / regime / "eval.json").read_text())["exits"]
        for j, metric in enumerate(["ece", "auroc", "aurc"]):
            cells = rows[3 * i + j]
            assert cells[0] == f"{regime}: {metric.upper()}"
            assert cells[1:] == [f"{e[metric]:.3f} ± 0.000" if e[metric] is not None else "n/a" for e in exits]
    for ext in ("csv", "tex"):
        assert (out / "tables" / f"failure.{ext}").read_text().count("mixed: AURC") == 1
    from exitlab.recipes.compare.report import build_report

    page = build_report(out).read_text()
    assert "<h2>Calibration and failure prediction per exit</h2>" in page and "mixed: AUROC" in page


def test_failure_table_over_seeds_shows_n_a_where_an_exit_has_nothing_to_rank():
    """Two seeds: mean ± sample std to three decimals; a seed whose exit got everything right has no AUROC, so the
    cell is n/a, never NaN; a regression summary has no failure table."""
    from exitlab.recipes.compare.tables import failure_table, has_failure, markdown

    row = {"row": "joint", "exit_ece": [[0.1, 0.02], [0.3, 0.04]], "exit_auroc": [[0.7, None], [0.8, 0.9]],
           "exit_aurc": [[0.2, 0.0], [0.1, 0.01]]}
    summary = {"rows": [{**row, "exit_fraction_flops": [0.4, 1.0]}]}
    header, body = failure_table(summary)
    assert header == ["regime: metric", "exit 0 (40% FLOPs)", "final (100%)"]
    text = markdown(header, body)
    assert "| joint: ECE | 0.200 ± 0.141 | 0.030 ± 0.014 |" in text
    assert "| joint: AUROC | 0.750 ± 0.071 | n/a |" in text
    assert "| joint: AURC | 0.150 ± 0.071 | 0.005 ± 0.007 |" in text
    assert "nan" not in text.lower()
    assert has_failure(summary) and not has_failure({**summary, "task": "regression"})
    assert not has_failure({"rows": [{"row": "old"}]})  # summaries from before the metrics


def test_tables_state_the_budget_the_runs_recorded(compared):
    out, summary = compared
    assert summary["budget_matched"]["matched"] == "epochs" and summary["budget_matched"]["value"] == 2
    assert "Budget matched across regimes, as every run recorded: epochs" in (out / "tables" / "paper.md").read_text()


def test_a_budget_override_for_one_regime_is_reported_as_not_matched(tmp_path):
    """regime_overrides may give one regime another budget: the tables must say so, from what the runs recorded."""
    cfg = write_config(tmp_path / "unfair.yaml", regimes=["joint", "disjoint"],
                       regime_overrides={"joint": {"budget": 4}})
    summary = run_compare(load_compare_config(cfg), tmp_path / "out")
    fact = summary["budget_matched"]
    assert fact["matched"] == "differs"
    assert fact["rows"] == {"joint": [["epochs", 4]], "disjoint": [["epochs", 2]]}
    text = (tmp_path / "out" / "tables" / "paper.md").read_text()
    assert "Budget NOT matched: the runs recorded different budgets (joint: epochs 4; disjoint: epochs 2)." in text
    assert "Budget matched across regimes" not in text
