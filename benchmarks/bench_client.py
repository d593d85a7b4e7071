"""Client overhead per query, and connections opened under load (issue 3 item 8).

Run: ``.venv/bin/python benchmarks/run.py client``. Figures:

* ``Client.query`` (one CreditDetail request, TradeNo and kind known) against a bare
  ``httpx.Client.post`` plus the codec, both over ``httpx.MockTransport`` with the same handler:
  the emulator, and a canned reply that shows the client's own cost. Target: at most 1.5x.
* Connections opened over loopback, counted by a tiny stdlib asyncio HTTP/1.1 server on
  127.0.0.1: a long-lived ``Client`` must reuse one connection for sequential calls, and an
  ``AsyncClient`` with 50 calls in flight must open no more than its ``max_connections``,
  where httpx's defaults (20 kept alive of 100) keep opening new ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import httpx

from _util import interleaved, report
from ecpay_lifecycle import TAIPEI, AsyncClient, Client, Credentials, PaymentKind
from ecpay_lifecycle._client import DEFAULT_MAX_CONNECTIONS
from ecpay_lifecycle._protocol import CREDIT_DETAIL_PATH
from ecpay_lifecycle.emulator import Emulator

MID = "3002607"
KEY = "ejCk326UnaZWKisg"
IV = "q9jcZX8Ib9LM8wYk"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
CREDENTIALS = Credentials(MID, KEY, IV)
IN_FLIGHT = 50


def canned_reply() -> bytes:
    """A CreditDetail reply for any order of MID: it echoes no IDs, so one reply fits all."""
    inner = {
        "RtnMsg": "",
        "RtnValue": {
            "TradeID": 14521552,
            "Amount": 1000,
            "ClsAmt": 0,
            "AuthTime": "2026/08/01 09:30:52",
            "Status": "Authorized",
        },
        "CloseData": {},
    }
    outer = {
        "MerchantID": MID,
        "RpHeader": {"Timestamp": int(NOW.timestamp())},
        "TransCode": 1,
        "TransMsg": "Success",
        "Data": CREDENTIALS.codec.encrypt(inner),
    }
    return json.dumps(outer, separators=(",", ":")).encode()


def bare_query(http: httpx.Client, trade_no: str) -> dict[str, object]:
    """What a hand-written integration does: encrypt, post, decrypt; no checks."""
    data = {"PlatformID": "", "MerchantID": MID, "MerchantTradeNo": "A1", "TradeNo": trade_no}
    body = {
        "MerchantID": MID,
        "RqHeader": {"Timestamp": int(NOW.timestamp())},
        "Data": CREDENTIALS.codec.encrypt(data),
    }
    response = http.post(CREDIT_DETAIL_PATH, content=json.dumps(body, separators=(",", ":")))
    return CREDENTIALS.codec.decrypt(response.json()["Data"])


def overhead(quick: bool) -> None:
    emulator = Emulator(now=NOW, max_events=1000)
    emulator.add_merchant(MID, KEY, IV)
    trade_no = emulator.authorize(MID, "A1", 1000)
    canned = canned_reply()

    def fixed(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=canned)

    number, repeat = (100, 3) if quick else (1000, 7)
    for name, handler in (("emulator", emulator.handler), ("canned reply", fixed)):
        base = "https://ecpayment.ecpay.com.tw"
        with (
            Client(CREDENTIALS, transport=httpx.MockTransport(handler), clock=emulator.clock) as c,
            httpx.Client(base_url=base, transport=httpx.MockTransport(handler)) as http,
        ):
            assert c.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME).amount == 1000
            times = interleaved(
                {
                    "client": partial(c.query, "A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME),
                    "bare": partial(bare_query, http, trade_no),
                },
                number=number,
                repeat=repeat,
            )
        print(
            "  "
            + report(
                f"Client.query vs bare post+codec ({name})",
                times["client"],
                times["bare"],
                target=1.5,
            ),
            flush=True,
        )


class CountingServer:
    """A minimal HTTP/1.1 keep-alive server on 127.0.0.1 that answers every POST with one body
    and counts the TCP connections it accepts. Runs its own event loop in a thread."""

    def __init__(self, body: bytes) -> None:
        self._head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        self._body = body
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(self._head + self._body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=256)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    @contextmanager
    def running(self) -> Iterator[CountingServer]:
        self._thread.start()
        self._ready.wait(10)
        try:
            yield self
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def count_connections(body: bytes, work: Callable[[str], object]) -> int:
    with CountingServer(body).running() as server:
        work(server.url)
        return server.connections


def connections(quick: bool) -> None:
    body = canned_reply()
    sequential = 50 if quick else 200
    total = 200 if quick else 2000

    def clock() -> dt.datetime:
        return NOW  # the canned reply's era; nothing checks freshness here

    def long_lived(url: str) -> None:
        with Client(CREDENTIALS, base_url=url, clock=clock) as client:
            for _ in range(sequential):
                client.query("A1", trade_no="T1", kind=PaymentKind.ONE_TIME)

    def per_call(url: str) -> None:
        for _ in range(sequential):
            with Client(CREDENTIALS, base_url=url, clock=clock) as client:
                client.query("A1", trade_no="T1", kind=PaymentKind.ONE_TIME)

    print(
        f"  connections for {sequential} sequential queries: long-lived Client "
        f"{count_connections(body, long_lived)} (target 1), a Client per call "
        f"{count_connections(body, per_call)}",
        flush=True,
    )

    async def burst(url: str) -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        async with AsyncClient(CREDENTIALS, base_url=url, clock=clock) as client:

            async def one() -> None:
                async with gate:
                    await client.query("A1", trade_no="T1", kind=PaymentKind.ONE_TIME)

            await asyncio.gather(*(one() for _ in range(total)))

    async def httpx_defaults(url: str) -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:

            async def one() -> None:
                async with gate:
                    response = await http.post(CREDIT_DETAIL_PATH, content=b"{}")
                    response.raise_for_status()

            await asyncio.gather(*(one() for _ in range(total)))

    sized = count_connections(body, lambda url: asyncio.run(burst(url)))
    default = count_connections(body, lambda url: asyncio.run(httpx_defaults(url)))
    print(
        f"  connections for {total} queries, {IN_FLIGHT} in flight: AsyncClient "
        f"(max_connections={DEFAULT_MAX_CONNECTIONS}) {sized} "
        f"[{'ok' if sized <= DEFAULT_MAX_CONNECTIONS else 'OVER TARGET'}], "
        f"bare httpx.AsyncClient with httpx's default limits {default}",
        flush=True,
    )


def main(quick: bool) -> None:
    overhead(quick)
    connections(quick)


if __name__ == "__main__":
    main(quick=False)
