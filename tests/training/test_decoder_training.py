"""Training causal LMs with exits through exitlab's phases: the token-level loss, every regime, exact resume."""

import pytest
import torch

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.data.lm import LMSource  # noqa: E402
from exitlab.errors import ConfigError, DataError  # noqa: E402
from exitlab.models.causal import from_hf_causal, tiny_llama  # noqa: E402
from exitlab.runs.config import RunConfig, from_dict, to_dict  # noqa: E402
from exitlab.training.objective import exit_losses  # noqa: E402
from tests.conftest import interrupt_after  # noqa: E402

V, T = 23, 12


def _source(seed=0):
    """Text with structure: each token is the previous one plus 1 or 2 (mod V), so the loss can fall."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        steps = torch.randint(1, 3, (n, T + 1), generator=g)
        seq = (torch.randint(0, V, (n, 1), generator=g) + steps.cumsum(1)) % V
        return seq[:, :-1].clone(), seq[:, 1:].clone()

    return LMSource("toy", {"train": split(48), "val": split(16), "test": split(16)}, V)


def _model(head="lm"):
    return from_hf_causal(tiny_llama(vocab_size=V, layers=3, hidden=32, heads=2, context=T, seed=0), exits=[0, 1],
                          head=head)


def _config(**extra):
    d = to_dict(RunConfig())
    d["data"].update(batch_size=8, eval_batch_size=16)
    d.update(progress=False, threads=1, device="cpu", **extra)
    return from_dict(RunConfig, d)


def test_token_level_loss_is_the_mean_next_token_cross_entropy_of_each_exit():
    outs = [torch.randn(2, 5, 7) for _ in range(3)]
    y = torch.randint(0, 7, (2, 5))
    want = torch.stack([torch.nn.functional.cross_entropy(o.reshape(-1, 7), y.reshape(-1)) for o in outs])
    torch.testing.assert_close(exit_losses(outs, y), want)


@pytest.mark.parametrize("regime,head", [("joint", "shared"), ("disjoint", "lm"), ("mixed", "lm"),
                                         ("layerskip", "shared")])
def test_every_regime_trains_a_decoder_and_lowers_the_loss(tmp_path, regime, head):
    out = exitlab.train(_model(head), tmp_path / regime, data=_source(), config=_config(), regime=regime, budget=4,
                        phase1={"lr": 3e-3, "optimizer": "adamw"}, phase2={"lr": 3e-3, "optimizer": "adamw"},
                        phase3={"lr": 3e-3, "optimizer": "adamw"})
    records = exitlab.RunDir(out).metrics()
    first, last = records[0], records[-1]
    assert last["train_loss"] < first["train_loss"]
    assert len(last["val_acc"]) == 3 and max(last["val_acc"]) > 1 / V  # next-token top-1 above chance
    if regime == "disjoint":  # phase 3 leaves the LM untouched: the final exit is phase 1's
        p1 = [r for r in records if r["phase"] == 1][-1]
        assert last["val_acc"][-1] == p1["val_acc"][-1]


def test_a_decoder_run_resumes_exactly(tmp_path):
    cfg = _config(phase1={"epochs": 1, "lr": 3e-3, "optimizer": "adamw"},
                  phase2={"epochs": 2, "lr": 3e-3, "optimizer": "adamw"})
    full = exitlab.train(_model(), tmp_path / "full", data=_source(), config=cfg, regime="mixed")
    part = exitlab.train(_model(), tmp_path / "part", data=_source(), config=cfg, regime="mixed")
    interrupt_after(part, "01-phase2-e001.safetensors")
    exitlab.train(_model(), part, data=_source(), config=cfg, regime="mixed", resume=True)
    a, b = exitlab.load(full).state_dict(), exitlab.load(part).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, V, (1, 5))
    torch.testing.assert_close(exitlab.load(full)(ids)[-1], exitlab.load(part)(ids)[-1], rtol=0, atol=0)


def test_bad_decoder_data_and_regimes_get_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="does not fit the model"):
        LMSource("toy", dict(_source().splits), 10)
    with pytest.raises(ConfigError, match="phase 3 would train nothing"):
        exitlab.train(_model("shared"), tmp_path / "d", data=_source(), config=_config(), regime="disjoint")
