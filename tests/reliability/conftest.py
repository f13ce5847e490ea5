"""The bad-input catalogue's world, built once per session for all its parts."""

import pytest

from tests.reliability.bad_input_world import build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory, fashion_dir):
    return build_world(tmp_path_factory.mktemp("bad"), fashion_dir)
