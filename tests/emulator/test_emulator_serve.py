"""The emulator over HTTP: the plain ASGI app (admin routes for other languages), uvicorn on
loopback in a thread (faults become real connection failures), and ``serve``'s option parsing."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import pathlib
import subprocess
import sys
from typing import Any

import httpx
import pytest

from ecpay_lifecycle import Action, GatewayStatus, InvalidArgument, PaymentKind
from ecpay_lifecycle.emulator import (
    Emulator,
    Endpoint,
    Fault,
    Refusal,
    RefusalReply,
    ReplyFlavour,
    serving,
)
from ecpay_lifecycle.emulator._serve import add_arguments, build_emulator, run, settings_from_json
from test_emulator_support import IV, KEY, MID, START, Wire, make_emulator, ok


def admin(emulator: Emulator, method: str, path: str, body: Any = None) -> httpx.Response:
    """Call the ASGI app in-process (no server) through httpx.ASGITransport."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=emulator.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            # json=None sends no body; the admin routes still want to be told it is JSON.
            headers = {"Content-Type": "application/json"}
            return await http.request(method, path, json=body, headers=headers)

    return asyncio.run(go())


# -- the ASGI app, in-process ------------------------------------------------------------------


def test_admin_routes_drive_a_whole_flow() -> None:
    emulator = Emulator(now=START)
    assert admin(emulator, "GET", "/_emulator/time").json() == {
        "now": START.isoformat(),
        "next_batch": "2026-08-03T20:15:00+08:00",
        "realtime": False,
    }
    merchant = {"merchant_id": MID, "hash_key": KEY, "hash_iv": IV, "balance": 5}
    assert admin(emulator, "POST", "/_emulator/merchants", merchant).status_code == 201
    created = admin(
        emulator,
        "POST",
        "/_emulator/orders",
        {"merchant_id": MID, "merchant_trade_no": "A1", "amount": 1000, "kind": "installment"},
    )
    assert created.status_code == 201
    trade_no = created.json()["trade_no"]
    assert emulator.order(MID, "A1").kind is PaymentKind.INSTALLMENT
    codec_wire = Wire(emulator)
    # The ECPay endpoints answer through the ASGI app exactly as through MockTransport.
    body = codec_wire.envelope(
        {
            "MerchantID": MID,
            "MerchantTradeNo": "A1",
            "TradeNo": trade_no,
            "Action": "C",
            "TotalAmount": 1000,
        }
    )
    response = admin(emulator, "POST", Endpoint.DO_ACTION.value, body)
    assert ok(codec_wire.codec.decrypt(response.json()["Data"]))
    moved = admin(emulator, "POST", "/_emulator/time", {"set": "2026-08-03T20:20:00+08:00"})
    assert moved.json()["now"] == "2026-08-03T20:20:00+08:00"
    assert admin(emulator, "POST", "/_emulator/time", {"advance_seconds": 600}).status_code == 200
    order = admin(emulator, "GET", f"/_emulator/orders/{MID}/A1").json()
    assert (order["status"], order["closed_amount"], order["state"]) == ("Captured", 1000, "closed")
    assert order["close_rows"][0]["amount"] == 1000
    assert admin(emulator, "GET", f"/_emulator/merchants/{MID}/balance").json() == {"balance": 1005}
    assert admin(emulator, "PUT", f"/_emulator/merchants/{MID}/balance", {"balance": 7}).json() == {
        "balance": 7
    }
    fault = {"fault": "RATE_LIMITED", "endpoint": "CREDIT_DETAIL", "times": 1}
    assert admin(emulator, "POST", "/_emulator/faults", fault).status_code == 201
    assert len(emulator.faults.pending()) == 1
    assert admin(emulator, "DELETE", "/_emulator/faults").status_code == 200
    assert emulator.faults.pending() == ()
    forced = admin(emulator, "PUT", f"/_emulator/orders/{MID}/A1/status", {"status": "銀行追回中"})
    assert forced.json()["status_chinese"] == "銀行追回中"
    events = admin(emulator, "GET", "/_emulator/events").json()
    assert [e["kind"] for e in events][:2] == ["setup", "setup"]
    assert any(e["action"] == "C" and e["applied"] for e in events)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/_emulator/time", {}, 400),
        ("POST", "/_emulator/time", {"advance_seconds": -5}, 400),
        ("POST", "/_emulator/time", {"advance_seconds": 1e300}, 400),
        ("POST", "/_emulator/time", {"advance_seconds": "5"}, 400),
        ("POST", "/_emulator/time", {"set": "2026-08-03T10:00:00"}, 400),
        ("POST", "/_emulator/time", {"set": "yesterday"}, 400),
        ("POST", "/_emulator/merchants", {"merchant_id": MID}, 400),
        ("POST", "/_emulator/merchants", [1, 2], 400),
        ("POST", "/_emulator/orders", {"merchant_id": MID, "merchant_trade_no": "A1"}, 400),
        (
            "POST",
            "/_emulator/orders",
            {"merchant_id": "9", "merchant_trade_no": "B", "amount": 1},
            400,
        ),
        ("GET", f"/_emulator/orders/{MID}/NOPE", None, 400),
        ("PUT", f"/_emulator/orders/{MID}/A1/status", {"status": "whatever"}, 400),
        ("POST", "/_emulator/faults", {"fault": "nope"}, 400),
        ("POST", "/_emulator/faults", {"fault": "lost_reply", "endpoint": "x"}, 400),
        ("POST", "/_emulator/faults", {"fault": "lost_reply", "times": 0}, 400),
        ("POST", "/_emulator/faults", {"fault": "late_apply", "land_after": -1}, 400),
        ("POST", "/_emulator/faults", {"fault": "late_apply", "land_after": "60"}, 400),
        ("POST", "/_emulator/faults", {"fault": "late_apply", "land_after": 1e300}, 400),
        ("POST", "/_emulator/faults", {"fault": "lost_reply", "land_after": 60}, 400),
        ("POST", "/_emulator/faults", {"fault": "stale_query", "writes": 0}, 400),
        ("POST", "/_emulator/faults", {"fault": "stale_query", "endpoint": "DO_ACTION"}, 400),
        ("POST", "/_emulator/faults", {"fault": "lost_reply", "merchant_trade_no": "A-1"}, 400),
        ("POST", "/_emulator/faults", {"fault": "lost_reply", "after_do_action": "yes"}, 400),
        ("DELETE", "/_emulator/landings", None, 405),
        ("DELETE", "/_emulator/time", None, 405),
        ("GET", "/_emulator/nothing", None, 404),
        ("GET", "/elsewhere", None, 404),
        ("GET", Endpoint.DO_ACTION.value, None, 405),
    ],
)
def test_admin_routes_refuse_bad_input_and_change_nothing(
    method: str, path: str, body: Any, status: int
) -> None:
    emulator = make_emulator()
    emulator.authorize(MID, "A1", 1000)
    before = (emulator.orders(), emulator.now, emulator.faults.pending())
    response = admin(emulator, method, path, body)
    assert response.status_code == status
    if path.startswith("/_emulator/"):
        assert response.json()["error"]
    assert (emulator.orders(), emulator.now, emulator.faults.pending()) == before


def test_admin_faults_take_the_new_keywords_and_landings_are_listed() -> None:
    emulator = make_emulator()
    trade_no = emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    armed = [
        {"fault": "late_apply", "land_after": 90, "seconds": 0.01, "merchant_trade_no": "A1"},
        {"fault": "STALE_QUERY", "writes": 2},
        {"fault": "rate_limited", "endpoint": "CREDIT_DETAIL", "after_do_action": True},
    ]
    for body in armed:
        assert admin(emulator, "POST", "/_emulator/faults", body).status_code == 201
    late, stale, dormant = emulator.faults.pending()
    assert (late.fault, late.land_after, late.merchant_trade_no, late.endpoint) == (
        Fault.LATE_APPLY,
        dt.timedelta(seconds=90),
        "A1",
        Endpoint.DO_ACTION,
    )
    assert (stale.fault, stale.writes, stale.endpoint) == (
        Fault.STALE_QUERY,
        2,
        Endpoint.CREDIT_DETAIL,
    )
    assert dormant.after_do_action
    assert emulator.faults.is_dormant(dormant)
    assert admin(emulator, "GET", "/_emulator/landings").json() == []
    close = {
        "MerchantID": MID,
        "MerchantTradeNo": "A1",
        "TradeNo": trade_no,
        "Action": "C",
        "TotalAmount": 1000,
    }
    # Through the ASGI app a late-applied DoAction hangs ``seconds`` and answers 504.
    assert (
        admin(emulator, "POST", Endpoint.DO_ACTION.value, wire.envelope(close)).status_code == 504
    )
    (landing,) = admin(emulator, "GET", "/_emulator/landings").json()
    assert landing == {
        "at": (START + dt.timedelta(seconds=90)).isoformat(),
        "received_at": START.isoformat(),
        "timestamp": START.astimezone(dt.UTC).isoformat(),
        "merchant_id": MID,
        "merchant_trade_no": "A1",
        "action": "C",
        "amount": 1000,
        "request": close,
    }
    assert not emulator.faults.is_dormant(dormant)  # the DoAction woke it
    assert admin(emulator, "POST", "/_emulator/faults", {"fault": "lost_reply"}).status_code == 201
    assert admin(emulator, "DELETE", "/_emulator/faults").status_code == 200
    assert len(emulator.pending_landings()) == 1  # clearing faults does not recall it
    admin(emulator, "POST", "/_emulator/time", {"advance_seconds": 90})
    assert admin(emulator, "GET", "/_emulator/landings").json() == []
    assert (
        admin(emulator, "GET", f"/_emulator/orders/{MID}/A1").json()["status"] == "To be captured"
    )
    events = admin(emulator, "GET", "/_emulator/events").json()
    assert events[-1]["fault"] == "late_apply"
    assert events[-1]["applied"] is True


def test_admin_body_that_is_not_json() -> None:
    emulator = make_emulator()

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=emulator.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            headers = {"Content-Type": "application/json"}
            return await http.post("/_emulator/time", content=b"{nope", headers=headers)

    response = asyncio.run(go())
    assert response.status_code == 400
    assert response.json() == {"error": "body is not JSON"}


# -- uvicorn on loopback, in a thread ----------------------------------------------------------


def test_serving_over_loopback_with_real_connection_failures() -> None:
    emulator = make_emulator(balance=10_000)
    emulator.authorize(MID, "A1", 1000)
    wire = Wire(emulator)
    with (
        serving(emulator) as base_url,
        httpx.Client(base_url=base_url, timeout=5.0) as patient,
        httpx.Client(base_url=base_url, timeout=0.2) as hasty,
    ):
        assert base_url.startswith("http://127.0.0.1:")
        wire.http = patient
        assert ok(wire.do(Action.CLOSE, "A1", 1000))
        assert wire.detail("A1")["RtnValue"]["Status"] == "To be captured"

        emulator.faults.inject(Fault.LOST_REPLY, action=Action.REFUND)
        with pytest.raises(httpx.RemoteProtocolError):
            wire.do(Action.REFUND, "A1", 100)
        assert emulator.order(MID, "A1").refunded_total == 100  # applied, reply lost

        emulator.faults.inject(Fault.CONNECTION_RESET, action=Action.REFUND)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            wire.do(Action.REFUND, "A1", 100)
        assert emulator.order(MID, "A1").refunded_total == 200

        emulator.faults.inject(Fault.TIMEOUT_AFTER_APPLY, action=Action.REFUND, seconds=1.0)
        wire.http = hasty
        with pytest.raises(httpx.ReadTimeout):
            wire.do(Action.REFUND, "A1", 100)
        assert emulator.order(MID, "A1").refunded_total == 300

        emulator.faults.inject(Fault.LATE_APPLY, seconds=0.5, land_after=dt.timedelta(0))
        with pytest.raises(httpx.ReadTimeout):
            wire.do(Action.REFUND, "A1", 100)
        assert emulator.order(MID, "A1").refunded_total == 300  # not yet: in flight
        wire.http = patient
        assert wire.detail("A1")["RtnValue"]["ClsAmt"] == 600  # landed at the next request

        emulator.faults.inject(Fault.RATE_LIMITED)
        limited = wire.post(Endpoint.CREDIT_DETAIL, {"MerchantID": MID, "MerchantTradeNo": "A1"})
        assert limited.status_code == 403
        emulator.faults.inject(Fault.SERVER_ERROR_BEFORE_APPLY, status_code=503)
        assert wire.post(Endpoint.DO_ACTION, {}).status_code == 503

        assert patient.get("/_emulator/time").json()["now"] == START.isoformat()
    wire.http.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/_emulator/time", timeout=2.0)


# -- ``serve``: options, seed file, the real command -------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_build_emulator_from_seed_and_flags(tmp_path: pathlib.Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "start": "2026-08-03T10:00:00+08:00",
                "settings": {
                    "credit_detail_flavour": "aio",
                    "close_limit": 3600,
                    "batch_time": "19:00",
                    "full_amount_actions": ["E", "N"],
                    "unionpay_start_status": "Captured",
                    "refusals": {"over_date": [42, "error_overDAY"]},
                    "stack_pending_refunds": False,
                },
                "merchants": [
                    {"merchant_id": "2000132", "hash_key": KEY, "hash_iv": IV, "auto_close": False}
                ],
                "orders": [
                    {"merchant_id": "2000132", "merchant_trade_no": "S1", "amount": 300},
                    {
                        "merchant_id": "2000132",
                        "merchant_trade_no": "S2",
                        "amount": 400,
                        "kind": "unionpay",
                        "at": "2026-08-02T10:00:00+08:00",
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    args = parse(
        "--frozen",
        "--seed",
        str(seed),
        "--merchant",
        MID,
        "--manual-close",
        "--balance",
        "50",
        "--order",
        f"{MID}:F1:700:bonus",
        "--order",
        f"{MID}:F2:800",
    )
    emulator = build_emulator(args, environ={"ECPAY_EMULATOR_MERCHANTS": f"{MID}:{KEY}:{IV}"})
    assert emulator.now == START
    assert emulator.settings.credit_detail_flavour is ReplyFlavour.AIO
    assert emulator.settings.close_limit == dt.timedelta(hours=1)
    assert emulator.settings.batch_time == dt.time(19, 0)
    assert emulator.settings.refusal(Refusal.OVER_DATE) == RefusalReply(42, "error_overDAY")
    assert emulator.settings.full_amount_actions == {Action.CANCEL, Action.ABANDON}
    assert emulator.settings.stack_pending_refunds is False
    assert emulator.order("2000132", "S2").status is GatewayStatus.CAPTURED
    assert emulator.order(MID, "F1").kind is PaymentKind.BONUS
    assert emulator.order(MID, "F1").auto_close is False
    assert emulator.balance(MID) == 50
    assert emulator.order(MID, "F2").amount == 800


@pytest.mark.parametrize(
    "argv",
    [
        ("--start", "2026-08-03T10:00:00"),
        ("--start", "soon"),
        ("--merchant", "3002607:onlykey"),
        ("--merchant", f"{MID}:{KEY}:{IV}"),  # secrets never on the command line
        ("--order", f"{MID}:A1:100"),  # no such merchant
        ("--merchant", MID, "--order", f"{MID}:A1:ten"),
        ("--merchant", MID, "--order", f"{MID}:A1:10:weird"),
        ("--seed", "/nonexistent/seed.json"),
    ],
)
def test_build_emulator_refuses_bad_options(argv: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgument):
        build_emulator(parse(*argv))


@pytest.mark.parametrize(
    "settings",
    [
        {"nope": 1},
        {"close_limit": "21 days"},
        {"batch_time": "25:00"},
        {"credit_detail_flavour": "xml"},
        {"refusals": {"over_date": [1, "ok"]}},
        {"full_amount_actions": ["Z"]},
        [],
    ],
)
def test_settings_from_json_refuses_bad_values(settings: Any) -> None:
    with pytest.raises(InvalidArgument):
        settings_from_json(settings)


def test_seed_file_that_is_not_a_json_object(tmp_path: pathlib.Path) -> None:
    for text in ("[1]", "{nope", '{"merchants": {}}'):
        seed = tmp_path / "seed.json"
        seed.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidArgument):
            build_emulator(parse("--seed", str(seed)))


def test_run_reports_bad_options_and_missing_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse("--start", "nonsense")) == 2
    assert "ecpay-lifecycle serve: error:" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert run(parse()) == 2
    err = capsys.readouterr().err
    assert "pip install 'ecpay-lifecycle[serve]'" in err
    with (
        pytest.raises(InvalidArgument, match=r"ecpay-lifecycle\[serve\]"),
        serving(make_emulator()),
    ):
        pass


def test_serve_command_runs_and_stops_cleanly(tmp_path: pathlib.Path) -> None:
    """The real thing in a child process: --port 0, a seed, one request, SIGTERM, clean stop."""
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "merchants": [{"merchant_id": MID, "hash_key": KEY, "hash_iv": IV}],
                "orders": [{"merchant_id": MID, "merchant_trade_no": "A1", "amount": 100}],
            }
        ),
        encoding="utf-8",
    )
    code = (
        "import sys; from ecpay_lifecycle.emulator._serve import _main; "
        "sys.argv = ['serve'] + sys.argv[1:]; sys.exit(_main())"
    )
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--port",
            "0",
            "--seed",
            str(seed),
            "--start",
            START.isoformat(),
            "--frozen",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        banner = child.stdout.readline()
        assert banner.startswith("ECPay emulator on http://127.0.0.1:"), banner
        base_url = banner.split()[3]
        order = httpx.get(f"{base_url}/_emulator/orders/{MID}/A1", timeout=5.0).json()
        assert (order["amount"], order["status"]) == (100, "Authorized")
        assert KEY not in banner
    finally:
        child.terminate()
        try:
            _out, err = child.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
    # Graceful: in-flight requests finish, and SIGTERM is a clean stop (exit status 0).
    assert child.returncode == 0, err
    assert "Finished server process" in err, (child.returncode, err, _out)
    assert "Traceback" not in err
    assert KEY not in err


def test_listening_socket_is_loopback_tcp_so_replies_are_not_delayed() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it each reply over
    loopback waits for a delayed ACK (~40 ms). Also: the emulator listens on 127.0.0.1 only."""
    import socket

    from ecpay_lifecycle.emulator._serve import _bind

    sock = _bind(0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    with pytest.raises(InvalidArgument):
        _bind(70000)


def drive(emulator: Emulator, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[Any]:
    """Call the ASGI app directly with scripted ``receive`` messages; return what it sent."""
    sent: list[Any] = []
    script = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(script)

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(emulator.asgi_app(scope, receive, send))
    return sent


def test_asgi_lifespan_other_scopes_and_oversized_bodies() -> None:
    emulator = make_emulator()
    lifespan = drive(
        emulator,
        {"type": "lifespan"},
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
    )
    assert [m["type"] for m in lifespan] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert drive(emulator, {"type": "websocket"}, []) == []
    chunk = {"type": "http.request", "body": b"x" * (1 << 19), "more_body": True}
    sent = drive(
        emulator, {"type": "http", "method": "POST", "path": Endpoint.DO_ACTION.value}, [chunk] * 3
    )
    assert sent[0]["status"] == 413
    # A client that disconnects mid-body gets the bad envelope it sent, and nothing changes.
    sent = drive(
        emulator,
        {"type": "http", "method": "POST", "path": Endpoint.DO_ACTION.value},
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}],
    )
    assert json.loads(sent[1]["body"])["TransCode"] == 999
    assert repr(emulator.asgi_app).startswith("<AsgiApp of <Emulator now=")
