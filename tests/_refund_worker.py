"""A shop worker as its own OS process, for tests/client/test_workers.py.

``python _refund_worker.py URL JOURNAL ORDER AMOUNT KEY OFFSET [--die-at POINT] [--sweep]``

It builds a ``Client`` on ``JOURNAL`` (a SQLite file, or a ``postgresql://`` URL) against the
emulator served at ``URL``, with a clock ``OFFSET`` seconds ahead of the system's (so the test can
move ECPay's time past a fence), prints ``ready``, waits for a line on stdin (so many workers
start at once), optionally sweeps, then refunds ``AMOUNT`` TWD of ``ORDER`` under ``KEY`` and
prints one JSON line: what it was told.

``--async`` runs an ``AsyncClient`` on an ``AsyncPostgresJournal`` (``JOURNAL`` is then a
``postgresql://`` URL) instead; with ``--die-at`` too, an ``AsyncClient`` over its default
transport (``AsyncStreamTransport``'s exchange path) on the journal ``JOURNAL`` names.

``--die-at`` stops at one point of the refund, prints ``dying POINT`` and sleeps until killed:
``before_record`` (the attempt is not written yet), ``after_record`` (written, not sent),
``after_send`` (ECPay applied it; the reply never reaches the client), ``before_result`` (the
reply arrived; its result is not written). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from typing import Any

import httpx

from ecpay_lifecycle import (
    AsyncClient,
    AsyncPostgresJournal,
    AttemptStatus,
    Client,
    Credentials,
    EcpayError,
    Journal,
    OperationRecord,
)
from ecpay_lifecycle._journal import JournalWrapper
from ecpay_lifecycle._ops import open_journal
from ecpay_lifecycle._transport import AsyncStreamTransport, Route

MID = "3002607"
KEY, IV = "WorkerTestKey016", "WorkerTestIv0016"
LONGEST = 60.0


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def die(point: str) -> None:
    say(f"dying {point}")
    time.sleep(LONGEST)  # the test kills us long before
    sys.exit(9)


class Dying(JournalWrapper):
    """The worker's journal, which stops the process at ``point``."""

    def __init__(self, journal: Journal, point: str | None) -> None:
        super().__init__(journal)
        self._point = point

    def save(self, record: OperationRecord) -> OperationRecord:
        last = record.attempts[-1] if record.attempts else None
        sending = last is not None and last.status is AttemptStatus.SENDING
        if sending and self._point == "before_record":
            die("before_record")
        done = last is not None and last.status is AttemptStatus.DONE
        if done and self._point == "before_result":
            die("before_result")
        stored = super().save(record)
        if sending and self._point == "after_record":
            die("after_record")
        return stored


class Transport(httpx.HTTPTransport):
    def __init__(self, point: str | None) -> None:
        super().__init__()
        self._point = point

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self._point == "after_send" and request.url.path.endswith("/Credit/DoAction"):
            response.read()
            die("after_send")
        return response


class DyingStream(AsyncStreamTransport):
    """AsyncClient's default transport, which stops the process once a DoAction's reply has
    arrived (``after_send``): ECPay applied it, the client never learns it."""

    def __init__(self, point: str | None) -> None:
        super().__init__()
        self._point = point

    async def exchange(self, route: Route, content: bytes) -> tuple[int, bytes]:
        answer = await super().exchange(route, content)
        if self._point == "after_send" and route.request.url.path.endswith("/Credit/DoAction"):
            die("after_send")
        return answer


def main(argv: list[str]) -> int:
    url, journal_spec, order, amount, key, offset = argv[:6]
    flags = argv[6:]
    point = flags[flags.index("--die-at") + 1] if "--die-at" in flags else None
    shift = dt.timedelta(seconds=float(offset))

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.UTC) + shift

    if "--async" in flags and point is not None:
        return asyncio.run(
            run_dying_async(url, journal_spec, order, int(amount), key, clock, point)
        )
    if "--async" in flags:
        return asyncio.run(run_async(url, journal_spec, order, int(amount), key, clock))
    journal = Dying(open_journal(journal_spec), point)
    client = Client(
        Credentials(MID, KEY, IV),
        base_url=url,
        transport=Transport(point),
        clock=clock,
        journal=journal,
        timeout=5.0,
    )
    say("ready")
    sys.stdin.readline()
    answer: dict[str, Any] = {}
    try:
        if "--sweep" in flags:
            report = client.sweep()
            answer["swept"] = report.resolved
        outcome = client.refund(order, int(amount), idempotency_key=key)
        answer.update(outcome="ok", replayed=outcome.replayed, refunded=outcome.refunded)
    except EcpayError as error:
        answer.update(outcome="error", error=type(error).__name__, message=str(error))
    finally:
        client.close()
    say(json.dumps(answer))
    return 0


async def run_async(url: str, conninfo: str, order: str, amount: int, key: str, clock: Any) -> int:
    answer: dict[str, Any] = {}
    async with (
        AsyncPostgresJournal(conninfo) as journal,
        AsyncClient(
            Credentials(MID, KEY, IV), base_url=url, clock=clock, journal=journal, timeout=5.0
        ) as client,
    ):
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        try:
            outcome = await client.refund(order, amount, idempotency_key=key)
            answer.update(outcome="ok", replayed=outcome.replayed, refunded=outcome.refunded)
        except EcpayError as error:
            answer.update(outcome="error", error=type(error).__name__, message=str(error))
    say(json.dumps(answer))
    return 0


async def run_dying_async(
    url: str, journal_spec: str, order: str, amount: int, key: str, clock: Any, point: str
) -> int:
    """An AsyncClient over its default transport that dies at ``point`` (it never answers)."""
    async with AsyncClient(
        Credentials(MID, KEY, IV),
        base_url=url,
        transport=DyingStream(point),
        clock=clock,
        journal=Dying(open_journal(journal_spec), point),
        timeout=5.0,
    ) as client:
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        await client.refund(order, amount, idempotency_key=key)
    raise SystemExit(f"the refund ended without reaching {point}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
