"""A lean in-memory journal (issue 12 item 4): a finished operation is kept flat, at most 600
bytes and at most 2 objects the garbage collector tracks; it reads back equal; forgetting the
oldest never touches what is unresolved. Sizes are measured with tracemalloc and gc, not
timed (the times are in benchmarks/bench_journal_memory.py)."""

from __future__ import annotations

import datetime as dt
import gc
import tracemalloc

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AttemptRecord,
    AttemptStatus,
    InMemoryJournal,
    Intent,
    OperationRecord,
    OperationStatus,
    OrderSnapshot,
    PaymentKind,
    State,
    plan_refund,
)
from ecpay_lifecycle._journal import HOT_RECORDS

MID = "3002607"
NOW = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
LEASE = dt.timedelta(minutes=2)


def finished(n: int, *, order: str | None = None) -> OperationRecord:
    """A completed refund as the engine leaves it: plan, before, one done attempt, final."""
    trade_no = f"26080210{n:08d}"
    number = order or f"Shop{n:016d}"
    before = OrderSnapshot(
        merchant_trade_no=number,
        trade_no=trade_no,
        amount=1000,
        state=State.CLOSED,
        authorized_at=NOW - dt.timedelta(days=1),
        closed_amount=1000,
        kind=PaymentKind.ONE_TIME,
        capture_settled=True,
    )
    plan = plan_refund(before, 300, now=NOW)
    step = plan.steps[0]
    after = attrs.evolve(before, state=step.state_after, closed_amount=step.closed_amount_after)
    attempt = AttemptRecord(
        index=0,
        attempt=1,
        action=Action.REFUND,
        amount=300,
        trade_no=trade_no,
        before=before,
        step=step,
        status=AttemptStatus.DONE,
        at=NOW,
        rtn_code=1,
        rtn_msg="Succeeded.",
        note="accepted (R21)",
        resolvable_at=NOW + dt.timedelta(minutes=15),
    )
    return OperationRecord(
        merchant_id=MID,
        key=f"refund-{number}-r1",
        caller_key=True,
        merchant_trade_no=number,
        request="refund amount=300 capture_first=False",
        intent=Intent.REFUND,
        status=OperationStatus.SUCCEEDED,
        started_at=NOW,
        updated_at=NOW,
        plan=plan,
        before=before,
        attempts=(attempt,),
        final=after,
    )


def store(journal: InMemoryJournal, record: OperationRecord) -> OperationRecord:
    """Put ``record`` in the journal the way the engine does: claim, then save it finished."""
    owned = attrs.evolve(record, owner="w1", lease_until=NOW + LEASE, revision=0)
    claimed = journal.claim(owned, now=NOW).record
    return journal.save(attrs.evolve(record, revision=claimed.revision))


def test_a_finished_operation_reads_back_equal_while_hot_and_once_packed() -> None:
    journal = InMemoryJournal()
    saved = [store(journal, finished(n)) for n in range(HOT_RECORDS * 3)]
    for record in saved:  # the oldest are packed by now, the newest still values
        assert journal.get(MID, record.key) == record
        assert journal.for_order(MID, record.merchant_trade_no) == [record]
    assert journal.open_operations() == []
    # A packed record claimed again (a replay) is decided on the record as it was.
    oldest = saved[0]
    claim = journal.claim(
        attrs.evolve(oldest, owner="w9", lease_until=NOW + LEASE, revision=0), now=NOW
    )
    assert claim.record == oldest


def test_a_finished_operation_costs_at_most_600_bytes_and_2_tracked_objects() -> None:
    count = 2_000
    records = [finished(n) for n in range(count)]
    journal = InMemoryJournal(max_operations=count)
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for record in records:
            store(journal, record)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gc.collect()
    per_object = (len(gc.get_objects()) - tracked) / count
    per_byte = (after - before) / count
    assert len(journal) == count
    assert per_byte <= 600, per_byte
    assert per_object <= 2, per_object


@settings(max_examples=30, deadline=None)
@given(
    unresolved=st.integers(0, 40),
    finished_count=st.integers(1, 150),
    bound=st.integers(1, 160),
)
def test_the_bound_forgets_the_oldest_finished_and_never_an_unresolved_one(
    unresolved: int, finished_count: int, bound: int
) -> None:
    journal = InMemoryJournal(max_operations=bound)
    opened = []
    for n in range(unresolved):
        record = finished(10_000 + n)
        owned = attrs.evolve(
            record,
            status=OperationStatus.RUNNING,
            owner=f"w{n}",
            lease_until=NOW + LEASE,
            final=None,
            revision=0,
        )
        opened.append(journal.claim(owned, now=NOW).record)
    done = [store(journal, finished(n)) for n in range(finished_count)]
    # Every unresolved record is kept, whatever the bound.
    assert sorted(r.key for r in journal.open_operations(limit=1000)) == sorted(
        r.key for r in opened
    )
    # Of the finished, the newest that fit are kept, the older are forgotten.
    room = max(0, bound - unresolved)
    kept = done[len(done) - min(room, len(done)) :] if room else []
    assert [r.key for r in done if journal.get(MID, r.key) is not None] == [r.key for r in kept]
    assert len(journal) == unresolved + len(kept)
    for record in done:
        assert journal.for_order(MID, record.merchant_trade_no) == (
            [record] if record in kept else []
        )


def test_an_order_lists_its_operations_oldest_first_across_both_stores() -> None:
    journal = InMemoryJournal()
    first = store(journal, finished(1, order="SAMEORDER"))
    second_record = attrs.evolve(finished(2, order="SAMEORDER"), key="refund-SAMEORDER-r2")
    running = journal.claim(
        attrs.evolve(
            second_record,
            status=OperationStatus.RUNNING,
            owner="w2",
            lease_until=NOW + LEASE,
            final=None,
        ),
        now=NOW,
    ).record
    assert journal.for_order(MID, "SAMEORDER") == [first, running]
    done = journal.save(attrs.evolve(second_record, revision=running.revision))
    assert journal.for_order(MID, "SAMEORDER") == [first, done]
