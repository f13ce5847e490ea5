"""Your own module with exits: the adapter's checks, exact real early exit (or a clear refusal), and the component
training API end to end, from ``exitlab.train`` to ``exitlab eval``, ``bench``, ``analyze rank`` and ``export``."""

import json

import pytest
import torch

import exitlab
from exitlab.cli import main
from exitlab.errors import ConfigError, ExitlabError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.sweep import exit_indices
from tests.models.factories import Net, SharedRelu, Skip

FACTORY = "tests.models.factories:make_net"
SYNTHETIC = {"name": "synthetic", "synthetic": {"size": 16, "n_train": 280, "n_test": 70}, "batch_size": 64,
             "eval_batch_size": 256}
OPTIONS = dict(data=SYNTHETIC, device="cpu", threads=1, progress=False, budget=2,
               phase1={"lr": 0.02}, phase2={"lr": 0.02}, phase3={"lr": 0.02})


def _adapted(factory: str | None = FACTORY):
    torch.manual_seed(0)
    return exitlab.from_module(Net(), ["stage1", "stage2"], num_classes=7, input_shape=(3, 16, 16), head="pooled",
                               factory=factory, factory_kwargs={"num_classes": 7, "width": 8} if factory else None)


def test_a_tap_that_fires_twice_is_refused():
    with pytest.raises(ConfigError, match=r"exit after 'relu': that module runs 2 times per forward"):
        exitlab.from_module(SharedRelu(), ["relu"], num_classes=7, input_shape=(3, 8, 8))


def test_exit_names_out_of_call_order_or_missing_are_refused():
    with pytest.raises(ConfigError, match=r"not in call order \(forward runs them as \['stage1', 'stage2'\]\)"):
        exitlab.from_module(Net(), ["stage2", "stage1"], num_classes=7, input_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match=r"exit names \['stage9'\] are not submodules of Net"):
        exitlab.from_module(Net(), ["stage9"], num_classes=7, input_shape=(3, 16, 16))


def test_real_early_exit_on_an_adapted_module_equals_the_simulation():
    model = _adapted().eval()
    x = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, B, C]
    for name in ("confidence", "entropy", "patience"):
        policy = make_policy(name)
        scores, preds = policy.scores(logits)
        t = 2.0 if name == "patience" else scores[0].median().item()  # half the batch leaves at exit 0
        got = early_exit(model, x, policy, t)
        want = exit_indices(scores, torch.tensor([t]), policy.exit_when)[0]
        assert torch.equal(got.exits, want), name
        assert torch.equal(got.preds, preds[want, torch.arange(64)]), name
        if name != "patience":
            assert 0 < (got.exits == 0).sum() < 64, f"{name}: the threshold should split the batch"


def test_real_early_exit_refuses_a_skip_connection_across_a_tap():
    model = exitlab.from_module(Skip(), ["mid"], num_classes=7, input_shape=(3, 8, 8), head="pooled").eval()
    with pytest.raises(ExitlabError, match="real early exit cannot run on this adapted Skip"):
        early_exit(model, torch.randn(4, 3, 8, 8), make_policy("confidence", threshold=0.5))
    assert len(model(torch.randn(4, 3, 8, 8))) == 2  # training and simulation still work


def test_phase3_leaves_every_tensor_of_the_user_module_bit_identical(tmp_path):
    model = _adapted()
    exitlab.train(model, tmp_path / "p1", regime=[1], **OPTIONS)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    exitlab.train(model, tmp_path / "p3", regime=[3], **OPTIONS)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert any("running_mean" in k for k in before)


@pytest.mark.parametrize("regime", ["joint", "disjoint", "mixed"])
def test_an_adapted_module_trains_reloads_and_runs_every_command(regime, tmp_path, capsys):
    model = _adapted()
    run = exitlab.train(model, tmp_path / regime, regime=regime, **OPTIONS)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "done" and [p["kind"] for p in status["phases"]] == list(
        exitlab.REGIMES.get(regime))
    loaded = exitlab.load(run)
    x = torch.randn(5, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["samples"] == 70
    assert main(["bench", str(run), "--budget", "1", "--batch", "32", "--samples", "4", "--repeats", "1",
                 "--warmup", "0"]) == 0
    assert (run / "bench.json").is_file()
    assert main(["analyze", "rank", str(run), "--samples", "60"]) == 0
    assert (run / "analysis" / "rank.json").is_file()
    if regime == "mixed":  # one export is enough: all three models have the same graph
        pytest.importorskip("onnxruntime")
        assert main(["export", str(run), "--out", str(tmp_path / "onnx")]) == 0
        manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
        assert manifest["layout"] == "all" and manifest["num_exits"] == 3
    capsys.readouterr()


def test_a_module_without_a_factory_loads_only_with_the_module_given_back(tmp_path):
    model = _adapted(factory=None)
    run = exitlab.train(model, tmp_path / "run", regime="joint", **OPTIONS)
    with pytest.raises(ExitlabError, match=r"pass it back: exitlab.load\(path, module=my_module\)"):
        exitlab.load(run)
    again = exitlab.load(run, module=Net())
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), again(x)))


def test_config_keys_build_a_factory_model(tmp_path, tiny_cfg):
    cfg = tiny_cfg(regime="joint", **{"model.factory": FACTORY, "model.backbone_kwargs": "{num_classes: 7}",
                                      "model.exits": "[stage1, stage2]", "model.head": "pooled"})
    run = exitlab.train(cfg, tmp_path / "run")
    spec = json.loads((run / "model.json").read_text())["spec"]
    assert spec["factory"] == FACTORY and spec["exits"] == ["stage1", "stage2"]
    assert exitlab.load(run).num_exits == 3


def test_exits_on_a_stage_list_by_index_every_and_flops():
    from exitlab.models import build_model

    def taps(exits, factory="tests.models.factories:make_seq"):
        m = build_model("x", num_classes=7, in_chans=3, img_size=16, exits=exits, head="pooled", factory=factory)
        return list(m.spec.exits)

    assert taps([0, 2]) == ["blocks.0", "blocks.2"]
    assert taps("every:2") == ["blocks.1"]  # places: blocks.0..2 (blocks.3 feeds the final exit)
    two = taps("flops:2")
    assert len(two) == 2 and two == sorted(set(two))
    with pytest.raises(ConfigError, match=r"asks for 9 ICs, but this model has only 3 places"):
        taps("flops:9")
    with pytest.raises(ConfigError, match="no stage list exitlab recognises"):
        taps([0], FACTORY)  # Net names its stages itself (stage1, ...): give names there


@pytest.mark.parametrize("factory,message", [
    ("tests.models.nowhere:make", "cannot import 'tests.models.nowhere'"),
    ("tests.models.factories:nothing", "has no attribute 'nothing'"),
    ("tests.models.factories:not_a_module", "returned a str, not a torch.nn.Module"),
    ("no-colon", "expected 'package.module:function'"),
])
def test_a_bad_factory_is_one_clear_error(factory, message):
    from exitlab.models import build_model

    with pytest.raises(ConfigError, match=message):
        build_model("x", num_classes=7, exits=["a"], factory=factory)


class _TupleNet(Net):
    def forward(self, x):
        return super().forward(x), x


def test_from_module_refuses_wrong_shapes_and_outputs_before_torch_does():
    """A wrong input_shape, a forward that returns a tuple, and a classifier of the wrong size each used to fail
    inside torch (or train silently); now each is one line naming the fix."""
    with pytest.raises(ConfigError, match=r"a dry run of Net on input_shape \(1, 16, 16\) failed \(.*\); give "
                                          r"input_shape as the shape of one sample that the module accepts"):
        exitlab.from_module(Net(in_chans=3), ["stage1"], num_classes=7, input_shape=(1, 16, 16))
    with pytest.raises(ConfigError, match=r"_TupleNet.forward returns a tuple, not a tensor; the module's output is "
                                          r"the final exit"):
        exitlab.from_module(_TupleNet(), ["stage1"], num_classes=7, input_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match=r"Net.forward gives 7 logits but num_classes is 10; replace its classifier "
                                          r"with one of 10 outputs, or set num_classes to match"):
        exitlab.from_module(Net(), ["stage1"], num_classes=10, input_shape=(3, 16, 16))
    assert exitlab.from_module(Net(), ["stage1"], num_classes=None, input_shape=(3, 16, 16)).num_classes == 7


def test_a_factory_whose_classifier_does_not_fit_the_data_is_refused(tmp_path, tiny_cfg):
    cfg = tiny_cfg(regime="joint", **{"model.factory": FACTORY, "model.backbone_kwargs": "{num_classes: 5}",
                                      "model.exits": "[stage1, stage2]", "model.head": "pooled"})
    with pytest.raises(ConfigError, match=r"the model predicts 5 classes but the data has 7; build it with "
                                          r"num_classes=7"):
        exitlab.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_model_built_for_other_channels_than_the_data_is_refused_in_one_line(tmp_path):
    model = exitlab.build_model("resnet8", num_classes=7, in_chans=3, img_size=16, exits=[0, 1], head="pooled")
    x = torch.rand(70, 1, 16, 16)  # one channel, the model takes three
    y = torch.arange(70) % 7
    with pytest.raises(ConfigError, match=r"the model does not take the data's samples of shape \(1, 16, 16\) \(.*\); "
                                          r"build it for that input \(in_chans=1, its image size\)"):
        exitlab.train(model, tmp_path / "run", data=exitlab.data.from_tensors(x, y, x, y), regime="joint", budget=1)
