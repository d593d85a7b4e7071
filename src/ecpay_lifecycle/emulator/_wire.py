"""ECPay's wire shapes on the gateway's side: reading request envelopes, writing replies.

Pure functions of their inputs (no clock, no state): the envelope checks of docs/ecpay-api.md
section 2, the inner replies of its sections 3-5 in ECPay's PascalCase (JSON and AIO flavours of
CreditDetail), and the byte-level tricks the faults need (a ``Data`` that does not decrypt, echoes
that mismatch).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from typing import Any

import attrs

from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle._exceptions import CodecError, InvalidArgument
from ecpay_lifecycle._models import GatewayStatus, PaymentKind

from ._settings import ReplyFlavour
from ._state import TAIPEI, OrderView

__all__ = [
    "DECRYPT_FAIL",
    "STALE_TIMESTAMP",
    "TRANS_MESSAGES",
    "Envelope",
    "EnvelopeProblem",
    "aio_time",
    "credit_detail_reply",
    "garble",
    "json_time",
    "other_number",
    "query_trade_reply",
    "read_envelope",
]

#: ECPay's ``(TransCode, TransMsg)`` for a ``Data`` it cannot decrypt (wrong HashKey/HashIV),
#: as observed [OBS] (section 2).
DECRYPT_FAIL = (110, "The parameter [Data] decrypt fail.")
#: ECPay's ``(TransCode, TransMsg)`` for a Timestamp outside the 10 minutes (R20), as observed.
STALE_TIMESTAMP = (104, "Timestamp is over 10 minutes")
#: ECPay's TransMsg for each TransCode it was seen to answer [OBS]; ``Fault.TRANS_CODE_ERROR``
#: answers with these (128 "System exception" was seen once, transiently: section 2).
TRANS_MESSAGES = {
    DECRYPT_FAIL[0]: DECRYPT_FAIL[1],
    STALE_TIMESTAMP[0]: STALE_TIMESTAMP[1],
    128: "System exception",
}

#: How many instalments an emulated instalment order has (``Credit_CreditCard3``).
_STAGES = 3

#: Beyond this many seconds a Timestamp cannot be within any tolerance and is not compared as a
#: float (a huge JSON integer would overflow the conversion).
_TIMESTAMP_SANITY = 10**12


@attrs.frozen
class Envelope:
    """The outer request: ``MerchantID``, ``RqHeader.Timestamp`` and the encrypted ``Data``."""

    merchant_id: str
    timestamp: float
    data: str


@attrs.frozen
class EnvelopeProblem:
    """Why an envelope is bad; ``merchant_id`` is echoed in the reply when it was a string.

    ``trans_code`` and ``trans_msg`` are ECPay's own answer when it is known [OBS]; otherwise
    the reply carries the settings' bad-envelope code and ``message``.
    """

    message: str
    merchant_id: str = ""
    trans_code: int | None = None
    trans_msg: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def read_envelope(body: bytes) -> Envelope | EnvelopeProblem:
    """Parse the outer request body (section 2); every defect is a problem, never a crash."""
    try:
        outer = _DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return EnvelopeProblem("request body is not JSON")
    if not isinstance(outer, dict):
        return EnvelopeProblem("request body is not a JSON object")
    merchant_id = outer.get("MerchantID")
    if not isinstance(merchant_id, str) or not merchant_id:
        return EnvelopeProblem("MerchantID is missing or not a string")
    header = outer.get("RqHeader")
    stamp = header.get("Timestamp") if isinstance(header, dict) else None
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return EnvelopeProblem("RqHeader.Timestamp is missing or not a number", merchant_id)
    if abs(stamp) > _TIMESTAMP_SANITY or not math.isfinite(stamp):
        code, text = STALE_TIMESTAMP
        return EnvelopeProblem("RqHeader.Timestamp is out of range (R20)", merchant_id, code, text)
    data = outer.get("Data")
    if not isinstance(data, str) or not data:
        return EnvelopeProblem("Data is missing or not a string", merchant_id)
    return Envelope(merchant_id, float(stamp), data)


def json_time(moment: dt.datetime) -> str:
    """``yyyy/MM/dd HH:mm:ss`` in Asia/Taipei: the JSON API's AuthTime and CloseData times."""
    return moment.astimezone(TAIPEI).strftime("%Y/%m/%d %H:%M:%S")


def aio_time(moment: dt.datetime) -> str:
    """The AIO API's localised time in Asia/Taipei, e.g. ``2016/5/12 下午 07:09:17``."""
    local = moment.astimezone(TAIPEI)
    half = "上午" if local.hour < 12 else "下午"
    hour = local.hour % 12 or 12
    return f"{local.year}/{local.month}/{local.day} {half} {hour:02d}:{local:%M:%S}"


def _english(status: GatewayStatus) -> str:
    # Undocumented statuses have no English spelling; the Chinese one is what a parser knows.
    return status.english if status.english is not None else status.chinese


def credit_detail_reply(view: OrderView, flavour: ReplyFlavour) -> dict[str, Any]:
    """CreditDetail/QueryTrade's inner reply for one order (section 4).

    JSON: ``{"RtnMsg": "", "RtnValue": {TradeID, Amount, ClsAmt, AuthTime, Status},
    "CloseData": {} | [rows]}`` with no ``RtnCode`` on success. AIO: lower-case keys and
    ``close_data`` (rows with ``sno``) inside ``RtnValue``, Chinese statuses, string numbers.
    """
    if flavour is ReplyFlavour.AIO:
        rows = [
            {
                "status": row.status.chinese,
                "sno": str(number),
                "amount": str(row.amount),
                "datetime": aio_time(row.at),
            }
            for number, row in enumerate(view.close_rows, start=1)
        ]
        return {
            "RtnMsg": "",
            "RtnValue": {
                "TradeID": str(view.trade_id),
                "amount": str(view.amount),
                "clsamt": str(view.closed_amount),
                "authtime": aio_time(view.authorized_at),
                "status": view.status.chinese,
                "close_data": rows,
            },
        }
    close: dict[str, Any] | list[dict[str, Any]] = {}
    if view.close_rows:
        close = [
            {"Status": _english(row.status), "Amount": row.amount, "DateTime": json_time(row.at)}
            for row in view.close_rows
        ]
    return {
        "RtnMsg": "",
        "RtnValue": {
            "TradeID": view.trade_id,
            "Amount": view.amount,
            "ClsAmt": view.closed_amount,
            "AuthTime": json_time(view.authorized_at),
            "Status": _english(view.status),
        },
        "CloseData": close,
    }


def query_trade_reply(
    view: OrderView,
    platform_id: str,
    *,
    message: str,
    keys_by_kind: bool,
    one_time_card_info: bool,
) -> dict[str, Any]:
    """Cashier/QueryTrade's inner reply (section 5): the order and how it was paid.

    Instalments show ``PaymentType`` ``Credit_CreditCard3`` and ``CardInfo.Stage`` 3 with the
    first (``Stast``) and each later (``Staed``) instalment, bonus points ``RedDan`` /
    ``RedDeAmt`` > 0, UnionPay ``PaymentType`` "UnionPay"; ``OrderInfo.RefundAmount`` is the total
    refunded so far. ``keys_by_kind`` leaves out the ``CardInfo`` keys that do not apply, as
    ECPay's records do [OBS]; without ``one_time_card_info`` a one-time order has no
    ``CardInfo`` (nor ``CoBrandingInfo``) at all, as ECPay's recorded one-time record [OBS].
    """
    kind = view.kind
    if kind is PaymentKind.INSTALLMENT:
        payment_type = f"Credit_CreditCard{_STAGES}"
    elif kind is PaymentKind.UNIONPAY:
        payment_type = "UnionPay"
    else:
        payment_type = "Credit"
    reply: dict[str, Any] = {
        "RtnCode": 1,
        "RtnMsg": message,
        "PlatformID": platform_id,
        "MerchantID": view.merchant_id,
        "CustomField": "",
        "OrderInfo": {
            "MerchantTradeNo": view.merchant_trade_no,
            "TradeNo": view.trade_no,
            "TradeAmt": view.amount,
            "TradeDate": json_time(view.authorized_at),
            "PaymentDate": json_time(view.authorized_at),
            "PaymentType": payment_type,
            "TradeStatus": "1",
            "RefundAmount": view.refunded_total,
        },
    }
    if kind is PaymentKind.ONE_TIME and not one_time_card_info:
        return reply
    card: dict[str, Any] = {
        "AuthCode": "777777",
        "Gwsr": view.trade_id,
        "ProcessDate": json_time(view.authorized_at),
        "Amount": view.amount,
        "Card6No": "431195",
        "Card4No": "2222",
    }
    if kind is PaymentKind.INSTALLMENT or not keys_by_kind:
        stages = _STAGES if kind is PaymentKind.INSTALLMENT else 0
        each = view.amount // stages if stages else 0
        first = view.amount - each * (stages - 1) if stages else 0  # the first takes the rest
        card |= {"Stage": stages, "Stast": first, "Staed": each}
    if kind is PaymentKind.BONUS or not keys_by_kind:
        redeemed = max(1, view.amount // 10) if kind is PaymentKind.BONUS else 0
        card |= {"RedDan": redeemed * 10, "RedDeAmt": redeemed, "RedOkAmt": view.amount - redeemed}
    reply["CardInfo"] = card
    # ECPay's records that carry a CardInfo also carry an (empty) CoBrandingInfo [OBS].
    reply["CoBrandingInfo"] = []
    return reply


def garble(codec: AesCodec, data: str) -> str:
    """A ``Data`` of the same length as ``data`` that is valid base64 but does not decrypt (R1).

    Flipping the high bit of the second-to-last block's last byte turns the padding byte into a
    value above 16, which no PKCS7 padding has; each candidate is verified with the codec.
    """
    cipher = bytearray(base64.b64decode(data))
    for position in range(len(cipher) - 17, -1, -1):
        for mask in (0x80, 0xFF, 0x01):
            candidate = bytearray(cipher)
            candidate[position] ^= mask
            text = binascii.b2a_base64(bytes(candidate), newline=False).decode("ascii")
            try:
                codec.decrypt(text)
            except CodecError:
                return text
    # A one-block message: fifteen bytes are valid base64 and never a whole AES block.
    return base64.b64encode(bytes(cipher[:15]) or b"\0" * 15).decode("ascii")


def other_number(number: object) -> str:
    """A different, still well-formed order number (for the MISMATCHED_REPLY fault, R2)."""
    text = number if isinstance(number, str) and number else "0"
    last = text[-1]
    swapped = str((int(last) + 1) % 10) if last.isdigit() else "B" if last == "A" else "A"
    return text[:-1] + swapped


def echo(value: object) -> str:
    """A request field echoed in a reply: strings as sent, anything else as ``""``."""
    return value if isinstance(value, str) else ""


def parse_aware_iso(value: object, field: str) -> dt.datetime:
    """An ISO 8601 date-time with a UTC offset, as ``serve``'s flags and the admin routes take
    it; anything else is :class:`InvalidArgument` naming ``field``."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be an ISO 8601 string with a UTC offset")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise InvalidArgument(f"{field} is not ISO 8601: {value!r}") from error
    if parsed.tzinfo is None:
        raise InvalidArgument(f"{field} needs a UTC offset, e.g. 2026-08-01T10:00:00+08:00")
    return parsed
