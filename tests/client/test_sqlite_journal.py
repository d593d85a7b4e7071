"""The SQLite journal and its file locks (R23, order serialisation, habit 15).

Ownership and order serialisation are docs/ecpay-api.md section 9.

The journal contract runs against ``InMemoryJournal`` and ``SQLiteJournal`` alike (the
``journal`` fixture), then what only a durable store can show: records outlive the object and
the process, the file is in WAL mode with ``synchronous=FULL``, no transaction outlives a call,
real OS processes race for one key and one order lock, a process killed with SIGKILL frees its
lock, two clients on one file replay a key without sending, a bad file or a full disk is a typed
``JournalError`` with nothing written, and random claims and saves give the same answers and the
same stored records as the in-memory reference. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import os
import pathlib
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import attrs
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    AttemptRecord,
    AttemptStatus,
    Claim,
    ClaimStatus,
    Client,
    Credentials,
    InMemoryJournal,
    Intent,
    InvalidArgument,
    InvalidArgumentType,
    Journal,
    JournalError,
    OperationRecord,
    OperationStatus,
    OrderLocks,
    OrderSnapshot,
    OutcomeUnknown,
    OwnershipLost,
    PaymentKind,
    State,
    Step,
    plan_refund,
)
from ecpay_lifecycle._sqlite import SCHEMA_VERSION, FileOrderLocks, SQLiteJournal
from ecpay_lifecycle.emulator import Emulator

MID = "3002607"
KEY, IV = "SQLiteJournalK16", "SQLiteJournalI16"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
AUTH = dt.datetime(2026, 8, 1, 9, 30, tzinfo=TAIPEI)
LEASE = dt.timedelta(minutes=2)
WORKER = pathlib.Path(__file__).parents[1] / "_sqlite_worker.py"
#: How long any one wait may take before the test fails rather than hangs.
PATIENCE = 30.0


# -- values -------------------------------------------------------------------------------------


def snap(state: State = State.CLOSED, closed: int = 1000) -> OrderSnapshot:
    return OrderSnapshot(
        merchant_trade_no="A1",
        trade_no="2608010930000001",
        amount=1000,
        state=state,
        authorized_at=AUTH,
        closed_amount=closed,
        kind=PaymentKind.ONE_TIME,
        auto_close=True,
    )


def attempt(status: AttemptStatus) -> AttemptRecord:
    before = snap()
    return AttemptRecord(
        index=0,
        attempt=1,
        action=Action.REFUND,
        amount=300,
        trade_no=before.trade_no,
        before=before,
        step=Step(
            action=Action.REFUND,
            amount=300,
            state_after=State.TO_CLOSE,
            closed_amount_after=700,
            capture_settled_after=False,
            rule="R9",
        ),
        status=status,
        at=NOW,
        rtn_code=1 if status is AttemptStatus.DONE else None,
        resolvable_at=NOW + dt.timedelta(minutes=15),
    )


def fresh(
    key: str = "k1",
    order: str = "A1",
    *,
    owner: str = "w1",
    now: dt.datetime = NOW,
    request: str = "refund amount=300 capture_first=False",
    merchant_id: str = MID,
) -> OperationRecord:
    """What the engine hands to ``claim``: a would-be record naming its owner and lease."""
    return OperationRecord(
        merchant_id=merchant_id,
        key=key,
        caller_key=True,
        merchant_trade_no=order,
        request=request,
        intent=Intent.REFUND,
        status=OperationStatus.RUNNING,
        started_at=now,
        updated_at=now,
        owner=owner,
        lease_until=now + LEASE,
    )


def unowned(journal: Journal, key: str, order: str = "A1", **changes: object) -> OperationRecord:
    """Claim ``key`` and save it released (no owner), with ``changes``: as a finished worker
    leaves it."""
    record = journal.claim(fresh(key, order), now=NOW).record
    return journal.save(attrs.evolve(record, owner=None, lease_until=None, **changes))


# -- the contract, for every store --------------------------------------------------------------

Factory = Callable[..., Journal]


@pytest.fixture(params=["memory", "sqlite"])
def journal_factory(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Factory]:
    """Builds journals of one kind; ``max_operations`` is the only option the contract uses."""
    made: list[SQLiteJournal] = []

    def make(**options: int) -> Journal:
        if request.param == "memory":
            return InMemoryJournal(**options)
        journal = SQLiteJournal(tmp_path / f"journal{len(made)}.db", **options)
        made.append(journal)
        return journal

    yield make
    for journal in made:
        journal.close()


@pytest.fixture
def journal(journal_factory: Factory) -> Journal:
    return journal_factory()


def test_the_store_implements_the_protocol(journal: Journal) -> None:
    assert isinstance(journal, Journal)
    assert isinstance(journal.locks, OrderLocks)
    assert journal.locks is journal.locks


def test_a_new_key_is_owned_at_revision_1(journal: Journal) -> None:
    claim = journal.claim(fresh(), now=NOW)
    assert (claim.status, claim.created, claim.taken_over) == (ClaimStatus.OWNER, True, False)
    assert claim.record == attrs.evolve(fresh(), revision=1)
    assert journal.get(MID, "k1") == claim.record
    assert journal.get(MID, "other") is None
    assert journal.get("other", "k1") is None


def test_a_live_lease_makes_others_busy_and_writes_nothing(journal: Journal) -> None:
    first = journal.claim(fresh(owner="w1"), now=NOW).record
    later = NOW + LEASE - dt.timedelta(seconds=1)
    busy = journal.claim(fresh(owner="w2", now=later), now=later)
    assert (busy.status, busy.record) == (ClaimStatus.BUSY, first)
    assert journal.get(MID, "k1") == first


def test_the_owner_renews_and_a_lapsed_lease_is_taken_over(journal: Journal) -> None:
    journal.claim(fresh(owner="w1"), now=NOW)
    again = NOW + dt.timedelta(seconds=30)
    renewed = journal.claim(fresh(owner="w1", now=again), now=again)
    assert (renewed.status, renewed.taken_over, renewed.record.revision) == (
        ClaimStatus.OWNER,
        False,
        2,
    )
    assert renewed.record.lease_until == again + LEASE
    lapsed = again + LEASE
    taken = journal.claim(fresh(owner="w2", now=lapsed), now=lapsed)
    assert (taken.status, taken.taken_over, taken.created) == (ClaimStatus.OWNER, True, False)
    assert (taken.record.owner, taken.record.revision, taken.record.updated_at) == ("w2", 3, lapsed)
    assert taken.record.started_at == NOW  # the operation is the same; only its owner changed
    assert journal.get(MID, "k1") == taken.record


def test_a_released_operation_is_owned_without_takeover(journal: Journal) -> None:
    record = journal.claim(fresh(owner="w1"), now=NOW).record
    journal.save(attrs.evolve(record, owner=None, lease_until=None, status=OperationStatus.STOPPED))
    claim = journal.claim(fresh(owner="w2"), now=NOW)
    assert (claim.status, claim.taken_over, claim.record.owner) == (ClaimStatus.OWNER, False, "w2")
    assert claim.record.status is OperationStatus.STOPPED


def test_a_success_replays_and_another_request_conflicts(journal: Journal) -> None:
    record = journal.claim(fresh(), now=NOW).record
    done = journal.save(
        attrs.evolve(record, status=OperationStatus.SUCCEEDED, owner=None, lease_until=None)
    )
    finished = journal.claim(fresh(owner="w2"), now=NOW)
    assert (finished.status, finished.record) == (ClaimStatus.FINISHED, done)
    for other in (fresh(order="B2"), fresh(request="refund amount=all capture_first=False")):
        conflict = journal.claim(other, now=NOW)
        assert (conflict.status, conflict.record) == (ClaimStatus.CONFLICT, done)
    assert journal.get(MID, "k1") == done


def test_save_is_a_compare_and_set_on_the_revision(journal: Journal) -> None:
    record = journal.claim(fresh(), now=NOW).record
    saved = journal.save(attrs.evolve(record, attempts=(attempt(AttemptStatus.SENDING),)))
    assert saved.revision == record.revision + 1
    assert journal.get(MID, "k1") == saved
    with pytest.raises(OwnershipLost, match="revision 1, now 2") as lost:
        journal.save(attrs.evolve(record, status=OperationStatus.STOPPED))  # stale
    assert lost.value.merchant_trade_no == "A1"
    assert journal.get(MID, "k1") == saved
    with pytest.raises(OwnershipLost):
        journal.save(fresh("never-claimed"))
    assert journal.get(MID, "never-claimed") is None


def test_for_order_lists_one_order_oldest_first(journal: Journal) -> None:
    for key, order in (("k1", "A1"), ("k2", "B2"), ("k3", "A1")):
        journal.claim(fresh(key, order), now=NOW)
    journal.claim(fresh("k9", "A1", merchant_id="other"), now=NOW)
    first = journal.get(MID, "k1")
    assert first is not None
    journal.save(attrs.evolve(first, status=OperationStatus.STOPPED))  # a save keeps its place
    assert [r.key for r in journal.for_order(MID, "A1")] == ["k1", "k3"]
    assert [r.key for r in journal.for_order(MID, "B2")] == ["k2"]
    assert journal.for_order(MID, "C3") == []
    assert [r.key for r in journal.for_order("other", "A1")] == ["k9"]
    assert journal.for_order(MID, "A1")[0] == journal.get(MID, "k1")


def test_a_save_never_changes_what_an_operation_is(journal: Journal) -> None:
    record = journal.claim(fresh(), now=NOW).record
    for changed in (
        attrs.evolve(record, merchant_trade_no="B2"),
        attrs.evolve(record, request="refund amount=all capture_first=False"),
        attrs.evolve(record, merchant_trade_no="B2", revision=7),  # identity is checked first
    ):
        with pytest.raises(InvalidArgument, match="never changes what an operation is"):
            journal.save(changed)
    assert journal.get(MID, "k1") == record
    assert journal.for_order(MID, "B2") == []


def test_a_claim_must_name_its_owner_and_an_aware_now(journal: Journal) -> None:
    for claim, error in [
        (lambda: journal.claim(attrs.evolve(fresh(), owner=None), now=NOW), InvalidArgument),
        (lambda: journal.claim(attrs.evolve(fresh(), lease_until=None), now=NOW), InvalidArgument),
        (lambda: journal.claim(fresh(), now=NOW.replace(tzinfo=None)), InvalidArgument),
        (lambda: journal.claim(fresh(), now="now"), InvalidArgumentType),  # type: ignore[arg-type]
    ]:
        with pytest.raises(error):
            claim()
    assert journal.get(MID, "k1") is None


def test_every_field_round_trips_through_the_store(journal: Journal) -> None:
    before = snap()
    record = journal.claim(fresh(), now=NOW).record
    full = attrs.evolve(
        record,
        plan=plan_refund(before, 300, now=NOW),
        before=before,
        attempts=(attempt(AttemptStatus.NOT_DONE), attempt(AttemptStatus.DONE)),
        final=snap(State.TO_CLOSE, 700),
        status=OperationStatus.SUCCEEDED,
        notes=("a query disagreed (R21)", "中文 note"),
    )
    saved = journal.save(full)
    assert saved == attrs.evolve(full, revision=full.revision + 1)
    assert journal.get(MID, "k1") == saved
    assert journal.for_order(MID, "A1") == [saved]


def test_the_bound_forgets_the_oldest_finished_never_an_open_or_owned_one(
    journal_factory: Factory,
) -> None:
    journal = journal_factory(max_operations=3)
    locking = unowned(journal, "open", attempts=(attempt(AttemptStatus.UNKNOWN),))
    owned = journal.claim(fresh("owned", "A1"), now=NOW).record
    for n in range(6):
        unowned(journal, f"done{n}", f"B{n}", status=OperationStatus.SUCCEEDED)
    assert len(journal) == 3  # type: ignore[arg-type]
    assert journal.get(MID, "open") == locking
    assert journal.get(MID, "owned") == owned
    assert journal.get(MID, "done5") is not None
    assert journal.get(MID, "done4") is None
    assert journal.for_order(MID, "B0") == []
    # An owner going away makes a record forgettable; the next write applies the bound.
    journal.save(attrs.evolve(owned, owner=None, lease_until=None))
    assert len(journal) == 3  # type: ignore[arg-type]
    unowned(journal, "new", "C1")
    assert journal.get(MID, "done5") is None
    assert [r.key for r in journal.for_order(MID, "A1")] == ["open", "owned"]


def test_claims_are_atomic_across_threads(journal: Journal) -> None:
    start = threading.Barrier(8, timeout=PATIENCE)
    answers: list[ClaimStatus] = []

    def claim(n: int) -> None:
        start.wait()
        answers.append(journal.claim(fresh(owner=f"w{n}"), now=NOW).status)

    threads = [threading.Thread(target=claim, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert sorted(answers) == [ClaimStatus.BUSY] * 7 + [ClaimStatus.OWNER]
    record = journal.get(MID, "k1")
    assert record is not None
    assert record.revision == 1


# -- durability and the file ---------------------------------------------------------------------


class Watched(SQLiteJournal):
    """Keeps the connections it was given, to read the settings the journal applied."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.seen: list[sqlite3.Connection] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def on_connect(self, connection: sqlite3.Connection) -> None:
        self.seen.append(connection)


def test_a_saved_record_outlives_the_journal_object(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path)
    record = journal.claim(fresh(), now=NOW).record
    saved = journal.save(attrs.evolve(record, attempts=(attempt(AttemptStatus.SENDING),)))
    del journal
    gc.collect()
    again = SQLiteJournal(str(path))
    assert again.get(MID, "k1") == saved
    assert again.for_order(MID, "A1") == [saved]
    again.close()


def test_the_file_is_in_wal_mode_with_synchronous_full(tmp_path: pathlib.Path) -> None:
    journal = Watched(tmp_path / "ecpay.db", busy_timeout=2.5)
    journal.claim(fresh(), now=NOW)
    (connection,) = journal.seen
    assert connection.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    assert connection.execute("PRAGMA synchronous").fetchall() == [(2,)]  # FULL
    assert connection.execute("PRAGMA busy_timeout").fetchall() == [(2500,)]
    assert connection.execute("PRAGMA user_version").fetchall() == [(SCHEMA_VERSION,)]
    assert not connection.in_transaction
    journal.close()
    assert repr(journal) == (
        f"Watched({str(tmp_path / 'ecpay.db')!r}, busy_timeout=2.5, max_operations=None)"
    )


def test_each_thread_has_its_own_connection_and_close_closes_only_its_own(
    tmp_path: pathlib.Path,
) -> None:
    journal = Watched(tmp_path / "ecpay.db")
    journal.claim(fresh(), now=NOW)
    thread = threading.Thread(target=lambda: journal.get(MID, "k1"), daemon=True)
    thread.start()
    thread.join(PATIENCE)
    assert len({id(c) for c in journal.seen}) == 2
    journal.close()
    journal.close()  # twice is fine
    assert journal.get(MID, "k1") is not None  # reopened
    assert len(journal.seen) == 3
    with journal:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        journal.seen[-1].execute("SELECT 1")


def test_no_transaction_or_read_snapshot_outlives_a_call(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)

    def idle() -> None:
        other.execute("BEGIN IMMEDIATE")  # nobody holds the write lock ...
        other.execute("ROLLBACK")
        # ... and no reader pins the WAL: a checkpoint can copy all of it and truncate it.
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall() == [(0, 0, 0)]

    record = journal.claim(fresh(), now=NOW).record
    idle()
    journal.save(record)
    idle()
    with pytest.raises(OwnershipLost):
        journal.save(record)
    idle()
    journal.get(MID, "k1")
    journal.for_order(MID, "A1")
    journal.open_operations()
    idle()
    other.close()
    journal.close()


def test_open_operations_lists_open_or_owned_least_recently_saved_first(
    tmp_path: pathlib.Path,
) -> None:
    journal = SQLiteJournal(tmp_path / "ecpay.db")
    owned = journal.claim(fresh("owned"), now=NOW).record
    unknown = unowned(journal, "unknown", attempts=(attempt(AttemptStatus.UNKNOWN),))
    unowned(journal, "done", status=OperationStatus.SUCCEEDED)
    journal.claim(fresh("elsewhere", merchant_id="other"), now=NOW)
    assert [r.key for r in journal.open_operations()] == ["owned", "unknown", "elsewhere"]
    assert [r.key for r in journal.open_operations(MID)] == ["owned", "unknown"]
    assert [r.key for r in journal.open_operations(MID, limit=1)] == ["owned"]
    owned = journal.save(owned)  # saved again: now the most recent
    assert journal.open_operations(MID) == [unknown, owned]
    journal.save(attrs.evolve(owned, owner=None, lease_until=None))
    assert journal.open_operations(MID) == [unknown]
    assert journal.open_operations("nobody") == []
    journal.close()


def test_the_sweeper_and_order_queries_read_their_indexes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    SQLiteJournal(path).close()
    connection = sqlite3.connect(path)

    def plan(sql: str, *parameters: object) -> str:
        rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", parameters).fetchall()
        return " | ".join(row[3] for row in rows)

    active = "SELECT key, record FROM operations WHERE (open = 1 OR owner IS NOT NULL)"
    assert "USING INDEX operations_active" in plan(
        f"{active} AND merchant_id = ? ORDER BY saved_seq LIMIT ?", MID, 5
    )
    assert "USING INDEX operations_active" in plan(f"{active} ORDER BY saved_seq LIMIT ?", 5)
    by_order = plan(
        "SELECT key, record FROM operations WHERE merchant_id = ? AND merchant_trade_no = ? "
        "ORDER BY rowid",
        MID,
        "A1",
    )
    assert "USING INDEX operations_by_order" in by_order
    assert "TEMP B-TREE" not in by_order  # the index ends in the rowid: no sort
    connection.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_opens_its_own_connection_and_lock_file(tmp_path: pathlib.Path) -> None:
    journal = SQLiteJournal(tmp_path / "ecpay.db")
    journal.claim(fresh("parent"), now=NOW)  # the parent's connection exists before the fork
    with journal.locks.hold(MID, "A1"):
        pass  # and so does its lock file descriptor
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            claim = journal.claim(fresh("child"), now=NOW)
            with journal.locks.hold(MID, "A1"):
                code = 0 if claim.status is ClaimStatus.OWNER else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], PATIENCE)
        assert ready, "the child never answered"
        assert os.read(read, 1) == b"\x00"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    # The parent's connection and locks still work after the child came and went.
    assert journal.claim(fresh("parent2"), now=NOW).status is ClaimStatus.OWNER
    assert [r.key for r in journal.for_order(MID, "A1")] == ["parent", "child", "parent2"]
    with journal.locks.hold(MID, "A1"):
        pass
    journal.close()


# -- real processes ------------------------------------------------------------------------------


class Worker:
    """``tests/_sqlite_worker.py`` in its own OS process; every read of it is bounded."""

    def __init__(self, *args: object) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )

    def line(self, timeout: float = PATIENCE) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        assert ready, f"worker {self.process.args[2:]} said nothing within {timeout} s"
        return stdout.readline().decode().strip()

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(PATIENCE)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: object) -> Worker:
        worker = Worker(*args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.end()


def test_eight_processes_claiming_one_key_at_once_make_one_owner(
    tmp_path: pathlib.Path, workers: Callable[..., Worker]
) -> None:
    path = tmp_path / "ecpay.db"  # created by whichever worker opens it first
    racers = [workers("claim", path, "k1", f"w{n}") for n in range(8)]
    assert [w.line() for w in racers] == ["ready"] * 8
    for worker in racers:
        worker.go()
    answers = sorted(w.line() for w in racers)
    assert answers == ["busy"] * 7 + ["owner"]
    record = SQLiteJournal(path).get(MID, "k1")
    assert record is not None
    assert record.revision == 1


def test_eight_processes_creating_one_journal_at_once_all_open_it(
    tmp_path: pathlib.Path, workers: Callable[..., Worker]
) -> None:
    path = tmp_path / "ecpay.db"
    openers = [workers("open", path) for _ in range(8)]
    assert [w.line() for w in openers] == ["ready"] * 8
    for worker in openers:
        worker.go()
    assert [w.line() for w in openers] == ["opened"] * 8
    assert len(SQLiteJournal(path)) == 0


def test_the_file_lock_excludes_processes(
    tmp_path: pathlib.Path, workers: Callable[..., Worker]
) -> None:
    path = tmp_path / "ecpay.db"
    SQLiteJournal(path).close()
    counter = tmp_path / "counter"
    counter.write_text("0")
    counting = [workers("count", path, counter, 50) for _ in range(4)]
    assert [w.line() for w in counting] == ["ready"] * 4
    for worker in counting:
        worker.go()
    assert [w.line() for w in counting] == ["done"] * 4
    assert counter.read_text() == "200"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_lock_holder_killed_with_sigkill_frees_the_lock(
    tmp_path: pathlib.Path, workers: Callable[..., Worker]
) -> None:
    path = tmp_path / "ecpay.db"
    SQLiteJournal(path).close()
    holder = workers("hold", path, "A1")
    assert holder.line() == "held"
    assert workers("probe", path, "A1").line() == "held"
    locks = FileOrderLocks(f"{path}.locks")

    async def acquire() -> float:
        async with asyncio.timeout(1.0), locks.ahold(MID, "A1"):
            return time.monotonic()

    async def main() -> float:
        waiter = asyncio.ensure_future(acquire())
        await asyncio.sleep(0.05)  # the waiter is polling the byte the holder has
        assert not waiter.done()
        os.kill(holder.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        return await waiter - killed

    assert asyncio.run(main()) < 1.0
    assert holder.process.wait(PATIENCE) == -signal.SIGKILL


def test_locks_on_one_file_share_one_descriptor_in_a_process(
    tmp_path: pathlib.Path, workers: Callable[..., Worker]
) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it: another
    journal object on the same file that goes away must not free a lock this one holds; and the
    threads of two journal objects on one file exclude each other."""
    path = tmp_path / "ecpay.db"
    first = SQLiteJournal(path)
    second = SQLiteJournal(str(path))
    third = SQLiteJournal(tmp_path / "." / "ecpay.db")
    assert first.locks is not second.locks
    entered = threading.Event()

    def other() -> None:
        with third.locks.hold(MID, "A1"):
            entered.set()

    thread = threading.Thread(target=other, daemon=True)
    with first.locks.hold(MID, "A1"):
        with second.locks.hold(MID, "B2"):
            pass
        del second
        gc.collect()  # the second object and its use of the file are gone
        assert workers("probe", path, "A1").line() == "held"
        thread.start()
        assert not entered.wait(0.1)  # the third object's thread waits for the first's lock
    thread.join(PATIENCE)
    assert entered.is_set()
    assert workers("probe", path, "A1").line() == "free"
    first.close()
    third.close()


def test_threads_and_tasks_of_one_process_exclude_each_other(tmp_path: pathlib.Path) -> None:
    locks = FileOrderLocks(tmp_path / "ecpay.db.locks")
    inside: list[int] = []
    most = 0
    count = 0

    def enter() -> int:
        nonlocal most
        inside.append(1)
        most = max(most, len(inside))
        return count

    def leave(seen: int) -> None:
        nonlocal count
        count = seen + 1
        inside.pop()

    def thread_worker() -> None:
        for _ in range(20):
            with locks.hold(MID, "A1"):
                seen = enter()
                time.sleep(0)
                leave(seen)

    async def task_worker() -> None:
        for _ in range(20):
            async with locks.ahold(MID, "A1"):
                seen = enter()
                await asyncio.sleep(0)
                leave(seen)

    async def tasks() -> None:
        await asyncio.wait_for(asyncio.gather(*(task_worker() for _ in range(3))), PATIENCE)

    threads = [threading.Thread(target=thread_worker, daemon=True) for _ in range(3)]
    threads.append(threading.Thread(target=lambda: asyncio.run(tasks()), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert not any(thread.is_alive() for thread in threads)
    assert (most, count) == (1, 120)


def test_a_cancelled_waiter_holds_nothing_and_other_orders_do_not_wait(
    tmp_path: pathlib.Path,
) -> None:
    locks = FileOrderLocks(str(tmp_path / "ecpay.db.locks"))
    assert repr(locks) == f"FileOrderLocks({locks.path!r})"

    async def main() -> None:
        async with locks.ahold(MID, "A1"):
            waiter = asyncio.ensure_future(locks.ahold(MID, "A1").__aenter__())
            await asyncio.sleep(0.02)
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            async with asyncio.timeout(1.0), locks.ahold(MID, "B2"):
                pass
        async with asyncio.timeout(1.0), locks.ahold(MID, "A1"):
            pass

    asyncio.run(main())
    with locks.hold(MID, "A1"):
        pass


# -- end to end with the client -----------------------------------------------------------------


def emulator_with_order() -> Emulator:
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "A1", 10_000, at=NOW - dt.timedelta(days=1))  # Closed, settled
    return emulator


def refunds(emulator: Emulator) -> int:
    return sum(1 for e in emulator.applied_do_actions(MID, "A1") if e.action is Action.REFUND)


def test_a_second_client_on_the_same_file_replays_without_sending(tmp_path: pathlib.Path) -> None:
    emulator = emulator_with_order()
    path = tmp_path / "ecpay.db"
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    probes = 0

    def handler(request: httpx.Request) -> httpx.Response:
        # Under the order lock, in the middle of the operation: no transaction is open.
        nonlocal probes
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        probes += 1
        return emulator.handler(request)

    with Client(
        Credentials(MID, KEY, IV),
        journal=SQLiteJournal(path),
        transport=httpx.MockTransport(handler),
        clock=emulator.clock,
    ) as client:
        outcome = client.refund("A1", 300, idempotency_key="r1")
    assert not outcome.replayed
    assert (refunds(emulator), probes >= 2) == (1, True)
    with Client(
        Credentials(MID, KEY, IV),
        journal=SQLiteJournal(path),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    ) as again:
        replay = again.refund("A1", 300, idempotency_key="r1")
    assert replay.replayed
    assert refunds(emulator) == 1
    (record,) = SQLiteJournal(path).for_order(MID, "A1")
    assert (record.status, record.owner, record.open_attempt) == (
        OperationStatus.SUCCEEDED,
        None,
        None,
    )
    other.close()


def test_the_async_client_runs_on_the_file_locks(tmp_path: pathlib.Path) -> None:
    emulator = emulator_with_order()
    journal = SQLiteJournal(tmp_path / "ecpay.db")

    async def main() -> None:
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            journal=journal,
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
        ) as client:
            await asyncio.wait_for(
                asyncio.gather(
                    client.refund("A1", 100, idempotency_key="a"),
                    client.refund("A1", 200, idempotency_key="b"),
                ),
                PATIENCE,
            )

    asyncio.run(main())
    assert refunds(emulator) == 2
    assert all(r.status is OperationStatus.SUCCEEDED for r in journal.for_order(MID, "A1"))


class Capped(SQLiteJournal):
    """A journal whose file may not grow: SQLite's ``max_page_count`` at the current size, so
    the first write that needs a new page fails as a full disk does (SQLITE_FULL)."""

    def on_connect(self, connection: sqlite3.Connection) -> None:
        pages = connection.execute("PRAGMA page_count").fetchall()[0][0]
        connection.execute(f"PRAGMA max_page_count = {max(pages, 1)}")


class FillsUp(SQLiteJournal):
    """A journal whose disk fills right after it saved a record that ``after`` accepts.

    Its pages are small (512 bytes), so a record that grows needs new pages, and a record is
    written before the one it replaces is freed: the next save after the disk fills fails."""

    def __init__(self, path: pathlib.Path, after: Callable[[OperationRecord], bool]) -> None:
        self.after = after
        self.connections: list[sqlite3.Connection] = []
        super().__init__(path)

    def on_connect(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA page_size = 512")
        self.connections.append(connection)

    def save(self, record: OperationRecord) -> OperationRecord:
        saved = super().save(record)
        if self.after(saved):
            self.fill()
        return saved

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        claimed = super().claim(record, now=now)
        if self.after(claimed.record):
            self.fill()
        return claimed

    def fill(self) -> None:
        for connection in self.connections:
            pages = connection.execute("PRAGMA page_count").fetchall()[0][0]
            connection.execute(f"PRAGMA max_page_count = {pages}")


def test_an_attempt_the_journal_cannot_record_is_never_sent(tmp_path: pathlib.Path) -> None:
    emulator = emulator_with_order()
    path = tmp_path / "ecpay.db"
    # The disk fills right after the claim: the first attempt (which carries the plan) cannot
    # be written, so it is never sent.
    planned = FillsUp(path, after=lambda r: not r.attempts)
    with (
        Client(
            Credentials(MID, KEY, IV),
            journal=planned,
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
        ) as client,
        pytest.raises(JournalError, match="full"),
    ):
        client.refund("A1", 300, idempotency_key="r1")
    assert refunds(emulator) == 0
    record = SQLiteJournal(path).get(MID, "r1")
    assert record is not None
    assert record.attempts == ()


def test_an_attempt_is_on_disk_before_its_request_leaves(tmp_path: pathlib.Path) -> None:
    """The disk fills after SENDING was saved: the DoAction went out, its reply cannot be
    recorded, and what is on disk is the attempt, open, so the order stays locked (R22). The
    caller is told the outcome is unknown, never that nothing happened."""
    emulator = emulator_with_order()
    path = tmp_path / "ecpay.db"
    sending = FillsUp(path, after=lambda r: r.open_attempt is not None)
    with (
        Client(
            Credentials(MID, KEY, IV),
            journal=sending,
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
        ) as client,
        pytest.raises(OutcomeUnknown, match="journal could not record") as caught,
    ):
        client.refund("A1", 300, idempotency_key="r1")
    assert isinstance(caught.value.__cause__, JournalError)
    assert caught.value.retry_at is not None
    assert refunds(emulator) == 1
    record = SQLiteJournal(path).get(MID, "r1")
    assert record is not None
    assert record.open_attempt is not None
    assert record.open_attempt.status is AttemptStatus.SENDING


# -- bad input: typed errors, nothing written -----------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notes.txt"
    content = b"these are not the droids you are looking for\n" * 200
    path.write_bytes(content)
    with pytest.raises(JournalError, match="not an SQLite database") as caught:
        SQLiteJournal(path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_newer_schema_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path)
    journal.claim(fresh(), now=NOW)
    journal.close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    before = path.read_bytes()
    with pytest.raises(JournalError) as caught:
        SQLiteJournal(path)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"schema version {SCHEMA_VERSION}." in message
    assert "Upgrade ecpay-lifecycle" in message
    assert path.read_bytes() == before


def test_another_programs_database_is_refused_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "shop.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE customers (name TEXT)")
    raw.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="another program's database"):
        SQLiteJournal(path)
    assert path.read_bytes() == before


def test_a_full_disk_is_a_journal_error_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path)
    record = journal.claim(fresh(), now=NOW).record
    journal.close()
    capped = Capped(path)
    big = attrs.evolve(record, notes=("x" * 50_000,))
    with pytest.raises(JournalError, match="full") as caught:
        capped.save(big)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(JournalError, match="full"):
        capped.claim(attrs.evolve(fresh("k2"), request="x" * 50_000), now=NOW)
    # Nothing was written, and the connection was left without a transaction.
    assert capped.get(MID, "k1") == record
    assert capped.get(MID, "k2") is None
    assert capped.save(record).revision == 2  # a write that fits still works
    capped.close()
    assert SQLiteJournal(path).get(MID, "k1") == attrs.evolve(record, revision=2)


def test_a_writer_that_never_lets_go_is_a_journal_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path, busy_timeout=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(JournalError, match="busy_timeout"):
            journal.claim(fresh(), now=NOW)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert journal.claim(fresh(), now=NOW).status is ClaimStatus.OWNER


def test_a_missing_directory_is_a_journal_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(JournalError, match="writable"):
        SQLiteJournal(tmp_path / "nowhere" / "ecpay.db")


def test_a_damaged_record_is_a_journal_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path)
    journal.claim(fresh(), now=NOW)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("UPDATE operations SET record = '{\"key\": 1}'")
    raw.close()
    with pytest.raises(JournalError, match="restore it from a backup"):
        journal.get(MID, "k1")


def test_a_damaged_schema_is_a_journal_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ecpay.db"
    journal = SQLiteJournal(path)
    assert journal.path == str(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("DROP TABLE operations")
    raw.close()
    with pytest.raises(JournalError, match="no such table"):
        journal.get(MID, "k1")


def test_on_connect_must_not_leave_a_transaction_open(tmp_path: pathlib.Path) -> None:
    class Careless(SQLiteJournal):
        def on_connect(self, connection: sqlite3.Connection) -> None:
            connection.execute("BEGIN")

    with pytest.raises(InvalidArgument, match="transaction open"):
        Careless(tmp_path / "ecpay.db")


class BytesPath:
    """An ``os.PathLike`` whose path is bytes, which the journal does not take."""

    def __fspath__(self) -> bytes:
        return b"ecpay.db"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"path": 42}, InvalidArgumentType),
        ({"path": b"ecpay.db"}, InvalidArgumentType),
        ({"path": BytesPath()}, InvalidArgumentType),
        ({"path": ":memory:"}, InvalidArgument),
        ({"path": ""}, InvalidArgument),
        ({"busy_timeout": "5"}, InvalidArgumentType),
        ({"busy_timeout": True}, InvalidArgumentType),
        ({"busy_timeout": -1}, InvalidArgument),
        ({"busy_timeout": float("nan")}, InvalidArgument),
        ({"max_operations": 1.5}, InvalidArgumentType),
        ({"max_operations": False}, InvalidArgumentType),
        ({"max_operations": 0}, InvalidArgument),
    ],
)
def test_wrong_options_are_typed_errors(
    tmp_path: pathlib.Path, options: dict[str, object], error: type[Exception]
) -> None:
    arguments: dict[str, object] = {"path": tmp_path / "ecpay.db", **options}
    with pytest.raises(error):
        SQLiteJournal(**arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "ecpay.db").exists()


def test_wrong_arguments_to_calls_are_typed_errors(tmp_path: pathlib.Path) -> None:
    journal = SQLiteJournal(tmp_path / "ecpay.db")
    calls: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: journal.claim(fresh().to_dict(), now=NOW), InvalidArgumentType),  # type: ignore[arg-type]
        (lambda: journal.save(None), InvalidArgumentType),  # type: ignore[arg-type]
        (lambda: journal.get(MID, 1), InvalidArgumentType),  # type: ignore[arg-type]
        (lambda: journal.for_order(None, "A1"), InvalidArgumentType),  # type: ignore[arg-type]
        (lambda: journal.open_operations(3), InvalidArgumentType),  # type: ignore[arg-type]
        (lambda: journal.open_operations(limit=True), InvalidArgumentType),
        (lambda: journal.open_operations(limit=0), InvalidArgument),
        (lambda: FileOrderLocks(None), InvalidArgumentType),  # type: ignore[arg-type]
        (lambda: journal.locks.hold(MID, 7).__enter__(), InvalidArgumentType),  # type: ignore[arg-type]
    ]
    for call, error in calls:
        with pytest.raises(error):
            call()
    assert len(journal) == 0


def test_a_lock_file_that_cannot_be_opened_is_a_journal_error(tmp_path: pathlib.Path) -> None:
    locks = FileOrderLocks(tmp_path / "nowhere" / "x.locks")
    with pytest.raises(JournalError, match="writable"), locks.hold(MID, "A1"):
        pass


# -- the same answers as the in-memory reference ------------------------------------------------

KEYS = ("k1", "k2", "k3", "k4")
ORDERS = ("A1", "B2")
REQUESTS = ("refund amount=300 capture_first=False", "refund amount=all capture_first=False")


@attrs.frozen
class ClaimStep:
    key: str
    order: str
    request: str
    owner: str | None  # None: a claim that names no owner, which both must refuse
    seconds: int  # after NOW: leases are 120 s, so some lapse


@attrs.frozen
class SaveStep:
    key: str
    version: int  # which version of the record this worker last saw (stale ones too)
    status: OperationStatus
    appended: AttemptStatus | None  # an attempt appended, or none
    owner: str  # "keep", "release" or a new owner
    order: str  # "same", or another order, which both must refuse


steps = st.one_of(
    st.builds(
        ClaimStep,
        st.sampled_from(KEYS),
        st.sampled_from(ORDERS),
        st.sampled_from(REQUESTS),
        st.sampled_from(["w1", "w2", "w3", None]),
        st.integers(0, 600),
    ),
    st.builds(
        SaveStep,
        st.sampled_from(KEYS),
        st.integers(0, 5),
        st.sampled_from(OperationStatus),
        st.sampled_from([*AttemptStatus, None]),
        st.sampled_from(["keep", "release", "w1", "w2"]),
        st.sampled_from(["same", "same", "same", *ORDERS]),
    ),
)


def outcome(call: Callable[..., object], *args: object, **kwargs: object) -> object:
    """What a call answered, or the kind of error it raised."""
    try:
        return call(*args, **kwargs)
    except (OwnershipLost, InvalidArgument) as exc:
        return type(exc)


@given(script=st.lists(steps, max_size=30), bound=st.sampled_from([None, 2, 3]))
@settings(max_examples=50)
def test_sqlite_answers_and_stores_like_the_in_memory_journal(
    script: list[ClaimStep | SaveStep], bound: int | None
) -> None:
    memory = InMemoryJournal(max_operations=10_000 if bound is None else bound)
    seen: dict[str, list[OperationRecord]] = {}  # every version of a record a worker was given
    last_write: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory() as directory,
        contextlib.closing(
            SQLiteJournal(pathlib.Path(directory) / "ecpay.db", max_operations=bound)
        ) as sqlite,
    ):
        for number, step in enumerate(script):
            if isinstance(step, ClaimStep):
                now = NOW + dt.timedelta(seconds=step.seconds)
                proposal = attrs.evolve(
                    fresh(step.key, step.order, now=now, request=step.request), owner=step.owner
                )
                expected = outcome(memory.claim, proposal, now=now)
                assert outcome(sqlite.claim, proposal, now=now) == expected
                if isinstance(expected, Claim):
                    seen.setdefault(step.key, []).append(expected.record)
                    if expected.status is ClaimStatus.OWNER:
                        last_write[step.key] = number
            elif step.key in seen:
                versions = seen[step.key]
                base = versions[min(step.version, len(versions) - 1)]
                changes: dict[str, object] = {"status": step.status}
                if step.appended is not None:
                    changes["attempts"] = (*base.attempts, attempt(step.appended))
                if step.owner == "release":
                    changes.update(owner=None, lease_until=None)
                elif step.owner != "keep":
                    changes.update(owner=step.owner, lease_until=NOW + LEASE)
                if step.order != "same":
                    changes["merchant_trade_no"] = step.order
                proposal = attrs.evolve(base, **changes)
                expected = outcome(memory.save, proposal)
                assert outcome(sqlite.save, proposal) == expected
                if isinstance(expected, OperationRecord):
                    versions.append(expected)
                    last_write[step.key] = number
            for key in KEYS:
                assert sqlite.get(MID, key) == memory.get(MID, key)
            for order in ORDERS:
                assert sqlite.for_order(MID, order) == memory.for_order(MID, order)
            assert len(sqlite) == len(memory)
            kept = [memory.get(MID, key) for key in KEYS]
            active = sorted(
                (r for r in kept if r is not None and (r.open_attempt or r.owner is not None)),
                key=lambda r: last_write[r.key],
            )
            assert sqlite.open_operations() == active
