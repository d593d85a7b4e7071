"""Money never moves twice, whatever the gateway does (issue 8; R21-R23).

Unknown outcomes are docs/ecpay-api.md section 9.

Each scenario that refunded twice before the contract was rewritten, run on 20 orders and counted
on the emulator's own books (``Emulator.applied_do_actions``), never on the client's word:

1. ECPay answers after the client's timeout (real HTTP: DELAY 0.6 s, client timeout 0.2 s);
2. CreditDetail answers one write behind and the DoAction reply is lost;
3. a refund whose ClsAmt moves only at the batch (``refund_lowers_closed_amount_at_once=False``),
   with an intact reply and with a lost one;
4. a request that was sent but never processed: "not done" only after the fence, then sent once;
5. the same idempotency key from 8 ``Client``s sharing one journal, at once.

After the fence (and the batch where needed), ``reconcile`` plus a retry of the same key ends
every order with exactly one application and no order locked. The figures are printed.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import httpx
import pytest

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    Client,
    Credentials,
    InMemoryJournal,
    OperationInProgress,
    OrderLocked,
    Outcome,
    OutcomeUnknown,
    State,
    Verdict,
)
from ecpay_lifecycle.emulator import Emulator, EmulatorSettings, Endpoint, Fault, serving

MID = "3002607"
KEY, IV = "NeverTwiceKey016", "NeverTwiceIv0016"
CREDENTIALS = Credentials(MID, KEY, IV)
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
ORDERS = 20


def emulator_with(settings: EmulatorSettings | None = None) -> Emulator:
    emulator = Emulator(now=START, settings=settings)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    return emulator


def settled(emulator: Emulator, order: str, amount: int = 1000) -> None:
    """Authorized yesterday, closed by yesterday's 20:15 batch: Closed for ``amount``."""
    emulator.authorize(MID, order, amount, at=START - dt.timedelta(days=1))
    assert emulator.snapshot(MID, order).state is State.CLOSED


def refunds(emulator: Emulator, order: str) -> list[int]:
    """R applications ECPay's books hold for ``order``."""
    return [
        event.amount or 0
        for event in emulator.applied_do_actions(MID, order)
        if event.action is Action.REFUND
    ]


def no_order_locked(client: Client, orders: list[str]) -> bool:
    return all(
        record.open_attempt is None
        for order in orders
        for record in client.journal.for_order(MID, order)
    )


def finish(client: Client, emulator: Emulator, order: str, amount: int, key: str) -> Outcome:
    """What a shop does after an unknown outcome: past the fence, reconcile, retry the key."""
    emulator.advance(dt.timedelta(minutes=16))
    result = client.reconcile(order)
    assert not result.locked, result
    outcome = client.refund(order, amount, idempotency_key=key)
    assert client.refund(order, amount, idempotency_key=key).replayed
    return outcome


@pytest.fixture
def report() -> Iterator[list[str]]:
    lines: list[str] = []
    yield lines
    print("\n" + "\n".join(lines))  # the figures the closing note quotes


def test_gateway_answering_after_the_client_timeout_over_real_http(report: list[str]) -> None:
    emulator = emulator_with()
    orders = [f"SLOW{n}" for n in range(ORDERS)]
    for order in orders:
        settled(emulator, order)
    unknown = 0
    with (
        serving(emulator) as url,
        Client(CREDENTIALS, base_url=url, timeout=0.2, clock=emulator.clock) as client,
    ):
        for order in orders:
            emulator.faults.inject(
                Fault.DELAY, endpoint=Endpoint.DO_ACTION, merchant_trade_no=order, seconds=0.6
            )
            try:
                client.refund(order, 300, idempotency_key=f"k-{order}")
            except OutcomeUnknown as caught:
                unknown += 1
                retry_at = caught.retry_at
                assert retry_at is not None
                # Before the fence the same key sends nothing, however often it is asked.
                with pytest.raises((OutcomeUnknown, httpx.HTTPError, OrderLocked)):
                    client.refund(order, 300, idempotency_key=f"k-{order}")
            # Otherwise the confirming query ran after the late change landed (a loaded
            # machine): the query proved it done, which is right too (R22). Either way, one
            # application per order is asserted on ECPay's books below.
        assert unknown >= 1
        # Let the slow replies land (each DoAction was delayed 0.6 s inside ECPay).
        for _ in range(100):
            if all(refunds(emulator, order) for order in orders):
                break
            threading.Event().wait(0.05)
        emulator.advance(dt.timedelta(minutes=16))
        for order in orders:
            assert not client.reconcile(order).locked
            assert client.refund(order, 300, idempotency_key=f"k-{order}").replayed
        assert no_order_locked(client, orders)
    applied = [len(refunds(emulator, order)) for order in orders]
    assert applied == [1] * ORDERS
    report.append(
        f"late answer (real HTTP, DELAY 0.6 s, timeout 0.2 s): {ORDERS} orders, {unknown} "
        f"unknown at first, applications per order {set(applied)}, total {sum(applied)}"
    )


def test_a_query_one_write_behind_after_a_lost_reply(report: list[str]) -> None:
    emulator = emulator_with()
    orders = [f"LAG{n}" for n in range(ORDERS)]
    with Client(
        CREDENTIALS, transport=httpx.MockTransport(emulator.handler), clock=emulator.clock
    ) as client:
        for order in orders:
            settled(emulator, order)
            emulator.faults.inject(
                Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION, merchant_trade_no=order
            )
            emulator.faults.inject(
                Fault.STALE_QUERY,
                endpoint=Endpoint.CREDIT_DETAIL,
                merchant_trade_no=order,
                after_do_action=True,
                writes=1,
            )
            with pytest.raises(OutcomeUnknown):
                client.refund(order, 300, idempotency_key=f"k-{order}")
            finish(client, emulator, order, 300, f"k-{order}")
        assert no_order_locked(client, orders)
    applied = [len(refunds(emulator, order)) for order in orders]
    assert applied == [1] * ORDERS
    report.append(
        f"query one write behind + lost reply: {ORDERS} orders, applications per order "
        f"{set(applied)}, total {sum(applied)}"
    )


@pytest.mark.parametrize("fault", [None, Fault.LOST_REPLY, Fault.READ_TIMEOUT_BEFORE_APPLY])
def test_a_refund_whose_closed_amount_moves_only_at_the_batch(
    fault: Fault | None, report: list[str]
) -> None:
    emulator = emulator_with(EmulatorSettings(refund_lowers_closed_amount_at_once=False))
    orders = [f"BAT{n}" for n in range(ORDERS)]
    with Client(
        CREDENTIALS, transport=httpx.MockTransport(emulator.handler), clock=emulator.clock
    ) as client:
        for order in orders:
            emulator.authorize(MID, order, 1000)
            client.capture(order, idempotency_key=f"c-{order}")  # pending capture
        unknown = []
        for order in orders:
            if fault is not None:
                emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, merchant_trade_no=order)
            try:
                outcome = client.refund(order, 300, idempotency_key=f"k-{order}")
            except OutcomeUnknown as exc:
                unknown.append(exc)
            else:
                assert outcome.steps_done[0].rtn_code == 1  # R21: accepted, no query needed
            # ClsAmt still shows 1000 until the batch: "unchanged" proves nothing now.
            assert emulator.snapshot(MID, order).closed_amount == 1000
        if fault is not None:
            assert len(unknown) == ORDERS
            # The fence of a refund on a pending close is the first batch after it (R22).
            assert all(exc.retry_at is not None for exc in unknown)
            retry_at = max(exc.retry_at for exc in unknown if exc.retry_at is not None)
            assert retry_at.astimezone(TAIPEI).time() == dt.time(20, 30)
            emulator.set_time(retry_at + dt.timedelta(seconds=1))
        for order in orders:
            assert not client.reconcile(order).locked
            outcome = client.refund(order, 300, idempotency_key=f"k-{order}")
            assert outcome.replayed or fault is Fault.READ_TIMEOUT_BEFORE_APPLY
        emulator.advance(dt.timedelta(days=1))  # every refund settled by a batch
        assert no_order_locked(client, orders)
    applied = [len(refunds(emulator, order)) for order in orders]
    assert applied == [1] * ORDERS
    for order in orders:
        assert emulator.snapshot(MID, order).closed_amount == 700
    report.append(
        f"ClsAmt moves at the batch, {fault.name if fault else 'no fault'}: {ORDERS} orders, "
        f"{len(unknown)} unknown at first, applications per order {set(applied)}, total "
        f"{sum(applied)}"
    )


def test_a_request_sent_but_never_processed_is_sent_once_after_the_fence(
    report: list[str],
) -> None:
    emulator = emulator_with()
    orders = [f"NP{n}" for n in range(ORDERS)]
    sent_before_fence = 0
    with Client(
        CREDENTIALS, transport=httpx.MockTransport(emulator.handler), clock=emulator.clock
    ) as client:
        for order in orders:
            settled(emulator, order)
            emulator.faults.inject(
                Fault.READ_TIMEOUT_BEFORE_APPLY,
                endpoint=Endpoint.DO_ACTION,
                merchant_trade_no=order,
            )
            with pytest.raises(OutcomeUnknown):
                client.refund(order, 300, idempotency_key=f"k-{order}")
            early = client.reconcile(order)
            assert early.resolutions[0].verdict is Verdict.UNKNOWN
            sent_before_fence += sum(
                1
                for e in emulator.events
                if e.endpoint is Endpoint.DO_ACTION and e.merchant_trade_no == order
            )
            emulator.advance(dt.timedelta(minutes=16))
            assert client.reconcile(order).resolutions[0].verdict is Verdict.NOT_DONE
            outcome = client.refund(order, 300, idempotency_key=f"k-{order}")
            assert outcome.steps_done[0].attempts == 2
        assert no_order_locked(client, orders)
    applied = [len(refunds(emulator, order)) for order in orders]
    assert applied == [1] * ORDERS
    assert sent_before_fence == ORDERS
    report.append(
        f"sent but never processed: {ORDERS} orders, {sent_before_fence} sent before the "
        f"fence, applications per order {set(applied)}, total {sum(applied)}"
    )


def ask_at_once(client: Client, order: str, barrier: threading.Barrier, got: list[object]) -> None:
    """Wait for every other thread, then refund ``order`` under the shared key."""
    barrier.wait(timeout=10)
    try:
        got.append(client.refund(order, 300, idempotency_key=f"k-{order}"))
    except OperationInProgress as exc:
        got.append(exc)


def test_the_same_key_from_eight_clients_sharing_a_journal_at_once(report: list[str]) -> None:
    emulator = emulator_with()
    orders = [f"DUP{n}" for n in range(ORDERS)]
    journal = InMemoryJournal()
    clients = [
        Client(
            CREDENTIALS,
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
            journal=journal,
        )
        for _ in range(8)
    ]
    answers: dict[str, int] = {}
    try:
        for order in orders:
            settled(emulator, order)
            barrier = threading.Barrier(len(clients))
            got: list[object] = []

            threads = [
                threading.Thread(target=ask_at_once, args=(c, order, barrier, got)) for c in clients
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert len(got) == len(clients)
            for answer in got:
                name = (
                    "replayed"
                    if isinstance(answer, Outcome) and answer.replayed
                    else type(answer).__name__
                )
                answers[name] = answers.get(name, 0) + 1
            assert sum(isinstance(a, Outcome) and not a.replayed for a in got) == 1
            assert len(journal.locks) == 0
    finally:
        for client in clients:
            client.close()
    applied = [len(refunds(emulator, order)) for order in orders]
    assert applied == [1] * ORDERS
    report.append(
        f"same key from 8 clients at once: {ORDERS} orders, answers {answers}, applications "
        f"per order {set(applied)}, total {sum(applied)}"
    )
