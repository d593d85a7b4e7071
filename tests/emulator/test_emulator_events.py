"""The event log says what was asked, what changed and what was answered; secrets never leak;
threads and tasks hammering the emulator never over-refund (one lock around the state)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, Fault, Refusal
from ecpay_lifecycle.emulator._asgi import event_json, view_json
from test_emulator_support import IV, KEY, MID, START, Wire, make_emulator, ok


def settled(amount: int, *, balance: int = 10**6) -> tuple[Emulator, Wire]:
    emulator = make_emulator(balance=balance)
    emulator.authorize(MID, "A1", amount)
    wire = Wire(emulator)
    assert ok(wire.do(Action.CLOSE, "A1", amount))
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=20))
    return emulator, wire


def test_event_log_records_requests_answers_and_time() -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    emulator.clear_events()
    assert ok(wire.do(Action.CLOSE, "A1", 1000))
    emulator.advance(dt.timedelta(minutes=1))
    assert not ok(wire.do(Action.REFUND, "A1", 1000))
    first, second = emulator.events
    assert first.kind is EventKind.REQUEST
    assert (first.endpoint, first.action, first.amount, first.applied) == (
        Endpoint.DO_ACTION,
        Action.CLOSE,
        1000,
        True,
    )
    assert (first.merchant_id, first.merchant_trade_no, first.at) == (MID, "A1", START)
    assert first.request == {
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": trade_no,
        "Action": "C",
        "TotalAmount": 1000,
    }
    assert first.reply is not None
    assert first.reply["RtnCode"] == 1
    assert (first.trans_code, first.rtn_code, first.refusal, first.fault) == (1, 1, None, None)
    assert second.at == START + dt.timedelta(minutes=1)
    assert (second.applied, second.refusal) == (False, Refusal.FULL_REFUND_PENDING_CAPTURE)
    assert second.rtn_code == second.reply["RtnCode"] != 1  # type: ignore[index]
    assert second.seq == first.seq + 1
    assert "refused:full_refund_pending_capture" in second.describe()
    assert json.dumps(event_json(second))  # JSON-able for the admin route


def test_event_log_records_faults_and_rejections() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    emulator.faults.inject(Fault.RATE_LIMITED)
    wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"})
    wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID}, timestamp=0)
    limited, stale = emulator.events[-2:]
    assert (limited.fault, limited.reply, limited.applied) == (Fault.RATE_LIMITED, None, False)
    assert stale.fault is None
    assert stale.trans_code == 104  # ECPay's "Timestamp is over 10 minutes" [OBS]
    assert "Timestamp" in stale.note
    assert stale.request is None


def test_event_log_is_bounded_when_asked() -> None:
    emulator = Emulator(now=START, max_events=3)
    emulator.add_merchant(MID, KEY, IV)
    for i in range(5):
        emulator.authorize(MID, f"A{i}", 10)
    assert [e.seq for e in emulator.events] == [4, 5, 6]


def test_views_and_unknown_orders() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    with pytest.raises(InvalidArgument, match="no order"):
        emulator.order(MID, "NOPE")
    with pytest.raises(InvalidArgument, match="no merchant"):
        emulator.snapshot("999", "A1")
    with pytest.raises(InvalidArgument, match="no merchant"):
        emulator.balance("999")
    assert emulator.orders("999") == ()
    assert [v.merchant_trade_no for v in emulator.orders(MID)] == ["A1"]
    assert json.dumps(view_json(emulator.order(MID, "A1")))


def test_set_status_forces_only_statuses_ecpay_reaches_alone() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    with pytest.raises(InvalidArgument):
        emulator.set_status(MID, "A1", GatewayStatus.CAPTURED)
    emulator.set_status(MID, "A1", GatewayStatus.UNAUTHORIZED)
    assert emulator.snapshot(MID, "A1").state.value == "unauthorized"
    assert not ok(wire.do(Action.ABANDON, "A1", 1000))
    assert ok(wire.do(Action.CLOSE, "A2", 1000))
    with pytest.raises(InvalidArgument, match="still Authorized"):
        emulator.set_status(MID, "A2", GatewayStatus.UNAUTHORIZED)
    emulator.set_status(MID, "A2", GatewayStatus.BANK_REJECTED)
    emulator.set_time(emulator.next_batch())
    assert emulator.order(MID, "A2").status is GatewayStatus.BANK_REJECTED  # batch leaves it
    assert wire.detail("A2")["RtnValue"]["Status"] == "銀行拒絕"


# -- secrets -----------------------------------------------------------------------------------


def test_no_secret_in_reprs_events_or_errors() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    wire.do(Action.CLOSE, "A1", 1000)
    wire.post(Endpoint.DO_ACTION, {"x": 1}, timestamp=0)
    emulator.faults.inject(Fault.GARBLED_DATA)
    wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"})
    texts = [
        repr(emulator),
        str(emulator),
        repr(emulator.settings),
        repr(emulator.faults),
        repr(emulator.orders()),
        repr(emulator._ledger.merchants),
        json.dumps([event_json(e) for e in emulator.events], ensure_ascii=False),
        repr(emulator.events),
    ]
    errors: list[str] = []
    for bad_key, bad_iv in [(KEY + "x", IV), (KEY, IV[:-1]), (KEY[:-1] + "é", IV)]:
        try:
            emulator.add_merchant("3002608", bad_key, bad_iv)
        except InvalidArgument as error:
            errors.append(str(error) + repr(error))
    assert len(errors) == 3
    for text in texts + errors:
        assert KEY not in text
        assert IV not in text
        assert KEY[:8] not in text


# -- threads and tasks -------------------------------------------------------------------------


def test_threads_hammering_refunds_never_over_refund() -> None:
    amount = 500
    emulator, _wire = settled(amount)
    accepted: list[int] = []
    lock = threading.Lock()
    transport = httpx.MockTransport(emulator.handler)

    def hammer(seed: int) -> None:
        wire = Wire(emulator, transport=transport)
        for i in range(40):
            refund = 1 + (seed * 7 + i * 3) % 9
            if ok(wire.do(Action.REFUND, "A1", refund)):
                with lock:
                    accepted.append(refund)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    view = emulator.order(MID, "A1")
    assert sum(accepted) <= amount
    assert view.refunded_total == sum(accepted)
    assert view.closed_amount == amount - sum(accepted)
    assert emulator.balance(MID) == 10**6 + amount - sum(accepted)
    applied = [e for e in emulator.events if e.action is Action.REFUND and e.applied]
    assert len(applied) == len(accepted)
    assert sum(accepted) > amount - 9  # they raced until almost nothing was left


def test_async_tasks_hammering_refunds_never_over_refund() -> None:
    amount = 300
    emulator, _wire = settled(amount)
    codec = AesCodec(KEY, IV)
    trade_no = emulator.order(MID, "A1").trade_no
    emulator.faults.inject(Fault.DELAY, seconds=0.0005, times=20)

    async def refund(http: httpx.AsyncClient, value: int) -> int:
        inner = {
            "MerchantID": MID,
            "MerchantTradeNo": "A1",
            "TradeNo": trade_no,
            "Action": "R",
            "TotalAmount": value,
        }
        body: dict[str, Any] = {
            "MerchantID": MID,
            "RqHeader": {"Timestamp": int(emulator.now.timestamp())},
            "Data": codec.encrypt(inner),
        }
        response = await http.post("https://x/1.0.0/Credit/DoAction", json=body)
        reply = codec.decrypt(response.json()["Data"])
        return value if reply["RtnCode"] == 1 else 0

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(emulator.async_handler)) as http:
            return await asyncio.gather(*(refund(http, 1 + n % 7) for n in range(150)))

    accepted = asyncio.run(main())
    view = emulator.order(MID, "A1")
    assert sum(accepted) <= amount
    assert view.refunded_total == sum(accepted)
    assert view.closed_amount == amount - sum(accepted)


def test_applied_do_actions_count_the_money_movements() -> None:
    """Applied DoActions (also behind a lost reply or landing late) count; refused, rejected,
    before-apply faults and queries do not."""
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    emulator.add_merchant("3002608", KEY, IV, balance=10_000)
    emulator.authorize("3002608", "A1", 500)
    wire = Wire(emulator)
    other = Wire(emulator, merchant_id="3002608")
    assert ok(wire.do(Action.CLOSE, "A1", 1000))
    assert ok(other.do(Action.CLOSE, "A1", 500))
    assert not ok(wire.do(Action.REFUND, "A1", 1000))  # R13: refused
    emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY)
    with pytest.raises(httpx.ReadTimeout):
        wire.do(Action.REFUND, "A1", 100)  # not applied
    emulator.faults.inject(Fault.LOST_REPLY)
    with pytest.raises(httpx.RemoteProtocolError):
        wire.do(Action.REFUND, "A1", 100)  # applied, reply lost
    emulator.faults.inject(Fault.LATE_APPLY, land_after=dt.timedelta(seconds=30))
    with pytest.raises(httpx.ReadTimeout):
        wire.do(Action.REFUND, "A1", 200)
    assert wire.detail("A1")["RtnValue"]["ClsAmt"] == 900
    emulator.advance(dt.timedelta(minutes=1))  # the late R lands
    assert ok(wire.do(Action.CLOSE, "A2", 1000))

    everything = emulator.applied_do_actions()
    assert [(e.merchant_id, e.merchant_trade_no, e.action, e.amount) for e in everything] == [
        (MID, "A1", Action.CLOSE, 1000),
        ("3002608", "A1", Action.CLOSE, 500),
        (MID, "A1", Action.REFUND, 100),
        (MID, "A1", Action.REFUND, 200),
        (MID, "A2", Action.CLOSE, 1000),
    ]
    assert [e.fault for e in everything] == [None, None, Fault.LOST_REPLY, Fault.LATE_APPLY, None]
    assert all(e.applied and e.endpoint is Endpoint.DO_ACTION for e in everything)
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    mine = emulator.applied_do_actions(MID, "A1")
    assert [e.amount for e in mine] == [1000, 100, 200]
    assert len(emulator.applied_do_actions(merchant_trade_no="A1")) == 4
    assert len(emulator.applied_do_actions("3002608")) == 1
    assert emulator.applied_do_actions(MID, "NOPE") == ()
    refunded = sum(e.amount or 0 for e in mine if e.action is Action.REFUND)
    assert refunded == emulator.order(MID, "A1").refunded_total == 300
    with pytest.raises(InvalidArgumentType):
        emulator.applied_do_actions(3002607)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        emulator.applied_do_actions(merchant_trade_no=1)  # type: ignore[arg-type]
