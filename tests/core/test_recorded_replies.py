"""Replies ECPay really sent, recorded by public projects, run through the library's parsers.

Each case is one file in ``tests/fixtures/ecpay/`` (listed, with its source, in the README
there). A case's ``inner`` is encrypted and wrapped in an envelope and goes the public path:
:func:`open_reply`, then the endpoint's ``parse_*``; its ``expect`` names the concrete result.
A case recorded only as an envelope goes through :func:`open_reply` alone. The properties
below vary the recorded shapes the ways ECPay varies them (docs/ecpay-api.md sections 2 and 5):
keys left out, numbers sent as strings, a numeric ``MerchantID``, ``TransCode`` as ``"1"``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ecpay_lifecycle
from ecpay_lifecycle import (
    EcpayError,
    GatewayStatus,
    InvalidArgument,
    NotCreditCardOrder,
    PaymentKind,
    ReplyMismatch,
    State,
)
from ecpay_lifecycle._exceptions import error_token
from ecpay_lifecycle._models import Action
from ecpay_lifecycle._protocol import (
    CashierInfo,
    Credentials,
    CreditDetail,
    DoActionReply,
    WireRequest,
    build_cashier_query,
    build_credit_detail,
    build_do_action,
    open_reply,
    parse_cashier_query,
    parse_credit_detail,
    parse_do_action,
    snapshot_from,
)
from ecpay_lifecycle._rules import TAIPEI

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ecpay"
KEY = "ejCk326UnaZWKisg"
IV = "q9jcZX8Ib9LM8wYk"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
# What a case's "request" leaves out (the source did not say) is filled from these.
DEFAULT_REQUEST: dict[str, Any] = {
    "merchant_id": "3002607",
    "merchant_trade_no": "Recorded20260801",
    "trade_no": "2608010000000001",
    "action": "R",
    "amount": 100,
}
FIELDS: dict[str, type | tuple[type, ...]] = {
    "source": str,
    "evidence": str,
    "endpoint": str,
    "situation": str,
    "http_status": (int, type(None)),
    "request": (dict, type(None)),
    "envelope": (dict, type(None)),
    "inner": (dict, type(None)),
    "inner_complete": bool,
    "notes": str,
    "expect": dict,
}
PARSERS: dict[str, Callable[..., object]] = {
    "Cashier/QueryTrade": parse_cashier_query,
    # The authorization reply carries the same OrderInfo + CardInfo record (see its notes).
    "Cashier/BackAuth": parse_cashier_query,
    "CreditDetail/QueryTrade": parse_credit_detail,
    "DoAction": parse_do_action,
}


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


CASES = {path.stem: load(path) for path in sorted(FIXTURES.glob("*.json"))}
WITH_INNER = sorted(name for name, case in CASES.items() if case["inner"] is not None)
ENVELOPE_ONLY = sorted(name for name, case in CASES.items() if "trans_code" in case["expect"])


def request_of(case: dict[str, Any]) -> tuple[Credentials, WireRequest]:
    """The request the case answers: what the source says was sent, the rest from defaults."""
    sent = {**DEFAULT_REQUEST, **(case["request"] or {})}
    credentials = Credentials(sent["merchant_id"], KEY, IV)
    order = sent["merchant_trade_no"]
    endpoint = case["endpoint"]
    if endpoint == "DoAction":
        request = build_do_action(
            credentials,
            merchant_trade_no=order,
            trade_no=sent["trade_no"],
            action=Action(sent["action"]),
            amount=sent["amount"],
            now=NOW,
        )
    elif endpoint == "CreditDetail/QueryTrade":
        request = build_credit_detail(
            credentials, merchant_trade_no=order, trade_no=sent.get("trade_no"), now=NOW
        )
    else:
        request = build_cashier_query(credentials, merchant_trade_no=order, now=NOW)
    return credentials, request


def wrap(
    credentials: Credentials,
    request: WireRequest,
    inner: dict[str, Any],
    *,
    numeric: bool = False,
) -> bytes:
    """``inner`` encrypted into a reply envelope; ``numeric`` spells it as some ECPay hosts do:
    ``MerchantID`` a JSON number, ``TransCode`` the string ``"1"`` (docs/ecpay-api.md 2)."""
    merchant_id: object = request.body["MerchantID"]
    stamp: object = int(NOW.timestamp())
    trans_code: object = 1
    if numeric:
        merchant_id, stamp, trans_code = int(str(merchant_id)), str(stamp), "1"
    body = {
        "MerchantID": merchant_id,
        "RpHeader": {"Timestamp": stamp},
        "TransCode": trans_code,
        "TransMsg": "Success",
        "Data": credentials.codec.encrypt(inner),
    }
    return json.dumps(body, ensure_ascii=False).encode()


def stringify(value: Any) -> Any:
    """Every number in ``value`` as a numeric string, as the form API and some hosts send."""
    if isinstance(value, dict):
        return {key: stringify(item) for key, item in value.items()}
    if isinstance(value, list):
        return [stringify(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def inner_of(case: dict[str, Any], request: WireRequest) -> dict[str, Any]:
    inner = copy.deepcopy(case["inner"])
    if case["expect"].get("fill_echoes"):
        # The source quoted the code and message only; an accepted DoAction reply echoes these.
        for name in ("MerchantID", "MerchantTradeNo", "TradeNo"):
            inner.setdefault(name, request.data[name])
    assert isinstance(inner, dict)
    return inner


def check_result(case: dict[str, Any], result: object, request: WireRequest) -> None:
    """The concrete values the case's ``expect`` names."""
    expect = case["expect"]
    assert "error" not in expect, f"expected {expect['error']}, parsed {result!r}"
    if isinstance(result, CashierInfo):
        assert result.kind is PaymentKind(expect["kind"])
        assert result.payment_type == expect["payment_type"]
        assert result.trade_no == expect["trade_no"]
        assert result.amount == expect["amount"]
        assert result.merchant_trade_no == request.merchant_trade_no
    elif isinstance(result, CreditDetail):
        assert result.status is GatewayStatus[expect["status"]]
        assert result.amount == expect["amount"]
        assert result.closed_amount == expect["closed_amount"]
        assert result.trade_id == expect["trade_id"]
        snapshot = snapshot_from(
            result,
            merchant_trade_no=str(request.merchant_trade_no),
            trade_no=DEFAULT_REQUEST["trade_no"],
            kind=PaymentKind.ONE_TIME,
            auto_close=True,
        )
        assert snapshot.state is State(expect["state"])
    else:
        assert isinstance(result, DoActionReply)
        assert result.rtn_code == expect["rtn_code"]


def check_error(case: dict[str, Any], error: EcpayError, request: WireRequest) -> None:
    expect = case["expect"]
    assert type(error) is getattr(ecpay_lifecycle, expect["error"]), repr(error)
    assert error.merchant_trade_no == request.merchant_trade_no
    if "rtn_code" in expect:
        assert getattr(error, "rtn_code", None) == expect["rtn_code"]
    if "token" in expect:
        token = getattr(error, "token", None) or error_token(case["inner"].get("RtnMsg"))
        assert token == expect["token"]
    if "payment_type" in expect:
        assert isinstance(error, NotCreditCardOrder)
        assert error.payment_type == expect["payment_type"]
        assert f"PaymentType {expect['payment_type']!r}" in str(error)
        assert "not a credit-card order" in str(error)
    assert KEY not in str(error)
    assert IV not in str(error)


# -- the fixtures themselves ------------------------------------------------------------------


def test_there_are_recorded_replies_of_every_endpoint() -> None:
    endpoints = {case["endpoint"] for case in CASES.values()}
    assert {"DoAction", "CreditDetail/QueryTrade", "Cashier/QueryTrade"} <= endpoints
    assert len(WITH_INNER) >= 15


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_is_well_formed(name: str) -> None:
    case = CASES[name]
    assert set(case) == set(FIELDS), name
    for field, kind in FIELDS.items():
        assert isinstance(case[field], kind), (name, field)
    assert case["evidence"] in {"OBS", "DOC"}
    assert re.fullmatch(r"[a-z0-9_]+", case["situation"])
    assert case["source"].startswith("https://github.com/") or case["evidence"] == "DOC"
    assert case["inner"] is not None or case["envelope"] is not None
    assert case["expect"], "every case names its expected result"
    assert case["endpoint"] in PARSERS or case["inner"] is None


def test_readme_lists_every_case_with_its_situation() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for name, case in CASES.items():
        row = next((line for line in readme.splitlines() if f"`{name}.json`" in line), None)
        assert row is not None, f"{name}.json is not listed in the README"
        assert f"`{case['situation']}`" in row, name


# -- each recorded reply, through the public path ---------------------------------------------


def through_the_public_path(
    case: dict[str, Any], inner: dict[str, Any], *, numeric: bool = False
) -> tuple[object, WireRequest]:
    """``open_reply`` then the endpoint's parser: the result, or the library error raised."""
    credentials, request = request_of(case)
    content = wrap(credentials, request, inner, numeric=numeric)
    try:
        opened = open_reply(credentials, 200, content, request=request)
        return PARSERS[case["endpoint"]](opened, request=request), request
    except EcpayError as exc:  # anything else fails the test
        return exc, request


@pytest.mark.parametrize("numeric", [False, True], ids=["as-sent", "numeric-envelope"])
@pytest.mark.parametrize("name", WITH_INNER)
def test_recorded_reply_parses_as_expected(name: str, numeric: bool) -> None:
    case = CASES[name]
    _, request = request_of(case)
    result, request = through_the_public_path(case, inner_of(case, request), numeric=numeric)
    if isinstance(result, EcpayError):
        assert "error" in case["expect"], f"{name}: {result!r}"
        check_error(case, result, request)
    else:
        check_result(case, result, request)


@pytest.mark.parametrize("name", WITH_INNER)
def test_numbers_as_strings_read_the_same(name: str) -> None:
    """Every number of a recorded reply sent as a numeric string gives the same result."""
    case = CASES[name]
    _, request = request_of(case)
    as_sent = inner_of(case, request)
    expected, _ = through_the_public_path(case, as_sent)
    got, _ = through_the_public_path(case, stringify(as_sent))
    assert type(got) is type(expected)
    if isinstance(expected, EcpayError):
        assert str(getattr(got, "rtn_code", None)) == str(getattr(expected, "rtn_code", None))
    else:
        check_result(case, got, request)


@pytest.mark.parametrize("name", ENVELOPE_ONLY)
def test_recorded_envelope_is_rejected_as_expected(name: str) -> None:
    case = CASES[name]
    credentials, request = request_of(case)
    content = json.dumps(case["envelope"], ensure_ascii=False).encode()
    with pytest.raises(EcpayError) as info:
        open_reply(credentials, case["http_status"] or 200, content, request=request)
    error = info.value
    assert type(error) is getattr(ecpay_lifecycle, case["expect"]["error"])
    assert getattr(error, "trans_code", None) == case["expect"]["trans_code"]
    assert KEY not in str(error)
    assert IV not in str(error)


# -- PaymentType, the second signal (docs/ecpay-api.md section 5) -----------------------------

ONE_TIME = "cashier_one_time_no_cardinfo"


def cashier(
    payment_type: object, card: dict[str, Any] | None = None
) -> tuple[dict[str, Any], WireRequest]:
    case = CASES[ONE_TIME]
    _, request = request_of(case)
    inner = copy.deepcopy(case["inner"])
    inner["OrderInfo"]["PaymentType"] = payment_type
    if card is not None:
        inner["CardInfo"] = card
    return inner, request


@pytest.mark.parametrize(
    ("payment_type", "card", "kind"),
    [
        ("Credit", None, PaymentKind.ONE_TIME),
        ("Credit_CreditCard", None, PaymentKind.ONE_TIME),
        ("Credit_CreditCard0", None, PaymentKind.ONE_TIME),
        ("Credit_CreditCard3", None, PaymentKind.INSTALLMENT),
        ("Credit_CreditCard12", {}, PaymentKind.INSTALLMENT),
        ("CreditInstallment", {"Stage": "0"}, PaymentKind.INSTALLMENT),
        ("FlexibleInstallment", None, PaymentKind.INSTALLMENT),
        ("UnionPay", None, PaymentKind.UNIONPAY),
        ("UnionPay", {"RedDeAmt": "50"}, PaymentKind.BONUS),
        ("Credit", {"Stage": "3", "RedDan": ""}, PaymentKind.INSTALLMENT),
        ("Credit", {"RedDan": "10"}, PaymentKind.BONUS),
        ("Credit", {"Stage": None, "RedDan": None, "RedDeAmt": None}, PaymentKind.ONE_TIME),
        ("Credit", {"RedOkAmt": 199, "RedYet": 1200}, PaymentKind.ONE_TIME),
    ],
)
def test_payment_type_is_a_second_signal(
    payment_type: str, card: dict[str, Any] | None, kind: PaymentKind
) -> None:
    inner, request = cashier(payment_type, card)
    assert parse_cashier_query(inner, request=request).kind is kind


@pytest.mark.parametrize(
    "payment_type",
    [
        "ATM", "ATM_TAISHIN", "CVS", "CVS_CVS", "BARCODE", "BARCODE_BARCODE", "WebATM_TAISHIN",
        "TWQR", "TWQR_OPAY", "BNPL_URICH", "ApplePay", "unionpay", "credit", "", "Foo",
    ],
)  # fmt: skip
def test_an_order_not_paid_by_credit_card_is_a_named_error(payment_type: str) -> None:
    inner, request = cashier(payment_type, {"Stage": 3})
    with pytest.raises(NotCreditCardOrder) as info:
        parse_cashier_query(inner, request=request)
    error = info.value
    assert isinstance(error, InvalidArgument)
    assert isinstance(error, ValueError)
    assert error.payment_type == payment_type
    assert error.merchant_trade_no == request.merchant_trade_no
    assert error.raw == inner
    assert f"PaymentType {payment_type!r}" in str(error)
    assert "credit-card order" in str(error)
    assert KEY not in str(error)
    assert IV not in str(error)


@pytest.mark.parametrize("junk", [-1, "-3", "three", 2.5, True, [], {"n": 1}])
def test_a_card_count_that_is_not_a_whole_number_is_named(junk: object) -> None:
    inner, request = cashier("Credit", {"Stage": junk})
    with pytest.raises(ecpay_lifecycle.ProtocolError, match=r"CardInfo\.Stage"):
        parse_cashier_query(inner, request=request)


def test_card_info_that_is_not_an_object_is_named() -> None:
    inner, request = cashier("Credit")
    inner["CardInfo"] = "none"
    with pytest.raises(ecpay_lifecycle.ProtocolError, match="CardInfo"):
        parse_cashier_query(inner, request=request)


# -- numeric IDs in the reply (docs/ecpay-api.md section 2) -----------------------------------


def test_a_numeric_platform_id_echo_is_compared_as_text() -> None:
    credentials = Credentials("2000132", KEY, IV, platform_id="3085779")
    request = build_cashier_query(credentials, merchant_trade_no="BAOK85547852370", now=NOW)
    inner = copy.deepcopy(CASES[ONE_TIME]["inner"])
    inner["MerchantID"] = 2000132
    inner["PlatformID"] = 3085779
    content = wrap(credentials, request, inner, numeric=True)
    opened = open_reply(credentials, 200, content, request=request)
    assert parse_cashier_query(opened, request=request).kind is PaymentKind.ONE_TIME
    inner["PlatformID"] = 3085780
    with pytest.raises(ReplyMismatch, match="PlatformID"):
        parse_cashier_query(inner, request=request)


def test_a_blank_platform_id_echo_is_not_checked() -> None:
    credentials = Credentials("2000132", KEY, IV, platform_id="3085779")
    request = build_cashier_query(credentials, merchant_trade_no="BAOK85547852370", now=NOW)
    inner = copy.deepcopy(CASES[ONE_TIME]["inner"])
    assert inner["PlatformID"] == ""
    assert parse_cashier_query(inner, request=request).kind is PaymentKind.ONE_TIME


# -- the property: keys ECPay leaves out ------------------------------------------------------

# Without these the reply is not a trustworthy Cashier record at all. (An absent top-level
# MerchantID is tolerated: R2 is kept by OrderInfo.MerchantTradeNo, which must be echoed.)
REQUIRED = {
    ("RtnCode",),
    ("OrderInfo",),
    ("OrderInfo", "MerchantTradeNo"),
    ("OrderInfo", "TradeNo"),
    ("OrderInfo", "TradeAmt"),
    ("OrderInfo", "PaymentType"),
}
SIGNALS = {("CardInfo", "Stage"), ("CardInfo", "RedDan"), ("CardInfo", "RedDeAmt")}
RECORDED_CASHIER = sorted(
    name
    for name in WITH_INNER
    if PARSERS[CASES[name]["endpoint"]] is parse_cashier_query and "kind" in CASES[name]["expect"]
)
CARD_TYPES = [
    "Credit", "Credit_CreditCard", "Credit_CreditCard3", "Credit_CreditCard12",
    "CreditInstallment", "FlexibleInstallment", "UnionPay",
]  # fmt: skip
counts = st.one_of(
    st.integers(0, 24), st.integers(0, 24).map(str), st.sampled_from([None, "", "0", 0])
)


@st.composite
def generated_cashier(draw: st.DrawFn) -> dict[str, Any]:
    """A Cashier reply of the recorded shape with drawn values, extra keys and CardInfo keys."""
    base: dict[str, Any] = copy.deepcopy(CASES[ONE_TIME]["inner"])
    base["OrderInfo"]["PaymentType"] = draw(st.sampled_from(CARD_TYPES))
    base["OrderInfo"]["TradeAmt"] = draw(st.sampled_from([199, "199", 1615]))
    if draw(st.booleans()):
        keys = ["Stage", "Stast", "Staed", "RedDan", "RedDeAmt", "RedOkAmt", "RedYet", "Eci"]
        chosen = draw(st.lists(st.sampled_from(keys), unique=True))
        base["CardInfo"] = {key: draw(counts) for key in chosen}
    if draw(st.booleans()):
        base["ExecStatus"] = draw(st.sampled_from(["0", "1"]))
    return base


replies = st.one_of(
    st.sampled_from(RECORDED_CASHIER).map(lambda name: copy.deepcopy(CASES[name]["inner"])),
    generated_cashier(),
)


def paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))


def without(reply: dict[str, Any], removed: list[tuple[str, ...]]) -> dict[str, Any]:
    reduced = copy.deepcopy(reply)
    for path in removed:
        target: Any = reduced
        for key in path[:-1]:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.pop(path[-1], None)
    return reduced


def positive(value: object) -> bool:
    try:
        return int(str(value)) > 0
    except ValueError:
        return False


def carries_signal(reply: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether removing ``path`` can remove what says instalments or bonus points."""
    card = reply.get("CardInfo")
    if not isinstance(card, dict):
        return False
    if path == ("CardInfo",):
        return any(positive(card.get(key)) for _, key in SIGNALS)
    return path in SIGNALS and positive(card.get(path[1]))


def outcome(reply: dict[str, Any], request: WireRequest) -> PaymentKind | type[EcpayError]:
    try:
        return parse_cashier_query(reply, request=request).kind
    except EcpayError as exc:  # anything else fails the property
        return type(exc)


@given(reply=replies, data=st.data())
def test_keys_left_out_keep_the_kind_or_give_a_named_error(
    reply: dict[str, Any], data: st.DataObject
) -> None:
    credentials = Credentials(str(reply["MerchantID"]), KEY, IV)
    order = str(reply["OrderInfo"]["MerchantTradeNo"])
    request = build_cashier_query(credentials, merchant_trade_no=order, now=NOW)
    full = outcome(reply, request)
    assert isinstance(full, PaymentKind), f"a recorded or card-typed reply must parse: {full}"
    optional = sorted(set(paths(reply)) - REQUIRED)
    removed = data.draw(
        st.lists(st.sampled_from(optional), unique=True) if optional else st.just([])
    )
    reduced = outcome(without(reply, removed), request)
    if not any(carries_signal(reply, path) for path in removed):
        assert reduced is full, (removed, reduced, full)
    else:
        assert isinstance(reduced, PaymentKind) or issubclass(reduced, EcpayError)


@given(reply=replies, data=st.data())
def test_any_key_left_out_gives_a_kind_or_a_named_error(
    reply: dict[str, Any], data: st.DataObject
) -> None:
    """Required keys too: never a KeyError, TypeError or ValueError from the parser."""
    credentials = Credentials(str(reply["MerchantID"]), KEY, IV)
    order = str(reply["OrderInfo"]["MerchantTradeNo"])
    request = build_cashier_query(credentials, merchant_trade_no=order, now=NOW)
    removed = data.draw(st.lists(st.sampled_from(sorted(set(paths(reply)))), unique=True))
    result = outcome(without(reply, removed), request)
    assert isinstance(result, PaymentKind) or issubclass(result, EcpayError)
    if any(path in REQUIRED for path in removed):
        assert not isinstance(result, PaymentKind)
