"""The docs stay true: rules.md covers R1-R23 and every test it names exists."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
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
