"""The Debian-descriptions task: the stated build rules on a small hand-written index, the exact errors for a
missing or empty index, and (when this machine has one) the real index, built in under 30 s."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from exitlab.cli import main
from exitlab.data.debian import DebianOptions, build, parse_index
from exitlab.errors import ConfigError, DataError
from exitlab.runs.config import load_config

FILL = "apt-get update (as root; or point data.root at a folder of Debian Packages files)"


def _stanza(name: str, section: str, desc: str) -> str:
    return f"Package: {name}\nVersion: 1.0\nDescription: {desc}\nTag: role::program,\n use::x\nSection: {section}\n"


def _index() -> str:
    rows = [(f"python3-p{i}", "python", f"Python module number {i} for parsing") for i in range(12)]
    rows += [(f"golang-g{i}", "golang", f"Go library {i} for networking") for i in range(12)]
    rows += [(f"prog{i}", "contrib/games", f"A puzzle game with {i} levels") for i in range(12)]
    rows += [("tiny1", "news", "A news reader"), ("tiny2", "news", "Another news reader")]  # too few: dropped
    rows += [("dup-a", "python", "Same words here"), ("dup-b", "python", "same  WORDS here")]  # one kept (dup-a)
    rows += [("amb-a", "python", "Ambiguous text"), ("amb-b", "golang", "Ambiguous text")]  # sections differ: dropped
    rows += [("python3-p0", "python", "z: a second stanza of a package, ignored")]  # the least (section, text) wins
    return "\n".join(_stanza(*r) for r in rows)


def test_the_rules_give_descriptions_only_without_duplicates_or_small_sections():
    ds = build(DebianOptions(min_per_section=5, test_fraction=0.25), text=_index())
    assert ds.classes == ["games", "golang", "python"]  # contrib/ stripped, news (2 packages) dropped
    texts = ds.train_texts + ds.test_texts
    assert not any("python3-" in t or "golang-" in t for t in texts)  # never the package name
    assert "Same words here" in texts and "same  WORDS here" not in texts
    assert "Ambiguous text" not in texts and "z: a second stanza of a package, ignored" not in texts
    counts = [sum(1 for y in ds.test_labels if y == c) for c in range(3)]
    assert counts == [3, 3, 3]  # stratified: a quarter of each section's 12 (python: 13 -> round(3.25) = 3)
    assert len(ds.train_texts) == 12 + 12 + 13 - 9


def test_the_build_is_deterministic_and_its_fingerprint_tracks_the_content():
    a = build(DebianOptions(min_per_section=5), text=_index())
    b = build(DebianOptions(min_per_section=5), text="\n\n".join(reversed(_index().split("\n\n"))))
    assert a.fingerprint == b.fingerprint and a.test_texts == b.test_texts  # stanza order does not matter
    c = build(DebianOptions(min_per_section=5), text=_index().replace("levels", "stages"))
    assert c.fingerprint != a.fingerprint and len(a.fingerprint) == 64


def test_subsets_nest_and_keep_the_largest_sections():
    full = build(DebianOptions(min_per_section=5, sections=2), text=_index())
    small = build(DebianOptions(min_per_section=5, sections=2, max_per_section=6), text=_index())
    assert full.classes == small.classes == ["games", "python"]  # 13 python, then games and golang tie at 12: by name
    assert set(small.train_texts + small.test_texts) <= set(full.train_texts + full.test_texts)
    assert len(small.train_texts + small.test_texts) == 12


def test_parse_reads_continuation_lines_as_part_of_their_field():
    found = parse_index(_stanza("x", "non-free/libs", "A library"))
    assert found == {"x": ("libs", "A library")}


def test_an_empty_index_is_one_error_with_the_command_that_fills_it(tmp_path):
    (tmp_path / "Packages").write_text("")
    with pytest.raises(DataError) as e:
        build(root=tmp_path)
    assert str(e.value) == ("the Debian package index is empty (no package with a section and a description); "
                            f"fill it with {FILL}")


def test_a_missing_index_is_one_error_naming_the_fix(tmp_path):
    with pytest.raises(DataError) as e:
        build(root=tmp_path / "none")
    assert str(e.value) == (f"data.root {tmp_path / 'none'}: no Debian Packages file there; give a Packages file or "
                            "a folder of them, or unset data.root to read the local index (filled by apt-get update "
                            "(as root; or point data.root at a folder of Debian Packages files))")


def test_bad_options_name_their_key():
    with pytest.raises(ConfigError, match=r"^data.debian.sections must be 0 \(all\) or >= 2"):
        load_config(None, ["data.name=debian_sections", "data.debian.sections=1"])
    with pytest.raises(ConfigError, match=r"^data.debian.test_fraction must be in \(0, 1\), got 1.5$"):
        load_config(None, ["data.name=debian_sections", "data.debian.test_fraction=1.5"])


def test_the_cli_refuses_an_empty_index_in_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "Packages").write_text("\n\n")
    (tmp_path / "c.yaml").write_text("regime: joint\n")
    argv = ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--set", "data.name=debian_sections",
            "--set", f"data.root={tmp_path / 'idx'}", "--set", "model.backbone=hf:bert",
            "--set", "data.text.vocab_size=60",
            "--set", "model.backbone_kwargs={hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, "
            "intermediate_size: 32, max_position_embeddings: 32}", "--set", "data.text.max_length=16",
            "--set", "device=cpu", "--set", "progress=false"]
    pytest.importorskip("transformers")
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: the Debian package index is empty (no package with a section and a "
                                 f"description); fill it with {FILL}"]
    run = tmp_path / "run"
    assert not run.exists() or {p.name for p in run.iterdir()} <= {".lock"}  # no run written (the lock file stays)


def _local_index() -> bool:
    if shutil.which("apt-cache") is None:
        return False
    out = subprocess.run(["apt-cache", "stats"], capture_output=True, text=True, check=False).stdout
    return "Total package names" in out and build is not None and len(out) > 0


@pytest.mark.skipif(not _local_index(), reason="no local Debian package index (apt-get update fills it)")
def test_the_real_index_builds_a_many_class_task_in_under_30_s():
    t0 = time.perf_counter()
    try:
        ds = build()
    except DataError as e:
        pytest.skip(f"the local index is not filled: {e}")
    seconds = time.perf_counter() - t0
    assert seconds < 30
    assert len(ds.classes) >= 20 and len(ds.train_texts) > 10 * len(ds.test_texts) / 2
    assert set(ds.test_labels) == set(range(len(ds.classes)))  # every section is in the test split
