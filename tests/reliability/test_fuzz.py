"""Property-based fuzzing of the config loader and the CLI: the only outcomes are a clean run or a clean error."""

import contextlib
import io
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exitlab.cli import build_parser, main
from exitlab.errors import ExitlabError
from exitlab.runs.config import load_config
from exitlab.training.planning import preflight

KEYS = ["regime", "budget", "phase1_share", "seed", "device", "amp", "threads", "checkpoint_every", "keep_checkpoints",
        "model.backbone", "model.exits", "model.head", "model.head_kwargs", "model.backbone_kwargs",
        "data.name", "data.batch_size", "data.val_fraction", "data.crop_padding", "data.synthetic",
        "phase1.epochs", "phase2.lr", "phase2.optimizer", "phase2.loss_weights", "phase3.patience",
        "phase2.schedule", "phase2.distill", "nonsense", "model.nonsense", "phase4.epochs"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12),
                    st.sampled_from(["joint", "mixed", "disjoint", "resnet8", "resnet20", "vit", "sdn", "cls",
                                     "pooled", "mlp2", "every:2", "flops:2", "every:0", "flops:x", "synthetic",
                                     "uniform", "sdn", "adamw", "cpu", "bf16", "cosine", "cuda:7"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.lists(st.integers(-2, 12), max_size=5),
                   st.dictionaries(st.sampled_from(["width", "k", "dim", "depth", "heads", "grid", "cascade", "x"]),
                                   st.integers(-1, 9), max_size=2))
FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def _chdir(path):  # contextlib.chdir is Python 3.11+
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[last] = value
    return out


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_config_loader_never_crashes(tmp_path_factory, flat):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(_nest(flat)))
    try:
        cfg = load_config(path)
    except ExitlabError:
        return
    if cfg.model.backbone in ("resnet8", "resnet20", "vit", "mobilenetv2"):
        try:
            preflight(cfg)
        except ExitlabError:
            pass


@FAST
@given(st.text(max_size=200))
def test_arbitrary_yaml_text_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    with contextlib.suppress(ExitlabError):
        load_config(path)


@FAST
@given(st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), max_size=3),
       st.lists(VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()), max_size=3))
def test_set_overrides_never_crash(keys, values):
    overrides = [f"{k}={v}" for k, v in zip(keys, values)] + keys[len(values):]
    with contextlib.suppress(ExitlabError):
        load_config(None, overrides)


COMMANDS = ["train", "compare", "report", "eval", "bench", "analyze", "export", "serve", "demo", "ls", "bogus", ""]
TOKENS = st.one_of(st.sampled_from(["--set", "--out", "--resume", "--policy", "--split", "--format", "--port", "-v",
                                    "--help", "--phase1-from", "--workers", "--budget", "rank", "gradients", "test",
                                    "onnx", "x=1", "regime=joint", "seeds=[]", "-1", "0", "99999"]),
                   st.text(max_size=10))


@FAST
@given(st.sampled_from(COMMANDS), st.lists(TOKENS, max_size=6))
def test_cli_parser_never_crashes(command, tokens):
    argv = ([command] if command else []) + tokens
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except ExitlabError as e:  # a refused command line: one message line
            assert "\n" not in str(e), argv
        except SystemExit as e:  # --help
            assert e.code == 0, argv


CHEAP = ["train", "compare", "report", "eval", "analyze", "export", "ls"]  # no long work without a valid target


@FAST
@given(st.sampled_from(CHEAP), st.lists(TOKENS, max_size=5))
def test_cli_commands_end_in_a_clean_run_or_a_clean_error(tmp_path_factory, command, tokens):
    cwd = tmp_path_factory.mktemp("cli")
    argv = [command, str(cwd / "missing")] + tokens if command != "ls" else [command] + tokens
    with _chdir(cwd), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = main(argv)
        except SystemExit as e:
            assert e.code in (0, 2), argv
            return
    assert code in (0, 2), (argv, err.getvalue())
    assert "Traceback" not in err.getvalue()


def test_fuzzers_really_reach_both_outcomes(tmp_path):
    """Guard against a fuzzer that only ever sees errors: valid inputs pass, invalid ones fail cleanly."""
    assert load_config(None, ["regime=joint", "budget=2"]).budget == 2
    with pytest.raises(ExitlabError):
        load_config(None, ["regime=3"])
    assert main(["ls"]) == 0
