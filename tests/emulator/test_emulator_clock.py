"""The emulator's clock: the 20:15 Taipei batch runs once per day crossed, in order (R5), the day
rules happen as time passes (R6, R7), and the clock never goes back."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, InvalidArgumentType, State
from ecpay_lifecycle.emulator import Emulator, EventKind
from test_emulator_support import IV, KEY, MID, START, TAIPEI, Wire, make_emulator, ok, state_of


def batches(emulator: Emulator) -> list[dt.datetime]:
    return [event.at for event in emulator.events if event.kind is EventKind.BATCH]


def test_clock_starts_where_told_and_is_a_callable() -> None:
    emulator = make_emulator()
    assert emulator.clock() == START == emulator.now
    clock = emulator.clock
    emulator.advance(dt.timedelta(minutes=5))
    assert clock() == START + dt.timedelta(minutes=5)


def test_emulator_needs_an_aware_start() -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        Emulator(now=dt.datetime(2026, 8, 1, 10, 0))
    with pytest.raises(InvalidArgumentType):
        Emulator(now="2026-08-01")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        Emulator(now=START, settings={"close_limit": 3})  # type: ignore[arg-type]


def test_clock_never_goes_back() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 100)
    before = (state_of(emulator), emulator.events)
    with pytest.raises(InvalidArgument, match="never goes back"):
        emulator.set_time(START - dt.timedelta(microseconds=1))
    with pytest.raises(InvalidArgument, match="never goes back"):
        emulator.advance(dt.timedelta(seconds=-1))
    with pytest.raises(InvalidArgumentType):
        emulator.advance(5)  # type: ignore[arg-type]
    assert (state_of(emulator), emulator.events) == before
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        emulator.set_time(dt.datetime(2026, 9, 1))
    with pytest.raises(InvalidArgument, match="leaves the calendar"):
        emulator.advance(dt.timedelta.max)
    assert (state_of(emulator), emulator.events) == before
    emulator.set_time(START)  # standing still is allowed
    assert emulator.now == START
    with pytest.raises(InvalidArgument, match="max_events"):
        Emulator(now=START, max_events=-1)


def test_each_batch_runs_once_in_order_however_the_clock_moves() -> None:
    emulator = make_emulator()
    emulator.advance(dt.timedelta(hours=10, minutes=15))  # exactly 20:15 on day one
    emulator.advance(dt.timedelta(0))
    emulator.set_time(emulator.now)
    emulator.advance(dt.timedelta(days=3, minutes=1))
    for _ in range(30):
        emulator.advance(dt.timedelta(hours=1))
    expected = [dt.datetime(2026, 8, day, 20, 15, tzinfo=TAIPEI) for day in range(3, 8)]
    assert batches(emulator) == expected


@settings(max_examples=50)
@given(steps=st.lists(st.integers(0, 3 * 24 * 60), min_size=1, max_size=12))
def test_batches_are_exactly_the_20_15s_crossed(steps: list[int]) -> None:
    emulator = make_emulator()
    for minutes in steps:
        emulator.advance(dt.timedelta(minutes=minutes))
    end = emulator.now
    expected = []
    day = START.date()
    while True:
        at = dt.datetime.combine(day, dt.time(20, 15), tzinfo=TAIPEI)
        if at > end:
            break
        if at > START:
            expected.append(at)
        day += dt.timedelta(days=1)
    assert batches(emulator) == expected


def test_next_batch_is_the_first_20_15_taipei_after_now() -> None:
    emulator = make_emulator(now=dt.datetime(2026, 8, 3, 20, 15, tzinfo=TAIPEI))
    assert emulator.next_batch() == dt.datetime(2026, 8, 4, 20, 15, tzinfo=TAIPEI)
    emulator = make_emulator(now=dt.datetime(2026, 8, 3, 12, 14, 59, tzinfo=dt.UTC))
    assert emulator.next_batch() == dt.datetime(2026, 8, 3, 20, 15, tzinfo=TAIPEI)


def test_batch_with_auto_close_closes_and_settles_authorized_orders() -> None:
    emulator = make_emulator(auto_close=True)
    emulator.authorize(MID, "A1", 1000)
    emulator.set_time(emulator.next_batch())
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.capture_settled) == (
        GatewayStatus.CAPTURED,
        1000,
        True,
    )
    assert [(r.amount, r.at) for r in view.close_rows] == [(1000, emulator.now)]
    kinds = [e.kind for e in emulator.events if e.merchant_trade_no == "A1"]
    assert kinds[-2:] == [EventKind.AUTO_CLOSE, EventKind.SETTLE]
    assert emulator.balance(MID) == 1000


def test_batch_closes_authorized_setting_off_only_settles() -> None:
    emulator = make_emulator(auto_close=True, batch_closes_authorized=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    assert ok(Wire(emulator).do(Action.CLOSE, "A2", 1000))
    emulator.set_time(emulator.next_batch())
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    assert emulator.order(MID, "A2").status is GatewayStatus.CAPTURED


def test_batch_without_auto_close_settles_closes_but_leaves_authorized_orders() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(Action.CLOSE, "A2", 1000))
    emulator.set_time(emulator.next_batch())
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    assert emulator.order(MID, "A2").status is GatewayStatus.CAPTURED
    # Without auto-close there is no R5 window either: DoAction works at 20:20.
    emulator.advance(dt.timedelta(minutes=5))
    assert ok(wire.do(Action.CLOSE, "A1", 1000))


def test_batch_time_setting_moves_the_batch_and_the_window() -> None:
    emulator = make_emulator(batch_time=dt.time(11, 0), batch_window_end=dt.time(11, 5))
    emulator.authorize(MID, "A1", 1000)
    emulator.advance(dt.timedelta(hours=1, minutes=2))
    assert batches(emulator) == [dt.datetime(2026, 8, 3, 11, 0, tzinfo=TAIPEI)]
    emulator.authorize(MID, "A2", 1000)
    reply = Wire(emulator).do(Action.ABANDON, "A2", 1000)
    assert not ok(reply)
    emulator.advance(dt.timedelta(minutes=3))
    assert ok(Wire(emulator).do(Action.ABANDON, "A2", 1000))


def test_backdated_authorization_lives_through_what_it_missed() -> None:
    emulator = make_emulator(auto_close=True)
    emulator.authorize(MID, "A1", 1000, at=START - dt.timedelta(days=2))
    view = emulator.order(MID, "A1")
    assert view.status is GatewayStatus.CAPTURED
    assert view.authorized_at == START - dt.timedelta(days=2)
    assert [r.at for r in view.close_rows] == [dt.datetime(2026, 8, 1, 20, 15, tzinfo=TAIPEI)]
    assert batches(emulator) == []  # the replay logs what happened to the order, not the batches

    manual = Emulator(now=START)
    manual.add_merchant(MID, KEY, IV, auto_close=False)
    manual.authorize(MID, "OLD", 500, at=START - dt.timedelta(days=95))
    manual.authorize(MID, "MID1", 500, at=START - dt.timedelta(days=85))
    manual.authorize(MID, "NEW", 500, at=START - dt.timedelta(days=22))
    assert manual.snapshot(MID, "OLD").state is State.ABANDONED  # R7 after day 90
    assert manual.snapshot(MID, "MID1").state is State.AUTHORIZED
    assert [e.merchant_trade_no for e in manual.events if e.kind is EventKind.NOTICE] == [
        "OLD",
        "MID1",
    ]
    assert not ok(Wire(manual).do(Action.CLOSE, "NEW", 500))  # R6: 22 days old


def test_long_jump_runs_every_batch_and_day_rule_in_time_order() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.advance(dt.timedelta(days=100))
    kinds = [(e.kind, e.at) for e in emulator.events if e.kind is not EventKind.SETUP]
    assert [at for _kind, at in kinds] == sorted(at for _kind, at in kinds)
    assert len([k for k, _ in kinds if k is EventKind.BATCH]) == 100
    assert [k for k, _ in kinds if k is not EventKind.BATCH] == [
        EventKind.NOTICE,
        EventKind.EXPIRE,
    ]
    assert emulator.snapshot(MID, "A1").state is State.ABANDONED


def test_close_limit_setting_shrinks_r6() -> None:
    emulator = make_emulator(auto_close=False, close_limit=dt.timedelta(hours=1))
    emulator.authorize(MID, "A1", 1000)
    emulator.advance(dt.timedelta(hours=1))
    assert not ok(Wire(emulator).do(Action.CLOSE, "A1", 1000))


def test_the_end_of_the_calendar_is_a_typed_error_and_changes_nothing() -> None:
    late = dt.datetime(9999, 11, 1, tzinfo=dt.UTC)
    emulator = make_emulator(now=late, auto_close=False)
    emulator.authorize(MID, "A1", 100)
    before = (state_of(emulator), emulator.events)
    with pytest.raises(InvalidArgument, match="calendar"):
        emulator.advance(dt.timedelta(days=1))  # R7's day-90 instant is past year 9999
    assert (state_of(emulator), emulator.events) == before
    last = make_emulator(now=dt.datetime(9999, 12, 31, 12, 0, tzinfo=dt.UTC))
    with pytest.raises(InvalidArgument, match="calendar"):
        last.next_batch()
    with pytest.raises(InvalidArgument, match="calendar"):
        last.set_time(dt.datetime(9999, 12, 31, 20, 0, tzinfo=dt.UTC))  # Taipei is in 10000
    assert last.now == dt.datetime(9999, 12, 31, 12, 0, tzinfo=dt.UTC)
    with pytest.raises(InvalidArgument, match="calendar"):
        Emulator(now=dt.datetime(9999, 12, 31, 20, 0, tzinfo=dt.UTC))
