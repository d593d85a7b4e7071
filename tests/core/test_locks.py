"""The per-order locks of one process (docs/ecpay-api.md section 9, order serialisation).

:class:`ProcessOrderLocks` must exclude every kind of caller a process has: threads (``hold``),
asyncio tasks in one loop and on loops in different threads (``ahold``), and a thread against a
task. Different orders never wait for each other, an entry lives only while someone holds or
waits for it, and a cancelled waiter holds nothing. Every wait in these tests is bounded, so a
broken lock fails a test instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Literal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecpay_lifecycle import InMemoryJournal, OrderLocks, ProcessOrderLocks

MID = "3002607"
#: How long any one wait in these tests may take before the test fails rather than hangs.
PATIENCE = 10.0
#: How long a waiter is watched to show that it stays out while another caller holds the lock.
WHILE = 0.05


class Section:
    """A critical section with a read-yield-write counter: it loses updates and sees more than
    one caller inside at once unless the lock around it excludes them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.inside = 0
        self.most = 0
        self.count = 0

    def enter(self) -> int:
        with self._guard:
            self.inside += 1
            self.most = max(self.most, self.inside)
        return self.count

    def leave(self, seen: int) -> None:
        self.count = seen + 1
        with self._guard:
            self.inside -= 1

    def run(self, yields: int = 1) -> None:
        seen = self.enter()
        for _ in range(yields):
            time.sleep(0)  # hand the GIL to whoever is waiting
        self.leave(seen)

    async def arun(self, yields: int = 1) -> None:
        seen = self.enter()
        for _ in range(yields):
            await asyncio.sleep(0)  # hand the loop to the other tasks
        self.leave(seen)


def start_threads(*targets: Callable[[], None]) -> Callable[[], list[BaseException]]:
    """Start ``targets`` in threads; the returned join waits (bounded) and gives their errors."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(target), daemon=True) for target in targets]
    for thread in threads:
        thread.start()

    def join() -> list[BaseException]:
        deadline = time.monotonic() + PATIENCE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in threads), "a worker never finished"
        return errors

    return join


def test_process_locks_implement_the_protocol_and_come_with_the_journal() -> None:
    locks = InMemoryJournal().locks
    assert isinstance(locks, ProcessOrderLocks)
    assert isinstance(locks, OrderLocks)
    assert len(locks) == 0
    assert repr(locks) == "ProcessOrderLocks(0 in use)"
    # Two journals never share locks; one journal always hands out the same ones.
    journal = InMemoryJournal()
    assert journal.locks is journal.locks
    assert journal.locks is not locks


# -- exclusion ----------------------------------------------------------------------------------


def test_hold_excludes_threads() -> None:
    locks = ProcessOrderLocks()
    section = Section()
    start = threading.Barrier(6, timeout=PATIENCE)

    def worker() -> None:
        start.wait()
        for _ in range(20):
            with locks.hold(MID, "A1"):
                section.run(yields=3)

    assert start_threads(*[worker] * 6)() == []
    assert (section.most, section.count) == (1, 120)
    assert len(locks) == 0


def test_ahold_excludes_tasks_in_one_loop() -> None:
    locks = ProcessOrderLocks()
    section = Section()

    async def worker() -> None:
        for _ in range(10):
            async with locks.ahold(MID, "A1"):
                await section.arun(yields=3)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(6))), PATIENCE)

    asyncio.run(main())
    assert (section.most, section.count) == (1, 60)
    assert len(locks) == 0


def test_ahold_excludes_tasks_on_two_loops_in_two_threads() -> None:
    locks = ProcessOrderLocks()
    section = Section()
    start = threading.Barrier(2, timeout=PATIENCE)

    async def worker() -> None:
        for _ in range(10):
            async with locks.ahold(MID, "A1"):
                # Yield to this loop's other tasks and to the other thread's loop.
                await section.arun(yields=2)
                time.sleep(0)

    def loop() -> None:
        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(3))), PATIENCE)

        start.wait()
        asyncio.run(main())

    assert start_threads(loop, loop)() == []
    assert (section.most, section.count) == (1, 60)
    assert len(locks) == 0


def test_a_thread_and_tasks_exclude_each_other() -> None:
    locks = ProcessOrderLocks()
    section = Section()
    start = threading.Barrier(2, timeout=PATIENCE)

    def thread() -> None:
        start.wait()
        for _ in range(30):
            with locks.hold(MID, "A1"):
                section.run(yields=3)

    async def task() -> None:
        for _ in range(10):
            async with locks.ahold(MID, "A1"):
                await section.arun(yields=3)

    def loop() -> None:
        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(task(), task(), task()), PATIENCE)

        start.wait()
        asyncio.run(main())

    assert start_threads(thread, loop)() == []
    assert (section.most, section.count) == (1, 60)
    assert len(locks) == 0


def test_a_task_waits_while_a_thread_holds_the_order() -> None:
    locks = ProcessOrderLocks()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold(MID, "A1"):
            held.set()
            assert release.wait(PATIENCE)

    join = start_threads(holder)
    assert held.wait(PATIENCE)
    entered: list[str] = []

    async def main() -> None:
        async def enter() -> None:
            async with locks.ahold(MID, "A1"):
                entered.append("task")

        waiter = asyncio.ensure_future(enter())
        await asyncio.sleep(WHILE)
        assert entered == []  # still out while the thread holds it
        assert not waiter.done()
        release.set()
        await asyncio.wait_for(waiter, PATIENCE)

    asyncio.run(main())
    assert join() == []
    assert entered == ["task"]
    assert len(locks) == 0


def test_a_thread_waits_while_a_task_holds_the_order() -> None:
    locks = ProcessOrderLocks()
    entered = threading.Event()

    async def main() -> None:
        async with locks.ahold(MID, "A1"):

            def enter() -> None:
                with locks.hold(MID, "A1"):
                    entered.set()

            join = start_threads(enter)
            await asyncio.sleep(WHILE)
            assert not entered.is_set()  # still out while the task holds it
            assert len(locks) == 1  # the waiting thread shares the holder's entry
        assert await asyncio.to_thread(entered.wait, PATIENCE)
        assert join() == []

    asyncio.run(main())
    assert len(locks) == 0


# -- independence of orders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [(MID, "B2"), ("2000132", "A1")],
    ids=["another order", "same number, another merchant"],
)
def test_different_orders_do_not_block_each_other(other: tuple[str, str]) -> None:
    locks = ProcessOrderLocks()
    entered = threading.Event()

    def enter() -> None:
        with locks.hold(*other):
            entered.set()

    with locks.hold(MID, "A1"):
        join = start_threads(enter)
        # Would time out if one lock served both orders, since A1 is held until after this.
        assert entered.wait(PATIENCE)
        assert join() == []

        async def main() -> None:
            async with locks.ahold(*other):
                assert len(locks) == 2

        asyncio.run(asyncio.wait_for(main(), PATIENCE))
    assert len(locks) == 0


def test_different_orders_run_together_in_tasks() -> None:
    locks = ProcessOrderLocks()

    async def main() -> None:
        # Both tasks must be inside their order's lock at once to pass the barrier.
        meet = asyncio.Barrier(2)

        async def enter(order: str) -> None:
            async with locks.ahold(MID, order):
                await meet.wait()

        await asyncio.wait_for(asyncio.gather(enter("A1"), enter("B2")), PATIENCE)

    asyncio.run(main())
    assert len(locks) == 0


# -- entries and cancellation -------------------------------------------------------------------


def test_entries_exist_only_while_held_or_awaited() -> None:
    locks = ProcessOrderLocks()
    waiting, entered = threading.Event(), threading.Event()
    assert len(locks) == 0
    with locks.hold(MID, "A1"):
        assert len(locks) == 1

        def wait() -> None:
            waiting.set()
            with locks.hold(MID, "A1"):
                entered.set()

        in_b2, leave_b2 = threading.Event(), threading.Event()

        def hold_b2() -> None:
            with locks.hold(MID, "B2"):
                in_b2.set()
                assert leave_b2.wait(PATIENCE)

        join = start_threads(wait, hold_b2)
        assert waiting.wait(PATIENCE)
        assert in_b2.wait(PATIENCE)
        # The waiter on A1 shares the holder's entry: one per order, not per caller.
        assert len(locks) == 2
        assert repr(locks) == "ProcessOrderLocks(2 in use)"
        leave_b2.set()
        deadline = time.monotonic() + PATIENCE
        while len(locks) > 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(locks) == 1
        assert not entered.is_set()
    assert join() == []
    assert entered.is_set()
    assert len(locks) == 0


def test_an_error_inside_releases_the_lock_and_drops_the_entry() -> None:
    locks = ProcessOrderLocks()
    with pytest.raises(RuntimeError, match="boom"), locks.hold(MID, "A1"):
        raise RuntimeError("boom")
    assert len(locks) == 0

    async def main() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            async with locks.ahold(MID, "A1"):
                raise RuntimeError("boom")
        assert len(locks) == 0
        # Free again for both kinds of caller.
        async with locks.ahold(MID, "A1"):
            pass

    asyncio.run(asyncio.wait_for(main(), PATIENCE))
    with locks.hold(MID, "A1"):
        assert len(locks) == 1
    assert len(locks) == 0


def test_a_cancelled_waiter_holds_nothing_afterwards() -> None:
    locks = ProcessOrderLocks()
    entered: list[str] = []

    async def main() -> None:
        async def enter(name: str) -> None:
            async with locks.ahold(MID, "A1"):
                entered.append(name)

        async with locks.ahold(MID, "A1"):
            waiter = asyncio.ensure_future(enter("cancelled"))
            await asyncio.sleep(WHILE)
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            # Only the holder's use of the entry is left.
            assert len(locks) == 1
        assert len(locks) == 0
        # The lock is free at once: a waiter that kept it would make this time out.
        await asyncio.wait_for(enter("next"), PATIENCE)

    asyncio.run(main())
    assert entered == ["next"]
    assert len(locks) == 0
    # A thread can take it too, without waiting.
    with locks.hold(MID, "A1"):
        pass


def test_a_waiter_cancelled_by_a_timeout_holds_nothing_afterwards() -> None:
    locks = ProcessOrderLocks()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold(MID, "A1"):
            held.set()
            assert release.wait(PATIENCE)

    join = start_threads(holder)
    assert held.wait(PATIENCE)

    async def main() -> None:
        async def enter() -> None:
            async with locks.ahold(MID, "A1"):
                pass

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(enter(), WHILE)

    asyncio.run(main())
    assert len(locks) == 1  # the thread's hold only
    release.set()
    assert join() == []
    assert len(locks) == 0


def test_a_task_cancelled_while_holding_releases_the_order() -> None:
    locks = ProcessOrderLocks()

    async def main() -> None:
        inside = asyncio.Event()

        async def hold_forever() -> None:
            async with locks.ahold(MID, "A1"):
                inside.set()
                await asyncio.sleep(PATIENCE * 10)

        holder = asyncio.ensure_future(hold_forever())
        await asyncio.wait_for(inside.wait(), PATIENCE)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert len(locks) == 0
        async with asyncio.timeout(PATIENCE), locks.ahold(MID, "A1"):
            pass

    asyncio.run(main())
    assert len(locks) == 0


# -- random interleavings -----------------------------------------------------------------------

ORDERS = ["A1", "B2"]


@attrs.frozen
class Worker:
    """One caller: a thread (``hold``), a task in the shared loop, or a task on its own loop;
    it enters ``orders`` one after the other, yielding ``yields`` times inside each."""

    kind: Literal["thread", "task", "loop"]
    work: tuple[tuple[str, int], ...]


workers = st.lists(
    st.builds(
        Worker,
        kind=st.sampled_from(["thread", "task", "loop"]),
        work=st.lists(
            st.tuples(st.sampled_from(ORDERS), st.integers(0, 3)), min_size=1, max_size=4
        ).map(tuple),
    ),
    min_size=2,
    max_size=5,
)


@given(workers=workers)
def test_random_interleavings_keep_each_order_exclusive(workers: list[Worker]) -> None:
    """Whatever mix of threads, tasks and loops runs, each order's section has one caller at a
    time, no update is lost, and no entry outlives its users."""
    locks = ProcessOrderLocks()
    sections = {order: Section() for order in ORDERS}

    def thread(worker: Worker) -> Callable[[], None]:
        def run() -> None:
            start.wait()
            for order, yields in worker.work:
                with locks.hold(MID, order):
                    sections[order].run(yields)

        return run

    async def task(worker: Worker) -> None:
        for order, yields in worker.work:
            async with locks.ahold(MID, order):
                await sections[order].arun(yields)
            time.sleep(0)  # let the threads and the other loops at the lock between sections

    def loop(tasks: list[Worker]) -> Callable[[], None]:
        def run() -> None:
            async def main() -> None:
                await asyncio.wait_for(asyncio.gather(*(task(w) for w in tasks)), PATIENCE)

            start.wait()
            asyncio.run(main())

        return run

    targets = [thread(w) for w in workers if w.kind == "thread"]
    targets += [loop([w]) for w in workers if w.kind == "loop"]
    shared = [w for w in workers if w.kind == "task"]
    if shared:
        targets.append(loop(shared))
    start = threading.Barrier(len(targets), timeout=PATIENCE)

    assert start_threads(*targets)() == []
    for order in ORDERS:
        expected = sum(1 for w in workers for o, _ in w.work if o == order)
        assert sections[order].count == expected
        assert sections[order].most == min(expected, 1)
    assert len(locks) == 0
