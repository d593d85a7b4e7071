"""Hypothesis strategies for the core's own tests: valid snapshots of every state and kind."""

from __future__ import annotations

import datetime as dt

from hypothesis import strategies as st

from ecpay_lifecycle import OrderSnapshot, PaymentKind, State
from ecpay_lifecycle._rules import TAIPEI

BASE = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)

ZONES = st.sampled_from(
    [TAIPEI, dt.UTC, dt.timezone(dt.timedelta(hours=-5)), dt.timezone(dt.timedelta(hours=13))]
)


@st.composite
def instants(draw: st.DrawFn, *, start: dt.datetime = BASE, days: int = 120) -> dt.datetime:
    """Aware datetimes in any of several zones, within ``days`` after ``start``."""
    seconds = draw(st.integers(0, days * 86400))
    return (start + dt.timedelta(seconds=seconds)).astimezone(draw(ZONES))


@st.composite
def snapshots(
    draw: st.DrawFn,
    *,
    states: tuple[State, ...] = tuple(State),
    kinds: tuple[PaymentKind, ...] = tuple(PaymentKind),
) -> OrderSnapshot:
    """Any valid snapshot; ``closed_amount`` and ``capture_settled`` follow the state."""
    kind = draw(st.sampled_from(kinds))
    state = draw(st.sampled_from(states))
    if kind is PaymentKind.UNIONPAY and state is State.AUTHORIZED:
        state = State.CLOSED
    amount = draw(st.integers(1, 200_000))
    settled = False
    closed = 0
    if state is State.TO_CLOSE:
        settled = kind is PaymentKind.UNIONPAY or draw(st.booleans())
        closed = draw(st.integers(0 if settled else 1, amount))
    elif state is State.CLOSED:
        settled, closed = True, draw(st.integers(1, amount))
    elif state is State.REFUNDED:
        settled = True
    elif state is State.UNSETTLED:
        closed = draw(st.integers(0, amount))
        settled = draw(st.booleans())
    authorized_at = BASE - dt.timedelta(seconds=draw(st.integers(0, 100 * 86400)))
    return OrderSnapshot(
        merchant_trade_no=draw(st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True)),
        trade_no=draw(st.from_regex(r"[0-9]{16}", fullmatch=True)),
        amount=amount,
        state=state,
        closed_amount=closed,
        capture_settled=settled,
        kind=kind,
        auto_close=draw(st.booleans()),
        authorized_at=authorized_at,
    )


def outside_window(now: dt.datetime) -> bool:
    """Whether ``now`` is outside [20:15, 20:30) Taipei."""
    local = now.astimezone(TAIPEI).time()
    return not dt.time(20, 15) <= local < dt.time(20, 30)
