"""AsyncClient's own wait for a connection (issue 12 item 5): calls beyond ``max_connections``
wait in the client, not in httpx's pool, for at most the timeout's pool part; then
``TransportError`` and nothing is sent. Counted at the transport, and over real TCP (the default
``AsyncStreamTransport``, whose own pool does the waiting) at a server that counts what it
receives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any

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


# -- over real TCP: the default transport's pool bounds and queues the calls ------------------


class CountingServer:
    """An HTTP/1.1 keep-alive server on 127.0.0.1, on the test's own event loop, answering each
    request through ``handler`` after ``delay`` seconds; it counts connections, requests and
    the most requests it held at once."""

    def __init__(
        self, handler: Callable[[httpx.Request], Awaitable[httpx.Response]], delay: float
    ) -> None:
        self.handler = handler
        self.delay = delay
        self.connections = self.seen = self.in_flight = self.peak = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CountingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
                body = await reader.readexactly(int(length[1]) if length else 0)
                self.seen += 1
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                try:
                    await asyncio.sleep(self.delay)
                    target = head.split(b" ", 2)[1].decode()
                    response = await self.handler(
                        httpx.Request("POST", "https://ecpay.test" + target, content=body)
                    )
                finally:
                    self.in_flight -= 1
                content = await response.aread()
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s"
                    % (response.status_code, len(content), content)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@settings(max_examples=10, deadline=None)
@given(limit=st.integers(1, 4), calls=st.integers(1, 12), given_pool=st.booleans())
def test_over_tcp_never_more_requests_in_flight_than_max_connections(
    limit: int, calls: int, given_pool: bool
) -> None:
    """The default transport's pool bounds the calls by itself; a transport given with a larger
    pool is still held to ``max_connections`` (by the client's own wait)."""
    emulator, trade_no = world()

    async def scenario() -> tuple[int, int, int]:
        async with CountingServer(emulator.async_handler, delay=0.01) as server:
            transport = AsyncStreamTransport(max_connections=limit + 3) if given_pool else None
            async with AsyncClient(
                Credentials(MID, KEY, IV),
                base_url=server.url,
                transport=transport,
                clock=emulator.clock,
                max_connections=limit,
            ) as client:
                snapshots = await asyncio.gather(
                    *(
                        client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
                        for _ in range(calls)
                    )
                )
                assert [snapshot.amount for snapshot in snapshots] == [1000] * calls
            return server.seen, server.peak, server.connections

    seen, peak, connections = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert seen == calls
    assert peak == min(limit, calls)
    assert connections == min(limit, calls)


@pytest.mark.parametrize("over_tcp", [False, True], ids=["in-the-client", "in-the-pool"])
def test_a_call_that_waits_longer_than_the_pool_timeout_sends_nothing(over_tcp: bool) -> None:
    """Through MockTransport the call waits in the client; over TCP, in the default transport's
    pool. Either way it gives up after the pool timeout and nothing reaches the other side."""
    emulator, trade_no = world()
    release = asyncio.Event()
    arrived = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return await emulator.async_handler(request)

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            where: dict[str, Any] = {"transport": httpx.MockTransport(handler)}
            if over_tcp:
                server = await stack.enter_async_context(CountingServer(handler, delay=0.0))
                where = {"base_url": server.url}
            client = await stack.enter_async_context(
                AsyncClient(
                    Credentials(MID, KEY, IV),
                    clock=emulator.clock,
                    max_connections=1,
                    timeout=httpx.Timeout(10.0, pool=0.2),
                    **where,
                )
            )
            first = asyncio.create_task(
                client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
            )
            await asyncio.sleep(0.05)
            with pytest.raises(TransportError, match="PoolTimeout"):
                await client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
            assert arrived == 1  # the second call never reached the other side
            release.set()
            assert (await first).amount == 1000
        assert arrived == 1

    asyncio.run(asyncio.wait_for(scenario(), 30))
