"""examples/async_service.py runs: an ASGI service embedding AsyncClient, against the emulator.

The service is driven through ``httpx.ASGITransport`` (requests) and raw ASGI lifespan messages
(start-up and shut-down), with its AsyncClient on ``httpx.MockTransport(emulator.async_handler)``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any

import httpx

from ecpay_lifecycle import TAIPEI, AsyncClient, Credentials, State
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "async_service.py"
MID, KEY, IV = "3002607", "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_service_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Lifespan:
    """Drives an app's ASGI lifespan protocol as a server would: start-up, later shut-down."""

    def __init__(self, app: Any) -> None:
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self._task = asyncio.create_task(app(scope, self._inbox.get, self._outbox.put))

    async def startup(self) -> None:
        await self._inbox.put({"type": "lifespan.startup"})
        assert await self._outbox.get() == {"type": "lifespan.startup.complete"}

    async def shutdown(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        assert await self._outbox.get() == {"type": "lifespan.shutdown.complete"}
        await self._task


def test_the_example_service_refunds_once_per_key_and_maps_errors() -> None:
    example = load_example()
    emulator = Emulator(now=dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI))
    emulator.add_merchant(MID, KEY, IV, balance=100_000)
    emulator.authorize(MID, "A1", 1000)
    made: list[AsyncClient] = []

    def make_client() -> AsyncClient:
        client = AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(emulator.async_handler),
            clock=emulator.clock,
        )
        made.append(client)
        return client

    app = example.RefundService(make_client)

    async def run() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://shop"
        ) as web:
            assert (await web.get("/orders/A1")).status_code == 503  # not started yet
            server = Lifespan(app)
            await server.startup()

            order = (await web.get("/orders/A1")).json()
            assert order["state"] == "authorized"

            no_key = await web.post("/orders/A1/capture")
            assert no_key.status_code == 400

            captured = await web.post("/orders/A1/capture", headers={"Idempotency-Key": "c1"})
            assert captured.status_code == 200
            assert captured.json()["plan"] == "C(1000)"

            first = await web.post(
                "/orders/A1/refund", json={"amount": 300}, headers={"Idempotency-Key": "r1"}
            )
            again = await web.post(
                "/orders/A1/refund", json={"amount": 300}, headers={"Idempotency-Key": "r1"}
            )
            assert first.status_code == again.status_code == 200
            assert first.json()["refunded"] == 300
            assert not first.json()["replayed"]
            assert again.json()["replayed"]
            assert emulator.snapshot(MID, "A1").closed_amount == 700

            too_much = await web.post(
                "/orders/A1/refund", json={"amount": 800}, headers={"Idempotency-Key": "r2"}
            )
            assert too_much.status_code == 409
            assert too_much.json()["rule"] == "R10"

            bad = await web.post(
                "/orders/A1/refund", json={"amount": "lots"}, headers={"Idempotency-Key": "r3"}
            )
            assert bad.status_code == 400

            emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION)
            limited = await web.post(
                "/orders/A1/refund", json={"amount": 100}, headers={"Idempotency-Key": "r4"}
            )
            assert limited.status_code == 429
            # ECPay's 403 is remembered by the client for 30 minutes: the header says until when.
            assert limited.headers["retry-after"] == "Sat, 01 Aug 2026 02:30:00 GMT"
            emulator.advance(dt.timedelta(minutes=30))

            rest = await web.post("/orders/A1/refund", json={}, headers={"Idempotency-Key": "r5"})
            assert rest.json()["plan"] == "E(1000) -> N(1000)"
            assert (await web.post("/orders/A1/reconcile")).json()["locked"] is False
            assert (await web.get("/orders/A1/refund")).status_code == 405
            assert (await web.get("/nowhere")).status_code == 404

            await server.shutdown()
            assert made[0]._http.is_closed

    asyncio.run(run())
    assert emulator.snapshot(MID, "A1").state is State.ABANDONED
