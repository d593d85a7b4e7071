"""What a durable journal costs per operation, and how fast the sweeper goes.

Run: ``.venv/bin/python benchmarks/run.py journal``. Two figures, each against a baseline
measured in the same run, on the same disk:

- the journal work of one refund on ``SQLiteJournal`` (a claim and the four saves a refund
  makes: plan, sending, done, release) against one bare durable commit of one row
  (``BEGIN IMMEDIATE; INSERT; COMMIT``, WAL, ``synchronous=FULL``); the target is 1 ms per
  operation, next to an ECPay round trip of 50-300 ms;
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

import attrs
import httpx

from _util import interleaved
from ecpay_lifecycle import (
    TAIPEI,
    AttemptRecord,
    AttemptStatus,
    Client,
    Credentials,
    Intent,
    OperationRecord,
    OperationStatus,
    OutcomeUnknown,
    SQLiteJournal,
)
from ecpay_lifecycle._models import Action
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "JournalBenchK016", "JournalBenchI016"
NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)


def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _journal_cost(pathlib.Path(folder), quick)
        _sweeper_rate(pathlib.Path(folder), quick)


def _journal_cost(folder: pathlib.Path, quick: bool) -> None:
    journal = SQLiteJournal(folder / "bench.db")
    bare = sqlite3.connect(folder / "bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=FULL")
    bare.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    body = "x" * 1500  # about the size of a record with a plan and an attempt
    keys = itertools.count()
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV)
    emulator.authorize(MID, "A1", 1000)
    before = emulator.snapshot(MID, "A1")

    def one_operation() -> None:
        key = f"k{next(keys)}"
        fresh = OperationRecord(
            merchant_id=MID,
            key=key,
            caller_key=True,
            merchant_trade_no="A1",
            request="refund amount=300 capture_first=False",
            intent=Intent.REFUND,
            status=OperationStatus.RUNNING,
            started_at=NOW,
            updated_at=NOW,
            owner="bench",
            lease_until=NOW + dt.timedelta(minutes=2),
        )
        record = journal.claim(fresh, now=NOW).record
        record = journal.save(attrs.evolve(record, before=before))
        attempt = AttemptRecord(
            index=0,
            attempt=1,
            action=Action.REFUND,
            amount=300,
            trade_no=before.trade_no,
            before=before,
            step=None,
            status=AttemptStatus.SENDING,
            at=NOW,
        )
        record = journal.save(attrs.evolve(record, attempts=(attempt,)))
        done = attrs.evolve(attempt, status=AttemptStatus.DONE, rtn_code=1)
        record = journal.save(
            attrs.evolve(record, attempts=(done,), status=OperationStatus.SUCCEEDED)
        )
        journal.save(attrs.evolve(record, owner=None, lease_until=None))

    def bare_commit() -> None:
        bare.execute("BEGIN IMMEDIATE")
        bare.execute("INSERT INTO rows (body) VALUES (?)", (body,))
        bare.execute("COMMIT")

    number, repeat = (5, 3) if quick else (50, 5)
    best = interleaved(
        {"journal": one_operation, "bare": bare_commit}, number=number, repeat=repeat
    )
    per_op, per_commit = best["journal"], best["bare"]
    target = "[ok]" if per_op <= 0.001 else "[over: this disk's fsync, see the ratio]"
    print(
        f"  SQLiteJournal, one refund's journal work (claim + 4 saves): {per_op * 1e3:.2f} ms "
        f"= {per_op / per_commit:.1f}x one bare durable commit ({per_commit * 1e3:.2f} ms); "
        f"target <= 1 ms {target}"
    )
    journal.close()
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
