"""MSDNet: per-exit parameters and FLOPs equal to the reference code's, multi-scale state between blocks, its own
classifiers as the exits, and the regimes, analyses, evaluation and export on it."""

import json

import pytest
import torch

from exitlab.errors import ConfigError, ExitlabError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.models import build_model, model_from_spec
from exitlab.models.contract import MultiScaleFeature
from exitlab.models.costs import exit_costs
from exitlab.models.heads import CoarsestScale
from exitlab.models.msdnet import MSDNetHead, layer_plan

# Reference counts per exit: see the docstring of test_parameters_and_flops_per_exit_equal_the_reference_code.
REFERENCE = {
    "anytime": ({}, {
        "params": [433876, 876792, 1274952, 1695548, 2178352, 2603252, 3067960],
        "macs": [14967296, 25259008, 36780544, 45972480, 56933888, 66529280, 75487744]}),
    "batch": (dict(blocks=5, step_mode="lin_grow", step=1, base=1), {
        "params": [299704, 649740, 1018308, 1492424, 2078924],
        "macs": [6792704, 14209024, 27278848, 41373696, 58087936]}),
}
TINY = dict(blocks=5, base=1, step=1, channels=4, growth=2, head_width=8)


def _tiny(head=None, classes=7, head_kwargs=None, **kw):
    torch.manual_seed(0)
    return build_model("msdnet", num_classes=classes, img_size=16, exits="every:1", head=head, head_kwargs=head_kwargs,
                       backbone_kwargs={**TINY, **kw})


@pytest.mark.parametrize("config", list(REFERENCE))
def test_parameters_and_flops_per_exit_equal_the_reference_code(config):
    """Per-exit counts, cumulative (blocks 0..j plus classifiers 0..j), one 3x32x32 image, 100 classes, against
    ``REFERENCE``: the reference code kalviny/MSDNet-PyTorch (commit f654595) run on CPU, its own
    ``op_counter.measure_model`` for the parameters and forward hooks adding up the multiply-adds of every Conv2d and
    Linear (the ops exitlab's FLOPs count, 2 FLOPs each), by

        OMP_NUM_THREADS=1 python benchmarks/count_msdnet_reference.py /path/to/MSDNet-PyTorch

    The reference was built as its CIFAR-100 anytime command (``--nBlocks 7 --stepmode even --step 2 --base 4
    --nChannels 16``; defaults growthRate 6, grFactor 1-2-4, bnFactor 1-2-4, prune max, reduction 0.5, bottleneck)
    and its batch-computation command (``--nBlocks 5 --stepmode lin_grow --step 1 --base 1 --nChannels 16``).
    """
    kwargs, ref = REFERENCE[config]
    model = build_model("msdnet", num_classes=100, img_size=32, backbone_kwargs=kwargs)
    assert model.num_exits == len(ref["params"]) and model.head_name == "msdnet"
    costs = exit_costs(model, (3, 32, 32))
    assert [e.params for e in costs.exits] == ref["params"]
    assert [e.flops for e in costs.exits] == [2 * m for m in ref["macs"]]  # exitlab: 2 FLOPs per multiply-add
    assert sum(p.numel() for p in model.parameters()) == ref["params"][-1]


def test_the_cifar_plan_drops_a_scale_after_layers_7_and_13():
    plan = layer_plan(7, 4, 2, "even", 3)
    assert [len(rows) for rows in plan] == [4, 2, 2, 2, 2, 2, 2]
    flat = [io for rows in plan for io in rows]
    assert [i + 1 for i, (a, b) in enumerate(flat) if a > b] == [7, 13]
    model = build_model("msdnet", num_classes=100, img_size=32)
    assert model.backbone.scales == [3, 3, 2, 2, 2, 1, 1]
    # Base width by hand: 16 + 4 x 6 = 40 after block 0; 52 after block 1; layer 7 gives 58, halved to 29, layer 8
    # 35; 41, 47; 53, 59; layer 13 gives 65, halved to 32, layer 14 38; 44, 50. Scale s has width x (1, 2, 4)[s].
    feats = {}
    model.backbone.run(torch.zeros(2, 3, 32, 32), set(range(7)), lambda i, h: feats.setdefault(i, h))
    assert [[tuple(m.shape[1:]) for m in feats[i].maps] for i in (0, 2, 6)] == [
        [(40, 32, 32), (80, 16, 16), (160, 8, 8)], [(70, 16, 16), (140, 8, 8)], [(200, 8, 8)]]
    assert [p.channels for p in model.backbone.feature_info] == [4 * w for w in (40, 52, 35, 47, 59, 38, 50)]


def test_the_state_between_blocks_slices_every_scale_by_rows():
    maps = [torch.randn(5, 2, 4, 4), torch.randn(5, 4, 2, 2)]
    h = MultiScaleFeature(maps)
    keep = torch.tensor([True, False, True, True, False])
    part = h[keep]
    assert len(part) == 3 and all(torch.equal(p, m[keep]) for p, m in zip(part.maps, maps))
    assert part.coarsest is part.maps[-1]


def test_real_early_exit_runs_every_scale_of_later_blocks_on_the_survivors_only():
    model = _tiny().eval()
    x = torch.randn(20, 3, 16, 16)
    with torch.no_grad():
        scores, _ = make_policy("confidence").scores(torch.stack(model(x)))
    t = scores[1].median().item()
    seen = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, [len(x) for x in o.maps]))
             for k, b in enumerate(model.backbone.blocks)]
    res = early_exit(model, x, make_policy("confidence"), t)
    for h in hooks:
        h.remove()
    for k, sizes in seen.items():  # block k runs on the samples that passed exits 0..k-1, at every scale
        assert sizes == [int((res.exits >= k).sum())] * len(sizes)
    assert len(set(res.exits.tolist())) > 1


def test_its_own_classifiers_are_the_default_head_and_other_heads_read_the_coarsest_scale():
    model = _tiny()
    assert model.head_name == "msdnet" and model.spec.head == "msdnet"
    assert all(isinstance(h, MSDNetHead) for h in model.heads) and isinstance(model.backbone.final, MSDNetHead)
    assert [h.fc.in_features for h in [*model.heads, model.backbone.final]] == [8] * 5  # head_width, ICs too
    assert _tiny(head_kwargs={"width": 16}).heads[0].fc.in_features == 16
    again = model_from_spec(model.spec)
    again.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(again.eval()(x), model.eval()(x)))
    sdn = _tiny(head="sdn").eval()
    assert all(isinstance(h, CoarsestScale) for h in sdn.heads)
    feats = {}
    sdn.backbone.run(x, {0}, lambda i, h: feats.setdefault(i, h))
    assert torch.equal(sdn.heads[0](feats[0]), sdn.heads[0].inner(feats[0].coarsest))
    assert sdn.heads[0].inner.fc.in_features == sdn.backbone.feature_info[0].channels * 16  # 4x4 SDN grid


def test_bad_options_and_token_exits_are_one_line_errors():
    with pytest.raises(ConfigError, match="msdnet blocks must be a whole number >= 2"):
        build_model("msdnet", num_classes=7, backbone_kwargs={"blocks": 1})
    with pytest.raises(ConfigError, match="growth \\* growth_factors must be even"):
        build_model("msdnet", num_classes=7, backbone_kwargs={"growth": 3, "growth_factors": [1, 3, 4]})
    with pytest.raises(ConfigError, match="keeps 2 scales after its last layer"):
        build_model("msdnet", num_classes=7, backbone_kwargs={"blocks": 4, "base": 1, "step": 1})
    with pytest.raises(ConfigError, match="msdnet step_mode must be 'even' or 'lin_grow'"):
        build_model("msdnet", num_classes=7, backbone_kwargs={"step_mode": "linear"})
    with pytest.raises(ConfigError, match="head 'msdnet' needs feature maps"):
        build_model("vit", num_classes=7, img_size=16, exits=[0], head="msdnet",
                    backbone_kwargs={"dim": 16, "depth": 2, "heads": 2})
    with pytest.raises(ConfigError, match="head 'cls' reads a CLS token"):
        _tiny(head="cls")


@pytest.mark.parametrize("regime", ["joint", "disjoint", "mixed"])
def test_the_regimes_train_msdnet_end_to_end(tiny_cfg, tmp_path, regime):
    from exitlab.recipes.train import train
    from exitlab.runs.files import read_jsonl

    cfg = tiny_cfg(regime=regime, **{"model.backbone": "msdnet", "model.exits": "every:1",
                                     "model.backbone_kwargs": json.dumps(TINY).replace('"', ""),
                                     "data.synthetic": "{size: 16, n_train: 140, n_test: 70}"})
    out = train(cfg, tmp_path / "run")
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["phase"] for r in rows] == {"joint": [2], "disjoint": [1, 3], "mixed": [1, 2]}[regime]
    assert json.loads((out / "model.json").read_text())["spec"]["head"] == "msdnet"
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_rank_mi_gradients_landscape_and_connectivity_run_on_the_multi_scale_state():
    from exitlab.analysis.connectivity import linear_path
    from exitlab.analysis.gradients import gradient_contributions
    from exitlab.analysis.landscape import landscape_1d
    from exitlab.analysis.mi import mi_profile
    from exitlab.analysis.rank import rank_profile

    model = _tiny(classes=3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(30, 3, 16, 16, generator=g), torch.arange(3).repeat(10)) for _ in range(2)]
    prof = rank_profile(model, batches, max_features=None)
    maps = {}
    model.eval().backbone.run(batches[0][0][:1], {0, 4}, lambda i, h: maps.setdefault(i, h))
    assert prof["features"][0] == sum(m[0].numel() for m in maps[0].maps)  # every scale, flattened
    assert prof["features"][4] == maps[4].coarsest[0].numel()  # the last block keeps the coarsest scale only
    pooled = rank_profile(model, batches, pool=1)
    assert pooled["features"][0] == sum(m.shape[1] for m in maps[0].maps)  # one mean per channel of each scale
    mi = mi_profile(model, batches, max_features=100)
    assert mi["blocks"] == [0, 1, 2, 3, 4] and len(mi["exits"]["i_yhat_y"]) == 5
    grads = gradient_contributions(model, batches)
    assert len(grads["norm"]) == 5 and all(v is not None for v in grads["norm"][0])
    line = landscape_1d(model, batches[:1], steps=3, span=0.5, params="heads")
    assert len(line["loss"]) == model.num_exits
    other = _tiny(classes=3)
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    path = linear_path(model, other, batches[:1], batches[1:], points=3)
    assert path["kind"] == "linear" and path["t"] == [0.0, 0.5, 1.0] and len(path["loss"]) == model.num_exits
    with pytest.raises(ExitlabError, match="weight matching .* not for MSDNet"):
        linear_path(model, other, batches[:1], batches[1:], points=3, align=True)


@pytest.mark.slow  # about 30 s on 2 shared cores (three graphs through the dynamo exporter)
def test_staged_onnx_export_passes_every_scale_between_stages(tmp_path):
    pytest.importorskip("onnxruntime")
    from exitlab.deploy.export import OnnxModel, export_onnx
    from tests.deploy.test_export import assert_same_as_pytorch, tiny_model

    model = tiny_model("msdnet", [0, 2], head="msdnet", cascade=True, img=16, **TINY)
    man = export_onnx(model, tmp_path, input_shape=(1, 16, 16))
    scales = model.backbone.scales  # [3, 3, 2, 1, 1]: stage 1 takes 3 maps, stage 2 takes 2
    assert [g.inputs for g in man.graphs] == [
        ["x"], ["feature_in_0", "feature_in_1", "feature_in_2", "prev_logits"],
        ["feature_in_0", "feature_in_1"]] and scales[0] == 3 and scales[2] == 2
    assert man.graphs[1].outputs == ["feature_0", "feature_1", "logits"]
    torch.manual_seed(4)
    used = assert_same_as_pytorch(model, OnnxModel(tmp_path), torch.randn(48, 1, 16, 16))
    assert len(used) >= 2


def test_eval_mode_restores_every_module_and_calls_a_modules_own_train():
    from exitlab.models.core import eval_mode

    calls = []

    class Own(torch.nn.Module):  # a module with its own train(), e.g. one that freezes its statistics
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    model = _tiny().train()
    model.backbone.blocks[1].eval()  # mixed modes, as in phase 3
    model.heads[0].add_module("own", Own())
    before = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before and calls == [False, True]
