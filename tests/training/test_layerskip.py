"""LayerSkip-style training: the layer-dropout schedule per block and step, the exit curriculum per step, what trains,
and exact resume with layer dropout's randomness."""

import math

import pytest
import torch

from exitlab.errors import ConfigError
from exitlab.models import build_model
from exitlab.models.layerdrop import block_rates, layer_dropout, skippable_blocks
from exitlab.recipes.train import train
from exitlab.runs import checkpoint as ckpt
from exitlab.runs.phase_config import LayerSkipConfig, PhaseConfig
from exitlab.training.layerskip import curriculum_weights, exit_mask, time_scale
from exitlab.training.objective import phase_loss
from exitlab.training.phases import Phase, plan_phases
from exitlab.training.planning import preflight
from tests.conftest import train_and_resume


def test_skippable_blocks_are_the_identity_shortcut_residual_blocks():
    def blocks(name, **kw):
        return skippable_blocks(build_model(name, num_classes=7, img_size=16, exits=[0], **kw).backbone)

    assert blocks("resnet20") == [0, 1, 2, 4, 5, 7, 8]  # the first block of stages 2 and 3 downsamples
    assert blocks("resnet8") == [0]
    assert blocks("mobilenetv2") == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    assert blocks("vgg16_bn") == []
    vit = dict(head="cls", backbone_kwargs=dict(dim=32, depth=4, heads=2))
    assert blocks("vit", **vit) == [0, 1, 2, 3]


def test_block_rates_follow_layerskips_exponential_depth_schedule():
    bb = build_model("resnet20", num_classes=7, img_size=16, exits=[0]).backbone
    L, ok = 9, {0, 1, 2, 4, 5, 7, 8}
    want = [0.2 * (2 ** (i / (L - 1)) - 1) if i in ok else 0.0 for i in range(L)]
    assert block_rates(bb, 0.2, "exp") == pytest.approx(want, abs=1e-12)
    assert block_rates(bb, 0.2, "exp")[8] == pytest.approx(0.2) and block_rates(bb, 0.2, "exp")[0] == 0.0
    assert block_rates(bb, 0.2, "linear") == pytest.approx([0.2 * i / 8 if i in ok else 0.0 for i in range(L)])
    assert block_rates(bb, 0.2, "uniform", time_scale=0.5) == pytest.approx([0.1 if i in ok else 0 for i in range(L)])


def test_time_scale_grows_from_zero_to_one_over_the_phase():
    assert time_scale("constant", 3, 10) == 1.0
    assert time_scale("exp", 0, 10) == 0.0 and time_scale("exp", 9, 10) == pytest.approx(1.0)
    assert time_scale("exp", 3, 10) == pytest.approx(2 ** (3 / 9) - 1)
    assert time_scale("linear", 3, 10) == pytest.approx(3 / 9)


def _capture(blocks):
    """Per block: its input and its (layer-dropped) output, recorded by hooks that run after layer dropout's."""
    seen = {}
    hooks = [b.register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(k, (a[0].detach(), o.detach())))
             for k, b in enumerate(blocks)]
    return seen, hooks


@pytest.mark.parametrize("per", ["sample", "batch"])
def test_each_block_is_skipped_with_exactly_the_drawn_mask(per):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=7, img_size=16, exits=[0, 2]).train()
    bb, B = model.backbone, 64
    rates = block_rates(bb, 0.6, "linear")
    x = torch.randn(B, 3, 16, 16)
    torch.manual_seed(123)  # the draws layer dropout will make, in block order, from the CPU generator
    want = {i: (torch.rand(B) < r) if per == "sample" else torch.full((B,), float(torch.rand(())) < r)
            for i, r in enumerate(rates) if r > 0}
    torch.manual_seed(123)
    with layer_dropout(bb, rates, per):
        seen, hooks = _capture(bb.blocks)
        model(x)
    for h in hooks:
        h.remove()
    assert set(want) == {1, 2, 4, 5, 7, 8}  # block 0 has rate 0 (depth 0), 3 and 6 downsample
    for i, drop in want.items():
        inp, out = seen[i]
        same = (out == inp).flatten(1).all(1)  # [B]
        assert torch.equal(same, drop), f"block {i}"
    assert any(d.any() for d in want.values()) and any((~d).any() for d in want.values())
    assert not (seen[0][1] == seen[0][0]).flatten(1).all(1).any()  # rate 0 at depth 0: never skipped


def test_layer_dropout_is_off_in_eval_mode_and_after_the_context():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=7, img_size=16, exits=[0, 2]).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
        with layer_dropout(model.backbone, block_rates(model.backbone, 0.9, "uniform")):
            inside = model(x)
        after = model(x)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(plain, inside, after))


def test_rotational_curriculum_rotates_every_rth_exit_and_keeps_the_final():
    o = LayerSkipConfig(curriculum="rotational", rotation=2)
    assert [exit_mask(o, 5, t, 100) for t in range(3)] == [
        [True, False, True, False, True], [False, True, False, True, True], [True, False, True, False, True]]
    o3 = LayerSkipConfig(curriculum="rotational", rotation=3)
    assert exit_mask(o3, 5, 4, 100) == [False, True, False, False, True]  # (j - 4) % 3 == 0 at IC 1 only
    assert [sum(exit_mask(o3, 5, t, 100)[:-1]) for t in range(6)] == [2, 1, 1, 2, 1, 1]


def test_gradual_curriculum_switches_exits_on_from_the_last_to_the_first():
    o = LayerSkipConfig(curriculum="gradual", fraction=0.5)
    # IC j of E = 5 exits is on once t / T >= 0.5 (5 - j) / 5: IC 3 at 20%, IC 2 at 30%, IC 1 at 40%, IC 0 at 50%
    on_from = {j: next(t for t in range(101) if exit_mask(o, 5, t, 100)[j]) for j in range(4)}
    assert on_from == {3: 20, 2: 30, 1: 40, 0: 50}
    assert exit_mask(o, 5, 0, 100) == [False] * 4 + [True]
    assert exit_mask(LayerSkipConfig(), 5, 0, 100) == [True] * 5


def test_curriculum_weights_renormalise_the_exits_that_are_on():
    w = curriculum_weights((0.1, 0.2, 0.3, 0.4), [True, False, True, True])
    assert w == pytest.approx([0.125, 0.0, 0.375, 0.5]) and math.isclose(sum(w), 1.0)


def test_only_the_curriculums_exits_get_a_loss_at_each_step():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=7, img_size=16, exits=[0, 2, 4, 6], head="pooled").train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 7, (6,))
    o = PhaseConfig(layerskip=LayerSkipConfig(curriculum="rotational", rotation=2))
    phase = Phase(2, 1, o, (0.2,) * 5)
    for step, on in ((0, [0, 2]), (1, [1, 3])):
        model.zero_grad()
        loss, per_exit = phase_loss(model, phase, x, y, step=step, total=10)
        torch.testing.assert_close(loss, per_exit[on + [4]].mean())  # 1/3 each for the two ICs and the final exit
        loss.backward()
        grads = [h.fc.weight.grad for h in model.heads]
        assert [j for j, g in enumerate(grads) if g is not None and g.abs().sum() > 0] == on


def test_the_layerskip_regime_is_joint_training_with_its_preset(tiny_cfg):
    (p,) = plan_phases(tiny_cfg(regime="layerskip"), 3)
    assert p.kind == 2 and p.trains == "all"
    ls = p.options.layerskip
    assert (ls.rate, ls.depth_scale, ls.curriculum) == (0.2, "exp", "rotational")
    (p,) = plan_phases(tiny_cfg(regime="layerskip", **{"phase2.layerskip.rate": 0.1,
                                                      "phase2.layerskip.curriculum": "gradual"}), 3)
    assert (p.options.layerskip.rate, p.options.layerskip.curriculum) == (0.1, "gradual")  # the config's own win
    (p,) = plan_phases(tiny_cfg(regime="joint"), 3)
    assert (p.options.layerskip.rate, p.options.layerskip.curriculum) == (0.0, "none")  # the preset: layerskip's


def test_settings_a_phase_cannot_use_are_refused(tiny_cfg):
    with pytest.raises(ConfigError, match=r"phase3.layerskip.rate is set, but phase 3 ignores it: its backbone is "):
        plan_phases(tiny_cfg(regime="disjoint", **{"phase3.layerskip.rate": 0.1}), 3)
    with pytest.raises(ConfigError, match=r"phase1.layerskip.curriculum is set, but phase 1 ignores it"):
        plan_phases(tiny_cfg(regime="mixed", **{"phase1.layerskip.curriculum": "gradual"}), 3)
    with pytest.raises(ConfigError, match=r"phase2.layerskip.rate is set, but this backbone has no block that can be "):
        preflight(tiny_cfg(regime="layerskip", **{"model.backbone": "vgg16_bn", "model.exits": "[2]"}))
    with pytest.raises(ConfigError, match=r"phase2.layerskip.rate must be in \[0, 1\), got 1.0"):
        tiny_cfg(**{"phase2.layerskip.rate": 1.0})
    with pytest.raises(ConfigError, match=r"phase2.layerskip.curriculum: 'rot'; choose none, rotational or gradual"):
        tiny_cfg(**{"phase2.layerskip.curriculum": "rot"})


def test_layer_dropout_changes_training_and_an_interrupted_run_resumes_exactly(tiny_cfg, tmp_path):
    over = {"phase2.epochs": 2, "phase2.layerskip.rate": 0.5, "phase2.layerskip.depth_scale": "uniform",
            "phase2.layerskip.curriculum": "rotational"}
    cfg = tiny_cfg(regime="layerskip", **over)
    full, part = train_and_resume(cfg, tmp_path, "00-phase2-e001.safetensors")
    a, _ = ckpt.load_tensors(full / "model.safetensors")
    b, _ = ckpt.load_tensors(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = train(tiny_cfg(regime="joint", **{**over, "phase2.layerskip.rate": 0.0}), tmp_path / "plain")
    c, _ = ckpt.load_tensors(plain / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # layer dropout did act in the training loop



def test_a_shared_head_is_the_final_classifier_at_every_exit(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    vit = dict(dim=32, depth=4, heads=2)
    model = build_model("vit", num_classes=7, img_size=16, exits=[0, 1, 2], head="shared", backbone_kwargs=vit)
    assert list(model.heads.parameters()) == []  # no weights of its own: the backbone's final classifier's
    x = torch.randn(3, 3, 16, 16)
    feats = []
    outs = model(x, feats=feats)
    for z, h in zip(outs[:-1], feats):
        assert torch.equal(z, model.backbone.final(h))
    with pytest.raises(ConfigError, match=r"model.head=shared reuses the final classifier, which reads 64-channel map "
                                          r"features, but the exits after blocks \[0, 1\] give another shape"):
        build_model("resnet8", num_classes=7, img_size=16, exits=[0, 1], head="shared")
    with pytest.raises(ConfigError, match=r"model.head=shared: the ICs are the backbone's final classifier, which "
                                          r"phase 3 keeps frozen"):
        plan_phases(tiny_cfg(regime="disjoint", **{"model.head": "shared"}), 3)
    from exitlab import load

    cfg = tiny_cfg(regime="layerskip", **{"model.backbone": "vit", "model.head": "shared", "model.exits": "[0, 1]",
                                          "model.backbone_kwargs": "{dim: 32, depth: 3, heads: 2}"})
    out = train(cfg, tmp_path / "run")
    again = load(out).eval()
    with torch.no_grad():
        got = again(x)
    bb = again.backbone
    assert len(got) == 3 and torch.equal(got[0], bb.final(bb.blocks[0](bb.stem(x))))


def test_layer_dropout_skips_hugging_face_encoder_layers_per_sample():
    transformers = pytest.importorskip("transformers")
    import exitlab

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=101, max_position_embeddings=32,
                                            num_labels=7, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # (no dropout: its draws would interleave with layer dropout's and this test predicts the draws)
    model = exitlab.from_hf(transformers.AutoModelForSequenceClassification.from_config(cfg), exits=[0, 1, 2])
    model.train()
    bb = model.backbone
    assert skippable_blocks(bb) == [0, 1, 2, 3]
    rates = block_rates(bb, 0.7, "linear")
    assert rates == pytest.approx([0.0, 0.7 / 3, 1.4 / 3, 0.7])
    ids = torch.randint(5, 101, (16, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones(16, 8, dtype=torch.long)}
    torch.manual_seed(5)
    want = {i: torch.rand(16) < r for i, r in enumerate(rates) if r > 0}
    torch.manual_seed(5)
    seen = {}
    with layer_dropout(bb, rates):
        hooks = [layer.register_forward_hook(
            lambda m, a, o, k=k: seen.__setitem__(k, (a[0].detach(), (o[0] if isinstance(o, tuple) else o).detach())))
            for k, layer in enumerate(bb.layers)]
        model(batch)
    for h in hooks:
        h.remove()
    for i, drop in want.items():
        inp, out = seen[i]
        assert torch.equal((out == inp).flatten(1).all(1), drop), f"layer {i}"
    assert any(d.any() for d in want.values())
