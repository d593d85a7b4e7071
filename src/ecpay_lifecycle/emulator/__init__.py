"""A faithful, stateful, local stand-in for ECPay's credit-card endpoints.

The contract it follows is docs/ecpay-api.md (the emulator is its section 10; every "section N"
in this package is a section of that document).

ECPay's stage environment cannot run DoAction, so this is the only place a capture or refund
flow can run end to end. Use :class:`Emulator` in tests through ``httpx.MockTransport``
(:attr:`Emulator.handler`), over real HTTP with :func:`serving` or ``ecpay-lifecycle serve``, or
mount :meth:`Emulator.asgi_app` in any ASGI server. See ``docs/emulator.md``.
"""

from __future__ import annotations

from ._emulator import Emulator
from ._events import Event, EventKind, Landing
from ._faults import Endpoint, Fault, FaultRule, Faults
from ._serve import serving
from ._settings import (
    DEFAULT_REFUSALS,
    EmulatorSettings,
    Refusal,
    RefusalReply,
    ReplyFlavour,
    UrlEncoding,
)
from ._state import CloseRowView, MerchantView, OrderView

__all__ = [
    "DEFAULT_REFUSALS",
    "CloseRowView",
    "Emulator",
    "EmulatorSettings",
    "Endpoint",
    "Event",
    "EventKind",
    "Fault",
    "FaultRule",
    "Faults",
    "Landing",
    "MerchantView",
    "OrderView",
    "Refusal",
    "RefusalReply",
    "ReplyFlavour",
    "UrlEncoding",
    "serving",
]
