"""Request bodies to model inputs for ``exitlab serve``: PNG/JPEG images, ``.npy`` files and JSON arrays, each
checked (dtype, shape, batch size, finite values) and refused with a :class:`BadRequest` naming the problem.

Images and ``uint8`` arrays are raw pixels, scaled to [0, 1] and normalised with the statistics in the export
manifest (16-bit grey images are scaled by 65535, not clipped); float arrays are model inputs as they are. These
functions run in the server's decode threads, never on its event loop.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np

from .export.runtime import OnnxModel

PIXEL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
NPY_MAGIC = b"\x93NUMPY"


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx) and a message naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _clip(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:200]}"


def _open_image(data: bytes):
    """PIL's lazy open: reads the header (format, mode, size) and no pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadRequest(415, "the upload is not a PNG or JPEG image") from None
    except Image.DecompressionBombError as e:
        raise BadRequest(413, f"image is too large to decode ({e})") from None
    except Exception as e:  # PIL's plugins raise many types (OSError, SyntaxError, ValueError, struct.error...)
        raise BadRequest(422, f"corrupt or truncated image ({_clip(e)})") from None


def _check_header(img, shape: tuple[int, ...]) -> None:
    """Format, size and channels from the header alone, before a single pixel is decoded."""
    c, h, w = shape
    if img.format not in ("PNG", "JPEG"):
        raise BadRequest(415, f"unsupported image format {img.format}; send PNG or JPEG")
    if (img.height, img.width) != (h, w):
        raise BadRequest(422, f"wrong shape: image is {img.width}x{img.height}, the model takes {w}x{h} images")
    if c not in (1, 3):
        raise BadRequest(422, f"wrong shape: the model takes {c}-channel inputs; send them as .npy or JSON")


def _pixels(img, c: int) -> np.ndarray:
    """Decoded image -> pixels ``[C, H, W]``: uint8, or uint16 for 16-bit grey (``convert("L")`` would clip it)."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535).astype(np.uint16)  # [H, W]
        return np.repeat(grey[None], c, 0)
    arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)  # [H, W] or [H, W, 3]
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_image(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """PNG or JPEG bytes -> pixels ``[1, C, H, W]``; the header must declare the model's size, else no decoding."""
    img = _open_image(data)
    _check_header(img, shape)
    try:
        img.load()
        return _pixels(img, shape[0])[None]
    except Exception as e:  # as in _open_image: corrupt pixel data fails in many ways
        raise BadRequest(422, f"corrupt or truncated {img.format} image ({_clip(e)})") from None


def _npy_header(f: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        header = read(f) if read else None
    except Exception as e:  # a malformed header raises ValueError, SyntaxError, EOFError...
        raise BadRequest(422, f"not a valid .npy file ({_clip(e)})") from None
    if header is None:
        raise BadRequest(422, f"not a valid .npy file (format version {version} is not supported; use np.save)")
    return header


def decode_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` file -> array, checked from its header before anything is allocated; never unpickles."""
    if data[:2] == b"PK":
        raise BadRequest(422, "not a valid .npy file: the body is a zip archive (.npz?); send one array as .npy")
    f = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(f)
    if dtype.kind not in "uf":
        raise BadRequest(422, f"wrong dtype {dtype.name}: send float32/float64 model inputs or uint8 pixels (object "
                              "arrays are never unpickled)")
    count, have = math.prod(shape), len(data) - f.tell()
    if count * dtype.itemsize > have:
        raise BadRequest(422, f"not a valid .npy file: the header declares {count} values of {dtype} "
                              f"({count * dtype.itemsize} bytes), the body holds {have} bytes")
    try:
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
        return arr.reshape(shape, order="F" if fortran else "C")
    except ValueError as e:
        raise BadRequest(422, f"not a valid .npy file ({_clip(e)})") from None


def decode_json(data: bytes) -> np.ndarray:
    """A JSON array (nested lists of numbers), or ``{"inputs": array, "pixels": bool}`` -> array."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise BadRequest(400, "invalid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers of over 4300 digits
        raise BadRequest(400, f"invalid JSON ({str(e)[:200]})") from None
    pixels = False
    if isinstance(obj, dict):
        if "inputs" not in obj:
            raise BadRequest(422, 'a JSON object must hold the batch under "inputs"')
        pixels = bool(obj.get("pixels", False))
        obj = obj["inputs"]
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError, RecursionError):
        raise BadRequest(422, "wrong shape: the JSON array is ragged (rows of different lengths) or nested too "
                              "deeply") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(422, f"wrong dtype: the JSON array must hold numbers only, got {arr.dtype.name} values")
    if pixels:
        if arr.dtype.kind == "f" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise BadRequest(422, "wrong dtype: pixels must be whole numbers in 0..255")
        return arr.astype(np.uint8)
    return arr.astype(np.float64)


def to_model_input(arr: np.ndarray, model: OnnxModel, max_batch: int) -> np.ndarray:
    """Check dtype and shape, add the batch dimension to a single sample, normalise pixels: ``[B, C, H, W]``."""
    shape = model.input_shape
    if arr.dtype.kind not in "uf" or (arr.dtype.kind == "u" and arr.dtype != np.uint8):
        raise BadRequest(422, f"wrong dtype {arr.dtype.name}: send float32/float64 model inputs or uint8 pixels")
    if arr.ndim == len(shape):
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        want = ", ".join(map(str, shape))
        raise BadRequest(422, f"wrong shape {list(arr.shape)}: expected [{want}] or [batch, {want}]")
    if len(arr) > max_batch:
        raise BadRequest(413, f"batch of {len(arr)} samples is over the limit of {max_batch}")
    if arr.dtype == np.uint8:
        return normalise(arr, model)
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise BadRequest(422, "inputs contain NaN or infinity (or values beyond float32's range)")
    return x


def normalise(pixels: np.ndarray, model: OnnxModel) -> np.ndarray:
    """uint8 (or 16-bit) pixels ``[B, C, H, W]`` -> float32 model inputs, with the export's normalisation if any."""
    x = pixels.astype(np.float32) / PIXEL_SCALE[pixels.dtype]  # [0, 1]; v * 257 in 16 bits gives v / 255 exactly
    norm = model.manifest.normalize
    if norm:
        mean = np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def decode_request(kind: str, data: bytes, model: OnnxModel, max_batch: int) -> np.ndarray:
    """A request body of ``kind`` ("image", "npy" or "json") -> model inputs ``[B, C, H, W]``."""
    if kind == "image":
        return normalise(decode_image(data, model.input_shape), model)
    return to_model_input(decode_npy(data) if kind == "npy" else decode_json(data), model, max_batch)
