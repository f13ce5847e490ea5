"""The Debian-descriptions task (``data.name: debian_sections``): a package's one-line description -> its section.

Built deterministically from the machine's local package index (``apt-cache dumpavail``; filled by ``apt-get
update``), or from ``Packages`` files under ``data.root``. The rules, in order:

1. One entry per package name (the index lists a package once per suite; of its stanzas, the one whose (section,
   description) sorts first wins, whatever the order of the index). The text is the one-line description only, never
   the package name, which gives the section away (``python3-``, ``golang-``, ``r-cran-``).
2. Sections lose their archive-area prefix (``contrib/net`` is ``net``, ``non-free/libs`` is ``libs``).
3. Duplicate texts (same description after lower-casing and collapsing spaces) are kept once, under the package
   whose name sorts first, when all of them share a section; a description found in several sections is ambiguous
   and dropped entirely.
4. Sections with fewer than ``data.debian.min_per_section`` texts are dropped. ``data.debian.sections > 0`` keeps
   only that many largest sections; ``data.debian.max_per_section > 0`` keeps at most that many texts of each
   section (those whose name hashes lowest, so subsets nest).
5. The split is stratified by a hash of the package name: in each section, the ``data.debian.test_fraction`` of
   packages whose SHA-256 of the name is lowest are the test split (rounded, at least one).

:attr:`DebianSet.fingerprint` is the SHA-256 of the built set (classes, and every split, section and text in
order): runs record it and tables print it, so two results on "the Debian task" can be seen to share their data.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .text import TextSource, from_token_tensors
from .textfiles import _pad_to, _tokenizer, tokenize

FILL_INDEX = "apt-get update (as root; or point data.root at a folder of Debian Packages files)"
AREA = re.compile(r"^(contrib|non-free|non-free-firmware|restricted|universe|multiverse)/")


@dataclass
class DebianOptions:
    """How the Debian-descriptions task is built from the package index (``data.debian``, docs/text.md)."""

    min_per_section: int = 100  # sections with fewer texts (after de-duplication) are dropped
    sections: int = 0  # > 0: keep only this many largest sections (ties by name)
    max_per_section: int = 0  # > 0: keep at most this many texts per section (lowest name hashes)
    test_fraction: float = 0.1  # per section, the share of packages (lowest name hashes) held out for testing

    def __post_init__(self) -> None:
        for key, lo in (("min_per_section", 2), ("sections", 0), ("max_per_section", 0)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{key} must be a whole number >= {lo}, got {v!r}")
        if self.sections == 1:
            raise ConfigError("sections must be 0 (all) or >= 2: a classifier needs two classes")
        if self.max_per_section and self.max_per_section < 2:
            raise ConfigError(f"max_per_section must be 0 (all) or >= 2, got {self.max_per_section}")
        tf = self.test_fraction
        if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0 < tf < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {tf!r}")


@dataclass
class DebianSet:
    """The built task: texts and integer labels per split, the section names, and the content hash."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    classes: list[str]
    fingerprint: str
    packages: int  # packages read from the index, before any rule


def read_index(root: str | Path | None = None) -> str:
    """The package index as text: the ``Packages`` files in ``root`` (a file, or a folder holding ``*Packages``),
    else ``apt-cache dumpavail``. One DataError naming the command that fills it when there is none."""
    if root is not None:
        p = Path(root).expanduser()
        files = [p] if p.is_file() else sorted(p.glob("*Packages")) if p.is_dir() else []
        if not files:
            raise DataError(f"data.root {p}: no Debian Packages file there; give a Packages file or a folder of "
                            f"them, or unset data.root to read the local index (filled by {FILL_INDEX})")
        return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if shutil.which("apt-cache") is None:
        raise DataError("the Debian package index is missing (no apt-cache on this machine); point data.root at a "
                        "folder of Debian Packages files")
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, errors="replace", check=False)
    return out.stdout


def parse_index(text: str) -> dict[str, tuple[str, str]]:
    """Package name -> (section without its area prefix, one-line description); of a package's several stanzas,
    the least (section, description) pair, so the order of the index does not matter."""
    found: dict[str, tuple[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields.setdefault(key, value.strip())
        name, section, desc = fields.get("Package"), fields.get("Section"), fields.get("Description")
        if name and section and desc:
            entry = (AREA.sub("", section), desc)
            found[name] = min(found.get(name, entry), entry)  # several stanzas: the same one whatever their order
    return found


def _hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _deduplicate(found: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Rule 3: one package per description; descriptions under several sections dropped."""
    by_text: dict[str, list[str]] = {}
    for name in sorted(found):
        by_text.setdefault(" ".join(found[name][1].lower().split()), []).append(name)
    keep = {}
    for names in by_text.values():
        if len({found[n][0] for n in names}) == 1:
            keep[names[0]] = found[names[0]]
    return keep


def build(opts: DebianOptions | None = None, root: str | Path | None = None, *, text: str | None = None) -> DebianSet:
    """The task, built by the rules of this module from ``text`` (an index), or from ``root`` or the local index."""
    opts = opts or DebianOptions()
    found = parse_index(read_index(root) if text is None else text)
    if not found:
        raise DataError(f"the Debian package index is empty (no package with a section and a description); fill it "
                        f"with {FILL_INDEX}")
    per: dict[str, list[str]] = {}
    for name, (section, _) in _deduplicate(found).items():
        per.setdefault(section, []).append(name)
    kept = sorted((s for s in per if len(per[s]) >= opts.min_per_section), key=lambda s: (-len(per[s]), s))
    kept = sorted(kept[: opts.sections or None])
    if len(kept) < 2:
        raise DataError(f"the Debian package index gives {len(kept)} section(s) with >= {opts.min_per_section} "
                        f"packages ({len(found)} packages read); lower data.debian.min_per_section, or fill the "
                        f"index with {FILL_INDEX}")
    parts: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, section in enumerate(kept):
        names = sorted(per[section], key=_hash)[: opts.max_per_section or None]
        n_test = max(1, round(opts.test_fraction * len(names)))
        for i, name in enumerate(names):
            texts, labels = parts["test" if i < n_test else "train"]
            texts.append(found[name][1])
            labels.append(label)
    return DebianSet(*parts["train"], *parts["test"], kept, _fingerprint(kept, parts), len(found))


def _fingerprint(classes: list[str], parts: dict) -> str:
    h = hashlib.sha256("\x1f".join(classes).encode())
    for split, (texts, labels) in parts.items():
        for t, y in zip(texts, labels):
            h.update(f"\x1e{split}\x1f{classes[y]}\x1f{t}".encode())
    return h.hexdigest()


def debian_source(d) -> TextSource:
    """The task a config's ``data`` section names (``data.name: debian_sections``; options under ``data.debian``,
    tokenizer and length under ``data.text``), tokenised once, its fingerprint attached."""
    t = d.text
    ds = build(d.debian, d.root)
    tok = _tokenizer(t.tokenizer, (ds.train_texts, None, None), t.vocab_size)
    train = tokenize(tok, ds.train_texts, None, t.max_length, "debian_sections train")
    test = tokenize(tok, ds.test_texts, None, t.max_length, "debian_sections test")
    width = max(train[0].shape[1], test[0].shape[1])
    tr, te = _pad_to(train, width), _pad_to(test, width)
    src = from_token_tensors(tr[0], ds.train_labels, te[0], ds.test_labels, train_mask=tr[1], test_mask=te[1],
                             train_types=tr[2], test_types=te[2], classes=ds.classes, name="debian_sections",
                             length_buckets=t.length_buckets)
    src.tokenizer, src.fingerprint = tok, ds.fingerprint
    return src
