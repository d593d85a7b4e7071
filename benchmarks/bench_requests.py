"""Requests per operation against the floors of issue 8 (R21: no confirming query after an
intact reply; Cashier/QueryTrade at most once per order).

Run: ``.venv/bin/python benchmarks/run.py requests``. Counts, not times: each operation runs
through ``Client`` against the in-process emulator and the requests that reach the emulator are
counted per endpoint. Floors: a single-step operation is query + DoAction (2); E then N is
query + E + N (3); the first operation on an order adds one Cashier query; a lost reply adds one
confirming query. Also prints flows per second of ``refund(order, 1)`` on settled orders, against
bare codec round trips measured in the same run.
"""

from __future__ import annotations

import collections
import datetime as dt

import httpx

from _util import interleaved
from ecpay_lifecycle import TAIPEI, Client, Credentials, PaymentKind
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "RequestBenchK016", "RequestBenchI016"
NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)
SHORT = {Endpoint.QUERY_TRADE: "Q", Endpoint.CREDIT_DETAIL: "D", Endpoint.DO_ACTION: "A"}


def main(quick: bool) -> None:
    emulator = Emulator(now=NOW, max_events=10_000)
    emulator.add_merchant(MID, KEY, IV, balance=10**12)
    seen: collections.Counter[str] = collections.Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        endpoint = Endpoint.from_path(request.url.path)
        seen[SHORT[endpoint] if endpoint else "?"] += 1
        return emulator.handler(request)

    client = Client(
        Credentials(MID, KEY, IV), transport=httpx.MockTransport(handler), clock=emulator.clock
    )
    rows: list[tuple[str, int, int]] = []

    def count(label: str, floor: int, call: object) -> None:
        seen.clear()
        assert callable(call)
        call()
        rows.append((label, sum(seen.values()), floor))
        detail = " + ".join(f"{n} {k}" for k, n in sorted(seen.items()))
        print(f"   {label:<48} {sum(seen.values())} requests ({detail}); floor {floor}")

    emulator.authorize(MID, "A1", 1000)
    trade_no = emulator.authorize(MID, "A2", 1000)
    count("capture, first operation on the order", 3, lambda: client.capture("A1"))
    count("refund R(300), kind learned", 2, lambda: client.refund("A1", 300))
    count("refund the rest: E then N", 3, lambda: client.refund("A1"))
    count(
        "capture with kind= and trade_no= given",
        2,
        lambda: client.capture("A2", kind=PaymentKind.ONE_TIME, trade_no=trade_no),
    )
    emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    count("refund R(100), reply lost, query shows it done", 3, lambda: client.refund("A2", 100))
    over = [label for label, got, floor in rows if got > floor]
    print(f"   operations above their floor: {len(over)} of {len(rows)}")

    # Flows per second at the floor (query + R), against bare codec round trips.
    orders = 50 if quick else 400
    for n in range(orders):
        emulator.authorize(MID, f"B{n}", 10_000)
    emulator.set_time(NOW.replace(hour=20, minute=31))
    for n in range(orders):
        client.refund(f"B{n}", 1)  # learn each order's kind once
    codec = AesCodec(KEY, IV)
    cursor = iter(range(10**9))
    payload = {"MerchantID": MID, "MerchantTradeNo": "B1", "Action": "R", "TotalAmount": 1}

    def flow() -> None:
        client.refund(f"B{next(cursor) % orders}", 1)

    def round_trip() -> None:
        codec.decrypt(codec.encrypt(payload))

    seen.clear()
    flow()
    per_flow = sum(seen.values())
    best = interleaved({"flow": flow, "codec": round_trip}, number=20, repeat=3 if quick else 10)
    flow_s, codec_s = best["flow"], best["codec"]
    print(
        f"   refund flow at the floor: {per_flow} requests, {1 / flow_s:,.0f} flows/s, "
        f"{flow_s / codec_s:.0f} codec round trips per flow (floor {2 * per_flow})"
    )
    client.close()
