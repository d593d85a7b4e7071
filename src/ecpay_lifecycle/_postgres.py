"""A durable journal in PostgreSQL, and order locks for every host that shares it.

See docs/ecpay-api.md section 9.

:class:`PostgresJournal` implements :class:`~._journal.Journal` with psycopg 3 and a
``psycopg_pool.ConnectionPool`` (the ``postgres`` extra). Each call is one short transaction, never
one kept open between calls or across an HTTP request (style habit 15): a claim locks the row
(``SELECT ... FOR UPDATE``, or inserts it), decides by :func:`~._journal.arbitrate` and writes in
one transaction; a save is one ``UPDATE ... WHERE revision = <the revision the writer read>``,
committed before :meth:`PostgresJournal.save` returns and so before the DoAction leaves (R23).

Its ``locks`` serialise money movements on one order across threads, tasks, processes and hosts,
and the server frees them when their holder dies:

- :class:`PostgresOrderLocks` (the default): a session advisory lock
  (``pg_advisory_lock(bigint)``) held on a connection of its own for as long as the order is
  held; the server frees it when that connection ends, however its process died.
- :class:`PostgresLeaseLocks` (``lease_mode=True``): for poolers that do not keep a session
  (PgBouncer in transaction mode), a row per held order with an owner and an expiry, renewed
  while held; a dead holder's lock lapses at its expiry.

The schema lives in a PostgreSQL schema of its own (``ecpay_lifecycle`` unless told otherwise),
versioned in its ``schema_version`` table, and is created or migrated by the library. Every
failure of the server becomes a :class:`~ecpay_lifecycle.JournalError` that says what to do; the
conninfo's password never appears in a repr, a log line or a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import Any, Final, Generic, TypeVar, cast

import attrs

from ._exceptions import (
    ConfigurationError,
    InvalidArgument,
    InvalidArgumentType,
    JournalError,
    OwnershipLost,
)
from ._journal import Claim, ClaimStatus, OperationRecord, arbitrate, check_record, check_text
from ._locks import ProcessOrderLocks
from ._models import check_aware

try:
    import psycopg
    import psycopg_pool
    from psycopg.conninfo import conninfo_to_dict
except ImportError as _exc:  # pragma: no cover - the postgres extra is not installed
    MISSING_DRIVER: ImportError | None = _exc
else:
    MISSING_DRIVER = None

__all__ = ["SCHEMA_VERSION", "PostgresJournal", "PostgresLeaseLocks", "PostgresOrderLocks"]

T = TypeVar("T")
Connection = Any  # psycopg.Connection[tuple[Any, ...]]: kept loose where the extra is optional

_log = logging.getLogger("ecpay_lifecycle")

#: The schema this version of the library writes; a database whose ``schema_version`` is higher
#: was migrated by a newer ecpay-lifecycle and is refused rather than misread.
SCHEMA_VERSION: Final = 1

# _MIGRATIONS[n] takes a schema from version n to n + 1, inside one transaction; "{s}" is the
# quoted schema name (checked against _SCHEMA_NAME, so formatting it in is safe).
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # One row per operation. ``record`` is OperationRecord.to_dict(), the whole truth; the
        # other columns copy what queries and conditional writes need. ``id`` gives the
        # insertion order (an order's records oldest first), ``saved_seq`` the order of writes
        # (least recently saved first); ``open`` is true while the last attempt is unresolved.
        "CREATE SEQUENCE {s}.operation_saves",
        """
        CREATE TABLE {s}.operations (
            id bigint GENERATED ALWAYS AS IDENTITY,
            merchant_id text NOT NULL,
            key text NOT NULL,
            merchant_trade_no text NOT NULL,
            request text NOT NULL,
            revision bigint NOT NULL,
            owner text,
            lease_until timestamptz,
            open boolean NOT NULL,
            saved_seq bigint NOT NULL DEFAULT nextval('{s}.operation_saves'),
            record jsonb NOT NULL,
            PRIMARY KEY (merchant_id, key)
        )
        """,
        "ALTER SEQUENCE {s}.operation_saves OWNED BY {s}.operations.saved_seq",
        "CREATE INDEX operations_by_order ON {s}.operations (merchant_id, merchant_trade_no, id)",
        # What a sweeper lists: open attempts and owned operations, a small part of the table.
        """
        CREATE INDEX operations_active ON {s}.operations (merchant_id, saved_seq)
        WHERE open OR owner IS NOT NULL
        """,
        # lease_mode's order locks: one row per held order, until its holder frees it or it
        # expires (by the server's clock, so the hosts' clocks do not matter).
        """
        CREATE TABLE {s}.order_locks (
            merchant_id text NOT NULL,
            merchant_trade_no text NOT NULL,
            owner text NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (merchant_id, merchant_trade_no)
        )
        """,
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_ACTIVE: Final = "(open OR owner IS NOT NULL)"  # must match operations_active's WHERE
# A plain lower-case identifier: no quoting rules to get wrong, no case folding surprises.
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# SQLSTATE classes of a connection that is gone: connection exception, operator intervention.
_LOST: Final = ("08", "57P")

# Polling bounds for a waiter the server cannot wake (try-locks): a hand-off costs little next
# to an ECPay round trip (50-300 ms), and a waiter asks the server at most ~40 times a second.
FIRST_WAIT: Final = 0.001
LONGEST_WAIT: Final = 0.025


@attrs.frozen
class Sql:
    """One statement of a program, and its parameters."""

    text: str
    params: Any = ()


@attrs.frozen
class Rows:
    """What a statement did: its row count and the rows it returned (none for a write)."""

    rowcount: int
    rows: list[Any]


#: A journal call's statements as a generator: it yields each :class:`Sql` and is sent its
#: :class:`Rows`. The sync journal and the async one run the very same programs.
Program = Generator[Sql, Rows, T]


#: Markers a program yields to open and to commit a transaction (a failure inside rolls back).
BEGIN: Final = Sql("BEGIN")
COMMIT: Final = Sql("COMMIT")
NOTHING: Final = Rows(0, [])


def _statement(text: str, params: Any = ()) -> Program[Rows]:
    """A program of one statement."""
    return (yield Sql(text, params))


def _execute(connection: Connection, program: Program[T]) -> T:
    """Run ``program`` on a (sync) connection."""
    with contextlib.ExitStack() as transaction:
        try:
            sql = next(program)
            while True:
                if sql is BEGIN:
                    transaction.enter_context(connection.transaction())
                    rows = NOTHING
                elif sql is COMMIT:
                    transaction.close()
                    rows = NOTHING
                else:
                    cursor = connection.execute(sql.text, sql.params)
                    found = cursor.fetchall() if cursor.description is not None else []
                    rows = Rows(cursor.rowcount, found)
                sql = program.send(rows)
        except StopIteration as stop:
            return cast(T, stop.value)


class Server:
    """What the sync and async journals share about the server: the parsed conninfo, the
    connection settings, and the translation of every failure into a :class:`JournalError`."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int,
        max_size: int,
        lease_mode: bool,
        schema: str,
        timeout: float,
    ) -> None:
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:
            # psycopg's message quotes the malformed part, which may be the password: the cause
            # is left off on purpose.
            raise InvalidArgument(
                "conninfo is not a valid PostgreSQL connection string (key=value pairs or a "
                "postgresql:// URI); its text is not repeated here because it may hold a password"
            ) from None
        self._secrets = tuple(
            str(value) for name, value in params.items() if "password" in name and value
        )
        self.target = _describe(params)
        self.schema = schema
        self.quoted = f'"{schema}"'
        self.timeout = timeout
        self._conninfo = conninfo
        self._min_size = min_size
        self._max_size = max_size
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if lease_mode:
            # A transaction pooler hands each transaction to any server session: prepared
            # statements made on one would be missing on the next.
            self._kwargs["prepare_threshold"] = None
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(2, math.ceil(timeout))
        if "application_name" not in params:
            self._kwargs["application_name"] = "ecpay-lifecycle"
        self._pid = os.getpid()
        self._closed = False

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise JournalError(
                f"this {self.kind} ({self.target}) was opened in process {self._pid}, before "
                f"a fork; its connections belong to that process. Open a {self.kind} in each "
                "process (after the fork)"
            )

    def closed_error(self) -> JournalError:
        return JournalError(f"this {self.kind} ({self.target}) is closed; open a new one")

    kind = "PostgresJournal"

    # -- errors ----------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` without the conninfo's password, wherever a message might have quoted it."""
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def no_connection(self, doing: str) -> JournalError:
        return JournalError(
            f"{self.kind} got no connection to {self.target} within {self.timeout} s to "
            f"{doing}: the server refuses or drops connections, or all max_size="
            f"{self._max_size} connections are busy. Check that the server is up and reachable "
            "and the conninfo is right, or raise max_size or timeout"
        )

    def error(self, exc: psycopg.Error, doing: str) -> JournalError:
        """One :class:`JournalError` per kind of failure, saying what to do."""
        return _error(self, exc, doing)


class Database(Server):
    """The connections of one (sync) journal: its pool, a second pool for advisory locks, the
    schema check; every failure becomes a :class:`JournalError`."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int,
        max_size: int,
        lease_mode: bool,
        schema: str,
        timeout: float,
    ) -> None:
        super().__init__(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            lease_mode=lease_mode,
            schema=schema,
            timeout=timeout,
        )
        self._guard = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._lock_pool: psycopg_pool.ConnectionPool[Any] | None = None

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect once, check or create the schema, then start the pool: a wrong server or
        schema fails here rather than mid-payment."""
        try:
            with psycopg.connect(self._conninfo, **self._kwargs) as connection:
                self.target = describe_connection(connection)
                _execute(connection, prepare_schema(self))
        except psycopg.Error as exc:
            raise self.error(exc, "open the journal") from exc
        self._pool = self._new_pool("journal", self._min_size, _durable)

    def _new_pool(
        self, role: str, min_size: int, configure: Callable[[Connection], None]
    ) -> psycopg_pool.ConnectionPool[Any]:
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self._conninfo,
            kwargs=self._kwargs,
            min_size=min_size,
            max_size=self._max_size,
            open=False,
            configure=configure,
            timeout=self.timeout,
            name=f"ecpay-lifecycle-{role}",
        )
        pool.open(wait=False)
        return pool

    # -- running ---------------------------------------------------------------------------------

    def open_once(self) -> None:
        """Open unless open (or closed): for the lease locks of an async journal, whose sync
        connections are opened on first use."""
        with self._guard:
            if self._pool is None and not self._closed:
                self.open()

    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        self._check_process()
        if self._pool is None:
            self.open_once()
        pool = self._pool
        if pool is None or self._closed:
            raise self.closed_error()
        return pool

    def lock_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        """The advisory locks' own connections, opened on first use. They are held across HTTP
        calls, so they must never be the journal's: ``max_size`` held orders would leave no
        connection for the saves their operations need."""
        self._check_process()
        with self._guard:
            if self._closed:
                raise self.closed_error()
            if self._lock_pool is None:
                self._lock_pool = self._new_pool("locks", 0, _patient)
            return self._lock_pool

    def run(self, doing: str, program: Callable[[bool], Program[T]]) -> T:
        """Run ``program(retried)`` on a pooled connection. A connection found dead (a server
        restart, a terminated backend) is replaced and the program runs once more with
        ``retried=True``, so it must be safe to repeat after a failure of unknown outcome."""
        retried = False
        while True:
            connection: Connection | None = None
            try:
                with self.pool().connection() as connection:
                    return _execute(connection, program(retried))
            except psycopg_pool.PoolTimeout as exc:
                raise self.no_connection(doing) from exc
            except psycopg_pool.PoolClosed as exc:  # pragma: no cover - close() racing a call
                raise self.closed_error() from exc
            except psycopg.Error as exc:
                if retried or not connection_lost(exc, connection):
                    raise self.error(exc, doing) from exc
                retried = True
                self.check(self._pool)

    def check(self, pool: psycopg_pool.ConnectionPool[Any] | None) -> None:
        """Drop every dead idle connection of ``pool`` after one was found dead."""
        if pool is not None:
            with contextlib.suppress(psycopg.Error, psycopg_pool.PoolClosed):
                pool.check()

    def close(self) -> None:
        with self._guard:
            self._closed = True
            pools = [p for p in (self._pool, self._lock_pool) if p is not None]
        if os.getpid() == self._pid:
            for pool in pools:
                pool.close()


def prepare_schema(server: Server) -> Program[None]:
    """Refuse a foreign or newer schema; create or migrate an absent or older one to
    :data:`SCHEMA_VERSION`, in one transaction, serialised between processes."""
    s = server.quoted
    yield BEGIN
    yield Sql("SELECT pg_advisory_xact_lock(%s)", (_schema_lock_key(server.schema),))
    relations = yield Sql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s",
        (server.schema,),
    )
    names = {row[0] for row in relations.rows}
    if "schema_version" in names:
        found = yield Sql(f"SELECT version FROM {s}.schema_version")
        if not found.rows:
            raise JournalError(
                f"the schema_version table of PostgreSQL schema {server.schema!r} at "
                f"{server.target} is empty: the journal's schema was damaged; restore it "
                "from a backup"
            )
        version = int(found.rows[0][0])
    elif names:
        raise JournalError(
            f"PostgreSQL schema {server.schema!r} at {server.target} holds another "
            f"program's tables ({', '.join(sorted(names)[:5])}), not an ecpay-lifecycle "
            f"journal; give {server.kind} a schema of its own (schema=...)"
        )
    else:
        yield Sql(f"CREATE SCHEMA IF NOT EXISTS {s}")
        yield Sql(
            f"CREATE TABLE {s}.schema_version (id integer PRIMARY KEY CHECK (id = 1), "
            "version integer NOT NULL)"
        )
        yield Sql(f"INSERT INTO {s}.schema_version (id, version) VALUES (1, 0)")
        version = 0
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"PostgreSQL schema {server.schema!r} at {server.target} has journal schema "
            f"version {version}, written by a newer ecpay-lifecycle; this version reads "
            f"schema version {SCHEMA_VERSION}. Upgrade ecpay-lifecycle (the schema was "
            "left unchanged)"
        )
    for statements in _MIGRATIONS[version:]:
        for statement in statements:
            yield Sql(statement.format(s=s))
    if version < SCHEMA_VERSION:
        yield Sql(f"UPDATE {s}.schema_version SET version = %s WHERE id = 1", (SCHEMA_VERSION,))
    yield COMMIT


def _error(server: Server, exc: psycopg.Error, doing: str) -> JournalError:
    """One :class:`JournalError` per kind of failure, saying what to do."""
    state = exc.sqlstate or ""
    text = str(exc)
    # A failed login carries no SQLSTATE in psycopg: its FATAL message tells the kind.
    if not state and "FATAL:" in text:
        if re.search(r'database ".*" does not exist', text):
            state = "3D000"
        elif re.search(
            r"password authentication failed|role \".*\" does not exist|"
            r"no pg_hba.conf entry",
            text,
        ):
            state = "28000"
    if state.startswith("28"):
        advice = "the server refused the login: check the user and password of the conninfo"
    elif state == "3D000":
        advice = "the database does not exist: create it, or fix dbname in the conninfo"
    elif state == "42501":
        advice = (
            f"the role lacks a privilege on schema {server.schema!r}: grant it (CREATE on the "
            "database, and USAGE, SELECT, INSERT and UPDATE on the schema's tables)"
        )
    elif state == "25006":
        advice = "the server is a read-only standby: point the conninfo at the primary"
    elif state.startswith("53"):
        advice = (
            "the server is out of a resource (disk, memory or connections): free it, or "
            "lower max_size"
        )
    elif isinstance(exc, psycopg.OperationalError):
        advice = (
            "check that the server is up and reachable and that the conninfo (host, port, "
            "dbname, user, password) is right, then try again"
        )
    else:
        advice = "see the server's log, then try again"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return JournalError(
        server.scrub(f"{server.kind} could not {doing} at {server.target}: {first}; {advice}")
    )


def _durable(connection: Connection) -> None:
    """Each pooled connection commits durably: the attempt must survive a crash of the server
    before its request leaves (habit 15). A server-wide ``synchronous_commit = off`` is undone
    for the journal's sessions; stronger settings (``remote_apply``) are kept."""
    _execute(connection, durable_settings())


def durable_settings() -> Program[None]:
    found = yield Sql("SELECT current_setting('synchronous_commit')")
    if found.rows and found.rows[0][0] == "off":
        yield Sql("SET synchronous_commit TO on")


def _patient(connection: Connection) -> None:
    """Each lock connection waits for as long as another holder keeps the order, and may sit
    idle holding a lock across HTTP calls: no timeout set for the server or the role may end
    the wait or the session (``hold`` promises to block until the lock is the caller's)."""
    connection.execute(patient_settings(connection.info.server_version))


def patient_settings(server_version: int) -> str:
    settings = "SET statement_timeout = 0; SET lock_timeout = 0"
    if server_version >= 140000:  # idle_session_timeout is new in 14
        settings += "; SET idle_session_timeout = 0"
    return settings


def connection_lost(exc: psycopg.Error, connection: Connection | None) -> bool:
    """Whether ``exc`` means the connection is gone (rather than a refused statement)."""
    if connection is not None and connection.broken:
        return True
    return isinstance(exc, psycopg.OperationalError) and (exc.sqlstate or "").startswith(_LOST)


def _describe(params: dict[str, Any]) -> str:
    """Where a conninfo points, for messages: never its password."""
    parts = [
        f"{name}={params[name]}" for name in ("host", "port", "dbname", "user") if params.get(name)
    ]
    return " ".join(parts) if parts else "the default PostgreSQL server (PG* environment)"


def describe_connection(connection: Connection) -> str:
    info = connection.info
    return f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"


def _schema_lock_key(schema: str) -> int:
    return advisory_key("schema", schema)


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``; length-prefixed, so no two tuples
    share a text. A collision (about 1 in 10^19 per pair) only makes two orders wait."""
    text = "".join(f"{len(part)}:{part}" for part in ("ecpay_lifecycle", *parts))
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


class Operations:
    """The operations table of one schema: its SQL, and each journal call as a program (the
    same for the sync and the async journal). Every program is one statement or one
    transaction, never one kept open between calls (style habit 15)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        s = server.quoted
        columns = (
            "merchant_id, key, merchant_trade_no, request, revision, owner, lease_until, open, "
            "record"
        )
        values = (
            "%(merchant_id)s, %(key)s, %(merchant_trade_no)s, %(request)s, %(revision)s, "
            "%(owner)s, %(lease_until)s, %(open)s, %(record)s::jsonb"
        )
        update = (
            f"UPDATE {s}.operations SET revision = %(revision)s, owner = %(owner)s, "
            "lease_until = %(lease_until)s, open = %(open)s, saved_seq = DEFAULT, "
            "record = %(record)s::jsonb WHERE merchant_id = %(merchant_id)s AND key = %(key)s"
        )
        self._sql_lock_row = (
            f"SELECT record FROM {s}.operations WHERE merchant_id = %s AND key = %s FOR UPDATE"
        )
        self._sql_insert = (
            f"INSERT INTO {s}.operations ({columns}) VALUES ({values}) "
            "ON CONFLICT (merchant_id, key) DO NOTHING"
        )
        self._sql_update = update
        # The identity is compared, not searched: "(...) IS TRUE" keeps the planner on the
        # primary key even for an order with many operations (its index would match too).
        self._sql_save = (
            f"{update} AND revision = %(expected)s AND (merchant_trade_no = %(merchant_trade_no)s "
            "AND request = %(request)s) IS TRUE"
        )
        self._sql_stored = (
            f"SELECT revision, merchant_trade_no, request, record FROM {s}.operations "
            "WHERE merchant_id = %s AND key = %s"
        )
        self._sql_get = f"SELECT record FROM {s}.operations WHERE merchant_id = %s AND key = %s"
        self._sql_order = (
            f"SELECT key, record FROM {s}.operations WHERE merchant_id = %s "
            "AND merchant_trade_no = %s ORDER BY id"
        )
        self._sql_open_all = (
            f"SELECT key, record FROM {s}.operations WHERE {_ACTIVE} ORDER BY saved_seq LIMIT %s"
        )
        self._sql_open_one = (
            f"SELECT key, record FROM {s}.operations WHERE {_ACTIVE} AND merchant_id = %s "
            "ORDER BY saved_seq LIMIT %s"
        )

    def claim(self, record: OperationRecord, now: dt.datetime) -> Callable[[bool], Program[Claim]]:
        new, created = arbitrate(None, record, now)
        assert created is not None  # arbitrate always writes a record nobody holds

        # A claimer renewing the record it holds (the engine's claim under the order's lock):
        # decided as if the stored record were that one, and written only if it still is, in
        # one conditional UPDATE. Anything else falls through to the full decision.
        renewal: tuple[Claim, dict[str, object]] | None = None
        if record.revision > 0:
            claim, write = arbitrate(record, record, now)
            if claim.status is ClaimStatus.OWNER and write is not None:
                values = self.values(write)
                values["expected"] = record.revision
                renewal = claim, values

        def program(_retried: bool) -> Program[Claim]:
            if renewal is not None:
                updated = yield Sql(self._sql_save, renewal[1])
                if updated.rowcount == 1:
                    return renewal[0]
            inserted = yield Sql(self._sql_insert, self.values(created))
            if inserted.rowcount == 1:
                return new
            yield BEGIN
            found = yield Sql(self._sql_lock_row, (record.merchant_id, record.key))
            if not found.rows:  # pragma: no cover - rows are never deleted
                raise JournalError(
                    f"the row of operation {record.key!r} vanished while it was claimed at "
                    f"{self._server.target}: something other than ecpay-lifecycle deletes rows"
                )
            claim, write = arbitrate(self.decode(found.rows[0][0], record.key), record, now)
            if write is not None:
                yield Sql(self._sql_update, self.values(write))
            yield COMMIT
            return claim

        return program

    def save(self, record: OperationRecord) -> Callable[[bool], Program[OperationRecord]]:
        written = attrs.evolve(record, revision=record.revision + 1)
        values = self.values(written)
        values["expected"] = record.revision

        def program(retried: bool) -> Program[OperationRecord]:
            updated = yield Sql(self._sql_save, values)
            if updated.rowcount == 1:
                return written
            found = yield Sql(self._sql_stored, (record.merchant_id, record.key))
            row = found.rows[0] if found.rows else None
            if row is not None and (row[1], row[2]) != (record.merchant_trade_no, record.request):
                raise InvalidArgument(
                    f"journal record {record.key!r} names another order or request than the "
                    "stored one; a save never changes what an operation is"
                )
            stored = None if row is None else int(row[0])
            if (
                retried
                and row is not None
                and stored == written.revision
                and self.decode(row[3], record.key) == written
            ):
                return written  # the lost attempt had committed
            raise OwnershipLost(
                f"journal record {record.key!r} changed since this worker read it (revision "
                f"{record.revision}, now {stored}): another worker owns or resolved the "
                "operation; nothing more is sent",
                merchant_trade_no=record.merchant_trade_no,
            )

        return program

    def get(self, merchant_id: str, key: str) -> Callable[[bool], Program[OperationRecord | None]]:
        def program(_retried: bool) -> Program[OperationRecord | None]:
            found = yield Sql(self._sql_get, (merchant_id, key))
            return self.decode(found.rows[0][0], key) if found.rows else None

        return program

    def for_order(
        self, merchant_id: str, merchant_trade_no: str
    ) -> Callable[[bool], Program[list[OperationRecord]]]:
        return self._records(self._sql_order, (merchant_id, merchant_trade_no))

    def open_operations(
        self, merchant_id: str | None, limit: int
    ) -> Callable[[bool], Program[list[OperationRecord]]]:
        if merchant_id is None:
            return self._records(self._sql_open_all, (limit,))
        return self._records(self._sql_open_one, (merchant_id, limit))

    def _records(
        self, sql: str, params: Sequence[object]
    ) -> Callable[[bool], Program[list[OperationRecord]]]:
        # One statement in autocommit: no transaction or snapshot outlives the call.
        def program(_retried: bool) -> Program[list[OperationRecord]]:
            found = yield Sql(sql, params)
            return [self.decode(record, key) for key, record in found.rows]

        return program

    def values(self, record: OperationRecord) -> dict[str, object]:
        text = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))
        if "\\u0000" in text:
            raise JournalError(
                f"the record of operation {record.key!r} holds a NUL character, which PostgreSQL "
                "cannot store; nothing was written"
            )
        return {
            "merchant_id": record.merchant_id,
            "key": record.key,
            "merchant_trade_no": record.merchant_trade_no,
            "request": record.request,
            "revision": record.revision,
            "owner": record.owner,
            "lease_until": record.lease_until,
            "open": record.open_attempt is not None,
            "record": text,
        }

    def decode(self, value: object, key: str) -> OperationRecord:
        try:
            if not isinstance(value, dict):
                raise InvalidArgumentType(f"a JSON object, not {type(value).__name__}")
            return OperationRecord.from_dict(value)
        except (InvalidArgument, InvalidArgumentType) as exc:
            raise JournalError(
                f"the record of operation {key!r} in schema {self._server.schema!r} at "
                f"{self._server.target} cannot be read ({exc}): it was changed by something other "
                "than ecpay-lifecycle; restore it from a backup"
            ) from exc


def check_listing(merchant_id: object, limit: object) -> None:
    if merchant_id is not None:
        check_text(merchant_id=merchant_id)
    _check_int(limit, "limit", least=1)


def check_journal_args(
    name: str,
    conninfo: object,
    *,
    min_size: object,
    max_size: object,
    lease_mode: object,
    schema: object,
    timeout: object,
    lock_lease: object,
) -> None:
    """The arguments both PostgreSQL journals take, checked before anything connects."""
    if MISSING_DRIVER is not None:  # pragma: no cover - the postgres extra is not installed
        raise ConfigurationError(
            f"{name} needs psycopg 3 and psycopg_pool: pip install 'ecpay-lifecycle[postgres]'"
        ) from MISSING_DRIVER
    if not isinstance(conninfo, str):
        raise InvalidArgumentType(
            f"conninfo must be a str (a connection string or URI), not {type(conninfo).__name__}"
        )
    _check_int(min_size, "min_size", least=0)
    _check_int(max_size, "max_size", least=max(1, cast(int, min_size)))
    if not isinstance(lease_mode, bool):
        raise InvalidArgumentType(f"lease_mode must be a bool, not {type(lease_mode).__name__}")
    if not isinstance(schema, str):
        raise InvalidArgumentType(f"schema must be a str, not {type(schema).__name__}")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidArgument(
            f"schema must be a lower-case PostgreSQL name (letters, digits, _; at most 63), "
            f"got {schema!r}"
        )
    _check_seconds(timeout, "timeout")
    _check_seconds(lock_lease, "lock_lease")


class PostgresJournal:
    """A :class:`~ecpay_lifecycle.Journal` in PostgreSQL, shared by every thread, process and host
    that opens the same database and ``schema``.

    ``conninfo`` is a libpq connection string or ``postgresql://`` URI (its password never shows
    in a repr or message). The journal keeps a pool of ``min_size`` to ``max_size`` connections;
    ``timeout`` is how many seconds a call waits for one (and for a new connection to be made)
    before :class:`~ecpay_lifecycle.JournalError`. Tables live in the PostgreSQL schema
    ``schema`` (created, with the journal's tables, on first use; the role needs CREATE on the
    database then, or an administrator creates the schema for it).

    :attr:`locks` are per-order locks across hosts. By default they are session advisory locks,
    each held on a connection of a second pool (up to ``max_size`` orders held at once by this
    object; a further order waits for a connection, up to ``timeout``). Behind a pooler that
    does not keep a session per client (PgBouncer in transaction mode), session locks would be
    taken and dropped on arbitrary server sessions: pass ``lease_mode=True``, and the locks
    become rows in ``order_locks`` with an owner and an expiry ``lock_lease`` seconds ahead,
    renewed while held by a background thread; a dead holder's lock lapses at its expiry. In
    ``lease_mode`` no statement is prepared on the server, for the same reason.

    Records are never forgotten: an idempotency key replays for as long as its row is kept.
    Open one journal per process (after any ``fork``) and :meth:`close` it at the end.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        lease_mode: bool = False,
        schema: str = "ecpay_lifecycle",
        timeout: float = 30.0,
        lock_lease: float = 30.0,
    ) -> None:
        check_journal_args(
            type(self).__name__,
            conninfo,
            min_size=min_size,
            max_size=max_size,
            lease_mode=lease_mode,
            schema=schema,
            timeout=timeout,
            lock_lease=lock_lease,
        )
        self._db = Database(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            lease_mode=lease_mode,
            schema=schema,
            timeout=float(timeout),
        )
        self._lease_mode = lease_mode
        self._locks: PostgresOrderLocks | PostgresLeaseLocks
        if lease_mode:
            self._locks = PostgresLeaseLocks(self._db, lease=float(lock_lease))
        else:
            self._locks = PostgresOrderLocks(self._db)
        self._ops = Operations(self._db)
        self._db.open()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._db.target!r}, schema={self._db.schema!r}, "
            f"lease_mode={self._lease_mode})"
        )

    def __enter__(self) -> PostgresJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the journal's tables."""
        return self._db.schema

    @property
    def locks(self) -> PostgresOrderLocks | PostgresLeaseLocks:
        """See :attr:`Journal.locks`: locks for every thread, task, process and host."""
        return self._locks

    def close(self) -> None:
        """Close the pools; locks held through this journal are freed. Calls afterwards raise
        :class:`~ecpay_lifecycle.JournalError`."""
        if isinstance(self._locks, PostgresLeaseLocks):
            self._locks.stop()
        self._db.close()

    # -- the Journal protocol ------------------------------------------------------------------

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """See :meth:`Journal.claim`: :func:`arbitrate` decides, atomically, so exactly one of
        many simultaneous claimers owns a key (R23).

        A new key is one ``INSERT ... ON CONFLICT DO NOTHING`` of what :func:`arbitrate` gives
        a key nobody holds (the unique key makes it atomic); an owner renewing the record it
        holds is one ``UPDATE`` conditional on its revision; otherwise the row is locked
        (``SELECT ... FOR UPDATE``), decided and written in one transaction. A connection lost
        mid-claim is retried once on another: the same owner claiming again is its own
        renewal, so a claim that did commit is not refused as busy."""
        check_record(record)
        check_aware(now, field="now")
        return self._db.run(f"claim operation {record.key!r}", self._ops.claim(record, now))

    def save(self, record: OperationRecord) -> OperationRecord:
        """See :meth:`Journal.save`: one ``UPDATE`` conditional on the revision, committed (and
        so durable) before this returns (R23).

        A connection lost mid-save is retried once on another; if the first write did commit,
        the row already holds exactly the record written, and that is the answer."""
        check_record(record)
        return self._db.run(f"save operation {record.key!r}", self._ops.save(record))

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """See :meth:`Journal.get`."""
        check_text(merchant_id=merchant_id, key=key)
        return self._db.run(f"read operation {key!r}", self._ops.get(merchant_id, key))

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        """See :meth:`Journal.for_order`: oldest first, through the order's index."""
        check_text(merchant_id=merchant_id, merchant_trade_no=merchant_trade_no)
        return self._db.run(
            f"read the operations of order {merchant_trade_no}",
            self._ops.for_order(merchant_id, merchant_trade_no),
        )

    def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> list[OperationRecord]:
        """The operations a sweeper should look at: an open attempt or an owner (live or lapsed),
        least recently saved first, at most ``limit``; of one merchant, or of all when ``None``.

        Each save renews an owner's lease, so the first ones are those stuck the longest; read
        through a small partial index, never the whole table (R22, R23).
        """
        check_listing(merchant_id, limit)
        return self._db.run("list open operations", self._ops.open_operations(merchant_id, limit))


# -- order locks ----------------------------------------------------------------------------------


class _Handoff(Generic[T]):
    """A blocking call run in a worker thread for an asyncio task that may be cancelled while
    it runs: the result reaches the task, or, if the task stopped waiting, ``abandon`` receives
    it (``None`` if the call failed) in the thread, so nothing it took is left held."""

    def __init__(self, call: Callable[[], T], abandon: Callable[[T | None], None]) -> None:
        self._call = call
        self._abandon = abandon
        self._guard = threading.Lock()
        self._given_up = False
        self._finished = False
        self._result: T | None = None

    def _run(self) -> T | None:
        try:
            result = self._call()
        except BaseException:
            with self._guard:
                if not self._given_up:
                    raise
            self._abandon(None)
            return None
        with self._guard:
            if not self._given_up:
                self._finished, self._result = True, result
                return result
        self._abandon(result)
        return None

    async def result(self) -> T:
        future = asyncio.get_running_loop().run_in_executor(None, self._run)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            with self._guard:
                self._given_up = True
                finished = self._finished
            if finished:  # the call ended just as the task was cancelled
                self._abandon(self._result)
            raise
        return result  # type: ignore[return-value]  # None only reaches an abandoned waiter


def check_order(merchant_id: object, merchant_trade_no: object) -> None:
    check_text(merchant_id=merchant_id, merchant_trade_no=merchant_trade_no)


class PostgresOrderLocks:
    """:class:`~ecpay_lifecycle.OrderLocks` for every thread, asyncio task, process and host that
    uses one database: a session advisory lock per order (docs/ecpay-api.md section 9, order
    serialisation).

    The threads and tasks of this process first queue on a :class:`~ecpay_lifecycle.
    ProcessOrderLocks`; the one in front takes a connection of the lock pool and runs
    ``pg_advisory_lock`` with a stable 64-bit hash of (schema, merchant, order), and keeps that
    connection, idle in autocommit, until it leaves. The server frees the lock when the
    connection ends, however its process died. Tasks (:meth:`ahold`) poll
    ``pg_try_advisory_lock`` from a worker thread without blocking the event loop, and a
    cancelled waiter holds nothing. No transaction is ever open on a lock's connection.
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        self._process = ProcessOrderLocks()

    def __repr__(self) -> str:
        return f"PostgresOrderLocks({self._db.target!r}, schema={self._db.schema!r})"

    def key(self, merchant_id: str, merchant_trade_no: str) -> int:
        """The ``pg_advisory_lock`` key of one order: stable across processes and versions."""
        check_order(merchant_id, merchant_trade_no)
        return advisory_key(self._db.schema, merchant_id, merchant_trade_no)

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        """See :meth:`OrderLocks.hold`: block until this thread holds the order everywhere."""
        key = self.key(merchant_id, merchant_trade_no)
        with self._process.hold(merchant_id, merchant_trade_no):
            pool = self._db.lock_pool()
            connection, _ = self._first(pool, key, merchant_trade_no, wait=True)
            try:
                yield
            finally:
                self._release(pool, connection, key, merchant_trade_no)

    @contextlib.asynccontextmanager
    async def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        """See :meth:`OrderLocks.ahold`: poll for the order without blocking the event loop; a
        cancelled waiter holds nothing."""
        key = self.key(merchant_id, merchant_trade_no)
        async with self._process.ahold(merchant_id, merchant_trade_no):
            pool = self._db.lock_pool()

            def first() -> tuple[Connection, bool]:
                return self._first(pool, key, merchant_trade_no, wait=False)

            def abandon_first(got: tuple[Connection, bool] | None) -> None:
                if got is not None:
                    self._discard(pool, got[0])

            connection: Connection | None
            connection, took = await _Handoff(first, abandon_first).result()
            try:
                wait = FIRST_WAIT
                while not took:
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, LONGEST_WAIT)
                    polling = connection

                    def again(polling: Connection = polling) -> bool:
                        return self._try(polling, key, merchant_trade_no)

                    def abandon(_took: bool | None, polling: Connection = polling) -> None:
                        self._discard(pool, polling)

                    try:
                        took = await _Handoff(again, abandon).result()
                    except asyncio.CancelledError:
                        connection = None  # the thread discards it when its call ends
                        raise
            except BaseException:
                if connection is not None:
                    self._discard(pool, connection)
                raise
            held = connection
            try:
                yield
            finally:
                await _Handoff(
                    lambda: self._release(pool, held, key, merchant_trade_no), lambda _: None
                ).result()

    # -- on a lock connection (in worker threads for ahold) ---------------------------------------

    def _first(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        key: int,
        merchant_trade_no: str,
        *,
        wait: bool,
    ) -> tuple[Connection, bool]:
        """A lock connection and whether it took ``key`` (``wait``: block until it does). A pooled
        connection found dead (the server restarted, the session was ended) is replaced once."""
        doing = f"lock order {merchant_trade_no}"
        sql = "SELECT pg_advisory_lock(%s), true" if wait else "SELECT pg_try_advisory_lock(%s)"
        for retried in (False, True):
            try:
                connection = pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise self._db.no_connection(doing) from exc
            except psycopg_pool.PoolClosed as exc:  # pragma: no cover - close() racing a lock
                raise self._db.closed_error() from exc
            try:
                row = connection.execute(sql, (key,)).fetchone()
            except psycopg.Error as exc:
                self._discard(pool, connection)
                if retried or not connection_lost(exc, connection):
                    raise self._db.error(exc, doing) from exc
                self._db.check(pool)
            except BaseException:
                # Interrupted (KeyboardInterrupt cancels the query): whether the lock was taken
                # is unknown, and ending the session frees it if it was.
                self._discard(pool, connection)
                raise
            else:
                return connection, bool(row and row[-1])
        raise AssertionError("unreachable")  # pragma: no cover

    def _try(self, connection: Connection, key: int, merchant_trade_no: str) -> bool:
        try:
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        except psycopg.Error as exc:
            raise self._db.error(exc, f"lock order {merchant_trade_no}") from exc
        return bool(row and row[0])

    def _release(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        connection: Connection,
        key: int,
        merchant_trade_no: str,
    ) -> None:
        try:
            row = connection.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()
        except psycopg.Error as exc:
            # The connection died while the order was held, and the server freed the lock with
            # it: another holder may have entered. Journal writes stay conditional (R23).
            _log.warning(
                "order %s: the connection holding its advisory lock at %s was lost while held "
                "(%s); the lock was freed by the server then",
                merchant_trade_no,
                self._db.target,
                self._db.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "?"),
            )
            self._discard(pool, connection)
            return
        if not (row and row[0]):  # pragma: no cover - the lock is taken on this very session
            _log.warning("order %s: its advisory lock was not held at release", merchant_trade_no)
        pool.putconn(connection)

    @staticmethod
    def _discard(pool: psycopg_pool.ConnectionPool[Any], connection: Connection) -> None:
        """Close a lock connection (the server frees any lock it holds) and hand it back, so the
        pool opens a fresh one."""
        with contextlib.suppress(Exception):
            connection.close()
        with contextlib.suppress(Exception):
            pool.putconn(connection)


class PostgresLeaseLocks:
    """:class:`~ecpay_lifecycle.OrderLocks` as rows with an expiry, for ``lease_mode=True``: when
    a pooler breaks session locks (PgBouncer in transaction mode), each statement may run on
    another server session, so a lock must be data, not a session's.

    An order's lock is its row in ``order_locks``: inserted, or taken over once its
    ``expires_at`` (by the server's clock) has passed, in one statement; renewed every third of
    ``lease`` seconds by a background thread while held; deleted on exit. A holder that dies, or
    stops for longer than the lease, loses the lock at its expiry (logged if it was still
    inside); journal writes stay conditional on the revision (R23). Waiters poll, threads with
    ``time.sleep``, tasks with ``asyncio.sleep`` from a worker thread, and a cancelled waiter
    holds nothing. The threads and tasks of this process queue on a
    :class:`~ecpay_lifecycle.ProcessOrderLocks` first.
    """

    def __init__(self, database: Database, *, lease: float) -> None:
        self._db = database
        self._lease = lease
        self._process = ProcessOrderLocks()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._serial = 0
        self._serial_guard = threading.Lock()
        self._renewer = _Renewer(self)
        s = database.quoted
        self._sql_take = (
            f"INSERT INTO {s}.order_locks AS l (merchant_id, merchant_trade_no, owner, "
            "expires_at) VALUES (%(merchant_id)s, %(order)s, %(owner)s, clock_timestamp() + "
            "%(lease)s * interval '1 second') ON CONFLICT (merchant_id, merchant_trade_no) DO "
            "UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at "
            "WHERE l.expires_at <= clock_timestamp() OR l.owner = EXCLUDED.owner"
        )
        self._sql_free = (
            f"DELETE FROM {s}.order_locks WHERE merchant_id = %s AND merchant_trade_no = %s "
            "AND owner = %s"
        )
        self._sql_renew = (
            f"UPDATE {s}.order_locks AS l SET expires_at = clock_timestamp() + %s * interval "
            "'1 second' FROM unnest(%s::text[], %s::text[], %s::text[]) AS h(m, o, w) "
            "WHERE l.merchant_id = h.m AND l.merchant_trade_no = h.o AND l.owner = h.w "
            "RETURNING l.merchant_id, l.merchant_trade_no, l.owner"
        )

    def __repr__(self) -> str:
        return (
            f"PostgresLeaseLocks({self._db.target!r}, schema={self._db.schema!r}, "
            f"lease={self._lease})"
        )

    @property
    def lease(self) -> float:
        """Seconds a held lock lasts without renewal: how long a dead holder keeps an order."""
        return self._lease

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        """See :meth:`OrderLocks.hold`: wait (polling) until this thread holds the order's row."""
        check_order(merchant_id, merchant_trade_no)
        with self._process.hold(merchant_id, merchant_trade_no):
            held = (merchant_id, merchant_trade_no, self._next_owner())
            wait = FIRST_WAIT
            while not self._take(held):
                time.sleep(wait)
                wait = min(wait * 2, LONGEST_WAIT)
            self._renewer.add(held)
            try:
                yield
            finally:
                self._free(held)

    @contextlib.asynccontextmanager
    async def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        """See :meth:`OrderLocks.ahold`: poll for the order's row without blocking the event
        loop; a cancelled waiter holds nothing."""
        check_order(merchant_id, merchant_trade_no)
        async with self._process.ahold(merchant_id, merchant_trade_no):
            held = (merchant_id, merchant_trade_no, self._next_owner())
            wait = FIRST_WAIT

            def abandon(took: bool | None) -> None:
                if took:
                    self._free(held)

            while not await _Handoff(lambda: self._take(held), abandon).result():
                await asyncio.sleep(wait)
                wait = min(wait * 2, LONGEST_WAIT)
            self._renewer.add(held)
            try:
                yield
            finally:
                await _Handoff(lambda: self._free(held), lambda _: None).result()

    def stop(self) -> None:
        """Stop renewing (the journal is closing): held rows lapse at their expiry."""
        self._renewer.stop()

    def _next_owner(self) -> str:
        # One owner per hold, so that a hold that lost its row never frees its successor's.
        with self._serial_guard:
            self._serial += 1
            return f"{self._owner}:{self._serial}"

    def _take(self, held: tuple[str, str, str]) -> bool:
        merchant_id, order, owner = held
        parameters: dict[str, object] = {
            "merchant_id": merchant_id,
            "order": order,
            "owner": owner,
            "lease": self._lease,
        }
        # Safe to repeat after a lost connection: taking a row this owner holds renews it.
        taken = self._db.run(
            f"lock order {order}", lambda _: _statement(self._sql_take, parameters)
        )
        return bool(taken.rowcount)

    def _free(self, held: tuple[str, str, str]) -> None:
        self._renewer.discard(held)
        try:
            self._db.run(f"unlock order {held[1]}", lambda _: _statement(self._sql_free, held))
        except JournalError as exc:
            _log.warning("order %s: %s; its lock lapses at its expiry", held[1], exc)

    def renew(self, batch: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """Push the expiry of ``batch`` a lease ahead; return those still held."""
        columns = [list(column) for column in zip(*batch, strict=True)]
        renewed = self._db.run(
            "renew order locks", lambda _: _statement(self._sql_renew, (self._lease, *columns))
        )
        return {(m, o, w) for m, o, w in renewed.rows}


class _Renewer:
    """The thread that renews the lease rows held through one :class:`PostgresLeaseLocks`; it
    runs only while some are held."""

    def __init__(self, locks: PostgresLeaseLocks) -> None:
        self._locks = locks
        self._held: dict[tuple[str, str, str], None] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, held: tuple[str, str, str]) -> None:
        with self._wake:
            self._held[held] = None
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="ecpay-lifecycle-lease-renewer", daemon=True
                )
                self._thread.start()

    def discard(self, held: tuple[str, str, str]) -> None:
        with self._wake:
            self._held.pop(held, None)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait(self._locks.lease / 3)
                if self._stopped or not self._held:
                    self._thread = None
                    return
                batch = list(self._held)
            try:
                kept = self._locks.renew(batch)
            except JournalError as exc:
                _log.warning("could not renew order locks (%s); trying again", exc)
                continue
            with self._wake:
                lost = [held for held in batch if held not in kept and held in self._held]
                for held in lost:
                    del self._held[held]
            for _merchant_id, order, _owner in lost:
                _log.error(
                    "order %s: its lock lapsed while held (the holder stalled past its lease); "
                    "another worker may hold it now",
                    order,
                )


# -- argument checks ------------------------------------------------------------------------------


def _check_int(value: object, name: str, *, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an int, not {type(value).__name__}")
    if value < least:
        raise InvalidArgument(f"{name} must be at least {least}, got {value}")


def _check_seconds(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive number of seconds, got {value}")
