"""Complete refund flows per second through ``Client`` against the in-process emulator.

Run: ``.venv/bin/python benchmarks/run.py flows``. One flow is what ``client.refund(order, 1)``
does on a closed order: the R4 query (CreditDetail for the state; Cashier/QueryTrade for the
kind only the first time an order is seen, since the journal keeps it), the planner and R(1),
with no confirming query after ECPay's intact reply (R21). Printed as flows per second and
against the cost of bare codec round trips (``AesCodec.encrypt`` + ``decrypt``) measured in the
same run.
Each request costs two codec round trips (the client's and the emulator's), so twice the
requests per flow (counted from the emulator's event log) is the floor a flow cannot go below.
"""

from __future__ import annotations

import datetime as dt

import httpx

from _util import interleaved
from ecpay_lifecycle import TAIPEI, Client, Credentials
from ecpay_lifecycle._codec import AesCodec
from ecpay_lifecycle.emulator import Emulator

MID = "3002607"
KEY, IV = "FlowBenchKey0123", "FlowBenchIv01234"
NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)
PAYLOAD = {
    "PlatformID": "",
    "MerchantID": MID,
    "MerchantTradeNo": "B1",
    "TradeNo": "2411250000000001",
    "Action": "R",
    "TotalAmount": 1,
}


def main(quick: bool) -> None:
    orders = 50 if quick else 400
    amount = 10_000
    emulator = Emulator(now=NOW, max_events=1000)
    emulator.add_merchant(MID, KEY, IV, balance=10**12)
    for n in range(orders):
        emulator.authorize(MID, f"B{n}", amount)
    emulator.set_time(NOW.replace(hour=20, minute=31))  # the batch closed every order
    client = Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    )
    codec = AesCodec(KEY, IV)
    cursor = iter(range(10**9))

    def flow() -> None:
        # Round-robin over the orders; each refund of 1 TWD leaves plenty for the next one.
        client.refund(f"B{next(cursor) % orders}", 1)

    def codec_round_trip() -> None:
        codec.decrypt(codec.encrypt(PAYLOAD))

    for _ in range(orders):
        flow()  # each order seen once: its kind is in the journal from now on
    emulator.clear_events()
    flow()
    requests = len([e for e in emulator.events if e.endpoint is not None])
    number, repeat = (20, 3) if quick else (200, 5)
    times = interleaved({"flow": flow, "codec": codec_round_trip}, number=number, repeat=repeat)
    per_flow, per_codec = times["flow"], times["codec"]
    print(
        f"refund flow ({requests} requests: query and R, no confirming query) through Client: "
        f"{1 / per_flow:,.0f} flows/s ({per_flow * 1e6:,.0f} µs)"
    )
    print(
        f"   = {per_flow / per_codec:.1f} bare codec round trips per flow "
        f"({per_codec * 1e6:.1f} µs each; the floor is {2 * requests}: two per request)"
    )
    client.close()
