"""Text from a config, end to end: ``data.name: text`` with ``model.backbone: hf:bert`` trains, saves its tokenizer,
rebuilds the same data for evaluation, and ``exitlab eval`` charges every text its own measured cost, so that the
simulated cost at a threshold equals what real early exit spends. Also compare and the analyses on a text run, and
the one-line errors of text configs."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch
import yaml

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.cli import main  # noqa: E402
from exitlab.evaluation.evaluate import evaluate_run  # noqa: E402
from exitlab.evaluation.inference import early_exit  # noqa: E402
from exitlab.evaluation.policies import make_policy  # noqa: E402
from exitlab.evaluation.sweep import simulate  # noqa: E402
from exitlab.models.costs import exit_costs, length_costs, length_table  # noqa: E402
from exitlab.runs.config import RunConfig  # noqa: E402
from exitlab.runs.rundir import RunDir  # noqa: E402
from exitlab.runs.typed import from_dict  # noqa: E402
from tests.models.test_hf import tiny  # noqa: E402

GOOD, BAD = "good great fine happy nice".split(), "bad awful poor sad nasty".split()
FILL = "the a of and to in is it that was for on are".split()
ENCODER = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
           "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
OPT = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0}


def write_texts(path, n: int, seed: int) -> None:
    """Sentences of 2..30 filler words with one to three sentiment words; the label is the sentiment."""
    rnd = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            y = rnd.choice(["pos", "neg"])
            words = [rnd.choice(FILL) for _ in range(rnd.randint(2, 30))]
            for _ in range(rnd.randint(1, 3)):
                words.insert(rnd.randrange(len(words) + 1), rnd.choice(GOOD if y == "pos" else BAD))
            w.writerow([" ".join(words), y])


def text_config(root, **over) -> dict:
    cfg = {"model": {"backbone": "hf:bert", "backbone_kwargs": ENCODER, "exits": [0, 1], "head": "text"},
           "data": {"name": "text", "root": str(root), "batch_size": 32, "eval_batch_size": 64, "val_fraction": 0.2,
                    "text": {"train": "train.csv", "test": "test.csv", "vocab_size": 120, "max_length": 40}},
           "regime": "mixed", "budget": 2, "phase1": OPT, "phase2": OPT, "phase3": OPT, "progress": False}
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_texts(root / "train.csv", 240, 0)
    write_texts(root / "test.csv", 60, 1)
    out = exitlab.train(from_dict(RunConfig, text_config(root)), root / "run")
    return root, out


def test_a_text_config_trains_saves_its_tokenizer_and_rebuilds_the_same_data(text_run):
    root, out = text_run
    run = RunDir(out)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    tok = run.tokenizer()
    assert tok("good day")["input_ids"][0] == tok.cls_token_id
    model = run.model()
    assert model.spec.kind == "hf" and model.num_exits == 3
    assert model.backbone.model.get_input_embeddings().num_embeddings == len(tok)  # sized to the tokenizer
    # the rebuilt test split holds the texts of test.csv tokenised by the saved tokenizer, in file order
    texts = [r["text"] for r in csv.DictReader(open(root / "test.csv"))]
    x = run.data().test.x
    enc = tok(texts, padding="longest", truncation=True, max_length=40, return_tensors="pt")
    width = int(enc["attention_mask"].sum(1).max())
    assert torch.equal(x[:, 0, :width], enc["input_ids"][:, :width])
    assert torch.equal(x[:, 1, :width], enc["attention_mask"][:, :width])
    # the logits cache holds exactly what the model computes on that split
    logits, labels = run.logits("test")
    with torch.no_grad():
        direct = torch.stack(model(x)).float()
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)


def test_eval_charges_each_text_its_own_cost_and_matches_real_early_exit(text_run):
    _, out = text_run
    result = evaluate_run(out, policies=("confidence",), write=False)
    run = RunDir(out)
    model, lengths = run.model(), run.lengths("test")
    per_sample = length_costs(model, lengths)  # [E, N]
    for e, row in zip(result["exits"], per_sample):
        assert e["flops"] == pytest.approx(float(row.mean()), rel=1e-12)
    assert "per_sample" in result["costs"]
    # at any threshold, the simulated mean cost and accuracy are what real early exit spends and gets
    logits, labels = run.logits("test")
    pol = make_policy("confidence")
    scores, preds = pol.scores(logits)
    x = run.data().test.x
    for t in (0.55, 0.7, 0.9):
        sw = simulate(scores, preds, labels, per_sample, torch.tensor([t]), pol.exit_when)
        with torch.no_grad():
            res = early_exit(model, x, pol, t, costs=per_sample)
        assert float(res.flops.double().mean()) == pytest.approx(float(sw.cost[0]), rel=1e-9)
        assert float((res.preds == labels).double().mean()) == pytest.approx(float(sw.accuracy[0]), abs=1e-12)
    # the budget fractions are shares of the bare backbone's mean cost over the same texts
    bare = torch.tensor([length_table(model, [int(n)])[int(n)][1] for n in lengths], dtype=torch.float64)
    assert result["costs"]["backbone_flops"] == pytest.approx(float(bare.mean()), rel=1e-12)


def test_length_costs_fit_equals_measuring_every_length():
    model = exitlab.from_hf(tiny("bert"), exits=[0, 2])
    lengths = list(range(1, 13))
    fitted = length_table(model, lengths)
    for n in lengths:
        measured = exit_costs(model, (3, n))
        assert torch.equal(fitted[n][0], measured.flops), n
        assert fitted[n][1] == measured.backbone_flops


def test_compare_report_and_analyses_run_on_a_text_config(tmp_path, text_run):
    root, _ = text_run
    base = text_config(root, budget=2)
    base.pop("regime")
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump({"base": base, "seeds": [0], "workers": 1, "threads": 1}))
    assert main(["compare", str(tmp_path / "cmp.yaml"), "--out", str(tmp_path / "cmp")]) == 0
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    rows = {r["regime"]: r for r in summary["rows"]}
    assert set(rows) == {"joint", "disjoint", "mixed"}
    assert all(len(r["exit_accuracy"][0]) == 3 and r["train_flops"][0] > 0 for r in rows.values())
    table = (tmp_path / "cmp" / "tables" / "paper.md").read_text()
    assert all(r in table for r in ("joint", "disjoint", "mixed"))
    assert main(["report", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "report.html").stat().st_size > 10_000
    mixed = tmp_path / "cmp" / "seed0" / "mixed"
    for kind in ("rank", "gradients"):
        assert main(["analyze", kind, str(mixed), "--samples", "40", "--out", str(tmp_path / kind)]) == 0
    rank = json.loads((tmp_path / "rank" / "rank.json").read_text())["runs"][0]
    assert rank["blocks"] == [0, 1, 2] and rank["ceiling"] == [32, 32, 32]  # one CLS vector of width 32 per text
    assert all(0 < r <= 32 for r in rank["rank"])


BAD_TEXT = {
    "head other than text": ({"model": {"head": "sdn"}},
                             "model.head: an encoder's exits use the head kind text (options pool: cls|mean, layers: "
                             "1|2, cascade) or gpf, not 'sdn'; set model.head: text"),
    "unknown text head option": ({"model": {"head_kwargs": {"grid": 2}}},
                                 "model.head_kwargs.grid: unknown option of the text head; valid: pool, layers, "
                                 "cascade"),
    "unknown gpf head option on an encoder": ({"model": {"head": "gpf", "head_kwargs": {"cascade": True}}},
                                              "model.head_kwargs.cascade: unknown option of the gpf head; valid: "
                                              "pool, layers, dim"),
    "model type with pretrained weights": ({"model": {"pretrained": True}, "data": {"text": {
        "train": "train.csv", "test": "test.csv", "tokenizer": "{d}"}}},
        "model.pretrained: hf:bert is a model type, which has no weights; give the folder (or cached name) of a "
        "pretrained model, e.g. hf:/models/bert-base-uncased"),
    "exit past the last layer": ({"model": {"exits": [0, 2]}},
                                 "exits [0, 2]: give sorted, unique layer indices in 0..1 (this encoder has 3 layers; "
                                 "the last one, 2, feeds the final exit)"),
    "missing training file": ({"data": {"text": {"train": "nope.csv", "test": "test.csv"}}},
                              "text data {d}/nope.csv not found; give a .csv, .tsv, .jsonl file or a save_to_disk "
                              "folder"),
    "missing label column": ({"data": {"text": {"train": "train.csv", "test": "test.csv", "label": "y"}}},
                             "train data {d}/train.csv has no column 'y'; its columns are ['text', 'label']"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_bad_text_config_gets_one_line(tmp_path, case, capsys):
    write_texts(tmp_path / "train.csv", 40, 0)
    write_texts(tmp_path / "test.csv", 10, 1)
    over, expected = BAD_TEXT[case]
    cfg = text_config(tmp_path)
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value}
    text = yaml.safe_dump(cfg).replace("{d}", str(tmp_path))
    (tmp_path / "cfg.yaml").write_text(text)
    code = main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: " + expected.replace("{d}", str(tmp_path))]
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "model.safetensors").exists()


def test_two_ranks_train_a_text_encoder_like_one_process(tmp_path, text_run):
    """DDP under torchrun (gloo, CPU) on text: each rank pads its slice of the global batch to its own longest
    text, builds the same tokenizer, and the weights equal one process's (no dropout in this encoder)."""
    from tests.training.test_distributed import _torchrun

    root, _ = text_run
    cfg = text_config(root, regime=[1, 2, 3], budget=0, phase1={"epochs": 1}, phase2={"epochs": 1},
                      phase3={"epochs": 1}, threads=1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    single = exitlab.train(from_dict(RunConfig, cfg), tmp_path / "single")
    r = _torchrun(2, path, tmp_path / "ddp")
    assert r.returncode == 0, r.stderr[-3000:]
    from exitlab.runs import checkpoint as ckpt

    for name in ("00-phase1-end", "01-phase2-end", "02-phase3-end"):
        a, _ = ckpt.load_tensors(single / "checkpoints" / f"{name}.safetensors")
        b, _ = ckpt.load_tensors(tmp_path / "ddp" / "checkpoints" / f"{name}.safetensors")
        for k in a:
            if k.startswith("model."):
                torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    assert (tmp_path / "ddp" / "tokenizer" / "tokenizer.json").read_text() == \
        (single / "tokenizer" / "tokenizer.json").read_text()
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2


def test_export_refuses_a_text_run_in_one_line(text_run, capsys):
    pytest.importorskip("onnxruntime")
    _, out = text_run
    assert main(["export", str(out), "--out", str(out.parent / "onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: ONNX export of text encoders is not supported yet (their stages pass token states with an "
                   "attention mask, at a dynamic length); serve them from PyTorch with exitlab.early_exit "
                   "(docs/text.md)"]
    assert not (out.parent / "onnx").exists()


def test_a_local_folder_gives_its_weights_with_pretrained_and_only_its_config_without(tmp_path):
    from exitlab.data.textfiles import word_tokenizer
    from exitlab.runs.config import ModelConfig
    from exitlab.training.planning import model_from_config

    hf = tiny("bert", num_labels=2)
    hf.save_pretrained(tmp_path / "m")
    word_tokenizer(["a b c"], 20).save_pretrained(tmp_path / "m")
    section = {"backbone": f"hf:{tmp_path / 'm'}", "exits": [0], "head": "text", "pretrained": True}
    loaded = model_from_config(from_dict(ModelConfig, section), 2, (3, 8))
    want = hf.state_dict()
    got = loaded.backbone.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    fresh = model_from_config(from_dict(ModelConfig, {**section, "pretrained": False}), 2, (3, 8))
    same_shape = fresh.backbone.model.state_dict()
    assert all(same_shape[k].shape == want[k].shape for k in want)
    assert not torch.equal(same_shape["bert.encoder.layer.0.attention.self.query.weight"],
                           want["bert.encoder.layer.0.attention.self.query.weight"])


def test_a_config_puts_gpf_heads_on_an_encoder(tmp_path, text_run):
    root, _ = text_run
    cfg = text_config(root, model={"head": "gpf", "head_kwargs": {"dim": 8}}, regime="joint",
                      phase2={"gpf": {"imitation": 1.0}})
    out = exitlab.train(from_dict(RunConfig, cfg), tmp_path / "gpf")
    model = RunDir(out).model()
    assert model.spec.head == "gpf" and model.spec.head_kwargs["dim"] == 8
    assert evaluate_run(out, policies=("confidence",), write=False)["exits"][0]["flops"] > 0
