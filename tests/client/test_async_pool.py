"""AsyncClient's own wait for a connection (issue 12 item 5): calls beyond ``max_connections``
wait in the client, not in httpx's pool, for at most the timeout's pool part; then
``TransportError`` and nothing is sent. Counted at the transport."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import TAIPEI, AsyncClient, Credentials, PaymentKind, TransportError
from ecpay_lifecycle._client import KEEPALIVE_EXPIRY
from ecpay_lifecycle._transport import AsyncStreamTransport
from ecpay_lifecycle.emulator import Emulator

MID = "3002607"
KEY, IV = "AsyncPoolKey0016", "AsyncPoolIv00016"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)


def world() -> tuple[Emulator, str]:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    return emulator, emulator.authorize(MID, "A1", 1000)


@settings(max_examples=15, deadline=None)
@given(limit=st.integers(1, 6), calls=st.integers(1, 20))
def test_never_more_requests_in_flight_than_max_connections(limit: int, calls: int) -> None:
    emulator, trade_no = world()
    in_flight = peak = seen = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak, seen
        in_flight += 1
        seen += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        return await emulator.async_handler(request)

    async def scenario() -> None:
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(handler),
            clock=emulator.clock,
            max_connections=limit,
        ) as client:
            await asyncio.gather(
                *(
                    client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
                    for _ in range(calls)
                )
            )

    asyncio.run(scenario())
    assert seen == calls
    assert peak <= limit
    assert peak == min(limit, calls)


def test_a_call_that_waits_longer_than_the_pool_timeout_sends_nothing() -> None:
    emulator, trade_no = world()
    release = asyncio.Event()
    arrived = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return await emulator.async_handler(request)

    async def scenario() -> None:
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(handler),
            clock=emulator.clock,
            max_connections=1,
            timeout=httpx.Timeout(10.0, pool=0.2),
        ) as client:
            first = asyncio.create_task(
                client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
            )
            await asyncio.sleep(0.05)
            with pytest.raises(TransportError, match="PoolTimeout"):
                await client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
            assert arrived == 1  # the second call never reached the transport
            release.set()
            assert (await first).amount == 1000
        assert arrived == 1

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_idle_connections_are_kept_for_a_shops_sparse_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    emulator, _ = world()
    client = AsyncClient(Credentials(MID, KEY, IV), clock=emulator.clock, max_connections=4)
    limits = client._limits  # the pool's settings, as given to httpx (used behind a proxy)
    assert limits.keepalive_expiry == KEEPALIVE_EXPIRY >= 30
    assert limits.max_keepalive_connections == limits.max_connections == 4
    transport = client._http._transport  # the default: every connection kept as long
    assert isinstance(transport, AsyncStreamTransport)
    assert repr(transport) == (
        f"AsyncStreamTransport(max_connections=4, keepalive_expiry={KEEPALIVE_EXPIRY})"
    )
    asyncio.run(client.aclose())


def test_requests_go_to_the_base_urls_path() -> None:
    """Each path's URL is built once from ``base_url``, a prefix (a proxy's) included."""
    emulator, trade_no = world()
    urls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return await emulator.async_handler(request)

    async def scenario() -> None:
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            base_url="https://proxy.example/ecpay/",
            transport=httpx.MockTransport(handler),
            clock=emulator.clock,
        ) as client:
            for _ in range(2):
                await client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
            await client.query("A1")

    asyncio.run(scenario())
    assert urls == [
        "https://proxy.example/ecpay/1.0.0/CreditDetail/QueryTrade",
        "https://proxy.example/ecpay/1.0.0/CreditDetail/QueryTrade",
        "https://proxy.example/ecpay/1.0.0/Cashier/QueryTrade",
        "https://proxy.example/ecpay/1.0.0/CreditDetail/QueryTrade",
    ]
