"""The emulator's values as JSON, as the admin routes (:mod:`._asgi`) and the console
(:mod:`._console`) answer them: an order, an event, a DoAction in flight. Times are ISO 8601,
enums their values or names; nothing here can hold a HashKey or HashIV."""

from __future__ import annotations

from typing import Any

from ._events import Event, Landing
from ._state import OrderView

__all__ = ["event_json", "landing_json", "view_json"]


def view_json(view: OrderView) -> dict[str, Any]:
    """An :class:`OrderView` as JSON (statuses in both spellings, times in ISO 8601)."""
    return {
        "merchant_id": view.merchant_id,
        "merchant_trade_no": view.merchant_trade_no,
        "trade_no": view.trade_no,
        "trade_id": view.trade_id,
        "amount": view.amount,
        "closed_amount": view.closed_amount,
        "status": view.status.english or view.status.chinese,
        "status_chinese": view.status.chinese,
        "state": view.state.value,
        "kind": view.kind.value,
        "authorized_at": view.authorized_at.isoformat(),
        "refunded_total": view.refunded_total,
        "pending_refund_total": view.pending_refund_total,
        "capture_settled": view.capture_settled,
        "auto_close": view.auto_close,
        "close_rows": [
            {"status": row.status.english, "amount": row.amount, "at": row.at.isoformat()}
            for row in view.close_rows
        ],
    }


def event_json(event: Event) -> dict[str, Any]:
    """An :class:`Event` as JSON."""
    return {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "kind": event.kind.value,
        "merchant_id": event.merchant_id,
        "merchant_trade_no": event.merchant_trade_no,
        "endpoint": None if event.endpoint is None else event.endpoint.name,
        "action": None if event.action is None else event.action.value,
        "amount": event.amount,
        "request": None if event.request is None else dict(event.request),
        "applied": event.applied,
        "reply": None if event.reply is None else dict(event.reply),
        "trans_code": event.trans_code,
        "rtn_code": event.rtn_code,
        "refusal": None if event.refusal is None else event.refusal.value,
        "fault": None if event.fault is None else event.fault.value,
        "note": event.note,
    }


def landing_json(landing: Landing) -> dict[str, Any]:
    """A :class:`Landing` as JSON."""
    return {
        "at": landing.at.isoformat(),
        "received_at": landing.received_at.isoformat(),
        "timestamp": landing.timestamp.isoformat(),
        "merchant_id": landing.merchant_id,
        "merchant_trade_no": landing.merchant_trade_no,
        "action": None if landing.action is None else landing.action.value,
        "amount": landing.amount,
        "request": dict(landing.request),
    }
