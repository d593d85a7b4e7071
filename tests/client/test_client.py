"""Client and AsyncClient against the emulator: never move money twice.

The wire is docs/ecpay-api.md sections 2-5, unknown outcomes section 9.

Every test runs twice, once through ``Client`` and once through ``AsyncClient`` (the ``harness``
fixture drives both through the same calls), against :class:`ecpay_lifecycle.emulator.Emulator`
behind ``httpx.MockTransport``. Requests are counted at the transport, DoActions by the
emulator's event log, so "sends nothing" and "sent exactly once" are facts, not hopes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest

from ecpay_lifecycle import (
    STAGE_URL,
    TAIPEI,
    Action,
    AsyncClient,
    AttemptStatus,
    Client,
    ClockOutOfSync,
    ConfigurationError,
    Credentials,
    EcpayError,
    EnvelopeRejected,
    GatewayRefused,
    GatewayStatus,
    InMemoryJournal,
    Intent,
    InvalidArgument,
    InvalidArgumentType,
    OperationStatus,
    OrderLocked,
    Outcome,
    OutcomeUnknown,
    PaymentKind,
    RateLimited,
    RuleViolation,
    ServiceNotEnabled,
    State,
    TransportError,
    Verdict,
    WrongCredentials,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, Fault

MID = "3002607"
HASH_KEY = "ejCk326UnaZWKisg"
HASH_IV = "q9jcZX8Ib9LM8wYk"
CREDENTIALS = Credentials(MID, HASH_KEY, HASH_IV)
START = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)

Intercept = Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]


class Harness:
    """One emulator and clients of one flavour, called the same way whatever the flavour.

    Async clients run on one event loop per test; a call on the facade runs the coroutine to
    completion. ``intercept`` may wrap the emulator for one test (to break the world in ways
    the emulator's faults do not).
    """

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour
        self.emulator = Emulator(now=START)
        self.emulator.add_merchant(MID, HASH_KEY, HASH_IV, balance=1_000_000)
        self.requests = 0
        self.intercept: Intercept | None = None
        self.loop = asyncio.new_event_loop() if flavour == "async" else None
        self._clients: list[Client | AsyncClient] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.intercept is not None:
            return self.intercept(request, self.emulator.handler)
        return self.emulator.handler(request)

    def client(self, **kwargs: Any) -> Any:
        kwargs.setdefault("clock", self.emulator.clock)
        credentials = kwargs.pop("credentials", CREDENTIALS)
        transport = httpx.MockTransport(self.handler)
        client: Client | AsyncClient
        if self.loop is None:
            client = Client(credentials, transport=transport, **kwargs)
        else:
            client = AsyncClient(credentials, transport=transport, **kwargs)
        self._clients.append(client)
        return _Facade(client, self.loop)

    def authorize(self, order: str = "A1", amount: int = 1000, **kwargs: Any) -> str:
        return self.emulator.authorize(MID, order, amount, **kwargs)

    def sent(self, action: Action, order: str = "A1") -> int:
        """DoActions with ``action`` that reached the emulator's door for ``order``."""
        return sum(
            1
            for event in self.emulator.events
            if event.kind is EventKind.REQUEST
            and event.endpoint is Endpoint.DO_ACTION
            and event.action is action
            and (event.request or {}).get("MerchantTradeNo") == order
        )

    def applied(self, action: Action) -> int:
        return sum(
            1
            for event in self.emulator.events
            if event.endpoint is Endpoint.DO_ACTION and event.action is action and event.applied
        )

    def refused(self) -> int:
        return sum(1 for event in self.emulator.events if event.refusal is not None)

    def state(self, order: str = "A1") -> tuple[State, int]:
        snapshot = self.emulator.snapshot(MID, order)
        return snapshot.state, snapshot.closed_amount

    def close(self) -> None:
        for client in self._clients:
            if isinstance(client, Client):
                client.close()
            elif self.loop is not None:
                self.loop.run_until_complete(client.aclose())
        if self.loop is not None:
            self.loop.close()


class _Facade:
    """Calls a Client directly, or an AsyncClient's coroutines to completion on the loop."""

    def __init__(self, client: Client | AsyncClient, loop: asyncio.AbstractEventLoop | None):
        self.raw = client
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.raw, name)
        if self._loop is None or not inspect.iscoroutinefunction(attribute):
            return attribute
        loop = self._loop

        def run(*args: Any, **kwargs: Any) -> Any:
            return loop.run_until_complete(attribute(*args, **kwargs))

        return run


@pytest.fixture(params=["sync", "async"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    made = Harness(request.param)
    yield made
    made.close()


def captured(h: Harness, order: str = "A1", amount: int = 1000) -> str:
    """An order captured and settled by the 20:15 batch: Closed for ``amount``."""
    trade_no = h.authorize(order, amount)
    h.emulator.set_time(h.emulator.next_batch() + dt.timedelta(minutes=20))  # after R5's window
    assert h.state(order) == (State.CLOSED, amount)
    return trade_no


def pending_capture(h: Harness, client: Any, order: str = "A1", amount: int = 1000) -> None:
    h.authorize(order, amount)
    client.capture(order)
    assert h.state(order) == (State.TO_CLOSE, amount)


def fail_the_confirming_query(h: Harness) -> None:
    """The CreditDetail query right after the next DoAction fails to connect (once)."""
    armed: list[bool] = []

    def intercept(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if request.url.path.endswith("/Credit/DoAction"):
            armed.append(True)
        elif armed and request.url.path.endswith("/CreditDetail/QueryTrade"):
            h.intercept = None
            raise httpx.ConnectTimeout("connect timed out", request=request)
        return forward(request)

    h.intercept = intercept


def past_the_fence(h: Harness, minutes: int = 16) -> None:
    """Move ECPay's clock past R22's fence: Timestamp + 600 s + the default 300 s margin."""
    h.emulator.advance(dt.timedelta(minutes=minutes))


def open_steps(client: Any, order: str = "A1") -> list[AttemptStatus]:
    return [
        record.open_attempt.status
        for record in client.journal.for_order(MID, order)
        if record.open_attempt is not None
    ]


# -- queries (docs/ecpay-api.md sections 4 and 5) ----------------------------------------------


def test_query_reads_state_from_credit_detail_and_kind_from_cashier(harness: Harness) -> None:
    client = harness.client()
    trade_no = harness.authorize("A1", 1000, kind=PaymentKind.INSTALLMENT)
    snapshot = client.query("A1")
    assert snapshot == harness.emulator.snapshot(MID, "A1")
    assert snapshot.kind is PaymentKind.INSTALLMENT
    assert snapshot.trade_no == trade_no
    assert harness.requests == 2


def test_query_skips_the_cashier_query_when_kind_and_trade_no_are_given(
    harness: Harness,
) -> None:
    client = harness.client()
    trade_no = harness.authorize()
    snapshot = client.query("A1", trade_no=trade_no, kind=PaymentKind.ONE_TIME)
    assert harness.requests == 1
    assert snapshot == harness.emulator.snapshot(MID, "A1")
    # A kind alone still needs TradeNo from the cashier query.
    client.query("A1", kind="one_time")
    assert harness.requests == 3


def test_query_rejects_a_trade_no_that_is_not_the_orders(harness: Harness) -> None:
    client = harness.client()
    harness.authorize()
    with pytest.raises(InvalidArgument, match="not this order's"):
        client.query("A1", trade_no="9999999999999999")


def test_query_of_an_unknown_order_is_a_gateway_refusal(harness: Harness) -> None:
    client = harness.client()
    with pytest.raises(GatewayRefused) as caught:
        client.query("NOPE1")
    assert caught.value.rtn_code == 10000185


# -- planned money movement --------------------------------------------------------------------


def test_capture_sends_c_and_confirms_it(harness: Harness) -> None:
    client = harness.client()
    harness.authorize()
    outcome = client.capture("A1")
    assert outcome.intent is Intent.CAPTURE
    assert outcome.plan.actions == (Action.CLOSE,)
    assert [(s.action, s.amount, s.rtn_code, s.attempts) for s in outcome.steps_done] == [
        (Action.CLOSE, 1000, 1, 1)
    ]
    assert not outcome.steps_done[0].recovered
    assert outcome.before.state is State.AUTHORIZED
    assert outcome.final == harness.emulator.snapshot(MID, "A1")
    assert outcome.final.state is State.TO_CLOSE
    assert outcome.idempotency_key is None
    assert not outcome.replayed


def test_refunds_follow_the_r9_recipe(harness: Harness) -> None:
    client = harness.client()
    pending_capture(harness, client)
    part = client.refund("A1", 300)
    assert part.plan.actions == (Action.REFUND,)
    assert part.refunded == 300
    assert harness.state() == (State.TO_CLOSE, 700)
    rest = client.refund("A1")
    # R13: everything left of a pending capture is E then N, never R.
    assert [s.action for s in rest.steps_done] == [Action.CANCEL, Action.ABANDON]
    assert rest.final.state is State.ABANDONED
    assert harness.state() == (State.ABANDONED, 0)
    assert harness.refused() == 0


def test_refund_after_settlement_and_abandon_of_an_authorization(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    outcome = client.refund("A1", 400)
    assert outcome.final.state is State.TO_CLOSE
    assert outcome.final.closed_amount == 600
    assert outcome.final.capture_settled
    harness.authorize("B2", 500)
    abandoned = client.abandon("B2")
    assert abandoned.plan.actions == (Action.ABANDON,)
    assert harness.state("B2") == (State.ABANDONED, 0)


def test_planner_refusals_send_nothing(harness: Harness) -> None:
    client = harness.client()
    harness.authorize()
    with pytest.raises(RuleViolation) as caught:
        client.refund("A1", 300)
    assert caught.value.rule == "R18"
    harness.emulator.advance(dt.timedelta(hours=10, minutes=20))  # 20:20 Taipei, then the batch
    harness.authorize("B2", 500)
    with pytest.raises(RuleViolation) as window:
        client.capture("B2")
    assert window.value.rule == "R5"
    assert window.value.retry_at == dt.datetime(2026, 8, 1, 20, 30, tzinfo=TAIPEI)
    assert harness.sent(Action.CLOSE, "B2") == 0
    assert harness.sent(Action.REFUND) == 0


def test_capture_first_refunds_part_of_an_authorization_with_c_then_r(harness: Harness) -> None:
    client = harness.client()
    harness.authorize()
    outcome = client.refund("A1", 300, capture_first=True)
    assert [s.action for s in outcome.steps_done] == [Action.CLOSE, Action.REFUND]
    assert harness.state() == (State.TO_CLOSE, 700)


# -- lost replies (docs/ecpay-api.md section 9) ------------------------------------------------

AFTER_APPLY = [
    Fault.TIMEOUT_AFTER_APPLY,
    Fault.LOST_REPLY,
    Fault.CONNECTION_RESET,
    Fault.SERVER_ERROR_AFTER_APPLY,
    Fault.GARBLED_DATA,
    Fault.MISMATCHED_REPLY,
]
BEFORE_APPLY = [Fault.READ_TIMEOUT_BEFORE_APPLY, Fault.SERVER_ERROR_BEFORE_APPLY]


@pytest.mark.parametrize("fault", AFTER_APPLY)
@pytest.mark.parametrize("lost", [Action.CANCEL, Action.ABANDON])
def test_a_reply_lost_after_apply_is_resolved_as_done_and_not_resent(
    harness: Harness, fault: Fault, lost: Action
) -> None:
    client = harness.client()
    pending_capture(harness, client)
    harness.emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, action=lost)
    outcome = client.refund("A1")
    assert [s.action for s in outcome.steps_done] == [Action.CANCEL, Action.ABANDON]
    recovered = {s.action: s for s in outcome.steps_done}[lost]
    assert recovered.recovered
    assert recovered.rtn_code is None
    assert recovered.attempts == 1
    assert harness.sent(Action.CANCEL) == 1
    assert harness.sent(Action.ABANDON) == 1
    assert harness.state() == (State.ABANDONED, 0)
    assert open_steps(client) == []


@pytest.mark.parametrize("fault", BEFORE_APPLY)
@pytest.mark.parametrize("lost", [Action.CANCEL, Action.ABANDON])
def test_a_reply_lost_before_apply_waits_for_the_fence_then_is_sent_once_more(
    harness: Harness, fault: Fault, lost: Action
) -> None:
    client = harness.client()
    pending_capture(harness, client)
    harness.emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, action=lost)
    with pytest.raises(OutcomeUnknown) as caught:
        client.refund("A1", idempotency_key="all-A1")
    # R22: "unchanged" proves nothing before Timestamp + 600 s + margin.
    assert caught.value.retry_at is not None
    assert caught.value.retry_at >= harness.emulator.now + dt.timedelta(minutes=14)
    assert harness.sent(lost) == 1
    before = harness.requests
    with pytest.raises(OutcomeUnknown):
        client.refund("A1", idempotency_key="all-A1")  # too early: one query, nothing sent
    assert harness.requests == before + 1
    with pytest.raises(OrderLocked):
        client.refund("A1", idempotency_key="another-key")
    assert harness.sent(lost) == 1
    past_the_fence(harness)
    outcome = client.refund("A1", idempotency_key="all-A1")
    step = {s.action: s for s in outcome.steps_done}[lost]
    assert step.attempts == 2
    assert not step.recovered
    assert harness.sent(lost) == 2
    assert harness.applied(lost) == 1
    assert harness.state() == (State.ABANDONED, 0)
    statuses = [a.status for r in client.journal.for_order(MID, "A1") for a in r.attempts]
    assert statuses.count(AttemptStatus.NOT_DONE) == 1


def test_a_timeout_after_apply_is_done_with_no_second_r(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.TIMEOUT_AFTER_APPLY, endpoint=Endpoint.DO_ACTION)
    outcome = client.refund("A1", 300)
    assert outcome.steps_done[0].recovered
    assert harness.sent(Action.REFUND) == 1
    assert harness.emulator.order(MID, "A1").refunded_total == 300
    assert harness.state() == (State.TO_CLOSE, 700)


def test_a_timeout_before_apply_is_sent_once_more_only_after_the_fence(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(OutcomeUnknown):
        client.refund("A1", 300, idempotency_key="r300")
    assert harness.sent(Action.REFUND) == 1
    past_the_fence(harness)
    outcome = client.refund("A1", 300, idempotency_key="r300")
    assert outcome.steps_done[0].attempts == 2
    assert harness.sent(Action.REFUND) == 2
    assert harness.emulator.order(MID, "A1").refunded_total == 300


def test_nothing_is_sent_again_before_the_fence_however_often_the_key_is_retried(
    harness: Harness,
) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(OutcomeUnknown):
        client.refund("A1", 300, idempotency_key="k")
    for _ in range(5):
        harness.emulator.advance(dt.timedelta(minutes=2))  # 10 minutes in all: still inside
        with pytest.raises(OutcomeUnknown):
            client.refund("A1", 300, idempotency_key="k")
    assert harness.sent(Action.REFUND) == 1
    assert harness.state() == (State.CLOSED, 1000)
    assert open_steps(client) == [AttemptStatus.UNKNOWN]
    past_the_fence(harness, minutes=6)
    client.refund("A1", 300, idempotency_key="k")
    assert harness.sent(Action.REFUND) == 2
    assert harness.state() == (State.TO_CLOSE, 700)


def test_a_request_that_never_connected_is_not_resent(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(TransportError, match="not sent") as caught:
        client.refund("A1", 300)
    assert isinstance(caught.value.__cause__, httpx.ConnectTimeout)
    assert harness.sent(Action.REFUND) == 1
    assert harness.state() == (State.CLOSED, 1000)
    assert open_steps(client) == []


def test_http_403_is_rate_limited_and_never_retried(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(RateLimited, match="30 minutes") as caught:
        client.refund("A1", 300)
    assert caught.value.retry_after_seconds == 1800
    assert harness.sent(Action.REFUND) == 1
    assert open_steps(client) == []
    # Remembered: the next call sends nothing until the pause is over (tests/test_rate_limit_
    # memory.py covers the rest).
    before = harness.requests
    with pytest.raises(RateLimited) as again:
        client.query("A1")
    assert again.value.retry_at == caught.value.retry_at
    assert harness.requests == before


@pytest.mark.parametrize(
    ("trans_code", "error"),
    [(110, WrongCredentials), (104, ClockOutOfSync), (115, ServiceNotEnabled)],
)
def test_an_envelope_rejected_before_processing_is_not_done_and_named(
    harness: Harness, trans_code: int, error: type[EnvelopeRejected]
) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(
        Fault.TRANS_CODE_ERROR, endpoint=Endpoint.DO_ACTION, trans_code=trans_code
    )
    with pytest.raises(error) as caught:
        client.refund("A1", 300, idempotency_key="k")
    assert caught.value.trans_code == trans_code
    assert harness.sent(Action.REFUND) == 1
    assert open_steps(client) == []
    assert harness.state() == (State.CLOSED, 1000)
    client.refund("A1", 300, idempotency_key="k")  # not done, so the key sends it now
    assert harness.state() == (State.TO_CLOSE, 700)


def test_any_other_trans_code_on_doaction_is_an_unknown_outcome(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(
        Fault.TRANS_CODE_ERROR, endpoint=Endpoint.DO_ACTION, trans_code=128
    )
    with pytest.raises(OutcomeUnknown):
        client.refund("A1", 300)
    assert open_steps(client) == [AttemptStatus.UNKNOWN]


def test_a_gateway_refusal_is_recorded_and_raised(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.set_balance(MID, 0)
    with pytest.raises(GatewayRefused) as caught:
        client.refund("A1", 300)  # R16: a refund after settlement needs the balance
    assert caught.value.rtn_code != 1
    assert caught.value.token == "error_balance"
    (record,) = client.journal.for_order(MID, "A1")
    assert record.status is OperationStatus.STOPPED
    assert record.attempts[-1].status is AttemptStatus.REFUSED
    assert record.attempts[-1].rtn_msg == caught.value.rtn_msg
    assert harness.sent(Action.REFUND) == 1


def test_e_then_n_stops_when_e_fails(harness: Harness) -> None:
    client = harness.client()
    pending_capture(harness, client)
    harness.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(RateLimited):
        client.refund("A1")
    assert harness.sent(Action.ABANDON) == 0
    assert harness.state() == (State.TO_CLOSE, 1000)


def test_a_key_resumes_an_operation_that_stopped_after_e(harness: Harness) -> None:
    client = harness.client(rate_limit_pause=0)  # the retry goes out at once after the 403
    pending_capture(harness, client)
    harness.emulator.faults.inject(
        Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION, action=Action.ABANDON
    )
    with pytest.raises(RateLimited) as caught:
        client.refund("A1", idempotency_key="refund-A1")
    assert any("E(1000)" in note for note in caught.value.__notes__)
    assert harness.state() == (State.AUTHORIZED, 0)
    outcome = client.refund("A1", idempotency_key="refund-A1")
    # The same key completes the same intent from a fresh query: only N is left to do.
    assert outcome.plan.actions == (Action.ABANDON,)
    assert [s.action for s in outcome.steps_done] == [Action.CANCEL, Action.ABANDON]
    assert harness.sent(Action.CANCEL) == 1
    assert harness.state() == (State.ABANDONED, 0)
    assert client.refund("A1", idempotency_key="refund-A1").replayed


# -- unknown outcomes, the lock, reconcile ------------------------------------------------------


def test_a_failed_confirming_query_locks_the_order_until_reconcile(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.TIMEOUT_AFTER_APPLY, endpoint=Endpoint.DO_ACTION)
    fail_the_confirming_query(harness)
    with pytest.raises(OutcomeUnknown) as caught:
        client.refund("A1", 300, idempotency_key="k-300")
    assert caught.value.observed is None
    assert caught.value.step.describe() == "R(300)"
    assert caught.value.merchant_trade_no == "A1"
    assert caught.value.idempotency_key == "k-300"
    assert open_steps(client) == [AttemptStatus.UNKNOWN]

    before = harness.requests
    with pytest.raises(OrderLocked) as locked:
        client.refund("A1", 100)
    assert locked.value.idempotency_key == "k-300"
    assert locked.value.retry_at == caught.value.retry_at
    with pytest.raises(OrderLocked):
        client.do_action("A1", harness.emulator.order(MID, "A1").trade_no, "R", 100)
    assert harness.requests == before  # refused before anything was sent

    result = client.reconcile("A1")  # reached: done, no need to wait for the fence
    assert not result.locked
    (resolution,) = result.resolutions
    assert resolution.verdict is Verdict.DONE
    assert resolution.idempotency_key == resolution.key == "k-300"
    assert not resolution.declared
    assert isinstance(resolution.outcome, Outcome)
    assert resolution.outcome.final == result.snapshot
    assert result.snapshot.closed_amount == 700

    before = harness.requests
    replay = client.refund("A1", 300, idempotency_key="k-300")
    assert replay.replayed
    assert replay.steps_done[0].recovered
    assert harness.requests == before
    client.refund("A1", 100)
    assert harness.sent(Action.REFUND) == 2
    assert harness.state() == (State.TO_CLOSE, 600)


def test_a_retry_of_the_key_resolves_its_own_open_attempt_first(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    harness.emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    fail_the_confirming_query(harness)
    with pytest.raises(OutcomeUnknown):
        client.refund("A1", 300, idempotency_key="k")
    outcome = client.refund("A1", 300, idempotency_key="k")  # a query shows it done
    assert not outcome.replayed
    assert outcome.steps_done[0].recovered
    assert harness.sent(Action.REFUND) == 1
    assert client.refund("A1", 300, idempotency_key="k").replayed


def test_an_order_that_moved_elsewhere_stays_unknown_until_declared(harness: Harness) -> None:
    client = harness.client()
    captured(harness)

    def chargeback_then_timeout(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        forward(request)
        if request.url.path.endswith("/Credit/DoAction"):
            harness.emulator.set_status(MID, "A1", GatewayStatus.BANK_RECLAIMING)
            raise httpx.ReadTimeout("timed out", request=request)
        return forward(request)

    harness.intercept = chargeback_then_timeout
    with pytest.raises(OutcomeUnknown) as caught:
        client.refund("A1", 300)
    harness.intercept = None
    assert caught.value.observed.state is State.UNSETTLED
    assert "nothing was re-sent" in str(caught.value)
    assert harness.sent(Action.REFUND) == 1
    key = caught.value.idempotency_key
    assert key is not None
    assert key.startswith("auto-")

    past_the_fence(harness)
    still = client.reconcile("A1")
    assert still.locked
    assert still.resolutions[0].verdict is Verdict.UNKNOWN
    assert still.resolutions[0].retry_at is None  # a query can never tell: a person must
    with pytest.raises(OrderLocked):
        client.refund("A1", 100)

    declared = client.reconcile("A1", declare={key: "done"})
    assert not declared.locked
    assert declared.resolutions[0].declared
    assert declared.resolutions[0].verdict is Verdict.DONE
    assert open_steps(client) == []


def test_an_accepted_reply_is_proof_whatever_the_order_shows_later(harness: Harness) -> None:
    client = harness.client()
    captured(harness)

    def accepted_then_chargeback(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        response = forward(request)
        if request.url.path.endswith("/Credit/DoAction"):
            harness.emulator.set_status(MID, "A1", GatewayStatus.BANK_RECLAIMING)
        return response

    harness.intercept = accepted_then_chargeback
    outcome = client.refund("A1", 300)  # R21: no confirming query can overrule the reply
    assert outcome.steps_done[0].rtn_code == 1
    assert outcome.final.closed_amount == 700
    assert open_steps(client) == []
    assert harness.sent(Action.REFUND) == 1


def test_reconcile_resolves_not_done_only_after_the_fence(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    result = client.reconcile("A1")
    assert result.resolutions == ()
    assert result.snapshot == harness.emulator.snapshot(MID, "A1")

    harness.emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    fail_the_confirming_query(harness)
    with pytest.raises(OutcomeUnknown) as caught:
        client.refund("A1", 300, idempotency_key="k")
    early = client.reconcile("A1")
    assert early.locked
    assert early.resolutions[0].verdict is Verdict.UNKNOWN
    assert early.resolutions[0].retry_at == caught.value.retry_at
    with pytest.raises(InvalidArgument, match="before the fence"):
        client.reconcile("A1", declare={"k": "not_done"})
    past_the_fence(harness)
    resolved = client.reconcile("A1")
    assert resolved.resolutions[0].verdict is Verdict.NOT_DONE
    assert resolved.resolutions[0].outcome is None
    (record,) = client.journal.for_order(MID, "A1")
    assert record.status is OperationStatus.STOPPED
    # Not done, so the same key may carry the refund out now, exactly once.
    outcome = client.refund("A1", 300, idempotency_key="k")
    assert not outcome.replayed
    assert harness.emulator.order(MID, "A1").refunded_total == 300


def test_reconcile_rejects_a_bad_declaration(harness: Harness) -> None:
    client = harness.client()
    harness.authorize()
    with pytest.raises(InvalidArgumentType):
        client.reconcile("A1", declare="done")
    with pytest.raises(InvalidArgument):
        client.reconcile("A1", declare={"k": "unknown"})
    with pytest.raises(InvalidArgumentType):
        client.reconcile("A1", declare={"k": True})
    with pytest.raises(InvalidArgument, match="no open attempt"):
        client.reconcile("A1", declare={"k": "done"})
    assert harness.requests == 0
    assert client.journal.for_order(MID, "A1") == []


# -- idempotency keys --------------------------------------------------------------------------


def test_the_same_key_replays_the_outcome_and_sends_nothing(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    first = client.refund("A1", 300, idempotency_key="order-A1-refund-1")
    assert first.idempotency_key == "order-A1-refund-1"
    before = harness.requests
    again = client.refund("A1", 300, idempotency_key="order-A1-refund-1")
    assert harness.requests == before
    assert again.replayed
    assert again == attrs.evolve(first, replayed=True)
    assert harness.sent(Action.REFUND) == 1


def test_the_same_key_with_another_request_is_refused(harness: Harness) -> None:
    client = harness.client()
    captured(harness)
    captured(harness, "B2")
    client.refund("A1", 300, idempotency_key="k1")
    before = harness.requests
    with pytest.raises(InvalidArgument, match="k1"):
        client.refund("A1", 200, idempotency_key="k1")
    with pytest.raises(InvalidArgument):
        client.refund("B2", 300, idempotency_key="k1")
    with pytest.raises(InvalidArgument):
        client.abandon("A1", idempotency_key="k1")
    assert harness.requests == before


def test_keys_are_shared_through_the_journal(harness: Harness) -> None:
    journal = InMemoryJournal()
    first = harness.client(journal=journal)
    second = harness.client(journal=journal)
    captured(harness)
    first.refund("A1", 300, idempotency_key="shared")
    assert second.refund("A1", 300, idempotency_key="shared").replayed
    assert harness.sent(Action.REFUND) == 1


# -- raw DoAction ------------------------------------------------------------------------------


def test_do_action_sends_one_raw_action_journaled(harness: Harness) -> None:
    client = harness.client()
    trade_no = harness.authorize()
    reply = client.do_action("A1", trade_no, Action.CLOSE, 1000)
    assert reply.rtn_code == 1
    assert harness.state() == (State.TO_CLOSE, 1000)
    (record,) = client.journal.for_order(MID, "A1")
    assert record.intent is None
    assert record.status is OperationStatus.SUCCEEDED


def test_do_action_refusal_and_lost_replies(harness: Harness) -> None:
    client = harness.client()
    trade_no = captured(harness)
    with pytest.raises(GatewayRefused):
        client.do_action("A1", trade_no, "C", 1000)  # already captured
    harness.emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(OutcomeUnknown):
        client.do_action("A1", trade_no, "R", 300)
    assert client.reconcile("A1").locked  # before the fence
    past_the_fence(harness)
    assert client.reconcile("A1").resolutions[0].verdict is Verdict.NOT_DONE
    harness.emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(OutcomeUnknown) as caught:
        client.do_action("A1", trade_no, "R", 300)
    past_the_fence(harness)
    # A raw step expects only "a change", which a query cannot prove: a person declares it.
    assert client.reconcile("A1").locked
    key = caught.value.idempotency_key
    assert not client.reconcile("A1", declare={key: Verdict.DONE}).locked
    assert harness.sent(Action.REFUND) == 2
    assert harness.state() == (State.TO_CLOSE, 700)


# -- configuration and bad input ---------------------------------------------------------------


def test_stage_refuses_doaction_before_sending_anything(harness: Harness) -> None:
    client = harness.client(base_url=STAGE_URL)
    trade_no = harness.authorize()
    calls: list[Callable[[], object]] = [
        lambda: client.capture("A1"),
        lambda: client.refund("A1", 100),
        lambda: client.abandon("A1"),
        lambda: client.do_action("A1", trade_no, "C", 1000),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match="stage"):
            call()
    assert harness.requests == 0
    assert client.query("A1").state is State.AUTHORIZED  # queries work on stage


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.refund("A-1", 100), InvalidArgument),
        (lambda c: c.refund("A1", 0), InvalidArgument),
        (lambda c: c.refund("A1", 10.5), InvalidArgumentType),
        (lambda c: c.refund("A1", True), InvalidArgumentType),
        (lambda c: c.refund("A1", 100, capture_first="yes"), InvalidArgumentType),
        (lambda c: c.refund("A1", 100, idempotency_key=""), InvalidArgument),
        (lambda c: c.refund("A1", 100, idempotency_key="x" * 256), InvalidArgument),
        (lambda c: c.refund("A1", 100, idempotency_key=42), InvalidArgumentType),
        (lambda c: c.capture(1234), InvalidArgumentType),
        (lambda c: c.query("A1", kind="paypal"), InvalidArgument),
        (lambda c: c.query("A1", kind=3), InvalidArgumentType),
        (lambda c: c.query("A1", trade_no="x-y"), InvalidArgument),
        (lambda c: c.do_action("A1", "T1", "X", 100), InvalidArgument),
        (lambda c: c.do_action("A1", "T1", 7, 100), InvalidArgumentType),
        (lambda c: c.do_action("A1", "T1", "R", -5), InvalidArgument),
    ],
)
def test_bad_input_raises_a_typed_error_and_sends_nothing(
    harness: Harness, call: Callable[[Any], object], error: type[EcpayError]
) -> None:
    client = harness.client()
    harness.authorize()
    with pytest.raises(error):
        call(client)
    assert harness.requests == 0


def test_a_naive_clock_is_a_typed_error_that_records_and_sends_nothing(harness: Harness) -> None:
    client = harness.client(clock=lambda: dt.datetime(2026, 8, 1, 10, 0))
    harness.authorize()
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        client.query("A1")
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        client.refund("A1", 100, idempotency_key="k")
    assert harness.requests == 0
    assert client.journal.for_order(MID, "A1") == []


def test_the_fence_margin_is_a_setting_and_widens_the_fence(harness: Harness) -> None:
    client = harness.client(fence_margin=dt.timedelta(minutes=30))
    assert client.fence_margin == dt.timedelta(minutes=30)
    captured(harness)
    harness.emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
    with pytest.raises(OutcomeUnknown) as caught:
        client.refund("A1", 300, idempotency_key="k")
    sent_at = harness.emulator.now
    assert caught.value.retry_at is not None
    assert caught.value.retry_at - sent_at >= dt.timedelta(minutes=40)
    past_the_fence(harness)  # 16 minutes: past the default fence, not this one
    with pytest.raises(OutcomeUnknown):
        client.refund("A1", 300, idempotency_key="k")
    assert harness.sent(Action.REFUND) == 1
    assert client.clock_skew <= 1.0  # the emulator's clock is the client's


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, ConfigurationError),
        ({"timeout": None}, InvalidArgumentType),
        ({"timeout": httpx.Timeout(5.0, read=None)}, ConfigurationError),
        ({"max_connections": 0}, ConfigurationError),
        ({"max_connections": 2.5}, InvalidArgumentType),
        ({"base_url": "ecpay.com.tw"}, ConfigurationError),
        ({"base_url": 3}, InvalidArgumentType),
        ({"journal": {}}, InvalidArgumentType),
        ({"clock": "now"}, InvalidArgumentType),
        ({"fence_margin": -1}, InvalidArgument),
        ({"fence_margin": dt.timedelta(seconds=-1)}, InvalidArgument),
        ({"fence_margin": "300"}, InvalidArgumentType),
        ({"fence_margin": float("nan")}, InvalidArgument),
        ({"fence_margin": True}, InvalidArgumentType),
        ({"lease": 0}, InvalidArgument),
        ({"lease": None}, InvalidArgumentType),
        ({"refund_visible_at_once": "yes"}, InvalidArgumentType),
        ({"credentials": ("3002607", HASH_KEY, HASH_IV)}, InvalidArgumentType),
    ],
)
def test_bad_configuration_is_refused_at_construction(
    harness: Harness, kwargs: dict[str, Any], error: type[EcpayError]
) -> None:
    with pytest.raises(error):
        harness.client(**kwargs)


def test_a_transport_of_the_wrong_flavour_is_refused() -> None:
    class SyncOnly(httpx.BaseTransport):
        pass

    class AsyncOnly(httpx.AsyncBaseTransport):
        pass

    with pytest.raises(InvalidArgumentType):
        Client(CREDENTIALS, transport=AsyncOnly())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        AsyncClient(CREDENTIALS, transport=SyncOnly())  # type: ignore[arg-type]


def test_clients_are_context_managers_and_keep_all_connections_alive() -> None:
    with Client(CREDENTIALS, max_connections=4) as client:
        pool = client._http._transport._pool
        assert pool._max_connections == 4
        assert pool._max_keepalive_connections == 4
        assert client.journal is not None

    async def run() -> None:
        async with AsyncClient(CREDENTIALS) as aclient:
            assert "3002607" in repr(aclient)

    asyncio.run(run())


def test_per_order_locks_are_dropped_when_unused(harness: Harness) -> None:
    client = harness.client()
    for n in range(5):
        harness.authorize(f"L{n}", 100)
        client.capture(f"L{n}")
    assert len(client.raw.journal.locks) == 0


# -- secrets (style habit 9) -------------------------------------------------------------------


def test_secrets_never_reach_logs_errors_reprs_or_the_journal(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = harness.client(rate_limit_pause=0)  # the calls after the 403 go out too
    captured(harness, "B2")
    harness.authorize("A1", 1000)
    errors: list[BaseException] = []
    texts: list[str] = [repr(client.raw), repr(CREDENTIALS), str(CREDENTIALS)]
    texts.append(repr(client.capture("A1")))
    for fault in (Fault.GARBLED_DATA, Fault.MISMATCHED_REPLY, Fault.RATE_LIMITED):
        harness.emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION)
        try:
            texts.append(repr(client.refund("B2", 100)))
        except EcpayError as exc:
            errors.append(exc)
    harness.emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    fail_the_confirming_query(harness)
    with pytest.raises(OutcomeUnknown) as unknown:
        client.refund("B2", 100)
    errors.append(unknown.value)
    with pytest.raises(OrderLocked) as locked:
        client.refund("B2", 100)
    errors.append(locked.value)
    texts.append(repr(client.reconcile("B2")))
    for exc in errors:
        texts += [str(exc), repr(exc), *getattr(exc, "__notes__", [])]
        if exc.__cause__ is not None:
            texts += [str(exc.__cause__), repr(exc.__cause__)]
    for order in ("A1", "B2"):
        texts += [json.dumps(r.to_dict()) for r in client.journal.for_order(MID, order)]
    texts += [record.getMessage() for record in caplog.records]
    assert any(record.name == "ecpay_lifecycle" for record in caplog.records)
    for text in texts:
        assert HASH_KEY not in text
        assert HASH_IV not in text
    # No log line carries an encrypted Data blob either.
    assert not any("Data" in record.getMessage() for record in caplog.records)


# -- cancellation (asyncio) --------------------------------------------------------------------


def test_a_cancelled_doaction_leaves_the_order_locked_until_reconcile() -> None:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, HASH_KEY, HASH_IV)
    emulator.authorize(MID, "A1", 1000)

    async def run() -> None:
        started = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/Credit/DoAction") and not started.is_set():
                started.set()
                await asyncio.Event().wait()  # the reply never comes
            return emulator.handler(request)

        async with AsyncClient(
            CREDENTIALS, transport=httpx.MockTransport(handler), clock=emulator.clock
        ) as client:
            task = asyncio.create_task(client.capture("A1"))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(OrderLocked):
                await client.capture("A1")
            result = await client.reconcile("A1")
            assert result.resolutions[0].verdict is Verdict.UNKNOWN  # before the fence
            emulator.advance(dt.timedelta(minutes=16))
            result = await client.reconcile("A1")
            assert result.resolutions[0].verdict is Verdict.NOT_DONE
            outcome = await client.capture("A1")
            assert outcome.final.state is State.TO_CLOSE

    asyncio.run(run())


def test_a_production_client_on_the_in_memory_journal_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ecpay_lifecycle")
    with Client(CREDENTIALS):
        pass
    warnings = [r for r in caplog.records if "in-memory journal" in r.getMessage()]
    assert len(warnings) == 1
    assert "durable journal" in warnings[0].getMessage()
    caplog.clear()
    with (
        Client(CREDENTIALS, base_url=STAGE_URL),
        Client(CREDENTIALS, base_url="http://127.0.0.1:8"),
    ):
        pass
    assert not [r for r in caplog.records if "in-memory journal" in r.getMessage()]
