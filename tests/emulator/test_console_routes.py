"""The console's server side, without a browser: the page and its files at ``/``, the read-only
admin routes it polls (merchants, orders with deadlines and applied DoActions, faults, the
overview with events since N), and that none of it holds a HashKey or HashIV or points outside
the package. The page itself is driven in a real browser in tests/emulator/test_console.py."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault, MerchantView
from ecpay_lifecycle.emulator._console import _ASSETS, EVENTS_PER_POLL, asset, read_route
from test_emulator_serve import admin
from test_emulator_support import IV, KEY, MID, START, TAIPEI, Wire, make_emulator, ok

MANUAL = "3002608"


def _get(emulator: Emulator, path: str) -> httpx.Response:
    return admin(emulator, "GET", path)


def _emulator() -> Emulator:
    emulator = make_emulator(balance=50_000)
    emulator.add_merchant(MANUAL, KEY, IV, auto_close=False, platform_id="3002599")
    emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MANUAL, "OLD1", 500, at=START - dt.timedelta(days=3))
    return emulator


# -- the emulator's merchants, as values -------------------------------------------------------


def test_merchants_are_views_without_keys() -> None:
    emulator = _emulator()
    assert emulator.merchants() == (
        MerchantView(merchant_id=MID, auto_close=True, balance=50_000, platform_id=None),
        MerchantView(merchant_id=MANUAL, auto_close=False, balance=0, platform_id="3002599"),
    )
    assert Emulator(now=START).merchants() == ()
    text = repr(emulator.merchants())
    assert KEY not in text
    assert IV not in text


# -- the page --------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    emulator = _emulator()
    page = _get(emulator, "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/console/console.js"' in page.text
    script = _get(emulator, "/console/console.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "overview?since=" in script.text
    style = _get(emulator, "/console/console.css")
    assert style.headers["content-type"].startswith("text/css")
    # Nothing from elsewhere: no URL with a scheme or a protocol-relative one, no import.
    for path in _ASSETS:
        text = _get(emulator, path).text
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text), path
        assert KEY not in text
        assert IV not in text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/"),
        ("GET", "/console/other.js"),
        ("GET", "/index.html"),
        ("PUT", "/console/console.js"),
    ],
)
def test_only_a_get_of_a_console_file_is_the_console(method: str, path: str) -> None:
    assert asset(method, path) is None
    response = admin(_emulator(), method, path)
    assert "content-security-policy" not in response.headers
    assert response.status_code in (404, 405)


# -- the read-only admin routes ----------------------------------------------------------------


def test_merchants_route_lists_every_merchant_and_no_key() -> None:
    response = _get(_emulator(), "/_emulator/merchants")
    assert response.status_code == 200
    assert response.json() == [
        {"merchant_id": MID, "auto_close": True, "balance": 50_000, "platform_id": None},
        {"merchant_id": MANUAL, "auto_close": False, "balance": 0, "platform_id": "3002599"},
    ]


def test_orders_route_adds_deadlines_and_the_doactions_applied() -> None:
    emulator = _emulator()
    wire = Wire(emulator)
    assert ok(wire.do(Action.CLOSE, "A1", 1000))
    emulator.set_time(dt.datetime(2026, 8, 3, 20, 35, tzinfo=TAIPEI))  # settled
    emulator.faults.inject(Fault.LOST_REPLY, action=Action.REFUND)
    with pytest.raises(httpx.RemoteProtocolError):
        wire.do(Action.REFUND, "A1", 300)
    refused = wire.do(Action.REFUND, "A1", 5000)  # refused: not an applied DoAction
    assert not ok(refused)
    orders = {
        order["merchant_trade_no"]: order for order in _get(emulator, "/_emulator/orders").json()
    }
    a1 = orders["A1"]
    single = _get(emulator, f"/_emulator/orders/{MID}/A1").json()
    assert {key: a1[key] for key in single} == single  # the same view, and more
    assert (a1["state"], a1["closed_amount"], a1["kind"]) == ("to_close", 700, "one_time")
    assert [(row["status"], row["amount"]) for row in a1["close_rows"]] == [("Captured", 1000)]
    assert [(a["action"], a["amount"], a["fault"]) for a in a1["actions"]] == [
        ("C", 1000, None),
        ("R", 300, "lost_reply"),
    ]
    assert a1["actions"][1]["at"] == "2026-08-03T20:35:00+08:00"
    old = orders["OLD1"]
    assert old["actions"] == []
    authorized = dt.datetime.fromisoformat(old["authorized_at"])
    assert {
        name: dt.datetime.fromisoformat(at) - authorized for name, at in old["deadlines"].items()
    } == {
        "close_limit": dt.timedelta(days=21),
        "notice": dt.timedelta(days=80),
        "abandon": dt.timedelta(days=90),
    }


def test_faults_route_lists_the_armed_rules() -> None:
    emulator = _emulator()
    assert _get(emulator, "/_emulator/faults").json() == []
    body: dict[str, Any] = {"fault": "late_apply", "land_after": 90, "merchant_trade_no": "A1"}
    assert admin(emulator, "POST", "/_emulator/faults", body).status_code == 201
    body = {"fault": "server_error_before_apply", "endpoint": "CREDIT_DETAIL", "times": None}
    assert (
        admin(emulator, "POST", "/_emulator/faults", {**body, "after_do_action": True}).status_code
        == 201
    )
    late, broken = _get(emulator, "/_emulator/faults").json()
    assert (late["fault"], late["endpoint"], late["merchant_trade_no"]) == (
        "late_apply",
        "DO_ACTION",
        "A1",
    )
    assert (late["remaining"], late["land_after"], late["dormant"]) == (1, 90.0, False)
    assert (broken["endpoint"], broken["times"], broken["remaining"]) == (
        "CREDIT_DETAIL",
        None,
        None,
    )
    assert (broken["status_code"], broken["dormant"], broken["after_do_action"]) == (
        502,
        True,
        True,
    )
    assert late["id"] < broken["id"]
    admin(emulator, "DELETE", "/_emulator/faults")
    assert _get(emulator, "/_emulator/faults").json() == []


def test_overview_is_one_poll_with_the_events_since_n() -> None:
    emulator = _emulator()
    first = _get(emulator, "/_emulator/overview").json()
    assert first["now"] == START.isoformat()
    assert first["next_batch"] == "2026-08-03T20:15:00+08:00"
    # "Run the batch" moves past the batch and its DoAction window (R5).
    assert first["batch_done_at"] == "2026-08-03T20:30:00+08:00"
    assert [m["merchant_id"] for m in first["merchants"]] == [MID, MANUAL]
    assert [o["merchant_trade_no"] for o in first["orders"]] == ["A1", "OLD1"]
    assert first["faults"] == first["landings"] == []
    seqs = [event["seq"] for event in first["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert first["last_seq"] == seqs[-1]
    assert first["events_skipped"] == 0
    assert first["events"][0]["text"] == emulator.events[0].describe()
    assert {"lost_reply", "late_apply"} <= {f["value"] for f in first["choices"]["faults"]}
    assert first["choices"]["endpoints"] == ["DO_ACTION", "CREDIT_DETAIL", "QUERY_TRADE"]
    assert first["choices"]["kinds"] == ["one_time", "installment", "bonus", "unionpay"]

    admin(emulator, "POST", "/_emulator/time", {"set": first["batch_done_at"]})
    later = _get(emulator, f"/_emulator/overview?since={first['last_seq']}").json()
    assert [e["kind"] for e in later["events"]] == ["auto_close", "settle", "batch"]
    assert all(e["seq"] > first["last_seq"] for e in later["events"])
    assert later["orders"][0]["state"] == "closed"
    assert _get(emulator, f"/_emulator/overview?since={later['last_seq']}").json()["events"] == []

    emulator.clear_events()
    cleared = _get(emulator, "/_emulator/overview?since=0").json()
    assert (cleared["events"], cleared["last_seq"]) == ([], 0)


def test_overview_carries_at_most_a_window_of_events() -> None:
    emulator = Emulator(now=START)
    for number in range(EVENTS_PER_POLL + 7):
        emulator.add_merchant(str(4000000 + number), KEY, IV)
    view = _get(emulator, "/_emulator/overview").json()
    assert len(view["events"]) == EVENTS_PER_POLL
    assert view["events_skipped"] == 7
    assert view["events"][-1]["seq"] == view["last_seq"] == EVENTS_PER_POLL + 7


@pytest.mark.parametrize(
    "query", ["since=-1", "since=x", "since=", "since=1.5", "since=" + "9" * 19]
)
def test_overview_refuses_a_bad_since(query: str) -> None:
    emulator = _emulator()
    response = _get(emulator, "/_emulator/overview?" + query)
    assert response.status_code == 400
    assert "since" in response.json()["error"]


def test_overview_at_the_end_of_the_calendar_answers_400() -> None:
    emulator = Emulator(now=dt.datetime(9999, 12, 31, 20, 0, tzinfo=TAIPEI))
    response = _get(emulator, "/_emulator/overview")
    assert response.status_code == 400
    assert response.json()["error"]


def test_the_console_routes_only_read() -> None:
    emulator = _emulator()
    assert read_route(emulator, "POST", "orders", b"") is None
    assert read_route(emulator, "GET", "orders/3002607/A1", b"") is None  # the existing route
    assert read_route(emulator, "GET", "nothing", b"") is None
    before = (emulator.orders(), emulator.now, emulator.merchants(), len(emulator.events))
    for route in ("merchants", "orders", "faults", "overview"):
        assert read_route(emulator, "GET", route, b"since=0") is not None
    assert (emulator.orders(), emulator.now, emulator.merchants(), len(emulator.events)) == before
    # The admin routes that write are untouched: POST /_emulator/orders still authorizes.
    body = {"merchant_id": MID, "merchant_trade_no": "B1", "amount": 10}
    assert admin(emulator, "POST", "/_emulator/orders", body).status_code == 201
    assert admin(emulator, "POST", "/_emulator/overview", {}).status_code == 404


def test_no_route_of_the_console_holds_a_key() -> None:
    emulator = _emulator()
    wire = Wire(emulator)
    wire.do(Action.CLOSE, "A1", 1000)
    emulator.faults.inject(Fault.GARBLED_DATA)
    wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"})
    texts = [
        _get(emulator, path).text
        for path in (
            "/_emulator/merchants",
            "/_emulator/orders",
            "/_emulator/faults",
            "/_emulator/overview",
        )
    ]
    assert json.loads(texts[-1])["events"]
    for text in texts:
        assert KEY not in text
        assert IV not in text
        assert KEY[:8] not in text
