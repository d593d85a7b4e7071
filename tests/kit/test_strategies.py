"""The public strategies reach the whole space they promise, and only valid values."""

from __future__ import annotations

import datetime as dt
import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    OrderSnapshot,
    PaymentKind,
    RuleViolation,
    State,
    plan_refund,
    strategies,
)
from ecpay_lifecycle._rules import TAIPEI, forced_abandon_at, in_blackout
from ecpay_lifecycle.strategies import (
    REFERENCE_TIME,
    refund_requests,
    snapshots,
    taipei_datetimes,
)

OUTSIDE_WINDOW = REFERENCE_TIME  # 10:00 Taipei


def collect(strategy: st.SearchStrategy[object], examples: int = 1500) -> list[object]:
    seen: list[object] = []

    @settings(max_examples=examples, database=None, derandomize=True)
    @given(strategy)
    def draw(value: object) -> None:
        seen.append(value)

    draw()
    return seen


def test_snapshots_reach_every_valid_state_and_kind_combination() -> None:
    drawn = collect(snapshots())
    combos = {(s.state, s.kind) for s in drawn}  # type: ignore[attr-defined]
    expected = {
        (state, kind)
        for state in State
        for kind in PaymentKind
        if not (kind is PaymentKind.UNIONPAY and state is State.AUTHORIZED)
    }
    assert combos == expected
    assert {s.pending_capture for s in drawn} == {True, False}  # type: ignore[attr-defined]
    assert {s.pending_refund for s in drawn} == {True, False}  # type: ignore[attr-defined]
    assert {s.auto_close for s in drawn} == {True, False}  # type: ignore[attr-defined]


def test_snapshots_cover_authorization_ages_across_the_day_rules() -> None:
    ages = {(REFERENCE_TIME - s.authorized_at).days for s in collect(snapshots(), 600)}  # type: ignore[attr-defined]
    assert min(ages) < 21 < max(ages)
    assert any(a >= 90 for a in ages)


@given(snapshots(states=(State.TO_CLOSE,), kinds=(PaymentKind.UNIONPAY,)))
def test_snapshots_respect_r8(snapshot: OrderSnapshot) -> None:
    assert snapshot.capture_settled


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        snapshots(states=(State.AUTHORIZED,), kinds=(PaymentKind.UNIONPAY,))
    with pytest.raises(InvalidArgument):
        snapshots(max_amount=0)


def test_snapshots_shrink_to_a_small_ordinary_authorized_order() -> None:
    from hypothesis import find

    smallest = find(snapshots(), lambda s: True, settings=settings(database=None))
    assert smallest.state is State.AUTHORIZED
    assert smallest.kind is PaymentKind.ONE_TIME
    assert smallest.amount == 1


def test_from_type_is_registered() -> None:
    drawn = collect(st.from_type(OrderSnapshot), 50)
    assert all(isinstance(s, OrderSnapshot) for s in drawn)


@given(st.data())
def test_refund_requests_are_planned_by_default_outside_the_window(data: st.DataObject) -> None:
    snapshot = data.draw(snapshots(states=(State.AUTHORIZED, State.TO_CLOSE, State.CLOSED)))
    if snapshot.refundable == 0 or (
        not snapshot.auto_close
        and snapshot.state is not State.CLOSED
        and not snapshot.pending_refund
        and snapshot.authorized_at + dt.timedelta(days=90) < OUTSIDE_WINDOW
    ):
        return  # nothing refundable, or R7 past day 90 (not about the amount)
    amount = data.draw(refund_requests(snapshot))
    plan = plan_refund(snapshot, amount, now=OUTSIDE_WINDOW)
    assert plan.refund_total == (snapshot.refundable if amount is None else amount)


@given(st.data())
def test_refund_requests_default_to_what_the_planner_accepts(data: st.DataObject) -> None:
    """Over any snapshot and instant: a default draw is planned, unless a time rule refuses the
    refund whatever its amount (R5's window; R7 after day 90, where the plan abandons an order
    never captured); an order with nothing to refund has no valid request, and says so."""
    snapshot = data.draw(snapshots(), label="snapshot")
    if not (snapshot.state.actionable and snapshot.refundable):
        with pytest.raises(InvalidArgument, match="valid=False"):
            refund_requests(snapshot)
        return
    amount = data.draw(refund_requests(snapshot), label="amount")
    now = data.draw(
        taipei_datetimes()
        | taipei_datetimes(near_batch=True)
        | taipei_datetimes(authorized_at=snapshot.authorized_at),
        label="now",
    )
    abandons = snapshot.state is State.AUTHORIZED or (
        snapshot.pending_capture and amount in (None, snapshot.refundable)
    )
    time_rule = None
    if snapshot.auto_close and in_blackout(now, auto_close=True):
        time_rule = "R5"
    elif not snapshot.auto_close and abandons and now > forced_abandon_at(snapshot.authorized_at):
        time_rule = "R7"
    if time_rule is not None:
        with pytest.raises(RuleViolation) as refusal:
            plan_refund(snapshot, amount, now=now)
        assert refusal.value.rule == time_rule, str(refusal.value)
    else:
        plan = plan_refund(snapshot, amount, now=now)
        assert plan.refund_total == (snapshot.refundable if amount is None else amount)


def _planned(pair: object) -> bool:
    snapshot, amount = pair  # type: ignore[misc]
    try:
        plan_refund(snapshot, amount, now=OUTSIDE_WINDOW)
    except (RuleViolation, InvalidAmount, InvalidArgumentType):
        return False
    return True


def test_refund_requests_draw_refused_requests_only_when_asked() -> None:
    refundable = snapshots(
        states=(State.AUTHORIZED, State.TO_CLOSE, State.CLOSED), auto_close=True
    ).filter(lambda s: s.refundable > 0)

    def pairs(valid: bool | None) -> list[object]:
        return collect(
            refundable.flatmap(
                lambda s: st.tuples(
                    st.just(s),
                    refund_requests(s) if valid is True else refund_requests(s, valid=valid),
                )
            ),
            400,
        )

    assert all(_planned(pair) for pair in pairs(True))  # the default
    both = [_planned(pair) for pair in pairs(None)]
    assert True in both
    assert False in both
    assert not any(_planned(pair) for pair in pairs(False))


def test_refund_requests_refuse_a_valid_that_is_not_a_bool() -> None:
    snapshot = collect(snapshots(states=(State.CLOSED,)), 1)[0]
    with pytest.raises(InvalidArgument):
        refund_requests(snapshot, valid="yes")  # type: ignore[call-overload]


@given(st.data())
def test_invalid_refund_requests_are_refused(data: st.DataObject) -> None:
    snapshot = data.draw(snapshots())
    amount = data.draw(refund_requests(snapshot, valid=False))
    with pytest.raises((RuleViolation, InvalidAmount, InvalidArgumentType)):
        plan_refund(snapshot, amount, now=OUTSIDE_WINDOW)  # type: ignore[arg-type]


def test_near_batch_datetimes_crowd_both_edges_of_the_window() -> None:
    seconds = set()
    for now in collect(taipei_datetimes(near_batch=True), 800):
        local = now.astimezone(TAIPEI)  # type: ignore[attr-defined]
        seconds.add(local.hour * 3600 + local.minute * 60 + local.second)
    start, end = 20 * 3600 + 15 * 60, 20 * 3600 + 30 * 60
    for edge in (start, end):
        assert {edge - 1, edge, edge + 1} <= seconds
    assert all(start - 120 <= s <= start + 120 or end - 120 <= s <= end + 120 for s in seconds)


def test_datetimes_come_in_several_zones_and_are_aware() -> None:
    drawn = collect(taipei_datetimes(), 300)
    assert all(d.utcoffset() is not None for d in drawn)  # type: ignore[attr-defined]
    assert len({d.utcoffset() for d in drawn}) >= 4  # type: ignore[attr-defined]


def test_day_rule_datetimes_crowd_the_21_80_90_day_marks() -> None:
    auth = REFERENCE_TIME
    offsets = {
        (d - auth).total_seconds()  # type: ignore[operator]
        for d in collect(taipei_datetimes(authorized_at=auth), 800)
    }
    for days in (21, 80, 90):
        mark = days * 86400
        assert {mark - 1, mark, mark + 1} <= offsets


def test_module_doctest_runs() -> None:
    result = doctest.testmod(strategies, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_fault_schedules_reach_every_fault_endpoint_and_action() -> None:
    from ecpay_lifecycle.emulator import Endpoint, Fault
    from ecpay_lifecycle.strategies import fault_schedules

    drawn = [f for plan in collect(fault_schedules(), 800) for f in plan]  # type: ignore[attr-defined]
    assert {f.fault for f in drawn} == {f for f in Fault if f is not Fault.DELAY}
    assert {f.endpoint for f in drawn} == {None, *Endpoint}
    assert {f.action for f in drawn} >= {None, *__import__("ecpay_lifecycle").Action}
    assert {len(p) for p in collect(fault_schedules(max_faults=2), 200)} == {0, 1, 2}  # type: ignore[arg-type]


def test_a_scheduled_fault_arms_the_emulator() -> None:
    import httpx

    from ecpay_lifecycle import Client, Credentials, RateLimited
    from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault
    from ecpay_lifecycle.strategies import ScheduledFault

    emulator = Emulator(now=REFERENCE_TIME)
    emulator.add_merchant("3002607", "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk")
    emulator.authorize("3002607", "A1", 1000)
    rule = ScheduledFault(
        fault=Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL, action=None, times=1
    ).arm(emulator)
    assert emulator.faults.pending() == (rule,)
    client = Client(
        Credentials("3002607", "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk"),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    )
    with client, pytest.raises(RateLimited):
        client.query("A1")
    assert emulator.faults.pending() == ()


def test_fault_schedules_refuse_nonsense() -> None:
    from ecpay_lifecycle.strategies import fault_schedules

    with pytest.raises(InvalidArgument):
        fault_schedules(faults=())
    with pytest.raises(InvalidArgument):
        fault_schedules(max_faults=-1)


@pytest.mark.parametrize(
    "module",
    [
        "ecpay_lifecycle.strategies",
        "ecpay_lifecycle._stateful",
        "ecpay_lifecycle._value_strategies",
        "ecpay_lifecycle",
    ],
)
def test_each_public_module_imports_in_a_fresh_interpreter(module: str) -> None:
    """pytest has hypothesis loaded already; a user's script does not (an import cycle hid here)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


KIT_MODULES = ("_value_strategies", "_schedules", "_stateful")


def test_strategies_is_a_face_over_private_modules() -> None:
    """Issue 12 item 6: the face only re-exports, and the private modules of the kit import
    each other at the top, never the face, so the import graph has no circle to defer."""
    import ast
    import importlib
    import pathlib

    face = pathlib.Path(strategies.__file__)
    tree = ast.parse(face.read_text())
    assert all(isinstance(node, ast.Expr | ast.ImportFrom | ast.Assign) for node in tree.body), (
        "strategies.py defines nothing of its own"
    )
    for name in strategies.__all__:
        value = getattr(strategies, name)
        homes = [
            m
            for m in KIT_MODULES
            if getattr(importlib.import_module(f"ecpay_lifecycle.{m}"), name, None) is value
        ]
        assert homes, f"{name} is not re-exported from a private module"
    for module in KIT_MODULES:
        source = ast.parse((face.parent / f"{module}.py").read_text())
        for node in ast.walk(source):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module != "strategies", f"{module} imports the public face"
        nested = [
            node.lineno
            for function in ast.walk(source)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        assert nested == [], f"{module} imports inside a function at lines {nested}"
