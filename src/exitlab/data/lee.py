"""The Lee corpus (``data.name: lee``): 50 news documents and 1,225 human similarity judgements of their pairs, a
tiny offline relative of STS-B, as a sentence-pair regression task (target: the mean judged similarity, 0..1).

It is read from the gensim 4.4.0 wheel's test data without importing gensim (``pip download gensim==4.4.0
--no-deps -d ~/.cache/exitlab``, or ``scripts/install-weights lee``): ``lee.cor`` (one document per line) and
``similarities0-1.txt`` (the upper triangle of a 50 x 50 matrix). Both files are checked against their SHA-256.
The split is by a hash of the document pair: the ``data.text.test_fraction`` of pairs whose hash is lowest are test.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import torch

from ..errors import DataError
from .text import TextSource, from_token_tensors
from .textfiles import _tokenizer

WHEEL = "gensim-4.4.0-*.whl"
FETCH = "pip download gensim==4.4.0 --no-deps -d ~/.cache/exitlab (or scripts/install-weights lee)"
SHA256 = {"lee.cor": "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
          "similarities0-1.txt": "23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79"}


def find_wheel(root: str | Path | None = None) -> Path:
    """The gensim 4.4.0 wheel: in ``root``, ``$EXITLAB_LEE``, or exitlab's data cache (``$EXITLAB_DATA``, default
    ``~/.cache/exitlab``); a DataError saying how to fetch it when it is in none of them."""
    cache = os.environ.get("EXITLAB_DATA") or "~/.cache/exitlab"
    places = [Path(p).expanduser() for p in (root, os.environ.get("EXITLAB_LEE"), cache) if p]
    for place in places:
        found = sorted(place.glob(WHEEL)) if place.is_dir() else [place] if place.is_file() else []
        if found:
            return found[-1]
    raise DataError(f"the Lee corpus (in the gensim 4.4.0 wheel) is not in {', '.join(map(str, places))}; fetch "
                    f"it with {FETCH}")


def read_lee(root: str | Path | None = None) -> tuple[list[str], list[tuple[int, int, float]]]:
    """The 50 documents and the 1,225 judged pairs ``(i, j, similarity)`` with ``i < j``."""
    wheel = find_wheel(root)
    files = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in SHA256:
                files[name] = z.read(f"gensim/test/test_data/{name}")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{wheel} is not a complete gensim 4.4.0 wheel ({e}); fetch it again with {FETCH}") from None
    for name, want in SHA256.items():
        if hashlib.sha256(files[name]).hexdigest() != want:
            raise DataError(f"{wheel}: {name} does not match its SHA-256; fetch the wheel again with {FETCH}")
    docs = [line.strip() for line in files["lee.cor"].decode("utf-8", "replace").splitlines() if line.strip()]
    rows = [line.split() for line in files["similarities0-1.txt"].decode().splitlines() if line.strip()]
    if len(docs) != 50 or len(rows) != 50:
        raise DataError(f"{wheel}: expected 50 documents and a 50 x 50 matrix, got {len(docs)} and {len(rows)} rows")
    pairs = [(i, j, float(rows[i][j])) for i in range(50) for j in range(i + 1, 50)]
    return docs, pairs


def pair_tokens(tok, docs: list[str], pairs: list[tuple[int, int, float]], max_length: int) -> torch.Tensor:
    """Packed ``[N, 3, L]`` ``[CLS] a [SEP] b [SEP]`` for every pair, each document tokenised once (a document is in
    49 pairs). Both texts share the ``max_length - 3`` places: the shorter keeps all of its tokens up to half."""
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    room = max_length - 3
    rows = []
    for i, j, _ in pairs:
        a = ids[i][: max(room // 2, room - len(ids[j]))]
        b = ids[j][: room - len(a)]
        rows.append(([tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id], len(a) + 2))
    width = max(len(r) for r, _ in rows)
    out = torch.zeros(len(rows), 3, width, dtype=torch.long)
    out[:, 0] = tok.pad_token_id
    for n, (r, first) in enumerate(rows):
        out[n, 0, : len(r)] = torch.tensor(r)
        out[n, 1, : len(r)] = 1
        out[n, 2, first : len(r)] = 1  # token types: the second text
    return out


def lee_source(d) -> TextSource:
    """The Lee pairs tokenised (``data.text``: tokenizer, max_length, test_fraction), a regression source."""
    t = d.text
    docs, pairs = read_lee(d.root)
    key = lambda p: hashlib.sha256(f"{p[0]}-{p[1]}".encode()).hexdigest()  # noqa: E731
    ordered = sorted(pairs, key=key)
    n_test = max(1, round(t.test_fraction * len(ordered)))
    parts = {"test": ordered[:n_test], "train": ordered[n_test:]}
    tok = _tokenizer(t.tokenizer, (docs, None, None), t.vocab_size)
    x = {k: pair_tokens(tok, docs, v, t.max_length) for k, v in parts.items()}
    width = max(v.shape[-1] for v in x.values())
    x = {k: torch.nn.functional.pad(v, (0, width - v.shape[-1])) for k, v in x.items()}  # padding: id 0, mask 0
    y = {k: torch.tensor([s for _, _, s in v]) for k, v in parts.items()}
    src = from_token_tensors(x["train"][:, 0], y["train"], x["test"][:, 0], y["test"], train_mask=x["train"][:, 1],
                             test_mask=x["test"][:, 1], train_types=x["train"][:, 2], test_types=x["test"][:, 2],
                             name="lee", task="regression", length_buckets=t.length_buckets)
    src.tokenizer = tok
    src.fingerprint = hashlib.sha256(repr((docs, parts["train"], parts["test"])).encode()).hexdigest()
    return src
