import pytest

from exitlab.recipes.compare import load_compare_config, run_compare
from tests.recipes.compare.test_compare import write_config


@pytest.fixture(scope="session")
def compared(tmp_path_factory):
    """One tiny 3-regime comparison, shared by the compare and report tests."""
    d = tmp_path_factory.mktemp("compare")
    cc = load_compare_config(write_config(d / "tiny.yaml"))
    summary = run_compare(cc, d / "out")
    return d / "out", summary
