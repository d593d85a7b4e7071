"""Run SPIN on the models of this directory and read what it found.

The checks of model/README.md, one function each: ``check(model, mode)`` generates the
verifier (``spin -a``), compiles it with the C compiler and runs it in a scratch directory,
and returns the figures SPIN printed (states stored, transitions, the depth, the error and its
trail). Used by ``tests/core/test_model.py`` and ``model/trail2scenario.py``; runnable on its own::

    python model/spinrun.py                  # every check of the suite, with its figures
    python model/spinrun.py model/one_key.pml --mode liveness

Needs ``spin`` and a C compiler (Debian: ``apt-get install spin gcc``). Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

MODEL_DIR = pathlib.Path(__file__).resolve().parent
ROOT = MODEL_DIR.parent

#: How each kind of check compiles and runs the verifier. ``safety``: every reachable state,
#: assertions (P1-P3) and end states; ``liveness``: acceptance cycles of the claim ``live``
#: under weak fairness (-f); ``mutant``: the first assertion violation, searched depth-first
#: to a small depth so that the trail stays short.
#: The C optimisation suits the run: -O0 compiles in a second, -O1 takes four and pays off on
#: the runs of millions of states. COLLAPSE compresses the states (a third of the memory).
MODES = {
    "safety": (("-O1", "-DSAFETY", "-DNOCLAIM", "-DCOLLAPSE"), ("-m2000000",)),
    "liveness": (("-O1", "-DCOLLAPSE", "-DNFAIR=3"), ("-a", "-f", "-m2000000")),
    "mutant": (("-O0", "-DSAFETY", "-DNOCLAIM", "-DCOLLAPSE"), ("-m400",)),
}
#: pan stops instead of swapping past this many megabytes.
MEMORY_LIMIT_MB = 3072
#: 2**23 hash slots (64 MB): SPIN chains what does not fit, and a larger table only costs the
#: time to clear it.
HASH_BITS = 23

#: The suite: every model that must hold, safety and liveness, and every mutant, which must
#: fail. Paths relative to the repository.
MUST_HOLD = sorted(p.relative_to(ROOT).as_posix() for p in MODEL_DIR.glob("*.pml"))
MUTANTS = sorted(p.relative_to(ROOT).as_posix() for p in (MODEL_DIR / "mutants").glob("*.pml"))


@dataclasses.dataclass(frozen=True)
class Result:
    """What one run of the verifier reported."""

    model: str
    mode: str
    defines: tuple[str, ...]
    errors: int
    states: int
    transitions: int
    depth: int
    seconds: float
    compile_seconds: float
    violation: str | None
    complete: bool
    output: str
    trail: pathlib.Path | None

    def line(self) -> str:
        """One line for the table in docs/safety.md."""
        verdict = "holds" if self.errors == 0 else f"fails: {self.violation}"
        flags = " ".join(self.defines)
        return (
            f"{self.model} {self.mode}{' ' + flags if flags else ''}: {verdict}; "
            f"{self.states:,} states stored, {self.transitions:,} transitions, depth "
            f"{self.depth:,}; {self.seconds:.1f} s (+{self.compile_seconds:.1f} s to compile)"
        )


def tools() -> tuple[str, str] | None:
    """``spin`` and a C compiler, or None when either is missing."""
    spin = shutil.which("spin")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if spin is None or cc is None:
        return None
    return spin, cc


def _model_path(model: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(model)
    return path if path.is_absolute() else ROOT / path


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(float(match.group(1))) if match else 0


def check(
    model: str | os.PathLike[str],
    mode: str,
    *,
    defines: Sequence[str] = (),
    workdir: str | os.PathLike[str] | None = None,
) -> Result:
    """Generate, compile and run the verifier of ``model`` for ``mode`` (see MODES).

    ``defines`` are extra ``-DNAME=VALUE`` for the model (a smaller configuration, say). The
    scratch directory keeps pan and the trail; with ``workdir`` None a temporary one is used and
    the trail is lost.
    """
    found = tools()
    if found is None:
        raise RuntimeError("spin or a C compiler is missing: apt-get install spin gcc")
    spin, cc = found
    compile_flags, run_flags = MODES[mode]
    path = _model_path(model)
    spin_defines = list(defines) + (["-DLIVENESS"] if mode == "liveness" else [])
    with tempfile.TemporaryDirectory(prefix="spin-") as scratch:
        where = pathlib.Path(workdir) if workdir is not None else pathlib.Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        for stale in where.glob("*.trail"):
            stale.unlink()
        generated = subprocess.run(
            [spin, *spin_defines, "-a", str(path)],
            cwd=where,
            capture_output=True,
            text=True,
            check=False,
        )
        if generated.returncode != 0 or not (where / "pan.c").exists():
            raise RuntimeError(f"spin -a {path} failed:\n{generated.stdout}{generated.stderr}")
        started = time.monotonic()
        subprocess.run(
            [cc, "-w", *compile_flags, f"-DMEMLIM={MEMORY_LIMIT_MB}", "-o", "pan", "pan.c"],
            cwd=where,
            check=True,
            capture_output=True,
        )
        compiled = time.monotonic() - started
        started = time.monotonic()
        ran = subprocess.run(
            ["./pan", *run_flags, f"-w{HASH_BITS}"],
            cwd=where,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
        output = ran.stdout + ran.stderr
        trails = sorted(where.glob("*.trail"))
        violation = None
        assertion = re.search(r"assertion violated \(?(.+?)\)? \(at depth", output)
        if assertion:
            violation = assertion.group(1).strip()
        elif "acceptance cycle" in output:
            violation = "acceptance cycle"
        elif "invalid end state" in output:
            violation = "invalid end state"
        return Result(
            model=path.relative_to(ROOT).as_posix(),
            mode=mode,
            defines=tuple(defines),
            errors=_number(r"errors: (\d+)", output),
            states=_number(r"([\d.e+]+) states, stored", output),
            transitions=_number(r"([\d.e+]+) transitions \(", output),
            depth=_number(r"depth reached (\d+)", output),
            seconds=seconds,
            compile_seconds=compiled,
            violation=violation,
            complete="max search depth too small" not in output
            and "out of memory" not in output
            and "errors:" in output,
            output=output,
            trail=trails[0] if trails and workdir is not None else None,
        )


def suite() -> list[tuple[str, str]]:
    """Every (model, mode) the test suite runs."""
    checks = [(model, mode) for model in MUST_HOLD for mode in ("safety", "liveness")]
    return checks + [(model, "mutant") for model in MUTANTS]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a .pml file; none: the whole suite")
    parser.add_argument("--mode", choices=sorted(MODES), default="safety")
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    checks = [(args.model, args.mode)] if args.model else suite()
    failed = 0
    for model, mode in checks:
        result = check(model, mode, defines=[f"-D{d}" for d in args.defines])
        # A mutant's search is bounded: finding the violation is the point.
        ok = result.errors > 0 if mode == "mutant" else result.complete and result.errors == 0
        failed += not ok
        sys.stdout.write(("" if ok else "UNEXPECTED ") + result.line() + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
