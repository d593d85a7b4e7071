"""HTTP 403 is remembered (issue 11, item 6; docs/ecpay-api.md section 2).

After ECPay answers 403 ("calls came too fast, wait 30 minutes") a client sends nothing more to
ECPay for ``rate_limit_pause``: every call raises ``RateLimited`` with ``retry_at`` before anything
is recorded or sent, instead of sending into another 403. Requests are counted at the transport
and money on the emulator's books.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    Client,
    Credentials,
    InvalidArgument,
    OutcomeUnknown,
    RateLimited,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "RateLimitKey0016", "RateLimitIv00016"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
PAUSE = dt.timedelta(minutes=30)


class Shop:
    def __init__(self, **options: object) -> None:
        self.emulator = Emulator(now=START)
        self.emulator.add_merchant(MID, KEY, IV, balance=10**9)
        self.sent: collections.Counter[str] = collections.Counter()
        self.client = Client(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(self.handler),
            clock=self.emulator.clock,
            **options,  # type: ignore[arg-type]
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.sent[str(Endpoint.from_path(request.url.path))] += 1
        return self.emulator.handler(request)

    def settled(self, order: str, amount: int = 1000) -> None:
        self.emulator.authorize(MID, order, amount, at=self.emulator.now - dt.timedelta(days=1))

    def refunds(self, order: str) -> list[int]:
        return [
            e.amount or 0
            for e in self.emulator.applied_do_actions(MID, order)
            if e.action is Action.REFUND
        ]

    def total(self) -> int:
        return sum(self.sent.values())


def test_a_403_on_a_query_stops_every_call_until_the_pause_is_over() -> None:
    shop = Shop()
    shop.settled("A1")
    shop.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL)
    with pytest.raises(RateLimited) as first:
        shop.client.refund("A1", 300, idempotency_key="k1")
    assert first.value.retry_at == START + PAUSE
    assert shop.client.rate_limited_until == START + PAUSE
    before = shop.total()
    for call in (
        lambda: shop.client.refund("A1", 300, idempotency_key="k1"),
        lambda: shop.client.query("A1"),
        lambda: shop.client.capture("A1"),
    ):
        with pytest.raises(RateLimited, match="sends nothing") as again:
            call()
        assert again.value.retry_at == START + PAUSE
    assert shop.total() == before  # nothing was sent into another 403
    shop.emulator.advance(PAUSE)
    assert shop.client.rate_limited_until is None
    outcome = shop.client.refund("A1", 300, idempotency_key="k1")
    assert not outcome.replayed
    assert shop.refunds("A1") == [300]


def test_a_403_on_doaction_records_not_done_and_the_retry_sends_once_after_the_pause() -> None:
    shop = Shop()
    shop.settled("A2")
    shop.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(RateLimited):
        shop.client.refund("A2", 300, idempotency_key="k2")
    record = shop.client.journal.get(MID, "k2")
    assert record is not None
    assert record.open_attempt is None  # 403: not processed
    dos = shop.sent["DoAction"]
    with pytest.raises(RateLimited):
        shop.client.refund("A2", 300, idempotency_key="k2")
    assert shop.sent["DoAction"] == dos
    assert shop.refunds("A2") == []
    shop.emulator.advance(PAUSE + dt.timedelta(seconds=1))
    shop.client.refund("A2", 300, idempotency_key="k2")
    assert shop.refunds("A2") == [300]


def test_the_sweeper_stops_at_once_while_a_403_is_remembered() -> None:
    shop = Shop()
    for order in ("S1", "S2"):
        shop.settled(order)
        shop.emulator.faults.inject(
            Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION, merchant_trade_no=order
        )
        with pytest.raises(OutcomeUnknown):
            shop.client.refund(order, 100, idempotency_key=f"k-{order}")
    shop.emulator.advance(dt.timedelta(minutes=16))
    shop.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL)
    report = shop.client.sweep()
    assert report.stopped is not None
    before = shop.total()
    again = shop.client.sweep()
    assert again.stopped is not None
    assert "sends nothing" in again.stopped
    assert shop.total() == before
    shop.emulator.advance(PAUSE)
    done = shop.client.sweep()
    assert done.stopped is None
    assert done.resolved == 2


def test_a_pause_of_zero_remembers_nothing() -> None:
    shop = Shop(rate_limit_pause=0)
    shop.settled("Z1")
    shop.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL)
    with pytest.raises(RateLimited) as caught:
        shop.client.query("Z1")
    assert caught.value.retry_at is None
    assert shop.client.rate_limited_until is None
    assert shop.client.query("Z1").closed_amount == 1000


@pytest.mark.parametrize("pause", [-1, float("nan"), "30"])
def test_a_bad_pause_is_a_typed_error(pause: object) -> None:
    with pytest.raises((InvalidArgument, TypeError)):
        Shop(rate_limit_pause=pause)


@settings(max_examples=40, deadline=None)
@given(
    pause=st.integers(1, 7200),
    waits=st.lists(st.integers(0, 9000), min_size=1, max_size=5),
)
def test_nothing_is_sent_before_the_pause_ends_and_calls_go_out_after(
    pause: int, waits: list[int]
) -> None:
    shop = Shop(rate_limit_pause=pause)
    shop.settled("P1")
    shop.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL)
    with pytest.raises(RateLimited):
        shop.client.query("P1")
    until = START + dt.timedelta(seconds=pause)
    for wait in waits:
        shop.emulator.advance(dt.timedelta(seconds=wait))
        before = shop.total()
        if shop.emulator.now < until:
            with pytest.raises(RateLimited) as caught:
                shop.client.query("P1")
            assert caught.value.retry_at == until
            assert shop.total() == before
        else:
            shop.client.query("P1")
            assert shop.total() > before


def test_the_async_client_remembers_too() -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        emulator = Emulator(now=START)
        emulator.add_merchant(MID, KEY, IV, balance=10**9)
        emulator.authorize(MID, "AS1", 1000, at=START - dt.timedelta(days=1))
        sent = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal sent
            sent += 1
            return await emulator.async_handler(request)

        emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION)
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(handler),
            clock=emulator.clock,
        ) as client:
            with pytest.raises(RateLimited):
                await client.refund("AS1", 200, idempotency_key="a")
            first = sent
            with pytest.raises(RateLimited):
                await client.refund("AS1", 200, idempotency_key="a")
            second = sent
            emulator.advance(PAUSE)
            await client.refund("AS1", 200, idempotency_key="a")
        refunds = [e.amount or 0 for e in emulator.applied_do_actions(MID, "AS1")]
        return first, second, refunds

    first, second, refunds = asyncio.run(scenario())
    assert second == first
    assert refunds == [200]
