"""A small order service with a refund endpoint, on ``ecpay_lifecycle.Client``. Plain Python.

What a shop's back end usually has around ECPay: its own order book (what each order cost and
how much the shop has told the customer it refunded), a payment notice that records a paid
order, and a refund endpoint that takes the JSON body of ``POST /orders/{order_id}/refund`` and
answers with an HTTP status and a JSON body. No web framework: wire :meth:`OrderService.refund`
to whichever one you use.

The endpoint's contract:

* body ``{"request_id": "r-81", "amount": 300}``; ``amount`` absent or ``null`` refunds
  everything that is left; ``request_id`` is the front end's id for this request, so that a
  retry after a timeout (same ``request_id``) gets the first answer back and never refunds twice;
* 200 ``{"refunded": 300, "refunded_total": 300, "plan": "R(300)", "state": ..., "replayed"}``;
* 400 a bad body or amount, 404 an unknown order, 409 a rule forbids it (``rule``,
  ``message``, ``retry_at``), 202 the refund is being settled (ECPay's answer was lost, or the
  same request is running in another worker; ``retry_at`` says when to ask again), 502 ECPay
  refused (R16: not enough balance), 503 ECPay could not be reached.

Booking (docs/ecpay-api.md section 9): the shop books each refund *keyed by its idempotency
key*, replayed or not. If the process dies after ECPay refunded and before the shop booked, the
front end's retry gets the replayed outcome from the journal, and booking it under its key books
it exactly once.

``examples/test_shop_service.py`` tests it with the testing kit's ``LifecycleMachine``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ecpay_lifecycle import (
    Client,
    EcpayError,
    GatewayRefused,
    InvalidArgument,
    InvalidArgumentType,
    OperationInProgress,
    OrderLocked,
    OutcomeUnknown,
    RuleViolation,
)

__all__ = ["OrderService", "Response", "ShopOrder"]


@dataclass(frozen=True)
class Response:
    """What the endpoint answers: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShopOrder:
    """One order in the shop's book: its refunds, each booked under its idempotency key."""

    order_id: str
    amount: int
    bookings: dict[str, int] = field(default_factory=dict)

    @property
    def refunded(self) -> int:
        """What the shop told the customer it refunded."""
        return sum(self.bookings.values())


class OrderService:
    """The shop's orders and its refund endpoint; ECPay is reached through ``client`` only."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._orders: dict[str, ShopOrder] = {}

    def paid(self, order_id: str, amount: int) -> None:
        """ECPay's payment notice: the card was authorized for ``amount`` TWD."""
        self._orders[order_id] = ShopOrder(order_id, amount)

    def order(self, order_id: str) -> ShopOrder | None:
        """The shop's record of the order, if it has one."""
        return self._orders.get(order_id)

    def refund(self, order_id: str, body: Mapping[str, object]) -> Response:
        """``POST /orders/{order_id}/refund``: return money to the customer, once per request."""
        order = self._orders.get(order_id)
        if order is None:
            return Response(404, {"error": "not_found"})
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            return Response(400, {"error": "bad_request", "message": "request_id is required"})
        asked = body.get("amount")
        if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int)):
            return Response(400, {"error": "bad_request", "message": "amount must be whole TWD"})
        key = self.key_for(order_id, request_id)
        try:
            outcome = self._client.refund(
                order_id, self.amount_to_send(order, asked), idempotency_key=key
            )
        except RuleViolation as refusal:
            # First: R10 (RefundExceedsCaptured) is both a rule and a bad amount; it is a rule.
            return Response(
                409,
                {
                    "error": "refused",
                    "rule": refusal.rule,
                    "message": refusal.message,
                    "retry_at": refusal.retry_at.isoformat() if refusal.retry_at else None,
                },
            )
        except (InvalidArgument, InvalidArgumentType) as exc:
            return Response(400, {"error": "bad_request", "message": exc.message})
        except (OutcomeUnknown, OrderLocked, OperationInProgress) as exc:
            # Money may have moved: never answer "failed". Ask again with the same request_id
            # after retry_at (the fence, R22): the same key then settles and answers.
            retry_at = exc.retry_at.isoformat() if exc.retry_at else None
            return Response(
                202, {"status": "pending", "message": exc.message, "retry_at": retry_at}
            )
        except GatewayRefused as exc:
            return Response(502, {"error": "ecpay_refused", "rtn_code": exc.rtn_code})
        except EcpayError as exc:
            return Response(503, {"error": "ecpay_unavailable", "message": exc.message})
        # Booked under its key, replayed or not: a refund whose first booking was lost (the
        # process died after ECPay refunded) is booked by the retry, and only once.
        self.book(order, key, outcome.refunded)
        return Response(
            200,
            {
                "refunded": outcome.refunded,
                "refunded_total": order.refunded,
                "plan": outcome.plan.describe(),
                "state": outcome.final.state.value,
                "replayed": outcome.replayed,
            },
        )

    def amount_to_send(self, order: ShopOrder, asked: int | None) -> int | None:
        """What to ask the client for. ``None`` is "everything that is left": the client works
        out what is left from a fresh query (R4, R10), so the shop never computes it."""
        return asked

    def key_for(self, order_id: str, request_id: str) -> str:
        """The idempotency key of one refund request: fixed before anything is sent."""
        return f"refund-{order_id}-{request_id}"

    def book(self, order: ShopOrder, key: str, refunded: int) -> None:
        """Record a refund the customer was told about, once per key."""
        order.bookings[key] = refunded
