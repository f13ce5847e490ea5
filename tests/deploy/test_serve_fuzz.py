"""Fuzzing the HTTP API: random bodies and headers against a real uvicorn on 127.0.0.1.

Every answer is a 200 or a 4xx with a JSON body ``{"error", "status"}`` (never a 5xx: non-finite logits are a 422
too), and the server answers ``/health`` after every example. Derandomised, so CI sees the same examples each run.
"""

from __future__ import annotations

import io
import json
import socket
import struct

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from exitlab.deploy.serve import create_app  # noqa: E402
from tests.deploy.serving import LIMITS, SHAPE, export_tiny, npy_header, png_header, running_server  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CTYPES = st.one_of(
    st.sampled_from(["application/json", "application/octet-stream", "application/x-npy", "image/png", "image/jpeg",
                     "image/gif", "image/", "multipart/form-data", "multipart/form-data; boundary=b", "text/plain",
                     "application/json; charset=utf-16", "IMAGE/PNG", "", ";", "application/x-www-form-urlencoded"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
NUMBERS = st.one_of(st.integers(-300, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=3))


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    out = export_tiny(tmp_path_factory.mktemp("fuzz") / "onnx")[2]
    with running_server(create_app(out, limits=LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def check(client, r) -> None:
    """A 200 with predictions or a 4xx JSON error, and the server still healthy."""
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code == 200:
        assert isinstance(body["predictions"], list)  # empty for an empty batch
    else:
        assert isinstance(body["error"], str) and body["status"] == r.status_code, body
    assert client.get("/health").status_code == 200


@FUZZ
@given(body=st.binary(max_size=4096), ctype=CTYPES)
def test_random_bytes(client, body, ctype):
    check(client, client.post("/predict", content=body, headers={"content-type": ctype}))


JSON_VALUES = st.recursive(NUMBERS, lambda c: st.lists(c, max_size=6) | st.dictionaries(
    st.sampled_from(["inputs", "pixels", "x"]), c, max_size=3), max_leaves=40)


@st.composite
def near_valid_arrays(draw) -> np.ndarray:
    """Arrays near what the model takes: its shape (with or without a batch) or off by a dimension; random or
    extreme values (-3e38 everywhere makes NaN logits, 1e300 overflows float32); every dtype family."""
    shape = draw(st.one_of(st.just(SHAPE), st.integers(0, 3).map(lambda b: (b, *SHAPE)),
                           st.lists(st.sampled_from([0, 1, 2, 15, 16, 17]), max_size=5).map(tuple)))
    scale = draw(st.sampled_from([1.0, 100.0, 1e37, -3e38, 1e300, np.nan, np.inf]))
    values = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape)
    values = np.ones(shape) if draw(st.booleans()) else values  # all -3e38: NaN logits at every exit
    dtype = draw(st.sampled_from([np.float32, np.float64, np.uint8, np.int16, np.uint16, np.float16, np.bool_]))
    with np.errstate(all="ignore"):
        return (np.abs(values) * scale if dtype == np.uint8 else values * scale).astype(dtype)


@FUZZ
@given(value=JSON_VALUES | near_valid_arrays().map(lambda a: a.tolist()), pixels=st.sampled_from([None, True, False]))
def test_random_json(client, value, pixels):
    payload = {"inputs": value, "pixels": pixels} if pixels is not None else value
    body = json.dumps(payload).encode()  # Python's JSON: NaN and Infinity as bare words
    check(client, client.post("/predict", content=body, headers={"content-type": "application/json"}))


@FUZZ
@given(arr=near_valid_arrays(), fortran=st.booleans(), cut=st.integers(0, 64), raw=st.booleans())
def test_random_npy(client, arr, fortran, cut, raw):
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran else arr)
    data = buf.getvalue()[:len(buf.getvalue()) - cut]  # sometimes truncated
    if raw:
        r = client.post("/predict", content=data, headers={"content-type": "application/octet-stream"})
    else:
        r = client.post("/predict", files={"file": ("x.npy", data, "application/octet-stream")})
    check(client, r)


@FUZZ
@given(descr=st.sampled_from(["<f4", ">f8", "|u1", "<i8", "|O", "V8", "<U3", "[('a', '<f4')]", "(2,)<f4", "|b1"]),
       shape=st.lists(st.sampled_from([0, 1, 16, 2**31, 2**40, 2**62]), max_size=4), version=st.sampled_from([1, 2, 3]),
       payload=st.binary(max_size=1200), garbage=st.booleans())
def test_random_npy_headers(client, descr, shape, version, payload, garbage):
    try:
        header = npy_header(descr, tuple(shape), version)
    except ValueError:  # numpy's writer refuses some descriptors; send a hand-made header instead
        header = b"\x93NUMPY\x01\x00" + struct.pack("<H", 40) + f"{{'descr': {descr!r}, 'shape': ()}}".encode()
    if garbage:
        header = header[:10] + payload[:20] + header[30:]
    check(client, client.post("/predict", content=header + payload, headers={"content-type": "application/x-npy"}))


@st.composite
def images(draw) -> bytes:
    """Real PNG/JPEG files in every PIL mode, at the model's size or not, sometimes with bytes flipped or cut."""
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG"
    size = draw(st.sampled_from([(16, 16), (16, 16), (15, 16), (1, 1), (64, 64)]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA").convert(mode) if mode != "I;16" else \
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)  # 16-bit grey
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 3))):  # flip some bytes past the signature
        i = draw(st.integers(8, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(8, len(data)))] if draw(st.booleans()) else data)


@st.composite
def png_headers(draw) -> bytes:
    """PNG headers declaring any size, bit depth and colour type, with random pixel data."""
    w, h = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        w, h = draw(st.sampled_from([(16, 16), (4096, 4096), (20000, 20000), (1, 2**31 - 1)]))
    depth, color = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])), draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
    return png_header(w, h, depth, color, idat=draw(st.binary(min_size=1, max_size=300)))


@FUZZ
@given(data=images() | png_headers(), ctype=st.sampled_from(["image/png", "image/jpeg", "multipart"]))
def test_random_images(client, data, ctype):
    if ctype == "multipart":
        r = client.post("/predict", files={"file": ("x.png", data, "image/png")})
    else:
        r = client.post("/predict", content=data, headers={"content-type": ctype})
    check(client, r)


@settings(FUZZ, max_examples=40)
@given(body=st.binary(max_size=600) | JSON_VALUES.map(lambda v: json.dumps(v).encode()), data=st.data())
def test_content_length_shorter_than_the_body(url, client, body, data):
    """httpx refuses to send a Content-Length that differs from the body; a raw socket can. The server reads the
    declared bytes, answers them with JSON, and closes the connection (Connection: close) without reading on."""
    length = data.draw(st.integers(0, len(body)))
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % length + body)
        reply = b""
        while chunk := s.recv(1 << 16):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status == 200 or 400 <= status < 500, reply[:300]
    if status != 200:
        assert json.loads(payload)["status"] == status
    assert client.get("/health").status_code == 200
