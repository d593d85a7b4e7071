"""The operation journal and the judgement of unknown outcomes (spec section 9).

The journal: claim is insert-if-absent, save replaces, for_order lists an order's records, the
in-memory store stays bounded without ever forgetting a record that locks its order, and every
record round-trips through JSON. The judgement: reached -> done, unchanged -> not done, anything
else (or anything ambiguous after ECPay's batch) -> unknown.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AttemptRecord,
    AttemptStatus,
    InMemoryJournal,
    Intent,
    InvalidArgument,
    InvalidArgumentType,
    Journal,
    OperationRecord,
    OperationStatus,
    OrderSnapshot,
    PaymentKind,
    Plan,
    Reconciliation,
    Resolution,
    RuleViolation,
    State,
    Step,
    Verdict,
    plan_abandon,
    plan_capture,
    plan_refund,
)
from ecpay_lifecycle._outcome import judge

NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)
AUTH = dt.datetime(2026, 8, 1, 9, 30, tzinfo=TAIPEI)


def snap(
    state: State,
    closed: int = 0,
    *,
    amount: int = 1000,
    settled: bool | None = None,
    auto_close: bool = True,
    kind: PaymentKind = PaymentKind.ONE_TIME,
) -> OrderSnapshot:
    extra = {} if settled is None else {"capture_settled": settled}
    return OrderSnapshot(
        merchant_trade_no="A1",
        trade_no="2608010930000001",
        amount=amount,
        state=state,
        authorized_at=AUTH,
        closed_amount=closed,
        kind=kind,
        auto_close=auto_close,
        **extra,
    )


def step(action: Action, amount: int, state: State, closed: int) -> Step:
    return Step(
        action=action,
        amount=amount,
        state_after=state,
        closed_amount_after=closed,
        capture_settled_after=False,
        rule="R9",
    )


def record(
    key: str = "k1",
    order: str = "A1",
    *,
    attempts: tuple[AttemptRecord, ...] = (),
    status: OperationStatus = OperationStatus.RUNNING,
) -> OperationRecord:
    return OperationRecord(
        merchant_id="3002607",
        key=key,
        caller_key=True,
        merchant_trade_no=order,
        request="refund amount=300 capture_first=False",
        intent=Intent.REFUND,
        status=status,
        started_at=NOW,
        updated_at=NOW,
        attempts=attempts,
    )


def attempt(status: AttemptStatus, *, index: int = 0) -> AttemptRecord:
    before = snap(State.CLOSED, 1000)
    return AttemptRecord(
        index=index,
        attempt=1,
        action=Action.REFUND,
        amount=300,
        trade_no=before.trade_no,
        before=before,
        step=step(Action.REFUND, 300, State.TO_CLOSE, 700),
        status=status,
        at=NOW,
        rtn_code=1 if status is AttemptStatus.DONE else None,
        rtn_msg="Success" if status is AttemptStatus.DONE else "",
    )


# -- the journal -------------------------------------------------------------------------------


def test_in_memory_journal_implements_the_protocol() -> None:
    assert isinstance(InMemoryJournal(), Journal)


def test_claim_stores_once_and_then_returns_the_existing_record() -> None:
    journal = InMemoryJournal()
    first = record()
    assert journal.claim(first) is None
    second = record(status=OperationStatus.STOPPED)
    assert journal.claim(second) == first
    assert journal.for_order("3002607", "A1") == [first]


def test_claim_is_atomic_across_threads() -> None:
    journal = InMemoryJournal()
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def claim() -> None:
        barrier.wait()
        won.append(journal.claim(record()) is None)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 7 + [True]


def test_save_replaces_and_for_order_lists_only_that_order() -> None:
    journal = InMemoryJournal()
    journal.save(record("k1", "A1"))
    journal.save(record("k2", "B2"))
    updated = record("k1", "A1", status=OperationStatus.SUCCEEDED)
    journal.save(updated)
    assert journal.for_order("3002607", "A1") == [updated]
    assert [r.key for r in journal.for_order("3002607", "B2")] == ["k2"]
    assert journal.for_order("3002607", "C3") == []
    assert journal.for_order("other", "A1") == []


def test_the_bound_forgets_the_oldest_finished_but_never_an_open_record() -> None:
    journal = InMemoryJournal(max_operations=3)
    locking = record("open", "A1", attempts=(attempt(AttemptStatus.UNKNOWN),))
    journal.save(locking)
    for n in range(10):
        journal.save(record(f"done{n}", f"B{n}", status=OperationStatus.SUCCEEDED))
    assert len(journal) == 3
    assert journal.for_order("3002607", "A1") == [locking]
    assert [r.key for r in journal.for_order("3002607", "B9")] == ["done9"]
    assert journal.for_order("3002607", "B0") == []
    # A replaced record counts once, and the order index follows it.
    journal.save(record("done9", "B9", status=OperationStatus.STOPPED))
    assert len(journal) == 3


@pytest.mark.parametrize("bad", [0, -1])
def test_journal_bound_must_be_positive(bad: int) -> None:
    with pytest.raises(InvalidArgument):
        InMemoryJournal(max_operations=bad)


def test_journal_bound_must_be_an_int() -> None:
    with pytest.raises(InvalidArgumentType):
        InMemoryJournal(max_operations=True)


def test_open_attempt_is_the_last_unresolved_one() -> None:
    assert record().open_attempt is None
    sending = attempt(AttemptStatus.SENDING)
    assert record(attempts=(attempt(AttemptStatus.NOT_DONE), sending)).open_attempt == sending
    assert record(attempts=(attempt(AttemptStatus.DONE),)).open_attempt is None
    assert AttemptStatus.UNKNOWN.open
    assert not AttemptStatus.REFUSED.open


def full_record() -> OperationRecord:
    before = snap(State.CLOSED, 1000)
    plan = plan_refund(before, 300, now=NOW)
    return OperationRecord(
        merchant_id="3002607",
        key="k1",
        caller_key=True,
        merchant_trade_no="A1",
        request="refund amount=300 capture_first=False",
        intent=Intent.REFUND,
        status=OperationStatus.SUCCEEDED,
        started_at=NOW,
        updated_at=NOW + dt.timedelta(seconds=1),
        plan=plan,
        before=before,
        attempts=(attempt(AttemptStatus.NOT_DONE), attempt(AttemptStatus.DONE)),
        final=snap(State.TO_CLOSE, 700, settled=True),
    )


def test_records_round_trip_through_json() -> None:
    original = full_record()
    text = json.dumps(original.to_dict())
    assert OperationRecord.from_dict(json.loads(text)) == original
    sparse = record(attempts=(attempt(AttemptStatus.SENDING),))
    assert OperationRecord.from_dict(json.loads(json.dumps(sparse.to_dict()))) == sparse


@given(
    state=st.sampled_from([State.AUTHORIZED, State.TO_CLOSE, State.CLOSED]),
    amount=st.integers(1, 10**7),
    kind=st.sampled_from([PaymentKind.ONE_TIME, PaymentKind.INSTALLMENT, PaymentKind.BONUS]),
    auto_close=st.booleans(),
    data=st.data(),
)
@settings(max_examples=100)
def test_every_plan_and_snapshot_round_trips(
    state: State, amount: int, kind: PaymentKind, auto_close: bool, data: st.DataObject
) -> None:
    closed = 0 if state is State.AUTHORIZED else data.draw(st.integers(1, amount))
    before = snap(state, closed, amount=amount, kind=kind, auto_close=auto_close)
    plans: list[Plan | None] = [None]
    for make in (
        lambda: plan_refund(before, now=NOW),
        lambda: plan_capture(before, now=NOW),
        lambda: plan_abandon(before, now=NOW),
    ):
        # A refused plan has nothing to round-trip; the others all must.
        with contextlib.suppress(RuleViolation):
            plans.append(make())
    for plan in plans:
        original = OperationRecord(
            merchant_id="3002607",
            key="k",
            caller_key=False,
            merchant_trade_no="A1",
            request="x",
            intent=Intent.REFUND,
            status=OperationStatus.RUNNING,
            started_at=NOW,
            updated_at=NOW,
            plan=plan,
            before=before,
        )
        assert OperationRecord.from_dict(json.loads(json.dumps(original.to_dict()))) == original


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("key"),
        lambda d: d.update(status="maybe"),
        lambda d: d.update(started_at="2026-08-01T10:00:00"),
        lambda d: d["attempts"][0].update(amount="300"),
        lambda d: d["attempts"][0].update(action="X"),
        lambda d: d["before"].update(amount=True),
        lambda d: d["before"].update(closed_amount=5000),
        lambda d: d["plan"]["steps"][0].pop("rule"),
        lambda d: d.update(attempts=None),
    ],
)
def test_a_malformed_record_raises_a_typed_error(damage: object) -> None:
    data = full_record().to_dict()
    damage(data)  # type: ignore[operator]
    with pytest.raises((InvalidArgument, InvalidArgumentType)):
        OperationRecord.from_dict(data)


# -- the judgement (spec section 9) ------------------------------------------------------------

R300 = (State.TO_CLOSE, 700)


@pytest.mark.parametrize(
    ("before", "observed", "expected", "verdict"),
    [
        # R(300) on a closed order: reached, unchanged, something else.
        (snap(State.CLOSED, 1000), snap(State.TO_CLOSE, 700, settled=True), R300, Verdict.DONE),
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 1000), R300, Verdict.NOT_DONE),
        (snap(State.CLOSED, 1000), snap(State.TO_CLOSE, 400, settled=True), R300, Verdict.UNKNOWN),
        (snap(State.CLOSED, 1000), snap(State.UNSETTLED), R300, Verdict.UNKNOWN),
        # The batch ran between the step and the query: its version of either side counts.
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 700), R300, Verdict.DONE),
        (
            snap(State.TO_CLOSE, 1000, settled=True),
            snap(State.CLOSED, 1000),
            R300,
            Verdict.NOT_DONE,
        ),
        # A pending refund of everything settles as Refunded.
        (
            snap(State.TO_CLOSE, 300, settled=True),
            snap(State.REFUNDED),
            (State.TO_CLOSE, 0),
            Verdict.DONE,
        ),
        # E on a pending capture restores the hold; with auto-close on the batch would close an
        # authorized order for its whole amount, which is what not doing E looks like too.
        (
            snap(State.TO_CLOSE, 1000),
            snap(State.AUTHORIZED),
            (State.AUTHORIZED, 0),
            Verdict.DONE,
        ),
        (
            snap(State.TO_CLOSE, 1000),
            snap(State.CLOSED, 1000),
            (State.AUTHORIZED, 0),
            Verdict.UNKNOWN,
        ),
        (
            snap(State.TO_CLOSE, 1000, auto_close=False),
            snap(State.CLOSED, 1000, auto_close=False),
            (State.AUTHORIZED, 0),
            Verdict.NOT_DONE,
        ),
        # C: with auto-close on, a captured order is what both sides turn into: never guessed.
        (snap(State.AUTHORIZED), snap(State.CLOSED, 1000), (State.TO_CLOSE, 1000), Verdict.UNKNOWN),
        (
            snap(State.AUTHORIZED, auto_close=False),
            snap(State.CLOSED, 1000, auto_close=False),
            (State.TO_CLOSE, 1000),
            Verdict.DONE,
        ),
        # N: abandoned is reached; the batch capturing it instead means N did not happen.
        (snap(State.AUTHORIZED), snap(State.ABANDONED), (State.ABANDONED, 0), Verdict.DONE),
        (snap(State.AUTHORIZED), snap(State.CLOSED, 1000), (State.ABANDONED, 0), Verdict.NOT_DONE),
        # A step that would change nothing cannot be judged.
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 1000), (State.CLOSED, 1000), Verdict.UNKNOWN),
        # A raw DoAction expects only a change: only "nothing changed" is provable.
        (snap(State.CLOSED, 1000), snap(State.CLOSED, 1000), None, Verdict.NOT_DONE),
        (snap(State.CLOSED, 1000), snap(State.TO_CLOSE, 700, settled=True), None, Verdict.UNKNOWN),
        (
            snap(State.TO_CLOSE, 1000, settled=True),
            snap(State.CLOSED, 1000),
            None,
            Verdict.NOT_DONE,
        ),
    ],
)
def test_judge(
    before: OrderSnapshot,
    observed: OrderSnapshot,
    expected: tuple[State, int] | None,
    verdict: Verdict,
) -> None:
    assert judge(before, observed, expected) is verdict


@given(
    before_closed=st.integers(1, 1000),
    refund=st.integers(1, 1000),
    observed_closed=st.integers(0, 1000),
    observed_state=st.sampled_from(list(State)),
)
def test_judge_never_calls_a_step_both_done_and_not_done(
    before_closed: int, refund: int, observed_closed: int, observed_state: State
) -> None:
    """Done only when the order shows the step's amount; not done only when it shows none."""
    if refund > before_closed:
        return
    before = snap(State.CLOSED, before_closed, settled=True)
    expected = (State.TO_CLOSE, before_closed - refund)
    try:
        observed = snap(
            observed_state, observed_closed, settled=observed_state is not State.AUTHORIZED
        )
    except InvalidArgument:
        return
    verdict = judge(before, observed, expected)
    if verdict is Verdict.DONE:
        assert observed.closed_amount == before_closed - refund
    if verdict is Verdict.NOT_DONE:
        assert observed.closed_amount == before_closed


def test_reconciliation_is_locked_while_any_step_is_unknown() -> None:
    def resolution(verdict: Verdict) -> Resolution:
        return Resolution(
            idempotency_key=None,
            action=Action.REFUND,
            amount=300,
            verdict=verdict,
            declared=False,
            outcome=None,
        )

    base = snap(State.CLOSED, 1000)
    assert not Reconciliation(merchant_trade_no="A1", snapshot=base, resolutions=()).locked
    assert Reconciliation(
        merchant_trade_no="A1",
        snapshot=base,
        resolutions=(resolution(Verdict.DONE), resolution(Verdict.UNKNOWN)),
    ).locked
