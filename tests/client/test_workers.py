"""Several OS processes on one durable journal, and workers killed with ``kill -9`` (issue 9).

Each worker is its own Python process (``tests/_refund_worker.py``) with a ``Client`` on a
shared journal, an ``SQLiteJournal`` file or a ``PostgresJournal`` on the throwaway server (every
test runs on both), against the emulator served over real HTTP in this process. Money
is counted on the emulator's books (``applied_do_actions``), never on a worker's word.

- 8 processes refund the same order under the same key at the same moment: one application;
  the others are told the operation is in progress, or get the replayed outcome;
- 8 processes refund one order under different keys whose amounts add up to more than the
  capture: the applications never exceed it, every process gets a typed answer, no order is
  left locked;
- ``kill -9`` at each point of a refund (before the attempt is recorded, after it is recorded
  and before sending, after sending and before the reply, after the reply and before it is
  recorded), 50 trials across the points: after a restart, the sweeper past the fence and a
  retry of the same key, exactly one application, and the journal agrees with the books; and
  8 more trials with an ``AsyncClient`` over its default transport (the exchange path of
  ``AsyncStreamTransport``) as the killed worker.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ecpay_lifecycle import TAIPEI, Action, AttemptStatus
from ecpay_lifecycle._ops import open_journal
from ecpay_lifecycle.emulator import Emulator, serving

MID = "3002607"
KEY, IV = "WorkerTestKey016", "WorkerTestIv0016"
WORKER = pathlib.Path(__file__).resolve().parents[1] / "_refund_worker.py"
POINTS = ("before_record", "after_record", "after_send", "before_result")
TRIALS = int(os.environ.get("ECPAY_KILL_TRIALS", "50"))
LONGEST = 30.0


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """Where every worker keeps its journal: a SQLite file, or a PostgreSQL URL (own schema)."""
    if request.param == "sqlite":
        return str(tmp_path / "ecpay.db")
    return fresh_database(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def postgres_url(postgres_dsn: str) -> str:
    return fresh_database(postgres_dsn)


def fresh_database(dsn: str) -> str:
    """The URL of a new database on the throwaway server."""
    parts = dict(item.split("=", 1) for item in dsn.split())
    # A fresh database per test keeps the tests apart (the schema is the library's own).
    name = f"w{os.getpid()}_{time.monotonic_ns()}"
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{name}"


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    # ECPay's time is the emulator's, away from the 20:15 window whatever the wall clock says;
    # each worker's clock is the system's plus the offset to it (``offset``).
    emulator = Emulator(now=dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI))
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    with serving(emulator) as url:
        yield emulator, url


class Worker:
    def __init__(self, url: str, journal: str, order: str, amount: int, key: str, *flags: str):
        self.emulator_offset = 0.0
        self.process = subprocess.Popen(  # our own worker script
            [sys.executable, str(WORKER), url, journal, order, str(amount), key, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.line() == "ready"

    def line(self) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], LONGEST)
        assert ready, "the worker said nothing in time"
        return stdout.readline().strip()

    def go(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write("go\n")
        stdin.flush()

    def answer(self) -> dict[str, object]:
        text = self.line()
        self.process.wait(timeout=LONGEST)
        self.close()
        answer: dict[str, object] = json.loads(text)
        return answer

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=LONGEST)
        self.close()

    def close(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


def offset(emulator: Emulator) -> str:
    """Seconds from the system clock to ECPay's (the emulator's clock is moved by the test)."""
    return str((emulator.now - dt.datetime.now(dt.UTC)).total_seconds())


def settled(emulator: Emulator, order: str, amount: int = 1000) -> None:
    emulator.authorize(MID, order, amount, at=emulator.now - dt.timedelta(days=1))


def refunds(emulator: Emulator, order: str) -> list[int]:
    return [
        e.amount or 0 for e in emulator.applied_do_actions(MID, order) if e.action is Action.REFUND
    ]


def test_eight_processes_with_the_same_key_refund_once(
    served: tuple[Emulator, str], journal: str
) -> None:
    emulator, url = served
    settled(emulator, "SAME1")
    workers = [Worker(url, journal, "SAME1", 300, "k-same", offset(emulator)) for _ in range(8)]
    for worker in workers:
        worker.go()
    answers = [worker.answer() for worker in workers]
    fresh = [a for a in answers if a.get("outcome") == "ok" and not a.get("replayed")]
    told = collections.Counter(
        "replayed" if a.get("replayed") else str(a.get("error", "ok")) for a in answers
    )
    assert len(fresh) == 1, answers
    assert set(told) <= {"ok", "replayed", "OperationInProgress"}, told
    assert refunds(emulator, "SAME1") == [300]
    store = open_journal(journal)
    assert [r.owner for r in store.for_order(MID, "SAME1")] == [None]
    store.close()  # type: ignore[attr-defined]


def test_eight_async_processes_with_the_same_key_refund_once(
    served: tuple[Emulator, str], postgres_url: str
) -> None:
    """The same with AsyncClient on AsyncPostgresJournal in each process."""
    emulator, url = served
    settled(emulator, "ASYNC1")
    workers = [
        Worker(url, postgres_url, "ASYNC1", 300, "k-async", offset(emulator), "--async")
        for _ in range(8)
    ]
    for worker in workers:
        worker.go()
    answers = [worker.answer() for worker in workers]
    fresh = [a for a in answers if a.get("outcome") == "ok" and not a.get("replayed")]
    told = {"replayed" if a.get("replayed") else str(a.get("error", "ok")) for a in answers}
    assert len(fresh) == 1, answers
    assert told <= {"ok", "replayed", "OperationInProgress"}, told
    assert refunds(emulator, "ASYNC1") == [300]


def test_eight_async_processes_with_different_keys_never_refund_more_than_was_captured(
    served: tuple[Emulator, str], postgres_url: str
) -> None:
    emulator, url = served
    settled(emulator, "ASYNC2", 1000)
    workers = [
        Worker(url, postgres_url, "ASYNC2", 300, f"k-{n}", offset(emulator), "--async")
        for n in range(8)
    ]
    for worker in workers:
        worker.go()
    answers = [worker.answer() for worker in workers]
    assert len([a for a in answers if a.get("outcome") == "ok"]) == 3
    assert {a.get("error") for a in answers if a.get("outcome") == "error"} == {
        "RefundExceedsCaptured"
    }, answers
    assert sum(refunds(emulator, "ASYNC2")) == 900
    store = open_journal(postgres_url)
    records = store.for_order(MID, "ASYNC2")
    store.close()  # type: ignore[attr-defined]
    assert all(r.open_attempt is None and r.owner is None for r in records)


def test_eight_processes_with_different_keys_never_refund_more_than_was_captured(
    served: tuple[Emulator, str], journal: str
) -> None:
    emulator, url = served
    settled(emulator, "MANY1", 1000)
    workers = [Worker(url, journal, "MANY1", 300, f"k-{n}", offset(emulator)) for n in range(8)]
    for worker in workers:
        worker.go()
    answers = [worker.answer() for worker in workers]
    done = [a for a in answers if a.get("outcome") == "ok"]
    refused = [a for a in answers if a.get("outcome") == "error"]
    assert len(done) == 3  # 3 x 300 of 1,000; the rest is refused by R10
    assert {a["error"] for a in refused} == {"RefundExceedsCaptured"}, refused
    assert sum(refunds(emulator, "MANY1")) == 900
    store = open_journal(journal)
    records = store.for_order(MID, "MANY1")
    store.close()  # type: ignore[attr-defined]
    assert all(r.open_attempt is None and r.owner is None for r in records)


def outside_the_batch_window(emulator: Emulator) -> None:
    local = emulator.now.astimezone(TAIPEI)
    if dt.time(20, 0) <= local.time() < dt.time(20, 46):
        emulator.set_time(local.replace(hour=20, minute=46))


def kill_trials(
    emulator: Emulator, url: str, journal: str, trials: int, *flags: str
) -> dict[str, int]:
    """``trials`` workers (``flags`` passed on) each killed with ``kill -9`` at a point of a
    refund, round the points; after each, past the lease and the fence, a worker sweeps and the
    shop retries the key. Every refund is applied exactly once on the emulator's books, and
    its record ends done, unlocked and unowned. Returns how each ended."""
    store = open_journal(journal)
    seen: collections.Counter[str] = collections.Counter()
    for trial in range(trials):
        point = POINTS[trial % len(POINTS)]
        order = f"KILL{'A' if flags else ''}{trial}"
        key = f"k-{order}"
        settled(emulator, order)
        dying = Worker(url, journal, order, 300, key, offset(emulator), *flags, "--die-at", point)
        dying.go()
        assert dying.line() == f"dying {point}"
        dying.kill()
        # The restart: past the lease and the fence, sweep, then the shop retries the key.
        emulator.advance(dt.timedelta(minutes=16))
        outside_the_batch_window(emulator)
        restarted = Worker(url, journal, order, 300, key, offset(emulator), "--sweep")
        restarted.go()
        answer = restarted.answer()
        assert answer["outcome"] == "ok", (point, answer)
        assert refunds(emulator, order) == [300], (point, refunds(emulator, order))
        (record,) = store.for_order(MID, order)
        done = [a for a in record.attempts if a.status is AttemptStatus.DONE]
        assert [(a.action, a.amount) for a in done] == [(Action.REFUND, 300)], point
        assert record.open_attempt is None
        assert record.owner is None
        seen[f"{point}: {'replayed' if answer['replayed'] else 'sent after the restart'}"] += 1
    store.close()  # type: ignore[attr-defined]
    return dict(sorted(seen.items()))


def test_a_worker_killed_at_any_point_of_a_refund_refunds_exactly_once(
    served: tuple[Emulator, str], journal: str
) -> None:
    emulator, url = served
    started = time.monotonic()
    seen = kill_trials(emulator, url, journal, TRIALS)
    print(  # the figures the closing note quotes
        f"\nkill -9 ({'postgresql' if '://' in journal else 'sqlite'}): {TRIALS} trials in "
        f"{time.monotonic() - started:.0f} s, one application each; {seen}"
    )


def test_an_async_worker_killed_at_any_point_over_the_exchange_path_refunds_exactly_once(
    served: tuple[Emulator, str], journal: str
) -> None:
    """The same with AsyncClient over its default transport: its DoActions go out through
    AsyncStreamTransport.exchange, and ``after_send`` dies with ECPay's reply in hand."""
    emulator, url = served
    seen = kill_trials(emulator, url, journal, 2 * len(POINTS), "--async")
    assert sum(seen.values()) == 2 * len(POINTS)
