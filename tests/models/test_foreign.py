"""timm and torchvision models with exits: every regime trains and reloads, real early exit equals the simulation
(or is refused, clearly), exits by index, every:K, flops:N and name, local pretrained weights, and bad inputs.

timm and torchvision are optional extras: without them every test here skips. They run in the optional
environment (see docs/models.md)::

    python3 -m venv /work/venv-vision && /work/venv-vision/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /work/venv-vision/bin/pip install -e '/work/main[test]'
    /work/venv-vision/bin/python -m pytest -p no:cacheprovider -q tests/models/test_foreign.py
"""

import json

import pytest
import torch

import exitlab
from exitlab.cli import main
from exitlab.errors import ConfigError, ExitlabError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.sweep import exit_indices

SIZE = 32
SYNTHETIC = {"name": "synthetic", "synthetic": {"size": SIZE, "channels": 3, "n_train": 140, "n_test": 35},
             "batch_size": 64, "eval_batch_size": 128}
OPTIONS = dict(data=SYNTHETIC, device="cpu", threads=1, progress=False, budget=2,
               phase1={"lr": 0.01}, phase2={"lr": 0.01}, phase3={"lr": 0.01})

# source -> (builder options, the exit module names they must give); small images, ViTs built for them
SMALL = (3, SIZE, SIZE)
ARCHS = {
    "torchvision:resnet18": (dict(exits=[0, 1], input_shape=SMALL), ["layer1", "layer2"]),
    "torchvision:mobilenet_v3_small": (dict(exits="every:4", input_shape=SMALL),
                                       ["features.3", "features.7", "features.11"]),
    "torchvision:efficientnet_b0": (dict(exits=["features.2", "features.5"], head="sdn", input_shape=SMALL),
                                    ["features.2", "features.5"]),
    "torchvision:vit_b_16": (dict(exits=[3, 7], head="cls", image_size=SIZE),
                             ["encoder.layers.encoder_layer_3", "encoder.layers.encoder_layer_7"]),
    "timm:vit_small_patch16_224": (dict(exits="every:2", img_size=SIZE, depth=6), ["blocks.1", "blocks.3"]),
    "timm:convnext_atto": (dict(exits=[0, 1, 2], input_shape=SMALL), ["stages.0", "stages.1", "stages.2"]),
    "timm:resnet18": (dict(exits=["layer1", "layer3"], input_shape=SMALL), ["layer1", "layer3"]),
}


def _needs(source: str) -> None:
    extra = source.partition(":")[0]
    pytest.importorskip(extra, reason=f"{source} needs the optional {extra} (pip install 'exitlab[{extra}]', see "
                        "docs/models.md)")


def _build(source: str, num_classes: int = 7, seed: int = 0, **options):
    _needs(source)
    kind, _, name = source.partition(":")
    torch.manual_seed(seed)
    builder = exitlab.from_timm if kind == "timm" else exitlab.from_torchvision
    return builder(name, num_classes=num_classes, **options)


def _splitting_threshold(scores: torch.Tensor) -> float:
    """A confidence threshold that splits the batch at exit 0 and lies in the widest gap between the scores of the
    early exits, so that float differences between a full and a compacted batch cannot flip a decision."""
    values = scores[:-1].flatten().sort().values.double()  # every early exit's score
    mids, gaps = (values[1:] + values[:-1]) / 2, values[1:] - values[:-1]
    first = scores[0].double()
    splits = torch.tensor([0 < int((first >= t).sum()) < len(first) for t in mids])
    assert splits.any(), "no threshold splits this batch at exit 0"
    best = torch.where(splits, gaps, torch.zeros_like(gaps)).argmax()
    assert gaps[best] > 1e-6, f"scores too close to split robustly (widest gap {gaps[best].item():.2e})"
    return mids[best].item()


def _assert_early_exit_matches_the_simulation(model, x: torch.Tensor) -> None:
    """Real early exit (samples leave the batch at the taps) takes the simulated exits, with the same logits."""
    model.eval()
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, B, C]
    policy = make_policy("confidence")
    scores, preds = policy.scores(logits)
    t = _splitting_threshold(scores)
    got = early_exit(model, x, policy, t)
    want = exit_indices(scores, torch.tensor([t], dtype=torch.float64), policy.exit_when)[0]
    rows = torch.arange(len(x))
    assert torch.equal(got.exits, want)
    assert torch.equal(got.preds, preds[want, rows])
    assert torch.allclose(got.logits, logits[want, rows], atol=1e-4)
    assert 0 < int((got.exits == 0).sum()) < len(x)


@pytest.mark.parametrize("source", list(ARCHS))
def test_the_contract_holds_for_every_architecture(source):
    options, taps = ARCHS[source]
    model = _build(source, **options).train()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    outs = model(x)
    assert len(outs) == len(taps) + 1 and all(o.shape == (2, 7) and torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n in trainable if dict(model.named_parameters())[n].grad is None] == []
    model.eval()
    with torch.no_grad():
        outs = model(x)
        assert torch.equal(outs[-1], model.backbone.module(x))  # the final exit is the model's own forward
        assert all(torch.equal(a, b) for a, b in zip(model.forward_to(x, 1), outs[:2], strict=True))


@pytest.mark.parametrize("regime", ["joint", "disjoint", "mixed"])
@pytest.mark.parametrize("source", list(ARCHS))
def test_a_foreign_model_trains_reloads_and_exits_early_like_the_simulation(source, regime, tmp_path):
    options, taps = ARCHS[source]
    model = _build(source, **options)
    assert list(model.spec.exits) == taps and model.spec.input_shape == (3, SIZE, SIZE)
    run = exitlab.train(model, tmp_path / "run", regime=regime, **OPTIONS)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "done" and [p["kind"] for p in status["phases"]] == list(exitlab.REGIMES.get(regime))
    spec = json.loads((run / "model.json").read_text())["spec"]
    assert spec["source"] == source and spec["exits"] == taps
    loaded = exitlab.load(run)
    x = torch.rand(48, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x), strict=True))
    _assert_early_exit_matches_the_simulation(loaded, x)


def test_real_early_exit_refuses_a_tap_inside_a_residual_block():
    model = _build("torchvision:resnet18", exits=["layer1.0.bn2", "layer2"], input_shape=SMALL).eval()
    x = torch.rand(4, 3, SIZE, SIZE)
    with pytest.raises(ExitlabError, match=r"real early exit cannot run on this adapted ResNet: something computed "
                                           r"before an exit is used after it \(a skip connection across a tap"):
        early_exit(model, x, make_policy("confidence", threshold=0.5))
    with torch.no_grad():
        assert len(model(x)) == 3  # training and simulated early exit still work


def test_exits_by_index_every_flops_and_name_on_a_stage_list():
    def taps(exits):
        return list(_build("torchvision:mobilenet_v3_small", exits=exits, input_shape=SMALL).spec.exits)

    stages = exitlab.models.tap_candidates(_build("torchvision:mobilenet_v3_small", exits=[0]).backbone.module)
    assert stages == [f"features.{i}" for i in range(13)]  # features.12 feeds the final exit: 12 places
    assert taps([0, 5]) == ["features.0", "features.5"]
    assert taps("every:4") == ["features.3", "features.7", "features.11"]
    assert taps(["features.2", "features.9"]) == ["features.2", "features.9"]
    three = taps("flops:3")
    assert len(three) == 3 and three == sorted(set(three), key=stages.index)
    model = _build("torchvision:mobilenet_v3_small", exits=three, input_shape=SMALL)
    cum = model.backbone.tap_flops()  # the ICs split the FLOPs up to features.11 into roughly even quarters
    total = _build("torchvision:mobilenet_v3_small", exits=["features.11"], input_shape=SMALL
                   ).backbone.tap_flops()[0]
    assert all(abs(c / total - (k + 1) / 4) < 0.15 for k, c in enumerate(cum)), (cum, total)


def test_stage_lists_come_from_timm_feature_info_and_torchvision_layouts():
    resnet = _build("timm:resnet18", exits=[0], input_shape=SMALL).backbone.module
    assert exitlab.models.tap_candidates(resnet) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    effnet = _build("timm:efficientnet_b0", exits=[0], input_shape=SMALL).backbone.module
    assert exitlab.models.tap_candidates(effnet) == [d["module"] for d in effnet.feature_info]
    vit = _build("torchvision:vit_b_16", exits=[10], image_size=SIZE)
    assert vit.spec.exits == ("encoder.layers.encoder_layer_10",)
    assert vit.backbone.feature_info[0].kind == "tokens"
    regnet = _build("torchvision:regnet_y_400mf", exits="every:1", input_shape=SMALL)
    assert regnet.spec.exits == ("trunk_output.block1", "trunk_output.block2", "trunk_output.block3")
    shufflenet = _build("torchvision:shufflenet_v2_x0_5", exits="every:1", input_shape=SMALL)
    assert shufflenet.spec.exits == ("stage2", "stage3", "stage4")
    for model in (regnet, shufflenet):
        model.backbone.check_compaction()  # stage outputs: real early exit allowed


def test_the_input_shape_follows_the_image_size_the_model_was_built_for():
    assert _build("timm:vit_small_patch16_224", exits=[0], img_size=48, depth=2).spec.input_shape == (3, 48, 48)
    assert _build("torchvision:vit_b_16", exits=[0], image_size=SIZE).spec.input_shape == (3, SIZE, SIZE)
    assert _build("timm:convnext_atto", exits=[0], in_chans=1, input_shape=None).spec.input_shape == (1, 224, 224)
    with pytest.raises(ConfigError, match=r"^timm:vit_small_patch16_224: a dry run on one sample of shape "
                                          r"\[3, 32, 32\] failed \(AssertionError: .*img_size=\.\.\."):
        _build("timm:vit_small_patch16_224", exits=[0], depth=2, input_shape=SMALL)


@pytest.mark.parametrize("source,options", [
    ("timm:swin_tiny_patch4_window7_224", dict(img_size=64, window_size=2)),
    ("torchvision:swin_t", dict(input_shape=(3, 64, 64))),
])
def test_channels_last_stage_outputs_are_refused(source, options):
    with pytest.raises(ConfigError, match=r"gives a channels-last map \[1, 16, 16, 96\] \(\[B, H, W, C\]\); "
                                          r"exitlab's heads read \[B, C, H, W\] maps"):
        _build(source, exits=[0], **options)


@pytest.mark.parametrize("source", ["torchvision:resnet18", "timm:convnext_atto"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_weights_from_a_local_file_load_exactly(source, suffix, tmp_path):
    from safetensors.torch import save_file

    original = _build(source, seed=0, exits=[0], input_shape=SMALL).backbone.module
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = _build(source, seed=1, exits=[0], input_shape=SMALL, pretrained=str(path)).backbone.module
    fresh = _build(source, seed=1, exits=[0], input_shape=SMALL).backbone.module.state_dict()
    after = loaded.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert not all(torch.equal(fresh[k], state[k]) for k in state)  # seed 1 alone gives other weights


def test_pretrained_weights_for_another_class_count_keep_a_fresh_classifier(tmp_path):
    from safetensors.torch import save_file

    thousand = _build("torchvision:resnet18", num_classes=1000, exits=[0], input_shape=SMALL)
    state = thousand.backbone.module.state_dict()
    save_file(state, str(tmp_path / "in1k.safetensors"))
    model = _build("torchvision:resnet18", seed=1, exits=[0], input_shape=SMALL,
                   pretrained=str(tmp_path / "in1k.safetensors")).backbone.module
    after = model.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state if not k.startswith("fc."))
    assert after["fc.weight"].shape == (7, 512)


def test_pretrained_weights_of_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    other = _build("torchvision:mobilenet_v3_small", exits=[0], input_shape=SMALL).backbone.module
    save_file(other.state_dict(), str(tmp_path / "mnv3.safetensors"))
    with pytest.raises(ConfigError, match=r"mnv3.safetensors does not fit this ResNet: 120 of its tensors missing, "
                                          r"0 of another shape, 244 unknown \(e.g. 'conv1.weight'\); give weights"):
        _build("torchvision:resnet18", exits=[0], input_shape=SMALL,
               pretrained=str(tmp_path / "mnv3.safetensors"))


@pytest.mark.parametrize("source,options,message", [
    ("timm:resnet5000", {}, r"^timm has no model 'resnet5000'; close names: resnet50, "),
    ("torchvision:resnet5000", {}, r"^torchvision has no model 'resnet5000'; close names: resnet50, "),
    ("torchvision:resnet18", dict(exits=["layer9"]), r"^exit names \['layer9'\] are not submodules of ResNet"),
    ("timm:convnext_atto", dict(exits=["stages.1", "stages.9"]),
     r"^exit names \['stages.9'\] are not submodules of ConvNeXt"),
    ("torchvision:resnet18", dict(exits=["layer1.0.relu"]), r"^exit after 'layer1.0.relu': that module runs 2 times"),
    ("torchvision:resnet18", dict(exits=[0, 3]), r"^model.exits \[0, 3\]: give sorted, unique indices in 0..2 "),
    ("timm:convnext_atto", dict(exits="every:9"), r"^model.exits 'every:9' places no IC: this model has 3 places"),
    ("torchvision:resnet18", dict(depth=3), r"^torchvision model 'resnet18' with \{'depth': 3\}: .*'depth'"),
])
def test_bad_foreign_inputs_are_one_clear_line(source, options, message):
    options = {"exits": [0], "input_shape": SMALL, **options}
    with pytest.raises(ConfigError, match=message) as e:
        _build(source, **options)
    assert "\n" not in str(e.value)


def test_config_keys_build_train_and_reload_a_timm_model(tmp_path, tiny_cfg, capsys):
    _needs("timm:convnext_atto")
    cfg = tiny_cfg(regime="joint", **{"model.backbone": "timm:convnext_atto", "model.exits": "[0, 1]",
                                      "model.head": "pooled", "data.synthetic": "{size: 32, n_train: 140, n_test: 35}"})
    run = exitlab.train(cfg, tmp_path / "run")
    spec = json.loads((run / "model.json").read_text())["spec"]
    assert spec["adapter"] == "timm" and spec["exits"] == ["stages.0", "stages.1"]
    assert exitlab.load(run).num_exits == 3
    assert main(["eval", str(run)]) == 0  # the CLI rebuilds it from model.json alone
    assert json.loads((run / "eval.json").read_text())["samples"] == 35
    capsys.readouterr()
