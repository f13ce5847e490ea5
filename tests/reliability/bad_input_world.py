"""The world of the bad-input catalogue (``tests/reliability/test_bad_inputs_*.py``) and the one check every case
runs: two finished tiny runs and every damaged or odd file a case needs, and a runner that wants exit code 2,
exactly the catalogued error line, and no file touched."""

import dataclasses
import importlib.util
import json
import shutil

import pytest
import yaml

from exitlab.cli import main
from exitlab.recipes.compare import load_compare_config
from exitlab.runs.config import dump_config, load_config
from exitlab.training.engine import train
from tests.conftest import tiny_overrides

T = ["train", "{d}/cfg.yaml", "--out", "{d}/new"]
S = lambda *kv: [a for x in kv for a in ("--set", x)]  # noqa: E731


def build_world(d, fashion_dir):
    """Two finished tiny runs and every file the cases need, in ``d``."""
    train(load_config(None, tiny_overrides(regime="joint")), d / "run")
    train(load_config(None, tiny_overrides(regime="joint", **{"model.backbone": "resnet20", "model.exits": "[2]"})),
          d / "run20")
    (d / "cfg.yaml").write_text("# exitlab train cfg.yaml\n" + dump_config(load_config(None, tiny_overrides(
        regime="joint"))))
    (d / "broken.yaml").write_text("model: [unclosed")
    (d / "latin1.yaml").write_bytes("regime: m\xe9lang\xe9\n".encode("latin-1"))
    (d / "list.yaml").write_text("- regime: joint\n")
    (d / "section.yaml").write_text("model: resnet8\n")
    (d / "empty").mkdir()
    (d / "afile").write_text("a user's file\n")
    (d / "user").mkdir()
    (d / "user" / "config.yaml").write_text("# my own notes, not a run\n" + (d / "cfg.yaml").read_text())
    (d / "garbage.safetensors").write_bytes(b"\xff" * 64)
    shutil.copytree(fashion_dir, d / "fm")
    f = d / "fm" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-100])
    (d / "badexp").mkdir()
    (d / "badexp" / "manifest.json").write_text("{\n")
    for name, write in (("nonutf8", lambda p: p.write_bytes(b'{"spec": "\xff\xfe"}')),
                        ("wrongshape", lambda p: p.write_text("[1, 2, 3]")),
                        ("badspec", lambda p: p.write_text(json.dumps({"spec": {"backbone": "resnet8"}})))):
        shutil.copytree(d / "run", d / name)
        write(d / name / "model.json")
    shutil.copytree(d / "run", d / "runjson")
    (d / "runjson" / "run.json").write_text('{"status": "ru')
    (d / "badsummary").mkdir()
    (d / "badsummary" / "summary.json").write_text('{"rows": [')
    (d / "oddsummary").mkdir()
    (d / "oddsummary" / "summary.json").write_text('{"rows": 3}')
    (d / "notjson.json").write_text("this is not JSON")
    (d / "binary.json").write_bytes(bytes(range(256)))
    (d / "other.json").write_text('{"analysis": "astrology"}')
    (d / "list.json").write_text("[]")
    base = {"base": {"data": {"name": "synthetic"}}, "regimes": ["joint"], "seeds": [0]}
    for name, change in (("regime", {"regimes": ["joint", "mixd"]}), ("variant", {"variants": ["sdn-wieghts"]}),
                         ("seeds", {"seeds": []}), ("ok", {}), ("workers", {"workers": 0})):
        (d / f"cmp-{name}.yaml").write_text(yaml.safe_dump({**base, **change}))
    (d / "other-cmp").mkdir()
    (d / "other-cmp" / "compare.yaml").write_text(yaml.safe_dump({**base, "seeds": [5]}))
    (d / "cmp-damaged" / "seed0" / "joint").mkdir(parents=True)
    (d / "cmp-damaged" / "compare.yaml").write_text(yaml.safe_dump(
        dataclasses.asdict(load_compare_config(d / "cmp-ok.yaml")), sort_keys=False))
    (d / "cmp-damaged" / "seed0" / "joint" / "run.json").write_text('{"status": "do')
    _image_folders(d)
    return d


def _image_folders(d) -> None:
    """A folder with one class, one with an empty class folder, and WebDataset shards missing a label."""
    import io
    import tarfile

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
    for root, classes in (("oneclass", {"a": 3}), ("emptyclass", {"a": 3, "b": 0})):
        for split in ("train", "val"):
            for c, n in classes.items():
                (d / root / split / c).mkdir(parents=True)
                for i in range(n):
                    (d / root / split / c / f"{i}.png").write_bytes(png.getvalue())
    for split in ("train", "val"):
        (d / "wds" / split).mkdir(parents=True)
        with tarfile.open(d / "wds" / split / "shard-000.tar", "w") as tar:
            for key, members in (("s0", {"png": png.getvalue(), "cls": b"0"}), ("s1", {"png": png.getvalue()})):
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _files(d) -> dict:
    """Every file under ``d`` with its size and modification time (not exitlab's hidden lock files)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()
            and not p.name.startswith(".")}


NEEDS_MISSING = {"timm model without timm installed": "timm",
                 "torchvision name without torchvision": "torchvision"}  # these test the missing extra


def check_case(world, cases: dict, case: str, capsys, monkeypatch) -> None:
    """Run one catalogued command line in ``world``: exit code 2, exactly the expected error line,
    and no file under ``world`` written, changed or removed."""
    monkeypatch.setenv("EXITLAB_DATA", str(world / "cache"))
    if case in NEEDS_MISSING and importlib.util.find_spec(NEEDS_MISSING[case]) is not None:
        pytest.skip(f"{NEEDS_MISSING[case]} is installed here; this case checks the message when it is not")
    argv, expected = cases[case]
    argv = [a.replace("{d}", str(world)) for a in argv]
    before = _files(world)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0] == expected.replace("{d}", str(world)), err
    after = _files(world)
    assert {p: v for p, v in after.items() if p in before} == before  # nothing overwritten or removed
    assert [p for p in after if p not in before] == []  # and nothing new written
