"""Run every benchmark: ``python benchmarks/run.py`` (full) or ``--quick`` (CI: proves they run).

Each ``benchmarks/bench_*.py`` module has ``main(quick: bool) -> None`` that prints its figures as
ratios against a baseline measured in the same run. ``python benchmarks/run.py NAME`` runs one.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations; for CI")
    parser.add_argument("names", nargs="*", help="bench names (e.g. planner codec); default all")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    names = args.names or sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        start = time.perf_counter()
        module.main(quick=args.quick)
        print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
