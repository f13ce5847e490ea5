"""WebDataset shards: the exact index, equal batch counts per rank, no sample twice, seeded shard order, bad shards."""

import gzip
import random
import shutil

import pytest
import torch

from exitlab.data import StreamLoader, build_run_data
from exitlab.data.shards import _KEY, buffer_shuffle, expand_braces
from exitlab.errors import DataError
from tests.data.helpers import data_config, make_shards

wds = pytest.importorskip("webdataset")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    make_shards(root / "train", [7, 12, 5, 9])  # 33 samples, shards of unequal size
    make_shards(root / "val", [6, 4], start=1000)
    return root


def _data(root, shard=(0, 1), **extra):
    opts = dict(name="webdataset", root=root, img_size=12, batch_size=4, eval_batch_size=3, workers=0,
                val_fraction=0.2)
    return build_run_data(data_config(**{**opts, **extra}), 0, CPU, shard=shard)


def _keys(loader, batches):
    index = loader.samples.data.index
    return [[index.key[int(loader.indices[p])].decode() for p in b] for b in batches]


def test_shards_are_indexed_split_and_batched(shards):
    run = _data(shards)
    assert isinstance(run.train, StreamLoader) and run.classes == ["0", "1", "2"] and run.shape == (3, 12, 12)
    assert run.train.num_samples + run.val.num_samples == 33 and run.test.num_samples == 10
    assert torch.bincount(run.val.samples.labels[run.val.indices]).tolist() == [2, 2, 2]  # stratified hold-out
    run.train.set_epoch_seed(0)
    keys = sum(_keys(run.train, run.train.batch_indices()), [])
    assert len(run.train) == run.train.num_samples // 4 and len(keys) == len(set(keys)) == len(run.train) * 4
    x, y = next(iter(run.train))
    assert x.shape == (4, 3, 12, 12)
    index = run.train.samples.data.index
    first = [int(run.train.indices[p]) for p in run.train.batch_indices()[0]]
    assert y.tolist() == [int(index.label[i]) for i in first]  # labels read with the images
    assert [k for b in _keys(run.test, run.test.batch_indices()) for k in b] == [f"{k:06d}" for k in range(1000, 1010)]


def test_a_pass_visits_shards_in_a_seeded_order_each_in_file_order(shards):
    run = _data(shards, shuffle_buffer=1, val_fraction=0.1)  # a buffer of one: no mixing inside the stream
    shard_orders = set()
    for seed in range(6):
        run.train.set_epoch_seed(seed)
        order = [int(run.train.indices[p]) for b in run.train.batch_indices() for p in b]
        sid = run.train.samples.data.index.shard[order].tolist()
        blocks = [s for i, s in enumerate(sid) if i == 0 or s != sid[i - 1]]
        assert len(blocks) == len(set(blocks)) == 4  # each shard once, as one block
        assert all(a < b for a, b, s, t in zip(order, order[1:], sid, sid[1:]) if s == t)  # file order inside
        shard_orders.add(tuple(blocks))
    assert len(shard_orders) > 3  # the seed picks the shard order


def test_the_shuffle_buffer_is_a_seeded_permutation():
    perm = buffer_shuffle(1000, 50, random.Random(0))
    assert sorted(perm.tolist()) == list(range(1000))
    assert (perm == buffer_shuffle(1000, 50, random.Random(0))).all()
    late = [p - i for i, p in enumerate(perm)]
    assert max(late) <= 50  # an item never leaves before the buffer has seen it
    assert buffer_shuffle(5, 1, random.Random(0)).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_number_of_batches_and_no_sample_twice(shards, world):
    ranks = [_data(shards, shard=(r, world), batch_size=6) for r in range(world)]
    one = _data(shards, batch_size=6)
    for seed in (1, 2):
        for r in ranks + [one]:
            r.train.set_epoch_seed(seed)
        per_rank = [_keys(r.train, r.train.batch_indices()) for r in ranks]
        assert len({len(k) for k in per_rank}) == 1 and len(per_rank[0]) == len(one.train)
        flat = [k for keys in per_rank for b in keys for k in b]
        assert len(flat) == len(set(flat)) == len(one.train) * 6
        together = [sum((per_rank[r][b] for r in range(world)), []) for b in range(len(one.train))]
        assert together == _keys(one.train, one.train.batch_indices())  # the one-process global batches


def test_batches_do_not_depend_on_the_number_of_workers(shards):
    a, b = _data(shards), _data(shards, workers=2)
    for r in (a, b):
        r.train.set_epoch_seed(9)
    for (x, y), (u, v) in zip(a.train, b.train, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


@pytest.mark.parametrize("drop,message", [
    ("cls", "shard-001.tar: sample '000009' has no label (.cls; it has .jpg); set data.wds_label to the extension "
            "your shards use"),
    ("jpg", "shard-001.tar: sample '000009' has no image (.jpg/.jpeg/.png/.webp/.bmp; it has .cls); set "
            "data.wds_image to the extension your shards use"),
])
def test_a_sample_missing_a_key_is_one_line_naming_shard_key_and_extension(tmp_path, drop, message):
    make_shards(tmp_path / "train", [6, 6], drop={"000009": drop})
    make_shards(tmp_path / "val", [3], start=100)
    with pytest.raises(DataError) as e:
        _data(tmp_path)
    assert str(e.value) == f"{tmp_path}/train/{message}"


def test_configured_keys_brace_patterns_and_a_missing_shard(tmp_path):
    for split, start in (("train", 0), ("val", 100)):
        for p in make_shards(tmp_path / split, [6, 6, 6], start=start):
            with wds.TarWriter(str(p.with_suffix(".x.tar"))) as w:  # the same samples with other extensions
                for s in wds.WebDataset(str(p), shardshuffle=False):
                    w.write({"__key__": s["__key__"], "image.jpeg": s["jpg"], "target": s["cls"]})
    run = _data(tmp_path, wds_shards="shard-{000..001}.x.tar", wds_image="image.jpeg", wds_label="target")
    assert run.train.num_samples + run.val.num_samples == 12 and run.test.num_samples == 12
    with pytest.raises(DataError, match=r"shard .*/train/shard-003.tar not found \(data.wds_shards is "
                                        r"'shard-\{000..003\}.tar'\); fix the pattern or restore the shard"):
        _data(tmp_path, wds_shards="shard-{000..003}.tar")


def test_compressed_shards_and_labels_out_of_range_are_refused(tmp_path):
    make_shards(tmp_path / "train", [15])
    make_shards(tmp_path / "val", [3], start=103, num_classes=5)  # labels 0..4, but train only has 0..2
    with pytest.raises(DataError, match=r"held-out shards: labels must be 0..2 \(one per class\), found 3, 4"):
        _data(tmp_path)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")  # too short: blamed on classes.txt, not on the labels
    with pytest.raises(DataError, match=r"classes.txt names 3 classes but the shards hold label 4; add the missing "
                                        r"class names to classes.txt \(one per line, label 0 first\)"):
        _data(tmp_path)
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    assert _data(tmp_path).classes == ["a", "b", "c", "d", "e"]
    p = tmp_path / "train" / "shard-000.tar"
    p.with_suffix(".tar.gz").write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    with pytest.raises(DataError, match=r"shard-000.tar.gz is not an uncompressed tar shard .*gunzip a .tar.gz"):
        _data(tmp_path, wds_shards="*.tar.gz")
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(DataError, match=r"/test not found; WebDataset shards go in .*/train/ and .*/val/ \(or test/\)"):
        _data(tmp_path)


def test_keys_split_as_webdataset_splits_them():
    from webdataset.tariterators import base_plus_ext

    for name in ("a/b/000.jpg", "x.seg.png", "dir.v1/k.cls", "k.JPG", "noext", "d/.hidden"):
        m = _KEY.match(name)
        assert (m.groups() if m else (None, None)) == base_plus_ext(name)


def test_brace_expansion():
    assert expand_braces("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("cut", [0.5, 0.8, 0.93])
def test_a_truncated_shard_is_refused_not_read_in_part(tmp_path, cut):
    """A copy cut short (inside a sample, or inside the next header) used to be read up to the cut, silently."""
    from exitlab.data.shards import index_shard

    (path,) = make_shards(tmp_path / "train", [24])
    assert len(index_shard(path, ["jpg"], "cls")) == 24  # the whole shard reads
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError, match=r"shard-000\.tar is truncated: (it ends inside a tar member after sample "
                                         r"'0000\d\d' \(\d+ complete samples read, |[a-z ]+ \()\d+ "
                                         r"bytes\); copy the shard again or rebuild it"):
        index_shard(path, ["jpg"], "cls")
