"""The emulator's event log: what was asked, what changed, what was answered, and when.

Every request, every late landing, every batch and every day rule (R5-R7) leaves one
:class:`Event`. Events hold the decrypted inner request and reply (which carry order numbers and
amounts, never a HashKey or HashIV) and never the encrypted ``Data`` itself. A :class:`Landing`
is a DoAction still in flight (``Fault.LATE_APPLY``): it becomes an event when it lands.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

import attrs

from ecpay_lifecycle._models import Action

from ._faults import Endpoint, Fault
from ._settings import Refusal

__all__ = ["Event", "EventKind", "Landing"]


class EventKind(enum.StrEnum):
    """What an :class:`Event` records."""

    #: A request to one of the three endpoints (answered, refused, rejected or faulted), or a
    #: DoAction landing late (``fault`` is ``Fault.LATE_APPLY``; ``note`` says when it came in).
    REQUEST = "request"
    #: A test set-up call: merchant added, order authorized, balance or status set.
    SETUP = "setup"
    #: The daily 20:15 Asia/Taipei batch ran (R5); ``note`` says how many orders it settled.
    BATCH = "batch"
    #: The batch closed an Authorized order of an auto-close merchant before settling it (R5).
    AUTO_CLOSE = "auto_close"
    #: The batch settled one order's pending close; ``amount`` is the net closed amount (R5).
    SETTLE = "settle"
    #: Day 80 of an unclosed order with auto-close off: ECPay's notice (R7).
    NOTICE = "notice"
    #: After day 90 an unclosed order with auto-close off was abandoned (R7).
    EXPIRE = "expire"


@attrs.frozen(kw_only=True)
class Event:
    """One entry of :attr:`Emulator.events`, in the order things happened.

    ``at`` is the emulator's time (for day rules replayed for an order authorized in the past,
    the time the rule took effect). For a request: ``endpoint``, the decrypted inner ``request``
    (None when the envelope could not be read), whether a change was ``applied``, the inner
    ``reply`` the emulator built (also when a fault then hid it), ``trans_code``, ``rtn_code``,
    the ``refusal`` reason if refused, and the ``fault`` that fired if any. ``note`` explains
    a rejected envelope, a late landing or a day rule in words.
    """

    seq: int
    at: dt.datetime
    kind: EventKind
    merchant_id: str | None = None
    merchant_trade_no: str | None = None
    endpoint: Endpoint | None = None
    action: Action | None = None
    amount: int | None = None
    request: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    applied: bool = False
    reply: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    trans_code: int | None = None
    rtn_code: int | None = None
    refusal: Refusal | None = None
    fault: Fault | None = None
    note: str = ""

    def describe(self) -> str:
        """A one-line summary for logs and failure messages, e.g. ``#3 DoAction R(300) applied``."""
        parts = [f"#{self.seq}", self.at.isoformat(), str(self.kind)]
        if self.endpoint is not None:
            parts.append(self.endpoint.name)
        if self.merchant_trade_no is not None:
            parts.append(self.merchant_trade_no)
        if self.action is not None:
            parts.append(f"{self.action.value}({self.amount})")
        if self.kind is EventKind.REQUEST and self.action is not None:
            parts.append("applied" if self.applied else "not applied")
        if self.refusal is not None:
            parts.append(f"refused:{self.refusal.value}")
        if self.fault is not None:
            parts.append(f"fault:{self.fault.name}")
        if self.note:
            parts.append(self.note)
        return " ".join(parts)


@attrs.frozen(kw_only=True)
class Landing:
    """A DoAction that ``Fault.LATE_APPLY`` let in: in flight inside the emulated ECPay.

    It lands at ``at`` (emulator time: ``received_at`` plus the rule's ``land_after``) when the
    clock reaches that moment or a request arrives then. If ``at`` is more than
    ``EmulatorSettings.timestamp_tolerance`` after ``timestamp`` (its ``RqHeader.Timestamp``,
    aware, UTC) R20 refuses it; otherwise it is processed like any DoAction at ``at``.
    ``request`` is the decrypted inner request; ``amount`` its ``TotalAmount`` when a number.
    """

    at: dt.datetime
    received_at: dt.datetime
    timestamp: dt.datetime
    merchant_id: str
    merchant_trade_no: str | None
    action: Action | None
    amount: int | None
    request: Mapping[str, Any] = attrs.field(hash=False)
