"""R21-R23 for every interleaving hypothesis can find: clients sharing one journal (issue 8).

N clients (threads with ``Client``, or asyncio tasks with ``AsyncClient``) share one
``InMemoryJournal`` and ask for refunds under idempotency keys drawn from a small pool, while
random faults (lost replies, late landings, queries one write behind, timeouts, 5xx, 403, ...)
are armed and the clock jumps (inside and past the fence, across the 20:15 batch). Then the
faults go, the clock passes every fence and batch, and each key is reconciled and retried as a
shop would. Counted on the emulator's books:

- exactly one application per key (each key refunds its own amount, so amounts name keys);
- the journal agrees with the books: every applied DoAction is DONE in exactly one record, and
  no record says DONE for a step that was not applied;
- no order is left locked, and no order lock is left held.

The protocol's one assumption about queries (docs/ecpay-api.md section 9, R22): ECPay's
CreditDetail may answer from data behind its writes, but not for longer than the fence margin. So
when the clock jumps past a fence, query faults that would show data older than that are dropped
(:func:`move_clock`); an unbounded lag is outside what any query-based protocol can resolve
(docs/client.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import threading

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    AttemptStatus,
    Client,
    Credentials,
    EcpayError,
    InMemoryJournal,
    Outcome,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "SharedJournalK16", "SharedJournalI16"
CREDENTIALS = Credentials(MID, KEY, IV)
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
ORDERS = ("PA", "PB")
#: key -> (order, amount): amounts are unique, so an application names its key.
KEYS = {
    "k1": ("PA", 100),
    "k2": ("PA", 200),
    "k3": ("PB", 300),
    "k4": ("PB", 400),
    "k5": ("PA", 500),
}

DO_ACTION_FAULTS = [
    Fault.LOST_REPLY,
    Fault.TIMEOUT_AFTER_APPLY,
    Fault.READ_TIMEOUT_BEFORE_APPLY,
    Fault.SERVER_ERROR_AFTER_APPLY,
    Fault.SERVER_ERROR_BEFORE_APPLY,
    Fault.CONNECTION_RESET,
    Fault.GARBLED_DATA,
    Fault.MISMATCHED_REPLY,
    Fault.TIMEOUT_BEFORE_APPLY,
    Fault.RATE_LIMITED,
    Fault.TRANS_CODE_ERROR,
    Fault.LATE_APPLY,
]
QUERY_FAULTS = [
    Fault.STALE_QUERY,
    Fault.SERVER_ERROR_BEFORE_APPLY,
    Fault.TIMEOUT_BEFORE_APPLY,
    Fault.GARBLED_DATA,
]

fault_specs = st.one_of(
    st.tuples(st.just(Endpoint.DO_ACTION), st.sampled_from(DO_ACTION_FAULTS), st.booleans()),
    st.tuples(st.just(Endpoint.CREDIT_DETAIL), st.sampled_from(QUERY_FAULTS), st.booleans()),
)
calls = st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=4)
clock_moves = st.sampled_from([0, 0, 1, 5, 16, 600])  # minutes; 600 crosses 20:15


def world() -> Emulator:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    for order in ORDERS:
        # Authorized yesterday and settled by yesterday's batch: Closed for 5,000.
        emulator.authorize(MID, order, 5000, at=START - dt.timedelta(days=1))
    return emulator


def arm(emulator: Emulator, faults: list[tuple[Endpoint, Fault, bool]]) -> None:
    for endpoint, fault, after_do_action in faults:
        extra: dict[str, object] = {}
        if fault is Fault.LATE_APPLY:
            extra["land_after"] = dt.timedelta(minutes=3)
        if fault is Fault.TRANS_CODE_ERROR:
            extra["trans_code"] = 128  # not 110/104/115: an unknown outcome
        emulator.faults.inject(
            fault,
            endpoint=endpoint,
            after_do_action=after_do_action and endpoint is Endpoint.CREDIT_DETAIL,
            **extra,
        )


def move_clock(emulator: Emulator, minutes: int) -> None:
    """Advance ECPay's clock; past the fence margin, a replica has caught up (see above)."""
    emulator.advance(dt.timedelta(minutes=minutes))
    if minutes < 5:
        return
    keep = [rule for rule in emulator.faults.pending() if rule.fault is not Fault.STALE_QUERY]
    emulator.faults.clear()
    for rule in keep:
        emulator.faults.inject(
            rule.fault,
            endpoint=rule.endpoint,
            action=rule.action,
            times=emulator.faults.remaining(rule) or 1,
            status_code=rule.status_code if rule.fault.name.startswith("SERVER_ERROR") else None,
            trans_code=rule.trans_code,
            land_after=rule.land_after if rule.fault is Fault.LATE_APPLY else None,
            merchant_trade_no=rule.merchant_trade_no,
            after_do_action=rule.after_do_action,
        )


def after_every_fence(emulator: Emulator, journal: InMemoryJournal) -> dt.datetime:
    """10:00 Taipei the next day, or later if an open attempt's fence (R22) is later then; a
    fence after a batch ends at 20:30, so a minute later is outside R5's window too."""
    day = emulator.now.astimezone(TAIPEI).date() + dt.timedelta(days=1)
    when = dt.datetime.combine(day, dt.time(10, 0), tzinfo=TAIPEI)
    for order in ORDERS:
        for record in journal.for_order(MID, order):
            attempt = record.open_attempt
            if attempt is not None and attempt.resolvable_at is not None:
                when = max(when, attempt.resolvable_at + dt.timedelta(minutes=1))
    return when


def settle_everything(emulator: Emulator, journal: InMemoryJournal) -> None:
    """The shop's after-incident routine: past every fence and batch, reconcile, retry keys."""
    emulator.faults.clear()
    emulator.set_time(after_every_fence(emulator, journal))
    with Client(
        CREDENTIALS,
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,
    ) as client:
        for order in ORDERS:
            assert not client.reconcile(order).locked
        for key, (order, amount) in KEYS.items():
            if journal.get(MID, key) is not None:
                outcome = client.refund(order, amount, idempotency_key=key)
                assert isinstance(outcome, Outcome)


def check_books(emulator: Emulator, journal: InMemoryJournal) -> None:
    applied = collections.Counter(
        (event.merchant_trade_no, event.action, event.amount)
        for event in emulator.applied_do_actions(MID)
    )
    for key, (order, amount) in KEYS.items():
        record = journal.get(MID, key)
        expected = 0 if record is None else 1
        assert applied[(order, Action.REFUND, amount)] == expected, (key, applied)
    done = collections.Counter(
        (record.merchant_trade_no, attempt.action, attempt.amount)
        for order in ORDERS
        for record in journal.for_order(MID, order)
        for attempt in record.attempts
        if attempt.status is AttemptStatus.DONE
    )
    assert done == applied
    for order in ORDERS:
        assert all(r.open_attempt is None for r in journal.for_order(MID, order))
        assert all(r.owner is None for r in journal.for_order(MID, order))  # nobody runs it
    assert len(journal.locks) == 0


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    workers=st.lists(calls, min_size=2, max_size=4),
    faults=st.lists(fault_specs, max_size=4),
    moves=st.lists(clock_moves, min_size=1, max_size=3),
)
def test_threads_sharing_a_journal_apply_each_key_once(
    workers: list[list[str]], faults: list[tuple[Endpoint, Fault, bool]], moves: list[int]
) -> None:
    emulator = world()
    journal = InMemoryJournal()
    arm(emulator, faults)
    errors: list[BaseException] = []

    def work(keys: list[str]) -> None:
        with Client(
            CREDENTIALS,
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
            journal=journal,
        ) as client:
            for key in keys:
                order, amount = KEYS[key]
                try:
                    client.refund(order, amount, idempotency_key=key)
                except EcpayError:
                    pass
                except BaseException as exc:  # anything untyped fails the test
                    errors.append(exc)

    for minutes in moves:
        threads = [threading.Thread(target=work, args=(keys,)) for keys in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        move_clock(emulator, minutes)
    assert errors == []
    settle_everything(emulator, journal)
    check_books(emulator, journal)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    workers=st.lists(calls, min_size=2, max_size=4),
    faults=st.lists(fault_specs, max_size=4),
    moves=st.lists(clock_moves, min_size=1, max_size=3),
)
def test_tasks_sharing_a_journal_apply_each_key_once(
    workers: list[list[str]], faults: list[tuple[Endpoint, Fault, bool]], moves: list[int]
) -> None:
    emulator = world()
    journal = InMemoryJournal()
    arm(emulator, faults)

    async def work(keys: list[str]) -> None:
        async with AsyncClient(
            CREDENTIALS,
            transport=httpx.MockTransport(emulator.async_handler),
            clock=emulator.clock,
            journal=journal,
        ) as client:
            for key in keys:
                order, amount = KEYS[key]
                with contextlib.suppress(EcpayError):
                    await client.refund(order, amount, idempotency_key=key)
                await asyncio.sleep(0)

    async def run() -> None:
        for minutes in moves:
            await asyncio.wait_for(asyncio.gather(*(work(keys) for keys in workers)), 60)
            move_clock(emulator, minutes)

    asyncio.run(run())
    settle_everything(emulator, journal)
    check_books(emulator, journal)
