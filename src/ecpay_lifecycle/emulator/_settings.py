"""The emulator's settings: every behaviour ECPay does not document is a named field here.

The spec (section 10) marks what ECPay is silent about as [HOUSE]; each such choice is one field
of :class:`EmulatorSettings` with the project's default, so a user who learns that ECPay behaves
otherwise can change the emulator instead of forking it. Documented numbers (the 20:15 batch,
21/80/90 days, the 10-minute Timestamp window) are fields too, so tests can shrink or move them.
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
]


class Refusal(enum.StrEnum):
    """Why the emulator refused a request it could decrypt (``RtnCode != 1``).

    Each member names the rule it enforces; :attr:`EmulatorSettings.refusals` maps it to the
    RtnCode and RtnMsg the emulator answers with.
    """

    #: A required field is missing or malformed (not a string, Action not C/R/E/N) (R19).
    BAD_PARAMETER = "bad_parameter"
    #: ``TotalAmount`` is not a positive whole number, or is above the order amount (R19).
    BAD_AMOUNT = "bad_amount"
    #: No such order for this merchant, or TradeNo does not match (spec section 4: 10000185).
    ORDER_NOT_FOUND = "order_not_found"
    #: DoAction inside [20:15, 20:30) Asia/Taipei for a merchant with auto-close on (R5).
    BATCH_WINDOW = "batch_window"
    #: C more than 21 days after authorization with auto-close off (R6).
    OVER_DATE = "over_date"
    #: C, E or N on a UnionPay order (R8).
    UNIONPAY = "unionpay"
    #: The action does not apply to the order's status (R9, R18: e.g. R on an Authorized order).
    WRONG_STATE = "wrong_state"
    #: R for more than is still captured (R10).
    OVER_CAPTURED = "over_captured"
    #: A partial R on an instalment order (R11).
    INSTALLMENT_FULL_ONLY = "installment_full_only"
    #: A partial R on a bonus-point order (R12).
    BONUS_FULL_ONLY = "bonus_full_only"
    #: R for everything during a pending capture: that is E then N (R13).
    FULL_REFUND_PENDING_CAPTURE = "full_refund_pending_capture"
    #: C, E or N whose ``TotalAmount`` is not the order amount (R14 and [HOUSE]).
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


#: [HOUSE] The default refusal replies. ECPay documents only ``10000185`` (spec section 4) and
#: the ``error_amount_R`` / ``error_overDate`` tokens (spec sections 3 and R6); the other codes
#: are placeholders in one range and the messages follow the ``更新失敗.(error_xxx)`` shape that
#: ECPay was observed to use. A client may rely only on ``RtnCode != 1``.
DEFAULT_REFUSALS: Mapping[Refusal, RefusalReply] = types.MappingProxyType(
    {
        Refusal.BAD_PARAMETER: RefusalReply(10300001, "參數錯誤.(error_parameter)"),
        Refusal.BAD_AMOUNT: RefusalReply(10300002, "更新失敗.(error_amount)"),
        Refusal.ORDER_NOT_FOUND: RefusalReply(10000185, "Cant not find the trade data"),
        Refusal.BATCH_WINDOW: RefusalReply(10300003, "關帳作業中,請於20:30後再試.(error_closing)"),
        Refusal.OVER_DATE: RefusalReply(10300004, "更新失敗.(error_overDate)"),
        Refusal.UNIONPAY: RefusalReply(10300005, "銀聯卡交易不支援此操作.(error_unionpay)"),
        Refusal.WRONG_STATE: RefusalReply(10300006, "更新失敗.(error_status)"),
        Refusal.OVER_CAPTURED: RefusalReply(10300007, "更新失敗.(error_amount_over)"),
        Refusal.INSTALLMENT_FULL_ONLY: RefusalReply(10300008, "分期交易須全額退刷.(error_stage)"),
        Refusal.BONUS_FULL_ONLY: RefusalReply(10300009, "紅利折抵交易須全額退刷.(error_redeem)"),
        Refusal.FULL_REFUND_PENDING_CAPTURE: RefusalReply(10300010, "更新失敗.(error_amount_R)"),
        Refusal.AMOUNT_NOT_ORDER_AMOUNT: RefusalReply(10300011, "更新失敗.(error_amount)"),
        Refusal.INSUFFICIENT_BALANCE: RefusalReply(10300012, "帳戶餘額不足.(error_balance)"),
        Refusal.REFUND_PENDING: RefusalReply(10300013, "更新失敗.(error_refund_pending)"),
    }
)


class ReplyFlavour(enum.StrEnum):
    """Which of ECPay's two CreditDetail reply shapes the emulator answers with (spec section 4)."""

    #: The JSON API: PascalCase, English statuses, int numbers, ``CloseData`` beside ``RtnValue``.
    JSON = "json"
    #: The older form API: lower-case keys, Chinese statuses, string numbers, ``close_data``
    #: with ``sno`` inside ``RtnValue``, times like ``2016/5/12 下午 07:09:17``.
    AIO = "aio"


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


@attrs.frozen(kw_only=True)
class EmulatorSettings:
    """How the emulator behaves where ECPay is silent ([HOUSE]) or where tests want to move a rule.

    Every field has the project's default; change one with ``attrs.evolve(settings, ...)`` or by
    passing it to the constructor. Instances are immutable and safe to share.

    Attributes:
        refusals: [HOUSE] ``Refusal -> RefusalReply``: the RtnCode and RtnMsg answered for each
            refused action. A partial mapping is laid over :data:`DEFAULT_REFUSALS`.
        bad_envelope_trans_code: [HOUSE] the ``TransCode`` of a reply to a bad envelope whose
            code ECPay was not seen to answer (not JSON, missing fields, unknown MerchantID,
            PlatformID mismatch). ECPay documents only that it is not 1. Default 999. A
            ``Data`` that does not decrypt always answers 110 and a Timestamp outside
            ``timestamp_tolerance`` 104, as ECPay does [OBS].
        success_message: [HOUSE] ``RtnMsg`` of a successful DoAction ("Success"); ECPay spells
            success several ways, so a client must not read it (spec section 2).
        stack_pending_refunds: [HOUSE] whether a second R is accepted while an earlier one waits
            for the batch; they add up. Off: the second R is refused with
            :attr:`Refusal.REFUND_PENDING`. Default True.
        refund_lowers_closed_amount_at_once: [HOUSE] whether ``ClsAmt`` drops as soon as R is
            accepted (default) or only when the batch settles it (spec section 4).
        close_limit: R6: with auto-close off, C is refused (``error_overDate``) from
            ``authorized_at + close_limit`` on. [HOUSE] measured from the authorization time, not
            the calendar day. Default 21 days.
        notice_after: R7: with auto-close off, the unclosed-order notice is logged this long after
            authorization. Default 80 days.
        abandon_after: R7: with auto-close off, an order still Authorized after this long is
            abandoned (Canceled, nothing captured). Default 90 days.
        full_amount_actions: [HOUSE] the actions whose ``TotalAmount`` must equal the order amount
            (R14 for N; ECPay is silent for C and E). Default C, E and N. An action left out
            accepts any amount up to the order amount; C then closes that amount.
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
        credit_detail_flavour: [HOUSE] CreditDetail replies as JSON (default) or AIO (spec 4).
        timestamp_tolerance: R20 [DOC]: a request Timestamp more than this far from the
            emulator's clock, either way, is a bad envelope (TransCode 104), and a late-landing
            DoAction (``Fault.LATE_APPLY``) whose Timestamp is older than this when it lands is
            refused. Default 10 minutes.
        credit_detail_lag: [HOUSE] CreditDetail answers from the order as it was this long ago
            in emulator time (spec 9: a query "served from data ... behind"): the latest view
            whose change time is at most ``now - lag``, or the oldest kept view. Default 0: the
            current state.
    """

    refusals: Mapping[Refusal, RefusalReply] = attrs.field(
        factory=dict, converter=_refusals, repr=False, hash=False
    )
    bad_envelope_trans_code: int = attrs.field(default=999, validator=_int)
    success_message: str = attrs.field(
        default="Success", validator=attrs.validators.instance_of(str)
    )
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
        default=frozenset({Action.CLOSE, Action.CANCEL, Action.ABANDON}), converter=_actions
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
