"""Aiming a fault: at one order (``merchant_trade_no``) and after a DoAction (``after_do_action``),
so a test can arm "the reply is lost, then the confirming query fails" without timing tricks."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle.emulator import Endpoint, Fault
from test_emulator_support import MID, Wire, make_emulator, ok

C = Action.CLOSE


def detail_status(wire: Wire, number: str = "A1") -> int:
    response = wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": number})
    return response.status_code


def test_a_fault_aimed_at_one_order() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    rule = emulator.faults.inject(Fault.LOST_REPLY, merchant_trade_no="A2")
    assert rule.merchant_trade_no == "A2"
    assert ok(wire.do(C, "A1", 1000))
    assert wire.detail("A1")["RtnValue"]["Status"] == "To be captured"
    assert emulator.faults.remaining(rule) == 1
    with pytest.raises(httpx.RemoteProtocolError):
        wire.detail("A2")  # any endpoint, this order
    assert emulator.faults.remaining(rule) == 0


def test_lost_reply_then_the_confirming_query_fails() -> None:
    """The brief's scenario: a DoAction's reply is lost and the query after it gets a 502."""
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    query_fails = emulator.faults.inject(
        Fault.SERVER_ERROR_BEFORE_APPLY, endpoint=Endpoint.CREDIT_DETAIL, after_do_action=True
    )
    assert emulator.faults.is_dormant(query_fails)
    assert detail_status(wire) == 200  # dormant: a query before any DoAction is answered
    assert emulator.faults.remaining(query_fails) == 1
    with pytest.raises(httpx.RemoteProtocolError):
        wire.do(C, "A1", 1000)
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED  # applied, reply lost
    assert not emulator.faults.is_dormant(query_fails)
    assert detail_status(wire) == 502  # the confirming query fails
    assert detail_status(wire) == 200  # and the next one is answered
    assert emulator.faults.pending() == ()


def test_the_do_action_that_wakes_a_rule_is_not_matched_by_it() -> None:
    emulator = make_emulator(balance=10_000, full_amount_actions=frozenset())
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    rule = emulator.faults.inject(
        Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION, after_do_action=True
    )
    assert ok(wire.do(C, "A1", 500))  # wakes it, answered normally
    assert emulator.faults.remaining(rule) == 1
    with pytest.raises(httpx.RemoteProtocolError):
        wire.do(Action.CANCEL, "A1", 500)
    assert emulator.order(MID, "A1").status is GatewayStatus.OPERATION_CANCELED


def test_after_do_action_for_one_order_waits_for_a_do_action_on_that_order() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    rule = emulator.faults.inject(
        Fault.RATE_LIMITED,
        endpoint=Endpoint.CREDIT_DETAIL,
        merchant_trade_no="A2",
        after_do_action=True,
    )
    assert ok(wire.do(C, "A1", 1000))  # another order: still dormant
    assert emulator.faults.is_dormant(rule)
    assert ok(wire.do(C, "A2", 1000))  # wakes it
    assert detail_status(wire, "A1") == 200  # it matches A2 only
    assert detail_status(wire, "A2") == 403
    assert emulator.faults.remaining(rule) == 0


def test_only_a_received_do_action_wakes_a_rule() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    rule = emulator.faults.inject(Fault.RATE_LIMITED, after_do_action=True)
    # A bad envelope is not received: it wakes nothing (nor does a query).
    http = httpx.Client(transport=httpx.MockTransport(emulator.handler))
    assert http.post("https://x" + Endpoint.DO_ACTION.value, content=b"junk").status_code == 200
    assert detail_status(wire) == 200
    assert emulator.faults.is_dormant(rule)
    # A DoAction the emulator refuses is still received: it wakes the rule.
    assert wire.do(Action.REFUND, "A1", 100)["RtnCode"] != 1
    assert not emulator.faults.is_dormant(rule)
    assert detail_status(wire) == 403


def test_a_dormant_rule_lets_later_rules_fire_and_clear_disarms_it() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    dormant = emulator.faults.inject(Fault.RATE_LIMITED, after_do_action=True)
    awake = emulator.faults.inject(Fault.SERVER_ERROR_BEFORE_APPLY, status_code=503)
    assert emulator.faults.pending() == (dormant, awake)
    assert detail_status(wire) == 503
    emulator.faults.clear()
    assert not emulator.faults.is_dormant(dormant)
    assert emulator.faults.pending() == ()


def test_targeting_works_through_the_async_handler() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, merchant_trade_no="A2")
    wire = Wire(emulator)

    async def detail(number: str) -> httpx.Response:
        body = wire.envelope({"MerchantID": MID, "MerchantTradeNo": number})
        transport = httpx.MockTransport(emulator.async_handler)
        async with httpx.AsyncClient(transport=transport) as http:
            return await http.post(
                "https://ecpayment.ecpay.com.tw" + Endpoint.CREDIT_DETAIL.value, json=body
            )

    assert asyncio.run(detail("A1")).status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(detail("A2"))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"merchant_trade_no": 5}, InvalidArgumentType),
        ({"merchant_trade_no": ""}, InvalidArgument),
        ({"merchant_trade_no": "A-1"}, InvalidArgument),
        ({"merchant_trade_no": "A" * 21}, InvalidArgument),
        ({"after_do_action": 1}, InvalidArgumentType),
        ({"after_do_action": None}, InvalidArgumentType),
    ],
)
def test_targeting_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception]) -> None:
    emulator = make_emulator()
    with pytest.raises(error):
        emulator.faults.inject(Fault.LOST_REPLY, **kwargs)
    assert emulator.faults.pending() == ()
