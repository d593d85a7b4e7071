"""AsyncPostgresJournal on a real PostgreSQL (tests/_pg.py): AsyncClient awaits every journal
call, many tasks and a sync worker share one database, locks are cancellation-safe, and bad input
is a typed error.

The journal contract itself runs against this store in tests/core/test_journal.py
(``postgres-async``);
eight OS processes with AsyncClient on it are in tests/client/test_workers.py.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from _pg import free_port
from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    AsyncPostgresJournal,
    AsyncPostgresOrderLocks,
    Client,
    ConfigurationError,
    Credentials,
    EcpayError,
    InvalidArgument,
    InvalidArgumentType,
    JournalError,
    OutcomeUnknown,
    PostgresJournal,
    PostgresLeaseLocks,
    Verdict,
)
from ecpay_lifecycle._postgres import SCHEMA_VERSION
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "AsyncPostgresK16", "AsyncPostgresI16"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
PASSWORD = "apg-hunter2-secret"
PATIENCE = 30.0


@pytest.fixture
def schema() -> str:
    return f"async_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    return emulator


def settled(emulator: Emulator, order: str, amount: int = 1000) -> None:
    emulator.authorize(MID, order, amount, at=emulator.now - dt.timedelta(days=1))


def refunds(emulator: Emulator, order: str) -> list[int]:
    return [
        e.amount or 0 for e in emulator.applied_do_actions(MID, order) if e.action is Action.REFUND
    ]


def client(emulator: Emulator, journal: Any) -> AsyncClient:
    return AsyncClient(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.async_handler),
        clock=emulator.clock,
        journal=journal,
    )


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, PATIENCE))


# -- money through AsyncClient ---------------------------------------------------------------


def test_a_refund_is_journaled_and_replayed(
    postgres_dsn: str,
    schema: str,
    emulator: Emulator,
) -> None:
    settled(emulator, "A1")

    async def scenario() -> tuple[Any, Any, Any]:
        async with (
            AsyncPostgresJournal(postgres_dsn, schema=schema) as journal,
            client(emulator, journal) as shop,
        ):
            first = await shop.refund("A1", 300, idempotency_key="k1")
            again = await shop.refund("A1", 300, idempotency_key="k1")
            records = await journal.for_order(MID, "A1")
        return first, again, records

    first, again, records = run(scenario())
    assert (first.replayed, again.replayed) == (False, True)
    assert refunds(emulator, "A1") == [300]
    assert [(r.key, r.owner, r.open_attempt) for r in records] == [("k1", None, None)]


def test_many_tasks_with_one_key_refund_once(
    postgres_dsn: str,
    schema: str,
    emulator: Emulator,
) -> None:
    settled(emulator, "T1")

    async def scenario() -> list[object]:
        async with AsyncPostgresJournal(postgres_dsn, schema=schema, max_size=4) as journal:
            shops = [client(emulator, journal) for _ in range(3)]
            calls = [shops[n % 3].refund("T1", 300, idempotency_key="same") for n in range(12)]
            answers = await asyncio.gather(*calls, return_exceptions=True)
            for shop in shops:
                await shop.aclose()
        return answers

    answers = run(scenario())
    told = collections.Counter(
        type(a).__name__ if isinstance(a, BaseException) else ("replayed" if a.replayed else "ok")  # type: ignore[attr-defined]
        for a in answers
    )
    assert told["ok"] == 1, answers
    assert set(told) <= {"ok", "replayed", "OperationInProgress"}, told
    assert refunds(emulator, "T1") == [300]


def test_async_and_sync_workers_share_one_journal_and_one_lock(
    postgres_dsn: str,
    schema: str,
    emulator: Emulator,
) -> None:
    """A sync Client on PostgresJournal and an AsyncClient on AsyncPostgresJournal, the same
    database and schema: the same key replays across them, and their order locks are one."""
    settled(emulator, "S1")
    sync_journal = PostgresJournal(postgres_dsn, schema=schema)
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=sync_journal,
    ) as shop:
        shop.refund("S1", 200, idempotency_key="cross")

    async def scenario() -> tuple[bool, list[str]]:
        order: list[str] = []
        async with AsyncPostgresJournal(postgres_dsn, schema=schema) as journal:
            async with client(emulator, journal) as shop:
                replayed = (await shop.refund("S1", 200, idempotency_key="cross")).replayed
            locks = journal.locks
            assert isinstance(locks, AsyncPostgresOrderLocks)
            assert locks.key(MID, "S1") == sync_journal.locks.key(MID, "S1")  # type: ignore[union-attr]
            held = threading.Event()
            release = threading.Event()

            def sync_holder() -> None:
                with sync_journal.locks.hold(MID, "S1"):
                    order.append("sync in")
                    held.set()
                    release.wait(PATIENCE)
                    order.append("sync out")

            thread = threading.Thread(target=sync_holder, daemon=True)
            thread.start()
            await asyncio.to_thread(held.wait, PATIENCE)
            waiting = asyncio.create_task(_enter(locks, order))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # the async holder waits for the sync one
            release.set()
            await waiting
            await asyncio.to_thread(thread.join, PATIENCE)
        return replayed, order

    replayed, order = run(scenario())
    sync_journal.close()
    assert replayed
    assert refunds(emulator, "S1") == [200]
    assert order == ["sync in", "sync out", "async in"]


async def _enter(locks: AsyncPostgresOrderLocks, order: list[str]) -> None:
    async with locks.ahold(MID, "S1"):
        order.append("async in")


def test_a_sweep_resolves_through_an_async_journal(
    postgres_dsn: str,
    schema: str,
    emulator: Emulator,
) -> None:
    """A lost reply leaves an open attempt; after the fence the async sweeper resolves it by a
    query (showing progress), sends no DoAction, and the same key then replays."""
    settled(emulator, "W1")
    progress: list[tuple[int, int, str]] = []

    async def scenario() -> tuple[Any, Any, bool]:
        async with (
            AsyncPostgresJournal(postgres_dsn, schema=schema) as journal,
            client(emulator, journal) as shop,
        ):
            emulator.faults.inject(
                Fault.LATE_APPLY, endpoint=Endpoint.DO_ACTION, merchant_trade_no="W1"
            )
            with pytest.raises(OutcomeUnknown):
                await shop.refund("W1", 100, idempotency_key="w")
            early = await shop.sweep()
            emulator.advance(dt.timedelta(minutes=16))
            done = await shop.sweep(progress=lambda *told: progress.append(told))
            replayed = (await shop.refund("W1", 100, idempotency_key="w")).replayed
        return early, done, replayed

    early, done, replayed = run(scenario())
    assert early.still_unknown == 1
    assert [r.resolutions[0].verdict for r in done.reconciled] == [Verdict.DONE]
    assert progress == [(1, 1, "W1")]
    assert replayed
    assert refunds(emulator, "W1") == [100]


# -- locks -------------------------------------------------------------------------------------


def test_a_cancelled_waiter_holds_nothing(postgres_dsn: str, schema: str) -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        async with AsyncPostgresJournal(postgres_dsn, schema=schema) as journal:
            locks = journal.locks
            async with locks.ahold(MID, "L1"):
                waiter = asyncio.create_task(_hold_briefly(locks, seen, "cancelled"))
                await asyncio.sleep(0.1)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            # Free at once for the next holder, in this journal and in another one.
            async with AsyncPostgresJournal(postgres_dsn, schema=schema) as other:
                await asyncio.wait_for(_hold_briefly(other.locks, seen, "other"), 5)
            await asyncio.wait_for(_hold_briefly(locks, seen, "next"), 5)
        return seen

    assert run(scenario()) == ["other", "next"]


async def _hold_briefly(locks: Any, seen: list[str], name: str) -> None:
    async with locks.ahold(MID, "L1"):
        seen.append(name)


def test_hold_from_a_thread_is_refused(postgres_dsn: str, schema: str) -> None:
    journal = AsyncPostgresJournal(postgres_dsn, schema=schema)
    with pytest.raises(ConfigurationError, match="PostgresJournal"):
        journal.locks.hold(MID, "L1")


def test_lease_mode_locks_exclude_across_journals(
    postgres_dsn: str,
    schema: str,
) -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        async with (
            AsyncPostgresJournal(postgres_dsn, schema=schema, lease_mode=True) as one,
            AsyncPostgresJournal(postgres_dsn, schema=schema, lease_mode=True) as two,
        ):
            assert isinstance(one.locks, PostgresLeaseLocks)
            async with one.locks.ahold(MID, "L2"):
                seen.append("one in")
                waiter = asyncio.create_task(_lease_enter(two, seen))
                await asyncio.sleep(0.2)
                assert not waiter.done()
                seen.append("one out")
            await asyncio.wait_for(waiter, 5)
        return seen

    assert run(scenario()) == ["one in", "one out", "two in"]


async def _lease_enter(journal: AsyncPostgresJournal, seen: list[str]) -> None:
    async with journal.locks.ahold(MID, "L2"):
        seen.append("two in")


# -- bad input -----------------------------------------------------------------------------------


def test_client_refuses_the_async_journal(postgres_dsn: str, schema: str) -> None:
    journal = AsyncPostgresJournal(postgres_dsn, schema=schema)
    with pytest.raises(ConfigurationError, match="AsyncClient"):
        Client(Credentials(MID, KEY, IV), journal=journal)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"conninfo": 5}, InvalidArgumentType),
        ({"schema": "Bad-Name"}, InvalidArgument),
        ({"max_size": 0}, InvalidArgument),
        ({"timeout": -1}, InvalidArgument),
        ({"lease_mode": "yes"}, InvalidArgumentType),
        ({"conninfo": f"host=127.0.0.1 password={PASSWORD} =broken"}, InvalidArgument),
    ],
)
def test_bad_arguments_are_typed_errors_before_anything_connects(
    arguments: dict[str, Any], error: type[EcpayError]
) -> None:
    values: dict[str, Any] = {"conninfo": "host=127.0.0.1", **arguments}
    with pytest.raises(error) as caught:
        AsyncPostgresJournal(**values)
    assert PASSWORD not in str(caught.value)


def test_a_refused_connection_is_a_journal_error_without_the_password() -> None:
    conninfo = f"host=127.0.0.1 port={free_port()} dbname=shop user=shop password={PASSWORD}"
    journal = AsyncPostgresJournal(conninfo, timeout=2)
    assert PASSWORD not in repr(journal)
    with pytest.raises(JournalError) as caught:
        run(journal.open())
    message = str(caught.value)
    assert "AsyncPostgresJournal could not open the journal at host=127.0.0.1" in message
    assert "check that the server is up and reachable" in message
    assert PASSWORD not in message


def test_a_newer_schema_is_refused_untouched(
    postgres_dsn: str,
    schema: str,
) -> None:
    PostgresJournal(postgres_dsn, schema=schema).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f'UPDATE "{schema}".schema_version SET version = %s', (SCHEMA_VERSION + 1,))

    async def scenario() -> None:
        async with AsyncPostgresJournal(postgres_dsn, schema=schema):
            pass

    with pytest.raises(JournalError, match="Upgrade ecpay-lifecycle"):
        run(scenario())
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        row = admin.execute(f'SELECT version FROM "{schema}".schema_version').fetchone()
    assert row == (SCHEMA_VERSION + 1,)


def test_a_closed_journal_refuses_calls(postgres_dsn: str, schema: str) -> None:
    async def scenario() -> None:
        journal = AsyncPostgresJournal(postgres_dsn, schema=schema)
        await journal.open()
        await journal.close()
        with pytest.raises(JournalError, match="is closed"):
            await journal.get(MID, "k1")

    run(scenario())


def test_a_dropped_connection_is_replaced(postgres_dsn: str, schema: str) -> None:
    async def scenario() -> int:
        async with AsyncPostgresJournal(
            postgres_dsn, schema=schema, min_size=1, max_size=1
        ) as journal:
            assert await journal.for_order(MID, "D1") == []
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                    "WHERE application_name = 'ecpay-lifecycle' AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                ).fetchone()
            assert await journal.for_order(MID, "D1") == []
        return int(ended[0]) if ended else 0

    assert run(scenario()) >= 1


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    # Lease renewers stop with their journal; nothing else is started by these tests.
    assert threading.active_count() <= before + 2
