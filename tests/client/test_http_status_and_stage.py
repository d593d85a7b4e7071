"""Envelopes on any HTTP status, and DoAction on ECPay's stage host (issue 10, items 2 and 3;
docs/ecpay-api.md sections 1 and 2).

Some ECPay hosts answer envelope errors and even business replies with HTTP 500 and a valid
envelope: the body is read and handled as on 200 (TransCode, then RtnCode); only a body that is
not an envelope is a transport-level failure. Stage refuses DoAction by default and names the
opt-in; with ``allow_stage_do_action=True`` it is sent. Money is counted on the emulator's books.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecpay_lifecycle import (
    STAGE_URL,
    TAIPEI,
    Action,
    Client,
    ClockOutOfSync,
    ConfigurationError,
    Credentials,
    EnvelopeRejected,
    ProtocolError,
    RateLimited,
    ServiceNotEnabled,
    State,
    WrongCredentials,
)
from ecpay_lifecycle._protocol import build_credit_detail, open_reply_stamped
from ecpay_lifecycle.emulator import Emulator

MID = "3002607"
KEY, IV = "HttpStatusKey016", "HttpStatusIv0016"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
CREDENTIALS = Credentials(MID, KEY, IV)
REQUEST = build_credit_detail(
    CREDENTIALS, merchant_trade_no="A1", trade_no="2608031000001", now=START
)


def envelope(trans_code: object, data: str = "", merchant_id: object = MID) -> bytes:
    return json.dumps(
        {
            "MerchantID": merchant_id,
            "RpHeader": {"Timestamp": int(START.timestamp())},
            "TransCode": trans_code,
            "TransMsg": "",
            "Data": data,
        }
    ).encode()


@pytest.mark.parametrize("status", [200, 400, 500, 502, 503])
@pytest.mark.parametrize(
    ("trans_code", "error"),
    [
        (110, WrongCredentials),
        (104, ClockOutOfSync),
        (115, ServiceNotEnabled),
        (128, EnvelopeRejected),
        ("110", WrongCredentials),
    ],
)
def test_an_envelope_error_is_named_on_any_status(
    status: int, trans_code: object, error: type[EnvelopeRejected]
) -> None:
    with pytest.raises(error) as caught:
        open_reply_stamped(CREDENTIALS, status, envelope(trans_code), request=REQUEST)
    assert type(caught.value) is error


def test_wrong_credentials_names_the_hash_key_and_iv() -> None:
    with pytest.raises(WrongCredentials, match="HashKey or HashIV"):
        open_reply_stamped(CREDENTIALS, 500, envelope(110), request=REQUEST)


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("trans_code", [1, "1"])
@pytest.mark.parametrize("merchant_id", [MID, int(MID)])
def test_an_accepted_envelope_is_opened_on_any_status(
    status: int, trans_code: object, merchant_id: object
) -> None:
    data = CREDENTIALS.codec.encrypt({"RtnCode": 1, "RtnMsg": "Success"})
    inner, stamp = open_reply_stamped(
        CREDENTIALS, status, envelope(trans_code, data, merchant_id), request=REQUEST
    )
    assert inner == {"RtnCode": 1, "RtnMsg": "Success"}
    assert stamp == int(START.timestamp())


@given(
    status=st.integers(300, 599).filter(lambda s: s != 403),
    body=st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"Bad Gateway", b"<html>502</html>", b"{}", b"[]", b'{"error": 1}']),
    ),
)
def test_a_non_200_without_an_envelope_is_a_protocol_error(status: int, body: bytes) -> None:
    with pytest.raises(ProtocolError, match=f"HTTP {status}"):
        open_reply_stamped(CREDENTIALS, status, body, request=REQUEST)


def test_403_stays_rate_limited_whatever_its_body() -> None:
    for body in (b"Forbidden", envelope(1)):
        with pytest.raises(RateLimited):
            open_reply_stamped(CREDENTIALS, 403, body, request=REQUEST)


# -- end to end, counted on the emulator's books ---------------------------------------------


def served_with_status(
    emulator: Emulator, status: int
) -> Callable[[httpx.Request], httpx.Response]:
    """The emulator's replies with their status rewritten, body intact (as such hosts do)."""

    def handler(request: httpx.Request) -> httpx.Response:
        reply = emulator.handler(request)
        return httpx.Response(status, content=reply.content, headers=reply.headers)

    return handler


def refunds(emulator: Emulator, order: str) -> list[int]:
    return [
        e.amount or 0 for e in emulator.applied_do_actions(MID, order) if e.action is Action.REFUND
    ]


def test_a_refund_answered_with_http_500_and_an_accepted_envelope_is_done_once() -> None:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "A1", 1000, at=START - dt.timedelta(days=1))
    with Client(
        CREDENTIALS,
        transport=httpx.MockTransport(served_with_status(emulator, 500)),
        clock=emulator.clock,
    ) as client:
        outcome = client.refund("A1", 300, idempotency_key="k1")
        assert not outcome.replayed
        assert outcome.steps_done[0].rtn_code == 1  # ECPay's word, not a confirming query
        assert client.refund("A1", 300, idempotency_key="k1").replayed
    assert refunds(emulator, "A1") == [300]


def test_a_wrong_key_answered_with_http_500_is_a_configuration_error_and_moves_nothing() -> None:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    trade_no = emulator.authorize(MID, "A1", 1000, at=START - dt.timedelta(days=1))
    wrong = Credentials(MID, "WrongWrongKey016", IV)
    with (
        Client(
            wrong,
            transport=httpx.MockTransport(served_with_status(emulator, 500)),
            clock=emulator.clock,
        ) as client,
        pytest.raises(WrongCredentials),
    ):
        client.refund("A1", 300, trade_no=trade_no, kind="one_time")
    assert emulator.applied_do_actions(MID) == ()


# -- stage -------------------------------------------------------------------------------------


def stage_client(emulator: Emulator, **kwargs: object) -> Client:
    return Client(
        CREDENTIALS,
        base_url=STAGE_URL,
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        **kwargs,  # type: ignore[arg-type]
    )


def test_stage_refuses_doaction_by_default_and_names_the_opt_in() -> None:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "A1", 1000)
    with stage_client(emulator) as client:
        with pytest.raises(ConfigurationError, match="allow_stage_do_action=True"):
            client.capture("A1")
        assert client.query("A1").state is State.AUTHORIZED
    assert emulator.applied_do_actions(MID) == ()


def test_stage_with_the_opt_in_sends_doaction() -> None:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "A1", 1000)
    with stage_client(emulator, allow_stage_do_action=True) as client:
        outcome = client.abandon("A1")
    assert [s.action for s in outcome.steps_done] == [Action.ABANDON]
    assert [e.action for e in emulator.applied_do_actions(MID, "A1")] == [Action.ABANDON]


def test_the_opt_in_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="allow_stage_do_action must be a bool"):
        Client(CREDENTIALS, base_url=STAGE_URL, allow_stage_do_action="yes")  # type: ignore[arg-type]


# -- what a refusal's message tells a person ---------------------------------------------------


@pytest.mark.parametrize(
    ("rtn_msg", "hint"),
    [
        ("更新失敗.(error_nopay)", "already abandoned"),
        ("更新失敗.(error_amount_R)", "nothing captured and settled"),
        ("error_Stop", "contract has expired"),
    ],
)
def test_a_doaction_refusal_names_what_its_token_means_on_doaction(rtn_msg: str, hint: str) -> None:
    from ecpay_lifecycle import GatewayRefused
    from ecpay_lifecycle._protocol import build_do_action, parse_do_action

    request = build_do_action(
        CREDENTIALS,
        merchant_trade_no="A1",
        trade_no="2608031000001",
        action=Action.ABANDON,
        amount=1000,
        now=START,
    )
    inner = {
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": "2608031000001",
        "RtnCode": 10000002,
        "RtnMsg": rtn_msg,
    }
    with pytest.raises(GatewayRefused, match=hint) as caught:
        parse_do_action(inner, request=request)
    assert caught.value.rtn_msg == rtn_msg
