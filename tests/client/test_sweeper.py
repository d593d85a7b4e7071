"""The sweeper (issue 9, docs/ecpay-api.md section 9): ``sweep()`` finds the journal's stuck
operations and resolves them by R22 without ever sending a DoAction; it leaves orders a live owner
runs, backs off orders only a person can settle, and stops at ECPay's HTTP 403. Counted on ECPay's
books."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AsyncClient,
    Client,
    Credentials,
    GatewayStatus,
    InMemoryJournal,
    Journal,
    OperationRecord,
    OutcomeUnknown,
    Verdict,
)
from ecpay_lifecycle._journal import JournalWrapper
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "SweeperKey012345", "SweeperIv0123456"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)


@pytest.fixture
def emulator() -> Emulator:
    made = Emulator(now=START)
    made.add_merchant(MID, KEY, IV, balance=10**9)
    for order in ("A1", "B2", "C3"):
        made.authorize(MID, order, 1000, at=START - dt.timedelta(days=1))  # Closed, settled
    return made


def client_of(emulator: Emulator, journal: Journal | None = None) -> Client:
    return Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        journal=journal,
    )


def do_actions(emulator: Emulator) -> int:
    """DoActions that reached ECPay's door (a late landing is the same request, not counted)."""
    return sum(
        1
        for e in emulator.events
        if e.endpoint is Endpoint.DO_ACTION
        and not (e.fault is Fault.LATE_APPLY and not (e.note or "").startswith("in flight"))
    )


def lose(emulator: Emulator, client: Client, order: str, fault: Fault) -> None:
    emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, merchant_trade_no=order)
    with pytest.raises(OutcomeUnknown):
        client.refund(order, 300, idempotency_key=f"k-{order}")


def test_the_sweeper_resolves_every_stuck_order_after_its_fence_and_sends_nothing(
    emulator: Emulator,
) -> None:
    with client_of(emulator) as client:
        lose(emulator, client, "A1", Fault.READ_TIMEOUT_BEFORE_APPLY)  # not applied
        lose(emulator, client, "B2", Fault.LATE_APPLY)  # lands a minute later
        sent = do_actions(emulator)
        early = client.sweep()
        assert early.resolved == 0
        assert early.still_unknown == 2
        again = client.sweep()  # each waits for its fence now
        assert sorted(again.waiting) == ["A1", "B2"]
        assert again.reconciled == ()
        emulator.advance(dt.timedelta(minutes=16))
        done = client.sweep()
        verdicts = {r.merchant_trade_no: r.resolutions[0].verdict for r in done.reconciled}
        assert verdicts == {"A1": Verdict.NOT_DONE, "B2": Verdict.DONE}
        assert do_actions(emulator) == sent  # the sweeper never sends a DoAction
        assert client.sweep().reconciled == ()  # nothing left
        # The keys finish: A1 is sent once now, B2 replays.
        assert client.refund("A1", 300, idempotency_key="k-A1").steps_done[0].attempts == 2
        assert client.refund("B2", 300, idempotency_key="k-B2").replayed
    refunds = [e.merchant_trade_no for e in emulator.applied_do_actions(MID)]
    assert sorted(refunds) == ["A1", "B2"]


def test_what_only_a_person_can_settle_backs_off(emulator: Emulator) -> None:
    with client_of(emulator) as client:

        def chargeback(request: httpx.Request) -> httpx.Response:
            response = emulator.handler(request)
            if request.url.path.endswith("/Credit/DoAction"):
                emulator.set_status(MID, "A1", GatewayStatus.BANK_RECLAIMING)
                raise httpx.ReadTimeout("timed out", request=request)
            return response

        with (
            Client(
                Credentials(MID, KEY, IV),
                transport=httpx.MockTransport(chargeback),
                clock=emulator.clock,
                journal=client.journal,
            ) as unlucky,
            pytest.raises(OutcomeUnknown),
        ):
            unlucky.refund("A1", 300, idempotency_key="k")
        emulator.advance(dt.timedelta(minutes=16))
        gaps = []
        for _ in range(4):
            report = client.sweep()
            assert report.still_unknown == 1
            (record,) = client.journal.for_order(MID, "A1")
            assert record.next_sweep_at is not None
            gaps.append(record.next_sweep_at - emulator.now)
            assert client.sweep().waiting == ("A1",)
            emulator.set_time(record.next_sweep_at)
        assert gaps == [
            dt.timedelta(minutes=1),
            dt.timedelta(minutes=5),
            dt.timedelta(hours=1),
            dt.timedelta(days=1),
        ]


class FrozenOwner(JournalWrapper):
    """A journal whose writer is gone after ``saves`` saves: its operation stays owned."""

    def __init__(self, journal: InMemoryJournal, saves: int) -> None:
        super().__init__(journal)
        self._left = saves

    def save(self, record: OperationRecord) -> OperationRecord:
        if self._left <= 0:
            raise KeyboardInterrupt  # the worker is gone
        self._left -= 1
        return super().save(record)


def test_orders_a_live_owner_runs_are_left_to_it_and_lapsed_owners_are_released(
    emulator: Emulator,
) -> None:
    journal = InMemoryJournal()
    with (
        client_of(emulator, FrozenOwner(journal, saves=0)) as gone,
        pytest.raises(KeyboardInterrupt),
    ):
        gone.refund("C3", 300, idempotency_key="k-C3")  # claimed, then the worker vanished
    with client_of(emulator, journal) as client:
        report = client.sweep()
        assert report.busy == ("C3",)  # its lease is live: someone may be running it
        emulator.advance(dt.timedelta(minutes=3))
        report = client.sweep()
        assert report.released == ("k-C3",)
        (record,) = journal.for_order(MID, "C3")
        assert record.owner is None
        client.refund("C3", 300, idempotency_key="k-C3")  # the key resumes
    assert len(emulator.applied_do_actions(MID, "C3")) == 1


def test_the_sweeper_stops_at_http_403(emulator: Emulator) -> None:
    with client_of(emulator) as client:
        for order in ("A1", "B2"):
            lose(emulator, client, order, Fault.READ_TIMEOUT_BEFORE_APPLY)
        emulator.advance(dt.timedelta(minutes=16))
        emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL)
        report = client.sweep()
        assert report.stopped is not None
        assert "30 minutes" in report.stopped
        assert report.reconciled == ()
        # The client remembers the 403: the next run sends nothing until the pause is over,
        # then goes on.
        assert client.sweep().reconciled == ()
        emulator.advance(dt.timedelta(minutes=30))
        assert len(client.sweep().reconciled) == 2


def test_async_sweep_and_bad_limits(emulator: Emulator) -> None:
    with client_of(emulator) as client:
        emulator.faults.inject(
            Fault.SERVER_ERROR_BEFORE_APPLY, endpoint=Endpoint.CREDIT_DETAIL, after_do_action=True
        )
        lose(emulator, client, "A1", Fault.LOST_REPLY)  # applied; the confirming query failed
        journal = client.journal
        for limit in (0, -1, True):
            with pytest.raises(ValueError, match="limit"):
                client.sweep(limit=limit)

    async def run() -> None:
        async with AsyncClient(
            Credentials(MID, KEY, IV),
            transport=httpx.MockTransport(emulator.async_handler),
            clock=emulator.clock,
            journal=journal,
        ) as aclient:
            report = await aclient.sweep()
            assert [r.resolutions[0].verdict for r in report.reconciled] == [Verdict.DONE]

    asyncio.run(run())
    assert [e.action for e in emulator.applied_do_actions(MID, "A1")] == [Action.REFUND]
