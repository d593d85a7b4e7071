"""The PostgreSQL journal and its order locks (R23, order serialisation, habit 15).

See docs/ecpay-api.md section 9.

Every test runs against a real server: a throwaway cluster started once per session (``_pg``),
with a PostgreSQL schema of its own per test. The journal contract (claim, busy, takeover,
finished, conflict, conditional save, reads, the sweeper's list, round trips), the versioned
schema, then what only a shared store can show: advisory locks exclude threads, tasks and OS
processes, and a holder killed with SIGKILL frees its lock; lease-mode locks exclude and lapse;
eight processes racing for one key make one owner; two clients on two journals replay a key
without sending; a refused or dropped connection is a ``JournalError`` or a retry that lands
once, and a save that fails is never followed by its DoAction. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import multiprocessing
import os
import pathlib
import re
import select
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import httpx
import psycopg
import pytest

from _pg import free_port
from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    AttemptRecord,
    AttemptStatus,
    ClaimStatus,
    Client,
    Credentials,
    Intent,
    InvalidArgument,
    InvalidArgumentType,
    Journal,
    JournalError,
    OperationRecord,
    OperationStatus,
    OrderLocks,
    OrderSnapshot,
    OwnershipLost,
    PaymentKind,
    State,
    Step,
    plan_refund,
)
from ecpay_lifecycle._postgres import (
    SCHEMA_VERSION,
    PostgresJournal,
    PostgresLeaseLocks,
    PostgresOrderLocks,
    _Handoff,
)
from ecpay_lifecycle.emulator import Emulator

MID = "3002607"
KEY, IV = "PostgresJournaK1", "PostgresJournaI1"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
AUTH = dt.datetime(2026, 8, 1, 9, 30, tzinfo=TAIPEI)
LEASE = dt.timedelta(minutes=2)
PASSWORD = "pg-hunter2-secret"  # the test server trusts loopback, so any password passes
#: How long any one wait may take before the test fails rather than hangs.
PATIENCE = 30.0
SPAWN = multiprocessing.get_context("spawn")


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


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def schema() -> str:
    """A PostgreSQL schema of this test's own: tests share the server, never each other's rows."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def admin(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to look at and disturb the server from outside the journal."""
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        yield connection


Opener = Callable[..., PostgresJournal]


@pytest.fixture
def open_journal(postgres_dsn: str, schema: str) -> Iterator[Opener]:
    """Opens journals on this test's schema (options may override); closes them all at the end."""
    opened: list[PostgresJournal] = []

    def make(**options: Any) -> PostgresJournal:
        options.setdefault("schema", schema)
        conninfo = options.pop("conninfo", postgres_dsn)
        journal = PostgresJournal(conninfo, **options)
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        journal.close()


@pytest.fixture
def journal(open_journal: Opener) -> PostgresJournal:
    return open_journal()


def terminate_journal_backends(admin: psycopg.Connection[Any]) -> int:
    """Kill every server session the journals opened (as a crash or a DBA would), and wait
    (up to 5 s each) until each one has exited: ``pg_terminate_backend`` alone only signals
    the backend, and on a loaded machine a connection could still answer one more statement."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE application_name = 'ecpay-lifecycle' AND pid <> pg_backend_pid()"
    ).fetchall()
    return len(rows)


# -- the contract -------------------------------------------------------------------------------


def test_the_store_implements_the_protocol(journal: PostgresJournal) -> None:
    assert isinstance(journal, Journal)
    assert isinstance(journal.locks, OrderLocks)
    assert isinstance(journal.locks, PostgresOrderLocks)
    assert journal.locks is journal.locks
    assert journal.schema.startswith("t_")


def test_a_new_key_is_owned_at_revision_1(journal: PostgresJournal) -> None:
    claim = journal.claim(fresh(), now=NOW)
    assert (claim.status, claim.created, claim.taken_over) == (ClaimStatus.OWNER, True, False)
    assert claim.record == attrs.evolve(fresh(), revision=1)
    assert journal.get(MID, "k1") == claim.record
    assert journal.get(MID, "other") is None
    assert journal.get("other", "k1") is None


def test_a_live_lease_makes_others_busy_and_writes_nothing(journal: PostgresJournal) -> None:
    first = journal.claim(fresh(owner="w1"), now=NOW).record
    later = NOW + LEASE - dt.timedelta(seconds=1)
    busy = journal.claim(fresh(owner="w2", now=later), now=later)
    assert (busy.status, busy.record) == (ClaimStatus.BUSY, first)
    assert journal.get(MID, "k1") == first


def test_the_owner_renews_and_a_lapsed_lease_is_taken_over(journal: PostgresJournal) -> None:
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
    assert taken.record.started_at == NOW
    assert journal.get(MID, "k1") == taken.record


def test_a_released_operation_is_owned_without_takeover(journal: PostgresJournal) -> None:
    record = journal.claim(fresh(owner="w1"), now=NOW).record
    journal.save(attrs.evolve(record, owner=None, lease_until=None, status=OperationStatus.STOPPED))
    claim = journal.claim(fresh(owner="w2"), now=NOW)
    assert (claim.status, claim.taken_over, claim.record.owner) == (ClaimStatus.OWNER, False, "w2")
    assert claim.record.status is OperationStatus.STOPPED


def test_a_success_replays_and_another_request_conflicts(journal: PostgresJournal) -> None:
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


def test_save_is_a_compare_and_set_on_the_revision(journal: PostgresJournal) -> None:
    record = journal.claim(fresh(), now=NOW).record
    saved = journal.save(attrs.evolve(record, attempts=(attempt(AttemptStatus.SENDING),)))
    assert saved.revision == record.revision + 1
    assert journal.get(MID, "k1") == saved
    with pytest.raises(OwnershipLost, match="revision 1, now 2") as lost:
        journal.save(attrs.evolve(record, status=OperationStatus.STOPPED))  # stale
    assert lost.value.merchant_trade_no == "A1"
    assert journal.get(MID, "k1") == saved
    with pytest.raises(OwnershipLost, match="now None"):
        journal.save(fresh("never-claimed"))
    assert journal.get(MID, "never-claimed") is None


def test_for_order_lists_one_order_oldest_first(journal: PostgresJournal) -> None:
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


def test_a_save_never_changes_what_an_operation_is(journal: PostgresJournal) -> None:
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


def test_a_claim_must_name_its_owner_and_an_aware_now(journal: PostgresJournal) -> None:
    for claim, error in [
        (lambda: journal.claim(attrs.evolve(fresh(), owner=None), now=NOW), InvalidArgument),
        (lambda: journal.claim(attrs.evolve(fresh(), lease_until=None), now=NOW), InvalidArgument),
        (lambda: journal.claim(fresh(), now=NOW.replace(tzinfo=None)), InvalidArgument),
        (lambda: journal.claim(fresh(), now="now"), InvalidArgumentType),  # type: ignore[arg-type]
    ]:
        with pytest.raises(error):
            claim()
    assert journal.get(MID, "k1") is None


def test_every_field_round_trips_through_the_store(journal: PostgresJournal) -> None:
    before = snap()
    record = journal.claim(fresh(), now=NOW).record
    full = attrs.evolve(
        record,
        plan=plan_refund(before, 300, now=NOW),
        before=before,
        attempts=(attempt(AttemptStatus.NOT_DONE), attempt(AttemptStatus.DONE)),
        final=snap(State.TO_CLOSE, 700),
        status=OperationStatus.SUCCEEDED,
        notes=("a query disagreed (R21)", "中文 note", 'quotes " and \\ and \u2028'),
    )
    saved = journal.save(full)
    assert saved == attrs.evolve(full, revision=full.revision + 1)
    assert journal.get(MID, "k1") == saved
    assert journal.for_order(MID, "A1") == [saved]


def test_a_nul_character_is_a_journal_error_and_writes_nothing(journal: PostgresJournal) -> None:
    record = journal.claim(fresh(), now=NOW).record
    with pytest.raises(JournalError, match="NUL character"):
        journal.save(attrs.evolve(record, notes=("a\x00b",)))
    assert journal.get(MID, "k1") == record


def test_open_operations_lists_open_or_owned_least_recently_saved_first(
    journal: PostgresJournal,
) -> None:
    owned = journal.claim(fresh("owned", "A1"), now=NOW).record
    unowned(journal, "locking", "B2", attempts=(attempt(AttemptStatus.UNKNOWN),))
    unowned(journal, "done", "C3", status=OperationStatus.SUCCEEDED)
    journal.claim(fresh("elsewhere", "A1", merchant_id="other"), now=NOW)
    assert [r.key for r in journal.open_operations()] == ["owned", "locking", "elsewhere"]
    journal.save(owned)  # saved most recently now
    assert [r.key for r in journal.open_operations(MID)] == ["locking", "owned"]
    assert [r.key for r in journal.open_operations(limit=1)] == ["locking"]
    assert [r.key for r in journal.open_operations("other")] == ["elsewhere"]
    assert journal.open_operations("nobody") == []
    with pytest.raises(InvalidArgument):
        journal.open_operations(limit=0)
    with pytest.raises(InvalidArgumentType):
        journal.open_operations(limit=True)
    with pytest.raises(InvalidArgumentType):
        journal.open_operations(3)  # type: ignore[arg-type]


def test_the_sweeper_and_order_queries_read_their_indexes(
    journal: PostgresJournal, admin: psycopg.Connection[Any]
) -> None:
    for n in range(300):
        unowned(journal, f"done{n}", f"O{n}", status=OperationStatus.SUCCEEDED)
    journal.claim(fresh("owned", "A1"), now=NOW)
    s = f'"{journal.schema}"'
    admin.execute(f"ANALYZE {s}.operations")
    plans = {
        "active": f"SELECT key FROM {s}.operations WHERE (open OR owner IS NOT NULL) "
        f"AND merchant_id = '{MID}' ORDER BY saved_seq LIMIT 100",
        "order": f"SELECT key FROM {s}.operations WHERE merchant_id = '{MID}' "
        "AND merchant_trade_no = 'O7' ORDER BY id",
    }
    for index, sql in plans.items():
        text = "\n".join(row[0] for row in admin.execute(f"EXPLAIN {sql}").fetchall())
        assert f"operations_{'active' if index == 'active' else 'by_order'}" in text, text
    # A save finds its row by the primary key, even on an order with many operations.
    for n in range(300):
        journal.claim(fresh(f"hot{n}", "HOT"), now=NOW)
    admin.execute(f"ANALYZE {s}.operations")
    values = {
        "merchant_id": MID,
        "key": "hot7",
        "merchant_trade_no": "HOT",
        "request": fresh().request,
        "revision": 2,
        "expected": 1,
        "owner": None,
        "lease_until": None,
        "open": False,
        "record": "{}",
    }
    save_sql = journal._ops._sql_save  # the statement itself (private), as the journal runs it
    with admin.transaction():
        text = "\n".join(r[0] for r in admin.execute(f"EXPLAIN {save_sql}", values).fetchall())
    assert "operations_pkey" in text, text


def test_claims_are_atomic_across_threads(journal: PostgresJournal) -> None:
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


# -- the schema ---------------------------------------------------------------------------------


def test_the_schema_is_created_once_and_reopened(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    first = open_journal()
    saved = unowned(first, "k1")
    created = admin.execute(f"SELECT '\"{schema}\".operations'::regclass::oid").fetchone()
    second = open_journal()
    assert second.get(MID, "k1") == saved
    assert admin.execute(f"SELECT '\"{schema}\".operations'::regclass::oid").fetchone() == created
    assert admin.execute(f'SELECT id, version FROM "{schema}".schema_version').fetchall() == [
        (1, SCHEMA_VERSION)
    ]
    tables = admin.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
    ).fetchall()
    assert [t for (t,) in tables] == ["operations", "order_locks", "schema_version"]


def test_a_newer_schema_is_refused_untouched(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    unowned(open_journal(), "k1")
    admin.execute(f'UPDATE "{schema}".schema_version SET version = %s', (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError) as caught:
        open_journal()
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"reads schema version {SCHEMA_VERSION}" in message
    assert "Upgrade ecpay-lifecycle" in message
    assert admin.execute(f'SELECT version FROM "{schema}".schema_version').fetchone() == (
        SCHEMA_VERSION + 1,
    )
    assert admin.execute(f'SELECT count(*) FROM "{schema}".operations').fetchone() == (1,)


def test_another_programs_schema_is_refused_untouched(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".invoices (id int)')
    with pytest.raises(JournalError, match=r"another program's tables \(invoices\)"):
        open_journal()
    tables = admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    assert tables.fetchall() == [("invoices",)]


def test_an_empty_schema_made_by_an_administrator_is_used(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    admin.execute(f'CREATE SCHEMA "{schema}"')
    assert open_journal().claim(fresh(), now=NOW).status is ClaimStatus.OWNER


def test_a_damaged_schema_or_record_is_a_journal_error(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    journal = open_journal()
    journal.claim(fresh(), now=NOW)
    admin.execute(f"""UPDATE "{schema}".operations SET record = '{{"merchant_id": 1}}'""")
    with pytest.raises(JournalError, match=r"cannot be read.*restore it from a backup"):
        journal.get(MID, "k1")
    admin.execute(f"""UPDATE "{schema}".operations SET record = '[1]'""")
    with pytest.raises(JournalError, match="cannot be read"):
        journal.for_order(MID, "A1")
    admin.execute(f'DELETE FROM "{schema}".schema_version')
    with pytest.raises(JournalError, match=r"schema_version table .* is empty"):
        open_journal()


# -- connections: refused, dropped, secrets ----------------------------------------------------


def test_a_refused_connection_is_a_journal_error_that_says_what_to_do() -> None:
    conninfo = f"host=127.0.0.1 port={free_port()} dbname=shop user=shop password={PASSWORD}"
    started = time.monotonic()
    with pytest.raises(JournalError) as caught:
        PostgresJournal(conninfo, timeout=2)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "could not open the journal at host=127.0.0.1" in message
    assert "check that the server is up and reachable" in message
    assert PASSWORD not in message
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_the_password_never_shows_in_a_repr_or_a_message(
    postgres_dsn: str,
    schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = PostgresJournal(f"{postgres_dsn} password={PASSWORD}", schema=schema)
    try:
        texts = [repr(journal), repr(journal.locks), str(journal.locks)]
        with pytest.raises(JournalError) as missing:
            PostgresJournal(f"{postgres_dsn.replace('ecpay_test', 'nosuch')} password={PASSWORD}")
        texts.append(str(missing.value))
        assert "the database does not exist" in str(missing.value)
    finally:
        journal.close()
    with pytest.raises(JournalError, match="is closed") as closed:
        journal.get(MID, "k1")
    texts.append(str(closed.value))
    uri = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/shop"
    for malformed in (f"host=a password {PASSWORD}", f"postgresql://u:{PASSWORD} x@h:y/db"):
        with pytest.raises(InvalidArgument) as bad:
            PostgresJournal(malformed)
        assert bad.value.__cause__ is None  # psycopg's message would quote the password
        texts.append(str(bad.value))
    with pytest.raises(JournalError) as refused:
        PostgresJournal(uri, timeout=2)
    texts.append(str(refused.value))
    texts.extend(record.getMessage() for record in caplog.records)
    assert all(PASSWORD not in text for text in texts), texts
    assert "postgres" in texts[0]


def test_each_kind_of_server_refusal_says_what_to_do(
    postgres_dsn: str,
    schema: str,
    admin: psycopg.Connection[Any],
    open_journal: Opener,
) -> None:
    role = f"weak_{schema}"
    admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        cases = {
            "user=nobody": "the server refused the login: check the user and password",
            f"user={role}": f"the role lacks a privilege on schema {schema!r}",
            "options='-c default_transaction_read_only=on'": "a read-only standby",
        }
        for change, advice in cases.items():
            if change.startswith("user="):
                conninfo = postgres_dsn.replace("user=postgres", change)
            else:
                conninfo = f"{postgres_dsn} {change}"
            with pytest.raises(JournalError, match=re.escape(advice)):
                PostgresJournal(conninfo, schema=schema, timeout=2)
    finally:
        admin.execute(f"DROP ROLE {role}")
    journal = open_journal()
    admin.execute(f'ALTER TABLE "{schema}".operations RENAME TO moved')
    with pytest.raises(JournalError, match=r"does not exist.*see the server's log"):
        journal.get(MID, "k1")


def test_the_default_server_is_named_without_a_conninfo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("PGHOST", str(tmp_path))  # no server's socket there
    with pytest.raises(JournalError, match="the default PostgreSQL server"):
        PostgresJournal("", timeout=2)


def test_each_session_commits_durably_even_when_the_server_does_not(
    open_journal: Opener,
    postgres_dsn: str,
) -> None:
    journal = open_journal(
        conninfo=f"{postgres_dsn} options='-c synchronous_commit=off' application_name=shop "
        "connect_timeout=5",
        min_size=1,
    )
    journal.claim(fresh(), now=NOW)
    # The pool's own connection (private): what the journal writes with.
    with journal._db.pool().connection() as connection:
        row = connection.execute(
            "SELECT current_setting('synchronous_commit'), current_setting('application_name')"
        ).fetchone()
    assert row == ("on", "shop")


def test_a_closed_journal_refuses_calls_and_locks(postgres_dsn: str, schema: str) -> None:
    with PostgresJournal(postgres_dsn, schema=schema) as journal:
        journal.claim(fresh(), now=NOW)
    for call in (
        lambda: journal.get(MID, "k1"),
        lambda: journal.locks.hold(MID, "A1").__enter__(),
    ):
        with pytest.raises(JournalError, match="is closed; open a new one"):
            call()


def test_a_dropped_connection_is_replaced_and_the_call_lands_once(
    open_journal: Opener, admin: psycopg.Connection[Any]
) -> None:
    journal = open_journal(min_size=3, max_size=3)
    record = journal.claim(fresh(), now=NOW).record
    assert terminate_journal_backends(admin) >= 1
    saved = journal.save(attrs.evolve(record, attempts=(attempt(AttemptStatus.SENDING),)))
    assert saved.revision == 2
    assert terminate_journal_backends(admin) >= 1
    assert journal.get(MID, "k1") == saved
    assert terminate_journal_backends(admin) >= 1
    assert journal.claim(fresh(owner="w2"), now=NOW).status is ClaimStatus.BUSY


class Relay:
    """A TCP relay between the journal and the server, that the test can disturb: swallow the
    server's answer to the next message that contains some text (the statement runs and
    commits, the client never hears it and its connection is cut), or cut everything and
    refuse new connections."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.swallow_next: bytes | None = None
        self.swallow_times = 1
        self.delay = 0.0  # seconds every answer of the server is held back
        self.requests = 0  # messages the clients sent
        self.swallowed = 0
        self.guard = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self, dsn: str) -> str:
        """``dsn`` through the relay."""
        return re.sub(r"port=\d+", f"port={self.port}", dsn)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=PATIENCE)
            with self.guard:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        swallowing = False
        try:
            while not self.stopped.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    if end is client:
                        with self.guard:
                            self.requests += 1
                            if self.swallow_next is not None and self.swallow_next in data:
                                swallowing = True
                                self.swallow_times -= 1
                                if not self.swallow_times:
                                    self.swallow_next, self.swallow_times = None, 1
                        server.sendall(data)
                    elif swallowing:
                        with self.guard:
                            self.swallowed += 1
                        return  # the server answered and committed: the client never hears
                    else:
                        time.sleep(self.delay)
                        client.sendall(data)
        except OSError:
            return
        finally:
            for end in (client, server):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        self.stopped.set()
        self.listener.close()
        with self.guard:
            for end in self.sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay(postgres_dsn: str) -> Iterator[Relay]:
    match = re.search(r"port=(\d+)", postgres_dsn)
    assert match is not None
    relay = Relay(int(match.group(1)))
    yield relay
    relay.cut()


def test_a_save_whose_answer_was_lost_after_it_committed_is_recognised(
    open_journal: Opener,
    relay: Relay,
    postgres_dsn: str,
) -> None:
    journal = open_journal(conninfo=relay.conninfo(postgres_dsn), min_size=1, max_size=1)
    record = journal.claim(fresh(), now=NOW).record
    relay.swallow_next = b"UPDATE"
    saved = journal.save(attrs.evolve(record, attempts=(attempt(AttemptStatus.SENDING),)))
    assert relay.swallowed == 1
    assert saved.revision == 2
    assert journal.get(MID, "k1") == saved
    # The same for a claim of a new key (one INSERT): the retry is the same owner renewing
    # what it had just written, not a claimer told it is busy.
    relay.swallow_next = b"INSERT"
    claim = journal.claim(fresh("k2"), now=NOW)
    assert relay.swallowed == 2
    assert (claim.status, claim.record.owner, claim.record.revision) == (ClaimStatus.OWNER, "w1", 2)
    # A save that really was overtaken is still refused after a lost answer.
    relay.swallow_next = b"UPDATE"
    with pytest.raises(OwnershipLost, match="revision 1, now 2"):
        journal.save(attrs.evolve(record, status=OperationStatus.STOPPED))
    assert relay.swallowed == 3
    assert journal.get(MID, "k1") == saved
    # And a claim of a key that exists (a transaction) whose COMMIT's answer is lost.
    relay.swallow_next = b"COMMIT"
    again = journal.claim(fresh("k2", now=NOW + LEASE), now=NOW + LEASE)
    assert relay.swallowed == 4
    assert (again.status, again.record.revision) == (ClaimStatus.OWNER, 4)


def test_a_save_lost_twice_is_a_journal_error_and_its_step_is_never_sent(
    open_journal: Opener,
    relay: Relay,
    postgres_dsn: str,
) -> None:
    """Both the save and its retry lose their answer: the caller gets a JournalError (so the
    engine sends nothing), though the row may hold the attempt: an attempt recorded and never
    sent is resolved by R22 like any other."""
    journal = open_journal(conninfo=relay.conninfo(postgres_dsn), min_size=1, max_size=1)
    record = journal.claim(fresh(), now=NOW).record
    relay.swallow_next, relay.swallow_times = b"UPDATE", 2
    with pytest.raises(JournalError, match="could not save operation 'k1'"):
        journal.save(attrs.evolve(record, attempts=(attempt(AttemptStatus.SENDING),)))
    assert relay.swallowed == 2
    stored = journal.get(MID, "k1")
    assert stored is not None
    assert stored.open_attempt is not None  # the first write committed


def test_a_server_that_goes_away_is_a_journal_error_within_the_timeout(
    open_journal: Opener,
    relay: Relay,
    postgres_dsn: str,
) -> None:
    journal = open_journal(conninfo=relay.conninfo(postgres_dsn), timeout=1)
    journal.claim(fresh(), now=NOW)
    relay.cut()
    started = time.monotonic()
    with pytest.raises(JournalError, match=r"got no connection .* within 1.0 s") as caught:
        journal.get(MID, "k1")
    assert time.monotonic() - started < 10
    assert "Check that the server is up" in str(caught.value)
    with pytest.raises(JournalError), journal.locks.hold(MID, "A1"):
        pass  # pragma: no cover - never entered


def test_lease_locks_whose_server_goes_away_lapse_and_say_so(
    open_journal: Opener,
    relay: Relay,
    postgres_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = open_journal(
        conninfo=relay.conninfo(postgres_dsn), lease_mode=True, lock_lease=0.3, timeout=0.5
    )
    with caplog.at_level(logging.WARNING, logger="ecpay_lifecycle"):
        with journal.locks.hold(MID, "A1"):
            relay.cut()
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline and not any(
                "could not renew" in r.getMessage() for r in caplog.records
            ):
                time.sleep(0.05)
        messages = [r.getMessage() for r in caplog.records]
    assert any("could not renew order locks" in m for m in messages), messages
    assert any("its lock lapses at its expiry" in m for m in messages), messages


# -- advisory order locks -----------------------------------------------------------------------


def test_threads_and_tasks_of_two_journals_exclude_each_other(open_journal: Opener) -> None:
    lockers = [open_journal().locks, open_journal().locks]
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

    def thread_worker(n: int) -> None:
        for _ in range(15):
            with lockers[n % 2].hold(MID, "A1"):
                seen = enter()
                time.sleep(0.0005)
                leave(seen)

    async def task_worker(n: int) -> None:
        for _ in range(15):
            async with lockers[n % 2].ahold(MID, "A1"):
                seen = enter()
                await asyncio.sleep(0.0005)
                leave(seen)

    async def tasks() -> None:
        await asyncio.wait_for(asyncio.gather(*(task_worker(n) for n in range(3))), PATIENCE)

    threads = [threading.Thread(target=thread_worker, args=(n,), daemon=True) for n in range(3)]
    threads.append(threading.Thread(target=lambda: asyncio.run(tasks()), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert not any(thread.is_alive() for thread in threads)
    assert (most, count) == (1, 90)


def test_a_held_lock_is_a_session_lock_on_an_idle_connection(
    journal: PostgresJournal, admin: psycopg.Connection[Any]
) -> None:
    locks = journal.locks
    assert isinstance(locks, PostgresOrderLocks)
    key = locks.key(MID, "A1")
    assert key == locks.key(MID, "A1") != locks.key(MID, "A2")
    assert -(2**63) <= key < 2**63
    held_sql = (
        "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s"
    )
    with locks.hold(MID, "A1"):
        assert admin.execute(held_sql, (key,)).fetchall() == [("idle",)]
        with locks.hold(MID, "B2"):  # another order: no wait
            pass
    assert admin.execute(held_sql, (key,)).fetchall() == []


def test_a_cancelled_waiter_holds_nothing(
    open_journal: Opener, admin: psycopg.Connection[Any]
) -> None:
    first, second = open_journal().locks, open_journal().locks

    async def main() -> None:
        async with first.ahold(MID, "A1"):
            waiter = asyncio.ensure_future(second.ahold(MID, "A1").__aenter__())
            await asyncio.sleep(0.05)
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            async with asyncio.timeout(PATIENCE), second.ahold(MID, "B2"):
                pass
        async with asyncio.timeout(PATIENCE), second.ahold(MID, "A1"):
            pass

    for _ in range(3):
        asyncio.run(main())
    granted = admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    ).fetchone()
    assert granted == (0,)
    with second.hold(MID, "A1"):
        pass


def test_a_lock_whose_connection_dies_while_held_is_freed_and_logged(
    open_journal: Opener, admin: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = open_journal().locks, open_journal().locks
    with caplog.at_level(logging.WARNING, logger="ecpay_lifecycle"), first.hold(MID, "A1"):
        terminate_journal_backends(admin)
        with second.hold(MID, "A1"):  # the server freed it with the connection
            pass
    assert any("was lost while held" in r.getMessage() for r in caplog.records)
    for _ in range(2):
        with first.hold(MID, "A1"):  # leaves an idle lock connection in the pool
            pass
        terminate_journal_backends(admin)  # which the server ends
        with first.hold(MID, "A1"):  # found dead, replaced
            pass
        terminate_journal_backends(admin)

        async def task() -> None:
            async with asyncio.timeout(PATIENCE), first.ahold(MID, "A1"):
                pass

        asyncio.run(task())


def test_a_waiter_cancelled_while_it_waits_for_a_lock_connection_holds_nothing(
    open_journal: Opener, admin: psycopg.Connection[Any]
) -> None:
    """One lock connection: a task waiting for it (in a worker thread) is cancelled; the
    connection it gets afterwards is handed back, and no lock is left taken."""
    locks = open_journal(max_size=1, timeout=5).locks
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold(MID, "B2"):
            held.set()
            release.wait(PATIENCE)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(PATIENCE)

    async def main() -> None:
        waiter = asyncio.ensure_future(locks.ahold(MID, "A1").__aenter__())
        await asyncio.sleep(0.1)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()  # the abandoned thread now gets the connection, and hands it back

    asyncio.run(main())
    thread.join(PATIENCE)
    with locks.hold(MID, "A1"):  # the abandoned waiter's connection came back to the pool
        pass
    granted = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    deadline = time.monotonic() + PATIENCE
    while admin.execute(granted).fetchone() != (0,) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert admin.execute(granted).fetchone() == (0,)


@pytest.mark.parametrize("lease_mode", [False, True], ids=["advisory", "lease"])
def test_a_waiter_cancelled_while_its_call_is_at_the_server_holds_nothing(
    open_journal: Opener,
    relay: Relay,
    postgres_dsn: str,
    admin: psycopg.Connection[Any],
    schema: str,
    lease_mode: bool,
) -> None:
    """Every answer of the server is held back: the task is cancelled while its try-lock is at
    the server; whatever that call took is given back by the worker thread when it ends."""
    slow = open_journal(conninfo=relay.conninfo(postgres_dsn), lease_mode=lease_mode).locks
    direct = open_journal(lease_mode=lease_mode).locks
    with slow.hold(MID, "warm"):  # a lock connection (advisory) is open and idle now
        pass
    relay.delay = 0.3

    async def main(in_flight: int) -> None:
        sent = relay.requests
        waiter = asyncio.ensure_future(slow.ahold(MID, "A1").__aenter__())
        async with asyncio.timeout(PATIENCE):
            while relay.requests < sent + in_flight:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    if lease_mode:
        asyncio.run(main(1))  # the first take is at the server, and succeeds after all
    else:
        with direct.hold(MID, "A1"):
            asyncio.run(main(2))  # the first try said no; the second is at the server
    relay.delay = 0.0
    deadline = time.monotonic() + PATIENCE
    held = (
        f'SELECT count(*) FROM "{schema}".order_locks'
        if lease_mode
        else "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    )
    while admin.execute(held).fetchone() != (0,) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert admin.execute(held).fetchone() == (0,)
    with direct.hold(MID, "A1"):
        pass


def test_no_timeout_of_the_role_ends_a_lock_wait_but_a_cancel_does(
    open_journal: Opener,
    postgres_dsn: str,
    admin: psycopg.Connection[Any],
) -> None:
    impatient = f"{postgres_dsn} options='-c statement_timeout=100 -c lock_timeout=100'"
    waiting = open_journal(conninfo=impatient).locks
    holding = open_journal().locks
    outcome: list[object] = []

    def wait_for_it() -> None:
        try:
            with waiting.hold(MID, "A1"):
                outcome.append("held")
        except JournalError as exc:
            outcome.append(exc)

    with holding.hold(MID, "A1"):
        thread = threading.Thread(target=wait_for_it, daemon=True)
        thread.start()
        time.sleep(0.4)  # four statement timeouts
        assert outcome == []
    thread.join(PATIENCE)
    assert outcome == ["held"]
    with holding.hold(MID, "A1"):
        outcome.clear()
        thread = threading.Thread(target=wait_for_it, daemon=True)
        thread.start()
        waiting_backend = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'SELECT pg_advisory_lock%%'"
        )
        deadline = time.monotonic() + PATIENCE
        while not admin.execute(waiting_backend).fetchall() and time.monotonic() < deadline:
            time.sleep(0.01)
        admin.execute(f"SELECT pg_cancel_backend(pid) FROM ({waiting_backend}) AS w")
        thread.join(PATIENCE)
    (error,) = outcome
    assert isinstance(error, JournalError)
    assert "could not lock order A1" in str(error)


class Interrupted(Exception):
    """What a signal handler raises into a blocked lock wait."""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX timers")
def test_an_interrupted_lock_wait_leaves_no_lock_behind(
    open_journal: Opener, admin: psycopg.Connection[Any]
) -> None:
    holding, waiting = open_journal().locks, open_journal().locks

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with holding.hold(MID, "A1"):
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted), waiting.hold(MID, "A1"):
                pass  # pragma: no cover - never entered
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with waiting.hold(MID, "A1"):
        pass
    granted = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    assert admin.execute(granted).fetchone() == (0,)


def test_a_handoff_gives_what_a_cancelled_waiter_would_have_had_to_abandon() -> None:
    abandoned: list[object] = []
    go = threading.Event()

    def slow(value: object, fail: bool = False) -> Callable[[], object]:
        def call() -> object:
            go.wait(PATIENCE)
            if fail:
                raise RuntimeError("failed after the waiter left")
            return value

        return call

    async def cancelled_while_running(call: Callable[[], object]) -> None:
        go.clear()
        waiter = asyncio.ensure_future(_Handoff(call, abandoned.append).result())
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        go.set()
        await asyncio.sleep(0)

    async def cancelled_as_it_ends() -> None:
        waiter = asyncio.ensure_future(_Handoff(lambda: "late", abandoned.append).result())
        await asyncio.sleep(0)  # the call starts in its thread
        time.sleep(0.1)  # ...and ends while the loop is blocked: the task has not resumed
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    async def main() -> None:
        await cancelled_while_running(slow("conn"))
        await cancelled_while_running(slow("conn", fail=True))
        await cancelled_as_it_ends()
        assert await _Handoff(lambda: 7, abandoned.append).result() == 7
        go.set()
        with pytest.raises(RuntimeError):
            await _Handoff(slow(None, fail=True), abandoned.append).result()

    asyncio.run(main())
    deadline = time.monotonic() + PATIENCE
    while len(abandoned) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(map(str, abandoned)) == ["None", "conn", "late"]


# -- real processes -----------------------------------------------------------------------------


def worker_claim(dsn: str, schema: str, owner: str, start: Any, answers: Any) -> None:
    """In its own process: open a journal (racing to create the schema), claim, report."""
    journal = PostgresJournal(dsn, schema=schema, max_size=1)
    try:
        start.wait(PATIENCE)
        answers.put(str(journal.claim(fresh(owner=owner), now=NOW).status))
    finally:
        journal.close()


def worker_count(
    dsn: str, schema: str, counter: str, times: int, lease_mode: bool, start: Any, done: Any
) -> None:
    """In its own process: ``times`` read-pause-write cycles of a file under the order lock."""
    journal = PostgresJournal(dsn, schema=schema, lease_mode=lease_mode, max_size=2)
    path = pathlib.Path(counter)
    try:
        start.wait(PATIENCE)
        for _ in range(times):
            with journal.locks.hold(MID, "A1"):
                value = int(path.read_text())
                time.sleep(0.001)  # widen the window a lost update would need
                path.write_text(str(value + 1))
        done.put("done")
    finally:
        journal.close()


def worker_hold(dsn: str, schema: str, lease_mode: bool, lock_lease: float, said: Any) -> None:
    """In its own process: take the order's lock, say so, and sleep until killed (bounded)."""
    journal = PostgresJournal(dsn, schema=schema, lease_mode=lease_mode, lock_lease=lock_lease)
    with journal.locks.hold(MID, "A1"):
        said.put("held")
        time.sleep(PATIENCE)


@pytest.fixture
def spawn() -> Iterator[Callable[..., multiprocessing.process.BaseProcess]]:
    started: list[multiprocessing.process.BaseProcess] = []

    def start(target: Callable[..., None], *args: object) -> multiprocessing.process.BaseProcess:
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(PATIENCE)


def test_eight_processes_claiming_one_key_at_once_make_one_owner(
    postgres_dsn: str,
    schema: str,
    spawn: Callable[..., Any],
    open_journal: Opener,
) -> None:
    start, answers = SPAWN.Barrier(8), SPAWN.Queue()
    for n in range(8):
        spawn(worker_claim, postgres_dsn, schema, f"w{n}", start, answers)
    got = sorted(answers.get(timeout=PATIENCE) for _ in range(8))
    assert got == ["busy"] * 7 + ["owner"]
    record = open_journal().get(MID, "k1")
    assert record is not None
    assert record.revision == 1


@pytest.mark.parametrize("lease_mode", [False, True], ids=["advisory", "lease"])
def test_the_order_lock_excludes_processes(
    postgres_dsn: str,
    schema: str,
    spawn: Callable[..., Any],
    open_journal: Opener,
    tmp_path: pathlib.Path,
    lease_mode: bool,
) -> None:
    open_journal()  # the schema exists before the racers start
    counter = tmp_path / "counter"
    counter.write_text("0")
    start, done = SPAWN.Barrier(3), SPAWN.Queue()
    for _ in range(3):
        spawn(worker_count, postgres_dsn, schema, str(counter), 30, lease_mode, start, done)
    assert [done.get(timeout=PATIENCE) for _ in range(3)] == ["done"] * 3
    assert counter.read_text() == "90"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("lease_mode", [False, True], ids=["advisory", "lease"])
def test_a_lock_holder_killed_with_sigkill_frees_the_lock(
    postgres_dsn: str,
    schema: str,
    spawn: Callable[..., Any],
    open_journal: Opener,
    lease_mode: bool,
) -> None:
    lock_lease = 1.0
    locks = open_journal(lease_mode=lease_mode, lock_lease=lock_lease).locks
    said = SPAWN.Queue()
    holder = spawn(worker_hold, postgres_dsn, schema, lease_mode, lock_lease, said)
    assert said.get(timeout=PATIENCE) == "held"

    async def acquire() -> float:
        async with asyncio.timeout(PATIENCE), locks.ahold(MID, "A1"):
            return time.monotonic()

    async def main() -> float:
        waiter = asyncio.ensure_future(acquire())
        # Lease mode: past the lease, so renewal must have kept it held.
        await asyncio.sleep(2.5 * lock_lease if lease_mode else 0.2)
        assert not waiter.done()
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        return await waiter - killed

    waited = asyncio.run(main())
    assert waited < (3.0 if lease_mode else 2.0), waited
    holder.join(PATIENCE)
    assert holder.exitcode == -signal.SIGKILL


# -- lease mode ---------------------------------------------------------------------------------


def test_lease_locks_exclude_renew_and_free(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    first = open_journal(lease_mode=True, lock_lease=0.6).locks
    second = open_journal(lease_mode=True, lock_lease=0.6).locks
    assert isinstance(first, PostgresLeaseLocks)
    assert first.lease == 0.6
    assert "lease=0.6" in repr(first)
    rows = f'SELECT merchant_trade_no, owner FROM "{schema}".order_locks'
    entered = threading.Event()

    def other() -> None:
        with second.hold(MID, "A1"):
            entered.set()

    thread = threading.Thread(target=other, daemon=True)
    with first.hold(MID, "A1"):
        (row,) = admin.execute(rows).fetchall()
        assert row[0] == "A1"
        thread.start()
        assert not entered.wait(1.5)  # 2.5 leases: renewed while held, never lapsed
        with second.hold(MID, "B2"):  # another order: no wait
            pass
    thread.join(PATIENCE)
    assert entered.is_set()
    assert admin.execute(rows).fetchall() == []  # freed on exit, not left to lapse


def test_a_lease_lock_that_lapsed_while_held_is_logged(
    open_journal: Opener,
    admin: psycopg.Connection[Any],
    schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    locks = open_journal(lease_mode=True, lock_lease=0.3).locks
    with caplog.at_level(logging.ERROR, logger="ecpay_lifecycle"), locks.hold(MID, "A1"):
        # Another worker took the row (as after a stall past the lease).
        admin.execute(f"""UPDATE "{schema}".order_locks SET owner = 'someone else'""")
        deadline = time.monotonic() + PATIENCE
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    assert any("lapsed while held" in r.getMessage() for r in caplog.records)
    # Leaving did not free the other worker's row.
    assert admin.execute(f'SELECT owner FROM "{schema}".order_locks').fetchall() == [
        ("someone else",)
    ]


def test_lease_locks_serve_tasks_and_cancelled_waiters_hold_nothing(
    open_journal: Opener, admin: psycopg.Connection[Any], schema: str
) -> None:
    first = open_journal(lease_mode=True).locks
    second = open_journal(lease_mode=True).locks

    async def main() -> None:
        async with first.ahold(MID, "A1"):
            waiter = asyncio.ensure_future(second.ahold(MID, "A1").__aenter__())
            await asyncio.sleep(0.05)
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with asyncio.timeout(PATIENCE), second.ahold(MID, "A1"):
            pass

    asyncio.run(main())
    assert admin.execute(f'SELECT count(*) FROM "{schema}".order_locks').fetchone() == (0,)


# -- end to end with the client -----------------------------------------------------------------


def emulator_with_order() -> Emulator:
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "A1", 10_000, at=NOW - dt.timedelta(days=1))  # Closed, settled
    return emulator


def refunds(emulator: Emulator) -> int:
    return sum(1 for e in emulator.applied_do_actions(MID, "A1") if e.action is Action.REFUND)


def test_a_second_client_on_another_journal_replays_without_sending(
    open_journal: Opener, admin: psycopg.Connection[Any]
) -> None:
    emulator = emulator_with_order()
    seen: list[tuple[int, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        # Mid-operation, under the order lock: no journal transaction is open, the lock is.
        in_transaction = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ecpay-lifecycle' "
            "AND state LIKE 'idle in transaction%'"
        ).fetchone()
        advisory = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchone()
        assert in_transaction is not None
        assert advisory is not None
        seen.append((in_transaction[0], advisory[0]))
        return emulator.handler(request)

    with Client(
        Credentials(MID, KEY, IV),
        journal=open_journal(),
        transport=httpx.MockTransport(handler),
        clock=emulator.clock,
    ) as client:
        outcome = client.refund("A1", 300, idempotency_key="r1")
    assert not outcome.replayed
    assert refunds(emulator) == 1
    assert len(seen) >= 2
    assert set(seen) == {(0, 1)}
    with Client(
        Credentials(MID, KEY, IV),
        journal=open_journal(),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    ) as again:
        replay = again.refund("A1", 300, idempotency_key="r1")
    assert replay.replayed
    assert refunds(emulator) == 1
    (record,) = open_journal().for_order(MID, "A1")
    assert (record.status, record.owner, record.open_attempt) == (
        OperationStatus.SUCCEEDED,
        None,
        None,
    )


@pytest.mark.parametrize("lease_mode", [False, True], ids=["advisory", "lease"])
def test_the_async_client_runs_on_the_postgres_locks(
    open_journal: Opener, lease_mode: bool
) -> None:
    emulator = emulator_with_order()
    journal = open_journal(lease_mode=lease_mode)

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


def test_connections_killed_between_every_request_still_refund_once(
    open_journal: Opener, admin: psycopg.Connection[Any]
) -> None:
    emulator = emulator_with_order()
    killed = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal killed
        killed += terminate_journal_backends(admin)
        return emulator.handler(request)

    journal = open_journal()
    with Client(
        Credentials(MID, KEY, IV),
        journal=journal,
        transport=httpx.MockTransport(handler),
        clock=emulator.clock,
    ) as client:
        outcome = client.refund("A1", 300, idempotency_key="r1")
    assert killed >= 2
    assert not outcome.replayed
    assert refunds(emulator) == 1
    record = journal.get(MID, "r1")
    assert record is not None
    assert record.status is OperationStatus.SUCCEEDED


def test_an_attempt_the_journal_cannot_record_is_never_sent(
    open_journal: Opener,
    relay: Relay,
    postgres_dsn: str,
) -> None:
    """The server goes away after the first query: the attempt cannot be recorded, so the
    DoAction never leaves, and what the server kept has no attempt."""
    emulator = emulator_with_order()
    journal = open_journal(conninfo=relay.conninfo(postgres_dsn), timeout=1)
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        relay.cut()
        return emulator.handler(request)

    with (
        Client(
            Credentials(MID, KEY, IV),
            journal=journal,
            transport=httpx.MockTransport(handler),
            clock=emulator.clock,
        ) as client,
        pytest.raises(JournalError, match="got no connection"),
    ):
        client.refund("A1", 300, idempotency_key="r1")
    assert refunds(emulator) == 0
    assert not any("DoAction" in path for path in requests), requests
    record = open_journal().get(MID, "r1")
    assert record is not None
    assert record.attempts == ()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"conninfo": b"host=x"}, InvalidArgumentType),
        ({"min_size": -1}, InvalidArgument),
        ({"min_size": 1.5}, InvalidArgumentType),
        ({"max_size": 0}, InvalidArgument),
        ({"min_size": 5, "max_size": 4}, InvalidArgument),
        ({"max_size": True}, InvalidArgumentType),
        ({"lease_mode": 1}, InvalidArgumentType),
        ({"schema": 7}, InvalidArgumentType),
        ({"schema": "Public"}, InvalidArgument),
        ({"schema": 'x"; DROP TABLE y; --'}, InvalidArgument),
        ({"schema": "a" * 64}, InvalidArgument),
        ({"timeout": 0}, InvalidArgument),
        ({"timeout": float("nan")}, InvalidArgument),
        ({"timeout": "1"}, InvalidArgumentType),
        ({"lock_lease": -1}, InvalidArgument),
        ({"lock_lease": False}, InvalidArgumentType),
    ],
)
def test_wrong_options_are_typed_errors(
    postgres_dsn: str,
    options: dict[str, object],
    error: type[Exception],
) -> None:
    conninfo = options.pop("conninfo", postgres_dsn)
    with pytest.raises(error):
        PostgresJournal(conninfo, **options)  # type: ignore[arg-type]


def test_wrong_arguments_to_calls_are_typed_errors(journal: PostgresJournal) -> None:
    calls: list[Callable[[], object]] = [
        lambda: journal.claim("record", now=NOW),  # type: ignore[arg-type]
        lambda: journal.save({"key": "k1"}),  # type: ignore[arg-type]
        lambda: journal.get(MID, 1),  # type: ignore[arg-type]
        lambda: journal.for_order(None, "A1"),  # type: ignore[arg-type]
        lambda: journal.open_operations(merchant_id=3),  # type: ignore[arg-type]
        lambda: journal.locks.hold(MID, 5).__enter__(),  # type: ignore[arg-type]
        lambda: asyncio.run(journal.locks.ahold(MID, 5).__aenter__()),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentType):
            call()


def test_a_journal_used_after_a_fork_says_to_open_one_per_process(
    journal: PostgresJournal,
) -> None:
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (the pool's workers): the
        # child only formats an error, it takes no lock.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            journal.get(MID, "k1")
        except JournalError as exc:
            os.write(write, b"1" if "Open a PostgresJournal in each process" in str(exc) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], PATIENCE)
        assert ready
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert journal.get(MID, "k1") is None  # the parent's pool still works
