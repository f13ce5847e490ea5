"""Real early exit on a text encoder: the simulation's decisions for every policy, at batch 1 and above, with
mixed sequence lengths; samples that leave take their rows of the states and the attention mask with them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.evaluation.inference import early_exit  # noqa: E402
from exitlab.evaluation.policies import POLICIES, ZTW, make_policy  # noqa: E402
from exitlab.evaluation.sweep import exit_indices  # noqa: E402
from exitlab.models.hf import pack  # noqa: E402
from tests.evaluation.test_inference import _random_thresholds  # noqa: E402
from tests.models.test_hf import C, batch, tiny  # noqa: E402

N = 18


def _setup(kind: str, policy: str, head: str):
    model = exitlab.from_hf(tiny(kind), exits=[0, 1, 2], head=head, cascade=policy == "ztw").eval()
    x = pack(*batch(N, width=14, seed=3))  # [N, 3, 14], real lengths 2..14
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, N, C]: the all-exits run, as cached for the simulation
    E = model.num_exits
    g = torch.Generator().manual_seed(1)
    pol = (ZTW(torch.rand(E - 1, E - 1, generator=g) + 0.5, torch.randn(E - 1, C, generator=g) * 0.2) if policy == "ztw"
           else make_policy(policy))
    return model, x, logits, pol, g


def test_every_registered_policy_is_covered():
    assert set(POLICIES.names()) <= {"confidence", "entropy", "patience", "ztw", "regression_patience"}


@pytest.mark.parametrize("kind,head", [("bert", "cls"), ("distilbert", "mean")])
@pytest.mark.parametrize("policy", ["confidence", "entropy", "patience", "ztw"])
def test_real_early_exit_on_text_makes_the_simulated_decisions(kind, head, policy):
    model, x, logits, pol, g = _setup(kind, policy, head)
    scores, preds = pol.scores(logits)
    spread = set()
    for t in _random_thresholds(pol, scores, g):
        want = exit_indices(scores, torch.tensor([t]), pol.exit_when)[0]  # [N]
        spread.update(want.tolist())
        for size in (1, 4, N):
            parts = [early_exit(model, x[i:i + size], pol, t) for i in range(0, N, size)]
            assert torch.equal(torch.cat([r.exits for r in parts]), want), f"{kind}/{policy} t={t} batch={size}"
            assert torch.equal(torch.cat([r.preds for r in parts]), preds[want, torch.arange(N)])
            got = torch.cat([r.logits for r in parts])
            assert torch.allclose(got, logits[want, torch.arange(N)], atol=1e-5, rtol=1e-5)
    assert len(spread) > 1  # the thresholds did send samples to different exits


def test_leaving_samples_leave_every_later_layer_and_a_tokenizer_mapping_works():
    model = exitlab.from_hf(tiny("bert"), exits=[0, 1, 2]).eval()
    ids, mask = batch(N, width=14, seed=3)
    pol = make_policy("confidence")
    with torch.no_grad():
        scores, _ = pol.scores(torch.stack(model(pack(ids, mask))))
    t = scores[0].median().item()  # about half leave at exit 0
    seen: dict[int, tuple[int, int]] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, kwargs, k=k: seen.__setitem__(
        k, (args[0].shape[0], kwargs["attention_mask"].shape[0])), with_kwargs=True)
        for k, layer in enumerate(model.backbone.layers)]
    try:
        res = early_exit(model, {"input_ids": ids, "attention_mask": mask}, pol, t)
    finally:
        for h in hooks:
            h.remove()
    running = int((res.exits >= 1).sum())
    assert 0 < running < N and seen[0][0] == N and seen[1][0] == running
    assert seen[1][1] == running and seen[0][1] == N  # the mask shrank with the states: a row per running sample
