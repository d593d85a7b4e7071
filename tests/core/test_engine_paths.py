"""The engine's rarer paths: each one a situation a shop meets, counted on ECPay's books.

The engine is docs/ecpay-api.md section 9.

- a query that contradicts a step ECPay accepted, after that step's fence: reported, never
  turned into "not done" (R21), and the plan follows the fresh query (R4);
- a query inside that fence showing the order as it was before the step: nothing is planned
  from it and nothing is sent;
- a lost reply whose confirming query is itself taken after the fence: "not done" at once;
- the R5 window reached between two steps of a plan: the second step is not sent;
- the clock skew measured from replies, and TransCode 104 on a query;
- a retry after the fence of a step no query can settle: ``retry_at`` None (a person decides).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import httpx
import pytest

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    Client,
    ClockOutOfSync,
    Credentials,
    GatewayRefused,
    GatewayStatus,
    InvalidArgumentType,
    OutcomeUnknown,
    RateLimited,
    RuleViolation,
    TransportError,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "EnginePathsKey16", "EnginePathsIv016"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)

Intercept = Callable[[httpx.Request], httpx.Response]


class World:
    def __init__(self) -> None:
        self.emulator = Emulator(now=START)
        self.emulator.add_merchant(MID, KEY, IV, balance=10**9)
        self.intercept: Callable[[httpx.Request, Intercept], httpx.Response] | None = None
        self.client = Client(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(self.handler),
            clock=self.emulator.clock,
            rate_limit_pause=0,  # a 403 here only stops a plan after E; the next call goes out
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.intercept is not None:
            return self.intercept(request, self.emulator.handler)
        return self.emulator.handler(request)

    def applied(self, action: Action, order: str = "A1") -> int:
        return sum(1 for e in self.emulator.applied_do_actions(MID, order) if e.action is action)

    def sent(self, action: Action, order: str = "A1") -> int:
        return sum(
            1
            for e in self.emulator.events
            if e.endpoint is Endpoint.DO_ACTION
            and e.action is action
            and e.merchant_trade_no == order
        )


@pytest.fixture
def world() -> World:
    made = World()
    yield made
    made.client.close()


def pending_capture(world: World) -> None:
    world.emulator.authorize(MID, "A1", 1000)
    world.client.capture("A1")


def test_a_query_behind_an_accepted_step_inside_its_fence_plans_nothing(world: World) -> None:
    pending_capture(world)
    world.emulator.faults.inject(
        Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION, action=Action.ABANDON
    )
    with pytest.raises(RateLimited):
        world.client.refund("A1", idempotency_key="all")  # E accepted, N refused by a 403
    assert world.applied(Action.CANCEL) == 1
    world.emulator.faults.inject(Fault.STALE_QUERY, endpoint=Endpoint.CREDIT_DETAIL)
    with pytest.raises(TransportError, match="behind"):
        world.client.refund("A1", idempotency_key="all")  # shows TO_CLOSE: before E
    assert world.sent(Action.CANCEL) == 1
    assert world.sent(Action.ABANDON) == 1
    outcome = world.client.refund("A1", idempotency_key="all")  # a fresh query: only N left
    assert outcome.plan.describe() == "N(1000)"
    assert world.applied(Action.CANCEL) == world.applied(Action.ABANDON) == 1


def test_a_query_contradicting_an_accepted_step_after_its_fence_is_reported(
    world: World,
) -> None:
    pending_capture(world)
    world.emulator.faults.inject(
        Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION, action=Action.ABANDON
    )
    with pytest.raises(RateLimited):
        world.client.refund("A1", idempotency_key="all")
    world.emulator.advance(dt.timedelta(minutes=16))
    world.emulator.faults.inject(Fault.STALE_QUERY, endpoint=Endpoint.CREDIT_DETAIL, writes=1)
    # Past E's fence the query is believed for planning (E then N again); ECPay refuses the E
    # on an order whose close it already cancelled, and nothing moves twice.
    with pytest.raises(GatewayRefused):
        world.client.refund("A1", idempotency_key="all")
    (record,) = [r for r in world.client.journal.for_order(MID, "A1") if r.key == "all"]
    assert any("R21: the accepted reply stands" in note for note in record.notes)
    assert world.applied(Action.CANCEL) == 1
    assert world.applied(Action.ABANDON) == 0


def test_a_confirming_query_taken_after_the_fence_proves_not_done_at_once(
    world: World,
) -> None:
    world.emulator.authorize(MID, "A1", 1000, at=START - dt.timedelta(days=1))

    def slow_and_lost(request: httpx.Request, forward: Intercept) -> httpx.Response:
        if request.url.path.endswith("/Credit/DoAction"):
            # The reply takes longer than the fence and never arrives; nothing was applied.
            world.intercept = None
            world.emulator.advance(dt.timedelta(minutes=16))
            raise httpx.ReadTimeout("timed out", request=request)
        return forward(request)

    world.intercept = slow_and_lost
    with pytest.raises(TransportError, match="after its fence shows no change"):
        world.client.refund("A1", 300, idempotency_key="k")
    assert world.applied(Action.REFUND) == 0
    outcome = world.client.refund("A1", 300, idempotency_key="k")
    assert outcome.steps_done[0].attempts == 2
    assert world.applied(Action.REFUND) == 1


def test_the_batch_window_reached_between_two_steps_stops_the_second(world: World) -> None:
    pending_capture(world)

    def e_then_the_clock(request: httpx.Request, forward: Intercept) -> httpx.Response:
        response = forward(request)
        if request.url.path.endswith("/Credit/DoAction"):
            world.intercept = None
            world.emulator.set_time(START.replace(hour=20, minute=16))
        return response

    world.intercept = e_then_the_clock
    with pytest.raises(RuleViolation) as caught:
        world.client.refund("A1", idempotency_key="all")
    assert caught.value.rule == "R5"
    assert world.sent(Action.CANCEL) == 1
    assert world.sent(Action.ABANDON) == 0


def test_a_clock_off_by_more_than_ten_minutes_is_named_with_the_skew_measured(
    world: World,
) -> None:
    world.emulator.authorize(MID, "A1", 1000)
    world.emulator.faults.inject(
        Fault.TRANS_CODE_ERROR, endpoint=Endpoint.QUERY_TRADE, trans_code=104
    )
    with pytest.raises(ClockOutOfSync) as caught:
        world.client.query("A1")
    assert caught.value.skew_seconds is not None
    assert abs(caught.value.skew_seconds) <= 1.0
    assert world.client.query("A1").amount == 1000
    assert world.client.clock_skew <= 1.0


def test_a_step_no_query_can_settle_has_no_retry_time_after_the_fence(world: World) -> None:
    world.emulator.authorize(MID, "A1", 1000, at=START - dt.timedelta(days=1))

    def chargeback_then_lost(request: httpx.Request, forward: Intercept) -> httpx.Response:
        if request.url.path.endswith("/Credit/DoAction"):
            world.intercept = None
            forward(request)
            world.emulator.set_status(MID, "A1", GatewayStatus.BANK_RECLAIMING)
            raise httpx.ReadTimeout("timed out", request=request)
        return forward(request)

    world.intercept = chargeback_then_lost
    with pytest.raises(OutcomeUnknown) as first:
        world.client.refund("A1", 300, idempotency_key="k")
    assert first.value.retry_at is not None
    world.emulator.advance(dt.timedelta(minutes=16))
    with pytest.raises(OutcomeUnknown) as later:
        world.client.refund("A1", 300, idempotency_key="k")
    assert later.value.retry_at is None
    assert "a person must check" in str(later.value)
    assert world.sent(Action.REFUND) == 1


def test_declare_with_a_key_that_is_not_a_str_is_refused(world: World) -> None:
    with pytest.raises(InvalidArgumentType):
        world.client.reconcile("A1", declare={1: "done"})  # type: ignore[dict-item]
