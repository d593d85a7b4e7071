"""The sans-I/O protocol: envelopes, DoAction, CreditDetail (R3), Cashier, R2.

They are docs/ecpay-api.md sections 2, 3, 4 and 5.

Replies are built by hand here, encrypted with the codec of ``test_codec.py`` (which is pinned
to ECPay's public vectors), so these tests do not depend on the emulator.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle._exceptions import (
    CodecError,
    ConfigurationError,
    EcpayError,
    EnvelopeRejected,
    GatewayRefused,
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    ProtocolError,
    RateLimited,
    ReplyMismatch,
    UnknownStatusError,
)
from ecpay_lifecycle._models import Action, GatewayStatus, PaymentKind, State
from ecpay_lifecycle._protocol import (
    CASHIER_QUERY_PATH,
    CREDIT_DETAIL_PATH,
    DO_ACTION_PATH,
    PRODUCTION_URL,
    STAGE_URL,
    Credentials,
    CreditDetail,
    WireRequest,
    build_cashier_query,
    build_credit_detail,
    build_do_action,
    is_stage,
    open_reply,
    parse_cashier_query,
    parse_credit_detail,
    parse_do_action,
    snapshot_from,
)
from ecpay_lifecycle._rules import TAIPEI

KEY = "ejCk326UnaZWKisg"
IV = "q9jcZX8Ib9LM8wYk"
CREDS = Credentials("3002607", KEY, IV)
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
ORDER = "Shop20260801A1"
TRADE = "2608010930521234"

# The JSON endpoint's real reply, as quoted in docs/ecpay-api.md section 4.
SPEC_CREDIT_DETAIL = {
    "RtnMsg": "",
    "RtnValue": {
        "TradeID": 14521552,
        "Amount": 199,
        "ClsAmt": 0,
        "AuthTime": "2026/08/01 09:30:52",
        "Status": "Authorized",
    },
    "CloseData": {},
}
# The AIO shape: lower-case keys inside RtnValue, Chinese statuses, string numbers, local time.
AIO_CREDIT_DETAIL = {
    "RtnMsg": "",
    "RtnValue": {
        "TradeID": "14521552",
        "amount": "199",
        "clsamt": "199",
        "authtime": "2016/5/12 下午 07:09:17",
        "status": "已關帳",
        "close_data": [
            {"status": "已關帳", "amount": "199", "sno": "1", "datetime": "2016/5/13 上午 12:05:01"}
        ],
    },
}
# The inner reply of Cashier/QueryTrade, as quoted in docs/ecpay-api.md section 5 (order number
# adapted).
SPEC_CASHIER = {
    "RtnCode": 1,
    "RtnMsg": "Success",
    "MerchantID": "3002607",
    "OrderInfo": {
        "MerchantTradeNo": ORDER,
        "TradeNo": "2411191000000001",
        "TradeAmt": 1000,
        "PaymentType": "Credit",
        "TradeStatus": "1",
    },
    "CardInfo": {"Stage": 0, "RedDan": 0, "RedDeAmt": 0},
}


def do_action(action: Action = Action.REFUND, amount: int = 100) -> WireRequest:
    return build_do_action(
        CREDS, merchant_trade_no=ORDER, trade_no=TRADE, action=action, amount=amount, now=NOW
    )


def detail_request() -> WireRequest:
    return build_credit_detail(CREDS, merchant_trade_no=ORDER, now=NOW)


def cashier_request() -> WireRequest:
    return build_cashier_query(CREDS, merchant_trade_no=ORDER, now=NOW)


def do_action_reply(**changes: Any) -> dict[str, Any]:
    reply = {
        "RtnCode": 1,
        "RtnMsg": "Success",
        "PlatformID": "",
        "MerchantID": "3002607",
        "MerchantTradeNo": ORDER,
        "TradeNo": TRADE,
    }
    reply.update(changes)
    return reply


def envelope(
    inner: dict[str, Any] | None = None,
    *,
    merchant_id: object = "3002607",
    trans_code: object = 1,
    data: object = None,
) -> bytes:
    body = {
        "MerchantID": merchant_id,
        "RpHeader": {"Timestamp": int(NOW.timestamp())},
        "TransCode": trans_code,
        "TransMsg": "Success" if trans_code == 1 else "Decrypt failed",
        "Data": CREDS.codec.encrypt(inner or {}) if data is None else data,
    }
    return json.dumps(body).encode()


def credit_detail(rtn_value: dict[str, Any], close_data: object = None) -> dict[str, Any]:
    return {
        "RtnMsg": "",
        "RtnValue": rtn_value,
        "CloseData": {} if close_data is None else close_data,
    }


def json_detail(
    status: str = "Authorized", amount: int = 1000, closed: int = 0, rows: object = None
) -> dict[str, Any]:
    value = {
        "TradeID": 1,
        "Amount": amount,
        "ClsAmt": closed,
        "AuthTime": "2026/08/01 09:30:52",
        "Status": status,
    }
    return credit_detail(value, rows)


# -- endpoints --------------------------------------------------------------------------------


def test_endpoint_constants() -> None:
    assert PRODUCTION_URL == "https://ecpayment.ecpay.com.tw"
    assert STAGE_URL == "https://ecpayment-stage.ecpay.com.tw"
    assert DO_ACTION_PATH == "/1.0.0/Credit/DoAction"
    assert CREDIT_DETAIL_PATH == "/1.0.0/CreditDetail/QueryTrade"
    assert CASHIER_QUERY_PATH == "/1.0.0/Cashier/QueryTrade"


@pytest.mark.parametrize(
    ("url", "stage"),
    [
        (STAGE_URL, True),
        (STAGE_URL + DO_ACTION_PATH, True),
        ("ecpayment-stage.ecpay.com.tw", True),
        ("https://ECPAYMENT-STAGE.ecpay.com.tw/", True),
        ("https://payment-stage.ecpay.com.tw", True),
        (PRODUCTION_URL, False),
        (PRODUCTION_URL + DO_ACTION_PATH, False),
        ("http://127.0.0.1:8000", False),
        ("http://emulator", False),
        ("https://shop-stage.example.com", False),
        ("", False),
    ],
)
def test_is_stage(url: str, stage: bool) -> None:
    assert is_stage(url) is stage


@pytest.mark.parametrize(
    ("url", "error"), [("http://[", ConfigurationError), (None, InvalidArgumentType)]
)
def test_is_stage_rejects_what_is_not_a_url(url: object, error: type[EcpayError]) -> None:
    with pytest.raises(error):
        is_stage(url)  # type: ignore[arg-type]


# -- credentials ------------------------------------------------------------------------------


def test_credentials_hide_secrets_everywhere() -> None:
    creds = Credentials("3002607", KEY, IV, platform_id="P123", auto_close=False)
    request = build_do_action(
        creds, merchant_trade_no=ORDER, trade_no=TRADE, action=Action.CLOSE, amount=1, now=NOW
    )
    texts = [repr(creds), str(creds), repr(creds.codec), repr(request), str(request.body)]
    texts.append(json.dumps(request.data))
    for text in texts:
        assert KEY not in text
        assert IV not in text
    assert "3002607" in repr(creds)
    assert "P123" in repr(creds)


def test_credentials_build_and_cache_their_codec() -> None:
    creds = Credentials("3002607", KEY.encode(), IV.encode())
    assert creds.codec is creds.codec
    assert creds.codec.decrypt(CREDS.codec.encrypt({"a": 1})) == {"a": 1}
    assert creds.auto_close is True
    assert creds.platform_id == ""


def test_credentials_are_frozen_and_compare_by_value() -> None:
    assert Credentials("3002607", KEY, IV) == CREDS
    assert Credentials("3002607", KEY, "0123456789abcdef") != CREDS
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        CREDS.merchant_id = "1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("", KEY, IV), {}, ConfigurationError),
        (("12345678901", KEY, IV), {}, ConfigurationError),
        (("3002-607", KEY, IV), {}, ConfigurationError),
        ((3002607, KEY, IV), {}, InvalidArgumentType),
        (("3002607", KEY[:15], IV), {}, ConfigurationError),
        (("3002607", KEY, IV + "!"), {}, ConfigurationError),
        (("3002607", None, IV), {}, InvalidArgumentType),
        (("3002607", KEY, IV), {"platform_id": "P-1"}, ConfigurationError),
        (("3002607", KEY, IV), {"platform_id": None}, InvalidArgumentType),
        (("3002607", KEY, IV), {"auto_close": "yes"}, InvalidArgumentType),
    ],
)
def test_bad_credentials_are_refused_without_leaking(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[EcpayError]
) -> None:
    with pytest.raises(error) as info:
        Credentials(*args, **kwargs)
    for text in (str(info.value), repr(info.value)):
        assert KEY[:15] not in text
        assert IV not in text


# -- building requests ------------------------------------------------------------------------


def test_build_do_action_envelope_and_inner_data() -> None:
    request = do_action(Action.REFUND, 300)
    assert request.path == DO_ACTION_PATH
    assert list(request.body) == ["MerchantID", "RqHeader", "Data"]
    assert request.body["MerchantID"] == "3002607"
    assert request.body["RqHeader"] == {"Timestamp": int(NOW.timestamp())}
    expected = {
        "PlatformID": "",
        "MerchantID": "3002607",
        "MerchantTradeNo": ORDER,
        "TradeNo": TRADE,
        "Action": "R",
        "TotalAmount": 300,
    }
    assert request.data == expected
    assert list(request.data) == list(expected)
    assert CREDS.codec.decrypt(request.body["Data"]) == expected
    assert request.merchant_trade_no == ORDER


def test_timestamp_is_plain_unix_seconds_whatever_the_zone() -> None:
    # R20 / docs/ecpay-api.md section 2: no "+8 hours"; the same instant gives the same Timestamp
    # in any zone.
    utc = dt.datetime(2024, 11, 25, 7, 33, 20, 999999, tzinfo=dt.UTC)
    for now in (utc, utc.astimezone(TAIPEI), utc.astimezone(dt.timezone(dt.timedelta(hours=-5)))):
        request = build_credit_detail(CREDS, merchant_trade_no=ORDER, now=now)
        assert request.body["RqHeader"]["Timestamp"] == 1732520000


def test_platform_merchant_puts_platform_id_outside() -> None:
    creds = Credentials("3002607", KEY, IV, platform_id="3085340")
    request = build_do_action(
        creds, merchant_trade_no=ORDER, trade_no=TRADE, action=Action.CLOSE, amount=5, now=NOW
    )
    assert request.body["MerchantID"] == "3085340"
    assert request.data["PlatformID"] == "3085340"
    assert request.data["MerchantID"] == "3002607"
    for build in (build_credit_detail, build_cashier_query):
        other = build(creds, merchant_trade_no=ORDER, now=NOW)
        assert other.body["MerchantID"] == "3085340"
        assert other.data["PlatformID"] == "3085340"


def test_build_credit_detail_and_cashier_query() -> None:
    request = detail_request()
    assert request.path == CREDIT_DETAIL_PATH
    assert request.data == {"PlatformID": "", "MerchantID": "3002607", "MerchantTradeNo": ORDER}
    with_trade = build_credit_detail(CREDS, merchant_trade_no=ORDER, trade_no=TRADE, now=NOW)
    assert with_trade.data["TradeNo"] == TRADE
    assert CREDS.codec.decrypt(with_trade.body["Data"]) == with_trade.data
    cashier = cashier_request()
    assert cashier.path == CASHIER_QUERY_PATH
    assert cashier.data == {"PlatformID": "", "MerchantID": "3002607", "MerchantTradeNo": ORDER}


def test_action_may_be_its_letter() -> None:
    request = build_do_action(
        CREDS, merchant_trade_no=ORDER, trade_no=TRADE, action="N", amount=1, now=NOW
    )
    assert request.data["Action"] == "N"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"merchant_trade_no": "A-1"}, InvalidArgument),
        ({"merchant_trade_no": ""}, InvalidArgument),
        ({"merchant_trade_no": "A" * 21}, InvalidArgument),
        ({"merchant_trade_no": 12}, InvalidArgumentType),
        ({"trade_no": "24 11"}, InvalidArgument),
        ({"trade_no": None}, InvalidArgumentType),
        ({"amount": 0}, InvalidAmount),
        ({"amount": -5}, InvalidAmount),
        ({"amount": True}, InvalidArgumentType),
        ({"amount": 1.5}, InvalidArgumentType),
        ({"action": "X"}, InvalidArgument),
        ({"action": 3}, InvalidArgumentType),
        ({"now": dt.datetime(2026, 8, 1, 10, 0)}, InvalidArgument),
        ({"now": "2026-08-01T10:00:00+08:00"}, InvalidArgumentType),
        ({"credentials": "3002607"}, InvalidArgumentType),
    ],
)
def test_build_do_action_rejects_bad_input(changes: dict[str, Any], error: type[Exception]) -> None:
    kwargs: dict[str, Any] = {
        "credentials": CREDS,
        "merchant_trade_no": ORDER,
        "trade_no": TRADE,
        "action": Action.CLOSE,
        "amount": 100,
        "now": NOW,
        **changes,
    }
    credentials = kwargs.pop("credentials")
    with pytest.raises(error):
        build_do_action(credentials, **kwargs)


# -- opening replies --------------------------------------------------------------------------


def test_open_reply_returns_the_inner_data() -> None:
    request = do_action()
    inner = do_action_reply()
    assert open_reply(CREDS, 200, envelope(inner), request=request) == inner


def test_open_reply_accepts_trans_code_as_text() -> None:
    inner = do_action_reply()
    assert open_reply(CREDS, 200, envelope(inner, trans_code="1"), request=do_action()) == inner


def test_http_403_is_rate_limited_with_the_30_minute_advice() -> None:
    with pytest.raises(RateLimited) as info:
        open_reply(CREDS, 403, b"Forbidden", request=do_action())
    assert "30 minutes" in str(info.value)
    assert info.value.merchant_trade_no == ORDER
    assert info.value.retry_after_seconds == 1800


@pytest.mark.parametrize("status", [500, 502, 404, 201, 302])
def test_other_http_statuses_without_an_envelope_are_protocol_errors(status: int) -> None:
    with pytest.raises(ProtocolError, match=str(status)) as info:
        open_reply(CREDS, status, b"<html>Server Error</html>", request=do_action())
    assert info.value.merchant_trade_no == ORDER
    assert info.value.raw is not None


@pytest.mark.parametrize("status", [500, 502, 404, 201, 302])
def test_other_http_statuses_with_an_envelope_are_read_as_on_200(status: int) -> None:
    inner = do_action_reply()
    assert open_reply(CREDS, status, envelope(inner), request=do_action()) == inner


@pytest.mark.parametrize("content", [b"", b"<html>", b"[1, 2]", b'"text"', b"\xff\xfe", b"null"])
def test_body_that_is_not_a_json_object_is_a_protocol_error(content: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        open_reply(CREDS, 200, content, request=do_action())
    assert not isinstance(info.value, ReplyMismatch)
    assert info.value.raw == content


@pytest.mark.parametrize("trans_code", [0, 2, -1, "9999", 10100050])
def test_trans_code_not_1_is_envelope_rejected_and_data_is_not_decrypted(
    trans_code: object,
) -> None:
    content = envelope(trans_code=trans_code, data="garbage that would fail to decrypt")
    with pytest.raises(EnvelopeRejected) as info:
        open_reply(CREDS, 200, content, request=do_action())
    assert info.value.trans_code == trans_code
    assert info.value.trans_msg == "Decrypt failed"
    assert info.value.merchant_trade_no == ORDER
    assert info.value.raw is not None
    assert info.value.raw["Data"] == "garbage that would fail to decrypt"


@pytest.mark.parametrize("trans_code", [None, "one", True, 1.0])
def test_missing_or_odd_trans_code_is_a_protocol_error(trans_code: object) -> None:
    with pytest.raises(ProtocolError, match="TransCode"):
        open_reply(CREDS, 200, envelope(trans_code=trans_code), request=do_action())


@pytest.mark.parametrize("merchant_id", ["3002608", "", None, "P123"])
def test_outer_merchant_id_must_echo(merchant_id: object) -> None:
    content = envelope(do_action_reply(), merchant_id=merchant_id)
    with pytest.raises(ReplyMismatch, match="MerchantID") as info:
        open_reply(CREDS, 200, content, request=do_action())
    assert info.value.merchant_trade_no == ORDER


def test_platform_reply_echoes_the_platform_id() -> None:
    creds = Credentials("3002607", KEY, IV, platform_id="P123")
    request = build_credit_detail(creds, merchant_trade_no=ORDER, now=NOW)
    inner = {"RtnMsg": ""}
    assert open_reply(creds, 200, envelope(inner, merchant_id="P123"), request=request) == inner
    with pytest.raises(ReplyMismatch):
        open_reply(creds, 200, envelope(inner, merchant_id="3002607"), request=request)


@pytest.mark.parametrize("data", ["not base64!", "", "YWJj", 5])
def test_undecryptable_data_is_a_codec_error_naming_the_order(data: object) -> None:
    with pytest.raises((CodecError, ProtocolError)) as info:
        open_reply(CREDS, 200, envelope(data=data), request=do_action())
    assert info.value.merchant_trade_no == ORDER
    if isinstance(data, str):
        assert isinstance(info.value, CodecError)
        assert info.value.__cause__ is not None


def test_data_under_another_key_is_a_codec_error() -> None:
    other = Credentials("3002607", "0123456789abcdef", IV)
    content = envelope(data=other.codec.encrypt(do_action_reply()))
    with pytest.raises(CodecError):
        open_reply(CREDS, 200, content, request=do_action())


# -- DoAction ---------------------------------------------------------------------------------


def test_parse_do_action_success() -> None:
    reply = parse_do_action(do_action_reply(RtnMsg="Success!"), request=do_action())
    assert reply.rtn_code == 1
    assert reply.rtn_msg == "Success!"
    assert reply.raw["TradeNo"] == TRADE


@pytest.mark.parametrize("code", [1, "1", " 1 "])
def test_success_never_depends_on_message_text(code: object) -> None:
    for message in ("", "Fail", "失敗", None):
        reply = parse_do_action(do_action_reply(RtnCode=code, RtnMsg=message), request=do_action())
        assert reply.rtn_code == 1


@pytest.mark.parametrize(
    ("code", "message", "token"),
    [
        (10000185, "Cant not find the trade data", None),
        ("10200115", "更新失敗.(error_amount_R)", "error_amount_R"),
        (0, "Success", None),  # a refusal even when the text reads like success
        (2, "更新失敗.(error_overDate)", "error_overDate"),
    ],
)
def test_rtn_code_not_1_is_gateway_refused(code: object, message: str, token: str | None) -> None:
    inner = do_action_reply(RtnCode=code, RtnMsg=message)
    with pytest.raises(GatewayRefused) as info:
        parse_do_action(inner, request=do_action())
    assert info.value.rtn_code == int(str(code))
    assert info.value.rtn_msg == message
    assert info.value.token == token
    assert info.value.raw == inner
    assert info.value.merchant_trade_no == ORDER


@pytest.mark.parametrize("code", [None, "abc", True, 1.0, [1], ""])
def test_missing_or_non_numeric_rtn_code_is_a_protocol_error(code: object) -> None:
    inner = do_action_reply(RtnCode=code)
    with pytest.raises(ProtocolError, match="RtnCode") as info:
        parse_do_action(inner, request=do_action())
    assert info.value.raw == inner
    assert info.value.merchant_trade_no == ORDER


@pytest.mark.parametrize(
    ("field", "wrong"),
    [("MerchantID", "3002608"), ("MerchantTradeNo", "Other1"), ("TradeNo", "2608010930529999")],
)
@pytest.mark.parametrize("code", [1, 10000185])
def test_mismatched_echo_is_checked_before_rtn_code(field: str, wrong: str, code: int) -> None:
    inner = do_action_reply(RtnCode=code, **{field: wrong})
    with pytest.raises(ReplyMismatch, match=field) as info:
        parse_do_action(inner, request=do_action())
    assert info.value.merchant_trade_no == ORDER
    assert info.value.raw == inner


@pytest.mark.parametrize("field", ["MerchantID", "MerchantTradeNo", "TradeNo"])
def test_accepted_reply_must_echo_every_id(field: str) -> None:
    for absent in ({field: ""}, {field: None}):
        with pytest.raises(ReplyMismatch, match=field):
            parse_do_action(do_action_reply(**absent), request=do_action())


def test_refusal_without_echoes_is_still_a_refusal() -> None:
    inner = {"RtnCode": 10000185, "RtnMsg": "Cant not find the trade data"}
    with pytest.raises(GatewayRefused):
        parse_do_action(inner, request=do_action())


def test_numeric_merchant_id_echo_is_accepted() -> None:
    reply = parse_do_action(do_action_reply(MerchantID=3002607), request=do_action())
    assert reply.rtn_code == 1


# -- CreditDetail -----------------------------------------------------------------------------


def test_parse_credit_detail_spec_json_example() -> None:
    detail = parse_credit_detail(SPEC_CREDIT_DETAIL, request=detail_request())
    assert detail.status is GatewayStatus.AUTHORIZED
    assert detail.amount == 199
    assert detail.closed_amount == 0
    assert detail.authorized_at == dt.datetime(2026, 8, 1, 9, 30, 52, tzinfo=TAIPEI)
    assert detail.authorized_at.utcoffset() == dt.timedelta(hours=8)
    assert detail.close_rows == ()
    assert detail.trade_id == "14521552"
    assert detail.capture_settled is False
    assert detail.raw == SPEC_CREDIT_DETAIL


def test_parse_credit_detail_aio_shape() -> None:
    detail = parse_credit_detail(AIO_CREDIT_DETAIL, request=detail_request())
    assert detail.status is GatewayStatus.CAPTURED
    assert detail.amount == 199
    assert detail.closed_amount == 199
    assert detail.authorized_at == dt.datetime(2016, 5, 12, 19, 9, 17, tzinfo=TAIPEI)
    assert len(detail.close_rows) == 1
    row = detail.close_rows[0]
    assert row.status is GatewayStatus.CAPTURED
    assert row.amount == 199
    assert row.at == dt.datetime(2016, 5, 13, 0, 5, 1, tzinfo=TAIPEI)
    assert detail.capture_settled is True
    assert detail.trade_id == "14521552"


def test_close_data_empty_object_and_rows() -> None:
    empty = parse_credit_detail(
        json_detail("To be captured", closed=1000), request=detail_request()
    )
    assert empty.close_rows == ()
    assert empty.capture_settled is False
    rows = [
        {"Status": "Captured", "Amount": 1000, "DateTime": "2026/08/01 20:15:03"},
        {"Status": "To be captured", "Amount": 300},
    ]
    settled = parse_credit_detail(
        json_detail("To be captured", closed=700, rows=rows), request=detail_request()
    )
    assert [row.status for row in settled.close_rows] == [
        GatewayStatus.CAPTURED,
        GatewayStatus.TO_BE_CAPTURED,
    ]
    assert settled.close_rows[0].at == dt.datetime(2026, 8, 1, 20, 15, 3, tzinfo=TAIPEI)
    assert settled.close_rows[1].at is None
    assert settled.capture_settled is True
    listed_empty = parse_credit_detail(json_detail(rows=[]), request=detail_request())
    assert listed_empty.close_rows == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016/5/12 下午 07:09:17", (2016, 5, 12, 19, 9, 17)),
        ("2016/5/12 上午 12:00:00", (2016, 5, 12, 0, 0, 0)),  # midnight
        ("2016/5/12 上午 12:59:59", (2016, 5, 12, 0, 59, 59)),
        ("2016/5/12 下午 12:00:00", (2016, 5, 12, 12, 0, 0)),  # noon
        ("2016/5/12 下午 12:30:05", (2016, 5, 12, 12, 30, 5)),
        ("2016/5/12 上午 11:59:59", (2016, 5, 12, 11, 59, 59)),
        ("2016/5/12 下午 11:59:59", (2016, 5, 12, 23, 59, 59)),
        ("2016/5/12 上午 1:02:03", (2016, 5, 12, 1, 2, 3)),  # not padded
        ("2016/5/12 下午 1:02:03", (2016, 5, 12, 13, 2, 3)),
        ("2016/12/31 下午11:59:59", (2016, 12, 31, 23, 59, 59)),
        ("2016/5/12 PM 07:09:17", (2016, 5, 12, 19, 9, 17)),
        ("2026/08/01 09:30:52", (2026, 8, 1, 9, 30, 52)),
        ("2026/8/1 0:00:00", (2026, 8, 1, 0, 0, 0)),
        ("2026/08/01 23:59:59", (2026, 8, 1, 23, 59, 59)),
    ],
)
def test_auth_time_formats(text: str, expected: tuple[int, ...]) -> None:
    reply = copy.deepcopy(SPEC_CREDIT_DETAIL)
    reply["RtnValue"]["AuthTime"] = text
    detail = parse_credit_detail(reply, request=detail_request())
    assert detail.authorized_at == dt.datetime(*expected, tzinfo=TAIPEI)


@pytest.mark.parametrize(
    "text",
    [
        "2016/5/12 下午 13:00:00",
        "2016/5/12 上午 0:00:00",
        "2026/08/01 24:00:00",
        "2026/13/01 09:30:52",
        "2026/02/30 09:30:52",
        "2026-08-01 09:30:52",
        "2026/08/01",
        "2016/5/12 晚上 07:09:17",
        "",
        None,
        20260801,
    ],
)
def test_bad_auth_time_is_a_protocol_error_naming_it(text: object) -> None:
    reply = copy.deepcopy(SPEC_CREDIT_DETAIL)
    reply["RtnValue"]["AuthTime"] = text
    with pytest.raises(ProtocolError, match="AuthTime") as info:
        parse_credit_detail(reply, request=detail_request())
    assert info.value.merchant_trade_no == ORDER
    assert info.value.raw == reply


@pytest.mark.parametrize(
    ("message", "token", "hint"),
    [
        ("error_nopay", "error_nopay", "10 minutes"),
        ("error_Stop", "error_Stop", "expired"),
        ("error", None, None),
    ],
)
def test_credit_detail_error_messages_are_refusals(
    message: str, token: str | None, hint: str | None
) -> None:
    inner = {"RtnMsg": message, "RtnValue": {}, "CloseData": {}}
    with pytest.raises(GatewayRefused) as info:
        parse_credit_detail(inner, request=detail_request())
    assert info.value.rtn_msg == message
    assert info.value.rtn_code is None
    assert info.value.token == token
    assert info.value.raw == inner
    assert info.value.merchant_trade_no == ORDER
    if hint:
        assert hint in str(info.value)


def test_credit_detail_unknown_trade_is_a_refusal() -> None:
    inner = {"RtnCode": 10000185, "RtnMsg": "Cant not find the trade data"}
    with pytest.raises(GatewayRefused) as info:
        parse_credit_detail(inner, request=detail_request())
    assert info.value.rtn_code == 10000185


def test_credit_detail_rtn_code_1_wins_over_its_message() -> None:
    inner = {**json_detail(), "RtnCode": 1, "RtnMsg": "Success"}
    assert parse_credit_detail(inner, request=detail_request()).status is GatewayStatus.AUTHORIZED


# R3, the table of docs/ecpay-api.md section 4, written out independently of _models.
STATE_TABLE = {
    ("已授權", "Authorized"): State.AUTHORIZED,
    ("操作取消", "Operation canceled"): State.AUTHORIZED,
    ("要關帳", "To be captured"): State.TO_CLOSE,
    ("已關帳", "Captured"): State.CLOSED,
    ("已取消", "Canceled"): State.ABANDONED,
    ("未授權", "Unauthorized"): State.UNAUTHORIZED,
    **{
        (chinese, None): State.UNSETTLED
        for chinese in (
            "銀行拒絕",
            "關帳中",
            "要取消",
            "取消中",
            "銀行追回中",
            "銀行已追回",
            "批次失敗",
            "不明",
        )
    },
}


@pytest.mark.parametrize(
    ("spelling", "state"),
    [(text, state) for names, state in STATE_TABLE.items() for text in names if text is not None],
)
def test_every_status_spelling_maps_to_its_state(spelling: str, state: State) -> None:
    closed = 100 if state in (State.TO_CLOSE, State.CLOSED) else 0
    detail = parse_credit_detail(
        json_detail(spelling, amount=100, closed=closed), request=detail_request()
    )
    assert spelling in (detail.status.chinese, detail.status.english)
    assert detail.status.to_state(closed) is state
    aio = copy.deepcopy(AIO_CREDIT_DETAIL)
    aio["RtnValue"]["status"] = spelling
    assert parse_credit_detail(aio, request=detail_request()).status is detail.status


def test_status_table_covers_every_gateway_status() -> None:
    assert {GatewayStatus.parse(names[0]) for names in STATE_TABLE} == set(GatewayStatus)


@pytest.mark.parametrize("status", ["Bogus", "Refunded", "已退款", ""])
def test_unknown_status_is_an_error_naming_it(status: str) -> None:
    reply = json_detail(status)
    with pytest.raises(UnknownStatusError) as info:
        parse_credit_detail(reply, request=detail_request())
    assert info.value.status == status
    assert repr(status) in str(info.value)
    assert info.value.raw == reply
    assert info.value.merchant_trade_no == ORDER


def test_unknown_close_row_status_is_an_error() -> None:
    reply = json_detail("Captured", closed=100, rows=[{"Status": "退刷", "Amount": 100}])
    with pytest.raises(UnknownStatusError, match="退刷"):
        parse_credit_detail(reply, request=detail_request())


@pytest.mark.parametrize("field", ["Amount", "ClsAmt", "AuthTime", "Status"])
def test_missing_field_is_a_protocol_error_naming_it(field: str) -> None:
    reply = copy.deepcopy(SPEC_CREDIT_DETAIL)
    del reply["RtnValue"][field]
    with pytest.raises(ProtocolError, match=field) as info:
        parse_credit_detail(reply, request=detail_request())
    assert not isinstance(info.value, UnknownStatusError)


@pytest.mark.parametrize(
    ("path", "value", "name"),
    [
        (("RtnValue", "Amount"), "abc", "Amount"),
        (("RtnValue", "Amount"), -1, "Amount"),
        (("RtnValue", "Amount"), True, "Amount"),
        (("RtnValue", "Amount"), 199.5, "Amount"),
        (("RtnValue", "ClsAmt"), None, "ClsAmt"),
        (("RtnValue", "Status"), 1, "Status"),
        (("RtnValue",), [1], "RtnValue"),
        (("RtnValue",), None, "RtnValue"),
        (("CloseData",), "none", "CloseData"),
        (("CloseData",), {"Status": "Captured"}, "CloseData"),
        (("CloseData",), [1], r"CloseData\[0\]"),
        (("CloseData",), [{"Status": "Captured", "Amount": "x"}], r"CloseData\[0\].Amount"),
        (("CloseData",), [{"Status": "Captured"}], r"CloseData\[0\].Amount"),
        (("CloseData",), [{"Amount": 1}], r"CloseData\[0\].Status"),
        (("CloseData",), [{"Status": "Captured", "Amount": 1, "DateTime": "x"}], "DateTime"),
    ],
)
def test_ill_typed_field_is_a_protocol_error_naming_it(
    path: tuple[str, ...], value: object, name: str
) -> None:
    reply = copy.deepcopy(SPEC_CREDIT_DETAIL)
    target: Any = reply
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProtocolError, match=name) as info:
        parse_credit_detail(reply, request=detail_request())
    assert info.value.merchant_trade_no == ORDER


def test_missing_close_data_is_a_protocol_error() -> None:
    reply = copy.deepcopy(SPEC_CREDIT_DETAIL)
    del reply["CloseData"]
    with pytest.raises(ProtocolError, match="CloseData"):
        parse_credit_detail(reply, request=detail_request())


def test_keys_differing_only_in_case_are_ambiguous() -> None:
    reply = copy.deepcopy(SPEC_CREDIT_DETAIL)
    reply["RtnValue"]["amount"] = "200"
    with pytest.raises(ProtocolError, match="case"):
        parse_credit_detail(reply, request=detail_request())


def test_credit_detail_echo_present_must_match() -> None:
    reply = {**SPEC_CREDIT_DETAIL, "MerchantID": "9999999"}
    with pytest.raises(ReplyMismatch, match="MerchantID"):
        parse_credit_detail(reply, request=detail_request())
    matching = {**SPEC_CREDIT_DETAIL, "MerchantID": "3002607", "MerchantTradeNo": ORDER}
    assert parse_credit_detail(matching, request=detail_request()).amount == 199


def test_credit_detail_through_the_envelope() -> None:
    request = detail_request()
    inner = open_reply(CREDS, 200, envelope(AIO_CREDIT_DETAIL), request=request)
    assert parse_credit_detail(inner, request=request).closed_amount == 199


# -- Cashier/QueryTrade -----------------------------------------------------------------------


def test_parse_cashier_spec_example() -> None:
    info = parse_cashier_query(SPEC_CASHIER, request=cashier_request())
    assert info.merchant_trade_no == ORDER
    assert info.trade_no == "2411191000000001"
    assert info.amount == 1000
    assert info.kind is PaymentKind.ONE_TIME
    assert info.payment_type == "Credit"
    assert info.raw == SPEC_CASHIER


@pytest.mark.parametrize(
    ("card", "payment_type", "kind"),
    [
        ({"Stage": 3}, "Credit_CreditCard3", PaymentKind.INSTALLMENT),
        ({"Stage": "6"}, "Credit", PaymentKind.INSTALLMENT),
        ({"Stage": 3, "RedDan": 10}, "Credit", PaymentKind.INSTALLMENT),
        ({"RedDan": 10}, "Credit", PaymentKind.BONUS),
        ({"RedDeAmt": "50"}, "Credit", PaymentKind.BONUS),
        ({}, "UnionPay", PaymentKind.UNIONPAY),
        ({"RedDan": 1}, "UnionPay", PaymentKind.BONUS),
        ({}, "Credit_CreditCard", PaymentKind.ONE_TIME),
        ({"Stage": 0}, "Credit_CreditCard3", PaymentKind.INSTALLMENT),  # either signal is enough
    ],
)
def test_payment_kind(card: dict[str, Any], payment_type: str, kind: PaymentKind) -> None:
    reply = copy.deepcopy(SPEC_CASHIER)
    reply["CardInfo"].update(card)
    reply["OrderInfo"]["PaymentType"] = payment_type
    assert parse_cashier_query(reply, request=cashier_request()).kind is kind


@pytest.mark.parametrize(
    ("path", "wrong"), [(("MerchantID",), "9999999"), (("OrderInfo", "MerchantTradeNo"), "Other1")]
)
@pytest.mark.parametrize("code", [1, 10200047])
def test_cashier_echo_mismatch(path: tuple[str, ...], wrong: str, code: int) -> None:
    reply = copy.deepcopy(SPEC_CASHIER)
    reply["RtnCode"] = code
    target: Any = reply
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = wrong
    with pytest.raises(ReplyMismatch, match=path[-1]) as info:
        parse_cashier_query(reply, request=cashier_request())
    assert info.value.merchant_trade_no == ORDER


def test_cashier_refusal() -> None:
    inner = {"RtnCode": 10200047, "RtnMsg": "Cant not find the trade data."}
    with pytest.raises(GatewayRefused) as info:
        parse_cashier_query(inner, request=cashier_request())
    assert info.value.rtn_code == 10200047
    assert info.value.raw == inner


def test_cashier_success_without_order_echo_is_untrusted() -> None:
    reply = copy.deepcopy(SPEC_CASHIER)
    del reply["OrderInfo"]["MerchantTradeNo"]
    with pytest.raises(ReplyMismatch, match="MerchantTradeNo"):
        parse_cashier_query(reply, request=cashier_request())


@pytest.mark.parametrize(
    ("path", "name"),
    [
        # An absent CardInfo or CardInfo key is 0 / not used: see test_recorded_replies.py
        (("OrderInfo", "PaymentType"), "OrderInfo.PaymentType"),
        (("OrderInfo", "TradeNo"), "OrderInfo.TradeNo"),
        (("OrderInfo", "TradeAmt"), "OrderInfo.TradeAmt"),
        (("RtnCode",), "RtnCode"),
    ],
)
def test_cashier_missing_field_is_a_protocol_error(path: tuple[str, ...], name: str) -> None:
    reply = copy.deepcopy(SPEC_CASHIER)
    target: Any = reply
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    with pytest.raises(ProtocolError, match=name):
        parse_cashier_query(reply, request=cashier_request())


# -- snapshots --------------------------------------------------------------------------------


def snapshot(detail: CreditDetail, kind: PaymentKind = PaymentKind.ONE_TIME) -> Any:
    return snapshot_from(
        detail, merchant_trade_no=ORDER, trade_no=TRADE, kind=kind, auto_close=True
    )


def parsed(reply: dict[str, Any]) -> CreditDetail:
    return parse_credit_detail(reply, request=detail_request())


def test_snapshot_of_an_authorized_order() -> None:
    snap = snapshot(parsed(SPEC_CREDIT_DETAIL))
    assert snap.state is State.AUTHORIZED
    assert snap.amount == 199
    assert snap.closed_amount == 0
    assert snap.capture_settled is False
    assert snap.authorized_at == dt.datetime(2026, 8, 1, 9, 30, 52, tzinfo=TAIPEI)
    assert snap.merchant_trade_no == ORDER
    assert snap.trade_no == TRADE
    assert snap.auto_close is True


def test_to_close_is_a_pending_capture_without_a_captured_row() -> None:
    snap = snapshot(parsed(json_detail("To be captured", closed=1000)))
    assert snap.state is State.TO_CLOSE
    assert snap.pending_capture


def test_to_close_is_a_pending_refund_after_a_captured_row() -> None:
    rows = [{"Status": "Captured", "Amount": 1000, "DateTime": "2026/08/01 20:15:03"}]
    snap = snapshot(parsed(json_detail("To be captured", closed=700, rows=rows)))
    assert snap.state is State.TO_CLOSE
    assert snap.pending_refund


@pytest.mark.parametrize(("closed", "state"), [(1000, State.CLOSED), (0, State.REFUNDED)])
def test_captured_is_settled_even_without_rows(closed: int, state: State) -> None:
    snap = snapshot(parsed(json_detail("Captured", closed=closed)))
    assert snap.state is state
    assert snap.capture_settled is True


def test_unionpay_snapshot() -> None:
    rows = [{"Status": "Captured", "Amount": 1000}]
    snap = snapshot(parsed(json_detail("Captured", closed=1000, rows=rows)), PaymentKind.UNIONPAY)
    assert snap.kind is PaymentKind.UNIONPAY
    assert snap.state is State.CLOSED


@pytest.mark.parametrize(
    "reply",
    [
        json_detail("Authorized", closed=100),
        json_detail("Authorized", rows=[{"Status": "Captured", "Amount": 1000}]),
        json_detail("Captured", amount=100, closed=200),
        json_detail("To be captured", closed=0),
        json_detail("Authorized", amount=0),
    ],
)
def test_impossible_order_is_a_protocol_error(reply: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="impossible") as info:
        snapshot(parsed(reply))
    # Refused by OrderSnapshot's checks, or (a settled capture on an authorization, which the
    # snapshot would take from the state) by the parser itself.
    cause = info.value.__cause__
    assert isinstance(cause, InvalidArgument) or (cause is None and "settled" in str(info.value))
    assert info.value.raw == reply
    assert info.value.merchant_trade_no == ORDER


def test_unionpay_authorized_is_impossible() -> None:
    with pytest.raises(ProtocolError, match="R8"):
        snapshot(parsed(json_detail("Authorized")), PaymentKind.UNIONPAY)


def test_snapshot_from_checks_its_own_arguments() -> None:
    detail = parsed(SPEC_CREDIT_DETAIL)
    with pytest.raises(InvalidArgument):
        snapshot_from(
            detail, merchant_trade_no="A-1", trade_no=TRADE, kind=PaymentKind.BONUS, auto_close=True
        )
    with pytest.raises(InvalidArgumentType):
        snapshot_from(
            detail, merchant_trade_no=ORDER, trade_no=TRADE, kind="bonus", auto_close=True
        )  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        snapshot_from(
            detail, merchant_trade_no=ORDER, trade_no=TRADE, kind=PaymentKind.BONUS, auto_close=1
        )  # type: ignore[arg-type]


# -- junk never escapes as anything but an EcpayError ------------------------------------------

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["1", "0", "Captured", "已關帳", "2016/5/12 下午 07:09:17", ORDER, TRADE]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
KNOWN_PATHS = [
    ("RtnCode",),
    ("RtnMsg",),
    ("MerchantID",),
    ("MerchantTradeNo",),
    ("TradeNo",),
    ("RtnValue",),
    ("RtnValue", "Amount"),
    ("RtnValue", "ClsAmt"),
    ("RtnValue", "AuthTime"),
    ("RtnValue", "Status"),
    ("RtnValue", "amount"),
    ("RtnValue", "close_data"),
    ("CloseData",),
    ("OrderInfo",),
    ("OrderInfo", "MerchantTradeNo"),
    ("OrderInfo", "TradeAmt"),
    ("OrderInfo", "PaymentType"),
    ("CardInfo",),
    ("CardInfo", "Stage"),
    ("CardInfo", "RedDan"),
]
BASES = [SPEC_CREDIT_DETAIL, AIO_CREDIT_DETAIL, SPEC_CASHIER, do_action_reply()]
PARSERS: list[tuple[Callable[..., object], Callable[[], WireRequest]]] = [
    (parse_do_action, do_action),
    (parse_credit_detail, detail_request),
    (parse_cashier_query, cashier_request),
]


@st.composite
def mutated_replies(draw: st.DrawFn) -> dict[str, Any]:
    reply: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(BASES)))
    for path in draw(st.lists(st.sampled_from(KNOWN_PATHS), min_size=1, max_size=4)):
        target: Any = reply
        for key in path[:-1]:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if draw(st.booleans()):
                target[path[-1]] = draw(junk)
            else:
                target.pop(path[-1], None)
    return reply


def error_of(call: Callable[[], object]) -> EcpayError | None:
    """The EcpayError ``call`` raises, or None; any other exception fails the test."""
    try:
        call()
    except EcpayError as exc:
        return exc
    return None


def assert_only_ecpay_errors(inner: Any) -> None:
    for parse, make_request in PARSERS:
        request = make_request()
        error = error_of(lambda: parse(inner, request=request))  # noqa: B023 (called at once)
        if error is not None:
            assert error.merchant_trade_no == ORDER
            assert KEY not in str(error)
            assert IV not in str(error)


@settings(max_examples=200)
@given(mutated_replies())
def test_mutated_replies_raise_only_ecpay_errors(inner: dict[str, Any]) -> None:
    assert_only_ecpay_errors(inner)


@given(st.dictionaries(st.text(max_size=10), junk, max_size=6) | junk)
def test_arbitrary_junk_raises_only_ecpay_errors(inner: Any) -> None:
    assert_only_ecpay_errors(inner)


@given(st.integers(100, 599), st.binary(max_size=64) | junk.map(lambda v: json.dumps(v).encode()))
def test_open_reply_junk_raises_only_ecpay_errors(status: int, content: bytes) -> None:
    error = error_of(lambda: open_reply(CREDS, status, content, request=do_action()))
    assert error is None or error.merchant_trade_no == ORDER


@settings(max_examples=100)
@given(
    st.fixed_dictionaries({"MerchantID": junk, "TransCode": junk, "TransMsg": junk, "Data": junk})
)
def test_open_reply_junk_envelopes_raise_only_ecpay_errors(body: dict[str, Any]) -> None:
    content = json.dumps(body).encode()
    error = error_of(lambda: open_reply(CREDS, 200, content, request=do_action()))
    assert error is None or error.merchant_trade_no == ORDER


@given(
    st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True),
    st.sampled_from(Action),
    st.integers(1, 10**9),
)
def test_do_action_round_trip(order: str, trade: str, action: Action, amount: int) -> None:
    request = build_do_action(
        CREDS, merchant_trade_no=order, trade_no=trade, action=action, amount=amount, now=NOW
    )
    reply = {**request.data, "RtnCode": 1, "RtnMsg": "Success"}
    inner = open_reply(CREDS, 200, envelope(reply), request=request)
    assert parse_do_action(inner, request=request).raw == reply
