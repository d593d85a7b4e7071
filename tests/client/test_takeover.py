"""R23: a worker that dies mid-operation leaves its record owned; after its lease lapses another
worker takes the operation over and resolves the open attempt by R22 before anything else.

A worker "dies" here the way a process does to the journal: from some save on, nothing it
writes arrives (``DyingJournal``). Real processes and ``kill -9`` come with the durable stores
of the next issue; this proves the engine's side of the contract. Counted on ECPay's books.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AttemptStatus,
    Client,
    Credentials,
    InMemoryJournal,
    OperationInProgress,
    OperationRecord,
    OutcomeUnknown,
)
from ecpay_lifecycle._journal import JournalWrapper
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "TakeoverKey01234", "TakeoverIv012345"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)


class Died(BaseException):
    """The process is gone: nothing after this reaches the journal."""


class DyingJournal(JournalWrapper):
    """An ``InMemoryJournal`` whose writer dies once it has written ``saves`` records."""

    def __init__(self, journal: InMemoryJournal, saves: int) -> None:
        super().__init__(journal)
        self._left = saves

    def save(self, record: OperationRecord) -> OperationRecord:
        if self._left <= 0:
            raise Died
        self._left -= 1
        return super().save(record)


def world() -> tuple[Emulator, InMemoryJournal]:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "A1", 1000, at=START - dt.timedelta(days=1))  # Closed, settled
    return emulator, InMemoryJournal()


def client(emulator: Emulator, journal: object) -> Client:
    return Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,  # type: ignore[arg-type]
        lease=dt.timedelta(minutes=2),
    )


def refunds(emulator: Emulator) -> int:
    return sum(1 for e in emulator.applied_do_actions(MID, "A1") if e.action is Action.REFUND)


def test_a_worker_dead_after_sending_is_taken_over_and_its_refund_found_done() -> None:
    emulator, journal = world()
    # One save, the attempt (with its plan) before sending; the reply's save never arrives.
    with client(emulator, DyingJournal(journal, saves=1)) as dying, pytest.raises(Died):
        dying.refund("A1", 300, idempotency_key="k")
    assert refunds(emulator) == 1
    (record,) = journal.for_order(MID, "A1")
    assert record.owner is not None
    assert record.open_attempt is not None
    assert record.open_attempt.status is AttemptStatus.SENDING
    with client(emulator, journal) as other:
        with pytest.raises(OperationInProgress) as busy:
            other.refund("A1", 300, idempotency_key="k")  # the lease is still live
        assert busy.value.retry_at == record.lease_until
        emulator.advance(dt.timedelta(minutes=3))
        outcome = other.refund("A1", 300, idempotency_key="k")  # taken over, resolved first
        assert not outcome.replayed
        assert outcome.steps_done[0].recovered
        assert other.refund("A1", 300, idempotency_key="k").replayed
    assert refunds(emulator) == 1
    (record,) = journal.for_order(MID, "A1")
    assert record.owner is None
    assert record.open_attempt is None


def test_a_worker_dead_before_its_request_left_is_sent_once_after_the_fence() -> None:
    emulator, journal = world()
    emulator.faults.inject(Fault.TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)

    # Died with SENDING recorded and the request never arriving: from the journal's side this is
    # indistinguishable from a request in flight, so only the fence can settle it.
    class Hang(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/Credit/DoAction"):
                raise Died
            return emulator.handler(request)

    with (
        Client(
            Credentials(MID, KEY, IV),
            transport=Hang(),
            clock=emulator.clock,
            journal=DyingJournal(journal, saves=1),
        ) as dying,
        pytest.raises(Died),
    ):
        dying.refund("A1", 300, idempotency_key="k")
    emulator.faults.clear()
    assert refunds(emulator) == 0
    with client(emulator, journal) as other:
        emulator.advance(dt.timedelta(minutes=3))  # the lease lapsed; the fence has not passed
        with pytest.raises(OutcomeUnknown) as caught:
            other.refund("A1", 300, idempotency_key="k")
        assert caught.value.retry_at is not None
        assert refunds(emulator) == 0
        emulator.set_time(caught.value.retry_at + dt.timedelta(seconds=1))
        outcome = other.refund("A1", 300, idempotency_key="k")
        assert outcome.steps_done[0].attempts == 2
    assert refunds(emulator) == 1


def test_a_stale_owner_that_comes_back_sends_nothing_more() -> None:
    emulator, journal = world()
    emulator.authorize(MID, "B2", 1000)  # authorized: capture then refund is C then R
    taken = []

    def intercept(request: httpx.Request) -> httpx.Response:
        response = emulator.handler(request)
        if request.url.path.endswith("/Credit/DoAction") and not taken:
            # While this worker waits for its reply, its lease lapses and another takes over.
            emulator.advance(dt.timedelta(minutes=3))
            record = journal.get(MID, "slow")
            assert record is not None
            claim = journal.claim(
                OperationRecord(
                    merchant_id=MID,
                    key="slow",
                    caller_key=True,
                    merchant_trade_no="B2",
                    request=record.request,
                    intent=record.intent,
                    status=record.status,
                    started_at=record.started_at,
                    updated_at=emulator.now,
                    owner="another-worker",
                    lease_until=emulator.now + dt.timedelta(minutes=2),
                ),
                now=emulator.now,
            )
            taken.append(claim)
        return response

    with (
        Client(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(intercept),
            clock=emulator.clock,
            journal=journal,
            lease=dt.timedelta(minutes=2),
        ) as slow,
        pytest.raises(Exception, match="changed since this worker read it"),
    ):
        slow.refund("B2", 300, idempotency_key="slow", capture_first=True)
    assert taken[0].taken_over
    # C was applied; the stale owner could not record it and did not go on to send R.
    assert [e.action for e in emulator.applied_do_actions(MID, "B2")] == [Action.CLOSE]
