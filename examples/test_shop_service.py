"""The shop's own test of ``examples/shop_service.py``, written with the testing kit.

``ShopMachine`` is ``LifecycleMachine`` plus the shop: the kit's rules move orders through their
whole lifecycle (authorizations, captures, refunds and abandons straight through the client, the
20:15 batch, the 21/80/90-day marks, bank events, balance changes) and check the client against
the emulator; the shop adds two rules that call its own endpoint and one invariant about its
books. The oracle for every answer is the planner on the emulator's truth (``self.plan``).

Run it on its own with ``pytest examples/test_shop_service.py``; the project's suite runs it
from ``tests/docs/test_example_shop.py``.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from ecpay_lifecycle import EcpayError, Intent, Plan, RuleViolation
from ecpay_lifecycle.strategies import LifecycleMachine
from shop_service import OrderService, Response


class ShopMachine(LifecycleMachine):
    """The kit's lifecycle, with the shop's endpoint called in between."""

    #: The service under test (a test swaps in deliberately broken ones).
    service: type[OrderService] = OrderService

    def __init__(self) -> None:
        super().__init__()
        self.shop = self.service(self.client)
        self.request_ids = itertools.count(1)
        #: Requests the shop answered 200: (order, body, response), for the front end to retry.
        self.answered: list[tuple[str, dict[str, object], Response]] = []
        #: Requests answered 202 or 503 (only with faults): the front end asks again later.
        self.unanswered: list[tuple[str, dict[str, object]]] = []

    def on_authorized(self, merchant_trade_no: str) -> None:
        """ECPay's payment notice reaches the shop."""
        self.shop.paid(merchant_trade_no, self.truth(merchant_trade_no).amount)

    @rule(order=LifecycleMachine.orders, data=st.data())
    def customer_asks_for_a_refund(self, order: str, data: st.DataObject) -> None:
        """Everything that is left (``null``), a part of what is left, or any part of the
        order; the shop must answer what the planner decides on ECPay's truth, and move
        exactly that much money."""
        before = self.truth(order)
        left = max(1, before.refundable - 1)
        amount = data.draw(
            st.none() | st.integers(1, left) | st.integers(1, before.amount), label="amount"
        )
        expected: Plan | EcpayError
        try:
            expected = self.plan(Intent.REFUND, order, amount)
        except EcpayError as refusal:
            expected = refusal
        covered = isinstance(expected, Plan) and self.balance_covers(order, expected)
        body: dict[str, object] = {"request_id": f"r{next(self.request_ids)}", "amount": amount}

        response = self.shop.refund(order, body)

        returned = before.refundable - self.truth(order).refundable
        if response.status in (202, 503):
            # Only with faults (ShopMachineUnderFaults): ECPay's answer was lost, the order is
            # locked, or ECPay could not be reached. Money may have moved, never more than
            # planned; the front end asks again with the same request_id.
            assert self.faults, response
            assert returned <= (expected.refund_total if isinstance(expected, Plan) else 0)
            self.unanswered.append((order, body))
            return
        if isinstance(expected, Plan) and covered:
            assert response.status == 200, (response, expected.describe())
            assert response.body["refunded"] == expected.refund_total == returned, response
            self.answered.append((order, body, response))
        elif isinstance(expected, Plan):
            # R16: the balance does not cover the refund; ECPay refuses, nothing moves.
            assert response.status == 502, response
            assert returned == 0
        else:
            assert response.status == (409 if isinstance(expected, RuleViolation) else 400), (
                response,
                expected,
            )
            if isinstance(expected, RuleViolation):
                assert response.body["rule"] == expected.rule, (response, expected)
            assert returned == 0

    @rule(back=st.integers(0, 3))
    def front_end_retries(self, back: int) -> None:
        """The front end sends an answered request again (its first reply timed out): the
        same answer comes back and nothing moves, whatever happened to the order since."""
        if not self.answered:
            return
        order, body, first = self.answered[max(0, len(self.answered) - 1 - back)]
        before = self.truth(order)
        again = self.shop.refund(order, body)
        assert again.status == 200, again
        assert again.body["replayed"] is True
        assert again.body["refunded"] == first.body["refunded"]
        assert self.truth(order) == before

    @invariant()
    def the_shop_never_books_more_than_ecpay_returned(self) -> None:
        """What the shop told customers it refunded never exceeds what ECPay returned (the
        kit's own rules return money too, behind the shop's back, so this is an upper bound)."""
        for order in self.order_numbers:
            truth = self.truth(order)
            booked = self.shop.order(order)
            assert booked is not None
            returned = truth.amount - truth.refundable
            assert booked.refunded <= returned, (
                f"the shop booked {booked.refunded} TWD refunded on {order}; "
                f"ECPay returned {returned}"
            )


class ShopMachineUnderFaults(ShopMachine):
    """The same shop with faults armed between the steps (the kit's ``faults`` switch): lost
    replies, timeouts, 5xx, late landings, queries behind ECPay's writes. The kit settles what
    is unknown (past the fence, ``reconcile``) and counts the money on ECPay's books; the shop
    answers 202 until then and never books more than ECPay returned."""

    faults = True

    @rule(back=st.integers(0, 3))
    def front_end_asks_again(self, back: int) -> None:
        """A request answered 202 or 503, sent again with its request_id: settled, it is
        answered 200 with what ECPay did (booked once); otherwise 202 or 503 again, or the rule
        that now forbids it if nothing had been sent."""
        if not self.unanswered:
            return
        order, body = self.unanswered[max(0, len(self.unanswered) - 1 - back)]
        response = self.shop.refund(order, body)
        assert response.status in (200, 202, 409, 502, 503), response
        if response.status not in (202, 503):
            self.unanswered.remove((order, body))


TestShopService = ShopMachine.TestCase
TestShopService.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestShopServiceUnderFaults = ShopMachineUnderFaults.TestCase
TestShopServiceUnderFaults.settings = settings(
    max_examples=40, stateful_step_count=20, deadline=None
)
