"""Fault campaign (issue 4, docs/ecpay-api.md section 9): random flows with faults at random points.

Each flow authorizes an order of a random kind, brings it to a random starting state through the
client (authorized, pending capture, closed, pending refund), then asks for a capture, a refund
(all or part) or an abandon under an idempotency key while 1-2 random faults are armed on any
endpoint, among them a change that lands late (after the client gave up) and a CreditDetail that
answers one write behind. Whatever happens, the campaign then does what a shop would: when the
outcome is unknown it waits until the fence the error names (``retry_at``: R22, after the batch
where needed), ``reconcile``s, and repeats the same request with the same key.

Checked for every flow, against the emulator's own books (never the client's word):
- no double refund: ECPay applied each planned DoAction at most once;
- no over-refund: what came back to the card holder never exceeds what was asked, and the sum of
  refunds never exceeds what was captured;
- every flow ends done exactly once (the order shows exactly what was asked), or with a typed
  error (an ``EcpayError``) and the order unchanged;
- nothing but ``EcpayError`` ever escapes.

The counts are printed. ``ECPAY_CAMPAIGN_FLOWS`` and ``ECPAY_CAMPAIGN_SEED`` change the run.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random

import httpx
import pytest

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    Client,
    Credentials,
    EcpayError,
    OrderLocked,
    OrderSnapshot,
    OutcomeUnknown,
    PaymentKind,
    RateLimited,
    RuleViolation,
    State,
)
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

FLOWS = int(os.environ.get("ECPAY_CAMPAIGN_FLOWS", "1000"))
SEED = int(os.environ.get("ECPAY_CAMPAIGN_SEED", "20261125"))
MERCHANT = "3002607"
KEY, IV = "CampaignKey01234", "CampaignIv012345"
START = dt.datetime(2026, 11, 25, 9, 0, tzinfo=TAIPEI)
FAULTS = [f for f in Fault if f is not Fault.DELAY]
#: Faults that only make sense on one endpoint.
ONLY_ON = {Fault.STALE_QUERY: Endpoint.CREDIT_DETAIL, Fault.LATE_APPLY: Endpoint.DO_ACTION}


def held(snapshot: OrderSnapshot) -> int:
    """What the card holder is charged or held for (the planner's notion of refundable)."""
    return snapshot.refundable


class Flow:
    def __init__(self, rng: random.Random, number: int) -> None:
        self.rng = rng
        self.order = f"F{number}"
        self.emulator = Emulator(now=START)
        self.emulator.add_merchant(MERCHANT, KEY, IV, auto_close=True, balance=10**9)
        self.client = Client(
            Credentials(MERCHANT, KEY, IV, auto_close=True),
            transport=httpx.MockTransport(self.handler),
            clock=self.emulator.clock,
        )
        #: A query failure to arm the moment a DoAction goes by, so that it hits the query that
        #: confirms the step, not the one before planning (the emulator fires faults in order).
        self.confirming_query_fails: Fault | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.confirming_query_fails is not None and request.url.path == Endpoint.DO_ACTION:
            self.emulator.faults.inject(
                self.confirming_query_fails, endpoint=Endpoint.CREDIT_DETAIL, times=2
            )
            self.confirming_query_fails = None
        return self.emulator.handler(request)

    def prepare(self) -> str:
        rng = self.rng
        kind = rng.choice(list(PaymentKind))
        amount = rng.choice([1, 2, 100, 999, 1000, rng.randint(3, 50_000)])
        self.emulator.authorize(MERCHANT, self.order, amount, kind=kind)
        start = "authorized" if kind is not PaymentKind.UNIONPAY else "closed"
        if kind is not PaymentKind.UNIONPAY and rng.random() < 0.6:
            self.client.capture(self.order)
            start = "pending capture"
            if rng.random() < 0.5:
                self.emulator.set_time(START.replace(hour=20, minute=31))  # the batch ran
                start = "closed"
        if start == "closed" and amount > 1 and rng.random() < 0.4:
            if kind.full_refund_only:
                start = "closed"
            else:
                self.client.refund(self.order, rng.randint(1, amount - 1))
                start = "pending refund"
        return f"{kind} {start}"

    def ask(self, intent: str, amount: int | None, key: str) -> object:
        if intent == "refund":
            return self.client.refund(self.order, amount, idempotency_key=key)
        if intent == "abandon":
            return self.client.abandon(self.order, idempotency_key=key)
        return self.client.capture(self.order, idempotency_key=key)

    def applied(self) -> collections.Counter[tuple[Action, int]]:
        return collections.Counter(
            (e.action, e.amount or 0)
            for e in self.emulator.events
            if e.merchant_trade_no == self.order and e.action is not None and e.applied
        )


AFTER_APPLY = [f for f in FAULTS if f.applies_change and f not in ONLY_ON] + [Fault.LATE_APPLY]
QUERY_FAILURES = [Fault.TIMEOUT_BEFORE_APPLY, Fault.SERVER_ERROR_BEFORE_APPLY, Fault.GARBLED_DATA]


def arm_random_faults(flow: Flow) -> list[str]:
    armed = []
    if flow.rng.random() < 0.3:
        # The central risk (docs/ecpay-api.md section 9): a DoAction's reply is lost AND the
        # confirming query fails, so the client cannot tell; it must lock the order, not guess or
        # re-send.
        lost = flow.rng.choice(AFTER_APPLY)
        late = {}
        if lost is Fault.LATE_APPLY:
            # Lands 30 s to 20 minutes later: past ECPay's 10-minute window it is refused (R20).
            late["land_after"] = dt.timedelta(seconds=flow.rng.choice([30, 300, 599, 601, 1200]))
        flow.emulator.faults.inject(lost, endpoint=Endpoint.DO_ACTION, times=1, **late)
        failure = flow.rng.choice(QUERY_FAILURES)
        flow.confirming_query_fails = failure
        return [f"{lost.name} then {failure.name} on the confirming query"]
    for _ in range(flow.rng.choice([1, 1, 2])):
        fault = flow.rng.choice(FAULTS)
        endpoint = ONLY_ON.get(fault) or flow.rng.choice([None, *Endpoint])
        action = (
            flow.rng.choice([None, *Action]) if endpoint in (None, Endpoint.DO_ACTION) else None
        )
        flow.emulator.faults.inject(fault, endpoint=endpoint, action=action, times=1)
        armed.append(fault.name)
    return armed


def run_flow(flow: Flow, counts: collections.Counter[str]) -> None:
    rng = flow.rng
    counts[f"start: {flow.prepare()}"] += 1
    before = flow.emulator.snapshot(MERCHANT, flow.order)
    applied_before = flow.applied()
    # Mostly what a shop would ask of an order in this state; sometimes anything (refusals).
    sensible = {
        State.AUTHORIZED: ["refund", "abandon", "capture"],
        State.TO_CLOSE: ["refund", "refund", "abandon"] if before.pending_capture else ["refund"],
        State.CLOSED: ["refund"],
    }.get(before.state, ["refund"])
    intent = rng.choice(sensible if rng.random() < 0.85 else ["refund", "abandon", "capture"])
    amount = None
    if intent == "refund" and rng.random() < 0.5 and before.refundable > 1:
        amount = rng.randint(1, before.refundable - 1)
    key = f"campaign-{flow.order}"

    for fault in arm_random_faults(flow):
        counts[f"fault armed: {fault}"] += 1
    first: object
    try:
        first = flow.ask(intent, amount, key)
    except RuleViolation as refusal:
        first = refusal
    except EcpayError as error:
        first = error
    counts[f"first attempt: {type(first).__name__}"] += 1
    flow.emulator.faults.clear()
    flow.confirming_query_fails = None

    # What a shop does next: wait out a 403 the client remembers, wait for the fence (R22),
    # reconcile a locked order, then repeat the request with its key.
    quiet = flow.client.rate_limited_until  # a 403 on any request of the first attempt
    if quiet is not None:
        assert not isinstance(first, RateLimited) or first.retry_at == quiet
        flow.emulator.set_time(quiet + dt.timedelta(seconds=1))
        counts["waited out a 403"] += 1
    if isinstance(first, OutcomeUnknown | OrderLocked):
        if first.retry_at is not None and first.retry_at > flow.emulator.now:
            flow.emulator.set_time(first.retry_at + dt.timedelta(seconds=1))
            counts["waited for the fence"] += 1
        reconciliation = flow.client.reconcile(flow.order)
        counts["reconciled, still locked" if reconciliation.locked else "reconciled"] += 1
        assert not reconciliation.locked, "with the faults gone a query must settle the step"
    try:
        final: object = flow.ask(intent, amount, key)
    except RuleViolation as refusal:
        final = refusal
    for event in flow.emulator.events:
        if event.fault is Fault.LATE_APPLY and event.applied:
            counts["late landings applied"] += 1
        elif event.fault is Fault.LATE_APPLY and event.trans_code == 104:
            counts["late landings refused by R20"] += 1
    counts[f"retry with the same key: {type(final).__name__}"] += 1

    after = flow.emulator.snapshot(MERCHANT, flow.order)
    # No double refund: ECPay applied each (action, amount) of this request at most once.
    new = flow.applied() - applied_before
    assert all(times == 1 for times in new.values()), f"{flow.order}: applied twice: {new}"
    # No over-refund: never more back than asked, never more refunded than captured.
    wanted = before.refundable if amount is None else amount
    returned = held(before) - held(after) if after.state is not State.AUTHORIZED else 0
    if intent != "capture":
        assert returned <= wanted, f"{flow.order}: {returned} returned, {wanted} asked"
    view = flow.emulator.order(MERCHANT, flow.order)
    assert view.refunded_total <= view.amount
    if isinstance(final, RuleViolation):
        # The planner refused the request itself (a rule, not a fault): nothing may have moved.
        assert not new, f"{flow.order}: refused {final.rule} but ECPay applied {new}"
        assert after == before
        counts["ends: refused by a rule, order unchanged"] += 1
    else:
        # Done exactly once: the order shows exactly what was asked.
        if intent == "refund":
            assert returned == wanted, f"{flow.order}: {returned} returned, {wanted} asked"
        elif intent == "abandon":
            assert after.state is State.ABANDONED
        else:
            assert after.state is State.TO_CLOSE
            assert after.closed_amount == after.amount
        counts["ends: done exactly once"] += 1


@pytest.mark.parametrize("seed", [SEED])
def test_fault_campaign(seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(seed)
    counts: collections.Counter[str] = collections.Counter()
    for number in range(FLOWS):
        flow = Flow(rng, number)
        try:
            run_flow(flow, counts)
        finally:
            flow.client.close()
    assert (
        counts["ends: done exactly once"] + counts["ends: refused by a rule, order unchanged"]
        == FLOWS
    )
    with capsys.disabled():
        print(f"\nfault campaign: {FLOWS} flows, seed {seed}")
        for name, count in sorted(counts.items()):
            print(f"  {count:5d}  {name}")
