"""The README's example runs, so a newcomer's first read is true."""

from __future__ import annotations

import doctest
import pathlib

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs() -> None:
    result = doctest.testfile(str(README), module_relative=False, raise_on_error=False)
    assert result.attempted >= 10
    assert result.failed == 0
