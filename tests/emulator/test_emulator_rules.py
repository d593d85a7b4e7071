"""The emulator enforces every rule of docs/ecpay-api.md section 7 on its own side, by wire."""

from __future__ import annotations

import datetime as dt

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    Action,
    GatewayStatus,
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    PaymentKind,
    State,
)
from ecpay_lifecycle._exceptions import error_token
from ecpay_lifecycle.emulator import (
    DEFAULT_REFUSALS,
    Emulator,
    EmulatorSettings,
    Endpoint,
    Refusal,
    RefusalReply,
)
from test_emulator_support import IV, KEY, MID, START, TAIPEI, Wire, make_emulator, ok, state_of

C, R, E, N = Action.CLOSE, Action.REFUND, Action.CANCEL, Action.ABANDON


def refused(reply: dict[str, object], reason: Refusal) -> bool:
    expected = DEFAULT_REFUSALS[reason]
    return reply["RtnCode"] == expected.rtn_code and reply["RtnMsg"] == expected.rtn_msg


def settle(emulator: Emulator) -> None:
    """Move the clock just past the next batch window (20:30 Taipei)."""
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=15))


# -- authorization -----------------------------------------------------------------------------


def test_authorize_returns_unique_16_digit_trade_numbers() -> None:
    emulator = make_emulator()
    numbers = {emulator.authorize(MID, f"A{i}", 100) for i in range(50)}
    assert len(numbers) == 50
    assert all(len(n) == 16 and n.isdigit() for n in numbers)
    assert emulator.order(MID, "A7").status is GatewayStatus.AUTHORIZED
    assert emulator.order(MID, "A7").closed_amount == 0


def test_duplicate_merchant_trade_no_is_refused_and_changes_nothing() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 100)
    before = state_of(emulator)
    with pytest.raises(InvalidArgument, match="already has an order A1"):
        emulator.authorize(MID, "A1", 200)
    assert state_of(emulator) == before


@pytest.mark.parametrize(
    ("number", "amount", "error"),
    [
        ("A1", 0, InvalidAmount),
        ("A1", -5, InvalidAmount),
        ("A1", 1.5, InvalidArgumentType),
        ("A1", True, InvalidArgumentType),
        ("", 100, InvalidArgument),
        ("A-1", 100, InvalidArgument),
        ("A" * 21, 100, InvalidArgument),
        (7, 100, InvalidArgumentType),
    ],
)
def test_authorize_validates_numbers_and_amounts_r19(
    number: object, amount: object, error: type[Exception]
) -> None:
    emulator = make_emulator()
    with pytest.raises(error):
        emulator.authorize(MID, number, amount)  # type: ignore[arg-type]
    assert emulator.orders() == ()


def test_authorize_refuses_unknown_merchant_future_time_and_naive_time() -> None:
    emulator = make_emulator()
    with pytest.raises(InvalidArgument, match="no merchant"):
        emulator.authorize("999", "A1", 100)
    with pytest.raises(InvalidArgument, match="after the emulator's clock"):
        emulator.authorize(MID, "A1", 100, at=START + dt.timedelta(seconds=1))
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        emulator.authorize(MID, "A1", 100, at=dt.datetime(2026, 8, 1, 10, 0))
    assert emulator.orders() == ()


def test_add_merchant_validates_and_never_overwrites() -> None:
    emulator = make_emulator()
    with pytest.raises(InvalidArgument, match="already registered"):
        emulator.add_merchant(MID, KEY, IV)
    with pytest.raises(InvalidArgument, match="16 bytes"):
        emulator.add_merchant("3002608", "short", IV)
    with pytest.raises(InvalidArgument, match="1-10 letters"):
        emulator.add_merchant("30026070000X", KEY, IV)
    with pytest.raises(InvalidArgumentType):
        emulator.add_merchant("3002609", KEY, IV, auto_close="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        emulator.add_merchant("3002609", KEY, IV, balance=-1)


# -- the happy lifecycle (section 6) ------------------------------------------------------


def test_close_then_batch_then_refund_then_batch() -> None:
    emulator = make_emulator()
    wire = Wire(emulator)
    emulator.authorize(MID, "A1", 1000)
    assert ok(wire.do(C, "A1", 1000))
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.capture_settled) == (
        GatewayStatus.TO_BE_CAPTURED,
        1000,
        False,
    )
    settle(emulator)
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.capture_settled) == (
        GatewayStatus.CAPTURED,
        1000,
        True,
    )
    assert [(row.status, row.amount) for row in view.close_rows] == [(GatewayStatus.CAPTURED, 1000)]
    assert emulator.balance(MID) == 1000
    assert ok(wire.do(R, "A1", 400))
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.refunded_total) == (
        GatewayStatus.TO_BE_CAPTURED,
        600,
        400,
    )
    assert emulator.snapshot(MID, "A1").pending_refund
    assert emulator.balance(MID) == 600
    settle(emulator)
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.pending_refund_total) == (
        GatewayStatus.CAPTURED,
        600,
        0,
    )
    assert len(view.close_rows) == 1  # a refund settling adds no Captured row
    assert ok(wire.do(R, "A1", 600))
    settle(emulator)
    assert emulator.snapshot(MID, "A1").state is State.REFUNDED
    assert emulator.order(MID, "A1").closed_amount == 0


# -- R5: the batch window ----------------------------------------------------------------------


@pytest.mark.parametrize("action", [C, R, E, N])
def test_r5_every_action_refused_in_the_batch_window(action: Action) -> None:
    emulator = make_emulator(now=dt.datetime(2026, 8, 3, 20, 0, tzinfo=TAIPEI), balance=10_000)
    emulator.authorize(MID, "A1", 1000, at=emulator.now - dt.timedelta(days=1, hours=2))
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    if action in (E, R):
        assert ok(wire.do(C, "A2", 1000))
    emulator.set_time(dt.datetime(2026, 8, 3, 20, 15, tzinfo=TAIPEI))
    number = "A1" if action is R else "A2"
    amount = 100 if action is R else 1000
    # The batch at 20:15:00 has run; A2 was closed and settled by it, A1 the day before.
    before = state_of(emulator)
    reply = wire.do(action, number, amount)
    assert refused(reply, Refusal.BATCH_WINDOW)
    assert error_token(str(reply["RtnMsg"])) == "error_closing"
    assert state_of(emulator) == before


@settings(max_examples=80)
@given(minute=st.integers(0, 24 * 60 - 1), second=st.integers(0, 59), auto_close=st.booleans())
def test_r5_window_is_half_open_20_15_to_20_30_taipei(
    minute: int, second: int, auto_close: bool
) -> None:
    day = dt.datetime(2026, 8, 3, tzinfo=TAIPEI)
    now = day + dt.timedelta(minutes=minute, seconds=second)
    emulator = make_emulator(now=now, auto_close=auto_close)
    emulator.authorize(MID, "A1", 1000)
    reply = Wire(emulator).do(N, "A1", 1000)
    in_window = dt.time(20, 15) <= now.time() < dt.time(20, 30)
    assert refused(reply, Refusal.BATCH_WINDOW) == (in_window and auto_close)
    assert ok(reply) == (not (in_window and auto_close))


def test_r5_window_edges_exactly() -> None:
    for moment, allowed in [
        (dt.datetime(2026, 8, 3, 20, 14, 59, 999999, tzinfo=TAIPEI), True),
        (dt.datetime(2026, 8, 3, 20, 15, tzinfo=TAIPEI), False),
        (dt.datetime(2026, 8, 3, 20, 29, 59, 999999, tzinfo=TAIPEI), False),
        (dt.datetime(2026, 8, 3, 20, 30, tzinfo=TAIPEI), True),
        (dt.datetime(2026, 8, 3, 12, 15, tzinfo=dt.UTC), False),  # 20:15 Taipei in UTC
    ]:
        emulator = make_emulator(now=moment)
        emulator.authorize(MID, "A1", 1000)
        assert ok(Wire(emulator).do(N, "A1", 1000)) is allowed, moment


# -- R6 / R7: auto-close off -------------------------------------------------------------------


def test_r6_close_refused_from_21_days_after_authorization() -> None:
    emulator = make_emulator(auto_close=False)
    wire = Wire(emulator)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    emulator.set_time(START + dt.timedelta(days=21) - dt.timedelta(seconds=1))
    assert ok(wire.do(C, "A1", 1000))
    emulator.advance(dt.timedelta(seconds=1))
    reply = wire.do(C, "A2", 1000)
    assert refused(reply, Refusal.OVER_DATE)
    token = error_token(str(reply["RtnMsg"]))
    assert token is not None
    assert token.lower().startswith("error_over")
    assert emulator.order(MID, "A2").status is GatewayStatus.AUTHORIZED
    # N is still possible: only C has the 21-day limit.
    assert ok(wire.do(N, "A2", 1000))


@settings(max_examples=60)
@given(hours=st.integers(0, 40 * 24))
def test_r6_property_close_allowed_iff_within_21_days(hours: int) -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.advance(dt.timedelta(hours=hours))
    reply = Wire(emulator).do(C, "A1", 1000)
    assert ok(reply) == (hours < 21 * 24)
    assert refused(reply, Refusal.OVER_DATE) == (hours >= 21 * 24)


def test_r6_does_not_apply_with_auto_close_on() -> None:
    emulator = make_emulator(auto_close=True, batch_closes_authorized=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.advance(dt.timedelta(days=30))
    assert ok(Wire(emulator).do(C, "A1", 1000))


def test_r7_notice_on_day_80_and_abandon_after_day_90() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A2", 1000))  # closed: no notice, no abandonment, settles at 20:15
    emulator.advance(dt.timedelta(days=80))
    notices = [e for e in emulator.events if e.kind.value == "notice"]
    assert [(e.merchant_trade_no, e.at) for e in notices] == [("A1", START + dt.timedelta(days=80))]
    emulator.set_time(START + dt.timedelta(days=90))
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED  # at day 90: not yet
    emulator.advance(dt.timedelta(microseconds=1))
    view = emulator.order(MID, "A1")
    assert (view.status, view.state) == (GatewayStatus.CANCELED, State.ABANDONED)
    assert emulator.order(MID, "A2").status is GatewayStatus.CAPTURED
    expiries = [e for e in emulator.events if e.kind.value == "expire"]
    assert [e.merchant_trade_no for e in expiries] == ["A1"]
    assert refused(wire.do(N, "A1", 1000), Refusal.ALREADY_ABANDONED)


def test_r7_operation_canceled_orders_are_abandoned_too() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    assert ok(wire.do(E, "A1", 1000))
    emulator.advance(dt.timedelta(days=91))
    assert emulator.order(MID, "A1").status is GatewayStatus.CANCELED


def test_r7_does_not_apply_with_auto_close_on() -> None:
    emulator = make_emulator(auto_close=True, batch_closes_authorized=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.advance(dt.timedelta(days=100))
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    assert not [e for e in emulator.events if e.kind.value in ("notice", "expire")]


# -- R8: UnionPay ------------------------------------------------------------------------------


def test_r8_unionpay_starts_closed_with_a_captured_row_and_refunds_by_r() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "U1", 800, kind=PaymentKind.UNIONPAY)
    view = emulator.order(MID, "U1")
    assert (view.status, view.closed_amount, view.capture_settled) == (
        GatewayStatus.CAPTURED,
        800,
        True,
    )
    assert [(r.status, r.amount, r.at) for r in view.close_rows] == [
        (GatewayStatus.CAPTURED, 800, START)
    ]
    assert emulator.snapshot(MID, "U1").state is State.CLOSED
    assert emulator.balance(MID) == 800
    wire = Wire(emulator)
    for action in (C, E, N):
        before = state_of(emulator)
        assert refused(wire.do(action, "U1", 800), Refusal.UNIONPAY)
        assert state_of(emulator) == before
    assert ok(wire.do(R, "U1", 300))
    assert emulator.order(MID, "U1").closed_amount == 500


def test_r8_unionpay_start_status_setting_to_be_captured() -> None:
    emulator = make_emulator(unionpay_start_status=GatewayStatus.TO_BE_CAPTURED)
    emulator.authorize(MID, "U1", 800, kind=PaymentKind.UNIONPAY)
    view = emulator.order(MID, "U1")
    assert (view.status, view.capture_settled, view.close_rows) == (
        GatewayStatus.TO_BE_CAPTURED,
        False,
        (),
    )
    with pytest.raises(InvalidArgument, match="R8"):
        emulator.snapshot(MID, "U1")  # the library's model says UnionPay never waits
    settle(emulator)
    assert emulator.snapshot(MID, "U1").state is State.CLOSED


# -- R9 / R15: E restores the previous state ---------------------------------------------------


def test_r15_cancel_on_pending_capture_shows_operation_canceled_then_n() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    assert ok(wire.do(R, "A1", 200))  # a partial refund of the pending capture is undone too
    assert ok(wire.do(E, "A1", 1000))
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.refunded_total) == (
        GatewayStatus.OPERATION_CANCELED,
        0,
        0,
    )
    assert emulator.snapshot(MID, "A1").state is State.AUTHORIZED
    detail = wire.detail("A1")
    assert detail["RtnValue"]["Status"] == "Operation canceled"
    assert detail["RtnValue"]["ClsAmt"] == 0
    assert ok(wire.do(N, "A1", 1000))
    assert emulator.snapshot(MID, "A1").state is State.ABANDONED
    assert emulator.balance(MID) == 0


def test_r15_cancel_on_pending_refund_restores_captured_and_balance() -> None:
    emulator = make_emulator(balance=5000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    assert emulator.balance(MID) == 6000
    assert ok(wire.do(R, "A1", 300))
    assert ok(wire.do(R, "A1", 200))
    assert emulator.balance(MID) == 5500
    assert ok(wire.do(E, "A1", 1000))
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.refunded_total, view.pending_refund_total) == (
        GatewayStatus.CAPTURED,
        1000,
        0,
        0,
    )
    assert emulator.balance(MID) == 6000


def test_r15_cancel_only_undoes_the_pending_refunds() -> None:
    emulator = make_emulator(balance=5000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    assert ok(wire.do(R, "A1", 100))
    settle(emulator)
    assert ok(wire.do(R, "A1", 200))
    assert ok(wire.do(E, "A1", 1000))
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.refunded_total) == (
        GatewayStatus.CAPTURED,
        900,
        100,
    )


def test_cancel_without_pending_close_and_n_after_close_are_wrong_state() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert refused(wire.do(E, "A1", 1000), Refusal.WRONG_STATE)
    assert ok(wire.do(C, "A1", 1000))
    assert refused(wire.do(C, "A1", 1000), Refusal.WRONG_STATE)
    assert refused(wire.do(N, "A1", 1000), Refusal.WRONG_STATE)  # R9: E first
    settle(emulator)
    assert refused(wire.do(N, "A1", 1000), Refusal.WRONG_STATE)
    assert refused(wire.do(E, "A1", 1000), Refusal.WRONG_STATE)


def test_cancel_restores_pending_refund_setting_off() -> None:
    emulator = make_emulator(balance=5000, cancel_restores_pending_refund=False)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    assert ok(wire.do(R, "A1", 300))
    assert refused(wire.do(E, "A1", 1000), Refusal.WRONG_STATE)
    assert emulator.order(MID, "A1").closed_amount == 700


# -- R10: the cumulative cap -------------------------------------------------------------------


@settings(max_examples=60)
@given(amount=st.integers(1, 5000), refunds=st.lists(st.integers(1, 5000), max_size=8))
def test_r10_refunds_never_exceed_the_order_amount(amount: int, refunds: list[int]) -> None:
    emulator = make_emulator(balance=10**9)
    emulator.authorize(MID, "A1", amount)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", amount))
    settle(emulator)
    accepted = 0
    for refund in refunds:
        reply = wire.do(R, "A1", refund)
        expected = refund <= min(amount - accepted, amount)
        assert ok(reply) == expected
        if refund > amount:
            assert refused(reply, Refusal.BAD_AMOUNT)
        elif not expected:
            assert refused(reply, Refusal.OVER_CAPTURED)
        accepted += refund if expected else 0
        view = emulator.order(MID, "A1")
        assert view.refunded_total == accepted
        assert view.closed_amount == amount - accepted


def test_r10_counts_refunds_across_batches() -> None:
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    assert ok(wire.do(R, "A1", 300))  # during the pending capture
    settle(emulator)
    assert emulator.order(MID, "A1").close_rows[0].amount == 700
    assert refused(wire.do(R, "A1", 701), Refusal.OVER_CAPTURED)
    assert ok(wire.do(R, "A1", 700))
    settle(emulator)
    assert refused(wire.do(R, "A1", 1), Refusal.OVER_CAPTURED)


# -- R11 / R12: instalments and bonus points refund in full only ------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (PaymentKind.INSTALLMENT, Refusal.INSTALLMENT_FULL_ONLY),
        (PaymentKind.BONUS, Refusal.BONUS_FULL_ONLY),
    ],
)
def test_r11_r12_full_refund_only(kind: PaymentKind, reason: Refusal) -> None:
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1200, kind=kind)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1200))
    # Pending capture: a part is R11/R12, everything is R13 (E then N is the path).
    assert refused(wire.do(R, "A1", 100), reason)
    assert refused(wire.do(R, "A1", 1200), Refusal.FULL_REFUND_PENDING_CAPTURE)
    settle(emulator)
    assert refused(wire.do(R, "A1", 1199), reason)
    assert ok(wire.do(R, "A1", 1200))
    assert emulator.order(MID, "A1").closed_amount == 0


# -- R13: no full R during a pending capture ---------------------------------------------------


@settings(max_examples=60)
@given(amount=st.integers(2, 10_000), data=st.data())
def test_r13_r_during_pending_capture_is_partial_only(amount: int, data: st.DataObject) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", amount)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", amount))
    refund = data.draw(st.integers(1, amount))
    reply = wire.do(R, "A1", refund)
    if refund == amount:
        assert refused(reply, Refusal.FULL_REFUND_PENDING_CAPTURE)
        assert error_token(str(reply["RtnMsg"])) == "error_amount_R"
        assert str(reply["RtnMsg"]) == "更新失敗.(error_amount_R)"
        assert emulator.order(MID, "A1").closed_amount == amount
    else:
        assert ok(reply)
        view = emulator.order(MID, "A1")
        assert (view.status, view.closed_amount) == (GatewayStatus.TO_BE_CAPTURED, amount - refund)
        # The rest of the pending capture cannot be refunded by R either.
        assert refused(wire.do(R, "A1", amount - refund), Refusal.FULL_REFUND_PENDING_CAPTURE)


# -- R14 and [HOUSE]: C, E and N carry the order amount ----------------------------------------


@pytest.mark.parametrize("action", [C, E, N])
def test_r14_full_amount_actions(action: Action) -> None:
    emulator = make_emulator(full_amount_actions=frozenset({C, E, N}))
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    if action is E:
        assert ok(wire.do(C, "A1", 1000))
    before = state_of(emulator)
    assert refused(wire.do(action, "A1", 999), Refusal.AMOUNT_NOT_ORDER_AMOUNT)
    assert refused(wire.do(action, "A1", 1001), Refusal.BAD_AMOUNT)
    assert state_of(emulator) == before
    assert ok(wire.do(action, "A1", 1000))


def test_full_amount_actions_setting_allows_a_partial_close() -> None:
    emulator = make_emulator(full_amount_actions=frozenset({E, N}))
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 600))
    assert emulator.order(MID, "A1").closed_amount == 600
    settle(emulator)
    assert emulator.balance(MID) == 600
    assert refused(wire.do(R, "A1", 601), Refusal.OVER_CAPTURED)


# -- R16: balance ------------------------------------------------------------------------------


def test_r16_refund_after_settlement_needs_balance() -> None:
    emulator = make_emulator(balance=0)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    assert emulator.balance(MID) == 1000  # grows by what settles
    emulator.authorize(MID, "A2", 1000)
    emulator.set_balance(MID, 250)
    before = state_of(emulator)
    reply = wire.do(R, "A1", 300)
    assert refused(reply, Refusal.INSUFFICIENT_BALANCE)
    assert state_of(emulator) == before
    assert ok(wire.do(R, "A1", 250))
    assert emulator.balance(MID) == 0
    # Before settlement no balance is needed: the refund only lowers the pending capture.
    assert ok(wire.do(C, "A2", 1000))
    assert ok(wire.do(R, "A2", 999))
    assert emulator.balance(MID) == 0


def test_balance_settings_off_keep_the_balance_still() -> None:
    emulator = make_emulator(balance=500, credit_settlements=False, debit_refunds=False)
    emulator.authorize(MID, "A1", 2000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 2000))
    settle(emulator)
    assert emulator.balance(MID) == 500
    assert ok(wire.do(R, "A1", 500))
    assert emulator.balance(MID) == 500
    assert refused(wire.do(R, "A1", 501), Refusal.INSUFFICIENT_BALANCE)


# -- R18: no R on an order that is only authorized ---------------------------------------------


def test_r18_refund_of_an_authorized_order_is_refused() -> None:
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    before = state_of(emulator)
    assert refused(wire.do(R, "A1", 100), Refusal.NOT_CAPTURED)
    assert state_of(emulator) == before


# -- R19: amounts and numbers on the wire -----------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, 1.5, 100.0, "100", True, None, [100], 10**30])
def test_r19_bad_total_amounts_are_refused_and_change_nothing(amount: object) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    before = state_of(emulator)
    reply = wire.do(N, "A1", amount)
    assert not ok(reply)
    assert reply["RtnCode"] in (
        DEFAULT_REFUSALS[Refusal.BAD_AMOUNT].rtn_code,
        DEFAULT_REFUSALS[Refusal.BAD_PARAMETER].rtn_code,
    )
    assert state_of(emulator) == before


@pytest.mark.parametrize(
    "change",
    [
        {"Action": "X"},
        {"Action": "c"},
        {"Action": None},
        {"MerchantTradeNo": "A-1"},
        {"MerchantTradeNo": ""},
        {"TradeNo": "1" * 21},
        {"TradeNo": 12345},
        {"MerchantID": 3002607},
    ],
)
def test_r19_malformed_fields_are_bad_parameters(change: dict[str, object]) -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    inner: dict[str, object] = {
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": trade_no,
        "Action": "N",
        "TotalAmount": 1000,
        **change,
    }
    before = state_of(emulator)
    reply = wire.call(Endpoint.DO_ACTION, inner)
    assert refused(reply, Refusal.BAD_PARAMETER)
    assert state_of(emulator) == before


def test_missing_total_amount_and_action_are_bad_parameters() -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    base = {"MerchantID": MID, "MerchantTradeNo": "A1", "TradeNo": trade_no}
    assert refused(wire.call(Endpoint.DO_ACTION, {**base, "Action": "N"}), Refusal.BAD_PARAMETER)
    assert refused(wire.call(Endpoint.DO_ACTION, {**base, "TotalAmount": 1}), Refusal.BAD_PARAMETER)


def test_unknown_order_wrong_trade_no_and_other_merchants_order_are_not_found() -> None:
    emulator = make_emulator()
    emulator.add_merchant("3002608", "A" * 16, "B" * 16)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize("3002608", "B1", 1000)
    wire = Wire(emulator)
    assert refused(wire.do(N, "ZZ", 1000, trade_no="1234"), Refusal.ORDER_NOT_FOUND)
    assert refused(wire.do(N, "A1", 1000, trade_no="2608031000009999"), Refusal.ORDER_NOT_FOUND)
    other = emulator.order("3002608", "B1").trade_no
    reply = wire.do(N, "B1", 1000, trade_no=other, merchant_id=MID)
    assert refused(reply, Refusal.ORDER_NOT_FOUND)
    assert reply["RtnCode"] == 10000185
    assert emulator.order("3002608", "B1").status is GatewayStatus.AUTHORIZED


# -- stacked refunds, ClsAmt timing ------------------------------------------------------------


def test_second_refund_while_pending_adds_up_by_default() -> None:
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    assert ok(wire.do(R, "A1", 100))
    assert ok(wire.do(R, "A1", 200))
    assert emulator.order(MID, "A1").pending_refund_total == 300


def test_stack_pending_refunds_off_refuses_the_second() -> None:
    emulator = make_emulator(balance=10_000, stack_pending_refunds=False)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    assert ok(wire.do(R, "A1", 100))
    assert refused(wire.do(R, "A1", 100), Refusal.REFUND_PENDING)
    settle(emulator)
    assert ok(wire.do(R, "A1", 100))
    assert refused(wire.do(R, "A1", 100), Refusal.REFUND_PENDING)


def test_closed_amount_lowered_only_at_the_batch_when_configured() -> None:
    emulator = make_emulator(balance=10_000, refund_lowers_closed_amount_at_once=False)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    assert ok(wire.do(R, "A1", 300))
    assert emulator.order(MID, "A1").closed_amount == 1000
    assert wire.detail("A1")["RtnValue"]["ClsAmt"] == 1000
    assert refused(wire.do(R, "A1", 701), Refusal.OVER_CAPTURED)  # the cap still counts it
    settle(emulator)
    assert emulator.order(MID, "A1").closed_amount == 700


# -- settings ----------------------------------------------------------------------------------


def test_custom_refusal_replies_and_success_message() -> None:
    emulator = make_emulator(
        refusals={Refusal.WRONG_STATE: (77, "nope")}, success_message="Success!"
    )
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert wire.do(E, "A1", 1000) == {
        "RtnCode": 77,
        "RtnMsg": "nope",
        "PlatformID": "",
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": emulator.order(MID, "A1").trade_no,
    }
    assert wire.do(N, "A1", 1000)["RtnMsg"] == "Success!"
    assert emulator.settings.refusal(Refusal.OVER_DATE) == DEFAULT_REFUSALS[Refusal.OVER_DATE]


def test_settings_validate_their_fields() -> None:
    with pytest.raises(InvalidArgument, match="rtn_code 1"):
        RefusalReply(1, "ok")
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(refusals={"over_date": RefusalReply(2, "x")})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(stack_pending_refunds=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="positive"):
        EmulatorSettings(close_limit=dt.timedelta(0))
    with pytest.raises(InvalidArgument, match="CAPTURED or TO_BE_CAPTURED"):
        EmulatorSettings(unionpay_start_status=GatewayStatus.AUTHORIZED)
    with pytest.raises(InvalidArgument, match="after batch_time"):
        EmulatorSettings(batch_window_end=dt.time(20, 0))
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(full_amount_actions=frozenset({"C"}))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        RefusalReply("2", "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(refusals=[(Refusal.OVER_DATE, (2, "x"))])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(refusals={Refusal.OVER_DATE: "error_overDate"})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(close_limit=21)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(batch_time=dt.time(20, 15, tzinfo=TAIPEI))
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(full_amount_actions="CEN")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(bad_envelope_trans_code="999")  # type: ignore[arg-type]
    assert EmulatorSettings(full_amount_actions=[C]).full_amount_actions == frozenset({C})
    assert attrs.evolve(EmulatorSettings(), close_limit=dt.timedelta(days=7)).close_limit == (
        dt.timedelta(days=7)
    )


def test_every_refusal_has_a_default_reply_that_is_not_success() -> None:
    assert set(DEFAULT_REFUSALS) == set(Refusal)
    assert all(reply.rtn_code != 1 for reply in DEFAULT_REFUSALS.values())
    assert DEFAULT_REFUSALS[Refusal.ORDER_NOT_FOUND] == RefusalReply(
        10000185, "Cant not find the trade data"
    )
