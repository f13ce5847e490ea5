"""The per-sample recipes against torchvision's semantics, by construction (torchvision is not installed)."""

import io
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from exitlab.data.transforms import (
    Recipe,
    center_box,
    channels_first,
    file_view,
    pil_view,
    random_resized_box,
    resized_size,
    sample_rng,
    tensor_view,
    view,
)
from tests.data.helpers import image, jpeg_bytes


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 700), h=st.integers(1, 700), seed=st.integers(0, 2**40))
def test_random_resized_box_lies_in_the_image(w, h, seed):
    left, top, cw, ch = random_resized_box(w, h, random.Random(seed))
    assert 0 <= left and 0 <= top and 0 < cw and 0 < ch and left + cw <= w and top + ch <= h


@settings(max_examples=200, deadline=None)
@given(w=st.integers(300, 900), h=st.integers(300, 900), seed=st.integers(0, 2**40))
def test_random_resized_box_respects_the_scale_and_ratio_bounds(w, h, seed):
    """Away from rounding (crops of 80+ pixels a side), area share in [0.08, 1], aspect ratio in [3/4, 4/3]."""
    left, top, cw, ch = random_resized_box(w, h, random.Random(seed))
    tol = 1 / 40  # a side is rounded by at most half a pixel
    central = (left, top) == ((w - cw) // 2, (h - ch) // 2) and (cw == w or ch == h)
    if not central:  # one of the ten tries succeeded
        assert 0.08 * (1 - 2 * tol) <= cw * ch / (w * h) <= 1
        assert 3 / 4 * (1 - 2 * tol) <= cw / ch <= 4 / 3 * (1 + 2 * tol)


def test_random_resized_box_draws_span_the_scale_range_and_both_ratios():
    rng = random.Random(0)
    boxes = [random_resized_box(500, 400, rng) for _ in range(3000)]
    shares = [cw * ch / 200_000 for _, _, cw, ch in boxes]
    ratios = [math.log(cw / ch) for _, _, cw, ch in boxes]
    assert min(shares) < 0.1 and max(shares) > 0.9
    assert min(ratios) < math.log(3 / 4) + 0.02 and max(ratios) > math.log(4 / 3) - 0.02
    # where no try is rejected, the share is uniform and the log-ratio uniform and centred, as in torchvision
    free = [random_resized_box(1000, 1000, rng, scale=(0.08, 0.5)) for _ in range(3000)]
    assert abs(np.mean([cw * ch / 1e6 for _, _, cw, ch in free]) - 0.29) < 0.01
    assert abs(np.mean([math.log(cw / ch) for _, _, cw, ch in free])) < 0.015
    lefts = [x for x, _, cw, _ in boxes if cw < 200]
    assert min(lefts) < 10 and max(lefts) > 290  # small crops are placed anywhere, not only near the corner


def test_random_resized_box_falls_back_to_the_centre_crop_clamped_to_the_ratio():
    """A 1000x10 strip: no try fits, so torchvision takes the central crop of the widest allowed ratio."""
    left, top, cw, ch = random_resized_box(1000, 10, random.Random(0))
    assert (cw, ch) == (13, 10) and (left, top) == ((1000 - 13) // 2, 0)
    assert random_resized_box(10, 1000, random.Random(0)) == (0, (1000 - 13) // 2, 10, 13)


def test_evaluation_view_is_resize_then_centre_crop():
    """torchvision's Resize(int(224 / 0.875)) then CenterCrop(224), worked by hand for a 500x375 image."""
    assert resized_size(500, 375, 224, 0.875) == (341, 256)
    assert resized_size(375, 500, 224, 0.875) == (256, 341)
    left, top, right, bottom = center_box(500, 375, 224, 0.875)
    sx = 500 / 341
    assert (left, top) == pytest.approx((58 * sx, 16 * 375 / 256)) and right - left == pytest.approx(224 * sx)


def test_pil_evaluation_view_matches_resize_then_crop_and_is_deterministic():
    a = image(np.random.default_rng(0), 1, (75, 100))
    im = Image.fromarray(a)
    r = Recipe("imagenet", 32, crop_fraction=0.875)
    one = pil_view(im, r, random.Random(0))
    rw, rh = resized_size(100, 75, 32, 0.875)
    two = np.array(im.resize((rw, rh), Image.BILINEAR))[(rh - 32 + 1) // 2 :][:32, (rw - 32) // 2 :][:, :32]
    assert one.shape == (3, 32, 32)
    assert (one.permute(1, 2, 0).int() - torch.from_numpy(two).int()).abs().max() <= 2
    assert torch.equal(one, pil_view(im, r, random.Random(99)))  # no random draw in evaluation


def test_tensor_and_pil_paths_give_nearly_the_same_image():
    a = image(np.random.default_rng(1), 2, (60, 90))
    for r in (Recipe("imagenet", 24), Recipe("crop_flip", 24)):
        t = tensor_view(channels_first(a), r, random.Random(0))
        p = pil_view(Image.fromarray(a), r, random.Random(0))
        assert t.shape == p.shape == (3, 24, 24) and t.dtype == torch.uint8
        assert (t.float() - p.float()).abs().mean() < 2


def test_training_view_is_seeded_per_sample():
    a = image(np.random.default_rng(2), 0, (50, 70))
    r = Recipe("imagenet", 16, train=True, flip=True)
    views = [tensor_view(channels_first(a), r, sample_rng(7, i)) for i in range(8)]
    again = [tensor_view(channels_first(a), r, sample_rng(7, i)) for i in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(views, again))
    assert len({x.numpy().tobytes() for x in views}) == 8  # different samples draw different crops


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**62), a=st.integers(-5, 5), span=st.integers(0, 10**6))
def test_sample_generator_draws_stay_in_their_ranges(seed, a, span):
    rng = sample_rng(seed, 3)
    assert a <= rng.randint(a, a + span) <= a + span and 0 <= rng.random() < 1 and 2 <= rng.uniform(2, 3) <= 3


def test_sample_generator_draws_are_uniform():
    rng = sample_rng(0, 0)
    u = [rng.random() for _ in range(20_000)]
    assert abs(np.mean(u) - 0.5) < 0.01 and abs(np.var(u) - 1 / 12) < 0.003
    counts = np.bincount([rng.randint(0, 6) for _ in range(7_000)], minlength=7)
    assert counts.min() > 850 and counts.max() < 1150


def test_sample_generators_depend_only_on_seed_and_index():
    first = {(s, i): sample_rng(s, i).random() for s in range(30) for i in range(300)}
    assert len(set(first.values())) == len(first)  # no two (seed, index) pairs share a stream
    assert sample_rng(5, 17).random() == first[(5, 17)]


def test_crop_flip_view_is_a_window_of_the_padded_image_and_flip_mirrors():
    x = torch.arange(3 * 6 * 6, dtype=torch.uint8).view(3, 6, 6)
    r = Recipe("crop_flip", 6, train=True, pad=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    windows = [padded[:, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
    outs = [tensor_view(x, r, sample_rng(0, k)) for k in range(40)]
    assert all(any(torch.equal(o, w) or torch.equal(o, w.flip(-1)) for w in windows) for o in outs)
    assert any(torch.equal(o, x) for o in outs) or len({o.numpy().tobytes() for o in outs}) > 10
    assert torch.equal(tensor_view(x, r.evaluation(), sample_rng(0, 0)), x)  # evaluation: the image itself


def test_jpeg_reduced_decode_stays_close_to_the_full_decode():
    """JPEGs decode at 1/2..1/8 scale when the crop keeps at least the output size; the result barely moves."""
    a = image(np.random.default_rng(3), 3, (300, 400))
    data = jpeg_bytes(a)
    r = Recipe("imagenet", 32)
    fast = file_view(data, r, random.Random(0))
    full = pil_view(Image.open(io.BytesIO(data)).convert("RGB"), r, random.Random(0))
    assert (fast.float() - full.float()).abs().mean() < 3


def test_channels_first_reads_both_layouts():
    hwc = np.zeros((5, 7, 3), dtype=np.uint8)
    assert channels_first(hwc).shape == (3, 5, 7)
    assert channels_first(torch.zeros(3, 5, 7)).shape == (3, 5, 7)
    assert channels_first(np.zeros((5, 7))).shape == (1, 5, 7)
    assert view(Image.fromarray(hwc[:, :, 0]), Recipe("crop_flip", 4), random.Random(0)).shape == (1, 4, 4)
