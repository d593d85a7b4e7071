"""Embedding ``AsyncClient`` in an async web service: a plain ASGI app, no framework needed.

One ``AsyncClient`` per process, opened at ASGI lifespan start-up and closed at shut-down, shared
by every request (its connection pool is the point). Routes, all JSON:

* ``GET  /orders/{merchant_trade_no}``            the order as ECPay sees it now
* ``POST /orders/{merchant_trade_no}/capture``    capture (C)
* ``POST /orders/{merchant_trade_no}/refund``     body ``{"amount": 300}`` (omit: everything left)
* ``POST /orders/{merchant_trade_no}/abandon``    release the hold
* ``POST /orders/{merchant_trade_no}/reconcile``  resolve an unknown outcome
  (docs/ecpay-api.md section 9)

Money-moving routes require an ``Idempotency-Key`` header, passed through as the client's
``idempotency_key``: a shop's front end that retries after a timeout gets the recorded outcome
instead of a second refund. Errors become HTTP statuses a front end can act on (see
``STATUS``); an unknown outcome is 503 with "do not retry, reconcile".

Run it (uvicorn is the optional ``serve`` extra)::

    python examples/async_service.py            # against a built-in emulator, on 127.0.0.1:8080
    curl -s localhost:8080/orders/DEMO1
    curl -s -X POST -H 'Idempotency-Key: r1' -d '{"amount": 300}' localhost:8080/orders/DEMO1/refund

With ``ECPAY_MERCHANT_ID``, ``ECPAY_HASH_KEY`` and ``ECPAY_HASH_IV`` set it talks to ECPay's
production host instead. ``tests/docs/test_client_example.py`` runs this module against the
emulator.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from ecpay_lifecycle import (
    AsyncClient,
    Credentials,
    EcpayError,
    GatewayRefused,
    InvalidArgument,
    InvalidArgumentType,
    OrderLocked,
    OrderSnapshot,
    Outcome,
    OutcomeUnknown,
    RateLimited,
    Reconciliation,
    RuleViolation,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ROUTE = re.compile(r"/orders/([A-Za-z0-9]{1,20})(?:/(capture|refund|abandon|reconcile))?")

#: How each error reaches the front end. Order matters: the first matching class wins.
#: RuleViolation comes first: R10 (RefundExceedsCaptured) is both a rule and a bad amount.
STATUS: tuple[tuple[type[EcpayError], int], ...] = (
    (RuleViolation, 409),
    (InvalidArgument, 400),
    (InvalidArgumentType, 400),
    (OrderLocked, 423),
    (RateLimited, 429),
    (OutcomeUnknown, 503),
    (GatewayRefused, 502),
    (EcpayError, 502),
)


def snapshot_json(snapshot: OrderSnapshot) -> dict[str, Any]:
    return {
        "merchant_trade_no": snapshot.merchant_trade_no,
        "state": snapshot.state.value,
        "amount": snapshot.amount,
        "closed_amount": snapshot.closed_amount,
        "kind": snapshot.kind.value,
    }


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "intent": outcome.intent.value,
        "plan": outcome.plan.describe(),
        "refunded": outcome.refunded,
        "steps": [
            {"action": s.action.value, "amount": s.amount, "rtn_code": s.rtn_code}
            for s in outcome.steps_done
        ],
        "order": snapshot_json(outcome.final),
        "replayed": outcome.replayed,
    }


def reconciliation_json(result: Reconciliation) -> dict[str, Any]:
    return {
        "order": snapshot_json(result.snapshot),
        "locked": result.locked,
        "resolved": [
            {"action": r.action.value, "amount": r.amount, "verdict": r.verdict.value}
            for r in result.resolutions
        ],
    }


def error_json(exc: EcpayError) -> tuple[int, dict[str, Any]]:
    status = next(code for kind, code in STATUS if isinstance(exc, kind))
    body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, RuleViolation):
        body["rule"] = exc.rule
        body["retry_at"] = exc.retry_at.isoformat() if exc.retry_at else None
    if isinstance(exc, GatewayRefused):
        body["rtn_code"] = exc.rtn_code
    if isinstance(exc, OutcomeUnknown):
        body["advice"] = "do not retry: the order is locked until reconcile"
    return status, body


class RefundService:
    """The ASGI application. ``make_client`` builds the shared ``AsyncClient`` at start-up."""

    def __init__(self, make_client: Callable[[], AsyncClient]) -> None:
        self._make_client = make_client
        self._client: AsyncClient | None = None

    async def startup(self) -> None:
        self._client = self._make_client()

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            status, body, headers = await self._handle(scope, receive)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json"), *headers],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        client = self._client
        if client is None:
            return 503, {"error": "starting"}, []
        found = _ROUTE.fullmatch(scope["path"])
        if found is None:
            return 404, {"error": "not found"}, []
        order, verb = found.groups()
        method = scope["method"]
        if (verb is None) != (method == "GET"):
            return 405, {"error": "method not allowed"}, []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("idempotency-key")
        try:
            if verb is None:
                return 200, snapshot_json(await client.query(order)), []
            if verb == "reconcile":
                return 200, reconciliation_json(await client.reconcile(order)), []
            if key is None:
                return 400, {"error": "an Idempotency-Key header is required"}, []
            if verb == "capture":
                outcome = await client.capture(order, idempotency_key=key)
            elif verb == "abandon":
                outcome = await client.abandon(order, idempotency_key=key)
            else:
                amount = (await _json_body(receive)).get("amount")
                outcome = await client.refund(order, amount, idempotency_key=key)
        except EcpayError as exc:
            status, body = error_json(exc)
            extra = []
            if isinstance(exc, RateLimited):
                # The client sends nothing to ECPay until then (it remembers the 403).
                when = exc.retry_at or dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
                stamp = email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)
                extra = [(b"retry-after", stamp.encode())]
            return status, body, extra
        return 200, outcome_json(outcome), []


async def _json_body(receive: Receive) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument("the request body is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return value


def demo_service() -> RefundService:
    """The service against a built-in emulator with one merchant and two authorized orders."""
    from ecpay_lifecycle.emulator import Emulator  # noqa: PLC0415 - only the demo needs it

    merchant, key, iv = "3002607", "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk"
    emulator = Emulator(now=dt.datetime.now(dt.UTC))
    emulator.add_merchant(merchant, key, iv, balance=100_000)
    emulator.authorize(merchant, "DEMO1", 1000)
    emulator.authorize(merchant, "DEMO2", 2500)
    return RefundService(
        lambda: AsyncClient(
            Credentials(merchant, key, iv),
            transport=httpx.MockTransport(emulator.async_handler),
            clock=emulator.clock,
        )
    )


def production_service() -> RefundService:
    """The service against ECPay's production host, credentials from the environment."""
    credentials = Credentials(
        os.environ["ECPAY_MERCHANT_ID"],
        os.environ["ECPAY_HASH_KEY"],
        os.environ["ECPAY_HASH_IV"],
        auto_close=os.environ.get("ECPAY_AUTO_CLOSE", "1") != "0",
    )
    return RefundService(lambda: AsyncClient(credentials))


def main() -> None:
    import uvicorn  # noqa: PLC0415 - optional: pip install 'ecpay-lifecycle[serve]'

    live = "ECPAY_MERCHANT_ID" in os.environ
    app = production_service() if live else demo_service()
    uvicorn.run(app, host="127.0.0.1", port=8080, lifespan="on")


if __name__ == "__main__":
    main()
