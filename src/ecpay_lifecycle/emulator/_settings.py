"""The emulator's settings: every behaviour ECPay does not document is a named field here.

The contract (docs/ecpay-api.md section 10; every "section N" here is one of that document)
marks what ECPay is silent about as [HOUSE]; each such choice is one field of
:class:`EmulatorSettings` with the project's default, so a user who learns that ECPay behaves
otherwise can change the emulator instead of forking it. Where ECPay was seen to answer in more
than one way [OBS] (HTTP 500 on some hosts, numeric IDs), the variant is a field too. Documented
numbers (the 20:15 batch, 21/80/90 days, the 10-minute Timestamp window) are fields too, so tests
can shrink or move them.
"""

from __future__ import annotations

import datetime as dt
import enum
import types
from collections.abc import Mapping
from typing import Any

import attrs

from ecpay_lifecycle._exceptions import InvalidArgument, InvalidArgumentType
from ecpay_lifecycle._models import Action, GatewayStatus

__all__ = [
    "DEFAULT_REFUSALS",
    "EmulatorSettings",
    "Refusal",
    "RefusalReply",
    "ReplyFlavour",
    "UrlEncoding",
]


class Refusal(enum.StrEnum):
    """Why the emulator refused a request it could decrypt (``RtnCode != 1``).

    Each member names the rule it enforces; :attr:`EmulatorSettings.refusals` maps it to the
    RtnCode and RtnMsg the emulator answers with.
    """

    #: The inner ``MerchantID`` is missing or empty (section 1: ECPay answers ``5000220``).
    MERCHANT_ID_MISSING = "merchant_id_missing"
    #: The inner ``MerchantID`` is not the envelope's (nor, with ``PlatformID``, one of that
    #: platform's merchants) (section 1: ECPay answers ``5000261``).
    MERCHANT_ID_MISMATCH = "merchant_id_mismatch"
    #: A required field is missing or malformed (not a string, Action not C/R/E/N) (R19).
    BAD_PARAMETER = "bad_parameter"
    #: ``TotalAmount`` is not a positive whole number, or is above the order amount (R19).
    BAD_AMOUNT = "bad_amount"
    #: No such order for this merchant, or TradeNo does not match (section 4: 10000185).
    ORDER_NOT_FOUND = "order_not_found"
    #: DoAction inside [20:15, 20:30) Asia/Taipei for a merchant with auto-close on (R5).
    BATCH_WINDOW = "batch_window"
    #: C more than 21 days after authorization with auto-close off (R6).
    OVER_DATE = "over_date"
    #: C, E or N on a UnionPay order (R8).
    UNIONPAY = "unionpay"
    #: The action does not apply to the order's status (R9: e.g. N on a pending capture).
    WRONG_STATE = "wrong_state"
    #: R on an order with nothing captured, Authorized or Operation canceled (R18): like a full
    #: R during a pending capture, ECPay answers ``error_amount_R`` [OBS].
    NOT_CAPTURED = "not_captured"
    #: N on an order already abandoned (Canceled, by N or after day 90): ECPay answers
    #: ``error_nopay`` [OBS] (R14).
    ALREADY_ABANDONED = "already_abandoned"
    #: R for more than is still captured (R10).
    OVER_CAPTURED = "over_captured"
    #: A partial R on an instalment order (R11).
    INSTALLMENT_FULL_ONLY = "installment_full_only"
    #: A partial R on a bonus-point order (R12).
    BONUS_FULL_ONLY = "bonus_full_only"
    #: R for everything during a pending capture: that is E then N (R13).
    FULL_REFUND_PENDING_CAPTURE = "full_refund_pending_capture"
    #: An action of :attr:`EmulatorSettings.full_amount_actions` (C and E by default; N too when
    #: strict, R14) whose ``TotalAmount`` is not the order amount ([HOUSE]).
    AMOUNT_NOT_ORDER_AMOUNT = "amount_not_order_amount"
    #: R after settlement larger than the merchant's ECPay balance (R16).
    INSUFFICIENT_BALANCE = "insufficient_balance"
    #: A second R while one is pending, when :attr:`EmulatorSettings.stack_pending_refunds` is off.
    REFUND_PENDING = "refund_pending"


@attrs.frozen
class RefusalReply:
    """The ``RtnCode`` (never 1) and ``RtnMsg`` the emulator answers a :class:`Refusal` with."""

    rtn_code: int = attrs.field()
    rtn_msg: str = attrs.field(validator=attrs.validators.instance_of(str))

    @rtn_code.validator
    def _check_code(self, _attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentType(f"rtn_code must be an int, not {type(value).__name__}")
        if value == 1:
            raise InvalidArgument("rtn_code 1 means success; a refusal needs another code")


#: The default refusal replies. Where ECPay was seen to answer a situation [OBS] the reply is
#: ECPay's: ``10000185`` for an unknown order, ``5000220`` / ``5000261`` for a missing or
#: mismatched inner MerchantID, ``10000002 更新失敗.(error_amount_R)`` for R on an order whose
#: capture has not settled (nothing captured, or all of a pending capture), ``10100027`` for a
#: refund the balance cannot cover, the token ``error_nopay`` for N on an abandoned order. The
#: rest are [HOUSE]: invented codes in one range (``103000xx``) with messages in ECPay's
#: ``更新失敗.(error_xxx)`` shape; ``docs/emulator.md`` lists which is which. A client may rely
#: only on ``RtnCode != 1``.
DEFAULT_REFUSALS: Mapping[Refusal, RefusalReply] = types.MappingProxyType(
    {
        Refusal.MERCHANT_ID_MISSING: RefusalReply(
            5000220, "The parameter [MerchantID] is required."
        ),
        Refusal.MERCHANT_ID_MISMATCH: RefusalReply(
            5000261, "The parameter [MerchantID] does not match."
        ),
        Refusal.BAD_PARAMETER: RefusalReply(10300001, "參數錯誤.(error_parameter)"),
        Refusal.BAD_AMOUNT: RefusalReply(10300002, "更新失敗.(error_amount)"),
        Refusal.ORDER_NOT_FOUND: RefusalReply(10000185, "Cant not find the trade data"),
        Refusal.BATCH_WINDOW: RefusalReply(10300003, "關帳作業中,請於20:30後再試.(error_closing)"),
        Refusal.OVER_DATE: RefusalReply(10300004, "更新失敗.(error_overDate)"),
        Refusal.UNIONPAY: RefusalReply(10300005, "銀聯卡交易不支援此操作.(error_unionpay)"),
        Refusal.WRONG_STATE: RefusalReply(10300006, "更新失敗.(error_status)"),
        Refusal.NOT_CAPTURED: RefusalReply(10000002, "更新失敗.(error_amount_R)"),
        Refusal.ALREADY_ABANDONED: RefusalReply(10000002, "更新失敗.(error_nopay)"),
        Refusal.OVER_CAPTURED: RefusalReply(10300007, "更新失敗.(error_amount_over)"),
        Refusal.INSTALLMENT_FULL_ONLY: RefusalReply(10300008, "分期交易須全額退刷.(error_stage)"),
        Refusal.BONUS_FULL_ONLY: RefusalReply(10300009, "紅利折抵交易須全額退刷.(error_redeem)"),
        Refusal.FULL_REFUND_PENDING_CAPTURE: RefusalReply(10000002, "更新失敗.(error_amount_R)"),
        Refusal.AMOUNT_NOT_ORDER_AMOUNT: RefusalReply(10300011, "更新失敗.(error_amount)"),
        Refusal.INSUFFICIENT_BALANCE: RefusalReply(10100027, "帳戶餘額不足.(error_balance)"),
        Refusal.REFUND_PENDING: RefusalReply(10300013, "更新失敗.(error_refund_pending)"),
    }
)


class ReplyFlavour(enum.StrEnum):
    """Which of ECPay's two CreditDetail reply shapes the emulator answers with (section 4)."""

    #: The JSON API: PascalCase, English statuses, int numbers, ``CloseData`` beside ``RtnValue``.
    JSON = "json"
    #: The older form API: lower-case keys, Chinese statuses, string numbers, ``close_data``
    #: with ``sno`` inside ``RtnValue``, times like ``2016/5/12 下午 07:09:17``.
    AIO = "aio"


class UrlEncoding(enum.StrEnum):
    """How the emulator URL-encodes reply data before encrypting it (section 2.1, R1).

    Either decodes with the library's codec (and any decoder that follows R1).
    """

    #: .NET's ``HttpUtility.UrlEncode``: lower-case hex, ``!*()`` left as they are, space as
    #: ``+``. What ECPay's servers send [OBS].
    DOTNET = "dotnet"
    #: PHP's ``urlencode``: upper-case hex, everything but ``A-Z a-z 0-9 - _ .`` escaped. What
    #: ECPay's documented examples (and the library's requests) use [DOC].
    PHP = "php"


def _refusals(value: Mapping[Refusal, RefusalReply | tuple[int, str]]) -> Mapping[Refusal, Any]:
    """Overlay the caller's refusal replies on the defaults; ``(code, message)`` pairs allowed."""
    if not isinstance(value, Mapping):
        raise InvalidArgumentType(f"refusals must be a mapping, not {type(value).__name__}")
    merged: dict[Refusal, RefusalReply] = dict(DEFAULT_REFUSALS)
    for key, given in value.items():
        if not isinstance(key, Refusal):
            raise InvalidArgumentType(f"refusals keys must be Refusal members, not {key!r}")
        reply = RefusalReply(*given) if isinstance(given, tuple) and len(given) == 2 else given
        if not isinstance(reply, RefusalReply):
            raise InvalidArgumentType(f"refusals[{key}] must be a RefusalReply, not {reply!r}")
        merged[key] = reply
    return types.MappingProxyType(merged)


def _positive_delta(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dt.timedelta):
        raise InvalidArgumentType(f"{attribute.name} must be a timedelta")
    if value <= dt.timedelta(0):
        raise InvalidArgument(f"{attribute.name} must be positive, got {value}")


def _non_negative_delta(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dt.timedelta):
        raise InvalidArgumentType(f"{attribute.name} must be a timedelta")
    if value < dt.timedelta(0):
        raise InvalidArgument(f"{attribute.name} must be >= 0, got {value}")


def _wall_time(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dt.time) or value.tzinfo is not None:
        raise InvalidArgumentType(f"{attribute.name} must be a naive datetime.time (Taipei)")


def _actions(value: object) -> frozenset[Action]:
    if not isinstance(value, set | frozenset | tuple | list):
        raise InvalidArgumentType("full_amount_actions must be a set of Action members")
    if not all(isinstance(item, Action) for item in value):
        raise InvalidArgumentType("full_amount_actions must hold Action members only")
    return frozenset(value)


_UNIONPAY_STARTS = (GatewayStatus.CAPTURED, GatewayStatus.TO_BE_CAPTURED)


def _unionpay_start(_inst: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _UNIONPAY_STARTS:
        raise InvalidArgument(
            f"unionpay_start_status must be CAPTURED or TO_BE_CAPTURED, got {value!r}"
        )


def _bool(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentType(f"{attribute.name} must be a bool, not {type(value).__name__}")


def _int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{attribute.name} must be an int, not {type(value).__name__}")


def _http_status(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _int(inst, attribute, value)
    assert isinstance(value, int)
    if value != 200 and not 500 <= value <= 599:
        raise InvalidArgument(f"{attribute.name} must be 200 or a 5xx status, got {value}")


@attrs.frozen(kw_only=True)
class EmulatorSettings:
    """How the emulator behaves where ECPay is silent ([HOUSE]) or where tests want to move a rule.

    Every field has the project's default; change one with ``attrs.evolve(settings, ...)`` or by
    passing it to the constructor. Instances are immutable and safe to share.

    Attributes:
        refusals: ``Refusal -> RefusalReply``: the RtnCode and RtnMsg answered for each refused
            action. A partial mapping is laid over :data:`DEFAULT_REFUSALS`, whose replies are
            ECPay's where ECPay was seen [OBS] and invented otherwise [HOUSE].
        bad_envelope_trans_code: [HOUSE] the ``TransCode`` of a reply to a bad envelope whose
            code ECPay was not seen to answer (not JSON, missing fields, unknown MerchantID,
            PlatformID mismatch). ECPay documents only that it is not 1. Default 999. A
            ``Data`` that does not decrypt always answers 110 and a Timestamp outside
            ``timestamp_tolerance`` 104, as ECPay does [OBS].
        envelope_error_http_status: the HTTP status of a reply whose TransCode is not 1 (a bad
            envelope, ``Fault.TRANS_CODE_ERROR``). 200 (default) as ECPay documents and as its
            stage host answers; 500 as some ECPay hosts answer [OBS] (section 2).
        refusal_http_status: the HTTP status of a reply with TransCode 1 and ``RtnCode != 1``
            (a refused request). 200 (default), or 500 as some ECPay hosts answer [OBS].
        success_message: DoAction's ``RtnMsg`` on success. Default ``"Succeeded."``, as ECPay
            answered an accepted N [OBS] (its page shows ``"Success"``); a client must not read
            it (section 2).
        cashier_success_message: Cashier/QueryTrade's ``RtnMsg`` on success: ``"Success!"`` as
            recorded [OBS]. CreditDetail's is always ``""`` (section 4).
        reply_url_encoding: how reply data is URL-encoded before encryption (R1): ECPay's
            servers use .NET's lower-case hex (``UrlEncoding.DOTNET``, default) [OBS]; the
            documented examples PHP's upper-case (``UrlEncoding.PHP``).
        numeric_merchant_ids: answer ``MerchantID`` (outer and inner) and a non-empty
            ``PlatformID`` as JSON numbers, as some ECPay replies do [OBS]. Default False:
            strings, as documented.
        string_trans_code: answer ``TransCode`` as a string (``"1"``), as some ECPay replies do
            [OBS]. Default False: an int, as documented.
        cashier_keys_by_kind: Cashier/QueryTrade's ``CardInfo`` carries only the keys that
            apply, as ECPay's records do [OBS] (section 5): instalments ``Stage``/``Stast``
            /``Staed``, bonus points the ``Red*`` keys, others neither. Default True. False:
            every key on every order, zero where unused (the shape of ECPay's field list).
        cashier_one_time_card_info: whether a one-time order's Cashier/QueryTrade record has a
            ``CardInfo`` at all. Default False, as ECPay's recorded one-time record [OBS].
        stack_pending_refunds: [HOUSE] whether a second R is accepted while an earlier one waits
            for the batch; they add up. Off: the second R is refused with
            :attr:`Refusal.REFUND_PENDING`. Default True.
        refund_lowers_closed_amount_at_once: [HOUSE] whether ``ClsAmt`` drops as soon as R is
            accepted (default) or only when the batch settles it (section 4).
        close_limit: R6: with auto-close off, C is refused (``error_overDate``) from
            ``authorized_at + close_limit`` on. [HOUSE] measured from the authorization time, not
            the calendar day. Default 21 days.
        notice_after: R7: with auto-close off, the unclosed-order notice is logged this long after
            authorization. Default 80 days.
        abandon_after: R7: with auto-close off, an order still Authorized after this long is
            abandoned (Canceled, nothing captured). Default 90 days.
        full_amount_actions: the actions whose ``TotalAmount`` must equal the order amount.
            [HOUSE] for C and E, where ECPay is silent. Default C and E: N accepts any amount up
            to the order amount and abandons the whole authorization, as ECPay does [OBS] (R14);
            add N for the strict refusal. An action left out accepts any amount up to the order
            amount; C then closes that amount.
        unionpay_start_status: R8 [HOUSE]: the status a UnionPay order has at authorization.
            ``CAPTURED`` (default): closed and settled at once, with one Captured close row.
            ``TO_BE_CAPTURED``: closed at once but settled by the next batch; the library's
            model cannot represent that, so :meth:`Emulator.snapshot` refuses such an order.
        batch_time: R5 [DOC]: the daily batch's wall time in Asia/Taipei (20:15).
        batch_window_end: R5 [DOC]: DoAction is refused from ``batch_time`` until this time
            (20:30) for merchants with auto-close on.
        batch_closes_authorized: [HOUSE] with auto-close on, the batch first closes (C) every
            Authorized order (including ``Operation canceled``) and then settles. Default True.
            The batch runs for every merchant and settles every pending close either way.
        cancel_restores_pending_refund: [HOUSE] R15's target for E on a pending refund: the
            order goes back to Captured with the pending refunds undone (default). Off: E is only
            for pending captures and is refused on a pending refund.
        credit_settlements: [HOUSE] the merchant's balance grows by what each batch settles.
        debit_refunds: [HOUSE] the balance shrinks by each R accepted after settlement (and E on
            a pending refund gives it back). R16's check runs either way.
        credit_detail_flavour: [HOUSE] CreditDetail replies as JSON (default) or AIO (section 4).
        timestamp_tolerance: R20 [DOC]: a request Timestamp more than this far from the
            emulator's clock, either way, is a bad envelope (TransCode 104), and a late-landing
            DoAction (``Fault.LATE_APPLY``) whose Timestamp is older than this when it lands is
            refused. Default 10 minutes.
        credit_detail_lag: [HOUSE] CreditDetail answers from the order as it was this long ago
            in emulator time (section 9: a query "served from data ... behind"): the latest view
            whose change time is at most ``now - lag``, or the oldest kept view. Default 0: the
            current state.
    """

    refusals: Mapping[Refusal, RefusalReply] = attrs.field(
        factory=dict, converter=_refusals, repr=False, hash=False
    )
    bad_envelope_trans_code: int = attrs.field(default=999, validator=_int)
    envelope_error_http_status: int = attrs.field(default=200, validator=_http_status)
    refusal_http_status: int = attrs.field(default=200, validator=_http_status)
    success_message: str = attrs.field(
        default="Succeeded.", validator=attrs.validators.instance_of(str)
    )
    cashier_success_message: str = attrs.field(
        default="Success!", validator=attrs.validators.instance_of(str)
    )
    reply_url_encoding: UrlEncoding = attrs.field(
        default=UrlEncoding.DOTNET, validator=attrs.validators.instance_of(UrlEncoding)
    )
    numeric_merchant_ids: bool = attrs.field(default=False, validator=_bool)
    string_trans_code: bool = attrs.field(default=False, validator=_bool)
    cashier_keys_by_kind: bool = attrs.field(default=True, validator=_bool)
    cashier_one_time_card_info: bool = attrs.field(default=False, validator=_bool)
    stack_pending_refunds: bool = attrs.field(default=True, validator=_bool)
    refund_lowers_closed_amount_at_once: bool = attrs.field(default=True, validator=_bool)
    close_limit: dt.timedelta = attrs.field(
        default=dt.timedelta(days=21), validator=_positive_delta
    )
    notice_after: dt.timedelta = attrs.field(
        default=dt.timedelta(days=80), validator=_positive_delta
    )
    abandon_after: dt.timedelta = attrs.field(
        default=dt.timedelta(days=90), validator=_positive_delta
    )
    full_amount_actions: frozenset[Action] = attrs.field(
        default=frozenset({Action.CLOSE, Action.CANCEL}), converter=_actions
    )
    unionpay_start_status: GatewayStatus = attrs.field(
        default=GatewayStatus.CAPTURED, validator=_unionpay_start
    )
    batch_time: dt.time = attrs.field(default=dt.time(20, 15), validator=_wall_time)
    batch_window_end: dt.time = attrs.field(default=dt.time(20, 30), validator=_wall_time)
    batch_closes_authorized: bool = attrs.field(default=True, validator=_bool)
    cancel_restores_pending_refund: bool = attrs.field(default=True, validator=_bool)
    credit_settlements: bool = attrs.field(default=True, validator=_bool)
    debit_refunds: bool = attrs.field(default=True, validator=_bool)
    credit_detail_flavour: ReplyFlavour = attrs.field(
        default=ReplyFlavour.JSON, validator=attrs.validators.instance_of(ReplyFlavour)
    )
    timestamp_tolerance: dt.timedelta = attrs.field(
        default=dt.timedelta(minutes=10), validator=_positive_delta
    )
    credit_detail_lag: dt.timedelta = attrs.field(
        default=dt.timedelta(0), validator=_non_negative_delta
    )

    def __attrs_post_init__(self) -> None:
        if self.batch_window_end <= self.batch_time:
            raise InvalidArgument("batch_window_end must be after batch_time on the same day")

    def refusal(self, reason: Refusal) -> RefusalReply:
        """The reply for ``reason`` (always present: the defaults fill any gap)."""
        return self.refusals[reason]
