"""The contract ships with the project: docs/ecpay-api.md (issue 10, item 6).

Every "section N" in the repository names a section that docs/ecpay-api.md has, every link into it
names an anchor it has, every rule R1-R23 is in it, and nothing points outside the repository to
where the contract used to live. The repository has one document with numbered sections, so every
"section N" in it is read as a reference to the contract; the older wording ("spec section 9",
"spec 9", "the spec") is refused, because that document is no longer in the repository.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "ecpay-api.md"
THIS = pathlib.Path(__file__).resolve()

#: The contract's numbered sections, in order: the numbering other files cite must not change.
NUMBERED = ["1", "2", "2.1", "3", "4", "5", "6", "7", "8", "9", "10", "11"]

_HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? \S", re.MULTILINE)
_ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
_NUMBER = r"\d+(?:\.\d+)?"
# "section 9", "sections 2-5", "sections 8 and 10", "sections 9, 10", across a line break too.
_REFERENCE = re.compile(
    rf"\bsections?\s+({_NUMBER}(?:\s*(?:-|–|,|and|or)\s*{_NUMBER})*)", re.IGNORECASE
)
_LINK = re.compile(r"ecpay-api\.md#([\w.-]+)")
_LOCAL_LINK = re.compile(r"\]\(#([\w.-]+)\)")
# Wording from before the contract was in the repository.
_STALE = re.compile(r"\bspec(?:'s)?\s+(?:sections?\s+)?\d|\bspec-\d|\bthe spec\b", re.IGNORECASE)
_OUTSIDE = re.compile(r"\.\./shared|shared/spec|shared/seed|ecpay-credit\.md")
_SKIPPED_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
}


def _read(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _where(path: pathlib.Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{_line(text, offset)}"


def sections(text: str) -> list[str]:
    """The numbers of the contract's numbered headings, in order."""
    return [match.group(2) for match in _HEADING.finditer(text)]


def anchors(text: str) -> set[str]:
    """The explicit anchors (``<a id="...">``) of a markdown text."""
    return set(_ANCHOR.findall(text))


def cited(reference: str) -> list[str]:
    """The section numbers one reference names: ``"2-5"`` is 2, 3, 4 and 5."""
    numbers: list[str] = []
    for part in re.split(r"\s*(?:,|\band\b|\bor\b)\s*", reference):
        bounds = [bound for bound in re.split(r"\s*[-–]\s*", part) if bound]
        if len(bounds) == 2 and all(bound.isdigit() for bound in bounds):
            numbers.extend(str(n) for n in range(int(bounds[0]), int(bounds[1]) + 1))
        else:
            numbers.extend(bounds)
    return numbers


def broken_references(text: str, known: set[str]) -> list[tuple[int, str]]:
    """``(offset, number)`` for every "section N" in ``text`` that ``known`` does not have."""
    return [
        (match.start(), number)
        for match in _REFERENCE.finditer(text)
        for number in cited(match.group(1))
        if number not in known
    ]


def _files(*patterns: str) -> list[pathlib.Path]:
    found = {path for pattern in patterns for path in ROOT.glob(pattern) if path.is_file()}
    return sorted(path for path in found if path.resolve() != THIS)


#: Where the contract is cited: the README and changelog, the docs, the code's docstrings and
#: comments, the examples, the benchmarks and the tests.
CITING = _files(
    "*.md",
    "docs/*.md",
    "src/**/*.py",
    "examples/*.py",
    "benchmarks/*.py",
    "benchmarks/*.md",
    "tests/**/*.py",
)
#: Recorded replies and their notes may cite "section N" of other documents (ECPay's, a public
#: project's), so only their wording is checked.
NAMING = CITING + _files("tests/**/*.md", "tests/**/*.json")


def _repository_files() -> list[pathlib.Path]:
    files = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT).parts
        if any(part in _SKIPPED_DIRS or part.endswith(".egg-info") for part in relative):
            continue
        if path.is_file() and path.resolve() != THIS:
            files.append(path)
    return sorted(files)


CONTRACT_TEXT = _read(CONTRACT)
KNOWN = set(sections(CONTRACT_TEXT))
ANCHORS = anchors(CONTRACT_TEXT)


# -- the contract itself -------------------------------------------------------------------------


def test_the_contract_keeps_the_numbering_every_reference_relies_on() -> None:
    assert sections(CONTRACT_TEXT) == NUMBERED


def test_every_numbered_section_and_the_open_questions_have_an_explicit_anchor() -> None:
    for number in NUMBERED:
        heading = re.search(rf"^#{{2,3}} {re.escape(number)}\.? ", CONTRACT_TEXT, re.MULTILINE)
        assert heading is not None, number
        before = CONTRACT_TEXT[: heading.start()].rstrip().rsplit("\n", 1)[-1]
        assert before == f'<a id="section-{number}"></a>', f"section {number}: {before!r}"
    assert re.search(r'<a id="open-questions"></a>\s+## Open questions\n', CONTRACT_TEXT), (
        "the Open questions section and its anchor"
    )


def test_every_rule_r1_to_r23_has_its_row_in_section_7() -> None:
    start = CONTRACT_TEXT.index('<a id="section-7"></a>')
    end = CONTRACT_TEXT.index('<a id="section-8"></a>')
    rows = re.findall(r"^\| (R\d+) \|", CONTRACT_TEXT[start:end], flags=re.MULTILINE)
    assert rows == [f"R{n}" for n in range(1, 24)]


@pytest.mark.parametrize("rule", ["R21", "R22", "R23"])
def test_section_9_explains_each_unknown_outcome_rule(rule: str) -> None:
    start = CONTRACT_TEXT.index('<a id="section-9"></a>')
    end = CONTRACT_TEXT.index('<a id="section-10"></a>')
    assert f"**{rule}," in CONTRACT_TEXT[start:end]


@pytest.mark.parametrize("mark", ["[DOC]", "[OBS]", "[HOUSE]"])
def test_the_evidence_marks_are_kept(mark: str) -> None:
    assert CONTRACT_TEXT.count(mark) >= 5, mark


@pytest.mark.parametrize(
    "code",
    [
        "10000002",
        "更新失敗.(error_amount_R)",
        "10100027",
        "error_nopay",
        "5000220",
        "5000261",
        "10000185",
        "`110`",
        "`104`",
        "`115`",
        "`128`",
        "403",
        "500",
    ],
)
def test_the_codes_ecpay_was_seen_to_answer_are_described(code: str) -> None:
    assert code in CONTRACT_TEXT


def test_the_contracts_own_links_land_on_its_anchors() -> None:
    targets = _LOCAL_LINK.findall(CONTRACT_TEXT)
    assert len(targets) > 20
    assert sorted(set(targets) - ANCHORS) == []


# -- the checker fails when it should -------------------------------------------------------------


def test_a_reference_to_a_missing_section_is_caught() -> None:
    # The contract without its section 9: each way of citing 9 must be reported.
    known = KNOWN - {"9"}
    text = "see section 9; sections 8 and 9; sections 2-10; section\n    9, R22"
    assert [number for _, number in broken_references(text, known)] == ["9", "9", "9", "9"]
    assert broken_references("section 2.1, sections 3 and 4, sections 9, 10", KNOWN) == []
    assert broken_references("section 12", KNOWN) == [(0, "12")]


def test_the_stale_wording_is_caught() -> None:
    for stale in ("spec section 9", "(spec 9)", "Spec sections 2-5", "the spec's table", "spec-9"):
        assert _STALE.search(stale), stale
    for fine in ("for spec in TRANSITIONS", "spec.loader", "SPEC_CREDIT_DETAIL", "TransitionSpec"):
        assert not _STALE.search(fine), fine


# -- the rest of the repository ------------------------------------------------------------------


def test_the_files_that_cite_the_contract_are_found() -> None:
    names = {str(path.relative_to(ROOT)) for path in CITING}
    for expected in (
        "README.md",
        "docs/rules.md",
        "docs/ecpay-api.md",
        "src/ecpay_lifecycle/_codec.py",
    ):
        assert expected in names
    total = sum(len(_REFERENCE.findall(_read(path))) for path in CITING)
    assert total > 50, "the reference pattern no longer finds the references"


@pytest.mark.parametrize("path", CITING, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_section_reference_names_a_section_of_the_contract(path: pathlib.Path) -> None:
    text = _read(path)
    broken = [
        f"{_where(path, text, offset)}: section {number}"
        for offset, number in broken_references(text, KNOWN)
    ]
    assert broken == [], f"docs/ecpay-api.md has no such section: {broken}"


@pytest.mark.parametrize("path", CITING, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_into_the_contract_lands_on_an_anchor(path: pathlib.Path) -> None:
    text = _read(path)
    broken = [
        f"{_where(path, text, match.start())}: #{match.group(1)}"
        for match in _LINK.finditer(text)
        if match.group(1) not in ANCHORS
    ]
    assert broken == [], f"docs/ecpay-api.md has no such anchor: {broken}"


@pytest.mark.parametrize("path", NAMING, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_contract_is_cited_by_its_name(path: pathlib.Path) -> None:
    text = _read(path)
    stale = [
        f"{_where(path, text, match.start())}: {match.group(0)!r}"
        for match in _STALE.finditer(text)
    ]
    assert stale == [], f"cite docs/ecpay-api.md section N instead: {stale}"


def test_nothing_points_outside_the_repository() -> None:
    outside = []
    for path in _repository_files():
        try:
            text = _read(path)
        except (UnicodeDecodeError, OSError):
            continue  # binary files cite nothing
        outside.extend(
            f"{_where(path, text, match.start())}: {match.group(0)}"
            for match in _OUTSIDE.finditer(text)
        )
    assert outside == []
