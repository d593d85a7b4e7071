"""Two idempotency keys of one order, the order lock lost: never a refund above the capture.

The finding of model/cross_key_lock_loss.pml, now a model that holds (docs/safety.md): a store
can free an order's lock while its holder still runs (a PostgreSQL session that ended,
``PostgresLeaseLocks``' lease that lapsed while its holder paused), and then two refunds of
different keys could each be planned from the same ClsAmt and both sent. ``Engine._recheck``
closes it: every worker records its attempt and then reads the order's other operations again
before the request leaves, refusing when another operation has an attempt in flight or has
recorded one since the plan.

Here the lock is gone for good: a lock store whose ``hold`` excludes nobody, the extreme of a
lock lost under its holder. Two callers refund one Closed order under two keys, each through
its own ``Client``, and every journal call and every request of either one waits for its turn:
hypothesis draws whose turn it is, when ECPay's clock moves 5 minutes, and which faults ECPay
meets (a lost reply, a request held and applied later, one that never reached it, a query one
write behind after a change). Afterwards the shop waits past every fence and the batch, sweeps,
and asks both keys again.

The emulator's R10 check (a refund above what is left is refused) cannot be switched off, so the
claim is counted on its event log: not one DoAction that ECPay refused was sent (a refund beyond
the capture would be one), the refunds applied never exceed the capture, each key's at most
once, and the journal records done exactly the refunds ECPay applied. The same search with the
recheck taken out finds a run that sends a refund ECPay must refuse: the property has teeth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AttemptStatus,
    Claim,
    Client,
    Credentials,
    EcpayError,
    InMemoryJournal,
    JournalError,
    OperationRecord,
    OrderChanged,
    PaymentKind,
    RuleViolation,
    State,
)
from ecpay_lifecycle._engine import Engine, Flow
from ecpay_lifecycle._journal import JournalWrapper
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "CrossKeyTestK016", "CrossKeyTestI016"
ORDER = "CROSS1"
CAPTURE = 1000
START = dt.datetime(2026, 8, 4, 10, 0, tzinfo=TAIPEI)
TICK = dt.timedelta(minutes=5)
#: How often the clock may move 5 minutes during the race: a query one write behind stays
#: within the fence's margin of its write, as the protocol assumes (docs/safety.md).
TICKS = 2
#: How long, in real seconds, a worker may take to reach its next turn.
WAIT = 10.0
#: What each key refunds: an amount, or None for everything that is left.
AMOUNTS = st.sampled_from([100, 400, 500, 600, 1000, None])
#: ECPay's faults for DoAction, each armed for one request of the order.
FAULTS = {
    "lost reply": (Fault.LOST_REPLY, {}),
    "held, applied later": (Fault.LATE_APPLY, {"land_after": dt.timedelta(minutes=4)}),
    "never reached": (Fault.TIMEOUT_BEFORE_APPLY, {}),
}


class Abandoned(BaseException):
    """The run was given up (hypothesis stopped drawing): the worker stops where it waits."""


class Turns:
    """One worker at a time: each waits at its next journal call or request until the
    scheduler gives it the turn."""

    def __init__(self, workers: int) -> None:
        self.cond = threading.Condition()
        self.workers = workers
        self.waiting: dict[int, str] = {}
        self.finished: set[int] = set()
        self.going: int | None = None
        self.abandoned = False

    def wait(self, worker: int, what: str) -> None:
        with self.cond:
            self.waiting[worker] = what
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.going == worker or self.abandoned, WAIT):
                raise RuntimeError(f"worker {worker} never got its turn for {what}")
            if self.abandoned:
                raise Abandoned
            self.going = None
            del self.waiting[worker]
            self.cond.notify_all()

    def finish(self, worker: int) -> None:
        with self.cond:
            self.finished.add(worker)
            self.cond.notify_all()

    def ready(self) -> list[int]:
        """The workers waiting for a turn, once every worker waits or has finished."""
        with self.cond:
            settled = self.cond.wait_for(
                lambda: (
                    self.going is None and len(self.waiting) + len(self.finished) == self.workers
                ),
                WAIT,
            )
            if not settled:
                raise RuntimeError("a worker neither reached its next turn nor finished")
            return sorted(self.waiting)

    def give(self, worker: int) -> None:
        with self.cond:
            self.going = worker
            self.cond.notify_all()

    def abandon(self) -> None:
        with self.cond:
            self.abandoned = True
            self.cond.notify_all()


class NoLocks:
    """An order lock that excludes nobody: lost the moment it is taken."""

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        yield

    @contextlib.asynccontextmanager
    async def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        yield


class TurnJournal(JournalWrapper):
    """The shared journal, one call at a time in the drawn order, with no order lock."""

    def __init__(self, journal: InMemoryJournal, turns: Turns, worker: int) -> None:
        super().__init__(journal)
        self.turns = turns
        self.worker = worker
        self._locks = NoLocks()

    @property
    def locks(self) -> NoLocks:  # type: ignore[override]
        return self._locks

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        self.turns.wait(self.worker, "claim")
        return super().claim(record, now=now)

    def save(self, record: OperationRecord) -> OperationRecord:
        self.turns.wait(self.worker, "save")
        return super().save(record)

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        self.turns.wait(self.worker, "get")
        return super().get(merchant_id, key)

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        self.turns.wait(self.worker, "for_order")
        return super().for_order(merchant_id, merchant_trade_no)


class TurnTransport(httpx.BaseTransport):
    """The emulator, one request at a time in the drawn order. With ``stale`` non-empty, the
    query after the first DoAction ECPay applies is served from the view before it."""

    def __init__(self, emulator: Emulator, turns: Turns, worker: int, stale: list[bool]) -> None:
        self.emulator = emulator
        self.turns = turns
        self.worker = worker
        self.stale = stale

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.turns.wait(self.worker, request.url.path)
        applied = len(self.emulator.applied_do_actions())
        try:
            return self.emulator.handler(request)
        finally:
            if self.stale and len(self.emulator.applied_do_actions()) > applied:
                self.stale.pop()
                self.emulator.faults.inject(
                    Fault.STALE_QUERY, endpoint=Endpoint.CREDIT_DETAIL, merchant_trade_no=ORDER
                )


@dataclasses.dataclass
class Books:
    """What ECPay's event log and the journal hold at the end."""

    refunds: list[int]
    refused: list[str]
    done: list[int]
    open_attempts: int
    answers: list[str]


def refund_race(
    amounts: tuple[int | None, int | None], faults: set[str], stale: bool, data: Any
) -> Books:
    """Two keys refund one Closed order with no order lock, in the order ``data`` draws;
    ECPay meets ``faults`` and, with ``stale``, answers the query after the first DoAction it
    applies one write behind. Then the shop finishes, and the books are read."""
    emulator = Emulator(now=START - dt.timedelta(days=1))
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, ORDER, CAPTURE)  # closed by last night's batch
    emulator.set_time(START)
    assert emulator.snapshot(MID, ORDER).state is State.CLOSED
    for name in sorted(faults):
        fault, extra = FAULTS[name]
        emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, merchant_trade_no=ORDER, **extra)
    journal = InMemoryJournal()
    answers = race(emulator, journal, amounts, [True] if stale else [], data)
    answers += shop_finishes(emulator, journal, amounts)
    records = journal.for_order(MID, ORDER)
    return Books(
        refunds=[
            event.amount or 0
            for event in emulator.applied_do_actions(MID, ORDER)
            if event.action is Action.REFUND
        ],
        refused=[
            f"{event.action} {event.amount}: {event.refusal}"
            for event in emulator.events
            if event.endpoint is Endpoint.DO_ACTION and event.refusal is not None
        ],
        done=sorted(
            attempt.amount
            for record in records
            for attempt in record.attempts
            if attempt.status is AttemptStatus.DONE
        ),
        open_attempts=sum(record.open_attempt is not None for record in records),
        answers=answers,
    )


def race(
    emulator: Emulator,
    journal: InMemoryJournal,
    amounts: tuple[int | None, int | None],
    stale: list[bool],
    data: Any,
) -> list[str]:
    """Each key's caller in its own thread and ``Client``; one effect at a time, drawn."""
    trade_no = emulator.snapshot(MID, ORDER).trade_no
    turns = Turns(len(amounts))
    answers = ["running"] * len(amounts)

    def call(worker: int) -> None:
        try:
            with Client(
                Credentials(MID, KEY, IV),
                transport=TurnTransport(emulator, turns, worker, stale),
                clock=emulator.clock,
                journal=TurnJournal(journal, turns, worker),
            ) as client:
                outcome = client.refund(
                    ORDER,
                    amounts[worker],
                    idempotency_key=f"key-{worker}",
                    trade_no=trade_no,
                    kind=PaymentKind.ONE_TIME,
                )
                answers[worker] = f"refunded {sum(s.amount for s in outcome.steps_done)}"
        except EcpayError as exc:
            answers[worker] = type(exc).__name__
        except Abandoned:
            answers[worker] = "abandoned"
        finally:
            turns.finish(worker)

    threads = [threading.Thread(target=call, args=(w,), daemon=True) for w in range(2)]
    for thread in threads:
        thread.start()
    ticks = 0
    try:
        while ready := turns.ready():
            choices: list[int | str] = [*ready, *(["tick"] if ticks < TICKS else [])]
            chosen = data.draw(st.sampled_from(choices), label="turn")
            if chosen == "tick":
                ticks += 1
                emulator.advance(TICK)
            else:
                assert isinstance(chosen, int)
                turns.give(chosen)
    finally:
        turns.abandon()  # only workers still waiting see it: the run was given up
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive()
    return answers


def shop_finishes(
    emulator: Emulator, journal: InMemoryJournal, amounts: tuple[int | None, int | None]
) -> list[str]:
    """Past every fence, lease and the batch (a request ECPay held has landed or expired), the
    shop sweeps and asks both keys again; faults the race did not meet are disarmed."""
    emulator.faults.clear()
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=16))
    answers = []
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=JournalWrapper(journal),
    ) as shop:
        shop.sweep()
        for worker, amount in enumerate(amounts):
            try:
                shop.refund(ORDER, amount, idempotency_key=f"key-{worker}")
            except EcpayError as exc:
                answers.append(f"again {worker}: {type(exc).__name__}")
    return answers


RACE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def never_above_the_capture(books: Books) -> None:
    assert books.refused == [], books  # not one DoAction ECPay had to refuse (R10 untested)
    assert sum(books.refunds) <= CAPTURE, books
    assert len(books.refunds) <= 2, books  # each key's refund applied at most once
    assert books.open_attempts == 0, books
    assert books.done == sorted(books.refunds), books  # the journal agrees with ECPay's books


@RACE
@given(
    amounts=st.tuples(AMOUNTS, AMOUNTS),
    faults=st.sets(st.sampled_from(sorted(FAULTS)), max_size=2),
    stale=st.booleans(),
    data=st.data(),
)
def test_two_keys_of_one_order_without_a_lock_never_refund_above_the_capture(
    amounts: tuple[int | None, int | None], faults: set[str], stale: bool, data: Any
) -> None:
    never_above_the_capture(refund_race(amounts, faults, stale, data))


def test_without_the_recheck_the_same_race_sends_a_refund_ecpay_must_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``Engine._recheck`` taken out (the engine before it; model/mutants/no_recheck.pml)
    the same search finds a run that sends a refund beyond what is left, which only ECPay's
    R10 check refuses."""

    def no_recheck(*args: Any) -> Flow[None]:
        return None
        yield  # a flow that yields nothing

    monkeypatch.setattr(Engine, "_recheck", no_recheck)
    found: list[Books] = []

    @RACE
    @given(amounts=st.tuples(AMOUNTS, AMOUNTS), data=st.data())
    def race_without_recheck(amounts: tuple[int | None, int | None], data: Any) -> None:
        books = refund_race(amounts, set(), False, data)
        if books.refused:
            found.append(books)
        never_above_the_capture(books)

    with pytest.raises(AssertionError):
        race_without_recheck()
    assert any("over_captured" in line for books in found for line in books.refused), found


class Hooked(JournalWrapper):
    """No order lock; ``hooks[n]`` runs around the call's n-th read of the order's records:
    before it, or (``after``) once it has been read."""

    def __init__(self, journal: InMemoryJournal, hooks: dict[int, Any], *, after: bool) -> None:
        super().__init__(journal)
        self.hooks = hooks
        self.after = after
        self.reads = 0
        self._locks = NoLocks()

    @property
    def locks(self) -> NoLocks:  # type: ignore[override]
        return self._locks

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        self.reads += 1
        hook = self.hooks.get(self.reads, lambda: None)
        if not self.after:
            hook()
        records = super().for_order(merchant_id, merchant_trade_no)
        if self.after:
            hook()
        return records


def closed_order() -> Emulator:
    emulator = Emulator(now=START - dt.timedelta(days=1))
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, ORDER, CAPTURE)
    emulator.set_time(START)
    return emulator


def client_on(emulator: Emulator, journal: Any) -> Client:
    return Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,
    )


def test_a_refund_another_key_made_since_the_plan_stops_the_send() -> None:
    """The finding's run, by hand. Key "half" reads the order's records; its lock is gone, and
    key "all" refunds everything meanwhile (R(1000), recorded done). "half"'s query is served
    one write behind and still shows ClsAmt 1000, so it plans R(500) and records it; the
    recheck sees "all"'s refund recorded since the baseline, records R(500) not done and sends
    nothing. Asked again, "half" is told nothing is left (R10, by the planner)."""
    emulator = closed_order()
    journal = InMemoryJournal()

    def other_key() -> None:
        with client_on(emulator, JournalWrapper(journal)) as other:
            other.refund(ORDER, None, idempotency_key="all")
        emulator.faults.inject(
            Fault.STALE_QUERY, endpoint=Endpoint.CREDIT_DETAIL, merchant_trade_no=ORDER
        )

    with client_on(emulator, Hooked(journal, {1: other_key}, after=True)) as client:
        with pytest.raises(OrderChanged, match="recorded a step since this plan was made"):
            client.refund(ORDER, 500, idempotency_key="half")
        (record,) = [r for r in journal.for_order(MID, ORDER) if r.key == "half"]
        assert [(a.amount, a.status) for a in record.attempts] == [(500, AttemptStatus.NOT_DONE)]
        assert "not sent" in record.attempts[0].note
        assert record.owner is None
        with pytest.raises(RuleViolation):
            client.refund(ORDER, 500, idempotency_key="half")
    sent = [e for e in emulator.events if e.endpoint is Endpoint.DO_ACTION]
    assert [(e.amount, e.applied, e.refusal) for e in sent] == [(CAPTURE, True, None)]


def test_a_recheck_that_cannot_read_the_journal_sends_nothing() -> None:
    """The recheck's read fails: the attempt is recorded not done (it never left) and the
    journal's error is raised."""
    emulator = closed_order()
    journal = InMemoryJournal()

    def fail() -> None:
        raise JournalError("the journal's database dropped the connection")

    with (
        client_on(emulator, Hooked(journal, {2: fail}, after=False)) as client,
        pytest.raises(JournalError, match="dropped the connection"),
    ):
        client.refund(ORDER, 300, idempotency_key="k")
    (record,) = journal.for_order(MID, ORDER)
    assert [(a.amount, a.status) for a in record.attempts] == [(300, AttemptStatus.NOT_DONE)]
    assert record.open_attempt is None
    assert emulator.applied_do_actions() == ()
    assert not [e for e in emulator.events if e.endpoint is Endpoint.DO_ACTION]
