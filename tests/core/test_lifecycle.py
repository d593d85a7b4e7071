"""The one shared lifecycle machine: its definition, and agreement with the compiled table."""

from __future__ import annotations

import datetime as dt
import re
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _core_strategies import BASE, instants
from ecpay_lifecycle import PaymentKind, RuleViolation, State, _lifecycle
from ecpay_lifecycle._lifecycle import (
    MACHINE,
    MACHINE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    Context,
    Position,
    fire,
    fire_via_machine,
)

TRIGGERS = sorted({spec.trigger for spec in TRANSITIONS})


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MACHINE_STATES}
    for spec in TRANSITIONS:
        graph[spec.source].add(spec.dest)
    return graph


def reachable(start: str) -> set[str]:
    graph, seen, todo = edges(), {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_authorization() -> None:
    # UNAUTHORIZED is where every order starts; everything else is reachable from AUTHORIZED.
    assert reachable(_lifecycle.UNAUTHORIZED) == set(MACHINE_STATES)
    assert reachable(_lifecycle.AUTHORIZED) == set(MACHINE_STATES) - {_lifecycle.UNAUTHORIZED}


def test_terminal_states_have_no_exits() -> None:
    assert {_lifecycle.ABANDONED, _lifecycle.REFUNDED} <= TERMINAL_STATES
    for spec in TRANSITIONS:
        assert spec.source not in TERMINAL_STATES, spec
    for name in TERMINAL_STATES:
        assert not MACHINE.get_triggers(name)


def test_every_transition_names_its_rule_and_known_guards() -> None:
    for spec in TRANSITIONS:
        assert re.fullmatch(r"R([1-9]|1[0-9]|20)", spec.rule), spec
        for guard in spec.guards:
            assert guard in _lifecycle.GUARDS, (spec, guard)
        assert spec.effect in _lifecycle.EFFECTS


def test_machine_has_no_auto_transitions_and_matches_the_table() -> None:
    assert MACHINE.auto_transitions is False
    assert set(MACHINE.events) == set(TRIGGERS)
    declared = {(s.trigger, s.source, s.dest) for s in TRANSITIONS}
    built = {
        (name, source, t.dest)
        for name, event in MACHINE.events.items()
        for source, ts in event.transitions.items()
        for t in ts
    }
    assert built == declared
    for event in MACHINE.events.values():
        for ts in event.transitions.values():
            assert all(t.rule for t in ts)  # type: ignore[attr-defined]


def test_unauthorized_and_unsettled_are_not_actionable() -> None:
    for state in State:
        assert state.actionable == (state in (State.AUTHORIZED, State.TO_CLOSE, State.CLOSED))


def test_one_machine_serves_every_order_without_growing() -> None:
    """No machine and no model per order: planning 2,000 orders leaves the machine as it was."""
    models_before = len(MACHINE.models)
    ctx = Context(1000, PaymentKind.ONE_TIME, True, BASE, BASE, 300)
    tracemalloc.start()
    for _ in range(2000):
        fire_via_machine(Position(_lifecycle.CLOSED, 1000, 1000), "refund", ctx)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(MACHINE.models) == models_before == 1
    assert current < 200_000  # a machine per order would hold ~30 KB each: 60 MB here


def test_unknown_trigger_is_a_rule_violation() -> None:
    ctx = Context(1000, PaymentKind.ONE_TIME, True, BASE, BASE, 1000)
    for firing in (fire, fire_via_machine):
        with pytest.raises(RuleViolation) as info:
            firing(Position(_lifecycle.ABANDONED, 0, None), "refund", ctx)
        assert info.value.rule == "R9"


def test_unionpay_e_on_pending_refund_is_r8() -> None:
    ctx = Context(1000, PaymentKind.UNIONPAY, False, BASE, BASE, 1000)
    for firing in (fire, fire_via_machine):
        with pytest.raises(RuleViolation) as info:
            firing(Position(_lifecycle.TO_CLOSE_REFUND, 500, 1000), "cancel", ctx)
        assert info.value.rule == "R8"


def test_cancel_of_a_pending_refund_restores_the_settled_amount() -> None:
    ctx = Context(1000, PaymentKind.ONE_TIME, False, BASE, BASE, 1000)
    pos, rule = fire(Position(_lifecycle.TO_CLOSE_REFUND, 200, 900), "cancel", ctx)
    assert (pos, rule) == (Position(_lifecycle.CLOSED, 900, 900), "R15")
    with pytest.raises(RuleViolation, match="settled amount"):
        fire(Position(_lifecycle.TO_CLOSE_REFUND, 200, None), "cancel", ctx)


def test_batch_settles_and_refunds_when_nothing_is_left() -> None:
    ctx = Context(1000, PaymentKind.ONE_TIME, True, BASE, BASE)
    assert fire(Position(_lifecycle.TO_CLOSE_REFUND, 0, 1000), "batch", ctx)[0] == Position(
        _lifecycle.REFUNDED, 0, 0
    )
    assert fire(Position(_lifecycle.AUTHORIZED, 0, None), "batch", ctx)[0] == Position(
        _lifecycle.CLOSED, 1000, 1000
    )
    manual = Context(1000, PaymentKind.ONE_TIME, False, BASE, BASE)
    with pytest.raises(RuleViolation):
        fire(Position(_lifecycle.AUTHORIZED, 0, None), "batch", manual)


positions = st.builds(
    Position,
    st.sampled_from(MACHINE_STATES),
    st.integers(0, 5000),
    st.one_of(st.none(), st.integers(0, 5000)),
)
contexts = st.builds(
    Context,
    st.integers(1, 5000),
    st.sampled_from(PaymentKind),
    st.booleans(),
    st.just(BASE - dt.timedelta(days=30)) | instants(start=BASE - dt.timedelta(days=100), days=99),
    instants(),
    st.integers(-5, 5000),
)


@given(positions, st.sampled_from(TRIGGERS), contexts)
def test_compiled_table_and_transitions_machine_agree(
    pos: Position, trigger: str, ctx: Context
) -> None:
    """The planner's fast path decides exactly as the shared machine built from the same table."""

    def outcome(firing: object) -> object:
        assert callable(firing)
        try:
            return firing(pos, trigger, ctx)
        except RuleViolation as refusal:
            return ("refused", refusal.rule, refusal.message, refusal.retry_at)

    assert outcome(fire) == outcome(fire_via_machine)


# Each guard of the table, fired directly (the planner's recipes never send these, so only
# direct firing shows a guard that has gone soft). (state, trigger, kind, closed, amount) -> rule
L = _lifecycle
GUARD_CASES = [
    (L.TO_CLOSE_CAPTURE, "refund", PaymentKind.ONE_TIME, 1000, 1000, "R13"),
    (L.TO_CLOSE_CAPTURE, "refund", PaymentKind.ONE_TIME, 700, 701, "R10"),
    (L.CLOSED, "refund", PaymentKind.ONE_TIME, 400, 401, "R10"),
    (L.TO_CLOSE_REFUND, "refund", PaymentKind.ONE_TIME, 0, 1, "R10"),
    (L.CLOSED, "refund", PaymentKind.INSTALLMENT, 1000, 999, "R11"),
    (L.CLOSED, "refund", PaymentKind.BONUS, 1000, 1, "R12"),
    (L.TO_CLOSE_CAPTURE, "refund", PaymentKind.INSTALLMENT, 1000, 1000, "R13"),
    (L.AUTHORIZED, "abandon", PaymentKind.ONE_TIME, 0, 999, "R14"),
    (L.AUTHORIZED, "close", PaymentKind.ONE_TIME, 0, 999, "R14"),
    (L.TO_CLOSE_CAPTURE, "cancel", PaymentKind.ONE_TIME, 1000, 1, "R14"),
    (L.CLOSED, "refund", PaymentKind.ONE_TIME, 1000, 0, "R19"),
    (L.CLOSED, "refund", PaymentKind.ONE_TIME, 1000, 1001, "R19"),
    (L.CLOSED, "close", PaymentKind.ONE_TIME, 1000, 1000, "R9"),
    (L.CLOSED, "abandon", PaymentKind.ONE_TIME, 1000, 1000, "R9"),
    (L.TO_CLOSE_REFUND, "cancel", PaymentKind.UNIONPAY, 500, 1000, "R8"),
    (L.CLOSED, "close", PaymentKind.UNIONPAY, 1000, 1000, "R8"),
]


@pytest.mark.parametrize(("state", "trigger", "kind", "closed", "amount", "rule"), GUARD_CASES)
def test_each_guard_refuses_with_its_rule(
    state: str, trigger: str, kind: PaymentKind, closed: int, amount: int, rule: str
) -> None:
    ctx = Context(1000, kind, False, BASE, BASE, amount)
    for firing in (fire, fire_via_machine):
        with pytest.raises(RuleViolation) as info:
            firing(Position(state, closed, 1000), trigger, ctx)
        assert info.value.rule == rule, (firing, info.value)


def test_partial_r_on_a_pending_capture_lowers_the_closed_amount() -> None:
    ctx = Context(1000, PaymentKind.ONE_TIME, False, BASE, BASE, 999)
    assert fire(Position(L.TO_CLOSE_CAPTURE, 1000, None), "refund", ctx) == (
        Position(L.TO_CLOSE_CAPTURE, 1, None),
        "R13",
    )


# -- one lifecycle: the fast table is the machine, compiled (issue 12 item 1) ---------------------


def test_the_fast_table_is_compiled_from_the_machines_own_transitions() -> None:
    machine_rows = {
        (source, trigger): [
            (t.dest, t.rule, [c.func.guard for c in t.conditions])  # type: ignore[attr-defined, union-attr]
            for t in transitions
        ]
        for trigger, event in _lifecycle.MACHINE.events.items()
        for source, transitions in event.transitions.items()
    }
    table = _lifecycle._TABLE
    assert set(table) == set(machine_rows)
    for key, rows in table.items():
        assert [(row.dest, row.rule) for row in rows] == [
            (dest, rule) for dest, rule, _ in machine_rows[key]
        ]
    # Every guard of every declared row reached the machine, in order.
    declared = {}
    for spec in _lifecycle.TRANSITIONS:
        declared.setdefault((spec.source, spec.trigger), []).append(list(spec.guards))
    assert {key: [g for _, _, g in rows] for key, rows in machine_rows.items()} == declared


@given(
    state=st.sampled_from(list(State)),
    closed=st.integers(0, 3000),
    amount=st.integers(1, 3000),
    auto_close=st.booleans(),
)
def test_after_batch_fires_the_machines_batch_rows(
    state: State, closed: int, amount: int, auto_close: bool
) -> None:
    facts = _lifecycle.Context(amount, PaymentKind.ONE_TIME, auto_close, BASE, BASE)
    after = _lifecycle.after_batch(state, closed, facts)
    if state is State.TO_CLOSE:
        assert after == ((State.CLOSED if closed > 0 else State.REFUNDED), closed)
    elif state is State.AUTHORIZED and auto_close:
        assert after == (State.CLOSED, amount)
    else:
        assert after == (state, closed)
