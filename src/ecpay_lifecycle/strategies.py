"""Hypothesis strategies for testing code that embeds ecpay-lifecycle (public testing kit).

Install with ``pip install 'ecpay-lifecycle[testing]'``. Every strategy draws only values the
library accepts (valid snapshots, aware datetimes, refund requests the planner plans; refused
ones only when asked, ``refund_requests(snapshot, valid=False)``), covers every state and kind,
and shrinks toward a small ordinary order, so a failing test of yours reports the simplest order
that breaks it.

>>> from hypothesis import given
>>> from ecpay_lifecycle import plan_refund, RuleViolation
>>> from ecpay_lifecycle.strategies import snapshots, taipei_datetimes
>>> @given(snapshots(), taipei_datetimes())
... def test_never_over_refunds(snapshot, now):
...     try:
...         plan = plan_refund(snapshot, now=now)
...     except RuleViolation:
...         return
...     assert plan.refund_total <= snapshot.amount
>>> test_never_over_refunds()

``st.from_type(OrderSnapshot)`` works too: the package registers :func:`snapshots` through
hypothesis' entry point.

This module is the kit's face: it only re-exports. The value strategies live in
``_value_strategies``, the fault schedules in ``_schedules`` and ``LifecycleMachine`` in
``_stateful``; those private modules import each other, never this one, so the kit's imports
have no circle.
"""

from __future__ import annotations

from ._schedules import ScheduledFault, fault_schedules
from ._stateful import LifecycleMachine
from ._value_strategies import (
    REFERENCE_TIME,
    order_numbers,
    refund_requests,
    snapshots,
    taipei_datetimes,
    trade_numbers,
)

__all__ = [
    "REFERENCE_TIME",
    "LifecycleMachine",
    "ScheduledFault",
    "fault_schedules",
    "order_numbers",
    "refund_requests",
    "snapshots",
    "taipei_datetimes",
    "trade_numbers",
]
