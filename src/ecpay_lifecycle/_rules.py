"""The numbered rules (R5-R20) as small pure functions of their inputs and ``now``.

The rules are the table of docs/ecpay-api.md section 7.

No I/O and no hidden clock: every time-dependent rule takes ``now`` explicitly and computes in
Asia/Taipei whatever the host's time zone is. The lifecycle machine's guards and the planner call
these; the emulator does not (it enforces the same rules with its own code, so the two can be
tested against each other).
"""

from __future__ import annotations

import datetime as dt

from ._models import PaymentKind

__all__ = [
    "BATCH_END",
    "BATCH_START",
    "CAPTURE_DAYS",
    "FORCED_ABANDON_DAYS",
    "NOTICE_DAYS",
    "TAIPEI",
    "TIMESTAMP_TOLERANCE",
    "action_applies_to_kind",
    "blackout_retry_at",
    "capture_deadline",
    "first_batch_end_after",
    "forced_abandon_at",
    "full_refund_only",
    "in_blackout",
    "next_batch_end",
    "taipei_second_of_day",
    "timestamp_fresh",
    "unclosed_notice_at",
    "within_capture_window",
]

#: Asia/Taipei. A fixed UTC+8 offset: Taiwan has kept no daylight saving since 1979, and a fixed
#: offset needs no tz database on the host, so the rules give the same answer everywhere.
TAIPEI = dt.timezone(dt.timedelta(hours=8), "Asia/Taipei")

#: R5: the daily batch starts at 20:15 Taipei; DoAction is refused in [20:15, 20:30).
BATCH_START = dt.time(20, 15)
BATCH_END = dt.time(20, 30)
_TAIPEI_OFFSET = 8 * 3600
_BATCH_START_S = 20 * 3600 + 15 * 60
_BATCH_END_S = 20 * 3600 + 30 * 60
#: R6: with auto-close off, C is possible only within 21 days of authorization.
CAPTURE_DAYS = 21
#: R7: with auto-close off, a notice on day 80 and a forced abandon after day 90.
NOTICE_DAYS = 80
FORCED_ABANDON_DAYS = 90
#: R20: ECPay accepts a request Timestamp for 10 minutes.
TIMESTAMP_TOLERANCE = dt.timedelta(minutes=10)


def in_blackout(now: dt.datetime, auto_close: bool) -> bool:
    """R5: whether DoAction is forbidden: auto-close on and ``now`` in [20:15, 20:30) Taipei."""
    if not auto_close:
        return False
    return _BATCH_START_S <= taipei_second_of_day(now) < _BATCH_END_S


def taipei_second_of_day(now: dt.datetime) -> int:
    """Whole seconds since midnight Asia/Taipei at ``now`` (aware), in any zone.

    Plain arithmetic on the wall clock and its UTC offset: ``astimezone`` or ``timestamp``
    cost more than the rest of a plan, and this runs at every planned step (R5).
    """
    offset = now.utcoffset()
    assert offset is not None, "aware datetimes only"
    wall = now.hour * 3600 + now.minute * 60 + now.second
    return (wall - offset.days * 86400 - offset.seconds + _TAIPEI_OFFSET) % 86400


def blackout_retry_at(now: dt.datetime) -> dt.datetime:
    """R5: 20:30 Taipei of the day ``now`` falls on in Taipei: when DoAction may be tried again."""
    local = now.astimezone(TAIPEI)
    return dt.datetime.combine(local.date(), BATCH_END, tzinfo=TAIPEI)


def next_batch_end(now: dt.datetime) -> dt.datetime:
    """The 20:30 Taipei that ends the next daily batch ``now`` has not seen finish.

    Used as ``retry_at`` where waiting for the batch helps (R5 auto-close, R18): today's 20:30
    until then, tomorrow's from 20:30 on.
    """
    local = now.astimezone(TAIPEI)
    end = dt.datetime.combine(local.date(), BATCH_END, tzinfo=TAIPEI)
    return end if local < end else end + dt.timedelta(days=1)


def first_batch_end_after(moment: dt.datetime) -> dt.datetime:
    """The 20:30 Taipei ending the first daily batch that *starts* (20:15) after ``moment``.

    R22: an effect that may only show at the batch is proved absent only by a query after a
    batch that ran once the fence had passed.
    """
    local = moment.astimezone(TAIPEI)
    start = dt.datetime.combine(local.date(), BATCH_START, tzinfo=TAIPEI)
    if local >= start:
        start += dt.timedelta(days=1)
    return dt.datetime.combine(start.date(), BATCH_END, tzinfo=TAIPEI)


def capture_deadline(authorized_at: dt.datetime) -> dt.datetime:
    """R6: the instant from which C is refused when auto-close is off (21 days after authorization).

    [HOUSE] measured from the authorization time, as the emulator does.
    """
    return authorized_at + dt.timedelta(days=CAPTURE_DAYS)


def within_capture_window(authorized_at: dt.datetime, now: dt.datetime, auto_close: bool) -> bool:
    """R6: whether C may still be sent. Always True with auto-close on (ECPay closes daily)."""
    return auto_close or now < capture_deadline(authorized_at)


def unclosed_notice_at(authorized_at: dt.datetime) -> dt.datetime:
    """R7: when ECPay sends its notice about an unclosed order (day 80, auto-close off)."""
    return authorized_at + dt.timedelta(days=NOTICE_DAYS)


def forced_abandon_at(authorized_at: dt.datetime) -> dt.datetime:
    """R7: after this instant ECPay abandons an unclosed order (day 90, auto-close off)."""
    return authorized_at + dt.timedelta(days=FORCED_ABANDON_DAYS)


def action_applies_to_kind(action: str, kind: PaymentKind) -> bool:
    """R8: UnionPay orders are closed at authorization; only R applies to them.

    ``action`` is an :class:`~ecpay_lifecycle.Action` value (``"C"``, ``"R"``, ``"E"``, ``"N"``).
    """
    return kind is not PaymentKind.UNIONPAY or action == "R"


def full_refund_only(kind: PaymentKind) -> bool:
    """R11 (instalments) and R12 (bonus points): a refund must return everything."""
    return kind.full_refund_only


def timestamp_fresh(timestamp: int, now: dt.datetime) -> bool:
    """R20: a request Timestamp (Unix seconds) is accepted within 10 minutes of ``now``."""
    return abs(now.timestamp() - timestamp) <= TIMESTAMP_TOLERANCE.total_seconds()
