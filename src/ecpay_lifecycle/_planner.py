"""The planner: snapshot + intent + now -> a :class:`Plan`, or a :class:`RuleViolation`.

The planner of docs/ecpay-api.md section 8. No I/O. It picks the recipe (R9, R13, R18) and then
walks every step through the lifecycle table (:func:`._lifecycle.fire`), whose guards enforce the
remaining rules, so the plan it returns states what the order must look like after each step (for
the client to confirm, docs/ecpay-api.md section 9). Refusals name the rule, say why in one
sentence, and say when the action becomes possible where waiting helps.

Order of checks: the caller's input (typed errors), then what the order's state makes permanently
impossible, then the order's kind, then the time of day (R5) and the day count (R6, R7).

The division of labour with :mod:`._lifecycle`: the planner checks the *intent* (the recipe, the
order of its steps, and what no single step sees, such as R18's capture first); the machine
checks *one DoAction at a time*, and every step planned here is fired through its compiled table.
"""

from __future__ import annotations

import datetime as dt

from . import _rules
from ._exceptions import (
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    RefundExceedsCaptured,
    RuleViolation,
)
from ._lifecycle import SETTLED_AFTER as _SETTLED_AFTER
from ._lifecycle import STATE_OF as _STATE_OF
from ._lifecycle import Phase
from ._lifecycle import position_of as _position_of
from ._lifecycle import step as _fire
from ._models import (
    Action,
    Intent,
    OrderSnapshot,
    PaymentKind,
    Plan,
    State,
    Step,
    check_amount,
    check_aware,
)

__all__ = ["plan", "plan_abandon", "plan_capture", "plan_refund"]

# Enum members read once: on Python 3.11 ``State.CLOSED`` goes through EnumType.__getattr__ and
# costs several dict lookups, which adds up on the hot path of plan_refund (bench_planner.py).
_AUTHORIZED = State.AUTHORIZED
_INSTALLMENT = PaymentKind.INSTALLMENT
_CAPTURE = Intent.CAPTURE
_REFUND = Intent.REFUND
_PHASE_AUTHORIZED = Phase.AUTHORIZED

# Each planned action with its trigger in the lifecycle table.
_C = (Action.CLOSE, "close")
_R = (Action.REFUND, "refund")
_E = (Action.CANCEL, "cancel")
_N = (Action.ABANDON, "abandon")

_FULL_ONLY = frozenset(k for k in PaymentKind if k.full_refund_only)  # R11, R12
_ACTIONABLE = frozenset(s for s in State if s.actionable)

#: ECPay's advice for error_nopay: the authorization may appear within 10 minutes.
_NOPAY_RETRY = dt.timedelta(minutes=10)


def plan_refund(
    snapshot: OrderSnapshot,
    amount: int | None = None,
    *,
    now: dt.datetime,
    capture_first: bool = False,
) -> Plan:
    """Plan returning ``amount`` TWD (``None``: everything that is left) to the card holder.

    The recipe is R9: Authorized -> N (full only, R14; a part only as C then R when
    ``capture_first``, R18); a pending capture -> E then N for all (R13) or R for a part;
    a pending refund or Closed -> R. Instalment and bonus orders refund only in full (R11, R12);
    no refund exceeds what is still captured (R10).
    """
    _check_snapshot(snapshot)
    # The hot path (benchmarks/bench_planner.py) takes the common inputs without a call; any
    # other input goes to the function that decides it and raises its typed error. A
    # datetime.timezone cannot be subclassed and always has an offset, so such a ``now`` is aware.
    if type(now) is not dt.datetime or type(now.tzinfo) is not dt.timezone:
        check_aware(now)
    if amount is not None:
        if type(amount) is not int or amount < 1:
            check_amount(amount)
        if amount > snapshot.amount:
            raise InvalidAmount(
                f"a refund of {amount} TWD is more than the order's {snapshot.amount} TWD (R19)",
                merchant_trade_no=snapshot.merchant_trade_no,
            )
    if not isinstance(capture_first, bool):
        raise InvalidArgumentType(
            f"capture_first must be a bool, not {type(capture_first).__name__}"
        )

    state = snapshot.state
    if state not in _ACTIONABLE:
        _refuse_unless_actionable(snapshot, _REFUND, now)
    # snapshot.refundable, for the three actionable states: the property tests the state again.
    refundable = snapshot.amount if state is _AUTHORIZED else snapshot.closed_amount
    if refundable == 0:
        raise RuleViolation(
            "R10",
            "nothing is left to refund: everything is already being refunded at the next batch",
            merchant_trade_no=snapshot.merchant_trade_no,
        )
    wanted = refundable if amount is None else amount
    if wanted > refundable:
        raise RefundExceedsCaptured(
            f"a refund of {wanted} TWD is more than the {refundable} TWD still refundable",
            refundable=refundable,
            merchant_trade_no=snapshot.merchant_trade_no,
        )
    full = wanted == refundable
    kind = snapshot.kind
    if not full and kind in _FULL_ONLY:
        rule = "R11" if kind is _INSTALLMENT else "R12"
        what = "instalment" if kind is _INSTALLMENT else "bonus-point"
        raise RuleViolation(
            rule,
            f"{what} orders can only be refunded in full ({refundable} TWD), not {wanted} TWD",
            merchant_trade_no=snapshot.merchant_trade_no,
        )

    whole = snapshot.amount
    actions: tuple[tuple[Action, str, int], ...]
    if state is _AUTHORIZED:
        if full:
            actions = ((*_N, whole),)
            reason = "R9: an order that is only authorized is refunded by abandoning it (N)"
        elif capture_first:
            actions = ((*_C, whole), (*_R, wanted))
            reason = "R18: part of an authorized order is refunded by closing it (C), then R"
        else:
            raise RuleViolation(
                "R18",
                "part of an order that is only authorized cannot be refunded directly; "
                "capture it first (capture_first=True) or wait for the daily close",
                retry_at=_rules.next_batch_end(now) if snapshot.auto_close else None,
                merchant_trade_no=snapshot.merchant_trade_no,
            )
    elif snapshot.pending_capture:
        if full:
            actions = ((*_E, whole), (*_N, whole))
            reason = "R13: a full refund before the daily batch is cancel (E) then abandon (N)"
        else:
            actions = ((*_R, wanted),)
            reason = "R9: part of a pending capture is refunded with R"
    else:
        actions = ((*_R, wanted),)
        reason = "R9: a captured order is refunded with R"
    return _walk(snapshot, _REFUND, actions, now, reason, refundable=refundable)


def plan_capture(snapshot: OrderSnapshot, *, now: dt.datetime) -> Plan:
    """Plan closing (capturing) the order: Authorized -> C; any other state is refused.

    With auto-close off C is possible for 21 days (R6); UnionPay is closed at authorization (R8).
    """
    _check_snapshot(snapshot)
    check_aware(now)
    if snapshot.kind is PaymentKind.UNIONPAY:
        raise RuleViolation(
            "R8",
            "UnionPay orders are closed at authorization; there is nothing to capture",
            merchant_trade_no=snapshot.merchant_trade_no,
        )
    _refuse_unless_actionable(snapshot, Intent.CAPTURE, now)
    if snapshot.state is not State.AUTHORIZED:
        what = (
            "is already waiting for the daily batch to capture it"
            if snapshot.pending_capture
            else "has already been captured"
        )
        raise RuleViolation("R9", f"the order {what}", merchant_trade_no=snapshot.merchant_trade_no)
    return _walk(
        snapshot,
        Intent.CAPTURE,
        ((*_C, snapshot.amount),),
        now,
        "R9: an authorized order is captured by closing it (C)",
    )


def plan_abandon(snapshot: OrderSnapshot, *, now: dt.datetime) -> Plan:
    """Plan releasing the card hold without capture: Authorized -> N; pending capture -> E, N.

    Anything settled cannot be abandoned (refund it instead, R9); N is always whole (R14).
    """
    _check_snapshot(snapshot)
    check_aware(now)
    if snapshot.kind is PaymentKind.UNIONPAY:
        raise RuleViolation(
            "R8",
            "UnionPay orders are closed at authorization and cannot be abandoned; refund instead",
            merchant_trade_no=snapshot.merchant_trade_no,
        )
    _refuse_unless_actionable(snapshot, Intent.ABANDON, now)
    if snapshot.state is State.AUTHORIZED:
        actions: tuple[tuple[Action, str, int], ...] = ((*_N, snapshot.amount),)
        reason = "R14: abandoning an authorized order is N for the whole amount"
    elif snapshot.pending_capture:
        actions = ((*_E, snapshot.amount), (*_N, snapshot.amount))
        reason = "R15: a pending capture is cancelled (E), which restores the hold, then N"
    else:
        raise RuleViolation(
            "R9",
            "the capture has settled, so the order cannot be abandoned; refund it instead",
            merchant_trade_no=snapshot.merchant_trade_no,
        )
    return _walk(snapshot, Intent.ABANDON, actions, now, reason)


def plan(
    intent: Intent | str,
    snapshot: OrderSnapshot,
    amount: int | None = None,
    *,
    now: dt.datetime,
    capture_first: bool = False,
) -> Plan:
    """Plan ``intent`` (an :class:`Intent` or its value) for ``snapshot``: the one entry point
    beside :func:`plan_refund`, :func:`plan_capture` and :func:`plan_abandon`, for callers that
    hold the intent as data. ``amount`` and ``capture_first`` belong to a refund only; given
    with another intent they are refused rather than ignored."""
    if isinstance(intent, str) and not isinstance(intent, Intent):
        try:
            intent = Intent(intent)
        except ValueError:
            raise InvalidArgument(
                f"intent must be one of {', '.join(i.value for i in Intent)}, got {intent!r}"
            ) from None
    if not isinstance(intent, Intent):
        raise InvalidArgumentType(f"intent must be an Intent, not {type(intent).__name__}")
    if intent is Intent.REFUND:
        return plan_refund(snapshot, amount, now=now, capture_first=capture_first)
    if amount is not None or capture_first:
        raise InvalidArgument(f"amount and capture_first apply to a refund, not to {intent}")
    if intent is Intent.CAPTURE:
        return plan_capture(snapshot, now=now)
    return plan_abandon(snapshot, now=now)


def _check_snapshot(snapshot: object) -> None:
    if not isinstance(snapshot, OrderSnapshot):
        raise InvalidArgumentType(
            f"snapshot must be an OrderSnapshot, not {type(snapshot).__name__}"
        )


def _refuse_unless_actionable(snapshot: OrderSnapshot, intent: Intent, now: dt.datetime) -> None:
    """Refusals that no amount, kind or time changes: the state leaves nothing to do."""
    state = snapshot.state
    if state in _ACTIONABLE:
        return
    order = snapshot.merchant_trade_no
    if state is State.UNAUTHORIZED:
        raise RuleViolation(
            "R3",
            "the card has not been authorized yet; ECPay advises querying again in 10 minutes",
            retry_at=now + _NOPAY_RETRY,
            merchant_trade_no=order,
        )
    if state is State.UNSETTLED:
        raise RuleViolation(
            "R3",
            "the bank or ECPay's batch is still working on this order (or it is disputed); "
            "query it again later",
            merchant_trade_no=order,
        )
    if state is State.REFUNDED:
        raise RuleViolation(
            "R10", "the order has been refunded in full; nothing is left", merchant_trade_no=order
        )
    if state is State.ABANDONED:
        if intent is Intent.REFUND:
            raise RuleViolation(
                "R10",
                "the authorization was abandoned; nothing was captured, nothing to refund",
                merchant_trade_no=order,
            )
        raise RuleViolation(
            "R14", "the authorization has already been abandoned", merchant_trade_no=order
        )


def _walk(
    snapshot: OrderSnapshot,
    intent: Intent,
    actions: tuple[tuple[Action, str, int], ...],
    now: dt.datetime,
    reason: str,
    *,
    refundable: int | None = None,
) -> Plan:
    """Walk ``actions`` through the lifecycle table; its guards enforce R5-R19 at each step."""
    position = _position_of(snapshot)
    settled = snapshot.capture_settled
    steps = []
    try:
        for action, trigger, amount in actions:
            position, rule = _fire(position, trigger, snapshot, now, amount)
            phase = position.state
            settled = _SETTLED_AFTER.get(phase, settled)
            steps.append(
                Step(
                    action=action,
                    amount=amount,
                    state_after=_STATE_OF[phase],
                    closed_amount_after=position.closed_amount,
                    capture_settled_after=settled,
                    rule=rule,
                )
            )
    except RuleViolation as refusal:
        refusal.merchant_trade_no = snapshot.merchant_trade_no
        raise
    # What the card holder is still charged or held for after the last step (see refundable).
    held_after = snapshot.amount if phase is _PHASE_AUTHORIZED else position.closed_amount
    return Plan(
        intent=intent,
        merchant_trade_no=snapshot.merchant_trade_no,
        steps=tuple(steps),
        refund_total=0
        if intent is _CAPTURE
        else (snapshot.refundable if refundable is None else refundable) - held_after,
        reason=reason,
    )
