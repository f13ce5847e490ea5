"""A small HTTP inference server over an ONNX export: ``exitlab serve EXPORT_DIR --port P``.

``POST /predict`` takes one image (PNG or JPEG, as a multipart upload or a raw ``image/*`` body) or a batch (a JSON
array, ``{"inputs": [...]}``, or a ``.npy`` file) and answers, per sample, the class, the exit taken, the confidence
and the FLOPs spent. ``GET /health`` describes the loaded model. Every bad request gets a 4xx JSON ``{"error": ...}``
and the server goes on serving. Needs ``pip install 'exitlab[serve]'`` (FastAPI, uvicorn, python-multipart, Pillow).

Input conventions: images and ``uint8`` arrays are raw pixels, scaled to [0, 1] and normalised with the statistics
in the export manifest; float arrays are model inputs as they are (already normalised, like the PyTorch path's).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ExitlabError
from .export.runtime import OnnxModel
from .policies import Policy

try:  # the [serve] extra; create_app names what is missing
    from starlette.requests import Request
except ImportError:  # pragma: no cover
    Request = None

log = logging.getLogger("exitlab")

MAX_BODY_BYTES = 8 << 20  # 8 MiB
MAX_BATCH = 256
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx) and a message naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch: int = MAX_BATCH


# ------------------------------------------------------------------ decoding
def decode_image(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 ``[1, C, H, W]``; the image must already have the model's size."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadRequest(415, "the upload is not a PNG or JPEG image") from None
    if img.format not in ("PNG", "JPEG"):
        raise BadRequest(415, f"unsupported image format {img.format}; send PNG or JPEG")
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise BadRequest(413, f"image of {img.width}x{img.height} pixels is too large")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(422, f"corrupt or truncated {img.format} image ({e})") from None
    c, h, w = shape
    if (img.height, img.width) != (h, w):
        raise BadRequest(422, f"wrong shape: image is {img.width}x{img.height}, the model takes {w}x{h} images")
    img = img.convert("L" if c == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)  # [H, W] or [H, W, 3]
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # [C, H, W]
    if arr.shape[0] != c:
        raise BadRequest(422, f"wrong shape: the model takes {c}-channel images")
    return arr[None]


def decode_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` file -> array; object arrays (which would need pickle) are refused."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise BadRequest(422, "wrong dtype: object arrays are not accepted; send float32 or uint8") from None
        raise BadRequest(422, f"not a valid .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise BadRequest(422, f"not a valid .npy file ({e})") from None


def decode_json(data: bytes) -> np.ndarray:
    """A JSON array (nested lists of numbers), or ``{"inputs": array, "pixels": bool}`` -> array."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"invalid JSON ({e})") from None
    pixels = False
    if isinstance(obj, dict):
        if "inputs" not in obj:
            raise BadRequest(422, 'a JSON object must hold the batch under "inputs"')
        pixels = bool(obj.get("pixels", False))
        obj = obj["inputs"]
    try:
        arr = np.asarray(obj)
    except ValueError:
        raise BadRequest(422, "wrong shape: the JSON array is ragged (rows of different lengths)") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(422, f"wrong dtype: the JSON array must hold numbers only, got {arr.dtype.name} values")
    if pixels:
        if arr.dtype.kind == "f" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise BadRequest(422, "wrong dtype: pixels must be whole numbers in 0..255")
        return arr.astype(np.uint8)
    return arr.astype(np.float64)


def to_model_input(arr: np.ndarray, model: OnnxModel, limits: Limits) -> np.ndarray:
    """Check dtype and shape, add the batch dimension to a single sample, normalise pixels: ``[B, C, H, W]``."""
    shape = model.input_shape
    if arr.dtype.kind not in "uf" or (arr.dtype.kind == "u" and arr.dtype != np.uint8):
        raise BadRequest(422, f"wrong dtype {arr.dtype.name}: send float32/float64 model inputs or uint8 pixels")
    if arr.ndim == len(shape):
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        want = ", ".join(map(str, shape))
        raise BadRequest(422, f"wrong shape {list(arr.shape)}: expected [{want}] or [batch, {want}]")
    if len(arr) > limits.max_batch:
        raise BadRequest(413, f"batch of {len(arr)} samples is over the limit of {limits.max_batch}")
    if arr.dtype == np.uint8:
        return normalise(arr, model)
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise BadRequest(422, "inputs contain NaN or infinity")
    return x


def normalise(pixels: np.ndarray, model: OnnxModel) -> np.ndarray:
    """uint8 pixels ``[B, C, H, W]`` -> float32 model inputs, with the export's normalisation (if recorded)."""
    x = pixels.astype(np.float32) / 255.0
    norm = model.manifest.normalize
    if norm:
        mean = np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def _answer(model: OnnxModel, x: np.ndarray) -> dict:
    res = model.predict(x)
    man = model.manifest
    full = man.exit_flops[-1]
    preds = [{"class": man.class_name(int(p)), "class_index": int(p), "exit": int(e), "confidence": float(c),
              "score": float(s), "flops": int(f), "flops_fraction": float(f) / full}
             for p, e, c, s, f in zip(res.pred, res.exit, res.confidence, res.score, res.flops)]
    return {"predictions": preds, "num_exits": man.num_exits, "full_flops": full}


# ------------------------------------------------------------------ HTTP
def _json_response(status: int, message: str) -> tuple[dict, bytes]:
    body = json.dumps({"error": message, "status": status}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, body


class BodyLimit:
    """ASGI middleware: keep at most ``max_bytes`` of a request body, else answer 413.

    Checks ``Content-Length`` first and counts the bytes actually received as well (chunked uploads have none).
    An oversized body is read and dropped up to ``drain_bytes`` so that the client, still sending, gets the 413
    instead of a reset connection; past that the connection is closed.
    """

    def __init__(self, app, max_bytes: int, drain_bytes: int = 64 << 20):
        self.app, self.max_bytes, self.drain_bytes = app, max_bytes, max(drain_bytes, max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and not length.isdigit():
            return await self._refuse(send, "Content-Length")
        if length is not None and int(length) > self.drain_bytes:
            return await self._refuse(send, "request body")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            size += len(msg.get("body", b""))
            if size <= self.max_bytes:
                chunks.append(msg.get("body", b""))
            else:
                chunks.clear()  # over the limit: keep reading (up to drain_bytes), keep nothing
            if not msg.get("more_body", False) or size > self.drain_bytes:
                break
        if size > self.max_bytes:
            return await self._refuse(send, "request body")
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # only a disconnect can follow
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, what: str) -> None:
        start, body = _json_response(413, f"{what} is over the limit of {self.max_bytes} bytes")
        await send(start)
        await send({"type": "http.response.body", "body": body})


async def _read_input(request, model: OnnxModel, limits: Limits) -> np.ndarray:
    """Decode a request by its content type into model inputs ``[B, C, H, W]``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest(422, 'multipart upload needs a file field named "file"')
        data = await upload.read()
        npy = (upload.filename or "").endswith(".npy") or data[:6] == b"\x93NUMPY"
        arr = decode_npy(data) if npy else decode_image(data, model.input_shape)
    elif ctype.startswith("image/"):
        arr = decode_image(await request.body(), model.input_shape)
    elif ctype == "application/json":
        arr = decode_json(await request.body())
    elif ctype in ("application/octet-stream", "application/x-npy"):
        arr = decode_npy(await request.body())
    else:
        raise BadRequest(415, f"unsupported content type {ctype or '(none)'}; send multipart/form-data, image/png, "
                              "image/jpeg, application/json or application/octet-stream (.npy)")
    return to_model_input(arr, model, limits)


def create_app(export_dir: str | Path, *, policy: Policy | None = None, limits: Limits | None = None,
               threads: int = 1):
    """The FastAPI app. Loads and checks the export now, so a broken export fails here, not on the first request."""
    try:
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
    except ImportError as e:
        raise ExitlabError(f"serving needs {e.name}; install it with pip install 'exitlab[serve]'") from None
    model = OnnxModel(export_dir, policy=policy, threads=threads)
    limits = limits or Limits()
    app = FastAPI(title="exitlab", description="early-exit inference over an ONNX export")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    if Request is None:
        raise ExitlabError("serving needs starlette; install it with pip install 'exitlab[serve]'")

    @app.exception_handler(BadRequest)
    async def _bad(request, exc: BadRequest):
        return error(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return error(422, str(exc.errors()[:3]))

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        log.exception("request failed")
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    async def health() -> dict:
        man = model.manifest
        return {"status": "ok", "layout": man.layout, "num_exits": man.num_exits, "input_shape": man.input_shape,
                "classes": man.classes, "exit_flops": man.exit_flops,
                "policy": model.policy.to_dict() if model.policy else None,
                "limits": {"max_body_bytes": limits.max_body_bytes, "max_batch": limits.max_batch}}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        x = await _read_input(request, model, limits)
        return await run_in_threadpool(_answer, model, x)

    app.state.model = model
    return BodyLimit(app, limits.max_body_bytes)


def serve(export_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, policy: Policy | None = None,
          limits: Limits | None = None, threads: int = 1) -> None:
    """Load the export (failing fast on a broken one) and serve it with uvicorn until interrupted."""
    app = create_app(export_dir, policy=policy, limits=limits, threads=threads)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
