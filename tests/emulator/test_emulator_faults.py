"""Faults switched on by tests (docs/ecpay-api.md sections 9 and 10): each one's transport
symptom and whether the change was applied, through httpx.MockTransport for both sync and async
clients."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action, CodecError, GatewayStatus, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, Fault
from test_emulator_support import IV, KEY, MID, Wire, make_emulator, ok

# fault -> (exception raised through MockTransport, or the HTTP status; whether applied)
SYMPTOMS: dict[Fault, tuple[type[Exception] | int, bool]] = {
    Fault.DELAY: (200, True),
    Fault.TIMEOUT_BEFORE_APPLY: (httpx.ConnectTimeout, False),
    Fault.READ_TIMEOUT_BEFORE_APPLY: (httpx.ReadTimeout, False),
    Fault.TIMEOUT_AFTER_APPLY: (httpx.ReadTimeout, True),
    Fault.LOST_REPLY: (httpx.RemoteProtocolError, True),
    Fault.CONNECTION_RESET: (httpx.ReadError, True),
    Fault.SERVER_ERROR_BEFORE_APPLY: (502, False),
    Fault.SERVER_ERROR_AFTER_APPLY: (502, True),
    Fault.RATE_LIMITED: (403, False),
    Fault.TRANS_CODE_ERROR: (200, False),
    Fault.GARBLED_DATA: (200, True),
    Fault.MISMATCHED_REPLY: (200, True),
    Fault.LATE_APPLY: (httpx.ReadTimeout, False),  # not now: it lands later (test_emulator_late)
    Fault.STALE_QUERY: (200, True),  # CreditDetail only (test_emulator_stale)
}
#: The faults a DoAction can meet (STALE_QUERY is for CreditDetail only).
DO_ACTION_FAULTS = [fault for fault in Fault if fault is not Fault.STALE_QUERY]


def test_every_fault_has_a_symptom_here() -> None:
    assert set(SYMPTOMS) == set(Fault)
    assert {f for f, (_s, applied) in SYMPTOMS.items() if applied} == {
        f for f in Fault if f.applies_change
    }


def close_inner(emulator: Emulator, number: str = "A1") -> dict[str, Any]:
    return {
        "MerchantID": MID,
        "MerchantTradeNo": number,
        "TradeNo": emulator.order(MID, number).trade_no,
        "Action": "C",
        "TotalAmount": 1000,
    }


def check_reply(fault: Fault, response: httpx.Response, emulator: Emulator) -> None:
    outer = response.json()
    codec = AesCodec(KEY, IV)
    if fault is Fault.TRANS_CODE_ERROR:
        assert outer["TransCode"] == 999
        assert outer["Data"] == ""
    elif fault is Fault.GARBLED_DATA:
        assert outer["TransCode"] == 1
        raw = base64.b64decode(outer["Data"], validate=True)  # valid base64 ...
        assert len(raw) % 16 == 0
        with pytest.raises(CodecError):  # ... that does not decrypt
            codec.decrypt(outer["Data"])
    elif fault is Fault.MISMATCHED_REPLY:
        inner = codec.decrypt(outer["Data"])
        assert inner["RtnCode"] == 1
        assert inner["MerchantTradeNo"] != "A1"
        assert inner["TradeNo"] != emulator.order(MID, "A1").trade_no
    elif fault is Fault.DELAY:
        assert ok(codec.decrypt(outer["Data"]))


@pytest.mark.parametrize("fault", DO_ACTION_FAULTS)
def test_fault_symptom_and_whether_applied_sync(fault: Fault) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    seconds = 0.001 if fault is Fault.DELAY else None
    rule = emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, seconds=seconds)
    symptom, applied = SYMPTOMS[fault]
    if isinstance(symptom, int):
        response = wire.post(Endpoint.DO_ACTION, close_inner(emulator))
        assert response.status_code == symptom
        if symptom == 200:
            check_reply(fault, response, emulator)
    else:
        with pytest.raises(symptom):
            wire.post(Endpoint.DO_ACTION, close_inner(emulator))
    status = emulator.order(MID, "A1").status
    assert status is (GatewayStatus.TO_BE_CAPTURED if applied else GatewayStatus.AUTHORIZED)
    assert emulator.faults.remaining(rule) == 0
    last = emulator.events[-1]
    assert (last.kind, last.fault, last.applied) == (EventKind.REQUEST, fault, applied)
    assert last.request is not None
    assert last.request["Action"] == "C"
    # The fault is spent: the next request is answered normally (E undoes C if it was applied).
    follow = Action.CANCEL if applied else Action.CLOSE
    assert ok(wire.do(follow, "A1", 1000))


@pytest.mark.parametrize("fault", DO_ACTION_FAULTS)
@pytest.mark.parametrize("use_async_handler", [False, True])
def test_fault_symptom_and_whether_applied_async(fault: Fault, use_async_handler: bool) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(fault, seconds=0.001 if fault is Fault.DELAY else None)
    handler = emulator.async_handler if use_async_handler else emulator.handler
    codec = AesCodec(KEY, IV)
    body = {
        "MerchantID": MID,
        "RqHeader": {"Timestamp": int(emulator.now.timestamp())},
        "Data": codec.encrypt(close_inner(emulator)),
    }
    symptom, applied = SYMPTOMS[fault]

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await http.post(
                "https://ecpayment.ecpay.com.tw/1.0.0/Credit/DoAction", json=body
            )

    if isinstance(symptom, int):
        response = asyncio.run(send())
        assert response.status_code == symptom
        if symptom == 200:
            check_reply(fault, response, emulator)
    else:
        with pytest.raises(symptom):
            asyncio.run(send())
    status = emulator.order(MID, "A1").status
    assert status is (GatewayStatus.TO_BE_CAPTURED if applied else GatewayStatus.AUTHORIZED)


def test_server_error_status_and_trans_code_are_configurable() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    emulator.faults.inject(Fault.SERVER_ERROR_BEFORE_APPLY, status_code=503)
    assert (
        wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"}).status_code
        == 503
    )
    emulator.faults.inject(Fault.TRANS_CODE_ERROR, trans_code=-1)
    outer = wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"}).json()
    assert outer["TransCode"] == -1


def test_faults_match_endpoint_and_action_and_count_down() -> None:
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    rule = emulator.faults.inject(
        Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION, action=Action.REFUND, times=2
    )
    assert ok(wire.do(Action.CLOSE, "A1", 1000))  # C does not match
    assert wire.detail("A1")["RtnValue"]["ClsAmt"] == 1000  # CreditDetail does not match
    assert emulator.faults.remaining(rule) == 2
    with pytest.raises(httpx.RemoteProtocolError):
        wire.do(Action.REFUND, "A1", 100)
    assert emulator.faults.remaining(rule) == 1
    with pytest.raises(httpx.RemoteProtocolError):
        wire.do(Action.REFUND, "A1", 100)
    assert emulator.faults.remaining(rule) == 0
    assert emulator.faults.pending() == ()
    assert ok(wire.do(Action.REFUND, "A1", 100))
    assert emulator.order(MID, "A1").refunded_total == 300  # all three were applied


def test_unlimited_fault_until_cleared_and_firing_order() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    inner = {"MerchantID": MID, "MerchantTradeNo": "A1"}
    first = emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL, times=None)
    second = emulator.faults.inject(Fault.SERVER_ERROR_BEFORE_APPLY)
    assert emulator.faults.pending() == (first, second)
    for _ in range(3):
        assert wire.post(Endpoint.CREDIT_DETAIL, inner).status_code == 403
    assert emulator.faults.remaining(first) is None
    assert wire.post(Endpoint.QUERY_TRADE, inner).status_code == 502  # second matches any
    emulator.faults.clear()
    assert emulator.faults.pending() == ()
    assert wire.post(Endpoint.CREDIT_DETAIL, inner).status_code == 200


def test_bad_envelopes_do_not_consume_faults() -> None:
    emulator = make_emulator()
    rule = emulator.faults.inject(Fault.LOST_REPLY)
    http = httpx.Client(transport=httpx.MockTransport(emulator.handler))
    response = http.post("https://x/1.0.0/Credit/DoAction", content=b"junk")
    assert response.json()["TransCode"] == 999
    assert emulator.faults.remaining(rule) == 1


def test_mismatched_reply_on_credit_detail_changes_the_outer_merchant_id() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(Fault.MISMATCHED_REPLY, endpoint=Endpoint.CREDIT_DETAIL)
    response = Wire(emulator).post(
        Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"}
    )
    assert response.json()["MerchantID"] != MID
    emulator.faults.inject(Fault.MISMATCHED_REPLY, endpoint=Endpoint.QUERY_TRADE)
    inner = Wire(emulator).query("A1")
    assert inner["OrderInfo"]["MerchantTradeNo"] != "A1"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fault": "lost_reply"}, InvalidArgumentType),
        ({"fault": Fault.LOST_REPLY, "endpoint": "/1.0.0/Credit/DoAction"}, InvalidArgumentType),
        ({"fault": Fault.LOST_REPLY, "action": "R"}, InvalidArgumentType),
        (
            {
                "fault": Fault.LOST_REPLY,
                "endpoint": Endpoint.CREDIT_DETAIL,
                "action": Action.REFUND,
            },
            InvalidArgument,
        ),
        ({"fault": Fault.LOST_REPLY, "times": 0}, InvalidArgument),
        ({"fault": Fault.LOST_REPLY, "times": True}, InvalidArgumentType),
        ({"fault": Fault.DELAY, "seconds": -1}, InvalidArgument),
        ({"fault": Fault.DELAY, "seconds": float("nan")}, InvalidArgument),
        ({"fault": Fault.SERVER_ERROR_AFTER_APPLY, "status_code": 404}, InvalidArgument),
        ({"fault": Fault.RATE_LIMITED, "status_code": 500}, InvalidArgument),
        ({"fault": Fault.TRANS_CODE_ERROR, "trans_code": 1}, InvalidArgument),
        ({"fault": Fault.LOST_REPLY, "trans_code": 5}, InvalidArgument),
    ],
)
def test_inject_validates_and_arms_nothing_on_error(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    emulator = make_emulator()
    fault = kwargs.pop("fault")
    with pytest.raises(error):
        emulator.faults.inject(fault, **kwargs)
    assert emulator.faults.pending() == ()
