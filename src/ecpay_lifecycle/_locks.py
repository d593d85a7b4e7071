"""Per-order locks: money movements on one order run one at a time (docs/ecpay-api.md section 9).

:class:`OrderLocks` is the small protocol a journal brings with it (``journal.locks``), so every
client that shares a journal also shares its locks: the in-memory journal brings
:class:`ProcessOrderLocks` (threads and asyncio tasks of this process, any event loop); a durable
store brings locks that work across processes and that the store frees when a holder dies.
A lock is held across the HTTP calls of one operation, never inside a database transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Final, Protocol, runtime_checkable

import attrs

__all__ = ["OrderLocks", "ProcessOrderLocks"]

# Polling bounds for an asyncio task waiting on a lock another thread or loop may hold: short
# enough that a hand-off costs little next to an ECPay round trip (50-300 ms), long enough not
# to spin.
_FIRST_WAIT: Final = 0.0005
_LONGEST_WAIT: Final = 0.01


@runtime_checkable
class OrderLocks(Protocol):
    """One lock per order, for threads (:meth:`hold`) and asyncio tasks (:meth:`ahold`)."""

    def hold(self, merchant_id: str, merchant_trade_no: str) -> AbstractContextManager[None]:
        """Block until the order's lock is this caller's; release it on exit."""

    def ahold(self, merchant_id: str, merchant_trade_no: str) -> AbstractAsyncContextManager[None]:
        """Await the order's lock without blocking the event loop; release it on exit."""


@attrs.define
class _Entry:
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    users: int = 0


class ProcessOrderLocks:
    """:class:`OrderLocks` for one process: a ``threading.Lock`` per order while it is in use.

    Threads block on it; asyncio tasks poll it with a short backoff, so tasks on different event
    loops (or a task and a thread) exclude each other too, and a cancelled waiter holds nothing.
    An entry exists only while someone holds or waits for it.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ProcessOrderLocks({len(self._entries)} in use)"

    def _enter(self, key: tuple[str, str]) -> _Entry:
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
            return entry

    def _leave(self, key: tuple[str, str], entry: _Entry) -> None:
        with self._guard:
            entry.users -= 1
            if not entry.users:
                del self._entries[key]

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        """See :meth:`OrderLocks.hold`."""
        key = (merchant_id, merchant_trade_no)
        entry = self._enter(key)
        try:
            with entry.lock:
                yield
        finally:
            self._leave(key, entry)

    @contextlib.asynccontextmanager
    async def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        """See :meth:`OrderLocks.ahold`."""
        key = (merchant_id, merchant_trade_no)
        entry = self._enter(key)
        try:
            wait = _FIRST_WAIT
            while not entry.lock.acquire(blocking=False):
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LONGEST_WAIT)
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            self._leave(key, entry)
