"""A CreditDetail served from data behind (docs/ecpay-api.md section 9): Fault.STALE_QUERY (some
writes behind) and EmulatorSettings.credit_detail_lag (some time behind). The truth itself never
lags."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle.emulator import (
    Emulator,
    EmulatorSettings,
    Endpoint,
    EventKind,
    Fault,
    ReplyFlavour,
)
from ecpay_lifecycle.emulator._serve import settings_from_json
from ecpay_lifecycle.emulator._state import HISTORY
from test_emulator_support import MID, START, Wire, make_emulator, ok

C, R, E = Action.CLOSE, Action.REFUND, Action.CANCEL
MINUTE = dt.timedelta(minutes=1)


def shown(wire: Wire, number: str = "A1") -> tuple[str, int, int]:
    """What CreditDetail shows: status, ClsAmt and how many close rows."""
    reply = wire.detail(number)
    rows = reply["CloseData"]
    return reply["RtnValue"]["Status"], reply["RtnValue"]["ClsAmt"], len(rows)


def stale(emulator: Emulator, writes: int | None = None) -> tuple[str, int, int]:
    emulator.faults.inject(Fault.STALE_QUERY, writes=writes)
    return shown(Wire(emulator))


def four_writes(emulator: Emulator) -> None:
    """Three writes after the authorization: C, the batch's settlement, an R."""
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=20))
    assert ok(wire.do(R, "A1", 300))


def test_stale_query_one_write_behind() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    rule = emulator.faults.inject(Fault.STALE_QUERY)
    assert (rule.endpoint, rule.writes) == (Endpoint.CREDIT_DETAIL, 1)
    assert shown(wire) == ("Authorized", 0, 0)  # as it was before the C
    event = emulator.events[-1]
    assert (event.endpoint, event.fault, event.applied) == (
        Endpoint.CREDIT_DETAIL,
        Fault.STALE_QUERY,
        False,
    )
    assert shown(wire) == ("To be captured", 1000, 0)  # the fault is spent
    assert emulator.order(MID, "A1").closed_amount == 1000  # the truth never lags


def test_stale_query_counts_writes_back() -> None:
    emulator = make_emulator(balance=5000)
    emulator.authorize(MID, "A1", 1000)
    four_writes(emulator)  # Authorized, To be captured, Captured (row), To be captured 700
    assert shown(Wire(emulator)) == ("To be captured", 700, 1)
    assert stale(emulator, 1) == ("Captured", 1000, 1)
    assert stale(emulator, 2) == ("To be captured", 1000, 0)
    assert stale(emulator, 3) == ("Authorized", 0, 0)
    assert stale(emulator, 50) == ("Authorized", 0, 0)  # before the order: its oldest view


def test_auto_close_and_settle_are_two_writes() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.set_time(emulator.next_batch())  # auto-close, then settle, at 20:15
    assert shown(Wire(emulator)) == ("Captured", 1000, 1)
    assert stale(emulator, 1) == ("To be captured", 1000, 0)
    assert stale(emulator, 2) == ("Authorized", 0, 0)


def test_expiry_and_forced_status_are_writes() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    emulator.set_status(MID, "A2", GatewayStatus.UNAUTHORIZED)
    emulator.advance(dt.timedelta(days=91))
    assert shown(Wire(emulator)) == ("Canceled", 0, 0)
    assert stale(emulator, 1) == ("Authorized", 0, 0)
    emulator.faults.inject(Fault.STALE_QUERY)
    assert Wire(emulator).detail("A2")["RtnValue"]["Status"] == "Authorized"


def test_a_change_credit_detail_does_not_show_is_not_a_write() -> None:
    """With ClsAmt lowered only at the batch, a partial R on a pending capture shows nothing."""
    emulator = make_emulator(refund_lowers_closed_amount_at_once=False)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    assert ok(wire.do(R, "A1", 300))
    assert shown(wire) == ("To be captured", 1000, 0)
    assert stale(emulator, 1) == ("Authorized", 0, 0)  # one write behind: before the C


def test_a_late_landing_is_a_write() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(Fault.LATE_APPLY, land_after=MINUTE)
    with pytest.raises(httpx.ReadTimeout):
        Wire(emulator).do(C, "A1", 1000)
    emulator.advance(MINUTE)
    assert shown(Wire(emulator)) == ("To be captured", 1000, 0)
    assert stale(emulator, 1) == ("Authorized", 0, 0)


def test_history_is_bounded_and_the_oldest_kept_view_answers_beyond_it() -> None:
    emulator = make_emulator(full_amount_actions=frozenset())
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    # C and E in turn: every step is a write (To be captured <-> Operation canceled).
    for _ in range(HISTORY + 4):
        assert ok(wire.do(C, "A1", 1000))
        assert ok(wire.do(E, "A1", 1000))
    assert shown(wire)[0] == "Operation canceled"
    assert stale(emulator, HISTORY - 2)[0] == "Operation canceled"
    assert stale(emulator, HISTORY - 1)[0] == "To be captured"  # the oldest kept view
    assert stale(emulator, HISTORY)[0] == "To be captured"  # further back: the same one
    assert stale(emulator, 10 * HISTORY)[0] == "To be captured"  # not the first, Authorized


def test_stale_query_in_the_aio_flavour() -> None:
    emulator = make_emulator(credit_detail_flavour=ReplyFlavour.AIO)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    emulator.faults.inject(Fault.STALE_QUERY)
    assert wire.detail("A1")["RtnValue"]["status"] == "已授權"


def test_stale_query_refusals_are_unchanged() -> None:
    emulator = make_emulator()
    emulator.faults.inject(Fault.STALE_QUERY)
    assert Wire(emulator).detail("NOPE")["RtnCode"] == 10000185


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"endpoint": Endpoint.DO_ACTION}, InvalidArgument),
        ({"endpoint": Endpoint.QUERY_TRADE}, InvalidArgument),
        ({"action": Action.REFUND}, InvalidArgument),
        ({"writes": 0}, InvalidArgument),
        ({"writes": -1}, InvalidArgument),
        ({"writes": 1.0}, InvalidArgumentType),
        ({"writes": True}, InvalidArgumentType),
    ],
)
def test_stale_query_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception]) -> None:
    emulator = make_emulator()
    with pytest.raises(error):
        emulator.faults.inject(Fault.STALE_QUERY, **kwargs)
    with pytest.raises(InvalidArgument):
        emulator.faults.inject(Fault.LOST_REPLY, writes=1)
    assert emulator.faults.pending() == ()


# -- credit_detail_lag ----------------------------------------------------------------------


def test_credit_detail_lag_answers_from_the_order_as_it_was() -> None:
    emulator = make_emulator(credit_detail_lag=5 * MINUTE)
    emulator.authorize(MID, "A1", 1000)  # 10:00
    wire = Wire(emulator)
    emulator.advance(MINUTE)
    assert ok(wire.do(C, "A1", 1000))  # 10:01
    assert shown(wire) == ("Authorized", 0, 0)  # nothing is 5 minutes old: the oldest view
    emulator.advance(4 * MINUTE)  # 10:05: the view at 10:00
    assert shown(wire) == ("Authorized", 0, 0)
    emulator.advance(MINUTE)  # 10:06: the C of 10:01 is exactly 5 minutes old
    assert shown(wire) == ("To be captured", 1000, 0)
    assert emulator.order(MID, "A1").closed_amount == 1000
    # STALE_QUERY counts back from the view the lag picks.
    assert stale(emulator, 1) == ("Authorized", 0, 0)
    # Other endpoints and the emulator's own views do not lag.
    assert wire.query("A1")["OrderInfo"]["TradeAmt"] == 1000


def test_credit_detail_lag_longer_than_the_calendar_shows_the_oldest_view() -> None:
    emulator = make_emulator(credit_detail_lag=dt.timedelta.max)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    assert shown(wire) == ("Authorized", 0, 0)


def test_credit_detail_lag_is_checked_and_comes_from_serve_json() -> None:
    assert EmulatorSettings().credit_detail_lag == dt.timedelta(0)
    with pytest.raises(InvalidArgument):
        EmulatorSettings(credit_detail_lag=-MINUTE)
    with pytest.raises(InvalidArgumentType):
        EmulatorSettings(credit_detail_lag=60)  # type: ignore[arg-type]
    assert settings_from_json({"credit_detail_lag": 90}).credit_detail_lag == dt.timedelta(
        seconds=90
    )
    with pytest.raises(InvalidArgument):
        settings_from_json({"credit_detail_lag": "90"})


def test_stale_views_are_logged_as_answered() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    stale(emulator)
    event = emulator.events[-1]
    assert event.kind is EventKind.REQUEST
    assert event.reply is not None
    assert event.reply["RtnValue"]["Status"] == "Authorized"
    assert emulator.now == START
