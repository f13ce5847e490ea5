"""GPF: the heads and the combined loss equal a hand computation of the formulas, past states only carry information
forward, real early exit makes the simulated decisions, and it runs on a Hugging Face encoder."""

import pytest
import torch
import torch.nn.functional as F

from exitlab.errors import ConfigError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.sweep import exit_indices
from exitlab.models import build_model
from exitlab.models.costs import exit_costs
from exitlab.models.gpf import gpf_imitation_loss
from exitlab.runs.phase_config import GPFConfig, PhaseConfig
from exitlab.training.objective import phase_loss
from exitlab.training.phases import Phase, plan_phases

C = 7


def _model(exits=(0, 1, 2, 3)):
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=C, img_size=16, exits=list(exits), head="gpf",
                       head_kwargs={"inner": "pooled", "dim": 5}).eval()


def _by_hand(model, feats):
    """Logits of every IC and the imitation loss, from the formulas written out with plain loops."""
    sh, K = model.heads[0].gpf, len(feats)
    s = [torch.relu(head.state[0].fc(f.mean((2, 3)))) for head, f in zip(model.heads, feats)]  # [B, D] each
    P = lambda i, v: v @ sh.reduce_w[i] + sh.reduce_b[i]  # noqa: E731
    G = lambda i, v: v @ sh.gate_w[i] + sh.gate_b[i]  # noqa: E731
    m = lambda j, v: torch.relu(sh.imitators[j][0](v))  # noqa: E731
    logits = []
    for k in range(K):
        past = sum(P(i, s[i]) for i in range(k + 1))
        future = sum((P(j, m(j, s[k])) for j in range(k + 1, K)), torch.zeros_like(past))
        gate = sum(G(i, s[i]) for i in range(k + 1)) / (k + 1)
        beta = torch.sigmoid(sh.balance[1](torch.relu(gate)))
        logits.append(beta * past + (1 - beta) * future)
    terms = []
    for k in range(K - 1):
        cos = [(m(j, s[k]) * s[j]).sum(1) / (m(j, s[k]).norm(dim=1) * s[j].norm(dim=1)) for j in range(k + 1, K)]
        terms.append(torch.cat([1 - c for c in cos]).mean())
    return logits, sum(terms) / (K - 1)


def test_gpf_logits_and_combined_loss_equal_the_formulas_by_hand():
    model = _model()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, C, (6,))
    feats = []
    outs = model(x, feats=feats)
    want, imitation = _by_hand(model, feats)
    for got, w in zip(outs[:-1], want):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[-1], model.backbone(x))  # the backbone's own classifier stays the final exit
    torch.testing.assert_close(gpf_imitation_loss(model.heads, feats), imitation, rtol=1e-5, atol=1e-6)
    assert imitation.item() > 0.01
    # the combined loss: depth-weighted cross-entropies, sum (i + 1) L_i / (n (n + 1) / 2), plus lambda * imitation
    o = PhaseConfig(loss_weights="sdn", gpf=GPFConfig(imitation=0.7))
    loss, per_exit = phase_loss(model, Phase(2, 1, o), x, y)
    ce = torch.stack([F.cross_entropy(z, y) for z in outs])
    n = len(outs)
    hand = sum((i + 1) * ce[i] for i in range(n)) / (n * (n + 1) / 2) + 0.7 * imitation
    torch.testing.assert_close(loss, hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_exit, ce, rtol=1e-5, atol=1e-6)


def test_past_states_reach_later_exits_without_gradient():
    model = _model(exits=(0, 2))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, C, (4,))
    F.cross_entropy(model(x)[1], y).backward()  # exit 1 reads exit 0's state through the carry
    assert model.heads[0].state[0].fc.weight.grad is None  # detached: exit 0's state head is not trained by exit 1
    assert model.heads[0].gpf.reduce_w.grad[0].abs().sum() > 0  # but exit 0's projection, applied at exit 1, is


def test_gpf_early_exit_makes_the_simulated_decisions():
    model = _model()
    x = torch.randn(24, 3, 16, 16)
    pol = make_policy("confidence")
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, N, C]
    scores, preds = pol.scores(logits)
    costs = exit_costs(model, (3, 16, 16)).flops
    t = torch.quantile(scores[1].double(), 0.5).item()
    want = exit_indices(scores, torch.tensor([t]), pol.exit_when)[0]
    assert len(set(want.tolist())) > 1
    for batch in (1, 5, 24):
        parts = [early_exit(model, x[i:i + batch], pol, t, costs=costs) for i in range(0, 24, batch)]
        assert torch.equal(torch.cat([r.exits for r in parts]), want)
        torch.testing.assert_close(torch.cat([r.logits for r in parts]), logits[want, torch.arange(24)],
                                   rtol=1e-5, atol=1e-5)


def test_gpf_trains_and_reloads_from_a_config(tiny_cfg, tmp_path):
    from exitlab import load
    from exitlab.recipes.train import train

    cfg = tiny_cfg(regime="mixed", **{"model.head": "gpf", "model.head_kwargs": "{dim: 8}",
                                      "phase2.gpf.imitation": 1.0, "phase2.loss_weights": "sdn"})
    out = train(cfg, tmp_path / "run")
    model = load(out).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert [o.shape for o in model(x)] == [(3, C)] * 3
    with pytest.raises(ConfigError, match=r"phase2.gpf.imitation is set, but model.head is 'sdn'; set model.head=gpf"):
        plan_phases(tiny_cfg(regime="joint", **{"phase2.gpf.imitation": 1.0}), 3)


def test_gpf_on_a_hugging_face_encoder():
    transformers = pytest.importorskip("transformers")
    import exitlab

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=101, max_position_embeddings=32,
                                            num_labels=C)
    hf = transformers.AutoModelForSequenceClassification.from_config(cfg)
    model = exitlab.from_hf(hf, exits=[0, 1, 2], head="mean", gpf_dim=6)
    ids = torch.randint(5, 101, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[1, 6:] = 0
    y = torch.randint(0, C, (4,))
    loss, per_exit = phase_loss(model, Phase(2, 1, PhaseConfig(loss_weights="sdn", gpf=GPFConfig(imitation=1.0))),
                                {"input_ids": ids, "attention_mask": mask}, y)
    assert per_exit.shape == (4,) and torch.isfinite(loss)
    loss.backward()
    sh = model.heads[0].gpf
    assert sh.imitators[2][0].weight.grad.abs().sum() > 0 and sh.reduce_w.grad.abs().sum() > 0


def test_onnx_export_refuses_gpf_heads_in_one_line(tmp_path):
    pytest.importorskip("onnx")
    from exitlab.deploy.export import export_onnx
    from exitlab.errors import ExitlabError

    with pytest.raises(ExitlabError, match=r"ONNX export of GPF heads is not supported yet"):
        export_onnx(_model(), tmp_path / "out", input_shape=(3, 16, 16))
    assert not (tmp_path / "out").exists()
