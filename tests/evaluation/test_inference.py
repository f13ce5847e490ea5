"""Real early exit: the same decisions as the simulation, sample for sample, and computation that really stops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exitlab.errors import ConfigError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import ZTW, make_policy
from exitlab.evaluation.sweep import exit_indices, simulate
from exitlab.models import build_model, from_module
from exitlab.models.costs import exit_costs

N, C = 24, 7


def _cnn():
    return build_model("resnet8", num_classes=C, in_chans=3, img_size=16, exits=[0, 1], head="sdn",
                       head_kwargs={"cascade": True})


def _vit():
    return build_model("vit", num_classes=C, in_chans=3, img_size=16, exits=[0, 1, 2], head="cls",
                       backbone_kwargs=dict(dim=32, depth=4, heads=2))


def _adapted():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, C))
    return from_module(net, ["1", "3", "5"], num_classes=C, input_shape=(3, 16, 16), head="pooled")


def _msdnet():  # multi-scale maps between blocks: every scale's rows are compacted together
    model = build_model("msdnet", num_classes=C, in_chans=3, img_size=16, exits="every:1",
                        head_kwargs={"cascade": True},
                        backbone_kwargs=dict(blocks=5, base=1, step=1, channels=4, growth=2, head_width=8))
    with torch.no_grad():  # cascades that lean on the previous exit, so that patience sees neighbours agree
        for head in model.heads[1:]:
            head.cascade.weight.copy_(torch.eye(C) * 2)
    return model


MODELS = {"cnn": _cnn, "vit": _vit, "adapted": _adapted, "msdnet": _msdnet}
POLICY_NAMES = ["confidence", "entropy", "patience", "ztw"]


def _setup(kind: str, policy: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[kind]().eval()
    x = torch.randn(N, 3, 16, 16)
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, N, C]: the all-exits run, as cached for simulation
    E = model.num_exits
    g = torch.Generator().manual_seed(seed)
    pol = (ZTW(torch.rand(E - 1, E - 1, generator=g) + 0.5, torch.randn(E - 1, C, generator=g) * 0.2) if policy == "ztw"
           else make_policy(policy))
    return model, x, logits, pol, g


def _random_thresholds(pol, scores, g, k: int = 3) -> list[float]:
    """Random thresholds at which samples really leave at different exits: quantiles of the running best score
    (max for "above" policies, min for "below") at a random exit, so roughly that share has left by then."""
    E = scores.shape[0]
    if pol.integer:
        return torch.randint(1, E + 1, (k,), generator=g).double().tolist()
    running = scores.cummax(0).values if pol.exit_when == "above" else scores.cummin(0).values  # [E, N]
    out = []
    for _ in range(k):
        j = int(torch.randint(0, E - 1, (1,), generator=g))
        q = torch.rand(1, generator=g, dtype=torch.float64).item() * 0.8 + 0.1
        out.append(torch.quantile(running[j].double(), q).item())
    return out


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_real_early_exit_makes_the_simulated_decisions(kind, policy):
    model, x, logits, pol, g = _setup(kind, policy)
    scores, preds = pol.scores(logits)
    costs = exit_costs(model, (3, 16, 16)).flops
    spread = set()
    for t in _random_thresholds(pol, scores, g):
        want = exit_indices(scores, torch.tensor([t]), pol.exit_when)[0]  # [N]
        spread.update(want.tolist())
        sim = simulate(scores, preds, torch.zeros(N, dtype=torch.long), costs, [t], pol.exit_when)
        for batch in (1, 5, N):
            parts = [early_exit(model, x[i:i + batch], pol, t, costs=costs) for i in range(0, N, batch)]
            exits = torch.cat([r.exits for r in parts])
            assert torch.equal(exits, want), f"{kind}/{policy} t={t} batch={batch}"
            assert torch.equal(torch.cat([r.preds for r in parts]), preds[want, torch.arange(N)])
            got = torch.cat([r.logits for r in parts])
            assert torch.allclose(got, logits[want, torch.arange(N)], atol=1e-5, rtol=1e-5)
            flops = torch.cat([r.flops for r in parts])
            assert torch.equal(flops, costs[want]) and flops.mean().item() == pytest.approx(sim.cost[0].item())
    assert len(spread) > 1  # the thresholds did send samples to different exits


def _batch_sizes_per_block(model, x, pol, t):
    seen: dict[int, int] = {}
    blocks = model.backbone.blocks
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o.shape[0])) for k, b in
             enumerate(blocks)]
    try:
        res = early_exit(model, x, pol, t)
    finally:
        for h in hooks:
            h.remove()
    return seen, res


def test_samples_that_exit_leave_the_batch_and_the_backbone_stops():
    torch.manual_seed(0)
    model = _vit().eval()
    x = torch.randn(N, 3, 16, 16)
    pol = make_policy("confidence")
    seen, res = _batch_sizes_per_block(model, x, pol, 0.0)  # everyone leaves at exit 0 (after block 0)
    assert set(seen) == {0} and (res.exits == 0).all()
    with torch.no_grad():
        scores, _ = pol.scores(torch.stack(model(x)))
    t = scores[0].median().item()
    seen, res = _batch_sizes_per_block(model, x, pol, t)
    for k in range(4):  # block k runs on the samples that passed the exits before it (exits after blocks 0, 1, 2)
        running = int((res.exits >= min(k, 3)).sum())
        assert seen.get(k, 0) == running


def test_defaults_empty_batches_and_bad_thresholds():
    model = _cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    pol = make_policy("confidence", threshold=0.0)
    assert early_exit(model, x, pol).exits.tolist() == [0, 0, 0]  # the policy's own threshold
    empty = early_exit(model, x[:0], pol)
    assert empty.exits.shape == (0,) and empty.logits.shape == (0, C) and empty.mean_flops is None
    with pytest.raises(ConfigError, match="no threshold"):
        early_exit(model, x, make_policy("entropy"))
    with pytest.raises(ConfigError, match="outside its range"):
        early_exit(model, x, pol, 1.01)
    with pytest.raises(ConfigError, match="whole numbers"):
        early_exit(model, x, make_policy("patience"), 1.5)
