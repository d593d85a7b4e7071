"""The planner: every cell of its table, every rule it enforces, and its properties.

The table is docs/ecpay-api.md section 8.
"""

from __future__ import annotations

import datetime as dt

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _core_strategies import BASE, instants, outside_window, snapshots
from ecpay_lifecycle import (
    Action,
    Intent,
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    OrderSnapshot,
    PaymentKind,
    RefundExceedsCaptured,
    RuleViolation,
    State,
    plan,
    plan_abandon,
    plan_capture,
    plan_refund,
)
from ecpay_lifecycle._lifecycle import context_of, fire_via_machine, position_of
from ecpay_lifecycle._rules import TAIPEI

NOW = BASE  # 10:00 Taipei, outside the R5 window
C, R, E, N = Action.CLOSE, Action.REFUND, Action.CANCEL, Action.ABANDON


def order(
    state: State,
    *,
    amount: int = 1000,
    closed: int | None = None,
    settled: bool | None = None,
    kind: PaymentKind = PaymentKind.ONE_TIME,
    auto_close: bool = True,
    age: dt.timedelta = dt.timedelta(days=1),
) -> OrderSnapshot:
    if closed is None:
        closed = amount if state in (State.TO_CLOSE, State.CLOSED) else 0
    if settled is None:
        settled = state in (State.CLOSED, State.REFUNDED)
    return OrderSnapshot(
        merchant_trade_no="A1",
        trade_no="2411250000000001",
        amount=amount,
        state=state,
        closed_amount=closed,
        capture_settled=settled,
        kind=kind,
        auto_close=auto_close,
        authorized_at=NOW - age,
    )


def refused(call: object, rule: str) -> RuleViolation:
    assert callable(call)
    with pytest.raises(RuleViolation) as info:
        call()
    assert info.value.rule == rule, str(info.value)
    assert info.value.merchant_trade_no == "A1"
    return info.value


def plan_shape(plan: object) -> list[tuple[Action, int]]:
    return [(s.action, s.amount) for s in plan.steps]  # type: ignore[attr-defined]


# --- the table of docs/ecpay-api.md section 8, cell by cell -----------------------------------

ORDINARY = PaymentKind.ONE_TIME
FULL_ONLY = (PaymentKind.INSTALLMENT, PaymentKind.BONUS)


class TestAuthorized:
    def test_full_refund_is_n(self) -> None:
        plan = plan_refund(order(State.AUTHORIZED), now=NOW)
        assert plan_shape(plan) == [(N, 1000)]
        assert plan.final_state is State.ABANDONED
        assert plan.refund_total == 1000

    def test_explicit_full_amount_is_n(self) -> None:
        assert plan_shape(plan_refund(order(State.AUTHORIZED), 1000, now=NOW)) == [(N, 1000)]

    def test_partial_refund_is_refused_r18_with_retry_after_batch(self) -> None:
        refusal = refused(lambda: plan_refund(order(State.AUTHORIZED), 300, now=NOW), "R18")
        assert refusal.retry_at == dt.datetime(2026, 11, 25, 20, 30, tzinfo=TAIPEI)

    def test_partial_refund_without_auto_close_has_no_retry(self) -> None:
        snap = order(State.AUTHORIZED, auto_close=False)
        assert refused(lambda: plan_refund(snap, 300, now=NOW), "R18").retry_at is None

    def test_partial_refund_capture_first_is_c_then_r(self) -> None:
        plan = plan_refund(order(State.AUTHORIZED), 300, now=NOW, capture_first=True)
        assert plan_shape(plan) == [(C, 1000), (R, 300)]
        assert plan.final_state is State.TO_CLOSE
        assert plan.final_closed_amount == 700
        assert plan.refund_total == 300

    @pytest.mark.parametrize("kind", FULL_ONLY)
    def test_partial_refund_of_full_only_kinds_is_refused(self, kind: PaymentKind) -> None:
        rule = "R11" if kind is PaymentKind.INSTALLMENT else "R12"
        refused(lambda: plan_refund(order(State.AUTHORIZED, kind=kind), 300, now=NOW), rule)
        refused(
            lambda: plan_refund(
                order(State.AUTHORIZED, kind=kind), 300, now=NOW, capture_first=True
            ),
            rule,
        )

    @pytest.mark.parametrize("kind", FULL_ONLY)
    def test_full_refund_of_full_only_kinds_is_n(self, kind: PaymentKind) -> None:
        assert plan_shape(plan_refund(order(State.AUTHORIZED, kind=kind), now=NOW)) == [(N, 1000)]


class TestPendingCapture:
    def test_full_refund_is_e_then_n(self) -> None:
        plan = plan_refund(order(State.TO_CLOSE), now=NOW)
        assert plan_shape(plan) == [(E, 1000), (N, 1000)]
        assert [s.state_after for s in plan.steps] == [State.AUTHORIZED, State.ABANDONED]
        assert [s.closed_amount_after for s in plan.steps] == [0, 0]
        assert plan.refund_total == 1000
        assert plan.reason.startswith("R13")

    def test_full_refund_after_a_partial_one_refunds_what_is_left(self) -> None:
        plan = plan_refund(order(State.TO_CLOSE, closed=700), now=NOW)
        assert plan_shape(plan) == [(E, 1000), (N, 1000)]
        assert plan.refund_total == 700

    def test_partial_refund_is_r(self) -> None:
        plan = plan_refund(order(State.TO_CLOSE), 300, now=NOW)
        assert plan_shape(plan) == [(R, 300)]
        assert plan.steps[0].state_after is State.TO_CLOSE
        assert plan.steps[0].closed_amount_after == 700
        assert plan.steps[0].capture_settled_after is False

    @pytest.mark.parametrize("kind", FULL_ONLY)
    def test_full_only_kinds(self, kind: PaymentKind) -> None:
        rule = "R11" if kind is PaymentKind.INSTALLMENT else "R12"
        refused(lambda: plan_refund(order(State.TO_CLOSE, kind=kind), 300, now=NOW), rule)
        assert plan_refund(order(State.TO_CLOSE, kind=kind), now=NOW).actions == (E, N)


class TestPendingRefund:
    def snap(self, kind: PaymentKind = ORDINARY) -> OrderSnapshot:
        return order(State.TO_CLOSE, closed=600, settled=True, kind=kind)

    def test_full_refund_is_r_of_what_is_left(self) -> None:
        plan = plan_refund(self.snap(), now=NOW)
        assert plan_shape(plan) == [(R, 600)]
        assert plan.final_closed_amount == 0
        assert plan.final_state is State.TO_CLOSE
        assert plan.steps[0].capture_settled_after is True

    def test_partial_refund_is_r(self) -> None:
        assert plan_shape(plan_refund(self.snap(), 100, now=NOW)) == [(R, 100)]

    @pytest.mark.parametrize("amount", [None, 1])
    def test_nothing_left_while_a_full_refund_waits_for_the_batch(self, amount: int | None) -> None:
        waiting = order(State.TO_CLOSE, closed=0, settled=True)
        assert "nothing is left" in str(
            refused(lambda: plan_refund(waiting, amount, now=NOW), "R10")
        )

    @pytest.mark.parametrize("kind", FULL_ONLY)
    def test_full_only_kinds(self, kind: PaymentKind) -> None:
        rule = "R11" if kind is PaymentKind.INSTALLMENT else "R12"
        refused(lambda: plan_refund(self.snap(kind), 100, now=NOW), rule)
        assert plan_shape(plan_refund(self.snap(kind), now=NOW)) == [(R, 600)]


class TestClosed:
    def test_full_refund_is_r(self) -> None:
        plan = plan_refund(order(State.CLOSED), now=NOW)
        assert plan_shape(plan) == [(R, 1000)]
        assert plan.final_state is State.TO_CLOSE
        assert plan.final_closed_amount == 0

    def test_partial_refund_is_r(self) -> None:
        assert plan_shape(plan_refund(order(State.CLOSED), 250, now=NOW)) == [(R, 250)]

    @pytest.mark.parametrize("kind", FULL_ONLY)
    def test_full_only_kinds(self, kind: PaymentKind) -> None:
        rule = "R11" if kind is PaymentKind.INSTALLMENT else "R12"
        refused(lambda: plan_refund(order(State.CLOSED, kind=kind), 250, now=NOW), rule)
        assert plan_shape(plan_refund(order(State.CLOSED, kind=kind), now=NOW)) == [(R, 1000)]

    def test_unionpay_refunds_with_r(self) -> None:
        snap = order(State.CLOSED, kind=PaymentKind.UNIONPAY)
        assert plan_shape(plan_refund(snap, 250, now=NOW)) == [(R, 250)]


class TestNothingLeft:
    @pytest.mark.parametrize("state", [State.ABANDONED, State.REFUNDED])
    @pytest.mark.parametrize("amount", [None, 1, 1000])
    def test_refund_refused(self, state: State, amount: int | None) -> None:
        refusal = refused(lambda: plan_refund(order(state), amount, now=NOW), "R10")
        assert refusal.retry_at is None

    def test_abandon_abandoned_refused(self) -> None:
        refused(lambda: plan_abandon(order(State.ABANDONED), now=NOW), "R14")

    def test_capture_refunded_refused(self) -> None:
        refused(lambda: plan_capture(order(State.REFUNDED), now=NOW), "R10")


class TestNotActionable:
    def test_unauthorized_says_query_in_ten_minutes(self) -> None:
        for planner in (plan_refund, plan_capture, plan_abandon):
            refusal = refused(lambda p=planner: p(order(State.UNAUTHORIZED), now=NOW), "R3")  # type: ignore[misc]
            assert refusal.retry_at == NOW + dt.timedelta(minutes=10)

    def test_unsettled_refuses_everything(self) -> None:
        snap = order(State.UNSETTLED, closed=500, settled=True)
        for planner in (plan_refund, plan_capture, plan_abandon):
            refused(lambda p=planner: p(snap, now=NOW), "R3")  # type: ignore[misc]


# --- capture and abandon (docs/ecpay-api.md section 8's prose) ----------------------------------


class TestCapture:
    def test_authorized_is_c(self) -> None:
        plan = plan_capture(order(State.AUTHORIZED), now=NOW)
        assert plan_shape(plan) == [(C, 1000)]
        assert plan.final_state is State.TO_CLOSE
        assert plan.final_closed_amount == 1000
        assert plan.refund_total == 0

    @pytest.mark.parametrize(
        "snap",
        [order(State.TO_CLOSE), order(State.CLOSED), order(State.TO_CLOSE, closed=5, settled=True)],
    )
    def test_anything_else_is_refused_r9(self, snap: OrderSnapshot) -> None:
        refused(lambda: plan_capture(snap, now=NOW), "R9")

    def test_r6_capture_window_with_auto_close_off(self) -> None:
        young = order(State.AUTHORIZED, auto_close=False, age=dt.timedelta(days=21, seconds=-1))
        assert plan_capture(young, now=NOW).actions == (C,)
        old = order(State.AUTHORIZED, auto_close=False, age=dt.timedelta(days=21))
        message = str(refused(lambda: plan_capture(old, now=NOW), "R6"))
        assert "error_overDate" in message

    def test_r6_does_not_apply_with_auto_close_on(self) -> None:
        old = order(State.AUTHORIZED, auto_close=True, age=dt.timedelta(days=40))
        assert plan_capture(old, now=NOW).actions == (C,)

    def test_r6_applies_to_capture_first_refunds(self) -> None:
        old = order(State.AUTHORIZED, auto_close=False, age=dt.timedelta(days=30))
        refused(lambda: plan_refund(old, 100, now=NOW, capture_first=True), "R6")

    def test_r8_unionpay_has_nothing_to_capture(self) -> None:
        refused(lambda: plan_capture(order(State.CLOSED, kind=PaymentKind.UNIONPAY), now=NOW), "R8")


class TestAbandon:
    def test_authorized_is_n(self) -> None:
        plan = plan_abandon(order(State.AUTHORIZED), now=NOW)
        assert plan_shape(plan) == [(N, 1000)]
        assert plan.final_state is State.ABANDONED

    def test_pending_capture_is_e_then_n(self) -> None:
        plan = plan_abandon(order(State.TO_CLOSE, closed=400), now=NOW)
        assert plan_shape(plan) == [(E, 1000), (N, 1000)]
        assert plan.refund_total == 400

    @pytest.mark.parametrize(
        "snap", [order(State.CLOSED), order(State.TO_CLOSE, closed=300, settled=True)]
    )
    def test_settled_cannot_be_abandoned(self, snap: OrderSnapshot) -> None:
        assert "refund" in str(refused(lambda: plan_abandon(snap, now=NOW), "R9"))

    def test_r8_unionpay(self) -> None:
        refused(lambda: plan_abandon(order(State.CLOSED, kind=PaymentKind.UNIONPAY), now=NOW), "R8")

    def test_r7_after_day_90_with_auto_close_off(self) -> None:
        old = order(State.AUTHORIZED, auto_close=False, age=dt.timedelta(days=90, seconds=1))
        refused(lambda: plan_abandon(old, now=NOW), "R7")
        day_90 = order(State.AUTHORIZED, auto_close=False, age=dt.timedelta(days=90))
        assert plan_abandon(day_90, now=NOW).actions == (N,)


# --- R5: the 20:15-20:30 window -----------------------------------------------------------------


class TestBlackout:
    @pytest.mark.parametrize(
        ("hh", "mm", "ss", "inside"),
        [(20, 14, 59, False), (20, 15, 0, True), (20, 29, 59, True), (20, 30, 0, False)],
    )
    def test_edges(self, hh: int, mm: int, ss: int, inside: bool) -> None:
        now = dt.datetime(2026, 11, 25, hh, mm, ss, tzinfo=TAIPEI)
        if inside:
            refusal = refused(lambda: plan_refund(order(State.CLOSED), 100, now=now), "R5")
            assert refusal.retry_at == dt.datetime(2026, 11, 25, 20, 30, tzinfo=TAIPEI)
        else:
            assert plan_refund(order(State.CLOSED), 100, now=now).actions == (R,)

    def test_window_is_computed_in_taipei_for_utc_input(self) -> None:
        now = dt.datetime(2026, 11, 25, 12, 20, tzinfo=dt.UTC)  # 20:20 Taipei
        refusal = refused(lambda: plan_capture(order(State.AUTHORIZED), now=now), "R5")
        assert refusal.retry_at == dt.datetime(2026, 11, 25, 12, 30, tzinfo=dt.UTC)

    def test_no_window_with_auto_close_off(self) -> None:
        now = dt.datetime(2026, 11, 25, 20, 20, tzinfo=TAIPEI)
        snap = order(State.CLOSED, auto_close=False)
        assert plan_refund(snap, 100, now=now).actions == (R,)


# --- bad input --------------------------------------------------------------------------------


class TestBadInput:
    @pytest.mark.parametrize("amount", [0, -1, -1000])
    def test_non_positive_amounts(self, amount: int) -> None:
        with pytest.raises(InvalidAmount):
            plan_refund(order(State.CLOSED), amount, now=NOW)

    @pytest.mark.parametrize("amount", [True, False, 1.0, 300.5, "300", b"300", [300]])
    def test_wrong_types(self, amount: object) -> None:
        with pytest.raises(InvalidArgumentType) as info:
            plan_refund(order(State.CLOSED), amount, now=NOW)  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError)

    def test_above_the_order_amount_is_r19(self) -> None:
        with pytest.raises(InvalidAmount, match="R19"):
            plan_refund(order(State.CLOSED), 1001, now=NOW)

    def test_above_what_is_refundable_is_r10_and_a_value_error(self) -> None:
        snap = order(State.CLOSED, closed=400)
        with pytest.raises(RefundExceedsCaptured) as info:
            plan_refund(snap, 401, now=NOW)
        assert isinstance(info.value, ValueError)
        assert info.value.rule == "R10"
        assert info.value.refundable == 400

    def test_naive_now(self) -> None:
        for planner in (plan_refund, plan_capture, plan_abandon):
            with pytest.raises(InvalidArgument, match="timezone-aware"):
                planner(order(State.CLOSED), now=dt.datetime(2026, 11, 25, 10))  # type: ignore[operator]

    def test_not_a_snapshot(self) -> None:
        with pytest.raises(InvalidArgumentType):
            plan_refund({"state": "closed"}, now=NOW)  # type: ignore[arg-type]

    def test_capture_first_must_be_bool(self) -> None:
        with pytest.raises(InvalidArgumentType):
            plan_refund(order(State.AUTHORIZED), 1, now=NOW, capture_first="yes")  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------

amounts = st.one_of(st.none(), st.integers(1, 200_000))


def try_plan(snap: OrderSnapshot, amount: int | None, now: dt.datetime, capture_first: bool):  # type: ignore[no-untyped-def]
    try:
        return plan_refund(snap, amount, now=now, capture_first=capture_first)
    except (RuleViolation, InvalidAmount):
        return None


@settings(suppress_health_check=[HealthCheck.filter_too_much])  # refusals: see below
@given(snapshots(), amounts, instants(), st.booleans())
def test_no_plan_refunds_more_than_is_captured_or_the_order(
    snap: OrderSnapshot, amount: int | None, now: dt.datetime, capture_first: bool
) -> None:
    plan = try_plan(snap, amount, now, capture_first)
    assume(plan is not None)
    assert plan is not None
    assert 0 < plan.refund_total <= snap.amount
    assert plan.refund_total <= snap.refundable
    if snap.state is not State.AUTHORIZED:
        assert plan.refund_total <= snap.closed_amount
    for step in plan.steps:
        if step.action is Action.REFUND:
            assert step.amount <= snap.refundable
        assert 0 <= step.closed_amount_after <= snap.amount


@settings(suppress_health_check=[HealthCheck.filter_too_much])  # refusals: see below
@given(snapshots(kinds=(PaymentKind.INSTALLMENT, PaymentKind.BONUS)), amounts, instants())
def test_full_only_kinds_refund_everything_or_are_refused(
    snap: OrderSnapshot, amount: int | None, now: dt.datetime
) -> None:
    wants_part = amount is not None and amount != snap.refundable
    if wants_part and snap.state.actionable and snap.refundable > 0:
        with pytest.raises((RuleViolation, InvalidAmount)) as info:
            plan_refund(snap, amount, now=now, capture_first=True)
        if isinstance(info.value, RuleViolation):
            assert info.value.rule in ("R10", "R11", "R12")
        return
    plan = try_plan(snap, amount, now, True)
    assume(plan is not None)
    assert plan is not None
    assert plan.refund_total == snap.refundable
    assert plan.final_closed_amount == 0


# Most random (snapshot, amount, time) triples are refused by a rule, on purpose: the planner's
# refusals are tested elsewhere, and here only plans matter. Hypothesis keeps drawing until it has
# its examples; the filter health check failed about once in 45 runs (issue 12), not the test.
@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(snapshots(), amounts, instants(), st.booleans())
def test_applying_a_plan_through_the_machine_keeps_its_promises(
    snap: OrderSnapshot, amount: int | None, now: dt.datetime, capture_first: bool
) -> None:
    plan = try_plan(snap, amount, now, capture_first)
    assume(plan is not None)
    assert plan is not None
    position = position_of(snap)
    for step in plan.steps:
        position, _ = fire_via_machine(
            position,
            {C: "close", R: "refund", E: "cancel", N: "abandon"}[step.action],
            context_of(snap, now, step.amount),
        )
        assert position.closed_amount == step.closed_amount_after
    assert plan.final_closed_amount == position.closed_amount
    wanted = snap.refundable if amount is None else amount
    assert plan.refund_total == wanted
    held_after = snap.amount if plan.final_state is State.AUTHORIZED else position.closed_amount
    assert snap.refundable - held_after == wanted


@given(snapshots(), amounts, st.booleans(), st.sampled_from(["refund", "capture", "abandon"]))
def test_every_plan_inside_the_window_with_auto_close_is_refused_until_2030(
    snap: OrderSnapshot, amount: int | None, capture_first: bool, which: str
) -> None:
    snap = attrs.evolve(snap, auto_close=True)
    day = dt.date(2026, 11, 25)
    outside = dt.datetime.combine(day, dt.time(10, 0), tzinfo=TAIPEI)
    inside = dt.datetime.combine(day, dt.time(20, 22, 30), tzinfo=TAIPEI).astimezone(dt.UTC)

    def run(now: dt.datetime) -> object:
        if which == "capture":
            return plan_capture(snap, now=now)
        if which == "abandon":
            return plan_abandon(snap, now=now)
        return plan_refund(snap, amount, now=now, capture_first=capture_first)

    try:
        run(outside)
    except (RuleViolation, InvalidAmount):
        return  # refused for a reason the clock does not change
    with pytest.raises(RuleViolation) as info:
        run(inside)
    assert info.value.rule == "R5"
    assert info.value.retry_at == dt.datetime.combine(day, dt.time(20, 30), tzinfo=TAIPEI)


@given(snapshots(), amounts, instants(), st.booleans())
def test_planning_is_deterministic_and_never_mutates_its_input(
    snap: OrderSnapshot, amount: int | None, now: dt.datetime, capture_first: bool
) -> None:
    before = attrs.asdict(snap, recurse=False)
    first = try_plan(snap, amount, now, capture_first)
    second = try_plan(snap, amount, now, capture_first)
    assert first == second
    assert attrs.asdict(snap, recurse=False) == before


@given(snapshots(states=(State.AUTHORIZED, State.TO_CLOSE, State.CLOSED)), instants())
def test_refunding_everything_always_ends_with_nothing_held(
    snap: OrderSnapshot, now: dt.datetime
) -> None:
    assume(outside_window(now) or not snap.auto_close)
    assume(snap.refundable > 0)
    past_day_90 = now > snap.authorized_at + dt.timedelta(days=90)
    ends_with_n = snap.state is State.AUTHORIZED or snap.pending_capture
    if ends_with_n and not snap.auto_close and past_day_90:
        refused(lambda: plan_refund(attrs.evolve(snap, merchant_trade_no="A1"), now=now), "R7")
        return
    plan = plan_refund(snap, now=now)
    assert plan.final_closed_amount == 0
    assert plan.final_state in (State.ABANDONED, State.TO_CLOSE)
    assert plan.refund_total == snap.refundable


# -- one dispatcher beside the three named functions (issue 12 item 2) --------------------------


def _outcome_of(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except (RuleViolation, InvalidAmount) as refusal:
        return (type(refusal), getattr(refusal, "rule", None))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    snapshot=snapshots(),
    amount=st.none() | st.integers(1, 5000),
    capture_first=st.booleans(),
    now=instants(),
)
def test_plan_dispatches_exactly_as_the_named_functions(
    snapshot: OrderSnapshot, amount: int | None, capture_first: bool, now: dt.datetime
) -> None:
    refund = _outcome_of(
        lambda: plan(Intent.REFUND, snapshot, amount, now=now, capture_first=capture_first)
    )
    assert refund == _outcome_of(
        lambda: plan_refund(snapshot, amount, now=now, capture_first=capture_first)
    )
    assert _outcome_of(lambda: plan("capture", snapshot, now=now)) == _outcome_of(
        lambda: plan_capture(snapshot, now=now)
    )
    assert _outcome_of(lambda: plan(Intent.ABANDON, snapshot, now=now)) == _outcome_of(
        lambda: plan_abandon(snapshot, now=now)
    )


@pytest.mark.parametrize(
    ("intent", "extra", "error"),
    [
        ("rebate", {}, InvalidArgument),
        (3, {}, InvalidArgumentType),
        (Intent.CAPTURE, {"amount": 100}, InvalidArgument),
        (Intent.ABANDON, {"capture_first": True}, InvalidArgument),
    ],
)
def test_plan_refuses_what_does_not_belong_to_its_intent(
    intent: object, extra: dict[str, object], error: type[Exception]
) -> None:
    snapshot = OrderSnapshot(
        merchant_trade_no="A1",
        trade_no="T1",
        amount=1000,
        state=State.AUTHORIZED,
        authorized_at=NOW - dt.timedelta(hours=1),
    )
    with pytest.raises(error):
        plan(intent, snapshot, now=NOW, **extra)  # type: ignore[arg-type]


@given(snapshots())
def test_refund_everything_plans_what_the_snapshot_calls_refundable(
    snapshot: OrderSnapshot,
) -> None:
    """plan_refund reads what is refundable and whether a capture is pending from the facts its
    branch knows (for speed) instead of OrderSnapshot.refundable and .pending_capture: the two
    must agree wherever a plan is made."""
    try:
        made = plan_refund(snapshot, None, now=NOW)
    except RuleViolation:
        return
    assert made.refund_total == snapshot.refundable
    # A pending capture is never refunded with R before its batch (R9): E comes first.
    assert not snapshot.pending_capture or made.steps[0].action is not Action.REFUND


def test_a_closed_order_passed_as_unsettled_is_planned_as_settled() -> None:
    closed = OrderSnapshot(
        merchant_trade_no="C1",
        trade_no="2608010000000001",
        amount=1000,
        state=State.CLOSED,
        closed_amount=1000,
        capture_settled=False,  # the state implies a settled capture; the snapshot says so
        authorized_at=NOW - dt.timedelta(days=2),
    )
    assert closed.capture_settled
    assert not closed.pending_capture
    made = plan_refund(closed, 300, now=NOW)
    assert [(s.action, s.amount) for s in made.steps] == [(Action.REFUND, 300)]
