"""A training method is one config section (``phaseN.layerskip``, ``.gpf``, ``.l2w``): typed overrides, validation
named by the full key, the old flat keys refused in every way a user gives them, and run directories written with the
flat keys still read (in today's layout, with their signatures unchanged)."""

import dataclasses
from pathlib import Path

import pytest
import yaml

import exitlab
from exitlab.errors import ConfigError
from exitlab.models import build_model
from exitlab.runs.config import load_config, load_saved_config, signature_dict
from exitlab.runs.phase_config import GPFConfig, L2WConfig, LayerSkipConfig, PhaseConfig, flat_phase, upgrade_phase
from exitlab.runs.rundir import RunDir
from exitlab.training.engine import phase1_signature, run_signature
from exitlab.training.phases import plan_phases
from tests.conftest import tiny_overrides

OLD = Path(__file__).parent / "config_before_sections.yaml"  # written by exitlab's dump_config at f68e1b2
ROOT = Path(__file__).parents[2]


def test_each_section_is_set_by_dotted_overrides_and_type_checked():
    cfg = load_config(None, ["phase2.layerskip.rate=0.3", "phase2.layerskip.curriculum=gradual",
                             "phase2.l2w.hidden=8", "phase3.gpf.imitation=1"])
    assert cfg.phase2.layerskip == LayerSkipConfig(rate=0.3, curriculum="gradual")
    assert cfg.phase2.l2w == L2WConfig(hidden=8) and cfg.phase3.gpf == GPFConfig(imitation=1.0)
    assert isinstance(cfg.phase3.gpf.imitation, float)
    assert cfg.phase1.layerskip == LayerSkipConfig()  # the other phases keep their defaults
    assert cfg.phase2.methods_on() == ["layerskip"] and cfg.phase3.methods_on() == ["gpf"]


@pytest.mark.parametrize("override,message", [
    ("phase2.l2w.hidden=wide", "phase2.l2w.hidden: expected int, got 'wide'"),
    ("phase2.layerskip.rate=1", r"phase2.layerskip.rate must be in \[0, 1\), got 1"),
    ("phase1.layerskip.depth_scale=cubic", "phase1.layerskip.depth_scale: 'cubic'; choose exp, linear or uniform"),
    ("phase2.layerskip.fraction=0", r"phase2.layerskip.fraction must be in \(0, 1\], got 0"),
    ("phase3.gpf.imitation=-1", "phase3.gpf.imitation must be >= 0, got -1"),
    ("phase2.l2w.target=40", "phase2.l2w.target must be <= 39, got 40"),
    ("phase2.l2w.meta_lr=0", "phase2.l2w.meta_lr must be > 0, got 0"),
    ("phase2.l2w.constraint=cell", "phase2.l2w.constraint: 'cell'; choose mat, row or col"),
    ("phase2.layerskip.rte=0.1", "phase2.layerskip.rte: unknown key; valid keys here: curriculum, depth_scale, "),
    ("phase2.layerskip=0.2", "phase2.layerskip must be a mapping, got float"),
])
def test_bad_section_values_name_the_full_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("old,new", sorted(PhaseConfig.MOVED.items()))
def test_every_old_flat_key_is_refused_with_its_new_name(old, new):
    value = yaml.safe_dump(getattr(_section(new), new.split(".")[1]), default_flow_style=True).split("\n")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"phase2.{old}={value}"])
    assert str(e.value) == (f"phase2.{old} is now phase2.{new}; rename it (docs/training.md lists the moved keys)")
    load_config(None, [f"phase2.{new}={value}"])  # the new key takes the same value


def _section(new: str):
    return getattr(PhaseConfig(), new.split(".")[0])


def test_old_keys_are_refused_in_yaml_in_python_options_and_in_comparisons(tmp_path):
    (tmp_path / "old.yaml").write_text("phase1: {epochs: 1}\nphase2: {l2w_epsilon: 0.5, l2w_hidden: 8}\n")
    with pytest.raises(ConfigError, match=r"^phase2.l2w_epsilon is now phase2.l2w.epsilon; rename it"
                                          r" and the 1 other moved keys here \(docs"):
        load_config(tmp_path / "old.yaml")
    model = build_model("resnet8", num_classes=7, img_size=16, exits=[0])
    with pytest.raises(ConfigError, match=r"^phase2.exit_curriculum is now phase2.layerskip.curriculum; rename it"):
        exitlab.train(model, tmp_path / "run", data={"name": "synthetic"}, phase2={"exit_curriculum": "gradual"})
    assert not (tmp_path / "run").exists()  # refused before anything was written
    from exitlab.recipes.compare import load_compare_config

    base = {"base": {"data": {"name": "synthetic"}, "model": {"exits": [0]}}, "regimes": ["joint"]}
    over = {"joint": {"phase2.layer_drop": 0.1}}
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump({**base, "regime_overrides": over}))
    with pytest.raises(ConfigError, match=r"^regime_overrides: 'joint': phase2.layer_drop is now phase2.layerskip.ra"):
        load_compare_config(tmp_path / "cmp.yaml")
    old_base = {**base["base"], "phase3": {"gpf_imitation": 1}}
    (tmp_path / "cmp2.yaml").write_text(yaml.safe_dump({**base, "base": old_base}))
    with pytest.raises(ConfigError, match=r"^base.phase3.gpf_imitation is now base.phase3.gpf.imitation; rename it"):
        load_compare_config(tmp_path / "cmp2.yaml")


def test_a_run_directory_with_the_flat_keys_reads_in_todays_layout(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD.read_text())
    cfg = RunDir(tmp_path).config()
    assert cfg.phase1.layerskip == LayerSkipConfig(rate=0.1)
    assert cfg.phase2.layerskip == LayerSkipConfig(rate=0.3, time_scale="linear", per="batch", curriculum="gradual",
                                                   fraction=0.25)
    assert cfg.phase2.l2w == L2WConfig(epsilon=0.5, hidden=8, constraint="row") and cfg.phase2.distill == 0.5
    assert cfg.phase3.gpf == GPFConfig(imitation=0.5)
    # what a signature hashes is the old file's layout, value for value, so older runs resume and share phase 1
    assert signature_dict(cfg) == yaml.safe_load(OLD.read_text())
    assert run_signature(cfg) == "1ce231f9bddcdd6e"  # as exitlab computed it at f68e1b2 for this config
    assert phase1_signature(cfg, plan_phases(cfg, 3)) == "8b38959a48bd9b10"
    with pytest.raises(ConfigError, match=r"^phase1.layer_drop is now phase1.layerskip.rate; rename it and the 14 oth"):
        load_config(OLD)  # the same file given as user input is refused


def test_a_run_trained_with_the_flat_keys_still_evaluates_exports_and_counts_as_finished(tmp_path):
    """A run directory as exitlab wrote it before the sections: its config.yaml has the flat keys."""
    from exitlab.evaluation.evaluate import evaluate_run

    old = OLD.read_text().replace("n_train: 560", "n_train: 140").replace("n_test: 140", "n_test: 35")  # faster
    (tmp_path / "old.yaml").write_text(old)
    cfg = load_saved_config(tmp_path / "old.yaml")
    out = exitlab.train(cfg, tmp_path / "run")
    (out / "config.yaml").write_text(old)  # what the older exitlab wrote for this config
    assert RunDir(out).config() == cfg
    result = evaluate_run(out, policies=("confidence",), write=False)
    assert len(result["exits"]) == 3 and 0 <= result["final_accuracy"] <= 1
    assert exitlab.train(RunDir(out).config(), out, resume=True) == out  # the same run: finished, nothing to do
    from exitlab.deploy.export.onnx_export import run_normalization  # what export reads of the run's config

    assert run_normalization(out) == RunDir(out).data().normalize


def test_signatures_of_configs_without_the_methods_are_unchanged():
    cfg = load_config(None, tiny_overrides())
    assert run_signature(cfg) == "e19b7a9a9dc36cda"  # as exitlab computed them at f68e1b2
    assert phase1_signature(cfg, plan_phases(cfg, 3)) == "1304846f32ea4b87"


def test_upgrade_and_flatten_are_inverse_and_cover_every_section_key():
    sections = PhaseConfig().methods()
    assert sorted(PhaseConfig.MOVED.values()) == sorted(f"{n}.{f.name}" for n, s in sections.items()
                                                         for f in dataclasses.fields(s))
    nested = dataclasses.asdict(PhaseConfig(layerskip=LayerSkipConfig(rate=0.2), l2w=L2WConfig(epsilon=0.1)))
    flat = flat_phase(nested)
    assert not any(isinstance(v, dict) for v in flat.values()) and flat["layer_drop"] == 0.2
    assert upgrade_phase(flat) == nested
    assert flat_phase({"lr": 0.1, "newmethod": {"x": 1}}) == {"lr": 0.1, "newmethod": {"x": 1}}  # no old name: kept


def test_an_old_comparison_directory_is_recognised_after_the_rename(tmp_path):
    from exitlab.recipes.compare import load_compare_config
    from exitlab.recipes.compare.run import check_out

    cc = load_compare_config(ROOT / "configs" / "fashion_mnist_compare_toolbox.yaml")
    old = dataclasses.asdict(cc)
    old["base"] = {k: flat_phase(v) if k in ("phase1", "phase2", "phase3") else v for k, v in old["base"].items()}
    old["regime_overrides"]["phases2"] = {k.replace("gpf.imitation", "gpf_imitation"): v
                                          for k, v in old["regime_overrides"]["phases2"].items()}
    assert "phase2.gpf_imitation" in old["regime_overrides"]["phases2"]
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(old))
    check_out(cc, tmp_path)  # the same comparison: accepted
    other = dataclasses.replace(cc, seeds=[3])
    with pytest.raises(exitlab.ExitlabError, match="holds a comparison with a different config"):
        check_out(other, tmp_path)


def test_settings_a_phase_ignores_are_refused_per_section(tiny_cfg):
    with pytest.raises(ConfigError, match=r"^phase1.gpf.imitation is set, but phase 1 ignores it: it trains the "):
        plan_phases(tiny_cfg(regime="mixed", **{"phase1.gpf.imitation": 1.0}), 3)
    with pytest.raises(ConfigError, match=r"^phase1.l2w.epsilon is set, but phase 1 ignores it"):
        plan_phases(tiny_cfg(regime="mixed", **{"phase1.l2w.epsilon": 0.5}), 3)
    plan_phases(tiny_cfg(regime="mixed", **{"phase1.layerskip.rate": 0.1}), 3)  # layer dropout applies in phase 1
    plan_phases(tiny_cfg(regime="joint", **{"phase3.l2w.epsilon": 0.5}), 3)  # phase 3 is not in the regime
    with pytest.raises(ConfigError, match=r"^grad_log_every is set, but phase2.l2w changes the objective"):
        plan_phases(tiny_cfg(regime="joint", grad_log_every=1, **{"phase2.l2w.epsilon": 0.5}), 3)


def test_the_docs_list_every_section_key():
    text = (ROOT / "docs" / "training.md").read_text()
    missing = [f"{n}.{f.name}" for n, s in PhaseConfig().methods().items() for f in dataclasses.fields(s)
               if f"`{n}.{f.name}`" not in text]
    assert not missing, f"docs/training.md does not list {missing}"
    assert all(f"`{old}`" in text for old in PhaseConfig.MOVED), "docs/training.md lists the moved keys"


def test_regime_presets_are_section_keys_as_ls_shows_them():
    from exitlab.cli.listing import _preset

    items = _preset("layerskip").removeprefix(" with ").split(", ")
    assert items == ["phase2.layerskip.rate=0.2", "phase2.layerskip.depth_scale=exp",
                     "phase2.layerskip.curriculum=rotational"]
    assert load_config(None, items).phase2.layerskip == LayerSkipConfig(rate=0.2, curriculum="rotational")


def test_python_options_change_only_the_section_keys_they_name():
    from exitlab.recipes.train import _component_config

    model = build_model("resnet8", num_classes=7, img_size=16, exits=[0])
    base = load_config(None, ["phase2.layerskip.curriculum=gradual", "phase2.lr=0.01"])
    cfg = _component_config(model, base, {"phase2": {"layerskip": {"rate": 0.1}}, "budget": 2})
    assert cfg.phase2.layerskip == LayerSkipConfig(rate=0.1, curriculum="gradual") and cfg.phase2.lr == 0.01
    assert cfg.budget == 2
