"""The one exception tree of ecpay-lifecycle.

Every error the library raises on purpose is an :class:`EcpayError`. Misuse errors also subclass
``ValueError`` or ``TypeError`` so that generic handlers keep working. Each error carries its
context (order number, rule number, RtnCode, RtnMsg, the raw reply) as attributes; none of them
ever carries a HashKey or HashIV.

::

    EcpayError
    ├── InvalidArgument (ValueError)          bad input: amounts, numbers, datetimes
    │   ├── InvalidAmount                     R19: not a positive whole TWD, or too large
    │   └── ConfigurationError                wrong key length, DoAction against stage, ...
    ├── InvalidArgumentType (TypeError)       a value of the wrong type (bool or float amount, ...)
    ├── RuleViolation                         the planner refuses; .rule, .retry_at
    │   └── RefundExceedsCaptured (InvalidAmount)   R10: more than is still captured
    ├── CodecError                            R1: Data cannot be decrypted or parsed
    ├── ProtocolError                         a reply that is not what ECPay's contract says
    │   ├── UnknownStatusError                R3: a status with no mapping
    │   └── ReplyMismatch                     R2: echoed IDs differ from the request
    ├── TransportError                        nothing took effect: safe to try again
    ├── RateLimited                           HTTP 403: wait 30 minutes, never retried
    ├── EnvelopeRejected                      TransCode != 1: ECPay did not process the request
    ├── GatewayRefused                        RtnCode != 1: ECPay processed and refused
    ├── OutcomeUnknown                        a DoAction was sent and its result is not known
    └── OrderLocked                           an earlier step is unresolved; reconcile() first
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CodecError",
    "ConfigurationError",
    "EcpayError",
    "EnvelopeRejected",
    "GatewayRefused",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidArgumentType",
    "OrderLocked",
    "OutcomeUnknown",
    "ProtocolError",
    "RateLimited",
    "RefundExceedsCaptured",
    "ReplyMismatch",
    "RuleViolation",
    "TransportError",
    "UnknownStatusError",
    "error_token",
]

_TOKEN = re.compile(r"\b(error_[A-Za-z0-9_]+)")


def error_token(message: str | None) -> str | None:
    """Return the ``error_xxx`` token ECPay puts in a message, e.g. ``更新失敗.(error_amount_R)``.

    For diagnostics only: control flow never depends on message text alone (spec section 3).
    """
    if not message:
        return None
    found = _TOKEN.search(message)
    return found.group(1) if found else None


class EcpayError(Exception):
    """Root of every error ecpay-lifecycle raises on purpose.

    ``merchant_trade_no`` names the order when the error concerns one.
    """

    def __init__(self, message: str, *, merchant_trade_no: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.merchant_trade_no = merchant_trade_no

    def __str__(self) -> str:
        if self.merchant_trade_no:
            return f"{self.message} (order {self.merchant_trade_no})"
        return self.message


class InvalidArgument(EcpayError, ValueError):
    """The caller passed a value the library cannot accept. Nothing was sent."""


class InvalidAmount(InvalidArgument):
    """An amount that is not a positive whole TWD or exceeds what the order allows (R19)."""


class ConfigurationError(InvalidArgument):
    """Wrong configuration: a HashKey/HashIV that is not 16 bytes, DoAction on stage, ..."""


class InvalidArgumentType(EcpayError, TypeError):
    """The caller passed a value of the wrong type (a bool or float amount, a str datetime, ...)."""


class RuleViolation(EcpayError):
    """The planner refuses an action because an ECPay rule forbids it now or forever.

    ``rule`` is the spec's rule number (``"R11"``), the message is one sentence a shop's support
    person understands, and ``retry_at`` is the aware datetime from which the action may succeed,
    or ``None`` when waiting does not help.
    """

    def __init__(
        self,
        rule: str,
        message: str,
        *,
        retry_at: _dt.datetime | None = None,
        merchant_trade_no: str | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.rule = rule
        self.retry_at = retry_at

    def __str__(self) -> str:
        text = f"{self.rule}: {super().__str__()}"
        if self.retry_at is not None:
            text += f"; possible from {self.retry_at.isoformat()}"
        return text


class RefundExceedsCaptured(RuleViolation, InvalidAmount):
    """R10: a refund larger than what is still captured. Both a rule refusal and a bad amount."""

    def __init__(
        self, message: str, *, refundable: int, merchant_trade_no: str | None = None
    ) -> None:
        RuleViolation.__init__(self, "R10", message, merchant_trade_no=merchant_trade_no)
        self.refundable = refundable


class CodecError(EcpayError):
    """R1: ``Data`` could not be encrypted, decrypted or parsed (wrong key, tampering, garbage)."""


class ProtocolError(EcpayError):
    """A reply that does not follow ECPay's contract. ``raw`` holds what was received."""

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        raw: Mapping[str, Any] | str | bytes | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.raw = raw


class UnknownStatusError(ProtocolError):
    """R3: a gateway status that maps to no lifecycle state. ``status`` is the text received."""

    def __init__(
        self,
        status: str,
        *,
        merchant_trade_no: str | None = None,
        raw: Mapping[str, Any] | str | bytes | None = None,
    ) -> None:
        super().__init__(
            f"unknown gateway status {status!r}: not in ECPay's documented vocabulary (R3)",
            merchant_trade_no=merchant_trade_no,
            raw=raw,
        )
        self.status = status


class ReplyMismatch(ProtocolError):
    """R2: the reply's echoed MerchantID, MerchantTradeNo or TradeNo differ from the request."""


class TransportError(EcpayError):
    """A request failed and nothing took effect, so trying again is safe.

    Either ECPay never saw it (DNS, connect refused, connect timeout), it was a query (which moves
    nothing), or a lost DoAction reply was proved not applied by a query (spec section 9).
    """


class RateLimited(EcpayError):
    """HTTP 403: calls came too fast. ECPay asks to wait 30 minutes; never retried."""

    retry_after_seconds = 30 * 60


class EnvelopeRejected(EcpayError):
    """TransCode != 1: ECPay did not process the request (bad envelope, stale Timestamp, ...)."""

    def __init__(
        self,
        message: str,
        *,
        trans_code: object,
        trans_msg: str = "",
        merchant_trade_no: str | None = None,
        raw: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.trans_code = trans_code
        self.trans_msg = trans_msg
        self.raw = raw


class GatewayRefused(EcpayError):
    """ECPay processed the request and refused it (RtnCode != 1, or a QueryTrade error message).

    ``rtn_code`` and ``rtn_msg`` are ECPay's raw values; ``token`` is the ``error_xxx`` token
    found in the message (for diagnostics), ``raw`` the decrypted reply.
    """

    def __init__(
        self,
        message: str,
        *,
        rtn_code: object,
        rtn_msg: str,
        merchant_trade_no: str | None = None,
        raw: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.rtn_code = rtn_code
        self.rtn_msg = rtn_msg
        self.token = error_token(rtn_msg)
        self.raw = raw


class OutcomeUnknown(EcpayError):
    """A DoAction was sent and whether it took effect could not be established (spec section 9).

    The order is locked for money movement until ``reconcile()`` resolves it. ``step`` is the
    step whose outcome is unknown and ``observed`` the last snapshot seen, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        step: object = None,
        observed: object = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.step = step
        self.observed = observed


class OrderLocked(EcpayError):
    """The order has a step of unknown outcome; no new money movement until reconciled."""
