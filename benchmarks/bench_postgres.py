"""What ``PostgresJournal`` costs per refund, and how it holds up under 8 worker processes.

Run: ``.venv/bin/python benchmarks/run.py postgres``. It starts a throwaway PostgreSQL cluster
(``_pg.py``: ``initdb`` and ``pg_ctl`` on a free port of 127.0.0.1, durable settings left on:
``fsync``, ``synchronous_commit``). Without one it prints a skip line saying why; with
``CI=true`` it fails instead. Figures, each against a baseline measured in the same run:

- **the journal's work per refund.** One refund through ``Client`` on ``PostgresJournal`` (the
  in-process emulator, each refund on a fresh order whose kind and TradeNo are known, so two
  requests: a query and the DoAction) against the same refund on ``InMemoryJournal``,
  interleaved with one bare durable commit of one row (an autocommit ``INSERT`` of 1,500
  characters) on a connection with the journal's settings (TCP to 127.0.0.1, autocommit,
  ``synchronous_commit`` on). The journal's calls of one refund (claims, order lock, read,
  saves), recorded from a real refund and replayed on a fresh key and order, are timed too. The
  statements the server ran for one refund are counted from its own log (``log_statement =
  'all'`` in a database of their own), so the round trips are the server's count, not ours.
  Target: the journal adds at most 5 ms per refund (an ECPay round trip is 50-300 ms);
- **8 workers on one PostgreSQL.** 8 OS processes (``multiprocessing``, spawn), each with its
  own ``PostgresJournal`` on the same database, refund distinct orders; ops/s with 1 worker and
  with 8, interleaved round by round. Two shapes: (1) an in-process emulator per worker, so the
  only thing the workers share is PostgreSQL (and the CPU): the journal's contention, beside the
  same workers on ``InMemoryJournal`` (nothing shared: what this CPU allows); (2) one emulator
  served over HTTP on 127.0.0.1 in this process (as ``tests/client/test_workers.py`` does), the
  deployment's shape, where that one emulator process is also shared. Applications counted on
  the emulators' books must equal the refunds made, and do (asserted). The CPU a refund took
  (the workers', PostgreSQL's processes') and how busy the machine's cores were are printed
  too: on a small machine they, not the journal's locks, decide the ratio;
- **a same-key burst**: 8 processes refund one order under one key at the same moment, against
  the served emulator: exactly one application on its books (asserted), each round.

Every loop is bounded in count and in time (``budget`` seconds a phase, ``LONGEST`` a reply).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import multiprocessing
import multiprocessing.connection
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import httpx

import _pg
from _util import interleaved
from ecpay_lifecycle import (
    TAIPEI,
    Claim,
    Client,
    Credentials,
    EcpayError,
    InMemoryJournal,
    OperationRecord,
    PaymentKind,
    PostgresJournal,
)
from ecpay_lifecycle.emulator import Emulator, serving

MID = "3002607"
KEY, IV = "PgBenchHashKey16", "PgBenchHashIv016"
NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)
TARGET_MS = 5.0
WORKERS = 8
LONGEST = 60.0  # seconds any one reply of a worker may take before the bench gives up
BODY = "x" * 1500  # about the size of a record with a plan and an attempt
BUSY = 0.75  # a phase using this share of the machine's CPU or more is bound by it


@attrs.frozen
class _Mode:
    """How many of what each phase does; quick mode proves it runs, full mode gives figures."""

    number: int  # (a) calls per round per function
    repeat: int  # (a) rounds
    ops: int  # (b) refunds per worker per phase, at most
    budget: float  # (b) seconds per phase, at most
    rounds: int  # (b) rounds of 1 worker then 8
    bursts: int  # (c) same-key bursts


QUICK = _Mode(number=5, repeat=3, ops=12, budget=3.0, rounds=1, bursts=2)
FULL = _Mode(number=40, repeat=5, ops=150, budget=15.0, rounds=3, bursts=10)


def main(quick: bool) -> None:
    mode = QUICK if quick else FULL
    try:
        cluster = _pg.start_cluster()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            raise RuntimeError(f"CI needs PostgreSQL for the PostgreSQL benchmarks: {exc}") from exc
        print(f"  skipped: PostgreSQL is not available ({exc}); {_pg.HOW_TO_ENABLE}")
        return
    try:
        print(
            f"  PostgreSQL {cluster.version}, a throwaway cluster on 127.0.0.1 with fsync and "
            "synchronous_commit on; orientation figures are this machine's"
        )
        _journal_cost(cluster, mode)
        _workers(cluster, mode)
    finally:
        cluster.stop()


def _credentials() -> Credentials:
    return Credentials(MID, KEY, IV)


def _settled(emulator: Emulator, order: str, amount: int = 10**6) -> str:
    """Authorize ``order`` a day ago (settled by the batch since) and return its TradeNo."""
    return emulator.authorize(MID, order, amount, at=NOW - dt.timedelta(days=1))


# -- (a) the journal's work per refund -----------------------------------------------------------


class _RecordingLocks:
    """The journal's order locks, noting where a refund takes and frees an order."""

    def __init__(self, locks: Any, calls: list[tuple[str, OperationRecord | None]]) -> None:
        self._locks = locks
        self._calls = calls

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        self._calls.append(("lock", None))
        with self._locks.hold(merchant_id, merchant_trade_no):
            yield
        self._calls.append(("unlock", None))


class _Recording(PostgresJournal):
    """A ``PostgresJournal`` that keeps the calls a refund makes, in order: what each claim and
    save was given, where it read an order's records and where it held the order's lock."""

    calls: list[tuple[str, OperationRecord | None]]

    @property
    def locks(self) -> Any:
        return _RecordingLocks(super().locks, self.calls)

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        self.calls.append(("claim", record))
        return super().claim(record, now=now)

    def save(self, record: OperationRecord) -> OperationRecord:
        self.calls.append(("save", record))
        return super().save(record)

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        self.calls.append(("for_order", None))
        return super().for_order(merchant_id, merchant_trade_no)


def _world(journal: object, orders: int, prefix: str) -> tuple[Client, Callable[[], object]]:
    """A client on ``journal`` against its own emulator, and a refund of 1 TWD on the next of
    ``orders`` fresh settled orders whose kind and TradeNo the shop knows (query, DoAction);
    ``prefix`` keeps their numbers apart from other worlds' in the same database."""
    emulator = Emulator(now=NOW, max_events=1000)
    emulator.add_merchant(MID, KEY, IV, balance=10**12)
    client = Client(
        _credentials(),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,  # type: ignore[arg-type]
    )
    trades = [(f"{prefix}{n}", _settled(emulator, f"{prefix}{n}")) for n in range(orders)]
    cursor = iter(trades)

    def refund() -> object:
        order, trade_no = next(cursor)
        return client.refund(order, 1, kind=PaymentKind.ONE_TIME, trade_no=trade_no)

    return client, refund


def _short(statement: str) -> str:
    """A logged statement as a few words: ``INSERT``, ``SELECT FOR UPDATE``, ``advisory_lock``."""
    text = " ".join(statement.split())
    head = text.split(" ", 1)[0].upper()
    if "advisory_unlock" in text:
        return "advisory_unlock"
    if "advisory_lock" in text:
        return "advisory_lock"
    if head == "SELECT" and text.endswith("FOR UPDATE"):
        return "SELECT FOR UPDATE"
    return head


def _count_round_trips(cluster: _pg.Cluster) -> tuple[list[str], list[str]]:
    """One warmed-up refund on a database that logs every statement: the journal's calls, in
    order, and the statements the server ran for them."""
    cluster.create_database("counted", log_statements=True)
    journal = _Recording(cluster.dsn("counted"))
    journal.calls = []
    client, refund = _world(journal, 3, "C")
    try:
        refund()
        refund()  # the lock pool's first connection is opened and configured by now
        journal.calls.clear()
        with cluster.count_statements() as logged:
            refund()
            # Each statement is logged as it starts, before its result is sent: all are in
            # the file once the refund returns.
            statements = logged()
        calls = [kind for kind, _ in journal.calls]
    finally:
        client.close()
        journal.close()
    return calls, [_short(s) for s in statements]


def _recorded_replay(dsn: str) -> tuple[PostgresJournal, Callable[[], None]]:
    """One real refund's journal calls, recorded, and a function replaying them on a fresh key
    and order each time: the journal's work alone (encoding, SQL, round trips, commits, the
    order's advisory lock), without the client and the emulator around it."""
    recording = _Recording(dsn)
    recording.calls = []
    recorder, recorded_refund = _world(recording, 2, "A")
    recorded_refund()
    recording.calls.clear()
    recorded_refund()
    recorded = list(recording.calls)
    recorder.close()
    recording.close()
    journal = PostgresJournal(dsn)
    fresh = itertools.count()

    def replay() -> None:
        order = f"R{next(fresh)}"
        key = f"replay-{order}"
        with contextlib.ExitStack() as held:
            for kind, record in recorded:
                if kind == "lock":
                    held.enter_context(journal.locks.hold(MID, order))
                elif kind == "unlock":
                    held.close()
                elif kind == "for_order":
                    journal.for_order(MID, order)
                elif kind == "claim" and record is not None:
                    fresh_record = attrs.evolve(record, key=key, merchant_trade_no=order)
                    journal.claim(fresh_record, now=record.updated_at)
                elif record is not None:
                    journal.save(attrs.evolve(record, key=key, merchant_trade_no=order))

    return journal, replay


def _journal_cost(cluster: _pg.Cluster, mode: _Mode) -> None:
    import psycopg  # present: the cluster started

    calls, statements = _count_round_trips(cluster)
    writes = sum(1 for kind in calls if kind in ("claim", "save"))
    print(
        f"  one refund on PostgresJournal: journal calls {', '.join(calls)} ({writes} durable "
        f"writes); {len(statements)} statements (round trips) on the server, in order: "
        f"{', '.join(statements)}"
    )
    cluster.create_database("bench")
    dsn = cluster.dsn("bench")
    # The journal's connection settings: TCP to 127.0.0.1, autocommit, synchronous_commit on.
    bare = psycopg.connect(dsn, autocommit=True, application_name="ecpay-lifecycle-bench")
    bare.execute(
        "CREATE TABLE bare_rows (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "body text NOT NULL)"
    )
    replay_journal, replay = _recorded_replay(dsn)
    pg_journal = PostgresJournal(dsn)
    pg_client, on_postgres = _world(pg_journal, mode.number * mode.repeat + 1, "P")
    memory_client, in_memory = _world(InMemoryJournal(), mode.number * mode.repeat + 1, "M")
    cpu: dict[str, float] = collections.defaultdict(float)

    def on_cpu(name: str, call: Callable[[], object]) -> Callable[[], None]:
        """``call``, adding the CPU seconds it takes in this process to ``cpu[name]``."""

        def timed() -> None:
            start = time.process_time()
            call()
            cpu[name] += time.process_time() - start

        return timed

    try:
        on_postgres()  # warm: the pools' connections are open and configured
        in_memory()
        best = interleaved(
            {
                "replay": replay,
                "postgres": on_cpu("postgres", on_postgres),
                "memory": on_cpu("memory", in_memory),
                "bare": lambda: bare.execute("INSERT INTO bare_rows (body) VALUES (%s)", (BODY,)),
                "round trip": lambda: bare.execute("SELECT 1").fetchone(),
            },
            number=mode.number,
            repeat=mode.repeat,
        )
    finally:
        pg_client.close()
        memory_client.close()
        pg_journal.close()
        replay_journal.close()
        bare.close()
    calls_made = mode.number * mode.repeat
    _print_cost(best, writes, len(statements))
    own = (cpu["postgres"] - cpu["memory"]) / calls_made
    print(
        f"  this process's CPU per refund (mean): {cpu['postgres'] / calls_made * 1e3:.2f} ms on "
        f"PostgresJournal, {cpu['memory'] / calls_made * 1e3:.2f} ms on InMemoryJournal: "
        f"the journal costs this process {own * 1e3:.2f} ms of CPU a refund (psycopg and its "
        "socket calls, JSON, records; the socket calls are in the floor's round trips too)"
    )


def _print_cost(best: dict[str, float], writes: int, trips: int) -> None:
    commit, trip, journal = best["bare"], best["round trip"], best["replay"]
    added = max(best["postgres"] - best["memory"], 0.0)
    # What the journal's round trips cost at the least: its commits as bare commits, the rest
    # as bare round trips.
    floor = writes * commit + (trips - writes) * trip
    print(
        f"  a bare durable commit of one row: {commit * 1e3:.2f} ms; a bare round trip "
        f"(SELECT 1): {trip * 1e3:.3f} ms; so {writes} commits and {trips - writes} more round "
        f"trips cost at least {floor * 1e3:.2f} ms"
    )
    print(
        f"  the journal calls of one refund, replayed: {journal * 1e3:.2f} ms = "
        f"{journal / commit:.1f} bare durable commits = {journal / floor:.2f}x that floor; "
        f"{journal / writes * 1e3:.2f} ms per write = {journal / (writes * commit):.2f}x a bare "
        "commit"
    )
    print(
        f"  a whole refund through Client: {best['postgres'] * 1e3:.2f} ms on PostgresJournal, "
        f"{best['memory'] * 1e3:.2f} ms on InMemoryJournal: the journal adds "
        f"{added * 1e3:.2f} ms = {added / commit:.1f} bare durable commits = "
        f"{added / floor:.2f}x the floor; {added / writes * 1e3:.2f} ms per write = "
        f"{added / (writes * commit):.2f}x a bare commit"
    )
    if added * 1e3 <= TARGET_MS:
        verdict = "[ok]"
    elif floor * 1e3 > TARGET_MS:
        verdict = (
            f"[over, and impossible on this disk now: its fsync makes the floor "
            f"{floor * 1e3:.2f} ms before any work; the journal is {added / floor:.2f}x it]"
        )
    else:
        verdict = f"[OVER TARGET: {added / floor:.2f}x the floor]"
    print(
        f"  per operation (target <= {TARGET_MS:g} ms added): {added * 1e3:.2f} ms end to end, "
        f"{journal * 1e3:.2f} ms of journal calls {verdict}"
    )


# -- (b) and (c) worker processes ------------------------------------------------------------------


@attrs.frozen
class _Report:
    """What one worker says after a phase. Times are CLOCK_MONOTONIC (``time.monotonic``), one
    clock for every process of the host; ``cpu`` is the worker's own CPU seconds in the phase."""

    made: int
    started: float
    ended: float
    cpu: float
    errors: dict[str, int]
    applied: int  # applications on this worker's own emulator's books (0 when served)
    answers: tuple[str, ...]  # same-key bursts: "fresh", "replayed" or the error's name


@attrs.frozen
class _Phase:
    """One phase seen from here: refunds per second over the wall time from the first worker's
    start to the last one's end, the CPU it took per refund, by whom, and how busy the whole
    machine was (kernel threads flushing the disk, and anything else running, included)."""

    made: int
    wall: float
    worker_cpu: float
    server_cpu: float | None  # PostgreSQL's processes; None where /proc is missing
    own_cpu: float  # this process: the served emulator's thread
    busy: float | None  # share of all cores not idle during the phase; None without /proc

    @property
    def rate(self) -> float:
        return self.made / self.wall

    def per_refund(self, seconds: float | None) -> str:
        return "?" if seconds is None else f"{seconds / self.made * 1e3:.1f} ms"

    def busy_text(self) -> str:
        return "?" if self.busy is None else f"{self.busy:.0%}"


def _machine_cpu() -> tuple[int, int] | None:
    """Jiffies of all cores so far, (busy, total), from ``/proc/stat``; ``None`` without it."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(f) for f in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _worker(conn: multiprocessing.connection.Connection, url: str, journal_url: str) -> None:
    """One shop worker (a spawned process): its own ``PostgresJournal`` on the shared database,
    an in-process emulator of its own, and a client of the served emulator. It answers the
    parent's commands (tuples) on ``conn`` until told to stop or the parent goes quiet."""
    journal = PostgresJournal(journal_url)
    emulator = Emulator(now=NOW, max_events=None)
    emulator.add_merchant(MID, KEY, IV, balance=10**12)
    local = {
        name: Client(
            _credentials(),
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
            journal=store,
        )
        for name, store in (("postgres", journal), ("memory", InMemoryJournal()))
    }
    shift = [dt.timedelta(0)]  # from the system's clock to the served emulator's
    served = Client(
        _credentials(),
        base_url=url,
        clock=lambda: dt.datetime.now(dt.UTC) + shift[0],
        journal=journal,
        timeout=10.0,
    )
    clients = {**local, "served": served}
    conn.send("ready")
    name, orders, key = "postgres", list[tuple[str, str | None]](), None
    try:
        while conn.poll(LONGEST * 4):  # a parent quiet for this long is gone
            command = conn.recv()
            if command[0] == "stop":
                break
            if command[0] == "prepare":
                _, name, orders, key, offset = command
                shift[0] = dt.timedelta(seconds=offset)
                if name in local:  # settle them on this worker's own emulator
                    orders = [(order, _settled(emulator, order)) for order, _ in orders]
                conn.send("prepared")
            elif command[0] == "go":
                report = _run(clients[name], orders, key, budget=command[1])
                if name in local:
                    mine = {order for order, _ in orders}
                    applied = emulator.applied_do_actions(MID)
                    report = attrs.evolve(
                        report, applied=sum(1 for e in applied if e.merchant_trade_no in mine)
                    )
                conn.send(report)
    finally:
        for client in clients.values():
            client.close()
        journal.close()


def _run(
    client: Client, orders: list[tuple[str, str | None]], key: str | None, *, budget: float
) -> _Report:
    """Refund 1 TWD of each order (or, under a shared ``key``, 300 TWD of the one order) until
    the orders or ``budget`` seconds run out."""
    made, errors, answers = 0, collections.Counter[str](), []
    cpu = time.process_time()
    started = time.monotonic()
    for order, trade_no in orders:
        if time.monotonic() - started > budget:
            break
        try:
            if key is not None:
                outcome = client.refund(order, 300, idempotency_key=key)
                answers.append("replayed" if outcome.replayed else "fresh")
            else:
                client.refund(order, 1, kind=PaymentKind.ONE_TIME, trade_no=trade_no)
            made += 1
        except EcpayError as error:
            errors[type(error).__name__] += 1
            answers.append(type(error).__name__)
    ended = time.monotonic()
    return _Report(
        made=made,
        started=started,
        ended=ended,
        cpu=time.process_time() - cpu,
        errors=dict(errors),
        applied=0,
        answers=tuple(answers),
    )


class _Workers:
    """The worker processes and their pipes; every wait for a reply is bounded."""

    def __init__(self, count: int, url: str, journal_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        try:
            for _ in range(count):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker, args=(child, url, journal_url), daemon=True
                )
                process.start()
                child.close()
                self.pipes.append(parent)
                self.processes.append(process)
            for n in range(count):
                assert self.reply(n) == "ready"
        except BaseException:
            self.close()
            raise

    def reply(self, n: int, wait: float = LONGEST) -> Any:
        """Worker n's next message, within ``wait`` seconds; a worker that died says so."""
        deadline = time.monotonic() + wait
        while not self.pipes[n].poll(0.2):
            if not self.processes[n].is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker {n} said nothing in time (exit code {self.processes[n].exitcode})"
                )
        return self.pipes[n].recv()

    def phase(
        self,
        name: str,
        work: Sequence[list[tuple[str, str | None]]],
        *,
        budget: float,
        key: str | None = None,
        offset: float = 0.0,
    ) -> list[_Report]:
        """Give worker n ``work[n]``, start them together, and return their reports."""
        for n, orders in enumerate(work):
            self.pipes[n].send(("prepare", name, orders, key, offset))
        for n in range(len(work)):
            assert self.reply(n) == "prepared"
        for n in range(len(work)):
            self.pipes[n].send(("go", budget))
        return [self.reply(n, budget + LONGEST) for n in range(len(work))]

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():  # our own child, by its handle
                process.terminate()
                process.join(timeout=10)
        for pipe in self.pipes:
            pipe.close()


def _workers(cluster: _pg.Cluster, mode: _Mode) -> None:
    cluster.create_database("workers")
    emulator = Emulator(now=NOW, max_events=None)
    emulator.add_merchant(MID, KEY, IV, balance=10**12)
    serial = itertools.count()
    best: dict[str, _Phase] = {}
    counted = 0

    def orders(count: int, prefix: str) -> list[list[tuple[str, str | None]]]:
        """Distinct orders for ``count`` workers, ``mode.ops`` each; settled here when served."""
        work = [[f"{prefix}{next(serial)}" for _ in range(mode.ops)] for _ in range(count)]
        if prefix == "H":
            return [[(order, _settled(emulator, order)) for order in w] for w in work]
        return [[(order, None) for order in w] for w in work]

    def offset() -> float:
        return (emulator.now - dt.datetime.now(dt.UTC)).total_seconds()

    started = time.monotonic()
    with serving(emulator) as url:
        pool = _Workers(WORKERS, url, cluster.url("workers"))
        try:
            spawned = time.monotonic() - started
            for name in ("postgres", "memory"):  # warm every worker (pools, statements)
                pool.phase(name, [w[:3] for w in orders(WORKERS, "W")], budget=mode.budget)
            for _ in range(mode.rounds):
                for count in (1, WORKERS):
                    for name in ("postgres", "memory", "served"):
                        if name == "memory" and count == 1:
                            continue  # the ceiling needs only the 8-worker figure
                        work = orders(count, "H" if name == "served" else "L")
                        phase = _measure(
                            pool, cluster, emulator, name, work, mode=mode, offset=offset()
                        )
                        counted += phase.made
                        label = f"{name}/{count}"
                        if label not in best or phase.rate > best[label].rate:
                            best[label] = phase
            bursts = _same_key_bursts(pool, emulator, mode, offset)
        finally:
            pool.close()
    print(
        f"  {WORKERS} worker processes (spawned in {spawned:.1f} s), each its own PostgresJournal "
        f"on one database, distinct orders; best of {mode.rounds} round(s) of at most "
        f"{mode.ops} refunds or {mode.budget:g} s a worker; on the books, every phase: "
        f"applications = refunds made (asserted; {counted:,} refunds in all)"
    )
    _print_workers(best)
    print(bursts)


def _measure(
    pool: _Workers,
    cluster: _pg.Cluster,
    emulator: Emulator,
    name: str,
    work: list[list[tuple[str, str | None]]],
    *,
    mode: _Mode,
    offset: float,
) -> _Phase:
    """Run one phase and check it on the books: no refund failed, and the applications the
    emulator(s) counted on the phase's orders equal the refunds made."""
    server, own, machine = cluster.server_cpu(), time.process_time(), _machine_cpu()
    reports = pool.phase(name, work, budget=mode.budget, offset=offset)
    server_after, own_after, machine_after = (
        cluster.server_cpu(),
        time.process_time(),
        _machine_cpu(),
    )
    errors = collections.Counter[str]()
    for report in reports:
        errors.update(report.errors)
    assert not errors, (name, len(work), dict(errors))
    phase = _Phase(
        made=sum(r.made for r in reports),
        wall=max(r.ended for r in reports) - min(r.started for r in reports),
        worker_cpu=sum(r.cpu for r in reports),
        server_cpu=None if server is None or server_after is None else server_after - server,
        own_cpu=own_after - own,
        busy=None
        if machine is None or machine_after is None or machine_after[1] == machine[1]
        else (machine_after[0] - machine[0]) / (machine_after[1] - machine[1]),
    )
    if name == "served":
        given = {order for w in work for order, _ in w}
        applied = sum(1 for e in emulator.applied_do_actions(MID) if e.merchant_trade_no in given)
    else:
        applied = sum(r.applied for r in reports)
    assert applied == phase.made, (name, len(work), applied, phase.made)
    return phase


def _print_workers(best: dict[str, _Phase]) -> None:
    one, eight = best["postgres/1"], best[f"postgres/{WORKERS}"]
    http1, http8 = best["served/1"], best[f"served/{WORKERS}"]
    ceiling = best[f"memory/{WORKERS}"]
    cores = os.cpu_count() or 1
    print(
        f"  in-process emulator per worker (only PostgreSQL shared): 1 worker {one.rate:,.0f} "
        f"refunds/s, {WORKERS} workers {eight.rate:,.0f}/s = {eight.rate / one.rate:.2f}x; the "
        f"same {WORKERS} workers on InMemoryJournal (nothing shared) {ceiling.rate:,.0f}/s, so "
        f"PostgreSQL at {WORKERS} workers gives {eight.rate / ceiling.rate:.0%} of it"
    )
    if eight.busy is None:
        bound = ""
    elif eight.busy >= BUSY:
        bound = f": {WORKERS} workers are bound by the CPU here"
    else:
        bound = f": {WORKERS} workers wait more than they compute here (disk flushes, round trips)"
    print(
        f"  CPU per refund at {WORKERS} workers: {eight.per_refund(eight.worker_cpu)} in the "
        f"workers ({one.per_refund(one.worker_cpu)} with 1 worker, "
        f"{ceiling.per_refund(ceiling.worker_cpu)} on InMemoryJournal), "
        f"{eight.per_refund(eight.server_cpu)} in PostgreSQL's processes; the machine's "
        f"{cores} cores were {eight.busy_text()} busy ({one.busy_text()} with 1 worker){bound}"
    )
    print(
        f"  one emulator served over HTTP (shared too): 1 worker {http1.rate:,.0f} refunds/s, "
        f"{WORKERS} workers {http8.rate:,.0f}/s = {http8.rate / http1.rate:.2f}x (busy "
        f"{http8.busy_text()}; the emulator's process {http8.per_refund(http8.own_cpu)} a refund)"
    )


def _same_key_bursts(
    pool: _Workers, emulator: Emulator, mode: _Mode, offset: Callable[[], float]
) -> str:
    """``mode.bursts`` rounds of 8 processes refunding one order under one key at once: exactly
    one application each round, every other process told so (replayed, or in progress)."""
    told: collections.Counter[str] = collections.Counter()
    times = []
    for n in range(mode.bursts):
        order = f"SAME{n}"
        _settled(emulator, order, 1000)
        work: list[list[tuple[str, str | None]]] = [[(order, None)] for _ in range(WORKERS)]
        reports = pool.phase("served", work, budget=mode.budget, key=f"k-{order}", offset=offset())
        answers = [answer for r in reports for answer in r.answers]
        applied = [e.amount for e in emulator.applied_do_actions(MID, order)]
        assert applied == [300], (order, applied, answers)
        assert answers.count("fresh") == 1, answers
        assert set(answers) <= {"fresh", "replayed", "OperationInProgress"}, answers
        told.update(answers)
        times.append(max(r.ended for r in reports) - min(r.started for r in reports))
    return (
        f"  same-key burst, {WORKERS} processes, one order, one key, served emulator: "
        f"{mode.bursts} rounds, 1 application each (asserted); answers "
        f"{dict(sorted(told.items()))}; median burst {statistics.median(times) * 1e3:.0f} ms"
    )
