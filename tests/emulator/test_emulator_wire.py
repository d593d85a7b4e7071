"""The emulator speaks ECPay's wire (docs/ecpay-api.md sections 2-5): envelopes, replies, junk."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import Action, GatewayStatus, PaymentKind
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, ReplyFlavour
from test_emulator_support import IV, KEY, MID, Wire, make_emulator, ok, state_of

JSON_TIME = re.compile(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}")


def settled_order(emulator: Emulator, number: str = "A1", amount: int = 1000) -> Wire:
    emulator.authorize(MID, number, amount)
    wire = Wire(emulator)
    assert ok(wire.do(Action.CLOSE, number, amount))
    emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=20))
    return wire


# -- reply shapes ------------------------------------------------------------------------------


def test_do_action_reply_echoes_the_request() -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 1000)
    reply = Wire(emulator).do(Action.CLOSE, "A1", 1000)
    assert reply == {
        "RtnCode": 1,
        "RtnMsg": "Succeeded.",
        "PlatformID": "",
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": trade_no,
    }


def test_credit_detail_json_flavour_matches_spec_4_exactly() -> None:
    emulator = make_emulator(now=dt.datetime(2026, 8, 1, 9, 30, 52, tzinfo=dt.UTC))
    emulator.authorize(MID, "A1", 199)
    reply = Wire(emulator).detail("A1")
    assert reply == {
        "RtnMsg": "",
        "RtnValue": {
            "TradeID": emulator.order(MID, "A1").trade_id,
            "Amount": 199,
            "ClsAmt": 0,
            "AuthTime": "2026/08/01 17:30:52",  # Asia/Taipei
            "Status": "Authorized",
        },
        "CloseData": {},
    }
    assert "RtnCode" not in reply
    assert isinstance(reply["RtnValue"]["TradeID"], int)


def test_credit_detail_close_rows_after_settlement() -> None:
    emulator = make_emulator()
    wire = settled_order(emulator)
    reply = wire.detail("A1")
    assert reply["RtnValue"]["Status"] == "Captured"
    assert reply["RtnValue"]["ClsAmt"] == 1000
    assert reply["CloseData"] == [
        {"Status": "Captured", "Amount": 1000, "DateTime": "2026/08/03 20:15:00"}
    ]
    assert JSON_TIME.fullmatch(reply["RtnValue"]["AuthTime"])


def test_credit_detail_aio_flavour() -> None:
    emulator = make_emulator(
        now=dt.datetime(2026, 5, 12, 19, 9, 17, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        credit_detail_flavour=ReplyFlavour.AIO,
    )
    emulator.authorize(MID, "A1", 199)
    wire = Wire(emulator)
    reply = wire.detail("A1")
    assert reply == {
        "RtnMsg": "",
        "RtnValue": {
            "TradeID": str(emulator.order(MID, "A1").trade_id),
            "amount": "199",
            "clsamt": "0",
            "authtime": "2026/5/12 下午 07:09:17",
            "status": "已授權",
            "close_data": [],
        },
    }
    assert ok(wire.do(Action.CLOSE, "A1", 199))
    emulator.set_time(dt.datetime(2026, 5, 13, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    value = wire.detail("A1")["RtnValue"]
    assert (value["status"], value["clsamt"]) == ("已關帳", "199")
    assert value["close_data"] == [
        {"status": "已關帳", "sno": "1", "amount": "199", "datetime": "2026/5/12 下午 08:15:00"}
    ]


@pytest.mark.parametrize(
    ("hour", "text"),
    [(0, "上午 12:05:00"), (9, "上午 09:05:00"), (12, "下午 12:05:00"), (23, "下午 11:05:00")],
)
def test_aio_time_uses_twelve_hour_clock(hour: int, text: str) -> None:
    from ecpay_lifecycle.emulator._wire import aio_time

    moment = dt.datetime(2026, 1, 2, hour, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert aio_time(moment) == f"2026/1/2 {text}"


def test_every_status_parses_back_and_means_the_emulators_state() -> None:
    """Replies parse back through GatewayStatus (R3) to the state the emulator holds."""
    emulator = make_emulator(balance=10_000)
    wire = settled_order(emulator, "S1")
    emulator.authorize(MID, "S2", 500)
    emulator.authorize(MID, "S3", 500)
    assert ok(wire.do(Action.CLOSE, "S3", 500))
    emulator.authorize(MID, "S4", 500)
    assert ok(wire.do(Action.CLOSE, "S4", 500))
    assert ok(wire.do(Action.CANCEL, "S4", 500))
    emulator.authorize(MID, "S5", 500)
    assert ok(wire.do(Action.ABANDON, "S5", 500))
    assert ok(wire.do(Action.REFUND, "S1", 1000))
    emulator.authorize(MID, "S6", 500)
    emulator.set_status(MID, "S6", GatewayStatus.BANK_RECLAIMING)
    for view in emulator.orders():
        value = wire.detail(view.merchant_trade_no)["RtnValue"]
        status = GatewayStatus.parse(value["Status"])
        assert status is view.status
        assert status.to_state(value["ClsAmt"]) is view.state


def test_query_trade_tells_the_payment_kind_spec_5() -> None:
    emulator = make_emulator(balance=10_000)
    wire = Wire(emulator)
    for number, kind in [
        ("K1", PaymentKind.ONE_TIME),
        ("K2", PaymentKind.INSTALLMENT),
        ("K3", PaymentKind.BONUS),
        ("K4", PaymentKind.UNIONPAY),
    ]:
        emulator.authorize(MID, number, 1000, kind=kind)
    assert ok(wire.do(Action.REFUND, "K4", 250))
    replies = {number: wire.query(number) for number in ("K1", "K2", "K3", "K4")}
    for number, reply in replies.items():
        assert reply["RtnCode"] == 1
        assert reply["MerchantID"] == MID
        info = reply["OrderInfo"]
        assert info["MerchantTradeNo"] == number
        assert info["TradeNo"] == emulator.order(MID, number).trade_no
        assert info["TradeAmt"] == 1000
    assert "CardInfo" not in replies["K1"]  # a one-time record has none, as ECPay's [OBS]
    assert replies["K1"]["OrderInfo"]["PaymentType"] == "Credit"
    assert replies["K2"]["CardInfo"]["Stage"] > 0
    assert replies["K3"]["CardInfo"]["RedDan"] > 0
    assert replies["K3"]["CardInfo"]["RedDeAmt"] > 0
    assert replies["K4"]["OrderInfo"]["PaymentType"] == "UnionPay"
    assert replies["K4"]["OrderInfo"]["RefundAmount"] == 250
    assert replies["K1"]["OrderInfo"]["RefundAmount"] == 0


@pytest.mark.parametrize("endpoint", [Endpoint.CREDIT_DETAIL, Endpoint.QUERY_TRADE])
def test_unknown_order_is_10000185(endpoint: Endpoint) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 100)
    wire = Wire(emulator)
    for inner in (
        {"MerchantID": MID, "MerchantTradeNo": "NOPE"},
        {"MerchantID": MID, "MerchantTradeNo": "A1", "TradeNo": "2608031000009999"},
    ):
        reply = wire.call(endpoint, inner)
        assert reply["RtnCode"] == 10000185
        assert reply["RtnMsg"] == "Cant not find the trade data"


def test_query_with_matching_trade_no_is_found() -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 100)
    reply = Wire(emulator).call(
        Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1", "TradeNo": trade_no}
    )
    assert reply["RtnValue"]["Amount"] == 100


def test_platform_merchant_acts_for_its_sub_merchant() -> None:
    emulator = make_emulator()
    emulator.add_merchant("PLAT1", "P" * 16, "Q" * 16)
    emulator.add_merchant("SUB1", "S" * 16, "T" * 16, platform_id="PLAT1")
    emulator.add_merchant("OTHER", "O" * 16, "U" * 16)
    trade_no = emulator.authorize("SUB1", "A1", 100)
    other_no = emulator.authorize("OTHER", "B1", 100)
    platform = Wire(emulator, merchant_id="PLAT1", key="P" * 16, iv="Q" * 16)
    inner = {
        "PlatformID": "PLAT1",
        "MerchantID": "SUB1",
        "MerchantTradeNo": "A1",
        "TradeNo": trade_no,
        "Action": "C",
        "TotalAmount": 100,
    }
    reply = platform.call(Endpoint.DO_ACTION, inner)
    assert ok(reply)
    assert reply["PlatformID"] == "PLAT1"
    assert reply["MerchantID"] == "SUB1"
    # Not its sub-merchant, or no PlatformID: the inner MerchantID does not match (5000261).
    foreign = {**inner, "MerchantID": "OTHER", "MerchantTradeNo": "B1", "TradeNo": other_no}
    assert platform.call(Endpoint.DO_ACTION, foreign)["RtnCode"] == 5000261
    no_platform = {**inner, "PlatformID": "", "Action": "E"}
    assert platform.call(Endpoint.DO_ACTION, no_platform)["RtnCode"] == 5000261
    assert emulator.order("OTHER", "B1").status is GatewayStatus.AUTHORIZED


# -- bad envelopes: TransCode != 1 and nothing changes -----------------------------------------


def post_raw(emulator: Emulator, content: bytes, endpoint: Endpoint = Endpoint.DO_ACTION) -> Any:
    http = httpx.Client(transport=httpx.MockTransport(emulator.handler))
    return http.post(f"https://ecpayment.ecpay.com.tw{endpoint.value}", content=content)


def envelope_cases(emulator: Emulator, trade_no: str) -> dict[str, bytes]:
    codec = AesCodec(KEY, IV)
    now = int(emulator.now.timestamp())
    inner = {
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": trade_no,
        "Action": "N",
        "TotalAmount": 1000,
    }
    good = {"MerchantID": MID, "RqHeader": {"Timestamp": now}, "Data": codec.encrypt(inner)}

    def variant(**change: Any) -> bytes:
        return json.dumps({**good, **change}).encode()

    wrong_key = AesCodec("X" * 16, IV).encrypt(inner)
    return {
        "not json": b"{nope",
        "not utf-8": b"\xff\xfe{}",
        "json list": b"[1, 2]",
        "empty": b"",
        "NaN timestamp": variant(RqHeader={"Timestamp": float("nan")}),
        "no MerchantID": variant(MerchantID=None),
        "MerchantID number": variant(MerchantID=3002607),
        "unknown MerchantID": variant(MerchantID="9999999"),
        "no RqHeader": variant(RqHeader=None),
        "Timestamp string": variant(RqHeader={"Timestamp": str(now)}),
        "Timestamp bool": variant(RqHeader={"Timestamp": True}),
        "Timestamp huge": variant(RqHeader={"Timestamp": 10**400}),
        "stale Timestamp": variant(RqHeader={"Timestamp": now - 601}),
        "future Timestamp": variant(RqHeader={"Timestamp": now + 601}),
        "no Data": variant(Data=None),
        "Data not base64": variant(Data="@@@not base64@@@"),
        "Data wrong key": variant(Data=wrong_key),
        "Data garbage blocks": variant(Data=base64.b64encode(b"0123456789abcdef" * 3).decode()),
        "Data JSON list": variant(Data=_encrypt_raw(codec, b"[1]")),
        "PlatformID mismatch": variant(Data=codec.encrypt({**inner, "PlatformID": "OTHER"})),
    }


def _encrypt_raw(codec: AesCodec, plain: bytes) -> str:
    from Crypto.Cipher import AES

    padded = plain + bytes([16 - len(plain) % 16]) * (16 - len(plain) % 16)
    cipher = AES.new(KEY.encode(), AES.MODE_CBC, iv=IV.encode()).encrypt(padded)
    return base64.b64encode(cipher).decode()


#: ECPay's own TransCodes for the two causes it was seen to answer [OBS] (section 2); every
#: other bad envelope answers ``bad_envelope_trans_code`` (999 by default).
OBSERVED_TRANS_CODES = {
    "Timestamp huge": (104, "Timestamp is over 10 minutes"),
    "stale Timestamp": (104, "Timestamp is over 10 minutes"),
    "future Timestamp": (104, "Timestamp is over 10 minutes"),
    "Data not base64": (110, "The parameter [Data] decrypt fail."),
    "Data wrong key": (110, "The parameter [Data] decrypt fail."),
    "Data garbage blocks": (110, "The parameter [Data] decrypt fail."),
    "Data JSON list": (110, "The parameter [Data] decrypt fail."),
}


def test_bad_envelopes_answer_a_trans_code_error_and_change_nothing() -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 1000)
    cases = envelope_cases(emulator, trade_no)
    assert set(OBSERVED_TRANS_CODES) <= set(cases)
    before = state_of(emulator)
    for name, content in cases.items():
        response = post_raw(emulator, content)
        assert response.status_code == 200, name
        outer = response.json()
        assert set(outer) == {"MerchantID", "RpHeader", "TransCode", "TransMsg", "Data"}, name
        if name in OBSERVED_TRANS_CODES:
            assert (outer["TransCode"], outer["TransMsg"]) == OBSERVED_TRANS_CODES[name], name
        else:
            assert outer["TransCode"] == 999, name
        assert outer["TransCode"] != 1, name
        assert outer["Data"] == "", name
        assert outer["TransMsg"], name
    assert state_of(emulator) == before
    rejected = [e for e in emulator.events if e.kind is EventKind.REQUEST]
    assert len(rejected) == len(cases)
    assert all(not e.applied and e.note.startswith("bad envelope") for e in rejected)


def test_timestamp_exactly_ten_minutes_off_is_accepted_r20() -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    now = int(emulator.now.timestamp())
    wire = Wire(emulator)
    assert wire.detail("A1")["RtnValue"]["Amount"] == 1000
    for stamp in (now - 600, now + 600, now + 0.5):
        assert wire.call(
            Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"}, timestamp=stamp
        )
    assert wire.post(
        Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"}, timestamp=now - 601
    ).json()["TransCode"] == (104)


def test_bad_envelope_trans_code_is_a_setting() -> None:
    emulator = make_emulator(bad_envelope_trans_code=10300066)
    trade_no = emulator.authorize(MID, "A1", 1000)
    outer = post_raw(emulator, b"nope").json()
    assert outer["TransCode"] == 10300066
    # ECPay's observed codes for a bad key and a stale Timestamp are not [HOUSE]: they stay.
    cases = envelope_cases(emulator, trade_no)
    assert post_raw(emulator, cases["Data wrong key"]).json()["TransCode"] == 110
    assert post_raw(emulator, cases["stale Timestamp"]).json()["TransCode"] == 104


def test_unknown_paths_and_methods() -> None:
    emulator = make_emulator()
    http = httpx.Client(transport=httpx.MockTransport(emulator.handler))
    assert (
        http.post("https://ecpayment.ecpay.com.tw/1.0.0/Credit/Nope", content=b"{}").status_code
        == 404
    )
    assert http.get("https://ecpayment.ecpay.com.tw/1.0.0/Credit/DoAction").status_code == 405
    # Any host and prefix: a shop may point its own base URL at the emulator.
    response = http.post("http://localhost/proxy/1.0.0/Credit/DoAction/", content=b"{}")
    assert response.json()["TransCode"] == 999


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "MerchantID": st.sampled_from([MID, "", "x", 1]) | st.text(max_size=5),
                "RqHeader": st.fixed_dictionaries({"Timestamp": json_values}) | json_values,
                "Data": st.text(max_size=60) | json_values,
            }
        ).map(lambda v: json.dumps(v).encode()),
    ),
    endpoint=st.sampled_from(Endpoint),
)
def test_junk_bodies_never_crash_and_change_nothing(body: bytes, endpoint: Endpoint) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = state_of(emulator)
    response = post_raw(emulator, body, endpoint)
    assert response.status_code == 200
    assert response.json()["TransCode"] != 1
    assert state_of(emulator) == before


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    inner=st.dictionaries(
        st.sampled_from(
            ["PlatformID", "MerchantID", "MerchantTradeNo", "TradeNo", "Action", "TotalAmount"]
        ),
        json_values,
    ),
    endpoint=st.sampled_from(Endpoint),
)
def test_junk_inner_data_is_answered_and_changes_nothing(
    inner: dict[str, Any], endpoint: Endpoint
) -> None:
    """A well-encrypted but nonsensical request: a TransCode or RtnCode error, never a crash."""
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = state_of(emulator)
    response = Wire(emulator).post(endpoint, inner)
    outer = response.json()
    if outer["TransCode"] == 1 and endpoint is Endpoint.DO_ACTION:
        reply = AesCodec(KEY, IV).decrypt(outer["Data"])
        assert reply["RtnCode"] != 1
    assert state_of(emulator) == before


def test_start_far_in_the_past_or_future_still_serves() -> None:
    for start in (dt.datetime(1971, 1, 1, tzinfo=dt.UTC), dt.datetime(2200, 1, 1, tzinfo=dt.UTC)):
        emulator = make_emulator(now=start)
        emulator.authorize(MID, "A1", 5)
        assert Wire(emulator).detail("A1")["RtnValue"]["Amount"] == 5
