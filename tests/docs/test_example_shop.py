"""examples/shop_service.py and its kit-based test run in the suite; broken services are caught.

The example's own test (``examples/test_shop_service.py``, a ``LifecycleMachine`` subclass) is
collected here as ``TestShopService``. Then two deliberately broken variants of the service,
each a classic shop bug, must make that same test fail, and hypothesis must shrink each failure
to the few steps that show the bug:

- "refund everything" sends the order's amount instead of what is left (R10 refuses it after a
  partial refund: the customer gets a 409 for a refund that was possible);
- a retried request (same ``request_id``, replayed by the client) is booked a second time.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any

import httpx
import pytest

from _shrinking import shrunk_failure
from ecpay_lifecycle import TAIPEI, Action, Client, Credentials, PaymentKind
from ecpay_lifecycle.emulator import Emulator

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
MID, KEY, IV = "3002607", "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk"


def _load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` under its own name, as ``pytest examples/`` would."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


shop_service = _load("shop_service")
shop_test = _load("test_shop_service")

#: The example's own stateful test, with the example's settings.
TestShopService = shop_test.TestShopService


# -- the endpoint, case by case ----------------------------------------------------------------


@pytest.fixture
def shop() -> Any:
    emulator = Emulator(now=dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI))
    emulator.add_merchant(MID, KEY, IV, balance=100_000)
    client = Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    )
    service = shop_service.OrderService(client)
    service.ecpay = emulator  # for the tests to count on ECPay's books
    for number, kind in (("A1", PaymentKind.ONE_TIME), ("A2", PaymentKind.INSTALLMENT)):
        emulator.authorize(MID, number, 1000, kind=kind)
        service.paid(number, 1000)
    client.capture("A1")
    client.capture("A2")
    yield service
    client.close()


def test_a_refund_is_answered_with_the_plan_and_booked_once(shop: Any) -> None:
    first = shop.refund("A1", {"request_id": "r1", "amount": 300})
    assert (first.status, first.body["refunded"], first.body["plan"]) == (200, 300, "R(300)")
    again = shop.refund("A1", {"request_id": "r1", "amount": 300})
    assert (again.status, again.body["replayed"], again.body["refunded_total"]) == (200, True, 300)
    rest = shop.refund("A1", {"request_id": "r2"})
    assert (rest.body["refunded"], rest.body["plan"]) == (700, "E(1000) -> N(1000)")
    assert shop.order("A1").refunded == 1000


def test_a_refund_whose_booking_died_with_the_process_is_booked_once_by_the_retry(
    shop: Any,
) -> None:
    client = shop._client  # the worker's own client, as the service holds it
    # The worker called ECPay, the refund went through, and the process died before booking.
    client.refund("A1", 300, idempotency_key=shop.key_for("A1", "r-81"))
    assert shop.order("A1").refunded == 0
    # The front end retries the same request: the journal replays, the shop books it now...
    retry = shop.refund("A1", {"request_id": "r-81", "amount": 300})
    assert (retry.status, retry.body["replayed"], retry.body["refunded_total"]) == (200, True, 300)
    # ...and only once, however often the retry comes.
    for _ in range(3):
        assert (
            shop.refund("A1", {"request_id": "r-81", "amount": 300}).body["refunded_total"] == 300
        )
    assert shop.order("A1").refunded == 300
    refunds = [e for e in shop.ecpay.applied_do_actions(MID, "A1") if e.action is Action.REFUND]
    assert [e.amount for e in refunds] == [300]  # ECPay's books: one refund


def test_a_rule_is_a_409_naming_it(shop: Any) -> None:
    response = shop.refund("A2", {"request_id": "r1", "amount": 300})
    assert response.status == 409
    assert response.body["rule"] == "R11"
    too_much = shop.refund("A1", {"request_id": "r2", "amount": 1001})
    assert too_much.status == 400  # more than the order: a bad amount (R19), not a rule
    assert shop.order("A1").refunded == 0


@pytest.mark.parametrize(
    ("order", "body", "status"),
    [
        ("NOPE", {"request_id": "r1"}, 404),
        ("A1", {}, 400),
        ("A1", {"request_id": ""}, 400),
        ("A1", {"request_id": "r1", "amount": True}, 400),
        ("A1", {"request_id": "r1", "amount": 1.5}, 400),
        ("A1", {"request_id": "r1", "amount": "300"}, 400),
        ("A1", {"request_id": "r1", "amount": 0}, 400),
    ],
)
def test_bad_requests_move_nothing(
    shop: Any, order: str, body: dict[str, object], status: int
) -> None:
    assert shop.refund(order, body).status == status
    assert shop.order("A1").refunded == 0


# -- deliberately broken services are caught and shrunk ----------------------------------------


class RefundsAllFromTheOrderAmount(shop_service.OrderService):
    """Broken on purpose: "everything" is sent as the order's amount, not as what is left."""

    def amount_to_send(self, order: Any, asked: int | None) -> int | None:
        return order.amount if asked is None else asked


class BooksRetriesAgain(shop_service.OrderService):
    """Broken on purpose: books by adding up answers, not by key, so a retried request that
    the client replays is booked a second time."""

    def book(self, order: Any, key: str, refunded: int) -> None:
        order.bookings[f"{key}#{len(order.bookings)}"] = refunded


@pytest.mark.parametrize(
    ("broken", "message", "last_step"),
    [
        (RefundsAllFromTheOrderAmount, "R10", "customer_asks_for_a_refund"),
        (BooksRetriesAgain, "booked", "front_end_retries"),
    ],
)
def test_a_broken_service_is_caught_and_shrunk_to_a_minimal_case(
    broken: type, message: str, last_step: str
) -> None:
    # The example's own machine with the broken service, its search narrowed to the shop's
    # endpoint: the kit's own money rules, bank events and balance changes switched off.
    machine = type(
        f"Shop{broken.__name__}",
        (shop_test.ShopMachine,),
        {"service": broken, "money_rules": False, "bank_events": False, "balance_changes": False},
    )
    error, notes, steps = shrunk_failure(machine, step_count=20)
    # The first order, (the batch that closes it,) one refund the shop answers, and the step
    # that shows the bug: three or four steps, whatever the runs before shrinking looked like.
    assert len(steps) <= 4, notes
    assert last_step in steps[-1], notes
    assert steps[0].startswith("orders_0 = state.first_order("), notes
    assert message in str(error) or message in notes, (error, notes)
