import pytest

from exitlab.errors import ConfigError
from exitlab.runs.config import RunConfig, load_config
from exitlab.runs.typed import apply_overrides


def test_defaults_and_typed_overrides():
    cfg = load_config(None, ["phase2.lr=1e-3", "model.exits=[1, 3]", "data.flip=false", "budget=6"])
    assert isinstance(cfg, RunConfig)
    assert cfg.phase2.lr == 0.001 and cfg.model.exits == [1, 3] and cfg.data.flip is False and cfg.budget == 6


@pytest.mark.parametrize("override,message", [
    ("regime=mixd", "regime: unknown regime 'mixd'; choose one of: disjoint, joint, layerskip, mixed"),
    ("regime=[1, 4]", r"regime: phase list \[1, 4\] must be non-empty and use only phases 1, 2 and 3"),
    ("phase1.epochs=-1", "phase1.epochs must be >= 0, got -1"),
    ("phase2.epochs=two", "phase2.epochs: expected int, got 'two'"),
    ("phase2.optimizer=adam", "phase2.optimizer: unknown optimizer 'adam'; choose adamw or sgd"),
    ("phase2.loss_weights=heavy", "phase2.loss_weights: unknown weighting 'heavy'"),
    ("model.head_kwrgs={}", "model.head_kwrgs: unknown key; valid keys here: backbone, backbone_kwargs, exits"),
    ("data.val_fraction=1.5", r"data.val_fraction must be in \(0, 1\), got 1.5"),
    ("budget=-3", "budget must be >= 0 epochs"),
    ("amp=fp8", "amp: 'fp8' is not supported; choose none or bf16"),
    ("nonsense", "expected key=value"),
])
def test_bad_values_name_the_key_and_the_options(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file .* not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_overrides_do_not_mutate_the_input():
    data = {"phase1": {"lr": 0.1}}
    out = apply_overrides(data, ["phase1.lr=0.2", "phase2.epochs=3"])
    assert data == {"phase1": {"lr": 0.1}} and out == {"phase1": {"lr": 0.2}, "phase2": {"epochs": 3}}


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[2].joinpath("configs").rglob("*.yaml"))
    assert configs, "no shipped configs found"
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# exitlab"), f"{path} must start with the command that runs it"
        if "compare" in path.name or path.parent.name == "paper":
            from exitlab.recipes.compare import load_compare_config

            load_compare_config(path)
        else:
            load_config(path)
