"""A refund endpoint as a plain ASGI app, for ``uvicorn --workers N`` on a shared journal.

``POST /orders/{order_id}/refund`` with ``{"request_id": "r-81", "amount": 300}`` refunds once per
request id, however many workers receive the same request at once: every worker builds its
``Client`` on the same durable journal (``ECPAY_JOURNAL``: an SQLite file on one host, a
``postgresql://`` URL for many), so the journal's claim makes one of them the owner (R23) and its
locks serialise the order. Answers: 200 with the outcome (``replayed`` when the request was
answered before), 202 while another worker runs the same request or the outcome is unknown
(ask again after ``retry_at``), 409 a rule refuses it, 400 a bad body, 502/503 ECPay refused or
could not be reached.

Two entry points, the same answers:

- ``app``: the synchronous ``Client`` (on ``PostgresJournal`` or ``SQLiteJournal``), each request
  in a thread;
- ``async_app``: ``AsyncClient`` on ``AsyncPostgresJournal`` (``ECPAY_JOURNAL`` must then be a
  ``postgresql://`` URL), opened in the ASGI lifespan and closed at shutdown: no thread, and no
  journal write blocks the event loop.

Run it (credentials from the environment, never the command line)::

    ECPAY_MERCHANT_ID=... ECPAY_HASH_KEY=... ECPAY_HASH_IV=... \\
    ECPAY_JOURNAL=postgresql://shop@db/shop \\
    uvicorn asgi_service:async_app --app-dir examples --workers 4

``tests/docs/test_asgi_example.py`` runs both under ``uvicorn --workers 4`` against the emulator.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ecpay_lifecycle import (
    AsyncClient,
    AsyncPostgresJournal,
    Client,
    ConfigurationError,
    EcpayError,
    GatewayRefused,
    InvalidArgument,
    OperationInProgress,
    OrderLocked,
    Outcome,
    OutcomeUnknown,
    RuleViolation,
)
from ecpay_lifecycle._ops import credentials_from_environment, open_journal

_ROUTE = re.compile(r"^/orders/([A-Za-z0-9]{1,20})/refund$")
_client: Client | None = None


def client() -> Client:
    """This worker's client, made once per process on the shared journal."""
    global _client  # noqa: PLW0603  # one client per worker process, made on first use
    if _client is None:
        credentials, base_url = credentials_from_environment()
        _client = Client(credentials, base_url=base_url, journal=open_journal(None))
    return _client


Answer = tuple[int, dict[str, Any]]


class _BadRequest(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.answer: Answer = (400, {"error": error})


def _request(order_id: str, body: dict[str, Any]) -> tuple[str, int | None]:
    """The refund's idempotency key and amount; a bad body raises :class:`_BadRequest`."""
    request_id = body.get("request_id")
    amount = body.get("amount")
    if not isinstance(request_id, str) or not request_id:
        raise _BadRequest("request_id is required")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
        raise _BadRequest("amount must be whole TWD")
    return f"refund-{order_id}-{request_id}", amount


def refund(order_id: str, body: dict[str, Any]) -> Answer:
    """The endpoint's logic: one refund per ``request_id``."""
    try:
        key, amount = _request(order_id, body)
        outcome = client().refund(order_id, amount, idempotency_key=key)
    except _BadRequest as bad:
        return bad.answer
    except EcpayError as exc:
        return _refused(exc)
    return _answer(outcome)


async def refund_async(order_id: str, body: dict[str, Any]) -> Answer:
    """The same with this worker's AsyncClient."""
    if _async_client is None:
        return 503, {"error": "not_started", "message": "the lifespan has not started"}
    try:
        key, amount = _request(order_id, body)
        outcome = await _async_client.refund(order_id, amount, idempotency_key=key)
    except _BadRequest as bad:
        return bad.answer
    except EcpayError as exc:
        return _refused(exc)
    return _answer(outcome)


def _refused(error: EcpayError) -> Answer:
    try:
        raise error
    except RuleViolation as refusal:
        return 409, {"error": "refused", "rule": refusal.rule, "message": refusal.message}
    except InvalidArgument as exc:
        return 400, {"error": exc.message}
    except (OperationInProgress, OutcomeUnknown, OrderLocked) as exc:
        retry_at = exc.retry_at.isoformat() if exc.retry_at else None
        return 202, {"status": "pending", "kind": type(exc).__name__, "retry_at": retry_at}
    except GatewayRefused as exc:
        return 502, {"error": "ecpay_refused", "rtn_code": str(exc.rtn_code)}
    except EcpayError as exc:
        return 503, {"error": "ecpay_unavailable", "message": exc.message}


def _answer(outcome: Outcome) -> Answer:
    return 200, {
        "refunded": outcome.refunded,
        "plan": outcome.plan.describe(),
        "replayed": outcome.replayed,
    }


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI entry point. The client is synchronous: each request runs in a thread."""
    import anyio.to_thread  # noqa: PLC0415  # installed with uvicorn/httpx

    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return

    async def handle(order_id: str, body: dict[str, Any]) -> Answer:
        return await anyio.to_thread.run_sync(refund, order_id, body)

    await _serve(scope, receive, send, handle)


_async_journal: AsyncPostgresJournal | None = None
_async_client: AsyncClient | None = None


async def async_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI entry point on AsyncClient: the journal opens in the lifespan (so a wrong
    ``ECPAY_JOURNAL`` stops the worker at start-up) and closes at shutdown."""
    global _async_journal, _async_client  # noqa: PLW0603  # one per worker process
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    credentials, base_url = credentials_from_environment()
                    conninfo = os.environ.get("ECPAY_JOURNAL", "")
                    if not conninfo.startswith(("postgresql://", "postgres://")):
                        raise ConfigurationError("async_app needs ECPAY_JOURNAL=postgresql://...")
                    _async_journal = AsyncPostgresJournal(conninfo)
                    await _async_journal.open()
                    _async_client = AsyncClient(
                        credentials, base_url=base_url, journal=_async_journal
                    )
                except EcpayError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _async_client is not None:
                    await _async_client.aclose()
                if _async_journal is not None:
                    await _async_journal.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _serve(scope, receive, send, refund_async)


async def _serve(
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    handle: Callable[[str, dict[str, Any]], Awaitable[Answer]],
) -> None:
    """Read the request, route it to ``handle``, write the JSON answer."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    found = _ROUTE.match(scope["path"])
    if scope["method"] != "POST" or found is None:
        status, answer = 404, {"error": "not_found"}
    else:
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            status, answer = 400, {"error": "the body must be a JSON object"}
        else:
            status, answer = await handle(found.group(1), body)
    payload = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
