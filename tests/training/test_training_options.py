"""Training options users expect: gradient clipping by norm, learning-rate warm-up, label smoothing, and weight
decay only on weight matrices (not norms, biases, position embeddings or CLS tokens)."""

import math

import pytest
import torch
import torch.nn.functional as F

from exitlab.models import build_model
from exitlab.models.placement import nearest_distinct
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.loop import _clip_and_check, lr_at, make_optimizer
from exitlab.training.objective import exit_losses
from exitlab.training.phases import Phase


def test_gradient_clipping_matches_torch_and_leaves_small_gradients_alone():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 8) * 10
    for m in (a, b):
        (m(x) ** 2).sum().backward()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    assert _clip_and_check(opt, 1.0)
    torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    norm = torch.stack([p.grad.norm() for p in a.parameters()]).norm()
    assert norm == pytest.approx(1.0, rel=1e-5)
    before = [p.grad.clone() for p in a.parameters()]
    assert _clip_and_check(opt, 100.0)  # under the limit: unchanged
    assert all(torch.equal(p.grad, g) for p, g in zip(a.parameters(), before))


def test_non_finite_gradients_are_reported_even_with_clipping():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not _clip_and_check(torch.optim.SGD([p], lr=0.1), 1.0)


def test_warm_up_rises_linearly_then_the_schedule_runs_over_the_rest():
    phase = Phase(2, 1, PhaseConfig(lr=1.0, schedule="cosine"))
    lrs = [lr_at(phase, s, 110, warmup=10) for s in range(110)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))  # cosine decreases after the warm-up
    constant = Phase(2, 1, PhaseConfig(lr=0.2, schedule="constant"))
    assert [lr_at(constant, s, 20, warmup=4) for s in (0, 3, 4, 19)] == pytest.approx([0.05, 0.2, 0.2, 0.2])
    assert lr_at(phase, 5, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 100)))  # no warm-up: as before


def test_label_smoothing_is_torch_cross_entropy_per_exit():
    torch.manual_seed(0)
    outs = [torch.randn(16, 7) for _ in range(3)]
    y = torch.randint(0, 7, (16,))
    got = exit_losses(outs, y, label_smoothing=0.1)
    want = torch.stack([F.cross_entropy(o, y, label_smoothing=0.1) for o in outs])
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, exit_losses(outs, y))


def test_decay_on_weights_only_spares_norms_biases_position_embeddings_and_cls_tokens():
    model = build_model("vit", num_classes=7, img_size=16, exits=[0], head="cls",
                        backbone_kwargs={"dim": 16, "depth": 2, "heads": 2, "patch_size": 4})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, Phase(2, 1, PhaseConfig(optimizer="adamw", weight_decay=0.05,
                                                           decay_params="weights")), model)
    decay, spared = opt.param_groups
    assert decay["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    spared_names = {names[id(p)] for p in spared["params"]}
    assert "backbone.stem.pos" in spared_names and "backbone.stem.cls" in spared_names
    assert any(n.endswith("norm1.weight") for n in spared_names) and any(n.endswith(".bias") for n in spared_names)
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) + len(spared["params"]) == len(params)
    default = make_optimizer(params, Phase(2, 1, PhaseConfig(weight_decay=0.05)), model)
    assert len(default.param_groups) == 1 and default.param_groups[0]["weight_decay"] == 0.05  # "all": as before


def test_training_with_every_option_on_runs_and_clips(tiny_cfg, tmp_path):
    from exitlab.runs.files import read_jsonl
    from exitlab.training.engine import train

    cfg = tiny_cfg(regime="joint", **{"phase2.grad_clip": 0.5, "phase2.warmup_epochs": 0.5,
                                      "phase2.label_smoothing": 0.1, "phase2.decay_params": "weights"})
    out = train(cfg, tmp_path / "run")
    (record,) = read_jsonl(out / "metrics.jsonl")
    assert all(math.isfinite(v) for v in record["train_exit_losses"])


@pytest.mark.parametrize("seed", range(40))
def test_flops_placement_picks_the_best_distinct_blocks(seed):
    """Exhaustive check of the dynamic programme behind "flops:N" against every choice of N distinct blocks."""
    import itertools

    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 9, (1,), generator=g))
    k = int(torch.randint(1, m + 1, (1,), generator=g))
    values = torch.rand(m, generator=g, dtype=torch.float64).sort().values
    targets = torch.rand(k, generator=g, dtype=torch.float64).sort().values
    cost = lambda c: sum(abs(values[i] - targets[j]).item() for j, i in enumerate(c))  # noqa: E731
    got = nearest_distinct(values, targets)
    assert got == sorted(set(got)) and len(got) == k
    assert cost(got) == pytest.approx(min(cost(c) for c in itertools.combinations(range(m), k)))


def test_stop_rules_and_plateau_cuts():
    from exitlab.training.stopping import Stopper

    mean = Stopper(patience=2, rule="mean")
    every = Stopper(patience=2, rule="every")
    # head 0 keeps improving while head 1 stalls and the mean stalls too
    for scores in ([0.5, 0.9], [0.51, 0.5], [0.52, 0.5]):
        for s in (mean, every):
            s.update(sum(scores) / 2, scores)
    assert mean.done and not every.done  # the paper code's rule waits for every head
    for scores in ([0.52, 0.5], [0.52, 0.5]):
        every.update(sum(scores) / 2, scores)
    assert every.done
    plateau = Stopper(plateau=True, plateau_patience=2, plateau_factor=0.1)
    for score in (0.5, 0.4, 0.4, 0.6, 0.5, 0.5):
        plateau.update(score, [score])
    assert plateau.lr_scale == pytest.approx(0.01)  # cut after epochs 3 and 6
    assert Stopper.from_state(plateau.state()) == plateau  # checkpoints carry it exactly


def test_plateau_schedule_scales_the_learning_rate_it_records(tiny_cfg, tmp_path):
    from exitlab.runs.files import read_jsonl
    from exitlab.training.engine import train

    cfg = tiny_cfg(regime="joint", **{"phase2.schedule": "plateau", "phase2.plateau_patience": 1,
                                      "phase2.plateau_factor": 0.5, "phase2.epochs": 3, "phase2.patience": 3})
    records = read_jsonl(train(cfg, tmp_path / "run") / "metrics.jsonl")
    scales = [r["lr_scale"] for r in records]
    assert scales[0] == 1.0 and all(b in (a, a * 0.5) for a, b in zip(scales, scales[1:]))
    phase = Phase(2, 1, cfg.phase2)
    assert lr_at(phase, 5, 100, scale=0.5) == pytest.approx(0.5 * cfg.phase2.lr)  # constant, times the cuts


def test_seeds_for_init_data_order_and_split_can_be_set_apart(tiny_cfg, tmp_path):
    from exitlab.training.engine import _Run
    from exitlab.training.planning import preflight

    def run(cfg, out):
        return _Run(cfg, out, preflight(cfg))

    base = run(tiny_cfg(regime="joint"), tmp_path / "a")
    init = run(tiny_cfg(regime="joint", init_seed=5), tmp_path / "b")
    split = run(tiny_cfg(regime="joint", split_seed=5), tmp_path / "c")
    w = lambda r: next(r.model.parameters())  # noqa: E731
    assert not torch.equal(w(base), w(init)) and torch.equal(w(base), w(split))  # init_seed: the weights only
    assert torch.equal(base.data.val.y, init.data.val.y)  # the same split
    assert not torch.equal(base.data.val.x, split.data.val.x)  # split_seed: another split
    from exitlab.training.engine import seed_epoch

    assert seed_epoch(0, 1, 2) != seed_epoch(5, 1, 2)  # order_seed feeds the per-epoch data seed
