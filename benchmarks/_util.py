"""Timing helpers shared by the benchmarks: best-of-N per-call time, and ratio formatting.

Figures are always ratios against a baseline measured in the same run, because these machines
are shared and noisy; absolute times are printed only for orientation.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def per_call(fn: Callable[[], object], *, number: int, repeat: int) -> float:
    """Best (lowest) seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def interleaved(
    fns: dict[str, Callable[[], object]], *, number: int, repeat: int
) -> dict[str, float]:
    """Like :func:`per_call` for several functions, alternating them round by round so that
    a burst of load on the machine hits all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


def us(seconds: float) -> str:
    """Microseconds, for orientation only."""
    return f"{seconds * 1e6:.1f} µs"


def report(name: str, value: float, baseline: float, target: float | None = None) -> str:
    """One line: ``name: 1.23x baseline (target <= 1.5x) [ok]``."""
    ratio = value / baseline
    line = f"{name}: {ratio:.2f}x baseline ({us(value)} vs {us(baseline)})"
    if target is not None:
        line += f"  target <= {target:g}x  [{'ok' if ratio <= target else 'OVER TARGET'}]"
    return line
