"""The emulator answers as ECPay was seen to answer (issue 10 item 4).

What ECPay was seen to answer is docs/ecpay-api.md sections 1-5 and 10; "section N" below is one
of that document.

One test (parametrized or a hypothesis property) per observed answer and per setting that
models an observed variant. Every refusal is also checked in the event log: the request is
recorded, not applied, and the count of applied DoActions does not move.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

import httpx
import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import Action, Client, Credentials, GatewayStatus, PaymentKind
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle._exceptions import error_token
from ecpay_lifecycle.emulator import (
    DEFAULT_REFUSALS,
    Emulator,
    EmulatorSettings,
    Endpoint,
    EventKind,
    Refusal,
    UrlEncoding,
)
from ecpay_lifecycle.emulator._reply_codec import ReplyCodec, dotnet_urlencode
from ecpay_lifecycle.emulator._serve import settings_from_json
from test_emulator_support import IV, KEY, MID, Wire, make_emulator, ok, state_of

C, R, E, N = Action.CLOSE, Action.REFUND, Action.CANCEL, Action.ABANDON
ENDPOINTS = (Endpoint.DO_ACTION, Endpoint.CREDIT_DETAIL, Endpoint.QUERY_TRADE)


def settle(emulator: Emulator) -> None:
    """Move the clock just past the next batch window (20:30 Taipei)."""
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=15))


def refused_as(emulator: Emulator, reply: dict[str, Any], reason: Refusal) -> None:
    """``reply`` is the default reply for ``reason``, and the event log agrees: the last request
    was refused for that reason and changed nothing."""
    expected = DEFAULT_REFUSALS[reason]
    assert (reply["RtnCode"], reply["RtnMsg"]) == (expected.rtn_code, expected.rtn_msg)
    last = [event for event in emulator.events if event.kind is EventKind.REQUEST][-1]
    assert (last.refusal, last.applied, last.rtn_code) == (reason, False, expected.rtn_code)


def inner_for(endpoint: Endpoint, emulator: Emulator, number: str = "A1") -> dict[str, Any]:
    """A well-formed inner request for ``endpoint`` about ``number``."""
    inner: dict[str, Any] = {"MerchantID": MID, "MerchantTradeNo": number}
    if endpoint is Endpoint.DO_ACTION:
        inner |= {
            "TradeNo": emulator.order(MID, number).trade_no,
            "Action": "N",
            "TotalAmount": emulator.order(MID, number).amount,
        }
    return inner


def raw_post(emulator: Emulator, endpoint: Endpoint, body: Any) -> httpx.Response:
    with httpx.Client(transport=httpx.MockTransport(emulator.handler)) as http:
        return http.post("https://ecpayment.ecpay.com.tw" + endpoint.value, json=body)


def url_encoded_plaintext(data: str) -> bytes:
    """Decrypt ``Data`` with the test merchant's key but stop before URL-decoding (R1)."""
    plain = AES.new(KEY.encode(), AES.MODE_CBC, iv=IV.encode()).decrypt(base64.b64decode(data))
    return plain[: -plain[-1]]


# -- 10000002 更新失敗.(error_amount_R): R on an order whose capture has not settled ----------


@settings(max_examples=40)
@given(amount=st.integers(1, 50_000), data=st.data())
def test_r_with_nothing_captured_answers_error_amount_r(amount: int, data: st.DataObject) -> None:
    """R on an Authorized order (R18), or on one whose close was cancelled (E, still a live
    hold), of any amount: ECPay answered 10000002 更新失敗.(error_amount_R) [OBS]."""
    emulator = make_emulator(balance=100_000)
    emulator.authorize(MID, "A1", amount)
    wire = Wire(emulator)
    if data.draw(st.booleans(), label="closed then cancelled"):
        assert ok(wire.do(C, "A1", amount))
        assert ok(wire.do(E, "A1", amount))
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    reply = wire.do(R, "A1", data.draw(st.integers(1, amount), label="refund"))
    refused_as(emulator, reply, Refusal.NOT_CAPTURED)
    assert (reply["RtnCode"], reply["RtnMsg"]) == (10000002, "更新失敗.(error_amount_R)")
    assert error_token(reply["RtnMsg"]) == "error_amount_R"
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before


@settings(max_examples=40)
@given(amount=st.integers(2, 50_000), data=st.data())
def test_all_of_a_pending_capture_by_r_answers_error_amount_r(
    amount: int, data: st.DataObject
) -> None:
    """R13: during a pending capture a part is accepted, all of what is left is refused with the
    same 10000002 更新失敗.(error_amount_R)."""
    emulator = make_emulator()
    emulator.authorize(MID, "A1", amount)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", amount))
    part = data.draw(st.integers(0, amount - 1), label="partial refund first")
    if part:
        assert ok(wire.do(R, "A1", part))
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    reply = wire.do(R, "A1", amount - part)
    refused_as(emulator, reply, Refusal.FULL_REFUND_PENDING_CAPTURE)
    assert (reply["RtnCode"], reply["RtnMsg"]) == (10000002, "更新失敗.(error_amount_R)")
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before


# -- 10100027: a refund the balance cannot cover (R16) ----------------------------------------


@settings(max_examples=40)
@given(balance=st.integers(0, 2000), refund=st.integers(1, 1000))
def test_refund_beyond_the_balance_answers_10100027(balance: int, refund: int) -> None:
    emulator = make_emulator(credit_settlements=False)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert ok(wire.do(C, "A1", 1000))
    settle(emulator)
    emulator.set_balance(MID, balance)
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    reply = wire.do(R, "A1", refund)
    if refund <= balance:
        assert ok(reply)
        assert emulator.balance(MID) == balance - refund
        return
    refused_as(emulator, reply, Refusal.INSUFFICIENT_BALANCE)
    assert reply["RtnCode"] == 10100027
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before


# -- error_nopay: N on an order already abandoned ---------------------------------------------


@pytest.mark.parametrize("how", ["N", "N of a part", "E then N", "day 90"])
def test_n_on_an_abandoned_order_answers_error_nopay(how: str) -> None:
    """A second N after the authorization was abandoned: ECPay answered error_nopay [OBS].
    The token rides in RtnMsg, with RtnCode != 1 (section 3)."""
    emulator = make_emulator(auto_close=how != "day 90")
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    if how == "N":
        assert ok(wire.do(N, "A1", 1000))
    elif how == "N of a part":
        assert ok(wire.do(N, "A1", 10))
    elif how == "E then N":
        assert ok(wire.do(C, "A1", 1000))
        assert ok(wire.do(E, "A1", 1000))
        assert ok(wire.do(N, "A1", 1000))
    else:
        emulator.advance(dt.timedelta(days=91))
    assert emulator.order(MID, "A1").status is GatewayStatus.CANCELED
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    reply = wire.do(N, "A1", 1000)
    refused_as(emulator, reply, Refusal.ALREADY_ABANDONED)
    assert reply["RtnCode"] != 1
    assert error_token(reply["RtnMsg"]) == "error_nopay"
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before


# -- N with any amount abandons the whole authorization (R14) ---------------------------------


@settings(max_examples=40)
@given(amount=st.integers(1, 50_000), data=st.data())
def test_n_with_any_amount_abandons_the_whole_authorization(
    amount: int, data: st.DataObject
) -> None:
    """ECPay accepted N with TotalAmount 10 on a 30 TWD order and released all of it [OBS]."""
    emulator = make_emulator()
    emulator.authorize(MID, "A1", amount)
    total = data.draw(st.integers(1, amount), label="TotalAmount")
    assert ok(Wire(emulator).do(N, "A1", total))
    view = emulator.order(MID, "A1")
    assert (view.status, view.closed_amount, view.refunded_total) == (GatewayStatus.CANCELED, 0, 0)
    [applied] = emulator.applied_do_actions(MID, "A1")
    assert (applied.action, applied.amount) == (N, total)


@pytest.mark.parametrize("total", [1, 500, 999])
def test_strict_n_setting_refuses_a_partial_n(total: int) -> None:
    emulator = make_emulator(full_amount_actions=frozenset({C, E, N}))
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    refused_as(emulator, wire.do(N, "A1", total), Refusal.AMOUNT_NOT_ORDER_AMOUNT)
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before
    assert ok(wire.do(N, "A1", 1000))


def test_n_above_the_order_amount_is_still_a_bad_amount() -> None:
    """R19 still holds: no amount above the order amount, whatever N does with it."""
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    refused_as(emulator, wire.do(N, "A1", 1001), Refusal.BAD_AMOUNT)
    assert emulator.order(MID, "A1").status is GatewayStatus.AUTHORIZED


# -- 5000220 / 5000261: the inner MerchantID, on all three endpoints ---------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@pytest.mark.parametrize(
    ("change", "reason", "code"),
    [
        ({"MerchantID": None}, Refusal.MERCHANT_ID_MISSING, 5000220),
        ({"MerchantID": ""}, Refusal.MERCHANT_ID_MISSING, 5000220),
        ("drop", Refusal.MERCHANT_ID_MISSING, 5000220),
        ({"MerchantID": "2000132"}, Refusal.MERCHANT_ID_MISMATCH, 5000261),
        ({"MerchantID": "3002608"}, Refusal.MERCHANT_ID_MISMATCH, 5000261),
    ],
    ids=["null", "empty", "absent", "unknown merchant", "another merchant"],
)
def test_inner_merchant_id_missing_or_mismatched(
    endpoint: Endpoint, change: Any, reason: Refusal, code: int
) -> None:
    """ECPay checks the inner MerchantID before anything else on every endpoint [OBS]: even
    for an order that does not exist it answers 5000220 / 5000261, not 10000185."""
    emulator = make_emulator()
    emulator.add_merchant("3002608", "A" * 16, "B" * 16)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize("3002608", "A1", 1000)
    for number in ("A1", "NOSUCH1"):
        inner = inner_for(endpoint, emulator) | {"MerchantTradeNo": number}
        if change == "drop":
            del inner["MerchantID"]
        else:
            inner |= change
        before = (state_of(emulator), len(emulator.applied_do_actions()))
        reply = Wire(emulator).call(endpoint, inner)
        refused_as(emulator, reply, reason)
        assert reply["RtnCode"] == code
        assert "[MerchantID]" in reply["RtnMsg"]
        assert (state_of(emulator), len(emulator.applied_do_actions())) == before
    assert emulator.order("3002608", "A1").status is GatewayStatus.AUTHORIZED


# -- 10000185: an unknown order, on all three endpoints ----------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@pytest.mark.parametrize("which", ["unknown", "another merchant's", "wrong TradeNo"])
def test_unknown_order_answers_10000185(endpoint: Endpoint, which: str) -> None:
    emulator = make_emulator()
    emulator.add_merchant("3002608", "A" * 16, "B" * 16)
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize("3002608", "B1", 1000)
    inner = inner_for(endpoint, emulator)
    if which == "unknown":
        inner["MerchantTradeNo"] = "NOSUCH1"
    elif which == "another merchant's":
        inner["MerchantTradeNo"] = "B1"
    else:
        inner["TradeNo"] = "2608031000009999"
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    reply = Wire(emulator).call(endpoint, inner)
    refused_as(emulator, reply, Refusal.ORDER_NOT_FOUND)
    assert (reply["RtnCode"], reply["RtnMsg"]) == (10000185, "Cant not find the trade data")
    if endpoint is Endpoint.CREDIT_DETAIL:
        assert set(reply) == {"RtnCode", "RtnMsg"}  # as recorded [OBS]
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before


# -- TransCode 110 / 104 and the HTTP status of envelope errors --------------------------------


@pytest.mark.parametrize("status", [200, 500, 503])
@pytest.mark.parametrize(
    ("problem", "trans_code", "trans_msg"),
    [
        ("wrong key", 110, "The parameter [Data] decrypt fail."),
        ("not base64", 110, "The parameter [Data] decrypt fail."),
        ("stale timestamp", 104, "Timestamp is over 10 minutes"),
        ("future timestamp", 104, "Timestamp is over 10 minutes"),
    ],
)
def test_envelope_errors_answer_110_and_104_with_the_configured_http_status(
    status: int, problem: str, trans_code: int, trans_msg: str
) -> None:
    emulator = make_emulator(envelope_error_http_status=status)
    emulator.authorize(MID, "A1", 1000)
    inner = inner_for(Endpoint.DO_ACTION, emulator)
    now = int(emulator.now.timestamp())
    body: dict[str, Any] = {
        "MerchantID": MID,
        "RqHeader": {"Timestamp": now},
        "Data": AesCodec(KEY, IV).encrypt(inner),
    }
    if problem == "wrong key":
        body["Data"] = AesCodec("X" * 16, IV).encrypt(inner)
    elif problem == "not base64":
        body["Data"] = "not base64!"
    elif problem == "stale timestamp":
        body["RqHeader"]["Timestamp"] = now - 601
    else:
        body["RqHeader"]["Timestamp"] = now + 601
    before = (state_of(emulator), len(emulator.applied_do_actions()))
    response = raw_post(emulator, Endpoint.DO_ACTION, body)
    assert response.status_code == status
    outer = response.json()  # a valid envelope whatever the status (section 2)
    assert (outer["TransCode"], outer["TransMsg"], outer["Data"]) == (trans_code, trans_msg, "")
    assert outer["MerchantID"] == MID
    last = emulator.events[-1]
    assert (last.trans_code, last.applied) == (trans_code, False)
    assert (state_of(emulator), len(emulator.applied_do_actions())) == before


def test_envelope_error_status_also_covers_the_trans_code_fault_and_other_bad_envelopes() -> None:
    from ecpay_lifecycle.emulator import Fault

    emulator = make_emulator(envelope_error_http_status=500)
    emulator.authorize(MID, "A1", 1000)
    emulator.faults.inject(Fault.TRANS_CODE_ERROR, trans_code=128)
    response = Wire(emulator).post(Endpoint.DO_ACTION, inner_for(Endpoint.DO_ACTION, emulator))
    assert (response.status_code, response.json()["TransCode"]) == (500, 128)
    unknown = Wire(emulator, merchant_id="9999999")
    response = unknown.post(Endpoint.DO_ACTION, inner_for(Endpoint.DO_ACTION, emulator))
    assert (response.status_code, response.json()["TransCode"]) == (500, 999)
    assert emulator.applied_do_actions() == ()


@pytest.mark.parametrize("status", [200, 500])
def test_refusal_http_status_setting(status: int) -> None:
    """Some hosts answer business refusals with HTTP 500 and a valid envelope [OBS]."""
    emulator = make_emulator(refusal_http_status=status)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    refused = wire.post(
        Endpoint.DO_ACTION, inner_for(Endpoint.DO_ACTION, emulator) | {"Action": "R"}
    )
    assert refused.status_code == status
    assert refused.json()["TransCode"] == 1
    assert wire.codec.decrypt(refused.json()["Data"])["RtnCode"] == 10000002
    assert emulator.applied_do_actions() == ()
    accepted = wire.post(Endpoint.DO_ACTION, inner_for(Endpoint.DO_ACTION, emulator))
    assert accepted.status_code == 200
    assert (
        wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"}).status_code
        == 200
    )


@pytest.mark.parametrize("value", [199, 201, 404, 600, True, "500"])
def test_http_status_settings_take_200_or_5xx_only(value: Any) -> None:
    for name in ("envelope_error_http_status", "refusal_http_status"):
        with pytest.raises((ValueError, TypeError)):
            EmulatorSettings(**{name: value})


# -- success texts as ECPay writes them -------------------------------------------------------


def test_success_texts_as_ecpay_writes_them() -> None:
    """DoAction "Succeeded." (an accepted N [OBS]), Cashier/QueryTrade "Success!" [OBS],
    CreditDetail "" with no RtnCode [OBS]."""
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert wire.do(C, "A1", 1000)["RtnMsg"] == "Succeeded."
    assert wire.query("A1")["RtnMsg"] == "Success!"
    detail = wire.detail("A1")
    assert detail["RtnMsg"] == ""
    assert "RtnCode" not in detail


@pytest.mark.parametrize("text", ["Success", "", "成功"])
def test_success_texts_are_settings(text: str) -> None:
    emulator = make_emulator(success_message=text, cashier_success_message=text)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    assert wire.do(C, "A1", 1000)["RtnMsg"] == text
    assert wire.query("A1")["RtnMsg"] == text


# -- reply data URL-encoded .NET-style with lower-case hex -------------------------------------


@pytest.mark.parametrize(
    ("encoding", "escape", "other_case"),
    [
        (UrlEncoding.DOTNET, rb"%[0-9a-f]{2}", rb"%[0-9a-f]?[A-F]"),
        (UrlEncoding.PHP, rb"%[0-9A-F]{2}", rb"%[0-9A-F]?[a-f]"),
    ],
)
def test_reply_data_url_encoding(encoding: UrlEncoding, escape: bytes, other_case: bytes) -> None:
    emulator = make_emulator(reply_url_encoding=encoding)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    response = wire.post(
        Endpoint.DO_ACTION, inner_for(Endpoint.DO_ACTION, emulator) | {"Action": "R"}
    )
    data = response.json()["Data"]
    plain = url_encoded_plaintext(data)
    assert re.search(escape, plain)
    assert not re.search(other_case, plain)
    # 更新失敗 in UTF-8, escaped in the setting's case; the codec reads either (R1).
    utf8 = "更新失敗".encode()
    escaped = b"".join(
        b"%%%02x" % b if encoding is UrlEncoding.DOTNET else b"%%%02X" % b for b in utf8
    )
    assert escaped in plain
    assert wire.codec.decrypt(data)["RtnMsg"] == "更新失敗.(error_amount_R)"


def test_default_reply_encoding_is_ecpays_lower_case_hex() -> None:
    assert EmulatorSettings().reply_url_encoding is UrlEncoding.DOTNET
    assert dotnet_urlencode(b'{"A":"x y~!*()\'"}') == b"%7b%22A%22%3a%22x+y%7e!*()%27%22%7d"


@settings(max_examples=200)
@given(
    payload=st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.text(), st.integers(-(2**53), 2**53), st.booleans(), st.none()),
        max_size=6,
    ),
    encoding=st.sampled_from(UrlEncoding),
)
def test_any_reply_round_trips_through_the_librarys_codec(
    payload: dict[str, Any], encoding: UrlEncoding
) -> None:
    """Whatever the encoding, the library's codec (R1) reads back exactly what was sent."""
    data = ReplyCodec(KEY.encode(), IV.encode()).encrypt(payload, encoding)
    assert AesCodec(KEY, IV).decrypt(data) == payload
    if encoding is UrlEncoding.PHP:
        assert data == AesCodec(KEY, IV).encrypt(payload)  # byte parity with ECPay's examples


def test_reply_codec_never_shows_its_key() -> None:
    codec = ReplyCodec(KEY.encode(), IV.encode())
    assert KEY not in repr(codec)
    assert IV not in repr(codec)
    emulator = make_emulator()
    assert KEY not in repr(emulator._ledger.merchants[MID])


# -- numeric MerchantID, string TransCode ------------------------------------------------------


@pytest.mark.parametrize("numeric", [False, True])
@pytest.mark.parametrize("string", [False, True])
def test_numeric_merchant_ids_and_string_trans_code(numeric: bool, string: bool) -> None:
    emulator = make_emulator(numeric_merchant_ids=numeric, string_trans_code=string)
    emulator.add_merchant("PLAT1", "P" * 16, "Q" * 16)
    emulator.add_merchant("3002699", "S" * 16, "T" * 16, platform_id="PLAT1")
    emulator.authorize(MID, "A1", 1000)
    trade_no = emulator.authorize("3002699", "B1", 1000)
    wire = Wire(emulator)
    response = wire.post(Endpoint.DO_ACTION, inner_for(Endpoint.DO_ACTION, emulator))
    outer = response.json()
    assert outer["MerchantID"] == (int(MID) if numeric else MID)
    assert outer["TransCode"] == ("1" if string else 1)
    inner = wire.codec.decrypt(outer["Data"])
    assert inner["MerchantID"] == (int(MID) if numeric else MID)
    assert inner["PlatformID"] == ""  # empty stays a string
    platform = Wire(emulator, merchant_id="PLAT1", key="P" * 16, iv="Q" * 16)
    on_behalf = {"PlatformID": "PLAT1", "MerchantID": "3002699", "MerchantTradeNo": "B1"}
    outer = platform.post(Endpoint.QUERY_TRADE, on_behalf).json()
    assert outer["MerchantID"] == "PLAT1"  # not a number: stays a string
    inner = platform.codec.decrypt(outer["Data"])
    assert inner["MerchantID"] == (3002699 if numeric else "3002699")
    assert inner["OrderInfo"]["TradeNo"] == trade_no  # order numbers are never numbers
    stale = wire.post(Endpoint.DO_ACTION, {}, timestamp=0).json()
    assert stale["TransCode"] == ("104" if string else 104)
    assert emulator.events[-1].trans_code == 104


def test_the_client_works_with_numeric_ids_and_string_trans_code() -> None:
    """The library reads both variants (section 2): a whole capture and refund flow."""
    emulator = make_emulator(balance=10_000, numeric_merchant_ids=True, string_trans_code=True)
    emulator.authorize(MID, "A1", 1000)
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    ) as client:
        client.capture("A1")
        settle(emulator)
        client.refund("A1", 300)
    assert emulator.order(MID, "A1").closed_amount == 700


# -- Cashier/QueryTrade shaped per kind --------------------------------------------------------

CARD = {"AuthCode", "Gwsr", "ProcessDate", "Amount", "Card6No", "Card4No"}
STAGES = {"Stage", "Stast", "Staed"}
REDEEM = {"RedDan", "RedDeAmt", "RedOkAmt"}


@pytest.mark.parametrize("kind", list(PaymentKind), ids=lambda k: k.value)
@pytest.mark.parametrize("by_kind", [False, True], ids=["all keys", "by kind"])
@pytest.mark.parametrize("one_time_card_info", [True, False], ids=["card info", "no card info"])
def test_cashier_reply_shapes(kind: PaymentKind, by_kind: bool, one_time_card_info: bool) -> None:
    emulator = make_emulator(
        cashier_keys_by_kind=by_kind, cashier_one_time_card_info=one_time_card_info
    )
    emulator.authorize(MID, "A1", 3000, kind=kind)
    reply = Wire(emulator).query("A1")
    top = {"RtnCode", "RtnMsg", "PlatformID", "MerchantID", "CustomField", "OrderInfo"}
    payment_type = {
        PaymentKind.INSTALLMENT: "Credit_CreditCard3",
        PaymentKind.UNIONPAY: "UnionPay",
    }.get(kind, "Credit")
    assert reply["OrderInfo"]["PaymentType"] == payment_type
    if kind is PaymentKind.ONE_TIME and not one_time_card_info:
        assert set(reply) == top  # as ECPay's recorded one-time record [OBS]
        return
    assert set(reply) == top | {"CardInfo", "CoBrandingInfo"}
    assert reply["CoBrandingInfo"] == []
    card = reply["CardInfo"]
    if not by_kind:
        assert set(card) == CARD | STAGES | REDEEM
    elif kind is PaymentKind.INSTALLMENT:
        assert set(card) == CARD | STAGES
    elif kind is PaymentKind.BONUS:
        assert set(card) == CARD | REDEEM
    else:
        assert set(card) == CARD
    if kind is PaymentKind.INSTALLMENT:
        assert (card["Stage"], card["Stast"], card["Staed"]) == (3, 1000, 1000)
    if kind is PaymentKind.BONUS:
        assert card["RedDan"] > 0
        assert card["RedDeAmt"] > 0
    if not by_kind and kind is not PaymentKind.INSTALLMENT:
        assert (card["Stage"], card["Stast"], card["Staed"]) == (0, 0, 0)


@settings(max_examples=60)
@given(amount=st.integers(1, 10**7))
def test_instalment_amounts_add_up_to_the_order(amount: int) -> None:
    emulator = make_emulator(cashier_keys_by_kind=True)
    emulator.authorize(MID, "A1", amount, kind=PaymentKind.INSTALLMENT)
    card = Wire(emulator).query("A1")["CardInfo"]
    assert card["Stast"] + card["Staed"] * (card["Stage"] - 1) == amount
    assert card["Stast"] >= card["Staed"] >= 0


def test_default_cashier_shape_is_ecpays_recorded_one() -> None:
    defaults = EmulatorSettings()
    assert (defaults.cashier_keys_by_kind, defaults.cashier_one_time_card_info) == (True, False)


@pytest.mark.parametrize("kind", list(PaymentKind), ids=lambda k: k.value)
@pytest.mark.parametrize("by_kind", [True, False], ids=["by kind", "all keys"])
def test_client_refund_with_either_cashier_shape(kind: PaymentKind, by_kind: bool) -> None:
    """Issue 10 item 7: Client.refund works on an order whose Cashier record has no CardInfo
    or only the keys that apply (the default), and on the full shape too."""
    emulator = make_emulator(
        balance=10_000, cashier_keys_by_kind=by_kind, cashier_one_time_card_info=not by_kind
    )
    emulator.authorize(MID, "A1", 1000, kind=kind)
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    ) as client:
        if kind is not PaymentKind.UNIONPAY:
            client.capture("A1")
            settle(emulator)
        outcome = client.refund("A1", 1000)
    assert outcome.before.kind is kind  # the Cashier query told the kind
    assert emulator.order(MID, "A1").closed_amount == 0


# -- the new settings from a seed file ---------------------------------------------------------


def test_new_settings_load_from_json() -> None:
    loaded = settings_from_json(
        {
            "envelope_error_http_status": 500,
            "refusal_http_status": 500,
            "success_message": "Success",
            "cashier_success_message": "Success",
            "reply_url_encoding": "php",
            "numeric_merchant_ids": True,
            "string_trans_code": True,
            "cashier_keys_by_kind": True,
            "cashier_one_time_card_info": False,
            "full_amount_actions": ["C", "E", "N"],
        }
    )
    assert loaded == EmulatorSettings(
        envelope_error_http_status=500,
        refusal_http_status=500,
        success_message="Success",
        cashier_success_message="Success",
        reply_url_encoding=UrlEncoding.PHP,
        numeric_merchant_ids=True,
        string_trans_code=True,
        cashier_keys_by_kind=True,
        cashier_one_time_card_info=False,
        full_amount_actions=frozenset({C, E, N}),
    )


def test_every_default_refusal_code_is_as_the_docs_table_says() -> None:
    """The observed codes stay ECPay's; every refusal has a default (docs/emulator.md)."""
    assert set(DEFAULT_REFUSALS) == set(Refusal)
    observed = {
        Refusal.MERCHANT_ID_MISSING: 5000220,
        Refusal.MERCHANT_ID_MISMATCH: 5000261,
        Refusal.ORDER_NOT_FOUND: 10000185,
        Refusal.NOT_CAPTURED: 10000002,
        Refusal.FULL_REFUND_PENDING_CAPTURE: 10000002,
        Refusal.INSUFFICIENT_BALANCE: 10100027,
    }
    assert {reason: DEFAULT_REFUSALS[reason].rtn_code for reason in observed} == observed
    assert error_token(DEFAULT_REFUSALS[Refusal.ALREADY_ABANDONED].rtn_msg) == "error_nopay"
