"""Recorded ECPay replies, replayed against the emulator (issue 10 item 5, the emulator's half).

Every file under ``tests/fixtures/ecpay/`` is a reply ECPay really sent [OBS] or documented [DOC]
for one ``situation``. For each situation the emulator can reproduce, a scenario below drives it
there through the wire, with default settings, and the reply must match the recording: the same
``TransCode``, the same ``RtnCode`` (or, where the source quotes only the message, the same
``error_xxx`` token and still a refusal), the same message where ECPay's own was recorded, the
same HTTP status where recorded, and the same shape: the same top-level keys when the recording
is complete, the recorded keys at least when it quotes only some. ``test_every_situation_is_
accounted_for`` fails when a new recording names a situation no scenario covers and no reason
excludes, so each new file gets a decision. The library's side of the same files is
``test_recorded_replies.py``; the contract is docs/ecpay-api.md.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, PaymentKind
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle._exceptions import error_token
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, Fault
from test_emulator_support import IV, KEY, MID, START, make_emulator

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "ecpay"
FILES = sorted(FIXTURES.glob("*.json"))

#: The endpoint a recording names, as one of the emulator's three. Recordings from a sibling
#: endpoint with the same envelope (README of the fixtures) map to the one that shares its shape.
ENDPOINTS = {
    "DoAction": Endpoint.DO_ACTION,
    "CreditDetail/QueryTrade": Endpoint.CREDIT_DETAIL,
    "Cashier/QueryTrade": Endpoint.QUERY_TRADE,
    "Cashier/BackAuth": Endpoint.QUERY_TRADE,
    "Merchant/GetTokenbyTrade": Endpoint.QUERY_TRADE,
    "Cashier/QueryTradeMedia": Endpoint.QUERY_TRADE,
}

#: The recordings of the emulator's own three endpoints.
OWN = ("DoAction", "CreditDetail/QueryTrade", "Cashier/QueryTrade")

#: Situations the emulator does not model, and why.
NOT_REPRODUCIBLE = {
    "cashier_recurring_no_stage": "the emulator has no recurring (定期定額) orders (R17)",
    "cashier_not_credit_card_atm": "the emulator holds card authorizations only, no ATM orders",
}


@attrs.frozen
class Answer:
    """What the emulator answered: HTTP status, outer envelope, decrypted inner data."""

    status: int
    envelope: dict[str, Any]
    inner: dict[str, Any] | None


@attrs.frozen
class Case:
    """One recording."""

    path: pathlib.Path
    data: dict[str, Any]

    @property
    def situation(self) -> str:
        return str(self.data["situation"])

    @property
    def endpoint(self) -> Endpoint:
        return ENDPOINTS[self.data["endpoint"]]

    def requested(self, key: str, default: Any = None) -> Any:
        return (self.data.get("request") or {}).get(key, default)


class Merchant:
    """The merchant's side of the wire, with an emulator in a fresh state (default settings)."""

    def __init__(self, *, now: dt.datetime = START) -> None:
        self.emulator: Emulator = make_emulator(balance=100_000, now=now)
        self.codec = AesCodec(KEY, IV)

    def post(
        self, endpoint: Endpoint, inner: dict[str, Any], *, codec: AesCodec | None = None
    ) -> Answer:
        body = {
            "MerchantID": MID,
            "RqHeader": {"Timestamp": int(self.emulator.clock().timestamp())},
            "Data": (codec or self.codec).encrypt(inner),
        }
        with httpx.Client(transport=httpx.MockTransport(self.emulator.handler)) as http:
            response = http.post("https://ecpayment.ecpay.com.tw" + endpoint.value, json=body)
        outer = response.json()
        inner_reply = self.codec.decrypt(outer["Data"]) if outer["TransCode"] == 1 else None
        return Answer(response.status_code, outer, inner_reply)

    def do(self, number: str, action: Action, amount: int) -> Answer:
        inner = {
            "MerchantID": MID,
            "MerchantTradeNo": number,
            "TradeNo": self.emulator.order(MID, number).trade_no,
            "Action": action.value,
            "TotalAmount": amount,
        }
        return self.post(Endpoint.DO_ACTION, inner)

    def ask(self, endpoint: Endpoint, number: str, **extra: Any) -> Answer:
        """A query of ``endpoint``, or for DoAction an N for the order amount."""
        if endpoint is Endpoint.DO_ACTION:
            inner: dict[str, Any] = {
                "MerchantID": MID,
                "MerchantTradeNo": number,
                "TradeNo": "NOSUCHTREADNO0001",
                "Action": "R",
                "TotalAmount": 100,
            }
        else:
            inner = {"MerchantID": MID, "MerchantTradeNo": number}
        return self.post(endpoint, {**inner, **extra})


# -- the scenarios: drive the emulator into each recorded situation ----------------------------


def unknown_order(case: Case, merchant: Merchant) -> Answer:
    return merchant.ask(case.endpoint, "NOSUCH1785547131")


def missing_inner_merchant_id(case: Case, merchant: Merchant) -> Answer:
    inner = merchant_inner(merchant, case)
    del inner["MerchantID"]
    return merchant.post(case.endpoint, inner)


def mismatched_inner_merchant_id(case: Case, merchant: Merchant) -> Answer:
    return merchant.post(case.endpoint, merchant_inner(merchant, case) | {"MerchantID": "2000132"})


def merchant_inner(merchant: Merchant, case: Case) -> dict[str, Any]:
    """The probe's request: an order that does not exist, named by the envelope's merchant."""
    if case.endpoint is Endpoint.DO_ACTION:
        return {
            "MerchantID": MID,
            "MerchantTradeNo": "NOSUCH1785547131",
            "TradeNo": case.requested("trade_no", "NOSUCHTREADNO0001"),
            "Action": case.requested("action", "R"),
            "TotalAmount": case.requested("amount", 100),
        }
    return {"MerchantID": MID, "MerchantTradeNo": "NOSUCH1785547131"}


def refund_unsettled_capture(case: Case, merchant: Merchant) -> Answer:
    """A full R on an order authorized but not yet closed (before the 20:15 auto-close)."""
    amount = case.requested("amount", 1615)
    merchant.emulator.authorize(MID, "A1", amount)
    return merchant.do("A1", Action.REFUND, amount)


def abandon_partial_amount(case: Case, merchant: Merchant) -> Answer:
    """N of 10 on a 30 TWD order not yet closed: accepted, and all of it released."""
    merchant.emulator.authorize(MID, "A1", 30)
    answer = merchant.do("A1", Action.ABANDON, case.requested("amount", 10))
    view = merchant.emulator.order(MID, "A1")
    assert (view.status, view.closed_amount) == (GatewayStatus.CANCELED, 0)
    return answer


def abandon_already_abandoned(case: Case, merchant: Merchant) -> Answer:
    """The same N again, on the order the first N released."""
    merchant.emulator.authorize(MID, "A1", 30)
    amount = case.requested("amount", 10)
    assert merchant.do("A1", Action.ABANDON, amount).inner == merchant_success(merchant)
    return merchant.do("A1", Action.ABANDON, amount)


def merchant_success(merchant: Merchant) -> dict[str, Any]:
    [applied] = merchant.emulator.applied_do_actions(MID, "A1")
    assert applied.reply is not None
    return dict(applied.reply)


def doaction_success(case: Case, merchant: Merchant) -> Answer:
    amount = case.requested("amount", 100)
    merchant.emulator.authorize(MID, "A1", amount)
    return merchant.do("A1", Action(case.requested("action", "C")), amount)


def creditdetail_authorized(case: Case, merchant: Merchant) -> Answer:
    merchant.emulator.authorize(MID, "A1", 199)
    return merchant.ask(Endpoint.CREDIT_DETAIL, "A1")


def cashier_one_time_no_cardinfo(case: Case, merchant: Merchant) -> Answer:
    merchant.emulator.authorize(MID, "A1", 199)
    return merchant.ask(Endpoint.QUERY_TRADE, "A1")


def cashier_instalment_no_red(case: Case, merchant: Merchant) -> Answer:
    merchant.emulator.authorize(MID, "A1", 3000, kind=PaymentKind.INSTALLMENT)
    return merchant.ask(Endpoint.QUERY_TRADE, "A1")


def bad_hashkey(case: Case, merchant: Merchant) -> Answer:
    merchant.emulator.authorize(MID, "A1", 100)
    wrong = AesCodec("XXXXXXXXXXXXXXXX", IV)
    return merchant.post(case.endpoint, {"MerchantID": MID, "MerchantTradeNo": "A1"}, codec=wrong)


def transcode_128_system_exception(case: Case, merchant: Merchant) -> Answer:
    """A transient system exception: the TransCode fault, with ECPay's code."""
    merchant.emulator.authorize(MID, "A1", 100)
    merchant.emulator.faults.inject(Fault.TRANS_CODE_ERROR, trans_code=128)
    return merchant.ask(case.endpoint, "A1")


SCENARIOS: dict[str, Callable[[Case, Merchant], Answer]] = {
    "unknown_order": unknown_order,
    "missing_inner_merchant_id": missing_inner_merchant_id,
    "mismatched_inner_merchant_id": mismatched_inner_merchant_id,
    "refund_unsettled_capture": refund_unsettled_capture,
    "abandon_partial_amount": abandon_partial_amount,
    "abandon_already_abandoned": abandon_already_abandoned,
    "doaction_success": doaction_success,
    "creditdetail_authorized": creditdetail_authorized,
    "cashier_one_time_no_cardinfo": cashier_one_time_no_cardinfo,
    "cashier_instalment_no_red": cashier_instalment_no_red,
    "bad_hashkey": bad_hashkey,
    "transcode_128_system_exception": transcode_128_system_exception,
}


# -- the comparison ---------------------------------------------------------------------------


def load(path: pathlib.Path) -> Case:
    return Case(path, json.loads(path.read_text(encoding="utf-8")))


def code(value: Any) -> int | None:
    """An RtnCode or TransCode as recorded: a JSON number, or the form API's text."""
    if value is None:
        return None
    return int(value)


def same_shape(recorded: dict[str, Any], answered: dict[str, Any], *, complete: bool) -> None:
    """The same top-level keys for a complete recording; the recorded ones at least otherwise."""
    if complete:
        assert set(answered) == set(recorded), (sorted(answered), sorted(recorded))
    else:
        assert set(recorded) <= set(answered), (sorted(answered), sorted(recorded))


def nothing_applied_unless_accepted(emulator: Emulator, answer: Answer) -> None:
    """A refusal or a rejected envelope leaves the last request unapplied in the event log."""
    last = [event for event in emulator.events if event.kind is EventKind.REQUEST][-1]
    accepted = answer.inner is not None and code(answer.inner.get("RtnCode", 1)) == 1
    if code(answer.envelope["TransCode"]) != 1 or not accepted:
        assert last.applied is False, last.describe()


def assert_matches(case: Case, answer: Answer) -> None:
    data = case.data
    envelope = data.get("envelope")
    inner = data.get("inner")
    complete = bool(data.get("inner_complete", True))
    if data.get("http_status") is not None:
        assert answer.status == data["http_status"]
    if envelope is not None:
        same_shape(
            envelope,
            answer.envelope,
            complete=set(envelope) >= {"TransCode", "TransMsg", "Data"},
        )
        if "TransCode" in envelope:
            assert code(answer.envelope["TransCode"]) == code(envelope["TransCode"])
        if "TransMsg" in envelope and code(envelope.get("TransCode")) != 1:
            assert answer.envelope["TransMsg"] == envelope["TransMsg"]
    if inner is None:
        assert answer.inner is None or code(answer.envelope["TransCode"]) == 1
        return
    assert code(answer.envelope["TransCode"]) == 1
    assert answer.inner is not None
    if data["evidence"] == "DOC":
        # ECPay's page lists PlatformID among the reply's fields but its example leaves it out;
        # the emulator follows the list (and the replies ECPay was seen to send).
        same_shape(inner, answer.inner, complete=False)
    else:
        same_shape(inner, answer.inner, complete=complete)
    recorded_code = code(inner.get("RtnCode"))
    answered_code = code(answer.inner.get("RtnCode"))
    if recorded_code is not None or "RtnCode" not in answer.inner:
        assert answered_code == recorded_code
    message = inner.get("RtnMsg")
    token = error_token(message)
    if recorded_code is None and token is not None:
        # The source quotes the message only: the same token, and still a refusal.
        assert answered_code not in (None, 1)
        assert error_token(answer.inner.get("RtnMsg")) == token
    elif message is not None and data["evidence"] == "OBS" and data["endpoint"] in OWN:
        # ECPay's own text, where it was recorded for this very endpoint (a sibling endpoint's
        # success text need not be this one's).
        assert answer.inner["RtnMsg"] == message


# -- the tests --------------------------------------------------------------------------------


def test_the_fixtures_are_there() -> None:
    """The recordings this test replays exist (tests/fixtures/ecpay/README.md lists them)."""
    assert FILES, "no recorded replies under tests/fixtures/ecpay"


def test_every_situation_is_accounted_for() -> None:
    situations = {load(path).situation for path in FILES}
    unknown = situations - set(SCENARIOS) - set(NOT_REPRODUCIBLE)
    assert not unknown, f"a recording names a situation with no scenario and no reason: {unknown}"
    assert not set(SCENARIOS) & set(NOT_REPRODUCIBLE)


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_the_emulator_answers_as_recorded(path: pathlib.Path) -> None:
    """Same TransCode, RtnCode (or token), message, HTTP status and shape as the recording; and a
    refusal moves no money (the event log says so)."""
    case = load(path)
    if case.situation in NOT_REPRODUCIBLE:
        pytest.skip(NOT_REPRODUCIBLE[case.situation])
    merchant = Merchant()
    answer = SCENARIOS[case.situation](case, merchant)
    assert_matches(case, answer)
    nothing_applied_unless_accepted(merchant.emulator, answer)


def test_the_instalment_record_keeps_only_the_keys_that_apply() -> None:
    """Beyond the top level: the instalment record's CardInfo has Stage/Stast/Staed and no
    Red* keys, in the recording and in the emulator's answer."""
    case = load(FIXTURES / "cashier_instalment_no_red.json")
    answer = cashier_instalment_no_red(case, Merchant())
    assert answer.inner is not None
    recorded = case.data["inner"]["CardInfo"]
    answered = answer.inner["CardInfo"]
    for key in ("Stage", "Stast", "Staed"):
        assert (key in answered, answered[key]) == (True, recorded[key])
    assert not any(key.startswith("Red") for key in recorded)
    assert not any(key.startswith("Red") for key in answered)
    assert (
        answer.inner["OrderInfo"]["PaymentType"] == case.data["inner"]["OrderInfo"]["PaymentType"]
    )


def test_the_authorized_detail_has_the_recorded_value_keys() -> None:
    case = load(FIXTURES / "creditdetail_authorized.json")
    answer = creditdetail_authorized(case, Merchant())
    assert answer.inner is not None
    assert set(answer.inner["RtnValue"]) == set(case.data["inner"]["RtnValue"])
    assert answer.inner["CloseData"] == case.data["inner"]["CloseData"] == {}
