"""Sans-I/O ECPay protocol: build request envelopes, open and verify replies.

See docs/ecpay-api.md sections 2-5.

Nothing here sends or receives anything. The clients call ``build_*`` for a :class:`WireRequest`,
POST ``request.body`` as JSON to ``base_url + request.path``, hand the status code and body bytes
to :func:`open_reply` and the decrypted inner data to a ``parse_*`` function. Every check ECPay's
contract implies happens here: HTTP status, TransCode (a rejected envelope is never decrypted),
the echoed IDs (R2), RtnCode, and the status vocabulary (R3). Every error raised carries the
order number and, where there is one, the raw reply; none carries a HashKey or HashIV.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, NoReturn, SupportsIndex, cast

import attrs

from ._codec import AesCodec, Secret, key_problem, not_serialisable
from ._exceptions import (
    ClockOutOfSync,
    CodecError,
    ConfigurationError,
    EcpayError,
    EnvelopeRejected,
    GatewayRefused,
    InvalidArgument,
    InvalidArgumentType,
    NotCreditCardOrder,
    ProtocolError,
    RateLimited,
    ReplyMismatch,
    ServiceNotEnabled,
    UnknownStatusError,
    WrongCredentials,
    error_token,
)
from ._models import (
    Action,
    GatewayStatus,
    OrderSnapshot,
    PaymentKind,
    State,
    check_amount,
    check_aware,
    check_order_number,
)
from ._rules import TAIPEI

__all__ = [
    "CASHIER_QUERY_PATH",
    "CREDIT_DETAIL_PATH",
    "DO_ACTION_PATH",
    "PRODUCTION_URL",
    "STAGE_URL",
    "CashierInfo",
    "CloseRow",
    "Credentials",
    "CreditDetail",
    "DoActionReply",
    "WireRequest",
    "build_cashier_query",
    "build_credit_detail",
    "build_do_action",
    "is_production",
    "is_stage",
    "open_reply",
    "open_reply_stamped",
    "parse_cashier_query",
    "parse_credit_detail",
    "parse_do_action",
    "snapshot_from",
]

PRODUCTION_URL = "https://ecpayment.ecpay.com.tw"
STAGE_URL = "https://ecpayment-stage.ecpay.com.tw"
DO_ACTION_PATH = "/1.0.0/Credit/DoAction"
CREDIT_DETAIL_PATH = "/1.0.0/CreditDetail/QueryTrade"
CASHIER_QUERY_PATH = "/1.0.0/Cashier/QueryTrade"

_MERCHANT_ID = re.compile(r"[A-Za-z0-9]{1,10}")
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,18}\s*")
# ``yyyy/MM/dd HH:mm:ss`` (JSON API) or AIO's ``2016/5/12 下午 07:09:17`` (12-hour clock).
_TIME = re.compile(
    r"\s*([0-9]{4})/([0-9]{1,2})/([0-9]{1,2})\s+(?:(上午|下午|AM|PM)\s*)?"
    r"([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})\s*",
    re.IGNORECASE,
)
_AFTERNOON = frozenset({"下午", "pm"})
# For the human reading the error only; control flow never looks at message text
# (docs/ecpay-api.md section 3).
_HINTS = {
    "error_nopay": "no authorization yet; ECPay says to query again in 10 minutes",
    "error_Stop": "merchant not found or its contract has expired",
}
# The same token means something else on DoAction (docs/ecpay-api.md section 3) [OBS].
_DO_ACTION_HINTS = {
    **_HINTS,
    "error_nopay": "the authorization is already abandoned: nothing is left to release",
    "error_amount_R": "nothing captured and settled that R could refund; query the order",
}
# Cashier/QueryTrade's OrderInfo.PaymentType (docs/ecpay-api.md section 5). A credit-card
# order reads ``Credit``, ``Credit_<Sub>`` (AIO's ``Credit_CreditCard``; ``Credit_CreditCard<N>``
# for N instalments), ``CreditInstallment``, ``FlexibleInstallment`` or ``UnionPay``.
_INSTALLMENT_TYPES = frozenset({"CreditInstallment", "FlexibleInstallment"})
_CREDIT_CARD_STAGES = re.compile(r"Credit_CreditCard([0-9]{1,3})")
# Families ECPay names for payments that are not by card, up to the first "_" (ATM_TAISHIN,
# CVS_CVS, BARCODE_BARCODE, WebATM_TAISHIN, TWQR_OPAY, BNPL_URICH, ...). Apple Pay is listed
# [HOUSE]: docs/ecpay-api.md section 5 counts no wallet as a credit-card order, so nothing is
# moved for one.
_NOT_CARD_FAMILIES = frozenset(
    {"ATM", "CVS", "BARCODE", "WebATM", "TWQR", "BNPL", "ApplePay", "DigitalPayment", "WeiXin"}
)


def is_production(base_url: str) -> bool:
    """Whether ``base_url`` points at one of ECPay's production hosts (not stage, not local)."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").rstrip(".")
    return (host == "ecpay.com.tw" or host.endswith(".ecpay.com.tw")) and not is_stage(base_url)


def is_stage(base_url: str) -> bool:
    """Whether ``base_url`` points at an ECPay stage host, where DoAction cannot run.

    See docs/ecpay-api.md section 1.

    A value that is not a URL raises :class:`ConfigurationError`.
    """
    if not isinstance(base_url, str):
        raise InvalidArgumentType(f"base_url must be a str, not {type(base_url).__name__}")
    try:
        parts = urllib.parse.urlsplit(base_url if "//" in base_url else f"//{base_url}")
        host = (parts.hostname or "").rstrip(".")
    except ValueError as exc:
        raise ConfigurationError(f"base_url is not a URL: {base_url!r}") from exc
    return host.endswith("ecpay.com.tw") and host.split(".", 1)[0].endswith("-stage")


# -- credentials ------------------------------------------------------------------------------


def _id_problem(given: Secret[object], field: str) -> EcpayError | None:
    """What is wrong with a MerchantID or PlatformID, or ``None``; never the value, since
    arguments swapped by mistake put a HashKey here. Returned, not raised, so that no frame
    holding the value is in the error's traceback."""
    value = given.reveal()
    if not isinstance(value, str):
        return InvalidArgumentType(f"{field} must be a str, not {type(value).__name__}")
    if field == "platform_id" and value == "":
        return None
    if _MERCHANT_ID.fullmatch(value):
        return None
    if len(value) == 16:
        got = "16 characters, the length of a HashKey or HashIV: are the arguments swapped?"
    elif 1 <= len(value) <= 10:
        got = "a character that is not an ASCII letter or digit"
    else:
        got = f"{len(value)} characters"
    return ConfigurationError(f"{field} must be 1-10 letters or digits, got {got}")


def _bool_problem(given: Secret[object], field: str) -> EcpayError | None:
    value = given.reveal()
    if isinstance(value, bool):
        return None
    return InvalidArgumentType(f"{field} must be a bool, not {type(value).__name__}")


@attrs.frozen(init=False, repr=False)
class Credentials:
    """One merchant's ECPay account: MerchantID, HashKey, HashIV and its auto-close setting.

    HashKey and HashIV are checked at construction (exactly 16 ASCII bytes, R1) and kept as
    :class:`~ecpay_lifecycle._codec.Secret` values (``credentials.hash_key.reveal()`` gives one
    back): they never appear in ``repr``, ``str``, an error message or the locals of a frame in
    an error's traceback, and ``pickle`` and ``copy`` raise :class:`SecretNotSerialisable`.
    ``platform_id`` is set only for platform merchants; the outer envelope then carries it
    instead of ``merchant_id`` (docs/ecpay-api.md section 3). ``auto_close`` is the merchant's
    daily auto-close setting (R5, R6, R7). ``codec`` is built once and shared.
    """

    merchant_id: str
    hash_key: Secret[str | bytes] = attrs.field(repr=False)
    hash_iv: Secret[str | bytes] = attrs.field(repr=False)
    platform_id: str = attrs.field(default="", kw_only=True)
    auto_close: bool = attrs.field(default=True, kw_only=True)
    codec: AesCodec = attrs.field(init=False, repr=False, eq=False)

    def __init__(
        self,
        merchant_id: str,
        hash_key: str | bytes | Secret[str | bytes],
        hash_iv: str | bytes | Secret[str | bytes],
        *,
        platform_id: str = "",
        auto_close: bool = True,
    ) -> None:
        # Every argument is held as a Secret before anything is checked: swapped arguments put a
        # HashKey in any of them, and a traceback printed with its locals shows this frame's.
        given = (merchant_id, hash_key, hash_iv, platform_id, auto_close)
        mid, key, iv, platform, close = (Secret[object](value) for value in given)
        del merchant_id, hash_key, hash_iv, platform_id, auto_close, given
        problem = (
            _id_problem(mid, "merchant_id")
            or key_problem(key, "hash_key")
            or key_problem(iv, "hash_iv")
            or _id_problem(platform, "platform_id")
            or _bool_problem(close, "auto_close")
        )
        if problem is not None:
            raise problem
        self.__attrs_init__(
            cast("str", mid.reveal()),
            cast("Secret[str | bytes]", key),
            cast("Secret[str | bytes]", iv),
            platform_id=cast("str", platform.reveal()),
            auto_close=cast("bool", close.reveal()),
        )
        object.__setattr__(self, "codec", AesCodec(key, iv))

    def __repr__(self) -> str:
        # Also on an instance whose __init__ refused its arguments, whose fields are not set:
        # a traceback printed with its locals shows it, and a repr that raised would stop that.
        if not hasattr(self, "codec"):
            return "Credentials(<refused>)"
        return (
            f"Credentials(merchant_id={self.merchant_id!r}, platform_id={self.platform_id!r}, "
            f"auto_close={self.auto_close!r})"
        )

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise not_serialisable("Credentials")

    @property
    def outer_merchant_id(self) -> str:
        """The envelope's ``MerchantID``: the platform's ID for a platform merchant.

        See docs/ecpay-api.md section 2.
        """
        return self.platform_id or self.merchant_id


# -- requests ---------------------------------------------------------------------------------


@attrs.frozen
class WireRequest:
    """One request ready to POST as JSON to ``base_url + path``.

    ``body`` is the outer envelope; ``data`` the inner plaintext before encryption, kept for the
    echo checks of R2 and for the journal. Neither holds a HashKey or HashIV.
    """

    path: str
    body: dict[str, Any]
    data: dict[str, Any]

    @property
    def merchant_trade_no(self) -> str | None:
        """The order this request is about."""
        value = self.data.get("MerchantTradeNo")
        return value if isinstance(value, str) else None


def _envelope(
    credentials: Credentials, path: str, data: dict[str, Any], now: dt.datetime
) -> WireRequest:
    # R20: plain Unix seconds; ECPay's "GMT+8" wording does not mean adding 8 hours
    # (docs/ecpay-api.md section 2).
    timestamp = int(check_aware(now).timestamp())
    body = {
        "MerchantID": credentials.outer_merchant_id,
        "RqHeader": {"Timestamp": timestamp},
        "Data": credentials.codec.encrypt(data),
    }
    return WireRequest(path=path, body=body, data=data)


def _inner_head(credentials: Credentials, merchant_trade_no: object) -> dict[str, Any]:
    if not isinstance(credentials, Credentials):
        raise InvalidArgumentType(
            f"credentials must be Credentials, not {type(credentials).__name__}"
        )
    return {
        "PlatformID": credentials.platform_id,
        "MerchantID": credentials.merchant_id,
        "MerchantTradeNo": check_order_number(merchant_trade_no, field="merchant_trade_no"),
    }


def build_do_action(
    credentials: Credentials,
    *,
    merchant_trade_no: str,
    trade_no: str,
    action: Action,
    amount: int,
    now: dt.datetime,
) -> WireRequest:
    """The DoAction request for one step; order numbers and amount checked (R19).

    See docs/ecpay-api.md section 3.

    ``TotalAmount`` is the amount this action moves: for ``R`` the amount to refund, not what
    is left. Bad input raises :class:`InvalidArgument` or :class:`InvalidArgumentType`.
    """
    data = _inner_head(credentials, merchant_trade_no)
    data["TradeNo"] = check_order_number(trade_no, field="trade_no")
    data["Action"] = _check_action(action).value
    data["TotalAmount"] = check_amount(amount, field="amount")
    return _envelope(credentials, DO_ACTION_PATH, data, now)


def _check_action(action: object) -> Action:
    if isinstance(action, Action):
        return action
    if not isinstance(action, str):
        raise InvalidArgumentType(f"action must be an Action, not {type(action).__name__}")
    try:
        return Action(action)
    except ValueError as exc:
        raise InvalidArgument(f"action must be one of C, R, E, N, got {action!r}") from exc


def build_credit_detail(
    credentials: Credentials,
    *,
    merchant_trade_no: str,
    trade_no: str | None = None,
    now: dt.datetime,
) -> WireRequest:
    """The CreditDetail/QueryTrade request that reads an order's state (R4, R19).

    See docs/ecpay-api.md section 4.
    """
    data = _inner_head(credentials, merchant_trade_no)
    if trade_no is not None:
        data["TradeNo"] = check_order_number(trade_no, field="trade_no")
    return _envelope(credentials, CREDIT_DETAIL_PATH, data, now)


def build_cashier_query(
    credentials: Credentials, *, merchant_trade_no: str, now: dt.datetime
) -> WireRequest:
    """The Cashier/QueryTrade request that tells the payment kind (R19).

    See docs/ecpay-api.md section 5.
    """
    data = _inner_head(credentials, merchant_trade_no)
    return _envelope(credentials, CASHIER_QUERY_PATH, data, now)


# -- opening replies --------------------------------------------------------------------------


def open_reply(
    credentials: Credentials, status_code: int, content: bytes, *, request: WireRequest
) -> dict[str, Any]:
    """Check the HTTP status and envelope of a reply and return its decrypted inner data (R2).

    See :func:`open_reply_stamped`, which also returns the reply's ``RpHeader.Timestamp``.
    """
    return open_reply_stamped(credentials, status_code, content, request=request)[0]


#: The envelope TransCodes ECPay answers before processing anything [OBS], each its own error.
_REJECTIONS: dict[int, tuple[type[EnvelopeRejected], str]] = {
    110: (WrongCredentials, "the HashKey or HashIV is wrong: ECPay could not decrypt Data"),
    104: (ClockOutOfSync, "the Timestamp is over 10 minutes off ECPay's clock (R20)"),
    115: (ServiceNotEnabled, "this ECPay service is not enabled for the merchant"),
}


def open_reply_stamped(
    credentials: Credentials, status_code: int, content: bytes, *, request: WireRequest
) -> tuple[dict[str, Any], int | None]:
    """:func:`open_reply`, plus the reply's ``RpHeader.Timestamp`` (``None`` if absent).

    HTTP 403 raises :class:`RateLimited` (ECPay asks to wait 30 minutes). Some ECPay hosts answer
    envelope errors and even business refusals with HTTP 500 and a valid envelope: the body of
    any other status is read, and an envelope (a JSON object with a ``TransCode``) is handled as
    on 200; a body that is not one raises :class:`ProtocolError` (docs/ecpay-api.md section 2),
    as does a 200 whose body is not a JSON object. ``TransCode != 1`` raises
    :class:`EnvelopeRejected` without decrypting ``Data`` (110, 104 and 115 as the named
    :class:`WrongCredentials`, :class:`ClockOutOfSync` and :class:`ServiceNotEnabled`); an outer
    ``MerchantID`` other than the request's raises :class:`ReplyMismatch`; a ``Data`` that does
    not decrypt raises :class:`CodecError`.
    """
    order = request.merchant_trade_no
    if status_code == 403:
        raise RateLimited(
            "HTTP 403 from ECPay: calls came too fast; ECPay asks to wait 30 minutes before "
            "calling again (not retried)",
            merchant_trade_no=order,
        )
    try:
        body = json.loads(content)
    except (ValueError, RecursionError) as exc:
        if status_code != 200:
            raise ProtocolError(
                f"HTTP {status_code} from ECPay {request.path}, and its body is not an envelope",
                merchant_trade_no=order,
                raw=content,
            ) from exc
        raise ProtocolError(
            f"reply from {request.path} is not JSON", merchant_trade_no=order, raw=content
        ) from exc
    if status_code != 200 and not (isinstance(body, dict) and "TransCode" in body):
        raise ProtocolError(
            f"HTTP {status_code} from ECPay {request.path}, and its body is not an envelope",
            merchant_trade_no=order,
            raw=content,
        )
    if not isinstance(body, dict):
        raise ProtocolError(
            f"reply from {request.path} is not a JSON object", merchant_trade_no=order, raw=content
        )
    stamp = _stamp(body.get("RpHeader"))
    trans_code = _integer(body, "TransCode", order=order, raw=body)
    if trans_code != 1:
        trans_msg = _message(body.get("TransMsg"))
        kind, meaning = _REJECTIONS.get(
            trans_code, (EnvelopeRejected, "ECPay did not process the request")
        )
        raise kind(
            f"{meaning}: TransCode {body.get('TransCode')!r}, TransMsg {trans_msg!r}",
            trans_code=body.get("TransCode"),
            trans_msg=trans_msg,
            merchant_trade_no=order,
            raw=body,
        )
    expected = request.body.get("MerchantID")
    if _text(body.get("MerchantID")) != expected:
        raise ReplyMismatch(
            f"reply echoes MerchantID {body.get('MerchantID')!r}, expected {expected!r} (R2)",
            merchant_trade_no=order,
            raw=body,
        )
    data = body.get("Data")
    if not isinstance(data, str):
        raise _field_error("Data", data, order, body)
    try:
        return credentials.codec.decrypt(data), stamp
    except CodecError as exc:
        raise CodecError(exc.message, merchant_trade_no=order) from exc


def _stamp(header: object) -> int | None:
    """``RpHeader.Timestamp`` as epoch seconds, or None when absent or not a number."""
    if not isinstance(header, dict):
        return None
    value = header.get("Timestamp")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


# -- parsing replies --------------------------------------------------------------------------


@attrs.frozen
class DoActionReply:
    """A DoAction that ECPay accepted (RtnCode 1). ``raw`` is the decrypted inner data."""

    rtn_code: int
    rtn_msg: str
    raw: dict[str, Any]


@attrs.frozen
class CloseRow:
    """One row of CreditDetail's ``CloseData``: a close or refund the batch has handled."""

    status: GatewayStatus
    amount: int
    at: dt.datetime | None


@attrs.frozen
class CreditDetail:
    """What CreditDetail/QueryTrade says about an order, in either reply shape.

    See docs/ecpay-api.md section 4.

    ``closed_amount`` is ECPay's ``ClsAmt``; ``authorized_at`` is aware, Asia/Taipei.
    """

    status: GatewayStatus
    amount: int
    closed_amount: int
    authorized_at: dt.datetime
    close_rows: tuple[CloseRow, ...]
    trade_id: str | None
    raw: dict[str, Any]

    @property
    def capture_settled(self) -> bool:
        """Whether a batch has settled a capture: some ``CloseData`` row is Captured (R9)."""
        return any(row.status is GatewayStatus.CAPTURED for row in self.close_rows)


@attrs.frozen
class CashierInfo:
    """What Cashier/QueryTrade says about an order's payment (docs/ecpay-api.md section 5)."""

    merchant_trade_no: str
    trade_no: str
    amount: int
    kind: PaymentKind
    payment_type: str
    raw: dict[str, Any]


def parse_do_action(inner: Mapping[str, Any], *, request: WireRequest) -> DoActionReply:
    """Verify a DoAction reply (R2) and return it if ECPay accepted the action.

    The echoed MerchantID, MerchantTradeNo and TradeNo are checked before RtnCode, so a reply
    for another order never passes as a refusal or a success (:class:`ReplyMismatch`). An
    accepted reply must echo all three. ``RtnCode != 1`` raises :class:`GatewayRefused`.
    """
    inner = _mapping(inner, request)
    order = request.merchant_trade_no
    missing = _check_echoes(inner, request, ("MerchantID", "MerchantTradeNo", "TradeNo"), raw=inner)
    _check_platform(inner, request, raw=inner)
    code = _integer(inner, "RtnCode", order=order, raw=inner)
    message = _message(inner.get("RtnMsg"))
    if code != 1:
        raise _refused(
            f"DoAction {request.data.get('Action')}",
            code,
            message,
            order,
            inner,
            hints=_DO_ACTION_HINTS,
        )
    _require_echoes(missing, order, inner)
    return DoActionReply(rtn_code=code, rtn_msg=message, raw=dict(inner))


def parse_credit_detail(inner: Mapping[str, Any], *, request: WireRequest) -> CreditDetail:
    """Read a CreditDetail/QueryTrade reply in its JSON or AIO shape (R3).

    See docs/ecpay-api.md section 4.

    A present ``RtnCode`` other than 1, or (without ``RtnCode``) a non-empty ``RtnMsg`` such as
    ``error_nopay`` raises :class:`GatewayRefused`. An unknown status raises
    :class:`UnknownStatusError`; a missing or ill-typed field raises :class:`ProtocolError`
    naming it. IDs the reply echoes must match the request (R2).
    """
    inner = _mapping(inner, request)
    order = request.merchant_trade_no
    # This reply echoes no IDs as documented; any it does carry must still match (R2).
    _check_echoes(inner, request, ("MerchantID", "MerchantTradeNo", "TradeNo"), raw=inner)
    _check_platform(inner, request, raw=inner)
    message = _message(inner.get("RtnMsg"))
    if "RtnCode" in inner:
        code = _integer(inner, "RtnCode", order=order, raw=inner)
        if code != 1:
            raise _refused("CreditDetail/QueryTrade", code, message, order, inner)
    elif message.strip():
        raise _refused("CreditDetail/QueryTrade", None, message, order, inner)
    value = _lower_keys(
        _object(inner, "RtnValue", order=order, raw=inner), "RtnValue", order, inner
    )
    if "CloseData" in inner:
        close_data, close_name = inner["CloseData"], "CloseData"
    elif "close_data" in value:
        close_data, close_name = value["close_data"], "RtnValue.close_data"
    else:
        raise ProtocolError(
            "CreditDetail reply has no CloseData (nor AIO close_data)",
            merchant_trade_no=order,
            raw=inner,
        )
    trade_id = value.get("tradeid")
    return CreditDetail(
        status=_status(value, "status", "RtnValue.Status", order, inner),
        amount=_integer(value, "amount", order=order, raw=inner, name="RtnValue.Amount", minimum=0),
        closed_amount=_integer(
            value, "clsamt", order=order, raw=inner, name="RtnValue.ClsAmt", minimum=0
        ),
        authorized_at=_time(value.get("authtime"), "RtnValue.AuthTime", order, inner),
        close_rows=_close_rows(close_data, close_name, order, inner),
        trade_id=None if trade_id is None or trade_id == "" else _text(trade_id),
        raw=dict(inner),
    )


def parse_cashier_query(inner: Mapping[str, Any], *, request: WireRequest) -> CashierInfo:
    """Read a Cashier/QueryTrade reply and classify the payment kind (R2).

    See docs/ecpay-api.md section 5.

    ECPay leaves out what does not apply: an absent ``CardInfo``, ``Stage``, ``RedDan`` or
    ``RedDeAmt`` is 0, and numbers may come as numeric strings. Kind: ``Stage > 0`` or an
    instalment ``PaymentType`` (``Credit_CreditCard<N>``, ``CreditInstallment``,
    ``FlexibleInstallment``) is instalments (R11); else ``RedDan > 0`` or ``RedDeAmt > 0`` bonus
    points (R12); else ``PaymentType == "UnionPay"`` UnionPay (R8); else one-time. A payment
    type that is not a credit card (``ATM``, ``CVS``, ``BARCODE``, ...) raises
    :class:`NotCreditCardOrder`; ``RtnCode != 1`` :class:`GatewayRefused`; a reply for another
    order :class:`ReplyMismatch`; a missing or ill-typed field :class:`ProtocolError`.
    """
    inner = _mapping(inner, request)
    order = request.merchant_trade_no
    info = inner.get("OrderInfo")
    echoes: Mapping[str, Any] = info if isinstance(info, Mapping) else {}
    _check_echoes(inner, request, ("MerchantID",), raw=inner)
    _check_platform(inner, request, raw=inner)
    missing = _check_echoes(echoes, request, ("MerchantTradeNo",), raw=inner, prefix="OrderInfo.")
    code = _integer(inner, "RtnCode", order=order, raw=inner)
    if code != 1:
        raise _refused("Cashier/QueryTrade", code, _message(inner.get("RtnMsg")), order, inner)
    _require_echoes(missing, order, inner)
    info = _object(inner, "OrderInfo", order=order, raw=inner)
    payment_type = _text(info.get("PaymentType"))
    if payment_type is None:
        raise _field_error("OrderInfo.PaymentType", info.get("PaymentType"), order, inner)
    signal = _payment_signal(payment_type, order, inner)
    card = inner.get("CardInfo")
    if card is None:
        card = {}
    elif not isinstance(card, Mapping):
        raise _field_error("CardInfo", card, order, inner)
    stage = _count(card, "Stage", order, inner)
    red_dan = _count(card, "RedDan", order, inner)
    red_amount = _count(card, "RedDeAmt", order, inner)
    if stage > 0 or signal is PaymentKind.INSTALLMENT:
        kind = PaymentKind.INSTALLMENT
    elif red_dan > 0 or red_amount > 0:
        kind = PaymentKind.BONUS
    elif signal is PaymentKind.UNIONPAY:
        kind = PaymentKind.UNIONPAY
    else:
        kind = PaymentKind.ONE_TIME
    trade_no = _text(info.get("TradeNo"))
    if not trade_no:
        raise _field_error("OrderInfo.TradeNo", info.get("TradeNo"), order, inner)
    return CashierInfo(
        merchant_trade_no=str(request.merchant_trade_no),
        trade_no=trade_no,
        amount=_integer(info, "TradeAmt", order=order, raw=inner, name="OrderInfo.TradeAmt"),
        kind=kind,
        payment_type=payment_type,
        raw=dict(inner),
    )


def _payment_signal(
    payment_type: str, order: str | None, raw: Mapping[str, Any]
) -> PaymentKind | None:
    """What ``OrderInfo.PaymentType`` alone says (docs/ecpay-api.md section 5): instalments,
    UnionPay, or nothing beyond "a credit card" (None). A type that is not a credit card raises
    :class:`NotCreditCardOrder`, naming it; so does one the library does not know, since
    DoAction applies to credit-card orders only."""
    if payment_type == "UnionPay":
        return PaymentKind.UNIONPAY
    if payment_type in _INSTALLMENT_TYPES:
        return PaymentKind.INSTALLMENT
    stages = _CREDIT_CARD_STAGES.fullmatch(payment_type)
    if stages is not None and int(stages.group(1)) > 0:
        return PaymentKind.INSTALLMENT
    if payment_type == "Credit" or payment_type.startswith("Credit_"):
        return None
    if payment_type.split("_", 1)[0] in _NOT_CARD_FAMILIES:
        problem = "is not a credit-card order"
    else:
        problem = "is not known to be a credit-card order (not Credit, Credit_..., UnionPay)"
    raise NotCreditCardOrder(
        f"the order {problem}: Cashier/QueryTrade gives PaymentType {payment_type!r}. "
        "DoAction captures, refunds and abandons credit-card authorizations only; nothing was "
        "sent (refund such an order in ECPay's back office)",
        payment_type=payment_type,
        merchant_trade_no=order,
        raw=raw,
    )


def snapshot_from(
    detail: CreditDetail,
    *,
    merchant_trade_no: str,
    trade_no: str,
    kind: PaymentKind,
    auto_close: bool,
) -> OrderSnapshot:
    """The :class:`OrderSnapshot` a CreditDetail reply describes (R3, R4, R9).

    The state comes from the status and ``ClsAmt``; ``capture_settled`` from the ``CloseData``
    rows (a Captured row means a batch settled a capture), and is always True once Closed or
    Refunded. A reply describing an impossible order raises :class:`ProtocolError`.
    """
    check_order_number(merchant_trade_no, field="merchant_trade_no")
    check_order_number(trade_no, field="trade_no")
    if not isinstance(kind, PaymentKind):
        raise InvalidArgumentType(f"kind must be a PaymentKind, not {type(kind).__name__}")
    if not isinstance(auto_close, bool):
        raise InvalidArgumentType(f"auto_close must be a bool, not {type(auto_close).__name__}")
    state = detail.status.to_state(detail.closed_amount)
    settled = detail.capture_settled or state in (State.CLOSED, State.REFUNDED)
    if detail.capture_settled and state in (State.AUTHORIZED, State.UNAUTHORIZED):
        # OrderSnapshot would take the state's word; a reply saying both is not to be planned on.
        raise ProtocolError(
            f"CreditDetail describes an impossible order: {state} with a settled capture "
            "(a Captured close row)",
            merchant_trade_no=merchant_trade_no,
            raw=detail.raw,
        )
    try:
        return OrderSnapshot(
            merchant_trade_no=merchant_trade_no,
            trade_no=trade_no,
            amount=detail.amount,
            state=state,
            authorized_at=detail.authorized_at,
            closed_amount=detail.closed_amount,
            kind=kind,
            auto_close=auto_close,
            capture_settled=settled,
        )
    except (InvalidArgument, InvalidArgumentType) as exc:
        raise ProtocolError(
            f"CreditDetail describes an impossible order: {exc.message}",
            merchant_trade_no=merchant_trade_no,
            raw=detail.raw,
        ) from exc


# -- field helpers ----------------------------------------------------------------------------


def _mapping(inner: object, request: WireRequest) -> Mapping[str, Any]:
    if not isinstance(inner, Mapping):
        raise ProtocolError(
            f"reply data is {type(inner).__name__}, not a JSON object",
            merchant_trade_no=request.merchant_trade_no,
        )
    return inner


def _text(value: object) -> str | None:
    """An ID as text: ECPay sends strings, but a numeric ID may come back as a JSON number."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _message(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _check_echoes(
    source: Mapping[str, Any],
    request: WireRequest,
    names: tuple[str, ...],
    *,
    raw: Mapping[str, Any],
    prefix: str = "",
) -> list[str]:
    """R2: raise :class:`ReplyMismatch` for an echoed ID that differs from the request.

    Returns the names the reply left out (absent or empty), for the caller to judge: a refusal
    may omit them, an accepted reply may not.
    """
    missing = []
    for name in names:
        expected = request.data.get(name)
        if expected is None:
            continue
        got = source.get(name)
        if got is None or got == "":
            missing.append(prefix + name)
        elif _text(got) != expected:
            raise ReplyMismatch(
                f"reply echoes {prefix}{name} {got!r}, expected {expected!r} (R2)",
                merchant_trade_no=request.merchant_trade_no,
                raw=raw,
            )
    return missing


def _require_echoes(missing: list[str], order: str | None, raw: Mapping[str, Any]) -> None:
    if missing:
        raise ReplyMismatch(
            f"reply does not echo {', '.join(missing)}: it cannot be trusted (R2)",
            merchant_trade_no=order,
            raw=raw,
        )


def _check_platform(
    source: Mapping[str, Any], request: WireRequest, *, raw: Mapping[str, Any]
) -> None:
    """R2 for a platform merchant: a ``PlatformID`` the reply echoes (as text or as a number)
    must be the one sent. Ordinary merchants send it empty and ECPay may echo anything blank."""
    expected = request.data.get("PlatformID")
    got = source.get("PlatformID")
    if not expected or got is None or got == "":
        return
    if _text(got) != expected:
        raise ReplyMismatch(
            f"reply echoes PlatformID {got!r}, expected {expected!r} (R2)",
            merchant_trade_no=request.merchant_trade_no,
            raw=raw,
        )


def _refused(
    what: str,
    code: int | None,
    message: str,
    order: str | None,
    raw: Mapping[str, Any],
    *,
    hints: Mapping[str, str] = _HINTS,
) -> GatewayRefused:
    token = error_token(message)
    hint = hints.get(token or "")
    text = f"ECPay refused {what}: RtnCode {code}, RtnMsg {message!r}"
    return GatewayRefused(
        f"{text} ({hint})" if hint else text,
        rtn_code=code,
        rtn_msg=message,
        merchant_trade_no=order,
        raw=raw,
    )


def _field_error(
    name: str, value: object, order: str | None, raw: Mapping[str, Any]
) -> ProtocolError:
    if value is None:
        problem = f"reply has no {name}"
    else:
        problem = f"reply field {name} has unexpected value {value!r}"
    return ProtocolError(problem, merchant_trade_no=order, raw=raw)


def _integer(
    source: Mapping[str, Any],
    key: str,
    *,
    order: str | None,
    raw: Mapping[str, Any],
    name: str | None = None,
    minimum: int | None = None,
) -> int:
    """A whole number sent as a JSON number or, by the AIO API, as a numeric string."""
    value = source.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        raise _field_error(name or key, value, order, raw)
    if minimum is not None and number < minimum:
        raise _field_error(name or key, value, order, raw)
    return number


def _count(source: Mapping[str, Any], key: str, order: str | None, raw: Mapping[str, Any]) -> int:
    """An optional ``CardInfo`` count: absent, null or blank is 0 (ECPay omits what does not
    apply, docs/ecpay-api.md section 5); otherwise a whole number >= 0, as a JSON number or a
    numeric string."""
    value = source.get(key)
    if value is None or value == "":
        return 0
    return _integer(source, key, order=order, raw=raw, name=f"CardInfo.{key}", minimum=0)


def _object(
    source: Mapping[str, Any], key: str, *, order: str | None, raw: Mapping[str, Any]
) -> Mapping[str, Any]:
    value = source.get(key)
    if not isinstance(value, Mapping):
        raise _field_error(key, value, order, raw)
    return value


def _lower_keys(
    value: Mapping[str, Any], name: str, order: str | None, raw: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON API's ``Amount`` and AIO's ``amount`` are one field: match keys ignoring case."""
    lowered = {key.casefold(): item for key, item in value.items() if isinstance(key, str)}
    if len(lowered) != len(value):
        raise ProtocolError(
            f"reply field {name} has keys that differ only in case, or are not text",
            merchant_trade_no=order,
            raw=raw,
        )
    return lowered


def _status(
    source: Mapping[str, Any], key: str, name: str, order: str | None, raw: Mapping[str, Any]
) -> GatewayStatus:
    value = source.get(key)
    if not isinstance(value, str):
        raise _field_error(name, value, order, raw)
    try:
        return GatewayStatus.parse(value)
    except UnknownStatusError as exc:
        raise UnknownStatusError(exc.status, merchant_trade_no=order, raw=raw) from exc


def _time(value: object, name: str, order: str | None, raw: Mapping[str, Any]) -> dt.datetime:
    """``yyyy/MM/dd HH:mm:ss`` or AIO's ``2016/5/12 下午 07:09:17``, as Asia/Taipei."""
    found = _TIME.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise _field_error(name, value, order, raw)
    year, month, day, meridiem, hour, minute, second = found.groups()
    hour_number = int(hour)
    if meridiem is not None:
        # 12-hour clock: 上午 12 is midnight, 下午 12 is noon, 下午 1-11 add twelve hours.
        if not 1 <= hour_number <= 12:
            raise _field_error(name, value, order, raw)
        hour_number %= 12
        if meridiem.casefold() in _AFTERNOON:
            hour_number += 12
    try:
        return dt.datetime(
            int(year),
            int(month),
            int(day),
            hour_number,
            int(minute),
            int(second),
            tzinfo=TAIPEI,
        )
    except ValueError as exc:
        raise _field_error(name, value, order, raw) from exc


def _close_rows(
    value: object, name: str, order: str | None, raw: Mapping[str, Any]
) -> tuple[CloseRow, ...]:
    """``CloseData``: ``{}`` when there is no row, otherwise a list of rows ([HOUSE]).

    See docs/ecpay-api.md section 4.
    """
    if isinstance(value, Mapping) and not value:
        return ()
    if not isinstance(value, list):
        raise _field_error(name, value, order, raw)
    rows = []
    for index, item in enumerate(value):
        label = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            raise _field_error(label, item, order, raw)
        row = _lower_keys(item, label, order, raw)
        when = row.get("datetime")
        rows.append(
            CloseRow(
                status=_status(row, "status", f"{label}.Status", order, raw),
                amount=_integer(
                    row, "amount", order=order, raw=raw, name=f"{label}.Amount", minimum=0
                ),
                at=None
                if when is None or when == ""
                else _time(when, f"{label}.DateTime", order, raw),
            )
        )
    return tuple(rows)
