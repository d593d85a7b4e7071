"""AsyncClient at the wire's pace (issue 12 item 5): CPU per request and throughput over real
loopback TCP with 50 ms of latency per request, at 10 and 50 requests in flight.

Run: ``.venv/bin/python benchmarks/run.py wire``. Two servers, each in a process of its own (so
its CPU is not counted): a small stdlib asyncio HTTP/1.1 keep-alive server answering every POST
with one valid CreditDetail reply after 50 ms (it counts connections), and
``ecpay-lifecycle serve`` (the emulator behind uvicorn) with a ``delay`` fault of 50 ms armed for
every request. Figures, all measured in the same run, each configuration once a round over
interleaved rounds (best round kept):

* CPU per request of ``AsyncClient.query`` (TradeNo and kind known: one request a call) over
  TCP with its default transport (``AsyncStreamTransport``) and with httpx's own (httpcore,
  the same limits), against the same call through ``httpx.MockTransport`` (the client's own
  cost, no network; target at most 1.5x). MockTransport completes every call without the event
  loop ever waiting, so a second baseline is the same call through a MockTransport that answers
  after 50 ms: the same code waiting as long as over the wire, without a socket. What the
  process pays for waking up after an idle wait (on this shared 2-core machine, caches another
  process has since used) shows as the difference between the two baselines.
* Throughput of each against the lesser of the ideal (in flight / latency, one request a flow)
  and the pool's cap (``max_connections`` / latency). Target: within 1.5x of that bound.
* Bare ``httpx.AsyncClient`` posts through ``MockTransport`` and over each transport; a bare
  ``AsyncStreamTransport.exchange`` on a route prepared once (what ``AsyncClient`` sends through
  over its default transport, no ``httpx.Request`` or ``httpx.Response`` a call); and what
  ``AsyncClient`` adds to its carrier: to the bare exchange over the wire, to a bare post through
  ``MockTransport``.
* Connections the stdlib server accepted: each pool keeps its ``max_connections`` and reuses them.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from bench_client import IV, KEY, MID, NOW, canned_reply
from ecpay_lifecycle import PRODUCTION_URL, AsyncClient, Credentials, PaymentKind
from ecpay_lifecycle._client import DEFAULT_MAX_CONNECTIONS, KEEPALIVE_EXPIRY
from ecpay_lifecycle._protocol import CREDIT_DETAIL_PATH
from ecpay_lifecycle._transport import AsyncStreamTransport

LATENCY = 0.05
TRADE_NO = "2608010930521234"


def _serve(port_out: multiprocessing.connection.Connection, body: bytes, latency: float) -> None:
    """The server process: answer every POST with ``body`` after ``latency`` seconds; count
    accepted connections (reported on request through the pipe)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                request_head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request_head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                await asyncio.sleep(latency)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        nonlocal connections
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_out.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        while True:
            message = await loop.run_in_executor(None, port_out.recv)
            if message == "count":
                port_out.send(connections)
            elif message == "reset":
                connections = 0
                port_out.send(0)
            else:
                break
        server.close()

    asyncio.run(main())


class Server:
    def __init__(self, body: bytes, latency: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, body, latency), daemon=True)
        self._process.start()
        if not self._pipe.poll(30):
            raise RuntimeError("the wire benchmark's server did not start")
        self.port: int = self._pipe.recv()

    def ask(self, message: str) -> int:
        self._pipe.send(message)
        if not self._pipe.poll(30):
            raise RuntimeError("the wire benchmark's server did not answer")
        value: int = self._pipe.recv()
        return value

    def stop(self) -> None:
        self._pipe.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


class Emulated:
    """``ecpay-lifecycle serve`` in a process of its own (the issue's setting): the emulator
    behind uvicorn, its clock frozen at the canned reply's time, one authorized order, and a
    ``delay`` fault of ``latency`` seconds armed for every request."""

    def __init__(self, latency: float) -> None:
        environment = {**os.environ, "ECPAY_EMULATOR_MERCHANTS": f"{MID}:{KEY}:{IV}"}
        command = [sys.executable, "-m", "ecpay_lifecycle", "serve", "--port", "0", "--frozen"]
        command += ["--start", NOW.isoformat(), "--merchant", MID, "--log-level", "warning"]
        self._process = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found is None:
            self.stop()
            raise RuntimeError(f"ecpay-lifecycle serve did not start: {line!r}")
        self.url = found.group(0)
        order = {"merchant_id": MID, "merchant_trade_no": "A1", "amount": 1000}
        self.trade_no: str = httpx.post(f"{self.url}/_emulator/orders", json=order).json()[
            "trade_no"
        ]
        fault = {"fault": "delay", "seconds": latency, "times": None}
        httpx.post(f"{self.url}/_emulator/faults", json=fault).raise_for_status()

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()


async def _run(call: Callable[[], Awaitable[object]], in_flight: int, total: int) -> float:
    """Run ``total`` calls with ``in_flight`` at a time; return the seconds it took."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - start


def _measure(
    make: Callable[[], tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]],
    in_flight: int,
    total: int,
) -> tuple[float, float]:
    """(CPU seconds per request, requests per second) of ``total`` calls after a warm-up."""

    async def go() -> tuple[float, float]:
        call, close = make()
        try:
            await _run(call, in_flight, in_flight)  # warm-up: the pool's connections
            cpu = time.process_time()
            wall = await _run(call, in_flight, total)
            cpu = time.process_time() - cpu
        finally:
            await close()
        return cpu / total, total / wall

    return asyncio.run(go())


Maker = Callable[[], tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]]


def _report(
    in_flight: int,
    *,
    total: int,
    rounds: int,
    cpu: dict[str, float],
    rate: dict[str, float],
    opened: dict[str, int],
) -> None:
    """Print one in-flight setting's figures against its baselines and targets."""
    ideal = in_flight / LATENCY
    cap = DEFAULT_MAX_CONNECTIONS / LATENCY
    bound = min(ideal, cap)
    print(
        f"  {in_flight} in flight, {total} queries over TCP with {LATENCY * 1000:.0f} ms "
        f"latency, best of {rounds} interleaved rounds; CPU a request against "
        f"{cpu['mock'] * 1e3:.2f} ms through MockTransport (target <= 1.5x) and "
        f"{cpu['mock late'] * 1e3:.2f} ms through a MockTransport that answers after "
        f"{LATENCY * 1000:.0f} ms (the same code waiting as long, no socket); "
        f"throughput against a bound of {bound:.0f}/s (ideal {ideal:.0f}, pool cap "
        f"{cap:.0f}; target within 1.5x):",
        flush=True,
    )
    for name, label in (
        ("default", "AsyncClient (default: AsyncStreamTransport)"),
        ("httpcore", "AsyncClient over httpx's own transport (httpcore)"),
    ):
        ratio = cpu[name] / cpu["mock"]
        pace = bound / rate[name]
        print(
            f"    {label}: CPU {cpu[name] * 1e3:.2f} ms = {ratio:.2f}x "
            f"[{'ok' if ratio <= 1.5 else 'OVER TARGET'}], "
            f"{cpu[name] / cpu['mock late']:.2f}x the waiting MockTransport; "
            f"{rate[name]:.0f}/s = {pace:.2f}x below the bound "
            f"[{'ok' if pace <= 1.5 else 'OVER TARGET'}]; connections opened "
            f"{opened[name]} (max_connections {DEFAULT_MAX_CONNECTIONS})",
            flush=True,
        )
    for name, label in (
        ("serve default", "AsyncStreamTransport"),
        ("serve httpcore", "httpx's own transport"),
    ):
        print(
            f"    against `ecpay-lifecycle serve` (delay fault of {LATENCY * 1000:.0f} ms "
            f"on every request), AsyncClient over {label}: CPU "
            f"{cpu[name] * 1e3:.2f} ms = {cpu[name] / cpu['mock']:.2f}x, "
            f"{cpu[name] / cpu['mock late']:.2f}x the waiting MockTransport; "
            f"{rate[name]:.0f}/s = {bound / rate[name]:.2f}x below the bound",
            flush=True,
        )
    print(
        f"    bare httpx.AsyncClient posts: through MockTransport "
        f"{cpu['bare mock'] * 1e3:.2f} ms; over AsyncStreamTransport "
        f"{cpu['bare stream'] * 1e3:.2f} ms, {rate['bare stream']:.0f}/s; over "
        f"httpcore with the same pool {cpu['bare httpcore'] * 1e3:.2f} ms, "
        f"{rate['bare httpcore']:.0f}/s; a bare AsyncStreamTransport.exchange (route prepared "
        f"once, no httpx.Request or Response) {cpu['bare exchange'] * 1e3:.2f} ms = "
        f"{cpu['bare exchange'] / cpu['bare stream']:.2f}x the bare post over the same "
        f"transport, {rate['bare exchange']:.0f}/s",
        flush=True,
    )
    # What AsyncClient adds to its carrier, over the wire (the exchange) and through
    # MockTransport (a post): the same code, run after a wait for the network or back to back.
    print(
        f"    AsyncClient's own work a request: "
        f"{(cpu['default'] - cpu['bare exchange']) * 1e3:.2f} ms over the wire, "
        f"{(cpu['mock'] - cpu['bare mock']) * 1e3:.2f} ms through MockTransport",
        flush=True,
    )


def main(quick: bool) -> None:
    body = canned_reply()
    credentials = Credentials(MID, KEY, IV)
    clock = lambda: NOW  # noqa: E731 - a fixed clock: the canned reply's Timestamp
    server = Server(body, LATENCY)
    url = f"http://127.0.0.1:{server.port}"
    emulated = Emulated(LATENCY)
    data = json.dumps({"MerchantID": MID, "Data": "x" * 88}).encode()
    limits = httpx.Limits(
        max_connections=DEFAULT_MAX_CONNECTIONS,
        max_keepalive_connections=DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )

    def client_over(
        make_transport: Callable[[], httpx.AsyncBaseTransport], base: str, trade_no: str = TRADE_NO
    ) -> Maker:
        def make() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
            client = AsyncClient(
                credentials, base_url=base, transport=make_transport(), clock=clock
            )

            async def call() -> object:
                return await client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)

            return call, client.aclose

        return make

    def bare_over(make_transport: Callable[[], httpx.AsyncBaseTransport], base: str) -> Maker:
        def make() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
            http = httpx.AsyncClient(base_url=base, transport=make_transport())

            async def call() -> object:
                return (await http.post(CREDIT_DETAIL_PATH, content=data)).content

            return call, http.aclose

        return make

    def bare_exchange(base: str) -> Maker:
        def make() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
            transport = stream()
            http = httpx.AsyncClient(base_url=base, transport=transport)
            route = transport.route(
                http.build_request("POST", base + CREDIT_DETAIL_PATH, content=b"")
            )

            async def call() -> object:
                return await transport.exchange(route, data)

            return call, http.aclose

        return make

    async def canned(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async def late(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(LATENCY)
        return httpx.Response(200, content=body)

    def default(base: str, trade_no: str = TRADE_NO) -> Maker:
        def make() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
            client = AsyncClient(credentials, base_url=base, clock=clock)
            assert isinstance(client._http._transport, AsyncStreamTransport)

            async def call() -> object:
                return await client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)

            return call, client.aclose

        return make

    def stream() -> httpx.AsyncBaseTransport:
        return AsyncStreamTransport(
            max_connections=DEFAULT_MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY
        )

    def httpcore() -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport(limits=limits)

    # Every configuration is measured once a round, round after round, and the best round of
    # each is kept: a burst of load on the shared machine hits all of them alike.
    configurations: dict[str, Maker] = {
        "mock": client_over(lambda: httpx.MockTransport(canned), PRODUCTION_URL),
        "mock late": client_over(lambda: httpx.MockTransport(late), PRODUCTION_URL),
        "default": default(url),
        "httpcore": client_over(httpcore, url),
        "serve default": default(emulated.url, emulated.trade_no),
        "serve httpcore": client_over(httpcore, emulated.url, emulated.trade_no),
        "bare mock": bare_over(lambda: httpx.MockTransport(canned), PRODUCTION_URL),
        "bare stream": bare_over(stream, url),
        "bare httpcore": bare_over(httpcore, url),
        "bare exchange": bare_exchange(url),
    }
    rounds = 1 if quick else 3
    try:
        for in_flight in (10, 50):
            total = (60 if quick else 400) if in_flight == 10 else (100 if quick else 600)
            cpu = dict.fromkeys(configurations, float("inf"))
            rate = dict.fromkeys(configurations, 0.0)
            opened: dict[str, int] = {}
            for _ in range(rounds):
                for name, make in configurations.items():
                    server.ask("reset")
                    cpu_round, rate_round = _measure(make, in_flight, total)
                    cpu[name] = min(cpu[name], cpu_round)
                    rate[name] = max(rate[name], rate_round)
                    opened[name] = max(opened.get(name, 0), server.ask("count"))
            opened["serve default"] = opened["serve httpcore"] = 0  # not counted there
            _report(in_flight, total=total, rounds=rounds, cpu=cpu, rate=rate, opened=opened)
    finally:
        server.stop()
        emulated.stop()


if __name__ == "__main__":
    main(quick=False)
