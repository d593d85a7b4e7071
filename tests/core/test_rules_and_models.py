"""The rules as pure functions (R5-R8, R20) and the domain values (R3, R19)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _core_strategies import instants
from ecpay_lifecycle import (
    Action,
    GatewayStatus,
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    OrderSnapshot,
    PaymentKind,
    State,
    UnknownStatusError,
    _rules,
)
from ecpay_lifecycle._models import check_amount, check_order_number
from ecpay_lifecycle._rules import TAIPEI

DAY = dt.date(2026, 11, 25)


def taipei(hh: int, mm: int, ss: int = 0) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(hh, mm, ss), tzinfo=TAIPEI)


# --- R5 -------------------------------------------------------------------------------------


@given(instants(), st.booleans())
def test_r5_window_is_half_open_2015_to_2030_taipei_in_any_zone(
    now: dt.datetime, auto_close: bool
) -> None:
    local = now.astimezone(TAIPEI).time()
    expected = auto_close and dt.time(20, 15) <= local < dt.time(20, 30)
    assert _rules.in_blackout(now, auto_close) is expected
    if expected:
        retry = _rules.blackout_retry_at(now)
        assert retry.astimezone(TAIPEI).time() == dt.time(20, 30)
        assert dt.timedelta(0) < retry - now <= dt.timedelta(minutes=15)


def test_r5_taipei_has_no_dst() -> None:
    assert TAIPEI.utcoffset(None) == dt.timedelta(hours=8)
    assert str(TAIPEI) == "Asia/Taipei"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (taipei(10, 0), taipei(20, 30)),
        (taipei(20, 20), taipei(20, 30)),
        (taipei(20, 30), taipei(20, 30) + dt.timedelta(days=1)),
        (taipei(23, 59), taipei(20, 30) + dt.timedelta(days=1)),
    ],
)
def test_next_batch_end(now: dt.datetime, expected: dt.datetime) -> None:
    assert _rules.next_batch_end(now) == expected


@given(instants())
def test_next_batch_end_is_the_first_2030_after_now(now: dt.datetime) -> None:
    end = _rules.next_batch_end(now)
    assert end > now
    assert end - now <= dt.timedelta(days=1)
    assert end.astimezone(TAIPEI).time() == dt.time(20, 30)


# --- R6, R7 ------------------------------------------------------------------------------------


@given(instants(days=60), st.integers(0, 60 * 86400), st.booleans())
def test_r6_capture_window(authorized_at: dt.datetime, later: int, auto_close: bool) -> None:
    now = authorized_at + dt.timedelta(seconds=later)
    within = _rules.within_capture_window(authorized_at, now, auto_close)
    assert within is (auto_close or later < 21 * 86400)


def test_r7_notice_and_forced_abandon() -> None:
    auth = taipei(9, 0)
    assert _rules.unclosed_notice_at(auth) - auth == dt.timedelta(days=80)
    assert _rules.forced_abandon_at(auth) - auth == dt.timedelta(days=90)
    assert _rules.capture_deadline(auth) - auth == dt.timedelta(days=21)


# --- R8, R11, R12, R20 -------------------------------------------------------------------------


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("kind", list(PaymentKind))
def test_r8_only_r_applies_to_unionpay(action: Action, kind: PaymentKind) -> None:
    expected = kind is not PaymentKind.UNIONPAY or action is Action.REFUND
    assert _rules.action_applies_to_kind(action.value, kind) is expected


def test_r11_r12_full_only_kinds() -> None:
    assert {k for k in PaymentKind if _rules.full_refund_only(k)} == {
        PaymentKind.INSTALLMENT,
        PaymentKind.BONUS,
    }


@given(st.integers(-3600, 3600))
def test_r20_timestamp_is_fresh_for_ten_minutes(offset: int) -> None:
    now = taipei(10, 0)
    assert _rules.timestamp_fresh(int(now.timestamp()) + offset, now) is (abs(offset) <= 600)


# --- R3: the status vocabulary ---------------------------------------------------------------

SPEC_TABLE = {
    "已授權": State.AUTHORIZED,
    "Authorized": State.AUTHORIZED,
    "操作取消": State.AUTHORIZED,
    "Operation canceled": State.AUTHORIZED,
    "要關帳": State.TO_CLOSE,
    "To be captured": State.TO_CLOSE,
    "已取消": State.ABANDONED,
    "Canceled": State.ABANDONED,
    "未授權": State.UNAUTHORIZED,
    "Unauthorized": State.UNAUTHORIZED,
    **dict.fromkeys(
        ["銀行拒絕", "關帳中", "要取消", "取消中", "銀行追回中", "銀行已追回", "批次失敗", "不明"],
        State.UNSETTLED,
    ),
}


@pytest.mark.parametrize(("text", "state"), list(SPEC_TABLE.items()))
def test_r3_every_documented_status_maps_to_exactly_one_state(text: str, state: State) -> None:
    assert GatewayStatus.parse(text).to_state(closed_amount=100) is state


@pytest.mark.parametrize("text", ["已關帳", "Captured", " Captured ", "captured"])
def test_r3_captured_is_closed_or_refunded_by_the_closed_amount(text: str) -> None:
    status = GatewayStatus.parse(text)
    assert status.to_state(closed_amount=1) is State.CLOSED
    assert status.to_state(closed_amount=0) is State.REFUNDED


def test_r3_every_member_has_both_spellings_parse_back() -> None:
    for status in GatewayStatus:
        assert GatewayStatus.parse(status.chinese) is status
        if status.english is not None:
            assert GatewayStatus.parse(status.english) is status


@given(st.text())
def test_r3_unknown_statuses_are_errors_that_name_the_value(text: str) -> None:
    known = {s.chinese for s in GatewayStatus} | {
        s.english.casefold() for s in GatewayStatus if s.english
    }
    if text.strip() in known or text.strip().casefold() in known:
        return
    with pytest.raises(UnknownStatusError) as info:
        GatewayStatus.parse(text)
    assert info.value.status == text
    assert repr(text) in str(info.value)


def test_r3_non_text_status_is_an_error() -> None:
    with pytest.raises(UnknownStatusError):
        GatewayStatus.parse(1)


# --- R19 and snapshot validation ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["A", "a1B2", "1" * 20])
def test_r19_order_numbers_ok(value: str) -> None:
    assert check_order_number(value) == value


@pytest.mark.parametrize("value", ["", "1" * 21, "A-1", "訂單1", "A 1"])
def test_r19_order_numbers_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="R19"):
        check_order_number(value)


def test_r19_amounts() -> None:
    assert check_amount(1) == 1
    assert check_amount(0, allow_zero=True) == 0
    with pytest.raises(InvalidAmount):
        check_amount(0)
    with pytest.raises(InvalidArgumentType):
        check_amount(True)


AUTH = taipei(9, 0)


def snap(**changes: object) -> OrderSnapshot:
    fields: dict[str, object] = {
        "merchant_trade_no": "A1",
        "trade_no": "T1",
        "amount": 1000,
        "state": State.CLOSED,
        "closed_amount": 1000,
        "authorized_at": AUTH,
    }
    fields.update(changes)
    return OrderSnapshot(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"closed_amount": 1001}, InvalidArgument),
        ({"authorized_at": dt.datetime(2026, 1, 1)}, InvalidArgument),
        ({"authorized_at": "2026-01-01"}, InvalidArgumentType),
        ({"amount": 0}, InvalidAmount),
        ({"amount": 10.0}, InvalidArgumentType),
        ({"state": "closed"}, TypeError),
        ({"state": State.CLOSED, "closed_amount": 0}, InvalidArgument),
        ({"state": State.AUTHORIZED, "closed_amount": 5}, InvalidArgument),
        ({"state": State.TO_CLOSE, "closed_amount": 0, "capture_settled": False}, InvalidArgument),
        (
            {"state": State.AUTHORIZED, "closed_amount": 0, "kind": PaymentKind.UNIONPAY},
            InvalidArgument,
        ),
        ({"merchant_trade_no": "bad no"}, InvalidArgument),
    ],
)
def test_impossible_snapshots_are_refused_at_construction(
    changes: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        snap(**changes)


@given(
    state=st.sampled_from([State.CLOSED, State.REFUNDED, State.AUTHORIZED, State.UNAUTHORIZED]),
    given_settled=st.booleans(),
)
def test_capture_settled_follows_from_a_state_that_implies_it(
    state: State, given_settled: bool
) -> None:
    """A shop building a snapshot from its own records cannot contradict the state: closed and
    refunded orders have settled their capture, authorizations have none."""
    closed = 1000 if state is State.CLOSED else 0
    snapshot = snap(state=state, closed_amount=closed, capture_settled=given_settled)
    assert snapshot.capture_settled is (state in (State.CLOSED, State.REFUNDED))
    assert snapshot == snap(state=state, closed_amount=closed)


@given(given_settled=st.booleans())
def test_capture_settled_is_the_callers_on_an_order_to_close(given_settled: bool) -> None:
    snapshot = snap(state=State.TO_CLOSE, closed_amount=600, capture_settled=given_settled)
    assert snapshot.capture_settled is given_settled
    assert snapshot.pending_capture is not given_settled


def test_snapshot_defaults_and_views() -> None:
    closed = snap()
    assert closed.capture_settled is True
    assert closed.refundable == 1000
    pending = snap(state=State.TO_CLOSE, closed_amount=600, capture_settled=False)
    assert pending.pending_capture
    assert not pending.pending_refund
    authorized = snap(state=State.AUTHORIZED, closed_amount=0)
    assert authorized.capture_settled is False
    assert authorized.refundable == 1000
    assert snap(state=State.REFUNDED, closed_amount=0).refundable == 0


@given(instants())
def test_taipei_second_of_day_matches_astimezone(now: dt.datetime) -> None:
    local = now.astimezone(TAIPEI)
    assert _rules.taipei_second_of_day(now) == local.hour * 3600 + local.minute * 60 + local.second


@given(st.integers(-14 * 60, 14 * 60), st.integers(0, 86400 * 3 - 1))
def test_taipei_second_of_day_in_any_offset(offset_minutes: int, second: int) -> None:
    zone = dt.timezone(dt.timedelta(minutes=offset_minutes))
    now = (dt.datetime(2026, 11, 24, tzinfo=TAIPEI) + dt.timedelta(seconds=second)).astimezone(zone)
    assert _rules.taipei_second_of_day(now) == second % 86400
