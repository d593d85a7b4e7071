"""The core's own tests draw from the public testing kit, so the kit is exercised on every run."""

from __future__ import annotations

import datetime as dt

from ecpay_lifecycle._rules import TAIPEI
from ecpay_lifecycle.strategies import REFERENCE_TIME as BASE
from ecpay_lifecycle.strategies import snapshots
from ecpay_lifecycle.strategies import taipei_datetimes as instants

__all__ = ["BASE", "instants", "outside_window", "snapshots"]


def outside_window(now: dt.datetime) -> bool:
    """Whether ``now`` is outside [20:15, 20:30) Taipei."""
    local = now.astimezone(TAIPEI).time()
    return not dt.time(20, 15) <= local < dt.time(20, 30)
