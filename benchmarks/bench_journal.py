"""What a durable journal costs per operation, and how fast the sweeper goes.

Run: ``.venv/bin/python benchmarks/run.py journal``. Two figures, each against a baseline
measured in the same run, on the same disk:

- what ``SQLiteJournal`` adds to a refund through ``Client`` (the same refund with the
  in-memory journal, interleaved; a refund writes three durable commits: the claim, the
  attempt before it is sent, its result with the release) against one bare durable commit of
  one row (``BEGIN IMMEDIATE; INSERT; COMMIT``, WAL, ``synchronous=FULL``); the target is 1 ms
  per operation, next to an ECPay round trip of 50-300 ms;
- the sweeper's rows per second (open attempts resolved by a query) against the same number of
  bare ``Client.query`` calls, both through the in-process emulator.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import pathlib
import sqlite3
import tempfile
import time
from collections.abc import Callable

import httpx

from _util import interleaved
from ecpay_lifecycle import (
    TAIPEI,
    Client,
    Credentials,
    InMemoryJournal,
    OutcomeUnknown,
    SQLiteJournal,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "JournalBenchK016", "JournalBenchI016"
NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)


def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _journal_cost(pathlib.Path(folder), quick)
        _sweeper_rate(pathlib.Path(folder), quick)


def _journal_cost(folder: pathlib.Path, quick: bool) -> None:
    orders = 20 if quick else 200
    bare = sqlite3.connect(folder / "bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=FULL")
    bare.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    body = "x" * 1500  # about the size of a record with a plan and an attempt

    def world(journal: object) -> Callable[[], object]:
        emulator = Emulator(now=NOW, max_events=1000)
        emulator.add_merchant(MID, KEY, IV, balance=10**12)
        client = Client(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
            journal=journal,  # type: ignore[arg-type]
        )
        for n in range(orders):
            emulator.authorize(MID, f"B{n}", 10**6, at=NOW - dt.timedelta(days=1))
            client.refund(f"B{n}", 1)  # each order's kind learned once
        cursor = itertools.count()
        return lambda: client.refund(f"B{next(cursor) % orders}", 1, idempotency_key=None)

    on_disk = world(SQLiteJournal(folder / "bench.db"))
    in_memory = world(InMemoryJournal())

    def bare_commit() -> None:
        bare.execute("BEGIN IMMEDIATE")
        bare.execute("INSERT INTO rows (body) VALUES (?)", (body,))
        bare.execute("COMMIT")

    number, repeat = (5, 3) if quick else (40, 5)
    best = interleaved(
        {"sqlite": on_disk, "memory": in_memory, "bare": bare_commit},
        number=number,
        repeat=repeat,
    )
    journal = max(best["sqlite"] - best["memory"], 0.0)
    commit = best["bare"]
    target = "[ok]" if journal <= 0.001 else "[over: bound by this disk's fsync, see the ratio]"
    print(
        f"  a refund through Client: {best['sqlite'] * 1e3:.2f} ms on SQLiteJournal, "
        f"{best['memory'] * 1e3:.2f} ms in memory; the journal adds {journal * 1e3:.2f} ms "
        f"= {journal / commit:.1f} bare durable commits ({commit * 1e3:.2f} ms each); "
        f"target <= 1 ms {target}"
    )
    bare.close()


def _sweeper_rate(folder: pathlib.Path, quick: bool) -> None:
    rows = 20 if quick else 200
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    client = Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=SQLiteJournal(folder / "sweep.db"),
    )
    orders = [f"S{n}" for n in range(rows)]
    for order in orders:
        emulator.authorize(MID, order, 1000, at=NOW - dt.timedelta(days=1))
        emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
        with contextlib.suppress(OutcomeUnknown):
            client.refund(order, 300, idempotency_key=f"k-{order}")
    emulator.advance(dt.timedelta(minutes=16))  # every fence passed
    start = time.perf_counter()
    report = client.sweep(limit=rows)
    sweep = time.perf_counter() - start
    assert report.resolved == rows, report
    start = time.perf_counter()
    for order in orders:  # the baseline: one bare query per order, as the sweeper's own
        client.query(order)
    queries = time.perf_counter() - start
    print(
        f"  sweeper: {rows / sweep:,.0f} rows/s ({rows} open attempts resolved, SQLite), "
        f"{sweep / queries:.1f}x the same number of bare Client.query calls"
    )
    client.close()
