"""The Lee corpus from the gensim 4.4.0 wheel (read as a zip, gensim never imported): 50 documents, 1,225 judged
pairs, a sentence-pair regression source. Skipped when the wheel is absent (scripts/install-weights lee)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.data.lee import find_wheel, pair_tokens, read_lee  # noqa: E402
from exitlab.data.textfiles import word_tokenizer  # noqa: E402
from exitlab.errors import DataError  # noqa: E402
from exitlab.runs.config import load_config  # noqa: E402
from exitlab.runs.files import read_status  # noqa: E402

try:
    WHEEL = find_wheel()
except DataError:
    WHEEL = None
needs_lee = pytest.mark.skipif(WHEEL is None, reason="the gensim 4.4.0 wheel is absent (scripts/install-weights lee)")
TINY = ["data.name=lee", "data.text.task=regression", "model.backbone=hf:bert", "data.text.vocab_size=300",
        "data.text.max_length=24", "data.batch_size=32", "data.eval_batch_size=128", "device=cpu", "progress=false",
        "model.exits=[0]", "regime=joint", "phase2={epochs: 1, optimizer: adamw, lr: 0.001}",
        "model.backbone_kwargs={hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, "
        "max_position_embeddings: 32}"]


def test_a_missing_wheel_is_one_error_with_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("EXITLAB_LEE", raising=False)
    monkeypatch.delenv("EXITLAB_DATA", raising=False)
    with pytest.raises(DataError) as e:
        find_wheel(tmp_path / "nowhere")
    assert str(e.value) == (f"the Lee corpus (in the gensim 4.4.0 wheel) is not in {tmp_path / 'nowhere'}, "
                            f"{tmp_path / '.cache/exitlab'}; fetch it with pip download gensim==4.4.0 --no-deps -d "
                            "~/.cache/exitlab (or scripts/install-weights lee)")


@needs_lee
def test_the_corpus_has_50_documents_and_1225_judged_pairs():
    docs, pairs = read_lee()
    assert len(docs) == 50 and len(pairs) == 1225
    assert all(0 <= i < j < 50 and 0.0 <= s <= 1.0 for i, j, s in pairs)
    assert docs[0].startswith("The national executive of the strife-torn Democrats")


@needs_lee
def test_a_pair_regression_trains_on_it_and_records_its_fingerprint(tmp_path):
    out = exitlab.train(load_config(None, TINY), tmp_path / "run")
    status = read_status(out)
    assert status["status"] == "done" and len(status["data_fingerprint"]) == 64
    model = exitlab.load(out)
    assert model.num_classes == 1 and model.spec.task == "regression"


def test_pairs_are_cls_a_sep_b_sep_sharing_the_length():
    docs = ["one two three four five six seven eight", "alpha beta"]
    tok = word_tokenizer(docs, 60)
    x = pair_tokens(tok, docs, [(0, 1, 0.5)], max_length=9)  # 6 places: doc 1 needs 2, so doc 0 keeps 4
    ids, mask, types = x[0]
    words = tok.convert_ids_to_tokens(ids.tolist())
    assert words == ["[CLS]", "one", "two", "three", "four", "[SEP]", "alpha", "beta", "[SEP]"]
    assert mask.tolist() == [1] * 9 and types.tolist() == [0] * 6 + [1] * 3
