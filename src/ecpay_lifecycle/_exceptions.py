"""The one exception tree of ecpay-lifecycle.

Every error the library raises on purpose is an :class:`EcpayError`. Misuse errors also subclass
``ValueError`` or ``TypeError`` so that generic handlers keep working. Each error carries its
context (order number, rule number, RtnCode, RtnMsg, the raw reply) as attributes; none of them
ever carries a HashKey or HashIV.

::

    EcpayError
    ├── InvalidArgument (ValueError)          bad input: amounts, numbers, datetimes
    │   ├── InvalidAmount                     R19: not a positive whole TWD, or too large
    │   ├── ConfigurationError                wrong key length, DoAction against stage, ...
    │   └── NotCreditCardOrder                paid by ATM, CVS, ...: DoAction cannot apply
    ├── InvalidArgumentType (TypeError)       a value of the wrong type (bool or float amount, ...)
    │   └── SecretNotSerialisable             pickle or copy of Credentials: secrets stay put
    ├── RuleViolation                         the planner refuses; .rule, .retry_at
    │   └── RefundExceedsCaptured (InvalidAmount)   R10: more than is still captured
    ├── CodecError                            R1: Data cannot be decrypted or parsed
    ├── ProtocolError                         a reply that is not what ECPay's contract says
    │   ├── UnknownStatusError                R3: a status with no mapping
    │   └── ReplyMismatch                     R2: echoed IDs differ from the request
    ├── TransportError                        nothing took effect: safe to try again
    ├── RateLimited                           HTTP 403: wait 30 minutes, never retried
    ├── EnvelopeRejected                      TransCode != 1: ECPay did not process the request
    │   ├── WrongCredentials                  TransCode 110: Data did not decrypt (HashKey/HashIV)
    │   ├── ClockOutOfSync                    TransCode 104: Timestamp over 10 minutes off (R20)
    │   └── ServiceNotEnabled                 TransCode 115: the merchant lacks this service
    ├── GatewayRefused                        RtnCode != 1: ECPay processed and refused
    ├── OutcomeUnknown                        a DoAction was sent and its result is not known yet
    ├── OrderLocked                           an earlier step is unresolved; reconcile() first
    ├── PlanInterrupted                       R4: after a done step the order shows otherwise
    ├── OrderChanged                          R23: another key acted on the order since the plan
    ├── OperationInProgress                   R23: another caller runs this idempotency key now
    ├── OwnershipLost                         R23: another worker took this operation over
    └── JournalError                          the journal cannot record: nothing was sent
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ClockOutOfSync",
    "CodecError",
    "ConfigurationError",
    "EcpayError",
    "EnvelopeRejected",
    "GatewayRefused",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidArgumentType",
    "JournalError",
    "NotCreditCardOrder",
    "OperationInProgress",
    "OrderChanged",
    "OrderLocked",
    "OutcomeUnknown",
    "OwnershipLost",
    "PlanInterrupted",
    "ProtocolError",
    "RateLimited",
    "RefundExceedsCaptured",
    "ReplyMismatch",
    "RuleViolation",
    "SecretNotSerialisable",
    "ServiceNotEnabled",
    "TransportError",
    "UnknownStatusError",
    "WrongCredentials",
    "error_token",
]

_TOKEN = re.compile(r"\b(error_[A-Za-z0-9_]+)")


def error_token(message: str | None) -> str | None:
    """Return the ``error_xxx`` token ECPay puts in a message, e.g. ``更新失敗.(error_amount_R)``.

    For diagnostics only: control flow never depends on message text alone (docs/ecpay-api.md
    section 3).
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


class NotCreditCardOrder(InvalidArgument):
    """Cashier/QueryTrade says the order was not paid by credit card. Nothing was sent.

    DoAction captures, refunds and abandons credit-card authorizations only; an ATM, CVS,
    BARCODE (...) order is refunded by hand in ECPay's back office. ``payment_type`` is ECPay's
    ``OrderInfo.PaymentType`` as received and ``raw`` the decrypted reply (docs/ecpay-api.md
    section 5).
    """

    def __init__(
        self,
        message: str,
        *,
        payment_type: str,
        merchant_trade_no: str | None = None,
        raw: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.payment_type = payment_type
        self.raw = raw


class InvalidArgumentType(EcpayError, TypeError):
    """The caller passed a value of the wrong type (a bool or float amount, a str datetime, ...)."""


class SecretNotSerialisable(InvalidArgumentType):
    """``pickle`` or ``copy`` of something that holds a HashKey or HashIV (:class:`Credentials`,
    :class:`AesCodec`, a client). A pickle would carry the secrets in the clear to wherever it
    goes; build :class:`Credentials` from the environment in each process instead."""


class RuleViolation(EcpayError):
    """The planner refuses an action because an ECPay rule forbids it now or forever.

    ``rule`` is the rule's number in docs/ecpay-api.md section 7 (``"R11"``), the message is one
    sentence a shop's support person understands, and ``retry_at`` is the aware datetime from
    which the action may succeed, or ``None`` when waiting does not help.
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
    nothing), or a lost DoAction reply was proved not applied by a query (docs/ecpay-api.md
    section 9).
    """


class RateLimited(EcpayError):
    """HTTP 403: calls came too fast. ECPay asks to wait 30 minutes; never retried.

    The client remembers it: until ``retry_at`` (the 403 plus the client's ``rate_limit_pause``,
    30 minutes by default) it refuses every call to ECPay with this error before anything is
    sent, rather than sending into another 403.
    """

    retry_after_seconds = 30 * 60

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        retry_at: _dt.datetime | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.retry_at = retry_at


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


class WrongCredentials(EnvelopeRejected):
    """TransCode 110: ECPay could not decrypt ``Data``: the HashKey or HashIV is wrong.

    Nothing was processed. Check the merchant's HashKey and HashIV (and which merchant ID they
    belong to) in ECPay's back office.
    """


class ClockOutOfSync(EnvelopeRejected):
    """TransCode 104: the request's Timestamp is more than 10 minutes from ECPay's clock (R20).

    Nothing was processed. ``skew_seconds`` is the offset measured from the reply's
    ``RpHeader.Timestamp`` (local minus ECPay), when the reply carried one; fix the host's clock.
    """

    skew_seconds: float | None = None


class ServiceNotEnabled(EnvelopeRejected):
    """TransCode 115: the merchant account does not have this ECPay service enabled.

    Nothing was processed. Ask ECPay to enable the credit-card DoAction/query service.
    """


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
    """A DoAction was sent and whether it took effect is not established yet (R22).

    The order takes no new money movement until the attempt is resolved
    (docs/ecpay-api.md section 9). ``retry_at`` is when it can be resolved (the fence: the request's
    Timestamp + 600 s + margin, and after the next batch where the step's effect may only show
    then); ``None`` when a query can never tell and a person must declare the verdict.
    ``idempotency_key`` is the operation's journal key (the caller's key, or the generated one a
    ``reconcile(declare=...)`` names). ``step`` is the step and ``observed`` the last snapshot seen,
    if any.
    """

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        step: object = None,
        observed: object = None,
        retry_at: _dt.datetime | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.step = step
        self.observed = observed
        self.retry_at = retry_at
        self.idempotency_key = idempotency_key


class OrderLocked(EcpayError):
    """The order has a step of unknown outcome; no new money movement until it is resolved.

    ``retry_at`` is when ``reconcile()`` can resolve it by a query (R22), if known;
    ``idempotency_key`` the journal key of the operation that holds the unresolved step.
    """

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        retry_at: _dt.datetime | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.retry_at = retry_at
        self.idempotency_key = idempotency_key


class PlanInterrupted(EcpayError):
    """A step of a plan was done, but the fresh query before the next step (R4) plans otherwise.

    The rest of the plan was not sent: a query one write behind, or a batch that ran meanwhile,
    would make it wrong. Nothing is unknown; the same idempotency key, asked again later,
    continues from a fresh query. ``observed`` is what the query showed.
    """

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        observed: object = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.observed = observed
        self.idempotency_key = idempotency_key


class OrderChanged(EcpayError):
    """R23 across the keys of one order: another operation recorded a step on this order after
    this call's plan was made and before its DoAction left, so the plan may follow from a view
    that step made stale.

    Possible only when the store lost the order's lock under a worker that still ran (a
    PostgreSQL session that ended, a lapsed ``PostgresLeaseLocks`` lease). Nothing was sent: the
    attempt is recorded not done. Ask again with the same idempotency key; it plans from a
    fresh query. ``idempotency_key`` is the key of the operation that acted.
    """

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.idempotency_key = idempotency_key


class OperationInProgress(EcpayError):
    """R23: another caller owns this idempotency key's operation and is running it now.

    Nothing was sent by this call. Ask again later: after ``retry_at`` (when the owner's lease
    lapses, if it died) the same key replays the outcome, continues, or is taken over.
    """

    def __init__(
        self,
        message: str,
        *,
        merchant_trade_no: str | None = None,
        retry_at: _dt.datetime | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, merchant_trade_no=merchant_trade_no)
        self.retry_at = retry_at
        self.idempotency_key = idempotency_key


class OwnershipLost(EcpayError):
    """R23: a journal write was refused because the record changed since this worker read it.

    Another worker took the operation over (this worker's lease lapsed) or resolved it. This
    worker sends nothing more for it; the same idempotency key, asked again, reports the truth.
    """


class JournalError(EcpayError):
    """The journal could not read or durably write a record (a file that is not a database, a
    schema from a newer version, a full disk, a database that refuses the connection or drops
    it); the message says what to do. A DoAction whose attempt could not be recorded is never
    sent. When the record of what *came back* cannot be written, the client raises
    :class:`OutcomeUnknown` instead (caused by this error): the attempt stays open in the
    journal and is resolved by R22 like a lost reply."""
