"""The bad-input catalogue as a whole (its parts: ``tests/reliability/test_bad_inputs_*.py``)."""

import json

from tests.reliability.test_bad_inputs_commands import COMMAND_CASES
from tests.reliability.test_bad_inputs_config import CONFIG_CASES
from tests.reliability.test_bad_inputs_files import FILE_CASES

CASES = {**CONFIG_CASES, **FILE_CASES, **COMMAND_CASES}


def test_catalogue_size():
    """The closing note reports this count; keep it honest."""
    assert len(CASES) >= 120
    assert json.dumps(sorted(CASES))  # names are unique by construction of the dict
    assert len(CASES) == len(CONFIG_CASES) + len(FILE_CASES) + len(COMMAND_CASES)  # no name in two parts
