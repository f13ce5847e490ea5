"""Fixtures of the server tests: one tiny export per session, a real server and an HTTP client per module.

The server's extras (FastAPI, uvicorn, httpx) are imported only when a server test asks for a fixture, so the export
tests in this folder still run on an install without the [serve] extra."""

import pytest


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    from tests.deploy.serving import export_tiny

    return export_tiny(tmp_path_factory.mktemp("export") / "onnx")


@pytest.fixture(scope="module")
def url(exported):
    from exitlab.deploy.serve import create_app
    from tests.deploy.serving import LIMITS, running_server

    with running_server(create_app(exported[2], limits=LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    import httpx

    with httpx.Client(base_url=url, timeout=30) as c:
        yield c
