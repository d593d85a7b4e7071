"""Emulator throughput, in-process and over loopback (issue 4 benchmark).

Run: ``.venv/bin/python benchmarks/run.py emulator``. Each figure is one request as a test suite
sends it (encrypt the inner data, post, the emulator decrypts, applies, encrypts its reply, the
caller decrypts), printed as requests per second and as a ratio against one bare codec round trip
(``AesCodec.encrypt`` + ``decrypt`` of the same inner data) measured in the same run:

* in-process through ``httpx.MockTransport(emulator.handler)``: a CreditDetail query, and a
  DoAction that alternates C and E on one order (so the order never runs out of state); and the
  emulator's own share, ``emulator.handler`` called on a prebuilt request (no client work);
* over loopback with uvicorn (``serving``): the same query with a keep-alive ``httpx.Client``.

A request costs at least two codec round trips (the caller's and the emulator's); the rest is
httpx, JSON and the emulator's own work under its lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx

from _util import interleaved, report
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator, serving

MID = "3002607"
KEY = "ejCk326UnaZWKisg"
IV = "q9jcZX8Ib9LM8wYk"
NOW = dt.datetime(2026, 8, 3, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
CODEC = AesCodec(KEY, IV)


def setup() -> tuple[Emulator, str]:
    emulator = Emulator(now=NOW, max_events=1000)
    emulator.add_merchant(MID, KEY, IV)
    trade_no = emulator.authorize(MID, "A1", 1000)
    emulator.authorize(MID, "Q1", 1000)
    return emulator, trade_no


def sender(http: httpx.Client, path: str, inner: Callable[[], dict[str, Any]]) -> Callable[[], Any]:
    stamp = int(NOW.timestamp())

    def send() -> Any:
        body = {"MerchantID": MID, "RqHeader": {"Timestamp": stamp}, "Data": CODEC.encrypt(inner())}
        response = http.post(path, content=json.dumps(body, separators=(",", ":")))
        reply = CODEC.decrypt(response.json()["Data"])
        assert reply.get("RtnCode", 1) == 1, reply
        return reply

    return send


def round_trip() -> dict[str, Any]:
    return CODEC.decrypt(CODEC.encrypt(QUERY))


QUERY = {"PlatformID": "", "MerchantID": MID, "MerchantTradeNo": "Q1"}


def workloads(http: httpx.Client, trade_no: str) -> dict[str, Callable[[], Any]]:
    actions = itertools.cycle(("C", "E"))

    def do_action() -> dict[str, Any]:
        return {
            "PlatformID": "",
            "MerchantID": MID,
            "MerchantTradeNo": "A1",
            "TradeNo": trade_no,
            "Action": next(actions),
            "TotalAmount": 1000,
        }

    return {
        "query": sender(http, "/1.0.0/CreditDetail/QueryTrade", lambda: QUERY),
        "doaction": sender(http, "/1.0.0/Credit/DoAction", do_action),
    }


def line(name: str, value: float, baseline: float) -> None:
    print(f"  {report(name, value, baseline)}  = {1 / value:,.0f} requests/s", flush=True)


def handler_only(emulator: Emulator) -> Callable[[], Any]:
    """The emulator's own share: ``handler`` on a prebuilt request (decrypt, apply, encrypt)."""
    body = {
        "MerchantID": MID,
        "RqHeader": {"Timestamp": int(NOW.timestamp())},
        "Data": CODEC.encrypt(QUERY),
    }
    request = httpx.Request(
        "POST",
        "https://ecpayment.ecpay.com.tw/1.0.0/CreditDetail/QueryTrade",
        content=json.dumps(body).encode(),
    )

    def call() -> httpx.Response:
        return emulator.handler(request)

    return call


def in_process(quick: bool) -> None:
    emulator, trade_no = setup()
    number, repeat = (200, 3) if quick else (2000, 7)
    with httpx.Client(
        base_url="https://ecpayment.ecpay.com.tw", transport=httpx.MockTransport(emulator.handler)
    ) as http:
        work = workloads(http, trade_no)
        times = interleaved(
            {"codec": round_trip, "handler": handler_only(emulator), **work},
            number=number,
            repeat=repeat,
        )
    line("emulator.handler alone (query) vs one codec round trip", times["handler"], times["codec"])
    line("in-process CreditDetail query vs one codec round trip", times["query"], times["codec"])
    line("in-process DoAction (C/E) vs one codec round trip", times["doaction"], times["codec"])


def loopback(quick: bool) -> None:
    emulator, trade_no = setup()
    number, repeat = (100, 2) if quick else (1000, 5)
    with serving(emulator) as base_url, httpx.Client(base_url=base_url, timeout=10.0) as http:
        work = workloads(http, trade_no)
        times = interleaved(
            {"codec": round_trip, "query": work["query"], "doaction": work["doaction"]},
            number=number,
            repeat=repeat,
        )
    line(
        "uvicorn loopback CreditDetail query vs one codec round trip",
        times["query"],
        times["codec"],
    )
    line(
        "uvicorn loopback DoAction (C/E) vs one codec round trip", times["doaction"], times["codec"]
    )


def main(quick: bool) -> None:
    in_process(quick)
    loopback(quick)
