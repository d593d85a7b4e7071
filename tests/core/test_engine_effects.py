"""The engine makes no I/O of its own: every journal call is an effect its shell carries out.

A flow that called a generator (a journal write such as ``run.save``) without ``yield from``
would silently skip the write; these checks read the engine's source for that mistake, and
drive flows by hand to show each journal call passes through the shell.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import inspect
from pathlib import Path
from typing import Any

import httpx
import pytest

import ecpay_lifecycle
from ecpay_lifecycle import (
    TAIPEI,
    AsyncClient,
    Client,
    ConfigurationError,
    Credentials,
    InMemoryJournal,
)
from ecpay_lifecycle._engine import JournalCall
from ecpay_lifecycle._journal import JournalWrapper
from ecpay_lifecycle.emulator import Emulator

ENGINE = Path(inspect.getfile(ecpay_lifecycle)).parent / "_engine.py"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
MID = "3002607"
KEY, IV = "EffectsKey000016", "EffectsIv0000016"


def _emulator() -> tuple[Emulator, str]:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "E1", 1000)
    emulator.advance(dt.timedelta(days=1))  # the capture settles: R is the plan
    return emulator, "E1"


def _discarded_generator_calls(source: str) -> list[str]:
    tree = ast.parse(source)
    generators = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(node))
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in generators:
                found.append(f"line {node.lineno}: {name}(...) is never run")
    return found


def test_no_flow_step_is_called_without_yield_from() -> None:
    assert _discarded_generator_calls(ENGINE.read_text(encoding="utf-8")) == []


def test_the_check_finds_a_skipped_write() -> None:
    source = (
        "def save(self):\n    yield 1\n\n"
        "def flow(run):\n    run.save()\n    yield from run.save()\n"
    )
    assert _discarded_generator_calls(source) == ["line 5: save(...) is never run"]


def test_the_engine_never_touches_the_journal_itself() -> None:
    source = ENGINE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    touched = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr in {"journal", "_journal"}
    ]
    assert touched == []


class CountingJournal(JournalWrapper):
    def __init__(self) -> None:
        super().__init__(InMemoryJournal())
        self.calls: list[str] = []

    def claim(self, record: Any, *, now: dt.datetime) -> Any:
        self.calls.append("claim")
        return super().claim(record, now=now)

    def save(self, record: Any) -> Any:
        self.calls.append("save")
        return super().save(record)

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Any:
        self.calls.append("for_order")
        return super().for_order(merchant_id, merchant_trade_no)


def _refund_with(journal: Any) -> tuple[int, list[str]]:
    emulator, order = _emulator()
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,
    ) as client:
        client.refund(order, 300, idempotency_key="k1")
    return len(emulator.applied_do_actions()), journal.calls


def test_a_refund_makes_its_journal_calls_through_the_shell() -> None:
    applied, calls = _refund_with(CountingJournal())
    assert applied == 1
    # Claim, reclaim under the order's lock, the order's records, the attempt, the result.
    assert calls == ["claim", "claim", "for_order", "save", "save"]


def test_client_refuses_an_asynchronous_journal() -> None:
    class AsyncOnly(InMemoryJournal):
        async def claim(self, record: Any, *, now: dt.datetime) -> Any:  # type: ignore[override]
            return super().claim(record, now=now)

    with pytest.raises(ConfigurationError, match="AsyncClient"):
        Client(Credentials(MID, KEY, IV), journal=AsyncOnly())


def test_async_client_awaits_an_asynchronous_journal_and_yields_the_loop() -> None:
    """Each journal call of an async journal is awaited: other tasks run between them."""

    class SlowAsync:
        def __init__(self) -> None:
            self.inner = InMemoryJournal()
            self.locks = self.inner.locks
            self.awaited = 0

        async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
            self.awaited += 1
            await asyncio.sleep(0.001)
            return getattr(self.inner, name)(*args, **kwargs)

        async def claim(self, record: Any, *, now: dt.datetime) -> Any:
            return await self._call("claim", record, now=now)

        async def save(self, record: Any) -> Any:
            return await self._call("save", record)

        async def get(self, merchant_id: str, key: str) -> Any:
            return await self._call("get", merchant_id, key)

        async def for_order(self, merchant_id: str, merchant_trade_no: str) -> Any:
            return await self._call("for_order", merchant_id, merchant_trade_no)

        async def open_operations(self, merchant_id: str | None = None, *, limit: int = 100) -> Any:
            return await self._call("open_operations", merchant_id, limit=limit)

    async def scenario() -> tuple[int, int, int]:
        emulator, order = _emulator()
        journal = SlowAsync()
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async with AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(emulator.async_handler),
            clock=emulator.clock,
            journal=journal,  # type: ignore[arg-type]
        ) as client:
            task = asyncio.create_task(ticker())
            await client.refund(order, 300, idempotency_key="k1")
            again = await client.refund(order, 300, idempotency_key="k1")
            assert again.replayed
            stop.set()
            await task
        return len(emulator.applied_do_actions()), journal.awaited, ticks

    applied, awaited, ticks = asyncio.run(scenario())
    assert applied == 1
    assert awaited == 6  # 5 for the refund, 1 claim for the replay
    assert ticks >= awaited  # the loop ran other work while each journal call was awaited


def test_journal_call_is_a_plain_value() -> None:
    call = JournalCall("get", ("m", "k"))
    assert call == JournalCall("get", ("m", "k"), {})
