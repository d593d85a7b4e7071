"""The PostgreSQL journal for asyncio: :class:`AsyncPostgresJournal` (docs/deployment.md).

The same schema, the same statements and the same decisions as :class:`~._postgres.
PostgresJournal` (both run the programs of :class:`~._postgres.Operations`), on psycopg 3's
``AsyncConnection`` and ``psycopg_pool.AsyncConnectionPool``: every journal call is a coroutine
that :class:`~ecpay_lifecycle.AsyncClient` awaits, so a durable write never blocks the event
loop. Each call is one statement or one short transaction, never one kept open across an HTTP
request (style habit 15).

Its order locks (:class:`AsyncPostgresOrderLocks`) are session advisory locks taken on
connections of a second async pool and polled with ``pg_try_advisory_lock`` between
``asyncio.sleep`` calls; a cancelled waiter's connection is closed, so it holds nothing. With
``lease_mode=True`` (a transaction pooler such as PgBouncer) the locks are
:class:`~ecpay_lifecycle.PostgresLeaseLocks` rows, whose short statements run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from ._exceptions import ConfigurationError
from ._journal import Claim, OperationRecord, check_record, check_text
from ._locks import ProcessOrderLocks
from ._models import check_aware
from ._postgres import (
    BEGIN,
    COMMIT,
    FIRST_WAIT,
    LONGEST_WAIT,
    MISSING_DRIVER,
    NOTHING,
    Connection,
    Database,
    Operations,
    PostgresLeaseLocks,
    Program,
    Rows,
    Server,
    T,
    advisory_key,
    check_journal_args,
    check_listing,
    check_order,
    connection_lost,
    describe_connection,
    durable_settings,
    patient_settings,
    prepare_schema,
)

if MISSING_DRIVER is None:
    import psycopg
    import psycopg_pool

__all__ = ["AsyncPostgresJournal", "AsyncPostgresOrderLocks"]


async def _aexecute(connection: Connection, program: Program[T]) -> T:
    """Run ``program`` on an async connection: the twin of :func:`~._postgres._execute`."""
    async with contextlib.AsyncExitStack() as transaction:
        try:
            sql = next(program)
            while True:
                if sql is BEGIN:
                    await transaction.enter_async_context(connection.transaction())
                    rows = NOTHING
                elif sql is COMMIT:
                    await transaction.aclose()
                    rows = NOTHING
                else:
                    cursor = await connection.execute(sql.text, sql.params)
                    found = await cursor.fetchall() if cursor.description is not None else []
                    rows = Rows(cursor.rowcount, found)
                sql = program.send(rows)
        except StopIteration as stop:
            return cast(T, stop.value)


async def _durable(connection: Connection) -> None:
    """See :func:`~._postgres._durable`: the journal's sessions commit durably."""
    await _aexecute(connection, durable_settings())


async def _patient(connection: Connection) -> None:
    """See :func:`~._postgres._patient`: no server timeout ends a lock's session."""
    await connection.execute(patient_settings(connection.info.server_version))


class _AsyncDatabase(Server):
    """The async connections of one journal: opened on first use (or :meth:`open`), the schema
    checked then; every failure becomes a :class:`JournalError`."""

    kind = "AsyncPostgresJournal"

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
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._lock_pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._opening: asyncio.Lock | None = None

    async def open(self) -> None:
        """Connect once, check or create the schema, then start the pool; a second call (or
        one racing it) does nothing."""
        self._check_process()
        if self._closed:
            raise self.closed_error()
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return
            try:
                connection = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
                async with connection:
                    self.target = describe_connection(connection)
                    await _aexecute(connection, prepare_schema(self))
            except psycopg.Error as exc:
                raise self.error(exc, "open the journal") from exc
            self._pool = await self._new_pool("journal", self._min_size, _durable)

    async def _new_pool(
        self, role: str, min_size: int, configure: Callable[[Connection], Any]
    ) -> psycopg_pool.AsyncConnectionPool[Any]:
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            self._conninfo,
            kwargs=self._kwargs,
            min_size=min_size,
            max_size=self._max_size,
            open=False,
            configure=configure,
            timeout=self.timeout,
            name=f"ecpay-lifecycle-async-{role}",
        )
        await pool.open(wait=False)
        return pool

    async def pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        self._check_process()
        if self._closed:
            raise self.closed_error()
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        return self._pool

    async def lock_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        """The advisory locks' own connections (see :meth:`~._postgres.Database.lock_pool`)."""
        await self.pool()
        if self._lock_pool is None:
            # Made without an await between the check and the assignment: one per journal.
            self._lock_pool = psycopg_pool.AsyncConnectionPool(
                self._conninfo,
                kwargs=self._kwargs,
                min_size=0,
                max_size=self._max_size,
                open=False,
                configure=_patient,
                timeout=self.timeout,
                name="ecpay-lifecycle-async-locks",
            )
            await self._lock_pool.open(wait=False)
        return self._lock_pool

    async def run(self, doing: str, program: Callable[[bool], Program[T]]) -> T:
        """See :meth:`~._postgres.Database.run`: a connection found dead is replaced and the
        program runs once more with ``retried=True``."""
        retried = False
        while True:
            pool = await self.pool()
            connection: Connection | None = None
            try:
                async with pool.connection() as connection:
                    return await _aexecute(connection, program(retried))
            except psycopg_pool.PoolTimeout as exc:
                raise self.no_connection(doing) from exc
            except psycopg_pool.PoolClosed as exc:  # pragma: no cover - close() racing a call
                raise self.closed_error() from exc
            except psycopg.Error as exc:
                if retried or not connection_lost(exc, connection):
                    raise self.error(exc, doing) from exc
                retried = True
                await self.check(pool)

    async def check(self, pool: psycopg_pool.AsyncConnectionPool[Any] | None) -> None:
        if pool is not None:
            with contextlib.suppress(psycopg.Error, psycopg_pool.PoolClosed):
                await pool.check()

    async def close(self) -> None:
        self._closed = True
        pools = [p for p in (self._pool, self._lock_pool) if p is not None]
        for pool in pools:
            await pool.close()


class AsyncPostgresJournal:
    """An :class:`~ecpay_lifecycle.AsyncJournal` in PostgreSQL for :class:`~ecpay_lifecycle.
    AsyncClient`: the same tables, statements and promises as :class:`~ecpay_lifecycle.
    PostgresJournal` (the two share one database and schema, so sync and async workers can run
    side by side), with every call a coroutine on psycopg's ``AsyncConnectionPool``.

    Nothing connects in the constructor: ``await journal.open()`` (or ``async with journal``)
    connects, checks or migrates the schema and starts the pool, so a wrong server fails at
    start-up; otherwise the first call does it. The pool belongs to the event loop it was opened
    in: open one journal per loop (in an ASGI app, in its lifespan) and ``await close()`` it at
    the end. The arguments are :class:`~ecpay_lifecycle.PostgresJournal`'s. Its :attr:`locks`
    are awaited (``ahold``); ``hold`` from a thread is refused.
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
        settings: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "lease_mode": lease_mode,
            "schema": schema,
            "timeout": float(timeout),
        }
        self._db = _AsyncDatabase(conninfo, **settings)
        self._lease_mode = lease_mode
        self._lease_db: Database | None = None
        self._locks: AsyncPostgresOrderLocks | PostgresLeaseLocks
        if lease_mode:
            # The lease rows' statements are short and run in worker threads (ahold); their
            # connections are opened on the first lock taken.
            self._lease_db = Database(conninfo, **settings)
            self._locks = PostgresLeaseLocks(self._lease_db, lease=float(lock_lease))
        else:
            self._locks = AsyncPostgresOrderLocks(self._db)
        self._ops = Operations(self._db)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._db.target!r}, schema={self._db.schema!r}, "
            f"lease_mode={self._lease_mode})"
        )

    async def __aenter__(self) -> AsyncPostgresJournal:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the journal's tables."""
        return self._db.schema

    @property
    def locks(self) -> AsyncPostgresOrderLocks | PostgresLeaseLocks:
        """Per-order locks for every task, process and host sharing the database."""
        return self._locks

    async def open(self) -> None:
        """Connect, check or create the schema and start the pool (the first call does it
        otherwise). Raises :class:`~ecpay_lifecycle.JournalError` saying what to fix."""
        await self._db.open()
        if self._lease_db is not None:
            await asyncio.to_thread(self._lease_db.open_once)

    async def close(self) -> None:
        """Close the pools; locks held through this journal are freed. Calls afterwards raise
        :class:`~ecpay_lifecycle.JournalError`."""
        if isinstance(self._locks, PostgresLeaseLocks):
            self._locks.stop()
        if self._lease_db is not None:
            await asyncio.to_thread(self._lease_db.close)
        await self._db.close()

    # -- the AsyncJournal protocol ---------------------------------------------------------------

    async def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """See :meth:`PostgresJournal.claim`."""
        check_record(record)
        check_aware(now, field="now")
        return await self._db.run(f"claim operation {record.key!r}", self._ops.claim(record, now))

    async def save(self, record: OperationRecord) -> OperationRecord:
        """See :meth:`PostgresJournal.save`: committed before this returns (R23)."""
        check_record(record)
        return await self._db.run(f"save operation {record.key!r}", self._ops.save(record))

    async def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """See :meth:`PostgresJournal.get`."""
        check_text(merchant_id=merchant_id, key=key)
        return await self._db.run(f"read operation {key!r}", self._ops.get(merchant_id, key))

    async def for_order(
        self, merchant_id: str, merchant_trade_no: str
    ) -> Sequence[OperationRecord]:
        """See :meth:`PostgresJournal.for_order`."""
        check_text(merchant_id=merchant_id, merchant_trade_no=merchant_trade_no)
        return await self._db.run(
            f"read the operations of order {merchant_trade_no}",
            self._ops.for_order(merchant_id, merchant_trade_no),
        )

    async def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> list[OperationRecord]:
        """See :meth:`PostgresJournal.open_operations`."""
        check_listing(merchant_id, limit)
        return await self._db.run(
            "list open operations", self._ops.open_operations(merchant_id, limit)
        )


class AsyncPostgresOrderLocks:
    """:class:`~ecpay_lifecycle.OrderLocks` of an :class:`AsyncPostgresJournal`: a session
    advisory lock per order, the same key as :class:`~ecpay_lifecycle.PostgresOrderLocks` (so
    sync and async workers exclude each other), taken without blocking the event loop.

    The tasks of this process first queue on a :class:`~ecpay_lifecycle.ProcessOrderLocks`;
    the one in front takes a connection of the lock pool and polls ``pg_try_advisory_lock``
    (1 ms doubling to 25 ms) until the order is its, and keeps the connection idle until it
    leaves. The server frees the lock when the connection ends, however its process died. A
    waiter or holder cancelled mid-statement closes its connection, so it holds nothing.
    """

    def __init__(self, database: _AsyncDatabase) -> None:
        self._db = database
        self._process = ProcessOrderLocks()

    def __repr__(self) -> str:
        return f"AsyncPostgresOrderLocks({self._db.target!r}, schema={self._db.schema!r})"

    def key(self, merchant_id: str, merchant_trade_no: str) -> int:
        """The ``pg_advisory_lock`` key of one order (as :class:`PostgresOrderLocks`)."""
        check_order(merchant_id, merchant_trade_no)
        return advisory_key(self._db.schema, merchant_id, merchant_trade_no)

    def hold(
        self, merchant_id: str, merchant_trade_no: str
    ) -> contextlib.AbstractContextManager[None]:
        """Refused: these locks are awaited. A thread uses :class:`PostgresJournal`'s."""
        check_order(merchant_id, merchant_trade_no)
        raise ConfigurationError(
            "AsyncPostgresJournal's order locks are awaited (ahold) by AsyncClient; for "
            "threads and Client, open a PostgresJournal on the same database"
        )

    @contextlib.asynccontextmanager
    async def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        """See :meth:`OrderLocks.ahold`: hold the order across hosts until the block ends."""
        key = self.key(merchant_id, merchant_trade_no)
        async with self._process.ahold(merchant_id, merchant_trade_no):
            pool = await self._db.lock_pool()
            connection = await self._take(pool, key, merchant_trade_no)
            try:
                yield
            finally:
                await self._release(pool, connection, key, merchant_trade_no)

    async def _take(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], key: int, merchant_trade_no: str
    ) -> Connection:
        """A lock connection holding ``key``. A pooled connection found dead is replaced once."""
        doing = f"lock order {merchant_trade_no}"
        for retried in (False, True):
            try:
                connection = await pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise self._db.no_connection(doing) from exc
            try:
                wait = FIRST_WAIT
                while not await self._try(connection, key):
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, LONGEST_WAIT)
            except psycopg.Error as exc:
                await _discard(pool, connection)
                if retried or not connection_lost(exc, connection):
                    raise self._db.error(exc, doing) from exc
                await self._db.check(pool)
            except BaseException:
                # Cancelled, perhaps mid-statement: whether the lock was taken is unknown, and
                # ending the session frees it if it was.
                await _discard(pool, connection)
                raise
            else:
                return connection
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _try(connection: Connection, key: int) -> bool:
        cursor = await connection.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _release(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        connection: Connection,
        key: int,
        merchant_trade_no: str,
    ) -> None:
        try:
            await connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.Error as exc:
            # The connection died while held, and the server freed the lock with it. Journal
            # writes stay conditional (R23).
            _log_lost(merchant_trade_no, self._db, exc)
            await _discard(pool, connection)
        except BaseException:
            await _discard(pool, connection)
            raise
        else:
            await pool.putconn(connection)


async def _discard(pool: psycopg_pool.AsyncConnectionPool[Any], connection: Connection) -> None:
    """Close a lock connection (the server frees any lock it holds) and hand it back; shielded,
    so a second cancellation cannot leave it open."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            await connection.close()
        with contextlib.suppress(Exception):
            await pool.putconn(connection)

    await asyncio.shield(close())


def _log_lost(merchant_trade_no: str, server: Server, exc: BaseException) -> None:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "?"
    logging.getLogger("ecpay_lifecycle").warning(
        "order %s: the connection holding its advisory lock at %s was lost while held (%s); "
        "the lock was freed by the server then",
        merchant_trade_no,
        server.target,
        server.scrub(text),
    )
