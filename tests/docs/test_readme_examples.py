"""The README's user-facing test example runs as written (docs stay true to the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _block_containing(marker: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if marker in block:
            return str(block)
    raise AssertionError(f"no python block in README.md contains {marker!r}")


def test_readme_failover_test_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_my_failover=_block_containing("def test_my_app_survives"))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
