"""The emulator's console: a page a person can click, served by the ASGI app at ``/``.

A QA engineer who tests refunds by hand before a release sees the merchants and their
balances, the orders (status, state, ``ClsAmt``, kind, close rows, the DoActions applied), the
event log as it grows and the armed faults; moves the clock (the 20:15 batch, a day, an order's
day-21/80/90 deadline); arms and clears faults; and authorizes test orders. The page is static
(``console/`` beside this module, shipped in the wheel): every change goes through the admin
routes of :mod:`._asgi`, and what it shows comes from the read-only routes here:

- ``GET /_emulator/merchants`` -> ``[{"merchant_id", "auto_close", "balance", "platform_id"}]``
- ``GET /_emulator/orders`` -> every order as ``GET /_emulator/orders/{id}/{no}`` shows it, plus
  ``deadlines`` (``close_limit``, ``notice``, ``abandon``: R6 and R7's moments for that order) and
  ``actions`` (the DoActions applied to it, from the event log)
- ``GET /_emulator/faults`` -> the armed rules, with ``remaining`` and ``dormant``
- ``GET /_emulator/overview?since=N`` -> all of the above, the clock, the DoActions in flight and
  the events after sequence number ``N`` (at most the newest 500): one poll for the page

Nothing here can show a HashKey or HashIV: merchants are read through
:meth:`Emulator.merchants`, which has none, and events never hold them. The page loads nothing
from outside the package (its Content-Security-Policy forbids it) and builds its DOM from text,
never from HTML, so an order number cannot inject markup.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ecpay_lifecycle._exceptions import EcpayError
from ecpay_lifecycle._models import Action, PaymentKind

from ._faults import Endpoint, Fault, FaultRule
from ._json_views import event_json, landing_json, view_json
from ._state import TAIPEI, MerchantView, OrderView

if TYPE_CHECKING:
    from ._emulator import Emulator
    from ._events import Event

__all__ = ["asset", "read_route", "send_asset"]

Send = Callable[[Mapping[str, Any]], Awaitable[None]]

#: How many events one overview carries at most: the page keeps a window, not the whole log.
EVENTS_PER_POLL = 500

#: The page and its two files: URL path -> (file in ``console/``, content type).
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
}
#: Everything comes from this origin; ``data:`` only for the empty favicon.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = (
    (b"content-security-policy", _POLICY.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


def asset(method: str, path: str) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """The console file served at ``path`` (body and headers) for a GET, or None."""
    found = _ASSETS.get(path)
    if method != "GET" or found is None:
        return None
    name, content_type = found
    body = importlib.resources.files(__package__).joinpath("console", name).read_bytes()
    headers = [
        (b"content-type", content_type.encode("ascii")),
        (b"content-length", str(len(body)).encode("ascii")),
        *_HEADERS,
    ]
    return body, headers


async def send_asset(send: Send, method: str, path: str) -> bool:
    """Send the console file for ``path`` if there is one; whether it did."""
    found = asset(method, path)
    if found is None:
        return False
    body, headers = found
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True


def read_route(emulator: Emulator, method: str, route: str, query: bytes) -> tuple[int, Any] | None:
    """Answer one of the console's read-only admin routes (``route`` is the path after
    ``/_emulator/``), or None when it is not one of them. Bad input answers 400; nothing here
    changes the emulator."""
    if method != "GET":
        return None
    parts = [part for part in route.split("/") if part]
    match parts:
        case ["merchants"]:
            return 200, [merchant_json(merchant) for merchant in emulator.merchants()]
        case ["orders"]:
            return 200, orders_json(emulator)
        case ["faults"]:
            return 200, faults_json(emulator)
        case ["overview"]:
            since = _since(query)
            if since is None:
                return 400, {"error": "since must be a whole number >= 0"}
            try:
                return 200, overview(emulator, since)
            except EcpayError as error:  # no batch left before the calendar ends
                return 400, {"error": str(error)}
    return None


def overview(emulator: Emulator, since: int) -> dict[str, Any]:
    """Everything the page shows, in one answer; events after sequence number ``since``."""
    events = emulator.events
    newer = [event for event in events if event.seq > since]
    next_batch = emulator.next_batch()
    return {
        "now": emulator.now.isoformat(),
        "next_batch": next_batch.isoformat(),
        "batch_done_at": _batch_done_at(emulator, next_batch).isoformat(),
        "merchants": [merchant_json(merchant) for merchant in emulator.merchants()],
        "orders": orders_json(emulator),
        "faults": faults_json(emulator),
        "landings": [landing_json(landing) for landing in emulator.pending_landings()],
        "events": [_event_line(event) for event in newer[-EVENTS_PER_POLL:]],
        "events_skipped": max(0, len(newer) - EVENTS_PER_POLL),
        "last_seq": events[-1].seq if events else 0,
        "choices": _CHOICES,
    }


def merchant_json(merchant: MerchantView) -> dict[str, Any]:
    """A :class:`MerchantView` as JSON."""
    return {
        "merchant_id": merchant.merchant_id,
        "auto_close": merchant.auto_close,
        "balance": merchant.balance,
        "platform_id": merchant.platform_id,
    }


def orders_json(emulator: Emulator) -> list[dict[str, Any]]:
    """Every order as JSON with its deadlines and the DoActions applied to it (oldest first)."""
    applied: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}
    for event in emulator.applied_do_actions():
        applied.setdefault((event.merchant_id, event.merchant_trade_no), []).append(
            {
                "seq": event.seq,
                "at": event.at.isoformat(),
                "action": None if event.action is None else event.action.value,
                "amount": event.amount,
                "fault": None if event.fault is None else event.fault.value,
            }
        )
    return [
        {
            **view_json(view),
            "deadlines": _deadlines(emulator, view),
            "actions": applied.get((view.merchant_id, view.merchant_trade_no), []),
        }
        for view in emulator.orders()
    ]


def faults_json(emulator: Emulator) -> list[dict[str, Any]]:
    """The armed fault rules in firing order, with how many requests each still hits."""
    faults = emulator.faults
    return [
        _rule_json(rule, faults.remaining(rule), faults.is_dormant(rule))
        for rule in faults.pending()
    ]


def _rule_json(rule: FaultRule, remaining: int | None, dormant: bool) -> dict[str, Any]:
    return {
        "id": rule.id,
        "fault": rule.fault.value,
        "endpoint": None if rule.endpoint is None else rule.endpoint.name,
        "action": None if rule.action is None else rule.action.value,
        "merchant_trade_no": rule.merchant_trade_no,
        "times": rule.times,
        "remaining": remaining,
        "dormant": dormant,
        "after_do_action": rule.after_do_action,
        "seconds": rule.seconds,
        "status_code": rule.status_code,
        "trans_code": rule.trans_code,
        "land_after": rule.land_after.total_seconds(),
        "writes": rule.writes,
    }


def _deadlines(emulator: Emulator, view: OrderView) -> dict[str, str]:
    """R6's and R7's moments for this order: C refused from ``close_limit``, the notice at
    ``notice``, abandoned once the clock passes ``abandon`` (auto-close off only)."""
    settings = emulator.settings
    authorized = view.authorized_at
    return {
        "close_limit": (authorized + settings.close_limit).isoformat(),
        "notice": (authorized + settings.notice_after).isoformat(),
        "abandon": (authorized + settings.abandon_after).isoformat(),
    }


def _batch_done_at(emulator: Emulator, next_batch: dt.datetime) -> dt.datetime:
    """Where "run the batch" moves the clock: the end of the next batch's DoAction window (R5),
    so the batch has run and DoActions are accepted again."""
    local = next_batch.astimezone(TAIPEI)
    end = dt.datetime.combine(local.date(), emulator.settings.batch_window_end, tzinfo=TAIPEI)
    return max(end, next_batch)


def _event_line(event: Event) -> dict[str, Any]:
    return {**event_json(event), "text": event.describe()}


def _since(query: bytes) -> int | None:
    query_text = query.decode("latin-1")
    values = urllib.parse.parse_qs(query_text, keep_blank_values=True).get("since", ["0"])
    text = values[-1]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


_CHOICES = {
    "faults": [
        {"value": fault.value, "name": fault.name, "applies_change": fault.applies_change}
        for fault in Fault
    ],
    "endpoints": [endpoint.name for endpoint in Endpoint],
    "actions": [action.value for action in Action],
    "kinds": [kind.value for kind in PaymentKind],
}
