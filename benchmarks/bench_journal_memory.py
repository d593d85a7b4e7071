"""The in-memory journal's footprint (issue 12 item 4).

Run: ``.venv/bin/python benchmarks/run.py journal_memory``. Figures, all in the same run:

* bytes and garbage-collector-tracked objects per completed operation in ``InMemoryJournal``,
  beside the same records kept as values (what the journal did before) and beside a flat tuple
  of strings per operation. Targets: at most 600 B and 2 tracked objects.
* a full ``gc.collect()`` with N completed operations live (100,000 in full mode), beside the
  same N flat tuples and the same N records kept as values.
* a save once the bound is reached, with 10,000 unresolved records at the old end, beside the
  same save with none: forgetting the oldest is constant-time (target: within 2x).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import attrs

# Appended, not inserted: benchmarks/_pg.py must win over tests/_pg.py for the benchmarks run after.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests" / "core"))

from ecpay_lifecycle import InMemoryJournal, OperationStatus
from test_journal_memory import LEASE, MID, NOW, finished, store


def footprint(fill: Callable[[], object], count: int) -> tuple[float, float, object]:
    """(bytes per operation, tracked objects per operation, the filled container)."""
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    kept = fill()
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    return (after - before) / count, (len(gc.get_objects()) - tracked) / count, kept


def full_collection(kept: object) -> float:
    """Seconds of the best of 5 full collections with ``kept`` alive."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - start)
    del kept
    return best


def main(quick: bool) -> None:
    count = 5_000 if quick else 100_000
    # Each fill makes its records as it goes, so what stays alive is only what it keeps.

    def journal_fill() -> InMemoryJournal:
        journal = InMemoryJournal(max_operations=count)
        for n in range(count):
            store(journal, finished(n))
        return journal

    def values_fill() -> dict[tuple[str, str], object]:
        # The records as values, as the journal kept them before this change.
        kept = {}
        for n in range(count):
            record = finished(n)
            kept[(record.merchant_id, record.key)] = record
        return kept

    def tuples_fill() -> dict[tuple[str, str], tuple[str, str, int]]:
        kept = {}
        for n in range(count):
            record = finished(n)
            kept[(record.merchant_id, record.key)] = (record.merchant_trade_no, record.request, 2)
        return kept

    journal_bytes, journal_objects, journal = footprint(journal_fill, count)
    journal_gc = full_collection(journal)
    del journal
    values_bytes, values_objects, values = footprint(values_fill, count)
    values_gc = full_collection(values)
    del values
    tuples_bytes, tuples_objects, tuples = footprint(tuples_fill, count)
    tuples_gc = full_collection(tuples)
    del tuples
    gc.collect()
    empty_gc = full_collection(None)
    ok = journal_bytes <= 600 and journal_objects <= 2
    verdict = "ok" if ok else "OVER TARGET"
    print(
        f"  per completed operation: InMemoryJournal {journal_bytes:.0f} B and "
        f"{journal_objects:.2f} tracked objects (target <= 600 B, <= 2) [{verdict}]; "
        f"as values {values_bytes:.0f} B and {values_objects:.1f}; flat tuples "
        f"{tuples_bytes:.0f} B and {tuples_objects:.2f}",
        flush=True,
    )
    added = {
        name: max(seconds - empty_gc, 1e-6)
        for name, seconds in (("journal", journal_gc), ("values", values_gc), ("tuples", tuples_gc))
    }
    print(
        f"  a full gc.collect() with {count:,} operations live: InMemoryJournal "
        f"{journal_gc * 1e3:.1f} ms, as values {values_gc * 1e3:.1f} ms, flat tuples "
        f"{tuples_gc * 1e3:.1f} ms, nothing {empty_gc * 1e3:.1f} ms (the rest of this "
        f"process); added by the operations: journal {added['journal'] * 1e3:.1f} ms, values "
        f"{added['values'] * 1e3:.1f} ms, flat tuples {added['tuples'] * 1e3:.1f} ms",
        flush=True,
    )

    # Eviction with unresolved records at the old end.
    unresolved = 10_000 if not quick else 1_000
    saves = 2_000 if not quick else 300
    fresh = [finished(200_000 + n) for n in range(saves)]

    def saving(stuck: int) -> float:
        journal = InMemoryJournal(max_operations=stuck + 100)
        for n in range(stuck):
            record = finished(300_000 + n)
            journal.claim(
                attrs.evolve(
                    record,
                    status=OperationStatus.RUNNING,
                    owner="w",
                    lease_until=NOW + LEASE,
                    final=None,
                    revision=0,
                ),
                now=NOW,
            )
        for record in fresh[:100]:
            store(journal, record)  # the bound is reached
        start = time.perf_counter()
        for record in fresh[100:]:
            store(journal, record)
        elapsed = (time.perf_counter() - start) / (saves - 100)
        assert len(journal) == stuck + 100
        assert journal.get(MID, fresh[-1].key) is not None
        return elapsed

    with_stuck = min(saving(unresolved) for _ in range(3))
    without = min(saving(0) for _ in range(3))
    ratio = with_stuck / without
    print(
        f"  a save at the bound (claim + save, forgetting the oldest finished): "
        f"{with_stuck * 1e6:.0f} µs with {unresolved:,} unresolved at the old end, "
        f"{without * 1e6:.0f} µs with none = {ratio:.2f}x (target <= 2x) "
        f"[{'ok' if ratio <= 2 else 'OVER TARGET'}]",
        flush=True,
    )


if __name__ == "__main__":
    main(quick=False)
