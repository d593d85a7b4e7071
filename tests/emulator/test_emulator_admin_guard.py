"""Admin hardening of the served emulator: a web page or DNS rebinding cannot drive the admin
routes (loopback ``Host`` with the server's port, JSON content type), bodies have a read
timeout, fault delays are bounded, and bad input changes nothing (a failed clock set leaves the
clock where it was). Every refusal: its status code, and nothing changed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import InvalidArgument
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault, serving
from ecpay_lifecycle.emulator._emulator import AsgiApp
from ecpay_lifecycle.emulator._faults import MAX_FAULT_SECONDS
from test_emulator_support import MID, make_emulator

PORT = 8123
SERVER = ("127.0.0.1", PORT)
TIME = json.dumps({"advance_seconds": 86400}).encode()


def everything(emulator: Emulator) -> tuple[Any, ...]:
    """All an admin route could change."""
    return (
        emulator.now,
        emulator.orders(),
        emulator.merchants(),
        emulator.faults.pending(),
        emulator.events,
    )


def call(
    app: Callable[..., Awaitable[None]],
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    server: tuple[str, int] | None = SERVER,
    scheme: str = "http",
    receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> tuple[int, Any]:
    """One request straight into the ASGI app; the status and the decoded answer."""
    sent: list[dict[str, Any]] = []

    async def body_once() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "server": server,
        "scheme": scheme,
        "query_string": b"",
    }
    asyncio.run(app(scope, receive or body_once, send))
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    is_json = (b"content-type", b"application/json") in sent[0]["headers"]
    return sent[0]["status"], json.loads(content) if is_json and content else content


def host(value: str) -> tuple[bytes, bytes]:
    return (b"host", value.encode("latin-1"))


JSON = (b"content-type", b"application/json")


@pytest.mark.parametrize(
    "headers",
    [
        [host("evil.example"), JSON],  # a web page's own name, after DNS rebinding
        [host(f"evil.example:{PORT}"), JSON],
        [host("127.0.0.1:1"), JSON],  # loopback, but another server's port
        [host(f"127.0.0.2:{PORT}"), JSON],
        [host(f"localhost.:{PORT}"), JSON],
        [host(f"localhost.evil.example:{PORT}"), JSON],
        [host(f"127.0.0.1:{PORT}x"), JSON],
        [host(f"127.0.0.1:{PORT}"), host(f"127.0.0.1:{PORT}"), JSON],  # two Host headers
        [JSON],  # none at all
        [host("localhost"), JSON],  # port 80 implied, but this server is on PORT
        [(b"host", b"\xff\xfe"), JSON],
    ],
)
def test_admin_routes_refuse_a_host_that_is_not_this_loopback_server(
    headers: list[tuple[bytes, bytes]],
) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = everything(emulator)
    for method, path, body in [
        ("POST", "/_emulator/time", TIME),
        ("POST", "/_emulator/faults", b'{"fault": "lost_reply"}'),
        ("GET", "/_emulator/events", b""),
        ("GET", "/_emulator/overview", b""),
        ("DELETE", "/_emulator/faults", b""),
    ]:
        status, answer = call(emulator.asgi_app, method, path, headers, body)
        assert status == 403
        assert "Host" in answer["error"]
    assert everything(emulator) == before


@pytest.mark.parametrize(
    ("name", "scheme", "server"),
    [
        (f"127.0.0.1:{PORT}", "http", SERVER),
        (f"localhost:{PORT}", "http", SERVER),
        (f"LocalHost:{PORT}", "http", SERVER),
        (f"[::1]:{PORT}", "http", SERVER),
        ("127.0.0.1", "http", ("127.0.0.1", 80)),
        ("[::1]", "https", ("::1", 443)),
        ("localhost:5000", "http", None),  # a server that does not say its port
    ],
)
def test_admin_routes_answer_a_loopback_host_with_the_servers_port(
    name: str, scheme: str, server: tuple[str, int] | None
) -> None:
    emulator = make_emulator()
    status, answer = call(
        emulator.asgi_app,
        "POST",
        "/_emulator/time",
        [host(name), JSON],
        TIME,
        scheme=scheme,
        server=server,
    )
    assert status == 200, answer
    assert emulator.now == dt.datetime.fromisoformat(answer["now"])


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        b"text/plain",  # what a page's fetch() may send to another site without asking
        b"application/x-www-form-urlencoded",  # an HTML form
        b"multipart/form-data; boundary=x",
        b"application/jsonp",
        b"text/json",
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_emulator/time", TIME),
        ("POST", "/_emulator/merchants", b'{"merchant_id": "2000132"}'),
        ("POST", "/_emulator/orders", b'{"merchant_id": "3002607", "merchant_trade_no": "B"}'),
        ("PUT", f"/_emulator/merchants/{MID}/balance", b'{"balance": 5}'),
        ("POST", "/_emulator/faults", b'{"fault": "lost_reply"}'),
        ("DELETE", "/_emulator/faults", b""),
    ],
)
def test_admin_changes_need_a_json_content_type(
    content_type: bytes | None, method: str, path: str, body: bytes
) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(Fault.DELAY)
    before = everything(emulator)
    headers = [host(f"127.0.0.1:{PORT}")]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    status, answer = call(emulator.asgi_app, method, path, headers, body)
    assert status == 415
    assert "application/json" in answer["error"]
    assert everything(emulator) == before


def test_reads_need_no_content_type_and_json_may_carry_a_charset() -> None:
    emulator = make_emulator()
    loopback = host(f"127.0.0.1:{PORT}")
    assert call(emulator.asgi_app, "GET", "/_emulator/time", [loopback])[0] == 200
    charset = (b"Content-Type", b"Application/JSON; charset=utf-8")
    assert call(emulator.asgi_app, "POST", "/_emulator/time", [loopback, charset], TIME)[0] == 200


def test_a_body_that_does_not_arrive_in_time_is_refused_and_changes_nothing() -> None:
    emulator = make_emulator()
    before = everything(emulator)
    app = AsgiApp(emulator, body_timeout=0.2)
    chunks = iter([{"type": "http.request", "body": b'{"advance_', "more_body": True}])

    async def slowloris() -> dict[str, Any]:
        try:
            return next(chunks)
        except StopIteration:
            await asyncio.sleep(60)  # the rest never comes
            raise

    began = time.monotonic()
    status, answer = call(
        app, "POST", "/_emulator/time", [host(f"127.0.0.1:{PORT}"), JSON], receive=slowloris
    )
    assert status == 408
    assert "did not arrive in 0.2 s" in answer["error"]
    assert time.monotonic() - began < 5
    assert everything(emulator) == before
    # A gateway request too: its body times out the same way, and nothing is processed.
    chunks = iter([{"type": "http.request", "body": b"{", "more_body": True}])
    status, _ = call(app, "POST", Endpoint.DO_ACTION.value, [], receive=slowloris)
    assert status == 408
    assert everything(emulator) == before
    with pytest.raises(InvalidArgument):
        AsgiApp(emulator, body_timeout=0)


def test_fault_delays_are_bounded() -> None:
    emulator = make_emulator()
    for fault in (Fault.DELAY, Fault.TIMEOUT_AFTER_APPLY, Fault.LATE_APPLY):
        with pytest.raises(InvalidArgument, match="seconds must be a number from 0 to 300"):
            emulator.faults.inject(fault, seconds=MAX_FAULT_SECONDS + 1)
        with pytest.raises(InvalidArgument):
            emulator.faults.inject(fault, seconds=float("inf"))
    assert emulator.faults.pending() == ()
    rule = emulator.faults.inject(Fault.DELAY, seconds=MAX_FAULT_SECONDS)
    assert rule.seconds == MAX_FAULT_SECONDS
    emulator.faults.clear()
    loopback = host(f"127.0.0.1:{PORT}")
    before = everything(emulator)
    for seconds in (301, 1e9, -1, "10"):
        body = json.dumps({"fault": "delay", "seconds": seconds}).encode()
        status, _ = call(emulator.asgi_app, "POST", "/_emulator/faults", [loopback, JSON], body)
        assert status == 400
    assert everything(emulator) == before


@pytest.mark.parametrize(
    "body",
    [
        {"set": "2026-08-01T10:00:00+08:00"},  # backwards
        {"set": "2026-08-05T10:00:00"},  # no UTC offset
        {"set": "next tuesday"},
        {"set": 1785722400},
        {"set": "9999-12-31T20:00:00+00:00"},  # Taipei is in year 10000
        {"advance_seconds": -60},
        {"advance_seconds": 1e300},
        {"advance_seconds": float("nan")},
        {"advance_seconds": True},
        {"advance": 60},
        {},
    ],
)
def test_a_clock_set_that_fails_leaves_the_clock_where_it_was(body: dict[str, Any]) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = everything(emulator)
    status, answer = call(
        emulator.asgi_app,
        "POST",
        "/_emulator/time",
        [host(f"127.0.0.1:{PORT}"), JSON],
        json.dumps(body).encode(),
    )
    assert status == 400
    assert answer["error"]
    assert everything(emulator) == before


def test_a_failed_clock_set_on_a_running_clock_does_not_move_it_either() -> None:
    emulator = Emulator(now=dt.datetime(2026, 8, 3, 10, 0, tzinfo=dt.UTC), realtime=True)
    with serving(emulator) as url:
        before = emulator.now
        began = time.monotonic()
        refused = httpx.post(
            f"{url}/_emulator/time",
            json={"set": (before - dt.timedelta(seconds=1)).isoformat()},
            timeout=5,
        )
        assert refused.status_code == 400
        assert "never goes back" in refused.json()["error"]
        elapsed = dt.timedelta(seconds=time.monotonic() - began)
        assert before <= emulator.now <= before + elapsed + dt.timedelta(seconds=1)
        # Through a real socket too, the admin routes turn a foreign Host away.
        foreign = httpx.post(
            f"{url}/_emulator/time",
            json={"advance_seconds": 86400},
            headers={"Host": "rebound.example"},
            timeout=5,
        )
        assert foreign.status_code == 403
        assert emulator.now < before + dt.timedelta(hours=1)
