"""Hypothesis strategies for values: order numbers, snapshots, refund requests, Taipei instants.

Part of the public testing kit, re-exported by :mod:`ecpay_lifecycle.strategies`; it lives here
so that :mod:`ecpay_lifecycle._stateful` (``LifecycleMachine``) can draw from it without
importing the public face, which re-exports the machine. The values and rules they respect are
docs/ecpay-api.md sections 4 to 8.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal, overload

from hypothesis import strategies as st

from ._exceptions import InvalidArgument
from ._models import OrderSnapshot, PaymentKind, State
from ._rules import CAPTURE_DAYS, FORCED_ABANDON_DAYS, NOTICE_DAYS, TAIPEI

__all__ = [
    "REFERENCE_TIME",
    "order_numbers",
    "refund_requests",
    "snapshots",
    "taipei_datetimes",
    "trade_numbers",
]

#: The instant strategies measure from (a Wednesday, 10:00 Taipei). Fixed, so examples replay.
REFERENCE_TIME = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)

_ZONES = (
    TAIPEI,
    dt.UTC,
    dt.timezone(dt.timedelta(hours=9), "Asia/Tokyo"),
    dt.timezone(dt.timedelta(hours=-5)),
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
)
# The order of states and kinds is the order of shrinking: an ordinary authorized order first.
_STATES = (
    State.AUTHORIZED,
    State.TO_CLOSE,
    State.CLOSED,
    State.REFUNDED,
    State.ABANDONED,
    State.UNAUTHORIZED,
    State.UNSETTLED,
)
_KINDS = (PaymentKind.ONE_TIME, PaymentKind.INSTALLMENT, PaymentKind.BONUS, PaymentKind.UNIONPAY)


def order_numbers() -> st.SearchStrategy[str]:
    """MerchantTradeNo values: 1-20 ASCII letters and digits (R19)."""
    return st.text(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=20
    )


def trade_numbers() -> st.SearchStrategy[str]:
    """ECPay TradeNo values: 16 to 20 digits, as ECPay issues them (R19)."""
    return st.text("0123456789", min_size=16, max_size=20)


def _kind_allows(kind: PaymentKind, state: State, settled: bool | None) -> bool:
    # R8: UnionPay is closed at authorization, so never AUTHORIZED, never a pending capture.
    if kind is not PaymentKind.UNIONPAY:
        return True
    return state is not State.AUTHORIZED and not (state is State.TO_CLOSE and settled is False)


def snapshots(
    *,
    states: Sequence[State] = _STATES,
    kinds: Sequence[PaymentKind] = _KINDS,
    auto_close: bool | None = None,
    max_amount: int = 200_000,
    now: dt.datetime = REFERENCE_TIME,
) -> st.SearchStrategy[OrderSnapshot]:
    """Valid :class:`OrderSnapshot` values of the given ``states`` and ``kinds``.

    Covers every combination the gateway can show: both TO_CLOSE flavours (pending capture and
    pending refund), closed amounts from one TWD to everything, authorizations from just now to
    100 days before ``now``, auto-close on and off (or as given). Shrinks toward a small, ordinary,
    authorized order. Combinations that cannot exist (UnionPay and AUTHORIZED, R8) are skipped;
    asking only for those raises :class:`InvalidArgument`.
    """
    pairs = [(k, s) for k in kinds for s in states if _kind_allows(k, s, None)]
    if not pairs:
        raise InvalidArgument(f"no valid snapshot has a kind in {kinds} and a state in {states}")
    if max_amount < 1:
        raise InvalidArgument(f"max_amount must be at least 1 TWD, got {max_amount}")
    return _snapshots(tuple(pairs), auto_close, max_amount, now)


@st.composite
def _snapshots(
    draw: st.DrawFn,
    pairs: tuple[tuple[PaymentKind, State], ...],
    auto_close: bool | None,
    max_amount: int,
    now: dt.datetime,
) -> OrderSnapshot:
    kind, state = draw(st.sampled_from(pairs))
    amount = draw(st.integers(1, max_amount))
    closed, settled = 0, False
    if state is State.TO_CLOSE:
        settled = kind is PaymentKind.UNIONPAY or draw(st.booleans())
        closed = draw(st.integers(0 if settled else 1, amount))
    elif state is State.CLOSED:
        closed = draw(st.integers(1, amount))
    elif state is State.UNSETTLED:
        closed = draw(st.integers(0, amount))
        settled = draw(st.booleans())
    age = draw(st.integers(0, 100 * 86400))
    return OrderSnapshot(
        merchant_trade_no=draw(order_numbers()),
        trade_no=draw(trade_numbers()),
        amount=amount,
        state=state,
        closed_amount=closed,
        capture_settled=settled,
        kind=kind,
        auto_close=draw(st.booleans()) if auto_close is None else auto_close,
        authorized_at=now - dt.timedelta(seconds=age),
    )


@overload
def refund_requests(
    snapshot: OrderSnapshot, *, valid: Literal[True] = True
) -> st.SearchStrategy[int | None]: ...
@overload
def refund_requests(
    snapshot: OrderSnapshot, *, valid: bool | None
) -> st.SearchStrategy[object]: ...
def refund_requests(
    snapshot: OrderSnapshot, *, valid: bool | None = True
) -> st.SearchStrategy[object]:
    """Refund requests for ``snapshot``: ``None`` ("everything that is left") or an amount.

    By default only requests that :func:`~ecpay_lifecycle.plan_refund` accepts (with
    ``capture_first=False``, docs/ecpay-api.md section 8): ``None`` or the whole refundable
    amount whenever something is refundable, and any part of it for an ordinary (or UnionPay)
    order that is no longer only authorized (R9, R10, R11, R12, R18). The planner plans them at
    every ``now`` the time rules leave open: outside R5's daily window, and, with auto-close
    off, before day 90 for an order still waiting to be captured (R7: ECPay has abandoned it by
    then). An order with nothing refundable has no such request: asking for one raises
    :class:`~ecpay_lifecycle.InvalidArgument`.

    ``valid=False`` draws only requests the planner refuses: parts the kind or state forbids,
    more than is refundable (R10) or than the order (R19), zero and negatives, and values of
    the wrong type (bool, float, str). ``valid=None`` draws from both sides, which the default
    did before (CHANGELOG.md).
    """
    if valid is not None and not isinstance(valid, bool):
        raise InvalidArgument(f"valid must be True, False or None, not {valid!r}")
    refundable = snapshot.refundable
    actionable = snapshot.state.actionable and refundable > 0
    partial_ok = (
        actionable
        and not snapshot.kind.full_refund_only
        and snapshot.state is not State.AUTHORIZED
        and refundable > 1
    )
    good: list[st.SearchStrategy[int | None]] = []
    if actionable:
        good += [st.none(), st.just(refundable)]
    if partial_ok:
        good.append(st.integers(1, refundable - 1))
    bad: list[st.SearchStrategy[object]] = [
        st.integers(max_value=0),
        st.integers(min_value=snapshot.amount + 1),
        st.booleans(),
        st.floats(allow_nan=False, min_value=1, max_value=snapshot.amount),
        st.integers(1, snapshot.amount).map(str),
    ]
    if refundable < snapshot.amount:
        bad.append(st.integers(refundable + 1, snapshot.amount))
    if not actionable:
        bad += [st.none(), st.integers(1, snapshot.amount)]
    elif not partial_ok and refundable > 1:
        bad.append(st.integers(1, refundable - 1))
    if valid is True:
        if not good:
            raise InvalidArgument(
                f"nothing can be refunded from an order that is {snapshot.state} with "
                f"{refundable} TWD refundable; valid=False draws the requests the planner refuses"
            )
        return st.one_of(good)
    if valid is False:
        return st.one_of(bad)
    return st.one_of([*good, *bad])


@st.composite
def taipei_datetimes(
    draw: st.DrawFn,
    near_batch: bool = False,
    *,
    authorized_at: dt.datetime | None = None,
    start: dt.datetime = REFERENCE_TIME,
    days: int = 120,
) -> dt.datetime:
    """Aware datetimes in a mix of zones (the rules must hold in Asia/Taipei whatever the zone).

    Plainly, any instant in ``days`` from ``start``. With ``near_batch``, instants crowd within
    two minutes of 20:15 and 20:30 Taipei (both edges included) on a random day, where R5 turns on
    and off. With ``authorized_at``, instants crowd within a minute of the 21-, 80- and 90-day
    marks after it (R6, R7).
    """
    if authorized_at is not None:
        mark = authorized_at + dt.timedelta(
            days=draw(st.sampled_from((CAPTURE_DAYS, NOTICE_DAYS, FORCED_ABANDON_DAYS)))
        )
        offset = draw(st.sampled_from((0, -1, 1)) | st.integers(-60, 60))
        instant = mark + dt.timedelta(seconds=offset)
    elif near_batch:
        day = start.astimezone(TAIPEI).date() + dt.timedelta(days=draw(st.integers(0, days)))
        edge = draw(st.sampled_from((dt.time(20, 15), dt.time(20, 30))))
        # Exactly on, and a second either side of, each edge are drawn as often as the rest.
        offset = draw(st.sampled_from((0, -1, 1)) | st.integers(-120, 120))
        instant = dt.datetime.combine(day, edge, tzinfo=TAIPEI) + dt.timedelta(seconds=offset)
    else:
        instant = start + dt.timedelta(seconds=draw(st.integers(0, days * 86400)))
    return instant.astimezone(draw(st.sampled_from(_ZONES)))
