"""``examples/asgi_service.py`` under ``uvicorn --workers 4`` on one PostgresJournal, hammered with
duplicate requests: exactly one application per request, counted on ECPay's books (issue 9)."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ecpay_lifecycle import Action, Client, Credentials
from ecpay_lifecycle.emulator import Emulator, serving

MID = "3002607"
KEY, IV = "AsgiExampleKey16", "AsgiExampleIv016"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
ORDERS = 10
DUPLICATES = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(params=["app", "async_app"])
def shop(
    request: pytest.FixtureRequest,
    postgres_dsn: str,
) -> Iterator[tuple[Emulator, str, str]]:
    import psycopg

    # The workers use the system clock; with the merchant's auto-close off (ECPAY_AUTO_CLOSE=0)
    # the 20:15 window (R5) never falls on the test, whatever the time of day.
    emulator = Emulator(now=dt.datetime.now(dt.UTC))
    emulator.add_merchant(MID, KEY, IV, balance=10**9, auto_close=False)
    name = f"asgi{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    parts = dict(item.split("=", 1) for item in postgres_dsn.split())
    journal = f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{name}"
    port = free_port()
    with serving(emulator) as ecpay_url:
        env = {
            **os.environ,
            "ECPAY_MERCHANT_ID": MID,
            "ECPAY_HASH_KEY": KEY,
            "ECPAY_HASH_IV": IV,
            "ECPAY_BASE_URL": ecpay_url,
            "ECPAY_JOURNAL": journal,
            "ECPAY_AUTO_CLOSE": "0",
        }
        server = subprocess.Popen(  # the example as a shop runs it
            [
                sys.executable, "-m", "uvicorn", f"asgi_service:{request.param}",
                "--app-dir", str(EXAMPLES), "--workers", "4",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            ],
            env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.post(f"{url}/ready", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.2)
            yield emulator, url, request.param
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_duplicate_requests_across_four_workers_refund_once(
    shop: tuple[Emulator, str, str],
) -> None:
    emulator, url, app = shop
    orders = [f"W{n}" for n in range(ORDERS)]
    with Client(
        Credentials(MID, KEY, IV, auto_close=False),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    ) as setup:
        for order in orders:
            emulator.authorize(MID, order, 1000)
            setup.capture(order)  # a pending capture: a part of it is refunded with R

    def ask(order: str) -> int:
        body = {"request_id": f"r-{order}", "amount": 300}
        return httpx.post(f"{url}/orders/{order}/refund", json=body, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(ask, [o for o in orders for _ in range(DUPLICATES)]))
    assert set(statuses) <= {200, 202}, statuses
    # Every request asked again later gets the one outcome, replayed.
    for order in orders:
        again = httpx.post(
            f"{url}/orders/{order}/refund",
            json={"request_id": f"r-{order}", "amount": 300},
            timeout=30,
        )
        assert again.status_code == 200
        assert again.json()["replayed"] is True
    for order in orders:
        refunds = [e for e in emulator.applied_do_actions(MID, order) if e.action is Action.REFUND]
        assert [e.amount for e in refunds] == [300], order
    print(  # the figures the closing note quotes
        f"\nuvicorn asgi_service:{app} --workers 4: {ORDERS} orders x {DUPLICATES} duplicate "
        f"requests at once: answers {sorted(set(statuses))} "
        f"({statuses.count(200)} x 200, {statuses.count(202)} x 202), one refund per order"
    )
