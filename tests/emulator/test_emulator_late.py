"""Fault.LATE_APPLY: a DoAction ECPay accepted but answers too late (R22's fence).

Unknown outcomes are docs/ecpay-api.md section 9.

The client sees a read timeout and nothing changes now; the request lands ``land_after`` later in
emulator time, interleaved with the batch and day rules, or at a later request; R20 refuses it
when its Timestamp is over 10 minutes old by then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, Fault, Landing, Refusal
from test_emulator_support import MID, START, TAIPEI, Wire, make_emulator, ok, state_of

C, R = Action.CLOSE, Action.REFUND
MINUTE = dt.timedelta(minutes=1)


def at(hour: int, minute: int) -> dt.datetime:
    return dt.datetime(2026, 8, 3, hour, minute, tzinfo=TAIPEI)


def late(emulator: Emulator, action: Action, number: str, amount: int, **inject: Any) -> None:
    """Arm LATE_APPLY and send one DoAction: the client sees a read timeout."""
    emulator.faults.inject(Fault.LATE_APPLY, **inject)
    with pytest.raises(httpx.ReadTimeout):
        Wire(emulator).do(action, number, amount)


def landed(emulator: Emulator) -> list[Any]:
    """The events of late landings (not of the requests' receipt)."""
    return [e for e in emulator.events if e.note.startswith("landed late")]


def test_accepted_now_lands_when_the_clock_gets_there() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = state_of(emulator)
    late(emulator, C, "A1", 1000)
    assert state_of(emulator) == before  # nothing changes now
    receipt = emulator.events[-1]
    assert (receipt.fault, receipt.applied, receipt.reply) == (Fault.LATE_APPLY, False, None)
    assert receipt.note == f"in flight: lands at {(START + MINUTE).isoformat()}"
    assert emulator.faults.pending() == ()  # the rule is spent, the request is in flight
    (landing,) = emulator.pending_landings()
    assert isinstance(landing, Landing)
    assert landing == Landing(
        at=START + dt.timedelta(seconds=60),  # land_after defaults to 60 seconds
        received_at=START,
        timestamp=START.astimezone(dt.UTC),
        merchant_id=MID,
        merchant_trade_no="A1",
        action=C,
        amount=1000,
        request=landing.request,
    )
    assert landing.request["TotalAmount"] == 1000
    assert emulator.applied_do_actions() == ()

    emulator.advance(dt.timedelta(seconds=59))
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    assert len(emulator.pending_landings()) == 1
    emulator.advance(dt.timedelta(seconds=1))
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED
    assert emulator.pending_landings() == ()
    (event,) = landed(emulator)
    assert (event.at, event.fault, event.applied, event.trans_code, event.rtn_code) == (
        START + MINUTE,
        Fault.LATE_APPLY,
        True,
        1,
        1,
    )
    assert (event.endpoint, event.action, event.amount) == (Endpoint.DO_ACTION, C, 1000)
    assert emulator.applied_do_actions() == (event,)


def test_refused_by_r20_when_its_timestamp_is_over_ten_minutes_old_on_landing() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = state_of(emulator)[0]
    late(emulator, C, "A1", 1000, land_after=dt.timedelta(minutes=10, seconds=1))
    emulator.advance(dt.timedelta(hours=1))
    (event,) = landed(emulator)
    assert event.at == START + dt.timedelta(minutes=10, seconds=1)
    assert (event.kind, event.fault, event.applied) == (EventKind.REQUEST, Fault.LATE_APPLY, False)
    assert (event.trans_code, event.rtn_code, event.reply) == (104, None, None)
    assert "Timestamp is over 10 minutes" in event.note
    assert event.request is not None
    assert event.request["Action"] == "C"
    assert emulator.orders() == before  # the order is unchanged
    assert emulator.applied_do_actions() == ()
    assert emulator.pending_landings() == ()


def test_r20_counts_from_the_request_timestamp_not_from_its_arrival() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    now = int(emulator.now.timestamp())
    inner = {"MerchantID": MID, "TradeNo": "", "Action": "C", "TotalAmount": 1000}
    for number, land_after in (("A1", 6), ("A2", 5)):
        emulator.faults.inject(Fault.LATE_APPLY, land_after=land_after * MINUTE)
        body = {**inner, "MerchantTradeNo": number, "TradeNo": emulator.order(MID, number).trade_no}
        with pytest.raises(httpx.ReadTimeout):
            wire.post(Endpoint.DO_ACTION, body, timestamp=now - 300)  # a client clock 5 min slow
    emulator.advance(dt.timedelta(hours=1))
    refused, applied = sorted(landed(emulator), key=lambda e: e.merchant_trade_no)
    assert (refused.merchant_trade_no, refused.trans_code, refused.applied) == ("A1", 104, False)
    assert (applied.merchant_trade_no, applied.trans_code, applied.applied) == ("A2", 1, True)
    assert applied.at < refused.at  # A2 landed at +5 min (exactly 10 minutes old: accepted)


def test_a_landing_before_the_batch_is_settled_by_it() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.set_time(at(19, 55))
    late(emulator, C, "A1", 1000, land_after=5 * MINUTE)  # lands at 20:00
    emulator.set_time(at(21, 0))
    kinds = [(e.at, e.kind, e.applied) for e in emulator.events if e.at >= at(20, 0)]
    assert kinds == [
        (at(20, 0), EventKind.REQUEST, True),
        (at(20, 15), EventKind.SETTLE, False),
        (at(20, 15), EventKind.BATCH, False),
    ]
    view = emulator.order(MID, "A1")
    assert view.status is GatewayStatus.CAPTURED
    assert [(row.amount, row.at) for row in view.close_rows] == [(1000, at(20, 15))]


def test_a_landing_after_the_batch_waits_for_the_next_one() -> None:
    emulator = make_emulator(auto_close=False)
    emulator.authorize(MID, "A1", 1000)
    emulator.set_time(at(20, 10))
    late(emulator, C, "A1", 1000, land_after=10 * MINUTE)  # lands at 20:20, after the batch
    emulator.set_time(at(21, 0))
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED
    (event,) = landed(emulator)
    batch = next(e for e in emulator.events if e.kind is EventKind.BATCH)
    assert batch.seq < event.seq


def test_a_landing_is_checked_by_the_rules_of_its_moment() -> None:
    """Auto-close on: a landing inside [20:15, 20:30) is refused like any DoAction then (R5)."""
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    emulator.set_time(at(20, 12))
    late(emulator, C, "A1", 1000, land_after=8 * MINUTE)  # C again, lands at 20:20
    emulator.set_time(at(20, 40))
    (event,) = landed(emulator)
    assert (event.at, event.applied, event.refusal, event.trans_code) == (
        at(20, 20),
        False,
        Refusal.BATCH_WINDOW,
        1,
    )
    assert event.rtn_code == event.reply["RtnCode"] != 1  # type: ignore[index]
    assert event.fault is Fault.LATE_APPLY
    assert emulator.order(MID, "A1").status is GatewayStatus.CAPTURED


def test_several_landings_land_in_time_order_between_batches() -> None:
    emulator = make_emulator(auto_close=False, balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    assert ok(Wire(emulator).do(C, "A1", 1000))
    emulator.set_time(at(20, 20))  # settled at 20:15
    late(emulator, R, "A1", 100, land_after=9 * MINUTE)  # lands 20:29
    late(emulator, R, "A1", 200, land_after=3 * MINUTE)  # lands 20:23
    assert [landing.amount for landing in emulator.pending_landings()] == [200, 100]
    emulator.advance(dt.timedelta(days=1))
    assert [(e.amount, e.at) for e in emulator.applied_do_actions(merchant_trade_no="A1")] == [
        (1000, START),
        (200, at(20, 23)),
        (100, at(20, 29)),
    ]
    view = emulator.order(MID, "A1")
    assert (view.closed_amount, view.refunded_total, view.status) == (
        700,
        300,
        GatewayStatus.CAPTURED,
    )


def test_land_after_zero_lands_at_the_next_request_or_clock_move() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "A2", 1000)
    wire = Wire(emulator)
    late(emulator, C, "A1", 1000, land_after=dt.timedelta(0))
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED  # not yet
    # The next request, received at that very moment, finds it landed.
    assert wire.detail("A1")["RtnValue"]["Status"] == "To be captured"
    landing, query = emulator.events[-2:]
    assert (landing.fault, landing.applied, query.endpoint) == (
        Fault.LATE_APPLY,
        True,
        Endpoint.CREDIT_DETAIL,
    )
    late(emulator, C, "A2", 1000, land_after=dt.timedelta(0))
    emulator.advance(dt.timedelta(0))  # a clock move that reaches the moment lands it too
    assert emulator.order(MID, "A2").status is GatewayStatus.TO_BE_CAPTURED


def test_a_later_request_before_the_moment_does_not_land_it() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    late(emulator, C, "A1", 1000)
    assert Wire(emulator).detail("A1")["RtnValue"]["Status"] == "Authorized"
    assert len(emulator.pending_landings()) == 1


def test_clearing_faults_does_not_recall_a_request_in_flight() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    late(emulator, C, "A1", 1000)
    emulator.faults.clear()
    assert len(emulator.pending_landings()) == 1
    emulator.advance(MINUTE)
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED


def test_a_clock_move_that_fails_lands_nothing() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    late(emulator, C, "A1", 1000)
    before = state_of(emulator)
    with pytest.raises(InvalidArgument):
        emulator.set_time(dt.datetime(9999, 12, 31, 20, 0, tzinfo=dt.UTC))  # Taipei: year 10000
    with pytest.raises(InvalidArgument):
        emulator.set_time(START - MINUTE)
    with pytest.raises(InvalidArgument):
        emulator.set_time(dt.datetime(2026, 8, 4))  # naive
    with pytest.raises(InvalidArgumentType):
        emulator.set_time("2026-08-04")  # type: ignore[arg-type]
    assert state_of(emulator) == before
    assert len(emulator.pending_landings()) == 1


def test_a_landing_too_far_away_never_lands() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    late(emulator, C, "A1", 1000, land_after=dt.timedelta.max)
    (landing,) = emulator.pending_landings()
    assert landing.at.year == 9999
    emulator.advance(dt.timedelta(days=3650))
    assert len(emulator.pending_landings()) == 1


def test_late_apply_defaults_to_do_action_and_matches_nothing_else() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    rule = emulator.faults.inject(Fault.LATE_APPLY)
    assert (rule.endpoint, rule.land_after) == (Endpoint.DO_ACTION, dt.timedelta(seconds=60))
    wire = Wire(emulator)
    assert wire.detail("A1")["RtnValue"]["Status"] == "Authorized"
    assert wire.query("A1")["RtnCode"] == 1
    assert emulator.faults.remaining(rule) == 1


def test_late_apply_through_the_async_handler() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(Fault.LATE_APPLY, land_after=MINUTE)
    wire = Wire(emulator)
    body = wire.envelope(
        {
            "MerchantID": MID,
            "MerchantTradeNo": "A1",
            "TradeNo": emulator.order(MID, "A1").trade_no,
            "Action": "C",
            "TotalAmount": 1000,
        }
    )

    async def send() -> None:
        transport = httpx.MockTransport(emulator.async_handler)
        async with httpx.AsyncClient(transport=transport) as http:
            await http.post("https://ecpayment.ecpay.com.tw" + Endpoint.DO_ACTION.value, json=body)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(send())
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    emulator.advance(MINUTE)
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED


def test_late_apply_through_the_asgi_app_hangs_then_answers_504() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(Fault.LATE_APPLY, seconds=0.01, land_after=2 * MINUTE)
    wire = Wire(emulator)  # only to build the envelope

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=emulator.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
            return await http.post(
                Endpoint.DO_ACTION.value,
                json=wire.envelope(
                    {
                        "MerchantID": MID,
                        "MerchantTradeNo": "A1",
                        "TradeNo": emulator.order(MID, "A1").trade_no,
                        "Action": "C",
                        "TotalAmount": 1000,
                    }
                ),
            )

    response = asyncio.run(send())
    assert response.status_code == 504
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED
    (landing,) = emulator.pending_landings()
    assert landing.at == START + 2 * MINUTE
    emulator.advance(2 * MINUTE)
    assert emulator.order(MID, "A1").status is GatewayStatus.TO_BE_CAPTURED


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"land_after": dt.timedelta(seconds=-1)}, InvalidArgument),
        ({"land_after": 60}, InvalidArgumentType),
        ({"land_after": "60"}, InvalidArgumentType),
        ({"endpoint": Endpoint.CREDIT_DETAIL}, InvalidArgument),
        ({"endpoint": Endpoint.QUERY_TRADE}, InvalidArgument),
    ],
)
def test_late_apply_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception]) -> None:
    emulator = make_emulator()
    with pytest.raises(error):
        emulator.faults.inject(Fault.LATE_APPLY, **kwargs)
    with pytest.raises(InvalidArgument):
        emulator.faults.inject(Fault.LOST_REPLY, land_after=MINUTE)
    assert emulator.faults.pending() == ()
