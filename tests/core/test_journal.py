"""The operation journal and the judgement of unknown outcomes (docs/ecpay-api.md section 9).

The journal is a contract every store keeps (R23): a claim creates a key or says who owns it
(owner, busy, finished, conflict) and writes only when the caller becomes the owner; a save is a
compare-and-set on the record's revision; ``get`` and ``for_order`` read what was written. The
contract tests take ``journal_factory`` and run against every store in :data:`STORES`. The
in-memory store also stays bounded without ever forgetting a record that locks its order or that
someone owns, and every record round-trips through JSON, old ones included. The judgement:
reached -> done, unchanged -> not done, anything else (or anything ambiguous after ECPay's batch)
-> unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AttemptRecord,
    AttemptStatus,
    Claim,
    ClaimStatus,
    EcpayError,
    InMemoryJournal,
    Intent,
    InvalidArgument,
    InvalidArgumentType,
    Journal,
    OperationRecord,
    OperationStatus,
    OrderLocks,
    OrderSnapshot,
    OwnershipLost,
    PaymentKind,
    Plan,
    Reconciliation,
    Resolution,
    RuleViolation,
    State,
    Step,
    Verdict,
    arbitrate,
    plan_abandon,
    plan_capture,
    plan_refund,
)
from ecpay_lifecycle._outcome import judge
from ecpay_lifecycle._postgres import PostgresJournal
from ecpay_lifecycle._postgres_async import AsyncPostgresJournal
from ecpay_lifecycle._sqlite import SQLiteJournal

MID = "3002607"
OTHER_MID = "2000132"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
AUTH = dt.datetime(2026, 8, 1, 9, 30, tzinfo=TAIPEI)
LEASE = dt.timedelta(seconds=30)
REQUEST = "refund amount=300 capture_first=False"
SECOND = dt.timedelta(seconds=1)


# -- the stores ---------------------------------------------------------------------------------

JournalFactory = Callable[[], Journal]


def in_memory(request: pytest.FixtureRequest) -> JournalFactory:
    """Empty in-memory journals; ``request`` is unused (a durable store takes its temporary
    directory or database fixture from it)."""
    del request
    return InMemoryJournal


def sqlite(request: pytest.FixtureRequest) -> JournalFactory:
    """Empty SQLite journals, each a new file in a temporary directory of this module."""
    folder = request.getfixturevalue("tmp_path_factory").mktemp("journals")
    count = itertools.count()
    made: list[SQLiteJournal] = []

    def make() -> SQLiteJournal:
        journal = SQLiteJournal(folder / f"journal-{next(count)}.db")
        made.append(journal)
        return journal

    request.addfinalizer(lambda: [journal.close() for journal in made])
    return make


def postgres(request: pytest.FixtureRequest) -> JournalFactory:
    """Empty PostgreSQL journals on the throwaway server (tests/_pg.py), each in a new schema."""
    dsn = request.getfixturevalue("postgres_dsn")
    count = itertools.count()
    made: list[PostgresJournal] = []
    run = uuid.uuid4().hex[:8]

    def make() -> PostgresJournal:
        # One journal in use at a time (hypothesis takes one per example): close the last one,
        # so the server's connection slots are not used up.
        while made:
            made.pop().close()
        journal = PostgresJournal(dsn, schema=f"contract_{run}_{next(count)}", max_size=2)
        made.append(journal)
        return journal

    request.addfinalizer(lambda: [journal.close() for journal in made])
    return make


_R = TypeVar("_R")


class Awaited:
    """An :class:`AsyncPostgresJournal` behind the sync protocol, for the contract: every call
    is a coroutine run on one event loop in a thread of its own (calls from several test
    threads run concurrently there, as tasks on the async pool)."""

    def __init__(self, journal: AsyncPostgresJournal, loop: asyncio.AbstractEventLoop) -> None:
        self.journal = journal
        self._loop = loop

    def _run(self, call: Coroutine[Any, Any, _R]) -> _R:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=30)

    @property
    def locks(self) -> OrderLocks:
        return self.journal.locks

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        return self._run(self.journal.claim(record, now=now))

    def save(self, record: OperationRecord) -> OperationRecord:
        return self._run(self.journal.save(record))

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        return self._run(self.journal.get(merchant_id, key))

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        return self._run(self.journal.for_order(merchant_id, merchant_trade_no))

    def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> Sequence[OperationRecord]:
        return self._run(self.journal.open_operations(merchant_id, limit=limit))

    def close(self) -> None:
        self._run(self.journal.close())


def postgres_async(request: pytest.FixtureRequest) -> JournalFactory:
    """Empty :class:`AsyncPostgresJournal` s (each in a new schema), awaited on a loop thread."""
    dsn = request.getfixturevalue("postgres_dsn")
    count = itertools.count()
    made: list[Awaited] = []
    run = uuid.uuid4().hex[:8]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="contract-loop", daemon=True)
    thread.start()

    def make() -> Awaited:
        while made:
            made.pop().close()
        journal = AsyncPostgresJournal(dsn, schema=f"acontract_{run}_{next(count)}", max_size=2)
        awaited = Awaited(journal, loop)
        made.append(awaited)
        return awaited

    def finish() -> None:
        for awaited in made:
            awaited.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    request.addfinalizer(finish)
    return make


#: Every store the contract runs against: a function from the fixture request to a factory of
#: empty journals, one line each.
STORES = [
    pytest.param(in_memory, id="memory"),
    pytest.param(sqlite, id="sqlite"),
    pytest.param(postgres, id="postgres"),
    pytest.param(postgres_async, id="postgres-async"),
]


@pytest.fixture(scope="module", params=STORES)
def journal_factory(request: pytest.FixtureRequest) -> JournalFactory:
    """A factory of empty journals of one store. Module-scoped, so that hypothesis tests can
    take a fresh journal per example from it."""
    make: Callable[[pytest.FixtureRequest], JournalFactory] = request.param
    return make(request)


@pytest.fixture
def journal(journal_factory: JournalFactory) -> Journal:
    return journal_factory()


# -- values -------------------------------------------------------------------------------------


def snap(
    state: State,
    closed: int = 0,
    *,
    amount: int = 1000,
    settled: bool | None = None,
    auto_close: bool = True,
    kind: PaymentKind = PaymentKind.ONE_TIME,
) -> OrderSnapshot:
    extra = {} if settled is None else {"capture_settled": settled}
    return OrderSnapshot(
        merchant_trade_no="A1",
        trade_no="2608010930000001",
        amount=amount,
        state=state,
        authorized_at=AUTH,
        closed_amount=closed,
        kind=kind,
        auto_close=auto_close,
        **extra,
    )


def step(action: Action, amount: int, state: State, closed: int) -> Step:
    return Step(
        action=action,
        amount=amount,
        state_after=state,
        closed_amount_after=closed,
        capture_settled_after=False,
        rule="R9",
    )


def record(
    key: str = "k1",
    order: str = "A1",
    *,
    owner: str | None = "w1",
    lease_until: dt.datetime | None = NOW + LEASE,
    attempts: tuple[AttemptRecord, ...] = (),
    status: OperationStatus = OperationStatus.RUNNING,
    request: str = REQUEST,
    merchant_id: str = MID,
    started_at: dt.datetime = NOW,
) -> OperationRecord:
    """A record as a would-be owner hands it to :meth:`Journal.claim` (revision 0)."""
    return OperationRecord(
        merchant_id=merchant_id,
        key=key,
        caller_key=True,
        merchant_trade_no=order,
        request=request,
        intent=Intent.REFUND,
        status=status,
        started_at=started_at,
        updated_at=started_at,
        attempts=attempts,
        owner=owner,
        lease_until=lease_until if owner is not None else None,
    )


def attempt(status: AttemptStatus, *, index: int = 0) -> AttemptRecord:
    before = snap(State.CLOSED, 1000)
    return AttemptRecord(
        index=index,
        attempt=1,
        action=Action.REFUND,
        amount=300,
        trade_no=before.trade_no,
        before=before,
        step=step(Action.REFUND, 300, State.TO_CLOSE, 700),
        status=status,
        at=NOW,
        rtn_code=1 if status is AttemptStatus.DONE else None,
        rtn_msg="Success" if status is AttemptStatus.DONE else "",
        resolvable_at=NOW + dt.timedelta(minutes=15),
    )


def stored(journal: Journal, fresh: OperationRecord, **changes: Any) -> OperationRecord:
    """Claim ``fresh`` and, with ``changes``, save them: the record as the journal holds it."""
    claim = journal.claim(fresh, now=fresh.started_at)
    assert claim.status is ClaimStatus.OWNER
    if not changes:
        return claim.record
    return journal.save(attrs.evolve(claim.record, **changes))


# -- the journal contract (every store) ---------------------------------------------------------


def test_a_store_implements_the_protocol(journal: Journal) -> None:
    assert isinstance(journal, Journal)
    assert isinstance(journal.locks, OrderLocks)
    # One store, one set of locks: every client sharing the journal serialises on them.
    assert journal.locks is journal.locks


def test_claim_of_a_new_key_makes_the_caller_its_owner(journal: Journal) -> None:
    fresh = record()
    claim = journal.claim(fresh, now=NOW)
    assert claim.status is ClaimStatus.OWNER
    assert (claim.created, claim.taken_over) == (True, False)
    assert claim.record == attrs.evolve(fresh, revision=1)
    assert (claim.record.owner, claim.record.lease_until) == ("w1", NOW + LEASE)
    assert journal.get(MID, "k1") == claim.record
    assert journal.for_order(MID, "A1") == [claim.record]


@pytest.mark.parametrize("at", [NOW, NOW + LEASE - dt.timedelta(microseconds=1)])
def test_claim_by_another_owner_while_the_lease_is_live_is_busy(
    journal: Journal, at: dt.datetime
) -> None:
    first = stored(journal, record(owner="w1"))
    claim = journal.claim(record(owner="w2", lease_until=at + LEASE), now=at)
    assert claim.status is ClaimStatus.BUSY
    assert (claim.created, claim.taken_over) == (False, False)
    assert claim.record == first
    # Nothing written: the owner, its lease and the revision are the first caller's.
    assert journal.get(MID, "k1") == first
    assert journal.for_order(MID, "A1") == [first]


def test_claim_after_the_lease_lapsed_takes_the_operation_over(journal: Journal) -> None:
    sending = stored(journal, record(owner="w1"), attempts=(attempt(AttemptStatus.SENDING),))
    assert sending.revision == 2
    # The lease runs up to, not including, its end.
    later = NOW + LEASE
    claim = journal.claim(record(owner="w2", lease_until=later + LEASE), now=later)
    assert claim.status is ClaimStatus.OWNER
    assert (claim.created, claim.taken_over) == (False, True)
    assert (claim.record.owner, claim.record.lease_until) == ("w2", later + LEASE)
    assert (claim.record.revision, claim.record.updated_at) == (3, later)
    # The open attempt stays, for the new owner to resolve first (R22).
    assert claim.record.open_attempt == sending.open_attempt
    assert claim.record == attrs.evolve(
        sending, owner="w2", lease_until=later + LEASE, revision=3, updated_at=later
    )
    assert journal.get(MID, "k1") == claim.record
    # The worker that lost it can no longer write (R23).
    with pytest.raises(OwnershipLost):
        journal.save(attrs.evolve(sending, status=OperationStatus.STOPPED))
    assert journal.get(MID, "k1") == claim.record


def test_claim_by_the_same_owner_renews_without_a_takeover(journal: Journal) -> None:
    first = stored(journal, record(owner="w1"))
    # Live or lapsed, the owner's own lease is renewed.
    for at in (NOW + SECOND, NOW + 2 * LEASE):
        claim = journal.claim(record(owner="w1", lease_until=at + LEASE), now=at)
        assert claim.status is ClaimStatus.OWNER
        assert (claim.created, claim.taken_over) == (False, False)
        assert (claim.record.owner, claim.record.lease_until) == ("w1", at + LEASE)
        assert journal.get(MID, "k1") == claim.record
    assert journal.get(MID, "k1").revision == first.revision + 2  # type: ignore[union-attr]


def test_claim_of_a_released_record_is_not_a_takeover(journal: Journal) -> None:
    released = stored(
        journal,
        record(owner="w1"),
        status=OperationStatus.STOPPED,
        owner=None,
        lease_until=None,
    )
    claim = journal.claim(record(owner="w2", lease_until=NOW + LEASE), now=NOW)
    assert claim.status is ClaimStatus.OWNER
    assert (claim.created, claim.taken_over) == (False, False)
    assert claim.record.status is OperationStatus.STOPPED
    assert (claim.record.owner, claim.record.revision) == ("w2", released.revision + 1)


@pytest.mark.parametrize("owner", [None, "w1"], ids=["released", "still leased"])
def test_claim_of_a_succeeded_record_is_finished(journal: Journal, owner: str | None) -> None:
    done = stored(
        journal,
        record(owner="w1"),
        status=OperationStatus.SUCCEEDED,
        attempts=(attempt(AttemptStatus.DONE),),
        owner=owner,
    )
    for claimant, at in (("w2", NOW), ("w2", NOW + 2 * LEASE), ("w1", NOW)):
        claim = journal.claim(record(owner=claimant, lease_until=at + LEASE), now=at)
        assert claim.status is ClaimStatus.FINISHED
        assert (claim.created, claim.taken_over) == (False, False)
        assert claim.record == done
    assert journal.get(MID, "k1") == done


@pytest.mark.parametrize(
    "other",
    [
        {"request": "refund amount=400 capture_first=False"},
        {"order": "B2"},
        {"order": "B2", "owner": "w1"},
    ],
    ids=["other parameters", "other order", "other order, same owner"],
)
@pytest.mark.parametrize(
    "existing",
    [
        {},
        {"status": OperationStatus.SUCCEEDED, "owner": None},
        {"owner": None, "status": OperationStatus.STOPPED},
    ],
    ids=["running", "succeeded", "released"],
)
def test_claim_of_the_key_for_another_request_conflicts(
    journal: Journal, other: dict[str, str], existing: dict[str, object]
) -> None:
    first = stored(journal, record(owner="w1"), **existing)
    claim = journal.claim(record(**{"owner": "w2", **other}), now=NOW + 2 * LEASE)  # type: ignore[arg-type]
    assert claim.status is ClaimStatus.CONFLICT
    assert (claim.created, claim.taken_over) == (False, False)
    assert claim.record == first
    # Nothing written, not even under the other order.
    assert journal.get(MID, "k1") == first
    assert journal.for_order(MID, "A1") == [first]
    assert journal.for_order(MID, "B2") == []


def test_save_is_a_compare_and_set_on_the_revision(journal: Journal) -> None:
    claimed = stored(journal, record())
    assert claimed.revision == 1
    for revision in (0, 2, 7):
        with pytest.raises(OwnershipLost) as raised:
            journal.save(attrs.evolve(claimed, revision=revision, status=OperationStatus.SUCCEEDED))
        assert raised.value.merchant_trade_no == "A1"
        assert isinstance(raised.value, EcpayError)
        assert journal.get(MID, "k1") == claimed
    sending = attrs.evolve(claimed, attempts=(attempt(AttemptStatus.SENDING),))
    written = journal.save(sending)
    assert written == attrs.evolve(sending, revision=2)
    assert journal.get(MID, "k1") == written
    assert journal.for_order(MID, "A1") == [written]
    # The copy it replaced is stale now: a second save from it changes nothing.
    with pytest.raises(OwnershipLost):
        journal.save(attrs.evolve(claimed, status=OperationStatus.STOPPED))
    assert journal.get(MID, "k1") == written
    assert journal.save(attrs.evolve(written, owner=None, lease_until=None)).revision == 3


@pytest.mark.parametrize("revision", [0, 1])
def test_save_of_a_record_never_claimed_raises(journal: Journal, revision: int) -> None:
    with pytest.raises(OwnershipLost):
        journal.save(attrs.evolve(record(), revision=revision))
    assert journal.get(MID, "k1") is None
    assert journal.for_order(MID, "A1") == []
    # Nor does a claim of the key under another merchant make it exist here.
    stored(journal, record(merchant_id=OTHER_MID))
    with pytest.raises(OwnershipLost):
        journal.save(attrs.evolve(record(), revision=1))
    assert journal.get(MID, "k1") is None


def test_get_reads_one_operation_of_one_merchant(journal: Journal) -> None:
    assert journal.get(MID, "k1") is None
    mine = stored(journal, record("k1", "A1"))
    theirs = stored(journal, record("k1", "A1", merchant_id=OTHER_MID, owner="w9"))
    assert journal.get(MID, "k1") == mine
    assert journal.get(OTHER_MID, "k1") == theirs
    assert mine != theirs
    assert journal.get(MID, "k2") is None


def test_for_order_lists_only_that_order_oldest_first(journal: Journal) -> None:
    first = stored(journal, record("k1", "A1"))
    stored(journal, record("k2", "B2"))
    third = stored(journal, record("k3", "A1", started_at=NOW + SECOND))
    theirs = stored(journal, record("k1", "A1", merchant_id=OTHER_MID))
    # Saving the older record again does not move it behind the newer one.
    first = journal.save(attrs.evolve(first, status=OperationStatus.STOPPED))
    assert journal.for_order(MID, "A1") == [first, third]
    assert [r.key for r in journal.for_order(MID, "B2")] == ["k2"]
    assert journal.for_order(OTHER_MID, "A1") == [theirs]
    assert journal.for_order(MID, "C3") == []
    assert journal.for_order("1111111", "A1") == []


def full_record() -> OperationRecord:
    """A record with every field set to something other than its default."""
    before = snap(State.CLOSED, 1000)
    plan = plan_refund(before, 300, now=NOW)
    return OperationRecord(
        merchant_id=MID,
        key="k1",
        caller_key=True,
        merchant_trade_no="A1",
        request=REQUEST,
        intent=Intent.REFUND,
        status=OperationStatus.SUCCEEDED,
        started_at=NOW,
        updated_at=NOW + SECOND,
        plan=plan,
        before=before,
        attempts=(attempt(AttemptStatus.NOT_DONE), attempt(AttemptStatus.DONE)),
        final=snap(State.TO_CLOSE, 700, settled=True),
        owner="host/4242/0a1b2c3d/7",
        lease_until=NOW + LEASE,
        revision=5,
        notes=("R21: a query showed 1000 closed after an accepted refund of 300", "second"),
    )


def test_a_store_keeps_every_field(journal: Journal) -> None:
    full = full_record()
    running = attrs.evolve(full, status=OperationStatus.RUNNING, revision=0)
    claimed = journal.claim(running, now=NOW)
    assert claimed.record == attrs.evolve(running, revision=1)
    assert journal.get(MID, "k1") == claimed.record
    finished = journal.save(attrs.evolve(claimed.record, status=OperationStatus.SUCCEEDED))
    assert finished == attrs.evolve(full, revision=2)
    assert journal.get(MID, "k1") == finished
    assert journal.for_order(MID, "A1") == [finished]


def test_claim_is_atomic_across_threads(journal: Journal) -> None:
    barrier = threading.Barrier(8, timeout=10)
    claims: list[Claim] = []

    def claim(n: int) -> None:
        barrier.wait()
        claims.append(journal.claim(record(owner=f"w{n}"), now=NOW))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(c.status for c in claims) == [ClaimStatus.BUSY] * 7 + [ClaimStatus.OWNER]
    (won,) = (c for c in claims if c.status is ClaimStatus.OWNER)
    assert won.created
    assert all(c.record == won.record for c in claims)
    assert journal.get(MID, "k1") == won.record


@given(
    attempts=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=8, max_size=8),
)
def test_concurrent_claims_hand_the_key_to_one_owner_at_a_time(
    journal_factory: JournalFactory, attempts: list[tuple[int, int]]
) -> None:
    """Eight threads claim one key at once, each at its own ``now`` with its own lease: the
    owners form one chain (revisions 1, 2, ...), each taking over only a lapsed lease; the rest
    are told who owns it; with no lease lapsing, exactly one is owner."""
    journal = journal_factory()
    nows = [NOW + offset * SECOND for offset, _ in attempts]
    leases = [now + lease * SECOND for now, (_, lease) in zip(nows, attempts, strict=True)]
    barrier = threading.Barrier(len(attempts), timeout=10)
    claims: dict[int, Claim] = {}

    def claim(n: int) -> None:
        barrier.wait()
        fresh = record(owner=f"w{n}", lease_until=leases[n], started_at=nows[n])
        claims[n] = journal.claim(fresh, now=nows[n])

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(attempts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(claims) == len(attempts)

    owners = sorted(
        (c.record.revision, n) for n, c in claims.items() if c.status is ClaimStatus.OWNER
    )
    assert [revision for revision, _ in owners] == list(range(1, len(owners) + 1))
    assert [claims[n].created for _, n in owners] == [True] + [False] * (len(owners) - 1)
    for (_, before), (_, after) in itertools.pairwise(owners):
        # Each later owner took over, and only because its predecessor's lease had lapsed.
        assert claims[after].taken_over
        assert leases[before] <= nows[after]
    for n, c in claims.items():
        assert c.status in (ClaimStatus.OWNER, ClaimStatus.BUSY)
        if c.status is ClaimStatus.BUSY:
            assert c.record.owner != f"w{n}"
            assert c.record.lease_until is not None
            assert c.record.lease_until > nows[n]
            assert c.record in [claims[m].record for _, m in owners]
    last = claims[owners[-1][1]].record
    assert journal.get(MID, "k1") == last
    assert (last.owner, last.revision) == (f"w{owners[-1][1]}", len(owners))
    if min(leases) > max(nows):
        assert len(owners) == 1


moments = st.integers(-60, 60).map(lambda s: NOW + s * SECOND)
owners = st.sampled_from(["w1", "w2", None])


@st.composite
def existing_records(draw: st.DrawFn) -> OperationRecord:
    """A stored record in any position: any owner and lease, status, revision, order and
    request, with or without an open attempt."""
    open_attempt = draw(st.booleans())
    return attrs.evolve(
        record(
            order=draw(st.sampled_from(["A1", "B2"])),
            request=draw(st.sampled_from([REQUEST, "refund amount=400 capture_first=False"])),
            status=draw(st.sampled_from(OperationStatus)),
            attempts=(attempt(AttemptStatus.UNKNOWN if open_attempt else AttemptStatus.DONE),),
        ),
        owner=draw(owners),
        lease_until=draw(st.none() | moments),
        revision=draw(st.integers(1, 9)),
        notes=draw(st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple)),
    )


#: A claim always names its owner (R23); only stored records may have none.
claimants = owners.filter(lambda owner: owner is not None)


def test_a_claim_without_an_owner_or_a_lease_is_refused_and_writes_nothing(
    journal: Journal,
) -> None:
    for fresh in (
        attrs.evolve(record(), owner=None, lease_until=None),
        attrs.evolve(record(), lease_until=None),
    ):
        with pytest.raises(InvalidArgument, match="owner"):
            journal.claim(fresh, now=NOW)
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        journal.claim(record(), now=NOW.replace(tzinfo=None))
    assert journal.get(MID, "k1") is None


@given(
    existing=st.none() | existing_records(),
    owner=claimants,
    lease_until=moments,
    now=moments,
)
def test_arbitrate_never_hands_a_live_lease_to_another_caller(
    existing: OperationRecord | None,
    owner: str | None,
    lease_until: dt.datetime | None,
    now: dt.datetime,
) -> None:
    """R23 as a pure decision: owner only when nobody else's lease is live, a write only for an
    owner (one revision up, the rest of the record kept), and nothing written otherwise."""
    fresh = attrs.evolve(record(), owner=owner, lease_until=lease_until)
    claim, write = arbitrate(existing, fresh, now)
    if existing is None:
        assert claim.status is ClaimStatus.OWNER
        assert (claim.created, claim.taken_over) == (True, False)
        assert write == claim.record == attrs.evolve(fresh, revision=1)
        return
    someone_else_holds_it = (
        existing.owner is not None
        and existing.owner != owner
        and existing.lease_until is not None
        and existing.lease_until > now
    )
    same_request = (existing.merchant_trade_no, existing.request) == (
        fresh.merchant_trade_no,
        fresh.request,
    )
    assert not claim.created
    if claim.status is ClaimStatus.OWNER:
        assert not someone_else_holds_it
        assert same_request
        assert existing.status is not OperationStatus.SUCCEEDED
        assert write is not None
        assert write == claim.record
        assert (write.owner, write.lease_until) == (owner, lease_until)
        assert (write.revision, write.updated_at) == (existing.revision + 1, now)
        assert claim.taken_over == (existing.owner is not None and existing.owner != owner)
        # Only the ownership moved: attempts, status, notes and the rest are kept.
        assert (
            attrs.evolve(
                write,
                owner=existing.owner,
                lease_until=existing.lease_until,
                revision=existing.revision,
                updated_at=existing.updated_at,
            )
            == existing
        )
        return
    assert write is None
    assert claim.record == existing
    assert not claim.taken_over
    if not same_request:
        assert claim.status is ClaimStatus.CONFLICT
    elif existing.status is OperationStatus.SUCCEEDED:
        assert claim.status is ClaimStatus.FINISHED
    else:
        assert claim.status is ClaimStatus.BUSY
        assert someone_else_holds_it


@given(
    existing=existing_records(),
    owner=claimants,
    lease_until=moments,
    now=moments,
)
def test_every_store_decides_as_arbitrate(
    journal_factory: JournalFactory,
    existing: OperationRecord,
    owner: str | None,
    lease_until: dt.datetime | None,
    now: dt.datetime,
) -> None:
    """A store's claim is :func:`arbitrate` applied to what it holds, and writes what it says."""
    journal = journal_factory()
    # Bring the store to ``existing``: claimed as new, then saved as it.
    first = stored(journal, attrs.evolve(existing, owner="w0", lease_until=NOW, revision=0))
    held = journal.save(attrs.evolve(existing, revision=first.revision))
    fresh = attrs.evolve(record(), owner=owner, lease_until=lease_until)
    expected, write = arbitrate(held, fresh, now)
    assert journal.claim(fresh, now=now) == expected
    assert journal.get(MID, "k1") == (held if write is None else write)
    assert journal.for_order(MID, existing.merchant_trade_no) == [journal.get(MID, "k1")]
    if existing.merchant_trade_no != "A1":
        assert journal.for_order(MID, "A1") == []


# -- the in-memory store ------------------------------------------------------------------------


def test_in_memory_journal_counts_and_names_its_records() -> None:
    journal = InMemoryJournal(max_operations=5)
    assert (len(journal), repr(journal)) == (0, "InMemoryJournal(0 operations, max 5)")
    stored(journal, record("k1"))
    stored(journal, record("k2"))
    assert (len(journal), repr(journal)) == (2, "InMemoryJournal(2 operations, max 5)")


def test_the_bound_forgets_the_oldest_finished_but_never_an_open_or_owned_record() -> None:
    journal = InMemoryJournal(max_operations=3)
    locking = stored(
        journal,
        record("open", "A1"),
        attempts=(attempt(AttemptStatus.UNKNOWN),),
        status=OperationStatus.UNKNOWN,
        owner=None,
        lease_until=None,
    )
    # Owned, even with its lease lapsed long ago: the next claim decides, not the bound.
    owned = stored(journal, record("owned", "C3", lease_until=NOW - LEASE))
    for n in range(10):
        stored(
            journal,
            record(f"done{n}", f"B{n}"),
            status=OperationStatus.SUCCEEDED,
            owner=None,
            lease_until=None,
        )
    assert len(journal) == 3
    assert journal.for_order(MID, "A1") == [locking]
    assert journal.get(MID, "owned") == owned
    assert [r.key for r in journal.for_order(MID, "B9")] == ["done9"]
    assert journal.for_order(MID, "B0") == []
    assert journal.get(MID, "done8") is None
    # A replaced record counts once, and the order index follows it.
    done9 = journal.get(MID, "done9")
    assert done9 is not None
    stopped = journal.save(attrs.evolve(done9, status=OperationStatus.STOPPED))
    assert len(journal) == 3
    assert journal.for_order(MID, "B9") == [stopped]


def test_the_bound_gives_way_when_every_record_is_pinned() -> None:
    journal = InMemoryJournal(max_operations=1)
    first = stored(journal, record("k1", "A1"))
    second = stored(journal, record("k2", "B2"))
    # Both owned: forgetting either would let a second worker run it, so the bound gives way.
    assert len(journal) == 2
    assert (journal.get(MID, "k1"), journal.get(MID, "k2")) == (first, second)
    # Released, the first is finished and is what goes.
    journal.save(attrs.evolve(first, status=OperationStatus.STOPPED, owner=None, lease_until=None))
    assert len(journal) == 1
    assert journal.get(MID, "k1") is None
    assert journal.get(MID, "k2") == second


@pytest.mark.parametrize("bad", [0, -1])
def test_journal_bound_must_be_positive(bad: int) -> None:
    with pytest.raises(InvalidArgument):
        InMemoryJournal(max_operations=bad)


@pytest.mark.parametrize("bad", [True, 2.0, "10"])
def test_journal_bound_must_be_an_int(bad: object) -> None:
    with pytest.raises(InvalidArgumentType):
        InMemoryJournal(max_operations=bad)  # type: ignore[arg-type]


# -- records ------------------------------------------------------------------------------------


def test_open_attempt_is_the_last_unresolved_one() -> None:
    assert record().open_attempt is None
    sending = attempt(AttemptStatus.SENDING)
    assert record(attempts=(attempt(AttemptStatus.NOT_DONE), sending)).open_attempt == sending
    assert record(attempts=(attempt(AttemptStatus.DONE),)).open_attempt is None
    assert AttemptStatus.UNKNOWN.open
    assert not AttemptStatus.REFUSED.open


def test_owned_by_other_is_a_live_lease_of_someone_else() -> None:
    held = record(owner="w1", lease_until=NOW + LEASE)
    assert held.owned_by_other("w2", NOW)
    assert held.owned_by_other(None, NOW)
    assert not held.owned_by_other("w1", NOW)
    assert not held.owned_by_other("w2", NOW + LEASE)
    assert not record(owner=None).owned_by_other("w2", NOW)
    assert not attrs.evolve(held, lease_until=None).owned_by_other("w2", NOW)


def test_records_round_trip_through_json() -> None:
    original = full_record()
    text = json.dumps(original.to_dict())
    assert OperationRecord.from_dict(json.loads(text)) == original
    sparse = attrs.evolve(
        record(attempts=(attrs.evolve(attempt(AttemptStatus.SENDING), resolvable_at=None),)),
        owner=None,
        lease_until=None,
    )
    assert OperationRecord.from_dict(json.loads(json.dumps(sparse.to_dict()))) == sparse


def test_records_written_before_ownership_still_read_with_defaults() -> None:
    original = full_record()
    data = json.loads(json.dumps(original.to_dict()))
    for name in ("owner", "lease_until", "revision", "notes"):
        del data[name]
    for written in data["attempts"]:
        del written["resolvable_at"]
    assert OperationRecord.from_dict(data) == attrs.evolve(
        original,
        owner=None,
        lease_until=None,
        revision=0,
        notes=(),
        attempts=tuple(attrs.evolve(a, resolvable_at=None) for a in original.attempts),
    )


@given(
    state=st.sampled_from([State.AUTHORIZED, State.TO_CLOSE, State.CLOSED]),
    amount=st.integers(1, 10**7),
    kind=st.sampled_from([PaymentKind.ONE_TIME, PaymentKind.INSTALLMENT, PaymentKind.BONUS]),
    auto_close=st.booleans(),
    data=st.data(),
)
@settings(max_examples=100)
def test_every_plan_and_snapshot_round_trips(
    state: State, amount: int, kind: PaymentKind, auto_close: bool, data: st.DataObject
) -> None:
    closed = 0 if state is State.AUTHORIZED else data.draw(st.integers(1, amount))
    before = snap(state, closed, amount=amount, kind=kind, auto_close=auto_close)
    plans: list[Plan | None] = [None]
    for make in (
        lambda: plan_refund(before, now=NOW),
        lambda: plan_capture(before, now=NOW),
        lambda: plan_abandon(before, now=NOW),
    ):
        # A refused plan has nothing to round-trip; the others all must.
        with contextlib.suppress(RuleViolation):
            plans.append(make())
    for plan in plans:
        original = OperationRecord(
            merchant_id=MID,
            key="k",
            caller_key=False,
            merchant_trade_no="A1",
            request="x",
            intent=Intent.REFUND,
            status=OperationStatus.RUNNING,
            started_at=NOW,
            updated_at=NOW,
            plan=plan,
            before=before,
        )
        assert OperationRecord.from_dict(json.loads(json.dumps(original.to_dict()))) == original


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("key"),
        lambda d: d.update(status="maybe"),
        lambda d: d.update(started_at="2026-08-01T10:00:00"),
        lambda d: d["attempts"][0].update(amount="300"),
        lambda d: d["attempts"][0].update(action="X"),
        lambda d: d["before"].update(amount=True),
        lambda d: d["before"].update(closed_amount=5000),
        lambda d: d["plan"]["steps"][0].pop("rule"),
        lambda d: d.update(attempts=None),
        lambda d: d.update(lease_until="2026-08-01T10:00:30"),
        lambda d: d.update(lease_until=1786000000),
        lambda d: d.update(revision="5"),
        lambda d: d.update(revision=True),
        lambda d: d.update(notes=None),
        lambda d: d["attempts"][0].update(resolvable_at="2026-08-01T10:15:00"),
    ],
)
def test_a_malformed_record_raises_a_typed_error(damage: object) -> None:
    data = full_record().to_dict()
    damage(data)  # type: ignore[operator]
    with pytest.raises((InvalidArgument, InvalidArgumentType)):
        OperationRecord.from_dict(data)


# -- the judgement (docs/ecpay-api.md section 9) -----------------------------------------------

R300 = (State.TO_CLOSE, 700)


@pytest.mark.parametrize(
    ("before", "observed", "expected", "verdict"),
    [
        # R(300) on a closed order: reached, unchanged, something else.
        (snap(State.CLOSED, 1000), snap(State.TO_CLOSE, 700, settled=True), R300, Verdict.DONE),
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 1000), R300, Verdict.NOT_DONE),
        (snap(State.CLOSED, 1000), snap(State.TO_CLOSE, 400, settled=True), R300, Verdict.UNKNOWN),
        (snap(State.CLOSED, 1000), snap(State.UNSETTLED), R300, Verdict.UNKNOWN),
        # The batch ran between the step and the query: its version of either side counts.
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 700), R300, Verdict.DONE),
        (
            snap(State.TO_CLOSE, 1000, settled=True),
            snap(State.CLOSED, 1000),
            R300,
            Verdict.NOT_DONE,
        ),
        # A pending refund of everything settles as Refunded.
        (
            snap(State.TO_CLOSE, 300, settled=True),
            snap(State.REFUNDED),
            (State.TO_CLOSE, 0),
            Verdict.DONE,
        ),
        # E on a pending capture restores the hold; with auto-close on the batch would close an
        # authorized order for its whole amount, which is what not doing E looks like too.
        (
            snap(State.TO_CLOSE, 1000),
            snap(State.AUTHORIZED),
            (State.AUTHORIZED, 0),
            Verdict.DONE,
        ),
        (
            snap(State.TO_CLOSE, 1000),
            snap(State.CLOSED, 1000),
            (State.AUTHORIZED, 0),
            Verdict.UNKNOWN,
        ),
        (
            snap(State.TO_CLOSE, 1000, auto_close=False),
            snap(State.CLOSED, 1000, auto_close=False),
            (State.AUTHORIZED, 0),
            Verdict.NOT_DONE,
        ),
        # C: with auto-close on, a captured order is what both sides turn into: never guessed.
        (snap(State.AUTHORIZED), snap(State.CLOSED, 1000), (State.TO_CLOSE, 1000), Verdict.UNKNOWN),
        (
            snap(State.AUTHORIZED, auto_close=False),
            snap(State.CLOSED, 1000, auto_close=False),
            (State.TO_CLOSE, 1000),
            Verdict.DONE,
        ),
        # N: abandoned is reached; the batch capturing it instead means N did not happen.
        (snap(State.AUTHORIZED), snap(State.ABANDONED), (State.ABANDONED, 0), Verdict.DONE),
        (snap(State.AUTHORIZED), snap(State.CLOSED, 1000), (State.ABANDONED, 0), Verdict.NOT_DONE),
        # A step that would change nothing cannot be judged.
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 1000), (State.CLOSED, 1000), Verdict.UNKNOWN),
        # A raw DoAction expects only a change: only "nothing changed" is provable.
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 1000), None, Verdict.NOT_DONE),
        (snap(State.CLOSED, 1000), snap(State.TO_CLOSE, 700, settled=True), None, Verdict.UNKNOWN),
        (
            snap(State.TO_CLOSE, 1000, settled=True),
            snap(State.CLOSED, 1000),
            None,
            Verdict.NOT_DONE,
        ),
    ],
)
def test_judge(
    before: OrderSnapshot,
    observed: OrderSnapshot,
    expected: tuple[State, int] | None,
    verdict: Verdict,
) -> None:
    assert judge(before, observed, expected) is verdict


@given(
    before_closed=st.integers(1, 1000),
    refund=st.integers(1, 1000),
    observed_closed=st.integers(0, 1000),
    observed_state=st.sampled_from(list(State)),
)
def test_judge_never_calls_a_step_both_done_and_not_done(
    before_closed: int, refund: int, observed_closed: int, observed_state: State
) -> None:
    """Done only when the order shows the step's amount; not done only when it shows none."""
    if refund > before_closed:
        return
    before = snap(State.CLOSED, before_closed, settled=True)
    expected = (State.TO_CLOSE, before_closed - refund)
    try:
        observed = snap(
            observed_state, observed_closed, settled=observed_state is not State.AUTHORIZED
        )
    except InvalidArgument:
        return
    verdict = judge(before, observed, expected)
    if verdict is Verdict.DONE:
        assert observed.closed_amount == before_closed - refund
    if verdict is Verdict.NOT_DONE:
        assert observed.closed_amount == before_closed


def test_reconciliation_is_locked_while_any_step_is_unknown() -> None:
    def resolution(verdict: Verdict) -> Resolution:
        return Resolution(
            idempotency_key=None,
            key="k1",
            action=Action.REFUND,
            amount=300,
            verdict=verdict,
            declared=False,
            outcome=None,
        )

    base = snap(State.CLOSED, 1000)
    assert not Reconciliation(merchant_trade_no="A1", snapshot=base, resolutions=()).locked
    assert Reconciliation(
        merchant_trade_no="A1",
        snapshot=base,
        resolutions=(resolution(Verdict.DONE), resolution(Verdict.UNKNOWN)),
    ).locked
