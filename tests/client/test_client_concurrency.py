"""Money movement on one order is serialised; different orders run in parallel (issue 3 item 5).

Five concurrent refunds of 300 on a captured 1,000 order: each re-queries under the order's lock,
so at most three R are sent, the planner refuses the fourth and fifth (R10), and the gateway
never sees an R it would refuse. Threads for :class:`Client`, tasks for :class:`AsyncClient`.
The fake network yields on every request (``time.sleep(0)`` / ``asyncio.sleep(0)``) so that
without the lock the calls would interleave; it also records how many requests for the order
were in flight at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

import httpx

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    Client,
    Credentials,
    InMemoryJournal,
    Outcome,
    ProcessOrderLocks,
    RefundExceedsCaptured,
    State,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind

MID = "3002607"
CREDENTIALS = Credentials(MID, "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk")
START = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)


def world(*orders: str) -> Emulator:
    """An emulator whose ``orders`` (1,000 TWD each) are captured and settled."""
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk", balance=1_000_000)
    for order in orders:
        emulator.authorize(MID, order, 1000)
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=20))
    for order in orders:
        assert emulator.snapshot(MID, order).state is State.CLOSED
    return emulator


def refunds_sent(emulator: Emulator) -> int:
    return sum(
        1
        for e in emulator.events
        if e.kind is EventKind.REQUEST
        and e.endpoint is Endpoint.DO_ACTION
        and e.action is Action.REFUND
    )


def refusals(emulator: Emulator) -> int:
    return sum(1 for e in emulator.events if e.refusal is not None)


def check_five_refunds(
    emulator: Emulator, results: list[Outcome | BaseException], in_flight_max: int
) -> None:
    done = [r for r in results if isinstance(r, Outcome)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(done) == 3
    assert len(refused) == 2
    assert all(isinstance(r, RefundExceedsCaptured) and r.rule == "R10" for r in refused)
    assert refunds_sent(emulator) == 3
    assert refusals(emulator) == 0
    snapshot = emulator.snapshot(MID, "A1")
    assert (snapshot.state, snapshot.closed_amount) == (State.TO_CLOSE, 100)
    assert in_flight_max == 1


class Tracker:
    """Counts requests in flight at once (all for one order in these tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.max = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def test_five_concurrent_refunds_in_threads_send_at_most_three_r() -> None:
    emulator = world("A1")
    tracker = Tracker()

    def handler(request: httpx.Request) -> httpx.Response:
        tracker.enter()
        try:
            time.sleep(0)  # let another thread run here, as a real network would
            return emulator.handler(request)
        finally:
            tracker.leave()

    results: list[Outcome | BaseException] = []
    start = threading.Barrier(5)
    with Client(
        CREDENTIALS, transport=httpx.MockTransport(handler), clock=emulator.clock
    ) as client:

        def refund() -> None:
            start.wait()
            try:
                results.append(client.refund("A1", 300))
            except RefundExceedsCaptured as exc:
                results.append(exc)

        threads = [threading.Thread(target=refund) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        locks = client.journal.locks
        assert isinstance(locks, ProcessOrderLocks)
        assert len(locks) == 0
    check_five_refunds(emulator, results, tracker.max)


def test_five_concurrent_refunds_in_tasks_send_at_most_three_r() -> None:
    emulator = world("A1")
    tracker = Tracker()

    async def handler(request: httpx.Request) -> httpx.Response:
        tracker.enter()
        try:
            await asyncio.sleep(0)  # let another task run here, as a real network would
            return emulator.handler(request)
        finally:
            tracker.leave()

    async def run() -> list[Outcome | BaseException]:
        async with AsyncClient(
            CREDENTIALS, transport=httpx.MockTransport(handler), clock=emulator.clock
        ) as client:
            results = await asyncio.gather(
                *(client.refund("A1", 300) for _ in range(5)), return_exceptions=True
            )
            locks = client.journal.locks
            assert isinstance(locks, ProcessOrderLocks)
            assert len(locks) == 0
            return list(results)

    check_five_refunds(emulator, asyncio.run(run()), tracker.max)


def test_different_orders_move_money_in_parallel_threads() -> None:
    emulator = world("A1", "B2")
    # Both DoActions must be in the handler at the same time to pass this barrier: with one
    # lock for all orders the first would wait alone and the barrier would break.
    meet = threading.Barrier(2, timeout=10)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Credit/DoAction"):
            meet.wait()
        return emulator.handler(request)

    failures: list[BaseException] = []
    with Client(
        CREDENTIALS, transport=httpx.MockTransport(handler), clock=emulator.clock
    ) as client:

        def refund(order: str) -> None:
            try:
                client.refund(order, 100)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=refund, args=(o,)) for o in ("A1", "B2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert emulator.snapshot(MID, "A1").closed_amount == 900
    assert emulator.snapshot(MID, "B2").closed_amount == 900


def test_different_orders_move_money_in_parallel_tasks() -> None:
    emulator = world("A1", "B2")

    async def run() -> None:
        meet = asyncio.Barrier(2)

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/Credit/DoAction"):
                await asyncio.wait_for(meet.wait(), timeout=10)
            return emulator.handler(request)

        async with AsyncClient(
            CREDENTIALS, transport=httpx.MockTransport(handler), clock=emulator.clock
        ) as client:
            await asyncio.gather(client.refund("A1", 100), client.refund("B2", 100))

    asyncio.run(run())
    assert emulator.snapshot(MID, "A1").closed_amount == 900
    assert emulator.snapshot(MID, "B2").closed_amount == 900


def test_lock_entries_live_only_while_held_or_awaited() -> None:
    # The per-order locks come with the journal (docs/ecpay-api.md section 9): every client
    # sharing it shares them.
    locks = InMemoryJournal().locks
    with locks.hold(MID, "A1"):
        with locks.hold(MID, "B2"):
            assert len(locks) == 2
        assert len(locks) == 1
    assert len(locks) == 0


def test_task_lock_entries_are_dropped_after_the_last_user() -> None:
    locks = InMemoryJournal().locks

    async def run() -> None:
        entered = asyncio.Event()

        async def hold(order: str) -> None:
            async with locks.ahold(MID, order):
                entered.set()
                await asyncio.sleep(0)

        await asyncio.gather(hold("A1"), hold("A1"), hold("B2"))
        assert entered.is_set()

    asyncio.run(run())
    assert len(locks) == 0
