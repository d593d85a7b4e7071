"""A separate OS process for tests/client/test_sqlite_journal.py:
``python _sqlite_worker.py COMMAND ...``.

Each command prints ``ready`` once it has opened the journal, and (where it races others) waits
for a line on stdin before acting, so the test can start many processes at the same moment.
Every wait is bounded, so a lost test never leaves a process behind for long.

- ``open DB``: open (and so create or migrate) the journal; print ``opened``.
- ``claim DB KEY OWNER``: claim KEY as OWNER; print the claim's status.
- ``count DB COUNTER N``: N times, under the order lock: read COUNTER, pause, write it + 1.
- ``hold DB ORDER``: take the order's lock, print ``held``, then sleep until killed (30 s cap).
- ``probe DB ORDER``: print ``free`` if the order's lock can be taken within 0.2 s, else ``held``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import sys
import time

from ecpay_lifecycle import TAIPEI, Intent, OperationRecord, OperationStatus
from ecpay_lifecycle._sqlite import SQLiteJournal

MID = "3002607"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
MAX_SECONDS = 30.0


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def wait_for_go() -> None:
    # The parent writes one line; EOF (the parent died) also ends the wait.
    sys.stdin.readline()


def open_journal(path: str) -> None:
    say("ready")
    wait_for_go()
    SQLiteJournal(path).close()
    say("opened")


def claim(path: str, key: str, owner: str) -> None:
    journal = SQLiteJournal(path)
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
        owner=owner,
        lease_until=NOW + dt.timedelta(minutes=2),
    )
    say("ready")
    wait_for_go()
    say(str(journal.claim(fresh, now=NOW).status))


def count(path: str, counter: str, times: str) -> None:
    locks = SQLiteJournal(path).locks
    file = pathlib.Path(counter)
    say("ready")
    wait_for_go()
    for _ in range(int(times)):
        with locks.hold(MID, "A1"):
            value = int(file.read_text())
            time.sleep(0.0005)  # widen the window a lost update would need
            file.write_text(str(value + 1))
    say("done")


def hold(path: str, order: str) -> None:
    locks = SQLiteJournal(path).locks
    with locks.hold(MID, order):
        say("held")
        time.sleep(MAX_SECONDS)


def probe(path: str, order: str) -> None:
    locks = SQLiteJournal(path).locks

    async def attempt() -> str:
        try:
            async with asyncio.timeout(0.2), locks.ahold(MID, order):
                return "free"
        except TimeoutError:
            return "held"

    say(asyncio.run(attempt()))


COMMANDS = {"open": open_journal, "claim": claim, "count": count, "hold": hold, "probe": probe}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
