"""The docs stay true: rules.md covers R1-R23 and every test it names exists."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")


def test_rules_md_covers_every_rule() -> None:
    rows = re.findall(r"^\| (R\d+) \|", RULES, flags=re.MULTILINE)
    assert rows == [f"R{n}" for n in range(1, 24)]


def _defined(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return names


REFERENCES = sorted(set(re.findall(r"`(tests/[\w/]+\.py)::([\w:]+)`", RULES)))


@pytest.mark.parametrize(("path", "name"), REFERENCES)
def test_every_test_named_in_rules_md_exists(path: str, name: str) -> None:
    assert name in _defined(ROOT / path), f"{path}::{name} is named in docs/rules.md"


def test_rules_md_names_tests() -> None:
    assert len(REFERENCES) > 30


#: Text that names files of the test suite: the docs, the README, the model, the sources, the
#: examples, the benchmarks, CI's script and the suite's own helpers (not the recordings' README
#: under tests/fixtures, which names files of the projects that recorded them).
NAMING = sorted(
    path
    for pattern in (
        "*.md",
        "docs/**/*.md",
        "model/**/*",
        "src/**/*.py",
        "examples/**/*.py",
        "benchmarks/**/*",
        ".ci/run",
        "tests/**/*.py",
        "tests/**/*.md",
        "diagrams/**/*",
    )
    for path in ROOT.glob(pattern)
    if path.is_file() and path.suffix not in {".png", ".pyc"} and "fixtures" not in path.parts
)
TEST_PATH = re.compile(r"\btests/[\w/]*\w\.(?:py|md|json)\b")


def test_the_tests_are_laid_out_by_subject() -> None:
    """Every test module sits in one subject's directory; only helpers sit beside conftest.py."""
    subjects = {"core", "client", "emulator", "kit", "docs"}
    tests = ROOT / "tests"
    assert {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"} == (
        subjects | {"fixtures"}
    )
    assert not sorted(p.name for p in tests.glob("test_*.py")), "a test outside its subject"
    for subject in subjects:
        assert list((tests / subject).glob("test_*.py")), f"tests/{subject}/ has no tests"


def test_every_test_file_the_repository_names_exists() -> None:
    """A path like ``tests/client/test_workers.py`` in any doc, comment or script is a real file."""
    missing = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in NAMING
        for name in set(TEST_PATH.findall(path.read_text(encoding="utf-8", errors="replace")))
        if not (ROOT / name).exists()
    )
    assert len(NAMING) > 50
    assert not missing, missing
