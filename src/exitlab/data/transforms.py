"""Per-sample augmentation without torchvision: the pad-crop-flip recipe and the standard ImageNet recipe.

Every random draw comes from :func:`sample_rng`, a generator derived from (epoch seed, sample index) only, so a
sample's augmentation never depends on which worker process or rank handles it. Images are uint8 (or float, used as
given) ``[C, H, W]`` tensors, or PIL images and encoded files, which are cropped and resized by PIL in one step.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """splitmix64's output function: a 64-bit integer hash."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class SampleRng:
    """A splitmix64 stream with the few ``random.Random`` methods the recipes use; seeding costs nothing (a
    Mersenne Twister's seeding would cost about as much as the crop arithmetic of a sample)."""

    def __init__(self, state: int):
        self.state = state & _MASK

    def _next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        return _mix(self.state)

    def random(self) -> float:
        """Uniform in [0, 1), 53 bits."""
        return (self._next() >> 11) * (1.0 / (1 << 53))

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:
        """Uniform integer in [a, b] (the modulo bias is below 2^-40 for any image size)."""
        return a + self._next() % (b - a + 1)


Rng = random.Random | SampleRng  # what the recipes draw from


def sample_rng(seed: int, index: int) -> SampleRng:
    """The generator of one sample in one pass, from (epoch seed, sample index) only."""
    return SampleRng(_mix((seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 1) & _MASK))


@dataclass(frozen=True)
class Recipe:
    """How one sample becomes a ``size`` x ``size`` image for training (``train``) or evaluation."""

    augment: str = "crop_flip"  # crop_flip: resize to size, pad-crop and flip; imagenet: random resized crop + flip
    size: int = 32  # output height and width
    train: bool = False  # draw the random augmentation (else the deterministic evaluation view)
    pad: int = 0  # crop_flip: zero padding of the random crop, in pixels
    flip: bool = False  # random horizontal flip with probability 1/2
    crop_fraction: float = 0.875  # imagenet evaluation: centre crop as a share of the resized shorter side
    scale: tuple[float, float] = (0.08, 1.0)  # imagenet training: crop area as a share of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # imagenet training: crop aspect ratio (width / height)

    def evaluation(self) -> Recipe:
        """The same recipe's deterministic evaluation view."""
        return replace(self, train=False)


def random_resized_box(w: int, h: int, rng: Rng, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a crop as torchvision's ``RandomResizedCrop.get_params``: ten tries at an area
    share in ``scale`` and a log-uniform aspect ratio in ``ratio``, then the central crop clamped to ``ratio``."""
    area, log_ratio = w * h, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    if w / h < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def resized_size(w: int, h: int, size: int, crop_fraction: float) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(int(size / crop_fraction))``: the shorter side to that length."""
    short = int(size / crop_fraction)
    return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)


def center_box(w: int, h: int, size: int, crop_fraction: float) -> tuple[float, float, float, float]:
    """The evaluation view in source coordinates (left, top, right, bottom): ``Resize`` then ``CenterCrop(size)``."""
    rw, rh = resized_size(w, h, size, crop_fraction)
    left, top = int(round((rw - size) / 2)), int(round((rh - size) / 2))
    sx, sy = w / rw, h / rh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _box(w: int, h: int, r: Recipe, rng: Rng) -> tuple[float, float, float, float]:
    """The source region that becomes the ``size`` x ``size`` output (crop_flip squashes the whole image)."""
    if r.augment != "imagenet":
        return 0, 0, w, h
    if not r.train:
        return center_box(w, h, r.size, r.crop_fraction)
    left, top, cw, ch = random_resized_box(w, h, rng, r.scale, r.ratio)
    return left, top, left + cw, top + ch


def _finish(x: torch.Tensor, r: Recipe, rng: Rng) -> torch.Tensor:
    """Training draws after the resize: the padded crop (crop_flip) and the flip, on ``[C, size, size]``."""
    if not r.train:
        return x
    if r.augment == "crop_flip" and r.pad > 0:
        oy, ox = rng.randint(0, 2 * r.pad), rng.randint(0, 2 * r.pad)
        x = F.pad(x, (r.pad, r.pad, r.pad, r.pad))[:, oy : oy + r.size, ox : ox + r.size]
    if r.flip and rng.random() < 0.5:
        x = x.flip(-1)
    return x


# ---------------------------------------------------------------- PIL images and encoded files


def _draft(im, box: tuple[float, float, float, float], size: int) -> tuple[float, float, float, float]:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when the crop still has at least ``size`` pixels each way."""
    w, h = im.size
    need = (math.ceil(w * size / max(box[2] - box[0], 1e-9)), math.ceil(h * size / max(box[3] - box[1], 1e-9)))
    got = im.draft("RGB", need) if need[0] <= w and need[1] <= h else None
    if not got:
        return box
    s = w / got[1][2]  # the decoder's scale: box = (0, 0, w / scale, h / scale)
    return tuple(c / s for c in box)


def pil_view(im, r: Recipe, rng: Rng, *, draft: bool = False) -> torch.Tensor:
    """A PIL image through the recipe: one crop-and-resize by PIL (bilinear), then ``[C, size, size]`` uint8."""
    from PIL import Image

    box = _box(*im.size, r, rng)
    if draft:
        box = _draft(im, box, r.size)
    if im.mode != "RGB" and (draft or im.mode != "L"):  # files decode as RGB; in-memory L images keep one channel
        im = im.convert("RGB")
    if im.size != (r.size, r.size) or box != (0, 0, *im.size):
        im = im.resize((r.size, r.size), Image.BILINEAR, box=box)
    a = np.array(im)  # a writable copy
    x = torch.from_numpy(a[:, :, None] if a.ndim == 2 else a).permute(2, 0, 1)  # [C, size, size]
    return _finish(x, r, rng)


def file_view(src: bytes | str | Path, r: Recipe, rng: Rng, name: str = "") -> torch.Tensor:
    """An encoded image (a path or the file's bytes) decoded as RGB through the recipe; JPEGs decode at reduced
    scale when the output allows it. An unreadable file raises a DataError naming ``name``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            return pil_view(im, r, rng, draft=True)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name or src} is not a readable image ({e}); remove or replace it") from None


# ---------------------------------------------------------------- tensors and arrays


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[C, H, W]`` (uint8 stays uint8, rounded; float stays float)."""
    if tuple(x.shape[1:]) == hw:
        return x
    return F.interpolate(x[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0]


def tensor_view(x: torch.Tensor, r: Recipe, rng: Rng) -> torch.Tensor:
    """A ``[C, H, W]`` tensor through the recipe, with torch ops: crop, resize, then the training draws."""
    _, h, w = x.shape
    if r.augment == "imagenet" and not r.train:
        rw, rh = resized_size(w, h, r.size, r.crop_fraction)
        x = _resize(x, (rh, rw))
        top, left = int(round((rh - r.size) / 2)), int(round((rw - r.size) / 2))
        return x[:, top : top + r.size, left : left + r.size]
    if r.augment == "imagenet":
        left, top, cw, ch = random_resized_box(w, h, rng, r.scale, r.ratio)
        x = x[:, top : top + ch, left : left + cw]
    return _finish(_resize(x, (r.size, r.size)), r, rng)


def channels_first(a: np.ndarray | torch.Tensor, layout: str = "auto") -> torch.Tensor:
    """One image as a ``[C, H, W]`` tensor. ``layout`` is CHW, HWC or auto: HWC when the last axis has 1 or 3
    entries and the first does not; a 2-D image is one channel."""
    x = torch.as_tensor(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a)
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise DataError(f"an image must have 2 or 3 dimensions (H, W[, C]), got shape {tuple(x.shape)}")
    hwc = layout == "HWC" or (layout == "auto" and x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3))
    return x.permute(2, 0, 1) if hwc else x


def view(img, r: Recipe, rng: Rng, name: str = "") -> torch.Tensor:
    """Any supported image through the recipe: an encoded file (path or bytes), a PIL image, an array or a tensor."""
    if isinstance(img, (bytes, str, Path)):
        return file_view(img, r, rng, name)
    if isinstance(img, (np.ndarray, torch.Tensor)):
        return tensor_view(channels_first(img), r, rng)
    if hasattr(img, "convert") and hasattr(img, "size"):  # a PIL image
        return pil_view(img, r, rng)
    raise DataError(f"{name or 'a sample'}: images must be tensors, numpy arrays, PIL images or encoded files, got "
                    f"{type(img).__name__}")
