"""Frozen domain values: actions, states, payment kinds, gateway statuses, snapshots and plans.

Everything here is pure data, validated on construction. ECPay's PascalCase wire names do not
appear here; they live at the wire edge (``_protocol``).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Any

import attrs

from ._exceptions import InvalidAmount, InvalidArgument, InvalidArgumentType, UnknownStatusError

__all__ = [
    "Action",
    "GatewayStatus",
    "Intent",
    "OrderSnapshot",
    "PaymentKind",
    "Plan",
    "State",
    "Step",
    "check_amount",
    "check_aware",
    "check_order_number",
]


class Action(enum.StrEnum):
    """A DoAction ``Action`` value (docs/ecpay-api.md section 3)."""

    CLOSE = "C"
    REFUND = "R"
    CANCEL = "E"
    ABANDON = "N"


class State(enum.StrEnum):
    """The lifecycle state of an order (docs/ecpay-api.md section 6)."""

    AUTHORIZED = "authorized"
    TO_CLOSE = "to_close"
    CLOSED = "closed"
    ABANDONED = "abandoned"
    REFUNDED = "refunded"
    UNAUTHORIZED = "unauthorized"
    UNSETTLED = "unsettled"

    @property
    def actionable(self) -> bool:
        """Whether the library may send any DoAction to an order in this state.

        See the statuses table of docs/ecpay-api.md section 4.
        """
        return self in _ACTIONABLE


_ACTIONABLE = frozenset({State.AUTHORIZED, State.TO_CLOSE, State.CLOSED})


class PaymentKind(enum.StrEnum):
    """How the card was charged (docs/ecpay-api.md section 5); decides R8, R11 and R12."""

    ONE_TIME = "one_time"
    INSTALLMENT = "installment"
    BONUS = "bonus"
    UNIONPAY = "unionpay"

    @property
    def full_refund_only(self) -> bool:
        """R11 (instalments) and R12 (bonus points): refunds are all or nothing."""
        return self in (PaymentKind.INSTALLMENT, PaymentKind.BONUS)


class Intent(enum.StrEnum):
    """What the caller wants to happen to the order."""

    CAPTURE = "capture"
    REFUND = "refund"
    ABANDON = "abandon"


class GatewayStatus(enum.Enum):
    """Every status CreditDetail/QueryTrade can report, in both spellings (R3).

    The table is docs/ecpay-api.md section 4.

    Each member's value is ``(chinese, english)``; English is ``None`` where ECPay documents none.
    """

    _value_: tuple[str, str | None]

    AUTHORIZED = ("已授權", "Authorized")
    OPERATION_CANCELED = ("操作取消", "Operation canceled")
    TO_BE_CAPTURED = ("要關帳", "To be captured")
    CAPTURED = ("已關帳", "Captured")
    CANCELED = ("已取消", "Canceled")
    UNAUTHORIZED = ("未授權", "Unauthorized")
    BANK_REJECTED = ("銀行拒絕", None)
    CLOSING = ("關帳中", None)
    TO_CANCEL = ("要取消", None)
    CANCELING = ("取消中", None)
    BANK_RECLAIMING = ("銀行追回中", None)
    BANK_RECLAIMED = ("銀行已追回", None)
    BATCH_FAILED = ("批次失敗", None)
    UNKNOWN = ("不明", None)

    @property
    def chinese(self) -> str:
        """The AIO (form API) spelling."""
        chinese: str = self._value_[0]
        return chinese

    @property
    def english(self) -> str | None:
        """The JSON API spelling, or None where ECPay documents none."""
        english: str | None = self._value_[1]
        return english

    @classmethod
    def parse(cls, text: object) -> GatewayStatus:
        """Map a status text in either spelling to its member; anything else raises (R3).

        Surrounding white space is ignored and English matches case-insensitively, because
        ECPay's capitalisation varies between pages; an unknown value is never defaulted.
        """
        if not isinstance(text, str):
            raise UnknownStatusError(repr(text))
        key = text.strip()
        found = _STATUS_BY_TEXT.get(key) or _STATUS_BY_TEXT.get(key.casefold())
        if found is None:
            raise UnknownStatusError(text)
        return found

    def to_state(self, closed_amount: int) -> State:
        """The lifecycle state this status means, given the net closed amount (R3).

        ``Captured`` with nothing left closed is :attr:`State.REFUNDED`; ``Operation canceled``
        is :attr:`State.AUTHORIZED` because the hold is still live (R15).
        """
        if self is GatewayStatus.CAPTURED:
            return State.CLOSED if closed_amount > 0 else State.REFUNDED
        return _STATE_OF[self]


_STATE_OF: dict[GatewayStatus, State] = {
    GatewayStatus.AUTHORIZED: State.AUTHORIZED,
    GatewayStatus.OPERATION_CANCELED: State.AUTHORIZED,
    GatewayStatus.TO_BE_CAPTURED: State.TO_CLOSE,
    GatewayStatus.CANCELED: State.ABANDONED,
    GatewayStatus.UNAUTHORIZED: State.UNAUTHORIZED,
    **{status: State.UNSETTLED for status in GatewayStatus if status.english is None},
}

_STATUS_BY_TEXT: dict[str, GatewayStatus] = {}
for _status in GatewayStatus:
    _STATUS_BY_TEXT[_status.chinese] = _status
    if _status.english is not None:
        _STATUS_BY_TEXT[_status.english] = _status
        _STATUS_BY_TEXT[_status.english.casefold()] = _status
del _status

_ORDER_NUMBER = re.compile(r"[A-Za-z0-9]{1,20}")


def check_order_number(value: object, *, field: str = "merchant_trade_no") -> str:
    """R19: MerchantTradeNo and TradeNo are 1-20 ASCII letters and digits."""
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{field} must be a str, not {type(value).__name__}")
    if not _ORDER_NUMBER.fullmatch(value):
        raise InvalidArgument(f"{field} must be 1-20 letters or digits (R19), got {value!r}")
    return value


def check_amount(value: object, *, field: str = "amount", allow_zero: bool = False) -> int:
    """R19: amounts are whole TWD: an ``int`` (not a bool), positive unless ``allow_zero``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(
            f"{field} must be a whole number of TWD (int), not {type(value).__name__} {value!r}"
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidAmount(f"{field} must be a positive whole number of TWD (R19), got {value}")
    return value


def check_aware(value: object, *, field: str = "now") -> dt.datetime:
    """Datetimes must be timezone-aware: the rules are computed in Asia/Taipei (R5, R6)."""
    if not isinstance(value, dt.datetime):
        raise InvalidArgumentType(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{field} must be timezone-aware, got naive {value.isoformat()}")
    return value


def _validate_number(_inst: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_order_number(value, field=attribute.name)


def _validate_amount(_inst: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_amount(value, field=attribute.name)


def _validate_closed(_inst: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_amount(value, field=attribute.name, allow_zero=True)


def _validate_aware(_inst: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_aware(value, field=attribute.name)


#: What the state says of ``capture_settled`` where it says anything: closed and refunded orders
#: have settled their capture, an authorization (or a failed one) has none.
_SETTLED_BY_STATE: dict[State, bool] = {
    State.CLOSED: True,
    State.REFUNDED: True,
    State.AUTHORIZED: False,
    State.UNAUTHORIZED: False,
}


@attrs.frozen(kw_only=True)
class OrderSnapshot:
    """What the gateway says about one order at one moment (R4: actions are planned from this).

    ``closed_amount`` is ECPay's ``ClsAmt``: the net amount closed or waiting to close.
    ``capture_settled`` says a capture has already settled in a batch, which tells the two
    flavours of :attr:`State.TO_CLOSE` apart (pending refund vs pending capture, R9). Where the
    state implies it, it follows from the state whatever is passed (CLOSED and REFUNDED: True;
    AUTHORIZED and UNAUTHORIZED: False), so a snapshot built from a shop's own records cannot
    contradict its state; otherwise it defaults to False. ``auto_close`` is the merchant's daily
    auto-close setting (R5, R6, R7). Impossible combinations raise :class:`InvalidArgument`.
    """

    merchant_trade_no: str = attrs.field(validator=_validate_number)
    trade_no: str = attrs.field(validator=_validate_number)
    amount: int = attrs.field(validator=_validate_amount)
    state: State = attrs.field(validator=attrs.validators.instance_of(State))
    authorized_at: dt.datetime = attrs.field(validator=_validate_aware)
    closed_amount: int = attrs.field(default=0, validator=_validate_closed)
    kind: PaymentKind = attrs.field(
        default=PaymentKind.ONE_TIME, validator=attrs.validators.instance_of(PaymentKind)
    )
    auto_close: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    # The four states that imply it override what is passed (__attrs_post_init__), so the
    # default only speaks for TO_CLOSE, where it means a pending capture.
    capture_settled: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        implied = _SETTLED_BY_STATE.get(self.state)
        if implied is not None and self.capture_settled is not implied:
            object.__setattr__(self, "capture_settled", implied)
        problem = _snapshot_problem(self)
        if problem is not None:
            raise InvalidArgument(
                f"impossible order snapshot: {problem}", merchant_trade_no=self.merchant_trade_no
            )

    @property
    def pending_capture(self) -> bool:
        """TO_CLOSE before any capture settled: E cancels it, R lowers it (R9, R13)."""
        return self.state is State.TO_CLOSE and not self.capture_settled

    @property
    def pending_refund(self) -> bool:
        """TO_CLOSE on an order whose capture already settled: a refund waits for the batch."""
        return self.state is State.TO_CLOSE and self.capture_settled

    @property
    def refundable(self) -> int:
        """What a full refund returns to the card holder now (R10).

        The whole hold while only authorized (N releases it, R14), the net closed amount once
        closing or closed, nothing otherwise.
        """
        if self.state is State.AUTHORIZED:
            return self.amount
        if self.state in (State.TO_CLOSE, State.CLOSED):
            return self.closed_amount
        return 0


def _snapshot_problem(s: OrderSnapshot) -> str | None:
    if s.closed_amount > s.amount:
        return f"closed amount {s.closed_amount} exceeds the order amount {s.amount}"
    if s.state in (State.AUTHORIZED, State.ABANDONED, State.UNAUTHORIZED, State.REFUNDED) and (
        s.closed_amount != 0
    ):
        return f"an order that is {s.state} cannot have a closed amount ({s.closed_amount})"
    if s.state is State.CLOSED and s.closed_amount == 0:
        return "a closed order with nothing closed is refunded, not closed"
    if s.pending_capture and s.closed_amount == 0:
        return "a pending capture of nothing"
    if s.kind is PaymentKind.UNIONPAY and s.state is State.AUTHORIZED:
        return "UnionPay orders are closed at authorization (R8)"
    if s.kind is PaymentKind.UNIONPAY and s.pending_capture:
        return "UnionPay orders never wait for a capture (R8)"
    return None


@attrs.frozen(kw_only=True)
class Step:
    """One DoAction to send, with what the order must look like after it.

    The expected state is what resolves a lost reply (docs/ecpay-api.md section 9).

    ``state_after`` and ``closed_amount_after`` are what a confirming query must show;
    ``rule`` names the rule that chose this step.
    """

    action: Action
    amount: int
    state_after: State
    closed_amount_after: int
    capture_settled_after: bool
    rule: str

    def describe(self) -> str:
        """``R(300)``-style short form used in logs, tables and the CLI."""
        return f"{self.action.value}({self.amount})"


@attrs.frozen(kw_only=True)
class Plan:
    """An ordered list of steps that carries out an :class:`Intent` on one order.

    ``refund_total`` is what the card holder gets back when every step has succeeded.
    """

    intent: Intent
    merchant_trade_no: str
    steps: tuple[Step, ...]
    refund_total: int
    reason: str

    @property
    def actions(self) -> tuple[Action, ...]:
        """The actions in order, e.g. ``(Action.CANCEL, Action.ABANDON)``."""
        return tuple(step.action for step in self.steps)

    @property
    def final_state(self) -> State:
        """The state the order is in when every step has succeeded."""
        return self.steps[-1].state_after

    @property
    def final_closed_amount(self) -> int:
        """The net closed amount when every step has succeeded."""
        return self.steps[-1].closed_amount_after

    def describe(self) -> str:
        """``E(1000) -> N(1000)``-style short form."""
        return " -> ".join(step.describe() for step in self.steps)
