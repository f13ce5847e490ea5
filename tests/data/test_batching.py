"""The one batching rule every loader follows: a seeded order, global batches, each rank's slice of each batch."""

import pytest
import torch

from exitlab.data import StreamLoader, TensorLoader, TextLoader
from exitlab.data.batching import Batching, draw_positions, seeded
from exitlab.data.sources import TensorSamples
from exitlab.data.stream import Samples, StreamOptions
from exitlab.data.transforms import Recipe
from exitlab.errors import ConfigError


@pytest.mark.parametrize("n,bs,world", [(53, 10, 1), (53, 10, 3), (40, 8, 2), (7, 10, 4)])
def test_ranks_together_see_every_sample_once_and_the_same_number_of_batches(n, bs, world):
    order = Batching(bs, shuffle=True).order(n, seeded(3))
    parts = [Batching(bs, shuffle=True, shard=(r, world)).rank_batches(order) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // bs)
    seen = torch.cat([b for p in parts for b in p])
    assert sorted(seen.tolist()) == list(range(n))
    for i in range(len(parts[0])):  # rank r's batch i is the r-th slice of global batch i
        assert torch.equal(torch.cat([p[i] for p in parts]), order[i * bs : (i + 1) * bs])


def test_drop_last_and_the_order_depend_only_on_the_settings_and_seed():
    assert Batching(10, drop_last=True).count(53) == 5 and Batching(10).count(53) == 6
    b = Batching(10, shuffle=True)
    assert torch.equal(b.order(53, seeded(4)), b.order(53, seeded(4)))
    assert not torch.equal(b.order(53, seeded(4)), b.order(53, seeded(5)))
    assert Batching(10).order(53, seeded(4)) is None  # in order: no draw at all
    assert draw_positions(53, 5, 1).tolist() == sorted(draw_positions(53, 5, 1).tolist())


def test_bad_batch_size_and_oversized_draw_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^data.batch_size must be >= 1, got 0$"):
        Batching(0)
    with pytest.raises(ConfigError, match=r"^asked for 9 samples but the split holds only 8$"):
        draw_positions(8, 9, 0)


def test_the_three_loaders_cut_a_pass_the_same_way():
    n, bs, shard = 37, 6, (1, 2)
    x, y = torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % 3
    tokens = torch.stack([torch.ones(n, 5), torch.ones(n, 5), torch.zeros(n, 5)], 1).long()
    one = torch.ones(1)
    batching = Batching(bs, shuffle=True, drop_last=True, shard=shard)
    loaders = [TensorLoader(x, y, bs, mean=one, std=one, shuffle=True, drop_last=True, shard=shard),
               TextLoader(tokens, y, bs, shuffle=True, drop_last=True, shard=shard),
               StreamLoader(Samples(TensorSamples(x, y), y), torch.arange(n), Recipe("crop_flip", 4, train=False),
                            batching, StreamOptions((1, 4, 4), one, one))]
    want = batching.rank_batches(torch.randperm(n, generator=seeded(9)))
    for loader in loaders:
        loader.set_epoch_seed(9)
        got = loader.batch_indices()
        assert len(loader) == len(got) == n // bs and [g.tolist() for g in got] == [w.tolist() for w in want]
