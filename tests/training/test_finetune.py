"""Fine-tuning options (phaseN.finetune): validated like every option; separate backbone and head learning rates,
layer-wise decay and frozen embeddings reach the optimizer's groups and the training step."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from exitlab.errors import ConfigError  # noqa: E402
from exitlab.models.hf import build_hf  # noqa: E402
from exitlab.runs.config import load_config  # noqa: E402
from exitlab.runs.finetune import FinetuneConfig  # noqa: E402
from exitlab.runs.phase_config import PhaseConfig  # noqa: E402
from exitlab.training.finetune import embedding_params, lr_scales  # noqa: E402
from exitlab.training.loop import PhaseState, make_optimizer, set_trainable, train_epoch  # noqa: E402
from exitlab.training.phases import Phase, exit_weights, plan_phases  # noqa: E402

ENC = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32,
       "max_position_embeddings": 32}


def _model():
    torch.manual_seed(0)
    return build_hf("hf:bert", num_labels=3, exits=[0, 1], backbone_kwargs=ENC, vocab_size=50)


def _phase(kind: int, **ft) -> Phase:
    o = PhaseConfig(optimizer="adamw", lr=0.01, weight_decay=0.0, finetune=FinetuneConfig(**ft))
    return Phase(kind, 1, o, exit_weights(kind, o, 3))


@pytest.mark.parametrize("sets, message", [
    (["phase1.finetune.layer_decay=0"], "phase1.finetune.layer_decay must be in (0, 1] (1: no decay), got 0.0"),
    (["phase2.finetune.backbone_lr=-1"], "phase2.finetune.backbone_lr must be >= 0 (0: the phase's lr), got -1.0"),
    (["phase2.finetune.freeze_embeddings=3"], "phase2.finetune.freeze_embeddings: expected bool, got 3"),
    (["phase2.finetune.layer_decay=0.8"], "phase2.finetune.layer_decay/freeze_embeddings apply to text encoders "
                                          "(model.backbone hf:...), not 'resnet8'; remove them"),
    (["phase2.finetune.warmup=1"], "phase2.finetune.warmup: unknown key; valid keys here: backbone_lr, "
                                   "freeze_embeddings, head_lr, layer_decay"),
])
def test_bad_finetune_options_are_one_error_naming_the_key(sets, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    assert str(e.value) == message


def test_phase3_refuses_the_backbone_options_it_would_ignore():
    cfg = load_config(None, ["regime=disjoint", "phase3.finetune.backbone_lr=0.1"])
    with pytest.raises(ConfigError) as e:
        plan_phases(cfg, num_exits=3)
    assert str(e.value) == ("phase3.finetune.backbone_lr is set, but phase 3 ignores it: it trains the heads alone "
                            "on a frozen backbone (head_lr applies); remove it")


def test_layer_decay_and_separate_rates_give_each_parameter_its_scale():
    model = _model()
    ft = FinetuneConfig(backbone_lr=0.001, head_lr=0.01, layer_decay=0.5)
    scales = lr_scales(model, ft, 0.01)
    enc = model.backbone
    assert {scales[id(p)] for p in model.heads.parameters()} == {1.0}  # heads: 0.01 / 0.01
    assert {scales[id(p)] for p in enc.model.classifier.parameters()} == {1.0}  # the final classifier is a head
    assert _one(scales, enc.base.pooler) == pytest.approx(0.1)  # backbone, not decayed
    for k, layer in enumerate(enc.layers):  # 3 layers: the top one decays once
        assert _one(scales, layer) == pytest.approx(0.1 * 0.5 ** (3 - k))
    assert {round(scales[id(p)], 9) for p in embedding_params(model)} == {round(0.1 * 0.5 ** 4, 9)}


def _one(scales: dict, module) -> float:
    values = {round(scales[id(p)], 9) for p in module.parameters()}
    assert len(values) == 1, values
    return values.pop()


def test_the_training_step_uses_each_groups_scaled_rate_and_frozen_embeddings_stay():
    model = _model()
    phase = _phase(2, backbone_lr=0.001, freeze_embeddings=True)
    opt = make_optimizer(set_trainable(model, phase), phase, model)
    emb = [p.detach().clone() for p in embedding_params(model)]
    assert all(not p.requires_grad for p in embedding_params(model))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (8, 6), generator=g)
    x = torch.stack([ids, torch.ones_like(ids), torch.zeros_like(ids)], 1)
    batches = [(x, torch.randint(0, 3, (8,), generator=g))]
    train_epoch(PhaseState(model, phase, batches_loader(batches), opt, total_steps=1))
    lrs = sorted((round(grp["lr"], 6), round(grp["lr_scale"], 6)) for grp in opt.param_groups)
    assert lrs == [(0.001, 0.1), (0.01, 1.0)]  # cosine at step 0 is the peak rate
    assert all(torch.equal(a, b) for a, b in zip(emb, embedding_params(model)))
    assert any(p.grad is not None for p in model.backbone.layers.parameters())


class batches_loader(list):  # noqa: N801 - a list of batches that says where they live, as loaders do
    device = torch.device("cpu")


def test_defaults_change_nothing():
    model = _model()
    phase = _phase(2)
    opt = make_optimizer(set_trainable(model, phase), phase, model)
    assert len(opt.param_groups) == 1 and "lr_scale" not in opt.param_groups[0]
