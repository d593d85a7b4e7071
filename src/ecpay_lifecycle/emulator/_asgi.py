"""The emulator as a plain ASGI 3 application (no framework): ECPay's endpoints and admin routes.

ECPay's three endpoints answer exactly as through ``httpx.MockTransport``; transport faults
become what a real server can do (hang, cut the reply short, answer 5xx/403). Admin routes under
``/_emulator/`` take and return JSON so that test suites in any language can drive the emulator:

- ``GET /_emulator/time`` -> ``{"now", "next_batch"}`` (ISO 8601) and ``"realtime"`` (whether
  the clock runs by itself)
- ``POST /_emulator/time`` with ``{"advance_seconds": n}`` or ``{"set": iso}``
- ``POST /_emulator/merchants`` with ``{"merchant_id", "hash_key", "hash_iv", "auto_close"?,
  "balance"?, "platform_id"?}``
- ``GET`` or ``PUT /_emulator/merchants/{id}/balance`` (``{"balance": n}``)
- ``POST /_emulator/orders`` with ``{"merchant_id", "merchant_trade_no", "amount", "kind"?,
  "at"?}`` -> ``{"trade_no"}``
- ``GET /_emulator/orders/{merchant_id}/{merchant_trade_no}`` -> the order (status, amounts, rows)
- ``PUT /_emulator/orders/{merchant_id}/{merchant_trade_no}/status`` with ``{"status": "銀行拒絕"}``
- ``POST /_emulator/faults`` with ``{"fault", "endpoint"?, "action"?, "times"?, "seconds"?,
  "status_code"?, "trans_code"?, "land_after"? (seconds), "writes"?, "merchant_trade_no"?,
  "after_do_action"?}`` (names or values of the enums); ``DELETE`` disarms all
- ``GET /_emulator/landings`` -> the DoActions in flight (``Fault.LATE_APPLY``)
- ``GET /_emulator/events`` -> the event log
- ``GET /`` -> the console, a page for people (:mod:`._console`, with its read-only routes
  ``GET /_emulator/merchants``, ``/orders``, ``/faults`` and ``/overview?since=N``)

Bad admin input answers 400 with ``{"error": message}``; nothing changes. The admin routes are
for a test suite or a person on this machine, never for a web page it visits: they answer only
a request whose ``Host`` is ``127.0.0.1``, ``localhost`` or ``[::1]`` with this server's port
(403 otherwise: DNS rebinding brings another name), and one that changes something (any method
but GET and HEAD) only with ``Content-Type: application/json`` (415 otherwise: a page can send a
form or text to another site without asking, never JSON). Every request body must arrive
within ``BODY_TIMEOUT`` seconds (408). A clock move runs in a thread of its own, and in real
time the catching up runs off the event loop too, so neither holds up other requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ecpay_lifecycle._exceptions import EcpayError
from ecpay_lifecycle._models import Action, GatewayStatus, PaymentKind

from ._console import read_route, send_asset
from ._faults import Endpoint, Fault
from ._json_views import event_json, landing_json, view_json
from ._pipeline import Failure, Pipeline
from ._wire import parse_aware_iso

if TYPE_CHECKING:  # for annotations only: the facade imports this module
    from ._emulator import Emulator

__all__ = ["BODY_TIMEOUT", "admin_refusal", "serve"]

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

_MAX_BODY = 1 << 20
_ADMIN = "/_emulator/"
#: Seconds a request body may take to arrive, from the end of its headers.
BODY_TIMEOUT = 10.0
#: The names the admin routes answer to in ``Host`` (with the server's port).
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: Methods that only read: the admin routes take them without a JSON content type.
_READS = frozenset({"GET", "HEAD"})


class _AdminError(Exception):
    """A bad admin request: answered 400 (or ``status``) with the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def serve(
    emulator: Emulator,
    pipeline: Pipeline,
    scope: Mapping[str, Any],
    receive: Receive,
    send: Send,
    *,
    body_timeout: float = BODY_TIMEOUT,
) -> None:
    """Handle one ASGI connection scope (``http`` and ``lifespan``; others are ignored):
    ECPay's endpoints through ``pipeline`` (``emulator``'s), the admin routes through
    ``emulator``'s public methods.

    A body that takes longer than ``body_timeout`` seconds answers 408; see the module
    docstring for what the admin routes refuse.
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope.get("path", "/")
    method: str = scope.get("method", "GET")
    admin = path.startswith(_ADMIN)
    refusal = admin_refusal(scope) if admin else None
    if refusal is not None:
        await _send_json(send, *refusal)
        return
    try:
        body = await _read_body(receive, body_timeout)
    except TimeoutError:
        await _send_json(send, 408, {"error": f"the body did not arrive in {body_timeout:g} s"})
        return
    if body is None:
        await _send(send, 413, b"Payload Too Large", "text/plain; charset=utf-8")
        return
    if not pipeline.glide():  # a running clock has batches or day rules due:
        await asyncio.to_thread(pipeline.catch_up)  # they run in a thread, not on the loop
    if admin and method == "POST" and path[len(_ADMIN) :].strip("/") == "time":
        # A jump over many batches runs in the clock's own thread, a few orders at a time.
        loop = asyncio.get_running_loop()
        status, payload = await loop.run_in_executor(
            _clock_thread(), _admin, emulator, method, "time", body
        )
        await _send_json(send, status, payload)
        return
    if path.startswith(_ADMIN):
        route = path[len(_ADMIN) :]
        read = read_route(emulator, method, route, scope.get("query_string", b""))
        status, payload = read if read is not None else _admin(emulator, method, route, body)
        await _send_json(send, status, payload)
        return
    if await send_asset(send, method, path):  # GET /: the console's page and files
        return
    await _gateway(pipeline, method, path, body, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive, timeout: float) -> bytes | None:
    """The whole body (None when over ``_MAX_BODY``); :class:`TimeoutError` after ``timeout``."""
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > _MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    return b"".join(chunks)


def admin_refusal(scope: Mapping[str, Any]) -> tuple[int, dict[str, str]] | None:
    """Why an admin request is refused before it is read, as ``(status, JSON)``, or None.

    403 unless ``Host`` is a loopback name with this server's port; 415 unless a request that
    may change something says ``Content-Type: application/json``. Browsers let a web page send
    neither to this server: it cannot set ``Host``, and JSON to another origin needs a CORS
    preflight that the emulator never grants.
    """
    if not _loopback_host(scope):
        return 403, {
            "error": "admin routes answer only to Host 127.0.0.1, localhost or [::1] with "
            "this server's port"
        }
    if scope.get("method", "GET") not in _READS and _media_type(scope) != "application/json":
        return 415, {
            "error": "admin requests that change something need a JSON body "
            "(Content-Type: application/json)"
        }
    return None


def _headers(scope: Mapping[str, Any], name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def _loopback_host(scope: Mapping[str, Any]) -> bool:
    """Whether the one ``Host`` header names this server on loopback, port included."""
    hosts = _headers(scope, b"host")
    if len(hosts) != 1:
        return False
    try:
        host = hosts[0].decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    if host.startswith("["):
        end = host.find("]") + 1
        name, rest = host[:end], host[end:]
    else:
        name, colon, port_text = host.partition(":")
        rest = colon + port_text
    if name not in _LOOPBACK_NAMES:
        return False
    if rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit()):
        return False
    given = int(rest[1:]) if rest else (443 if scope.get("scheme") == "https" else 80)
    server = scope.get("server")
    port = server[1] if isinstance(server, tuple | list) and len(server) == 2 else None
    return port is None or given == port


def _media_type(scope: Mapping[str, Any]) -> str | None:
    types = _headers(scope, b"content-type")
    if len(types) != 1:
        return None
    return types[0].decode("latin-1").split(";", 1)[0].strip().lower()


@functools.cache
def _clock_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that moves clocks for admin requests: jumps wait for each other there,
    never in the event loop's default pool, which other requests need."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ecpay-emulator-clock")


async def _send_json(send: Send, status: int, payload: Any) -> None:
    content = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
    await _send(send, status, content, "application/json")


async def _send(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _gateway(pipeline: Pipeline, method: str, path: str, body: bytes, send: Send) -> None:
    """One of ECPay's endpoints, with its fault turned into real-server behaviour."""
    reply = await pipeline.answer(method, path, body)
    if reply.hang:
        await asyncio.sleep(reply.hang)
    if reply.failure in (Failure.DISCONNECT, Failure.RESET):
        # Promise the whole reply, deliver part of it (or none), and end: the server closes the
        # connection and the client sees an incomplete message.
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", reply.content_type.encode("latin-1")),
                    (b"content-length", str(len(reply.body)).encode("ascii")),
                ],
            }
        )
        if reply.failure is Failure.DISCONNECT:
            half = reply.body[: len(reply.body) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
        return
    await _send(send, reply.status, reply.body, reply.content_type)


def _admin(emulator: Emulator, method: str, route: str, body: bytes) -> tuple[int, Any]:
    """Dispatch an admin route; returns ``(status, JSON payload or None)``. Never raises."""
    parts = [part for part in route.split("/") if part]
    try:
        data = _json_body(body) if method in ("POST", "PUT") else {}
        return _route(emulator, method, parts, data)
    except _AdminError as error:
        return error.status, {"error": str(error)}
    except (EcpayError, ValueError, TypeError, OverflowError) as error:
        # EcpayError covers the emulator's own validation; the others are what datetime and
        # timedelta raise for absurd numbers sent to an admin route.
        return 400, {"error": str(error)}


def _route(
    emulator: Emulator, method: str, parts: list[str], data: dict[str, Any]
) -> tuple[int, Any]:
    match parts, method:
        case ["time"], "GET":
            return 200, _time(emulator)
        case ["time"], "POST":
            if "advance_seconds" in data:
                seconds = data["advance_seconds"]
                if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                    raise _AdminError("advance_seconds must be a number")
                emulator.advance(dt.timedelta(seconds=seconds))
            elif "set" in data:
                emulator.set_time(parse_aware_iso(data["set"], "set"))
            else:
                raise _AdminError('give "advance_seconds" or "set"')
            return 200, _time(emulator)
        case ["merchants"], "POST":
            emulator.add_merchant(
                data.get("merchant_id"),  # type: ignore[arg-type]  # validated inside
                data.get("hash_key"),  # type: ignore[arg-type]
                data.get("hash_iv"),  # type: ignore[arg-type]
                auto_close=data.get("auto_close", True),
                balance=data.get("balance", 0),
                platform_id=data.get("platform_id"),
            )
            return 201, {"merchant_id": data["merchant_id"]}
        case ["merchants", merchant_id, "balance"], "GET":
            return 200, {"balance": emulator.balance(merchant_id)}
        case ["merchants", merchant_id, "balance"], "PUT" | "POST":
            emulator.set_balance(merchant_id, data.get("balance"))  # type: ignore[arg-type]
            return 200, {"balance": emulator.balance(merchant_id)}
        case ["orders"], "POST":
            kind = _enum(PaymentKind, data.get("kind", "one_time"), "kind")
            at = data.get("at")
            trade_no = emulator.authorize(
                data.get("merchant_id"),  # type: ignore[arg-type]
                data.get("merchant_trade_no"),  # type: ignore[arg-type]
                data.get("amount"),  # type: ignore[arg-type]
                kind=kind,
                at=None if at is None else parse_aware_iso(at, "at"),
            )
            return 201, {"trade_no": trade_no}
        case ["orders", merchant_id, number], "GET":
            return 200, view_json(emulator.order(merchant_id, number))
        case ["orders", merchant_id, number, "status"], "PUT" | "POST":
            status = data.get("status")
            try:
                parsed = GatewayStatus.parse(status)
            except EcpayError as error:
                raise _AdminError(str(error)) from error
            emulator.set_status(merchant_id, number, parsed)
            return 200, view_json(emulator.order(merchant_id, number))
        case ["faults"], "POST":
            rule = emulator.faults.inject(
                _enum(Fault, data.get("fault"), "fault"),
                endpoint=_endpoint(data.get("endpoint")),
                action=None
                if data.get("action") is None
                else _enum(Action, data["action"], "action"),
                times=data.get("times", 1),
                seconds=data.get("seconds"),
                status_code=data.get("status_code"),
                trans_code=data.get("trans_code"),
                land_after=_seconds(data.get("land_after"), "land_after"),
                writes=data.get("writes"),
                merchant_trade_no=data.get("merchant_trade_no"),
                after_do_action=data.get("after_do_action", False),
            )
            return 201, {"id": rule.id}
        case ["faults"], "DELETE":
            emulator.faults.clear()
            return 200, {}
        case ["landings"], "GET":
            return 200, [landing_json(landing) for landing in emulator.pending_landings()]
        case ["events"], "GET":
            return 200, [event_json(event) for event in emulator.events]
    known = {"time", "merchants", "orders", "faults", "landings", "events"}
    if parts and parts[0] in known:
        raise _AdminError(f"{method} is not allowed here", 405)
    raise _AdminError("no such admin route", 404)


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8")) if body else {}
    except (ValueError, RecursionError) as error:
        raise _AdminError("body is not JSON") from error
    if not isinstance(data, dict):
        raise _AdminError("body must be a JSON object")
    return data


def _seconds(value: object, field: str) -> dt.timedelta | None:
    """A duration sent as a number of seconds (None when absent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _AdminError(f"{field} must be a number of seconds")
    return dt.timedelta(seconds=value)


def _time(emulator: Emulator) -> dict[str, Any]:
    return {
        "now": emulator.now.isoformat(),
        "next_batch": emulator.next_batch().isoformat(),
        "realtime": emulator.realtime,
    }


_E = TypeVar("_E", Fault, Action, PaymentKind)


def _enum(cls: type[_E], value: object, field: str) -> _E:
    for member in cls:
        if value in (member.value, member.name):
            return member
    choices = ", ".join(str(member.value) for member in cls)
    raise _AdminError(f"{field} must be one of {choices}, not {value!r}")


def _endpoint(value: object) -> Endpoint | None:
    if value is None:
        return None
    for member in Endpoint:
        if value in (member.value, member.name):
            return member
    raise _AdminError(f"endpoint must be one of {', '.join(e.name for e in Endpoint)}")
