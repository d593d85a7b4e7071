"""A clock that runs in real time (what ``serve`` uses by default): batches, day rules and late
landings happen as time passes, the admin routes still jump it, and moving it over many batches
never holds up other requests."""

from __future__ import annotations

import datetime as dt
import statistics
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle.emulator import (
    Emulator,
    EmulatorSettings,
    Endpoint,
    EventKind,
    Fault,
    serving,
)
from test_emulator_support import IV, KEY, MID, START, TAIPEI, Wire

#: The longest any wait in this module may take (seconds): waits poll, they never sleep blindly.
PATIENCE = 5.0


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"waited {PATIENCE} s for {what}"
        time.sleep(0.01)


def running(now: dt.datetime, **settings: object) -> Emulator:
    emulator = Emulator(now=now, settings=EmulatorSettings(**settings), realtime=True)  # type: ignore[arg-type]
    emulator.add_merchant(MID, KEY, IV, auto_close=True)
    emulator.add_merchant("2000132", KEY, IV, auto_close=False)
    return emulator


def test_a_frozen_clock_stands_still_and_a_running_one_runs() -> None:
    frozen = Emulator(now=START)
    assert not frozen.realtime
    time.sleep(0.02)
    assert frozen.now == START
    started = time.monotonic()
    clock = running(START)
    assert clock.realtime
    until(lambda: clock.now >= START + dt.timedelta(milliseconds=50), "the clock to move")
    elapsed = dt.timedelta(seconds=time.monotonic() - started)
    assert START + dt.timedelta(milliseconds=50) <= clock.clock() <= START + elapsed
    with pytest.raises(InvalidArgumentType):
        Emulator(now=START, realtime="yes")  # type: ignore[arg-type]


def test_the_batch_happens_when_real_time_reaches_20_15() -> None:
    batch = dt.datetime(2026, 8, 3, 20, 15, tzinfo=TAIPEI)
    emulator = running(batch - dt.timedelta(milliseconds=300))
    emulator.authorize(MID, "A1", 1000)
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    until(lambda: emulator.order(MID, "A1").status is GatewayStatus.CAPTURED, "the batch")
    view = emulator.order(MID, "A1")
    assert [(row.amount, row.at) for row in view.close_rows] == [(1000, batch)]
    timed = [(event.kind, event.at) for event in emulator.events if event.at >= batch]
    assert timed[:3] == [
        (EventKind.AUTO_CLOSE, batch),
        (EventKind.SETTLE, batch),
        (EventKind.BATCH, batch),
    ]
    assert emulator.balance(MID) == 1000
    assert emulator.next_batch() == batch + dt.timedelta(days=1)
    # In the batch window (R5) a DoAction on the running clock is refused, as at 20:20.
    emulator.authorize(MID, "A2", 500)
    reply = Wire(emulator).do(Action.CLOSE, "A2", 500)
    assert reply["RtnCode"] != 1


def test_day_rules_and_late_landings_happen_as_real_time_passes() -> None:
    emulator = running(
        START,
        notice_after=dt.timedelta(milliseconds=150),
        abandon_after=dt.timedelta(milliseconds=300),
        close_limit=dt.timedelta(milliseconds=100),
    )
    emulator.authorize("2000132", "OLD", 500)
    emulator.authorize(MID, "A1", 800)
    wire = Wire(emulator)
    emulator.faults.inject(Fault.LATE_APPLY, land_after=dt.timedelta(milliseconds=200))
    with pytest.raises(httpx.ReadTimeout):
        wire.do(Action.CLOSE, "A1", 800)
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    # No request reaches the gateway meanwhile: reading the emulator is enough.
    until(lambda: not emulator.pending_landings(), "the landing")
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED
    until(lambda: emulator.order("2000132", "OLD").status is GatewayStatus.CANCELED, "day 90")
    kinds = [event.kind for event in emulator.events if event.merchant_trade_no == "OLD"]
    assert kinds == [EventKind.SETUP, EventKind.NOTICE, EventKind.EXPIRE]
    timed = [event.at for event in emulator.events]
    assert timed == sorted(timed)


def test_admin_jumps_still_work_and_the_clock_runs_on_from_them() -> None:
    emulator = running(START)
    emulator.authorize(MID, "A1", 1000)
    landed = emulator.advance(dt.timedelta(days=1))
    assert landed >= START + dt.timedelta(days=1)
    assert emulator.order(MID, "A1").status is GatewayStatus.CAPTURED
    until(lambda: emulator.now > landed, "the clock to run on")
    before = emulator.now
    with pytest.raises(InvalidArgument, match="never goes back"):
        emulator.set_time(before - dt.timedelta(seconds=1))  # behind the running clock
    after = emulator.now
    assert before <= after < before + dt.timedelta(seconds=PATIENCE)
    emulator.set_time(after + dt.timedelta(hours=2))
    assert emulator.now >= after + dt.timedelta(hours=2)


def test_the_served_time_route_says_whether_the_clock_runs() -> None:
    emulator = running(START)
    with serving(emulator) as url:
        first = httpx.get(f"{url}/_emulator/time", timeout=5).json()
        assert first["realtime"] is True
        until(
            lambda: httpx.get(f"{url}/_emulator/time", timeout=5).json()["now"] > first["now"],
            "the served clock to move",
        )
        moved = httpx.post(
            f"{url}/_emulator/time", json={"advance_seconds": 3600}, timeout=5
        ).json()
        assert dt.datetime.fromisoformat(moved["now"]) >= START + dt.timedelta(hours=1)


def test_a_jump_over_years_of_batches_and_200_orders_lets_other_requests_through() -> None:
    """The jump runs in the clock's own thread, a few orders at a time: while it moves the clock
    over ten years of batches, the day rules of 100 orders and the batch of 100 others, requests
    through the gateway and the admin routes go on, and none waits for the jump to finish."""
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10_000)
    emulator.add_merchant("2000132", KEY, IV, auto_close=False)
    for number in range(100):
        emulator.authorize(MID, f"A{number}", 1000)
        emulator.authorize("2000132", f"M{number}", 1000, at=START - dt.timedelta(minutes=number))
    wire = Wire(emulator)
    jumped = threading.Event()
    took: list[float] = []
    with serving(emulator) as url, httpx.Client(base_url=url, timeout=30) as admin:
        wire.http = httpx.Client(base_url=url, timeout=30)

        def jump() -> None:
            began = time.perf_counter()
            response = admin.post("/_emulator/time", json={"advance_seconds": 3650 * 86400})
            took.append(time.perf_counter() - began)
            assert response.status_code == 200, response.text
            jumped.set()

        mover = threading.Thread(target=jump)
        began = time.perf_counter()
        mover.start()
        during: list[tuple[float, float]] = []
        while not jumped.is_set():
            sent = time.perf_counter()
            wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"})
            admin.get(f"/_emulator/orders/{MID}/A1")
            during.append((sent, time.perf_counter()))
        mover.join()
        wire.http.close()
    ended = began + took[0]
    inside = [(sent, done) for sent, done in during if began < sent and done < ended]
    latencies = [done - sent for sent, done in during]
    print(
        f"\njump of ten years over 200 orders: {took[0] * 1000:.0f} ms; "
        f"{len(inside)} request pairs inside it, median {statistics.median(latencies) * 1000:.1f}"
        f" ms, max {max(latencies) * 1000:.1f} ms"
    )
    # Every batch and day rule ran, once, in time order.
    batches = [event for event in emulator.events if event.kind is EventKind.BATCH]
    assert len(batches) == 3650
    timed = [e.at for e in emulator.events if e.kind is not EventKind.SETUP]
    assert timed == sorted(timed)
    assert {view.status for view in emulator.orders("2000132")} == {GatewayStatus.CANCELED}
    assert {view.status for view in emulator.orders(MID)} == {GatewayStatus.CAPTURED}
    # Requests were served while the clock moved: the gateway saw them at moments inside the
    # jump (between its first and its last batch), and none waited for the whole jump.
    queries = [e for e in emulator.events if e.kind is EventKind.REQUEST]
    amid = [e for e in queries if batches[0].seq < e.seq < batches[-1].seq]
    assert len(inside) >= 3
    assert amid, "no request got in while the clock moved"
    assert max(latencies) < took[0] / 2
