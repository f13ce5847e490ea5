"""A small HTTP inference server over an ONNX export: ``exitlab serve EXPORT_DIR --port P``.

``POST /predict`` takes one image (PNG or JPEG, as a multipart upload or a raw ``image/*`` body) or a batch (a JSON
array, ``{"inputs": [...]}``, or a ``.npy`` file) and answers, per sample, the class, the exit taken, the confidence
and the FLOPs spent. ``GET /health`` describes the loaded model. Every bad request gets a 4xx JSON ``{"error": ...}``
and the server goes on serving. Needs ``pip install 'exitlab[serve]'`` (FastAPI, uvicorn, python-multipart, Pillow).

Input conventions and the checks on every body are in :mod:`exitlab.deploy.decode`.

Bodies are decoded in a small pool of decode threads (``Limits.max_decodes``), never on the event loop: a large or
slow image cannot stall ``/health`` or other clients, and requests beyond the pool's size wait their turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExitlabError
from ..evaluation.policies import Policy
from .decode import NPY_MAGIC, BadRequest, decode_request
from .export.runtime import OnnxModel

try:  # the [serve] extra; create_app names what is missing
    from starlette.requests import Request
except ImportError:  # pragma: no cover
    Request = None

log = logging.getLogger("exitlab")

MAX_BODY_BYTES = 8 << 20  # 8 MiB
MAX_BATCH = 256
MAX_DECODES = 4  # bodies decoded at once; more requests wait for a free decode thread


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Limits:
    """What one request may ask of the server; checked on construction."""

    max_body_bytes: int = MAX_BODY_BYTES  # largest request body (--max-body-mb)
    max_batch: int = MAX_BATCH  # most samples in one request (--max-batch)
    max_decodes: int = MAX_DECODES  # request bodies decoded at once; further requests wait

    def __post_init__(self):
        for name, flag in (("max_body_bytes", "--max-body-mb"), ("max_batch", "--max-batch"), ("max_decodes", None)):
            value = getattr(self, name)
            if not _whole(value) or value < 1:
                hint = f" (set by {flag})" if flag else ""
                raise ExitlabError(f"Limits.{name}{hint} must be a whole number >= 1, got {value!r}")

    @classmethod
    def from_cli(cls, max_body_mb: float, max_batch: int) -> Limits:
        """Limits from the CLI's ``--max-body-mb`` (MiB, may be fractional) and ``--max-batch``."""
        if not (isinstance(max_body_mb, int | float) and math.isfinite(max_body_mb) and max_body_mb * (1 << 20) >= 1):
            raise ExitlabError(f"--max-body-mb must be a positive number of MiB (e.g. 8), got {max_body_mb!r}")
        if not _whole(max_batch) or max_batch < 1:
            raise ExitlabError(f"--max-batch must be a whole number >= 1, got {max_batch!r}")
        return cls(max_body_bytes=int(max_body_mb * (1 << 20)), max_batch=max_batch)


def check_port(port: int) -> int:
    """The TCP port to listen on: 1..65535 (0, "any free port", is refused: the printed address would be wrong)."""
    if not _whole(port) or not 1 <= port <= 65535:
        raise ExitlabError(f"--port must be a whole number in 1..65535, got {port!r}")
    return port


def _answer(model: OnnxModel, x: np.ndarray) -> dict:
    res = model.predict(x)
    bad = np.flatnonzero(~np.isfinite(res.logits).all(-1))
    if len(bad):
        raise BadRequest(422, f"the model produced non-finite logits (NaN or infinity) for samples "
                              f"{bad[:10].tolist()}; the inputs are far outside the range it was trained on")
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


async def _read_body(request) -> tuple[str, bytes]:
    """The payload's kind ("image", "npy" or "json", by content type and upload name) and its bytes, undecoded."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest(422, 'multipart upload needs a file field named "file"')
        data = await upload.read()
        npy = (upload.filename or "").endswith(".npy") or data[:6] == NPY_MAGIC
        return ("npy" if npy else "image"), data
    if ctype.startswith("image/"):
        return "image", await request.body()
    if ctype == "application/json":
        return "json", await request.body()
    if ctype in ("application/octet-stream", "application/x-npy"):
        return "npy", await request.body()
    raise BadRequest(415, f"unsupported content type {ctype or '(none)'}; send multipart/form-data, image/png, "
                          "image/jpeg, application/json or application/octet-stream (.npy)")


def _handlers(app, error) -> None:
    """Every error as JSON ``{"error", "status"}``: refusals, HTTP errors, validation errors and bugs (500)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

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


def create_app(export_dir: str | Path, *, policy: Policy | None = None, limits: Limits | None = None,
               threads: int = 1):
    """The FastAPI app. Loads and checks the export now, so a broken export fails here, not on the first request.

    There are no ``/docs``, ``/redoc`` or ``/openapi.json`` routes: the API is documented in docs/deployment.md.
    """
    try:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse
        from starlette.concurrency import run_in_threadpool
    except ImportError as e:
        raise ExitlabError(f"serving needs {e.name}; install it with pip install 'exitlab[serve]'") from None
    if Request is None:
        raise ExitlabError("serving needs starlette; install it with pip install 'exitlab[serve]'")
    limits = limits or Limits()
    model = OnnxModel(export_dir, policy=policy, threads=threads)
    decoder = ThreadPoolExecutor(limits.max_decodes, thread_name_prefix="exitlab-decode")  # threads start on demand
    app = FastAPI(title="exitlab", description="early-exit inference over an ONNX export", docs_url=None,
                  redoc_url=None, openapi_url=None)
    _handlers(app, lambda status, message: JSONResponse({"error": message, "status": status}, status_code=status))

    @app.get("/health")
    async def health() -> dict:
        man = model.manifest
        return {"status": "ok", "layout": man.layout, "num_exits": man.num_exits, "input_shape": man.input_shape,
                "classes": man.classes, "exit_flops": man.exit_flops,
                "policy": model.policy.to_dict() if model.policy else None,
                "limits": {"max_body_bytes": limits.max_body_bytes, "max_batch": limits.max_batch,
                           "max_decodes": limits.max_decodes}}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        kind, data = await _read_body(request)
        loop = asyncio.get_running_loop()
        # waits for a free decode thread
        x = await loop.run_in_executor(decoder, decode_request, kind, data, model, limits.max_batch)
        return await run_in_threadpool(_answer, model, x)

    app.state.model = model
    return BodyLimit(app, limits.max_body_bytes)


def serve(export_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, policy: Policy | None = None,
          limits: Limits | None = None, threads: int = 1) -> None:
    """Load the export (failing fast on a broken one) and serve it with uvicorn until interrupted."""
    check_port(port)
    app = create_app(export_dir, policy=policy, limits=limits, threads=threads)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
