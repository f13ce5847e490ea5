"""The streaming loader: epochs that depend only on the seed (not on workers or ranks), exact resume, DDP slices."""

import pytest
import torch

from exitlab.data import build_run_data
from exitlab.data.stream import loader_options, resolve_workers
from exitlab.errors import DataError
from tests.data.helpers import data_config, make_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"), n_train=14, n_val=3)


def _data(folder, shard=(0, 1), **extra):
    opts = dict(name="imagefolder", root=folder, stream=True, img_size=12, batch_size=8, eval_batch_size=5,
                workers=0, crop_padding=2)
    return build_run_data(data_config(**{**opts, **extra}), 0, CPU, shard=shard)


def _epoch(loader, seed):
    loader.set_epoch_seed(seed)
    return [(x.clone(), y.clone()) for x, y in loader]


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("augment", ["crop_flip", "imagenet"])
def test_an_epoch_depends_on_its_seed_not_on_the_number_of_workers(folder, augment):
    serial, parallel = _data(folder, augment=augment), _data(folder, augment=augment, workers=2)
    first = _epoch(serial.train, 11)
    assert _equal(first, _epoch(parallel.train, 11))
    assert _equal(first, _epoch(serial.train, 11))  # the same seed again: the same batches
    assert not _equal(first, _epoch(serial.train, 12))
    assert _equal(list(serial.val), list(parallel.val))


def test_a_resumed_loader_sees_exactly_the_epoch_of_an_uninterrupted_one(folder):
    run = _data(folder)
    uninterrupted = [_epoch(run.train, s) for s in (100, 101, 102)]
    resumed = _data(folder, workers=2)  # a new process after a restart, with other settings that must not matter
    assert _equal(_epoch(resumed.train, 102), uninterrupted[2])


def test_ranks_take_equal_disjoint_slices_of_every_global_batch(folder):
    """Two ranks: equal batch counts, no sample twice, and together exactly the one-process batches."""
    one = _data(folder)
    ranks = [_data(folder, shard=(r, 2)) for r in range(2)]
    assert len(ranks[0].train) == len(ranks[1].train) == len(one.train) == 4  # 42 - 3 held out = 39: 4 full batches
    for seed in (3, 4):
        for r in ranks + [one]:
            r.train.set_epoch_seed(seed)
        full = _epoch(one.train, seed)
        parts = [_epoch(r.train, seed) for r in ranks]
        seen = [torch.cat(r.train.batch_indices()) for r in ranks]
        assert len(set(torch.cat(seen).tolist())) == len(torch.cat(seen)) == len(one.train) * 8
        for b, (x, y) in enumerate(full):
            assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)
            assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)


def test_batch_indices_cover_each_training_sample_at_most_once_per_epoch(folder):
    train = _data(folder).train
    train.set_epoch_seed(7)
    idx = torch.cat(train.batch_indices())
    assert len(idx) == len(train) * 8 and len(set(idx.tolist())) == len(idx) and int(idx.max()) < train.num_samples
    assert [len(b) for b in _data(folder, eval_batch_size=2).val.batch_indices()] == [2, 1]  # keeps the short one


def test_sample_and_unaugmented_are_fixed_and_in_order(folder):
    run = _data(folder, augment="imagenet")
    a, b = run.val.sample(3, seed=1, batch_size=2), run.val.sample(3, seed=1, batch_size=2)
    assert [len(y) for _, y in a] == [2, 1] and _equal(a, b)
    plain = run.train.unaugmented(batch_size=10)
    assert plain.num_samples == run.train.num_samples and not plain.batching.shuffle and plain.batching.shard == (0, 1)
    assert _equal(_epoch(plain, 1), _epoch(plain, 2))  # neither shuffled nor augmented
    with pytest.raises(Exception, match="asked for 99 samples but the split holds only 3"):
        run.val.sample(99)


def test_an_unreadable_image_in_a_worker_is_one_line_naming_it(folder, tmp_path):
    import shutil

    bad = tmp_path / "f"
    shutil.copytree(folder, bad)
    (bad / "train" / "ant" / "ant000.jpg").write_bytes(b"junk")
    with pytest.raises(DataError) as e:  # the normalisation pass at start-up already reads it, in a worker
        _data(bad, workers=2)
    assert str(e.value).startswith(f"{bad}/train/ant/ant000.jpg is not a readable image (")
    assert "\n" not in str(e.value)


def test_pinned_memory_on_cuda_and_workers_sized_to_the_machine(monkeypatch):
    assert loader_options(torch.device("cuda"), 4)["pin_memory"] is True
    assert loader_options(torch.device("cpu"), 4) == dict(num_workers=4, pin_memory=False, persistent_workers=True,
                                                          prefetch_factor=4)
    assert loader_options(torch.device("cpu"), 0)["persistent_workers"] is False
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_workers(-1) == 4 and resolve_workers(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_workers(-1) == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_batches_arrive_on_the_gpu_from_pinned_memory(folder):
    opts = dict(name="imagefolder", root=folder, stream=True, img_size=12, batch_size=8, workers=2)
    run = build_run_data(data_config(**opts), 0, torch.device("cuda"))
    run.train.set_epoch_seed(1)
    gpu = list(run.train)  # every batch after the first was copied on the side stream during the previous one
    x, y = gpu[0]
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 12, 12)
    cpu = build_run_data(data_config(**opts), 0, CPU)
    cpu.train.set_epoch_seed(1)
    on_cpu = list(cpu.train)
    assert len(gpu) == len(on_cpu) > 1
    for (xg, yg), (xc, yc) in zip(gpu, on_cpu):
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)
