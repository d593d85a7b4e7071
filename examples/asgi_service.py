"""A refund endpoint as a plain ASGI app, for ``uvicorn --workers N`` on a shared journal.

``POST /orders/{order_id}/refund`` with ``{"request_id": "r-81", "amount": 300}`` refunds once per
request id, however many workers receive the same request at once: every worker builds its
``Client`` on the same durable journal (``ECPAY_JOURNAL``: an SQLite file on one host, a
``postgresql://`` URL for many), so the journal's claim makes one of them the owner (R23) and its
locks serialise the order. Answers: 200 with the outcome (``replayed`` when the request was
answered before), 202 while another worker runs the same request or the outcome is unknown
(ask again after ``retry_at``), 409 a rule refuses it, 400 a bad body, 502/503 ECPay refused or
could not be reached.

Run it (credentials from the environment, never the command line)::

    ECPAY_MERCHANT_ID=... ECPAY_HASH_KEY=... ECPAY_HASH_IV=... \\
    ECPAY_JOURNAL=postgresql://shop@db/shop \\
    uvicorn asgi_service:app --app-dir examples --workers 4

``tests/test_asgi_example.py`` runs it under ``uvicorn --workers 4`` against the emulator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ecpay_lifecycle import (
    Client,
    EcpayError,
    GatewayRefused,
    InvalidArgument,
    OperationInProgress,
    OrderLocked,
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


def refund(order_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The endpoint's logic: one refund per ``request_id``."""
    request_id = body.get("request_id")
    amount = body.get("amount")
    if not isinstance(request_id, str) or not request_id:
        return 400, {"error": "request_id is required"}
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
        return 400, {"error": "amount must be whole TWD"}
    try:
        outcome = client().refund(
            order_id, amount, idempotency_key=f"refund-{order_id}-{request_id}"
        )
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
            status, answer = await anyio.to_thread.run_sync(refund, found.group(1), body)
    payload = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
