"""The money rules proven by SPIN for every interleaving within the model's bounds (issue 13).

The safety protocol of docs/ecpay-api.md section 9 (R21 an accepted reply is proof, R22 the
fence, R23 one owner per operation) is modelled in model/ (model/README.md). Every model
directly under model/ must hold, checked exhaustively:

- safety, over every reachable state: P1 a key's refund is applied at most once, P2 the sum
  applied never exceeds the capture, P3 no journal record says done for a step that was not
  applied (the assertions of model/protocol.inc);
- liveness, the claim ``live`` under weak fairness: once crashes stop, every key's caller ends
  with an answer (an outcome, or the planner's refusal), in every run in which time goes on.

Every mutant under model/mutants/ removes one rule and must fail, so the models cannot pass
vacuously: on P1, or, for the recheck across the keys of one order (mutants/no_recheck.pml), on
P2. The checks run two at a time (CI has two cores) and print their figures, which
docs/safety.md quotes. Without ``spin`` the tests are skipped with how to install it; under
``CI=true`` a missing ``spin`` fails them.
"""

from __future__ import annotations

import ast
import concurrent.futures
import os
import pathlib
import re
import sys
import time
from collections.abc import Mapping
from typing import Literal

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "model"))

import spinrun  # noqa: E402  (model/spinrun.py, the model's own tooling)

MODEL = ROOT / "model"
ENGINE_FILES = [
    ROOT / "src" / "ecpay_lifecycle" / name
    for name in (
        "_engine.py",
        "_journal.py",
        "_client.py",
        "_locks.py",
        "_outcome.py",
        "_lifecycle.py",
    )
]
#: The assertion a mutant must break: P1, the key's refund applied twice...
P1 = "applied[k]<=1"
#: ... or P2, the refunds applied above the capture: the recheck's mutant, with two keys.
P2 = "total<=2"
#: The mutant that removes Engine._recheck, and the mutants that fail on P1.
RECHECK_MUTANT = "model/mutants/no_recheck.pml"
P1_MUTANTS = [mutant for mutant in spinrun.MUTANTS if mutant != RECHECK_MUTANT]
#: The rule flags of protocol.inc: one per mutant.
RULES = {
    "MUT_NO_FENCE",
    "MUT_RESUME",
    "MUT_UNCONDITIONAL_SAVE",
    "MUT_BATCH_IGNORED",
    "MUT_NO_RECHECK",
}


def require_spin(
    found: tuple[str, str] | Literal["look"] | None = "look",
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Skip without spin (or a C compiler), with how to install it; under CI=true, fail."""
    if found == "look":
        found = spinrun.tools()
    if found is not None:
        return
    message = (
        "spin or a C compiler is missing: install them (Debian: apt-get install spin gcc; "
        ".ci/run does) to run the model checks"
    )
    if environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_without_spin_the_checks_skip_saying_how_to_install_but_fail_under_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install spin gcc"):
        require_spin(None, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install spin gcc"):
        require_spin(None, {})
    with pytest.raises(pytest.skip.Exception):
        require_spin(None, {"CI": "false"})
    require_spin(("spin", "cc"), {"CI": "true"})  # present: neither skips nor fails


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], spinrun.Result]:
    """Every check of the suite, two at a time; the figures are printed."""
    require_spin()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            (model, mode): pool.submit(spinrun.check, model, mode)
            for model, mode in spinrun.suite()
        }
        found = {check: future.result() for check, future in futures.items()}
    lines = [result.line() for result in found.values()]
    lines.append(f"all model checks: {time.monotonic() - started:.0f} s, two at a time")
    print("\n" + "\n".join(lines))  # the figures docs/safety.md quotes
    return found


def test_the_models_that_must_hold_are_the_pml_files_directly_under_model() -> None:
    direct = sorted(path.relative_to(ROOT).as_posix() for path in MODEL.glob("*.pml"))
    assert direct == spinrun.MUST_HOLD
    assert len(direct) >= 4
    mutants = sorted(path.relative_to(ROOT).as_posix() for path in MODEL.glob("mutants/*.pml"))
    assert mutants == spinrun.MUTANTS
    suite = spinrun.suite()
    for model in spinrun.MUST_HOLD:
        assert (model, "safety") in suite
        assert (model, "liveness") in suite
        assert "ltl live" in (ROOT / model).read_text(encoding="utf-8")
    assert [(m, "mutant") for m in spinrun.MUTANTS] == [c for c in suite if c[1] == "mutant"]


@pytest.mark.parametrize("model", spinrun.MUST_HOLD)
def test_every_model_is_safe_in_every_reachable_state(
    results: dict[tuple[str, str], spinrun.Result], model: str
) -> None:
    result = results[(model, "safety")]
    assert result.complete, result.output
    assert result.errors == 0, f"{result.violation}\n{result.output}"
    assert result.states > 10_000  # the whole space was explored, not a stub
    assert "assertion violations\t+" in result.output  # P1-P3 were checked


@pytest.mark.parametrize("model", spinrun.MUST_HOLD)
def test_every_key_ends_with_an_answer_once_crashes_stop(
    results: dict[tuple[str, str], spinrun.Result], model: str
) -> None:
    result = results[(model, "liveness")]
    assert result.complete, result.output
    assert result.errors == 0, f"{result.violation}\n{result.output}"
    assert "never claim         \t+ (live)" in result.output
    assert "acceptance   cycles \t+ (fairness enabled)" in result.output


@pytest.mark.parametrize("mutant", P1_MUTANTS)
def test_each_mutant_gives_a_counterexample_applying_a_refund_twice(
    results: dict[tuple[str, str], spinrun.Result], mutant: str
) -> None:
    result = results[(mutant, "mutant")]
    assert result.errors >= 1, result.output
    assert result.violation == P1, result.output


def test_without_the_recheck_two_keys_refund_above_the_capture(
    results: dict[tuple[str, str], spinrun.Result],
) -> None:
    """model/cross_key_lock_loss.pml holds; without Engine._recheck (the engine before it) the
    order lock lost under a live holder lets two keys refund more than the order captured."""
    assert RECHECK_MUTANT in spinrun.MUTANTS
    result = results[(RECHECK_MUTANT, "mutant")]
    assert result.errors >= 1, result.output
    assert result.violation == P2, result.output


@pytest.mark.parametrize("mutant", spinrun.MUTANTS)
def test_each_mutant_removes_one_rule_from_a_model_that_holds(mutant: str) -> None:
    text = (ROOT / mutant).read_text(encoding="utf-8")
    flags = set(re.findall(r"^#define (MUT_\w+)", text, flags=re.MULTILINE))
    assert len(flags) == 1, flags
    assert flags <= RULES, flags
    (included,) = re.findall(r'^#include "\.\./(\w+\.pml)"', text, flags=re.MULTILINE)
    assert f"model/{included}" in spinrun.MUST_HOLD
    code = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    assert code.split() == ["#define", *flags, "#include", f'"../{included}"']


def test_every_rule_a_mutant_removes_is_used_by_the_protocol() -> None:
    protocol = (MODEL / "protocol.inc").read_text(encoding="utf-8")
    used = set(re.findall(r"\b(MUT_[A-Z_]+)\b", protocol))
    assert used == RULES
    removed = {
        flag
        for path in MODEL.glob("mutants/*.pml")
        for flag in re.findall(r"^#define (MUT_\w+)", path.read_text(encoding="utf-8"), re.M)
    }
    assert removed == RULES


def _defined_names() -> set[str]:
    """``Class.method`` and module-level names defined in the engine's modules."""
    names: set[str] = set()
    for path in ENGINE_FILES:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                names.add(node.name)
                names.update(
                    f"{node.name}.{item.name}"
                    for item in node.body
                    if isinstance(item, ast.FunctionDef)
                )
    return names


def test_every_engine_function_the_model_names_exists() -> None:
    """The model and the code stay together: each step names the function that does it, and a
    function renamed or removed in the engine fails here until the model follows."""
    protocol = (MODEL / "protocol.inc").read_text(encoding="utf-8")
    named = set(
        re.findall(
            r"\b((?:Engine|Run|Journal|Client|OrderLocks|Ledger)\.\w+|"
            r"_(?:journal|outcome|lifecycle)\.(?!py\b)\w+)",
            protocol,
        )
    )
    named = {re.sub(r"^_(journal|outcome|lifecycle)\.", "", name) for name in named}
    # Ledger is the emulator's: its methods live in emulator/_state.py.
    ledger = {name for name in named if name.startswith("Ledger.")}
    state = (ROOT / "src" / "ecpay_lifecycle" / "emulator" / "_state.py").read_text("utf-8")
    for name in ledger:
        assert f"def {name.split('.')[1]}(" in state, name
    defined = _defined_names()
    missing = sorted(name for name in named - ledger if name not in defined)
    assert missing == [], f"the model names functions the engine does not have: {missing}"
    assert len(named) >= 20


def test_every_effect_step_of_the_worker_names_its_engine_function() -> None:
    """Each atomic step of the worker prints its name, and a comment above it names the engine
    function that performs the effect."""
    protocol = (MODEL / "protocol.inc").read_text(encoding="utf-8")
    worker = protocol[protocol.index("active [NW] proctype Worker()") :]
    worker = worker[: worker.index("active proctype Env()")]
    steps = set(re.findall(r'printf\("@@ %d (\w+)', protocol))
    assert steps >= {
        "start", "open", "lock", "reclaim", "query", "resolve", "for_order", "sending",
        "recheck", "send", "reply", "release", "sw_read", "sw_free", "rc_read", "rc_get", "rc_free",
        "bo_get", "bo_save", "end",
    }  # fmt: skip
    for block in re.findall(r"atomic \{(.*?)\n\s*\}", worker, flags=re.DOTALL):
        if 'printf("@@ %d' not in block or "@@ %d start" in block:
            continue
        before = worker[: worker.index(block)]
        comment = before[before.rfind("/*") :] + block
        assert re.search(r"(Engine|Run|Journal|Client|OrderLocks)\.\w+", comment), block[:200]
