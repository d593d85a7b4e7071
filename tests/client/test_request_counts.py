"""Fewer round trips (issue 8, R21): requests per operation against the floors.

With an intact reply a single-step operation is one query and one DoAction; E then N is one
query, E and N; Cashier/QueryTrade runs at most once per order, because the kind learned once is
kept in the journal (or the caller passes ``kind=`` and ``trade_no=``). A confirming query is
sent only after a lost or doubtful reply. Counted at the transport.
"""

from __future__ import annotations

import collections
import datetime as dt

import httpx
import pytest

from ecpay_lifecycle import TAIPEI, Client, Credentials, OutcomeUnknown, PaymentKind
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "RequestCountK016", "RequestCountI016"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)


class Counted:
    def __init__(self) -> None:
        self.emulator = Emulator(now=START)
        self.emulator.add_merchant(MID, KEY, IV, balance=10**9)
        self.paths: collections.Counter[str] = collections.Counter()
        self.client = Client(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(self.handler),
            clock=self.emulator.clock,
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.paths[Endpoint.from_path(request.url.path) or request.url.path] += 1
        return self.emulator.handler(request)

    def take(self) -> collections.Counter[str]:
        taken = self.paths.copy()
        self.paths.clear()
        return taken


@pytest.fixture
def counted() -> Counted:
    return Counted()


def test_an_intact_reply_needs_no_confirming_query(counted: Counted) -> None:
    counted.emulator.authorize(MID, "A1", 1000)
    counted.client.capture("A1")
    # The first operation on an order learns its kind: Cashier + CreditDetail + C.
    assert counted.take() == {
        Endpoint.QUERY_TRADE: 1,
        Endpoint.CREDIT_DETAIL: 1,
        Endpoint.DO_ACTION: 1,
    }
    counted.client.refund("A1", 300)
    assert counted.take() == {Endpoint.CREDIT_DETAIL: 1, Endpoint.DO_ACTION: 1}
    counted.client.refund("A1")  # the rest of a pending capture: E then N
    assert counted.take() == {Endpoint.CREDIT_DETAIL: 1, Endpoint.DO_ACTION: 2}


def test_kind_and_trade_no_from_the_caller_skip_the_cashier_query(counted: Counted) -> None:
    trade_no = counted.emulator.authorize(MID, "A1", 1000)
    outcome = counted.client.capture("A1", kind=PaymentKind.ONE_TIME, trade_no=trade_no)
    assert outcome.final.state.value == "to_close"
    assert counted.take() == {Endpoint.CREDIT_DETAIL: 1, Endpoint.DO_ACTION: 1}


def test_a_lost_reply_costs_one_confirming_query(counted: Counted) -> None:
    counted.emulator.authorize(MID, "A1", 1000)
    counted.client.capture("A1")
    counted.take()
    counted.emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    counted.client.refund("A1", 300)  # the query shows it done
    assert counted.take() == {Endpoint.CREDIT_DETAIL: 2, Endpoint.DO_ACTION: 1}
    counted.emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(OutcomeUnknown):
        counted.client.refund("A1", 200)
    assert counted.take() == {Endpoint.CREDIT_DETAIL: 2, Endpoint.DO_ACTION: 1}


def test_the_cashier_query_runs_at_most_once_per_order(counted: Counted) -> None:
    for order in ("A1", "B2", "C3"):
        counted.emulator.authorize(MID, order, 1000)
    for _ in range(2):
        for order in ("A1", "B2", "C3"):
            counted.client.refund(order, 100, capture_first=True)
    assert counted.paths[Endpoint.QUERY_TRADE] == 3


def test_a_kind_the_caller_gives_that_contradicts_the_journal_is_refused(
    counted: Counted,
) -> None:
    counted.emulator.authorize(MID, "A1", 1000)
    counted.client.capture("A1")
    counted.take()
    with pytest.raises(ValueError, match="trade_no"):
        counted.client.refund("A1", 100, trade_no="9999999999999999")
    assert counted.take() == {}
