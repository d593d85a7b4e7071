"""Turn a SPIN counterexample trail of a model into an emulator scenario for the real client.

Every step of a model prints one line ``@@ <who> <step> key=value ...`` (see protocol.inc):
a worker's effect (its claim, the order lock, a query, a journal save, the DoAction and its
reply), or the environment's move (a tick of 5 minutes, ECPay's batch, a process killed, an
order lock freed under a live holder, a held request landing). Replaying the trail with
``spin -t`` prints those lines in the trail's order; this tool reads them and writes the
scenario: the model's configuration (which order, which keys, which amounts) and the events in
order, each naming the worker and the effect it must perform, or the environment's move.
``tests/_model_replay.py`` plays a scenario against ``ecpay_lifecycle.Client`` and the emulator,
one effect at a time, and reports where the real code stopped following the trail.

    python model/trail2scenario.py model/mutants/no_fence.pml            # search, then convert
    python model/trail2scenario.py model/mutants/no_fence.pml --trail T  # convert trail T
    python model/trail2scenario.py model/one_key.pml --seed 7           # a random run

Standard library only; needs ``spin`` and a C compiler.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import spinrun  # this directory's sibling module

#: The configuration macros a scenario needs (protocol.inc's header explains each).
CONFIG = ("NW", "NK", "CAP", "AMT0", "AMT1", "AT_ONCE", "SETTLED", "BATCH")
#: Names of the DoAction fates the model prints (protocol.inc, R_*).
FATES = {1: "accepted", 2: "lost", 3: "rejected", 4: "not_sent", 5: "late"}
#: Names of the claim results (ClaimStatus) and verdicts the model prints.
CLAIMS = {1: "owner", 2: "busy", 3: "finished"}
VERDICTS = {1: "done", 2: "not_done", 3: "unknown"}

_LINE = re.compile(r"^\s*@@ (\S+) (\S+)(.*)$")


def config(model: str | pathlib.Path, defines: Sequence[str] = ()) -> dict[str, int]:
    """The model's configuration macros, as the C preprocessor SPIN uses sees them."""
    path = spinrun._model_path(model)
    tools = spinrun.tools()
    if tools is None:
        raise RuntimeError("spin or a C compiler is missing: apt-get install spin gcc")
    ran = subprocess.run(
        [tools[1], "-E", "-dM", "-x", "c", *defines, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    macros = dict(
        match.groups()
        for match in re.finditer(r"^#define (\w+) (.+)$", ran.stdout, flags=re.MULTILINE)
    )
    return {name: int(macros[name]) for name in CONFIG}


def trail_lines(
    model: str | pathlib.Path, trail: pathlib.Path, defines: Sequence[str] = ()
) -> list[str]:
    """The ``@@`` lines SPIN prints while it replays ``trail``."""
    tools = spinrun.tools()
    if tools is None:
        raise RuntimeError("spin or a C compiler is missing: apt-get install spin gcc")
    path = spinrun._model_path(model)
    ran = subprocess.run(
        [tools[0], *defines, "-t", "-k", str(trail), str(path)],
        cwd=trail.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.strip() for line in ran.stdout.splitlines() if _LINE.match(line)]


def event(line: str) -> dict[str, Any]:
    """One printed step as a scenario event."""
    match = _LINE.match(line)
    if match is None:
        raise ValueError(f"not a model step: {line!r}")
    who, step, rest = match.groups()
    fields: dict[str, Any] = {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)", rest)}
    if who == "env":
        return {"env": step, **fields}
    if who == "gw":
        return {"gateway": step, **fields}
    found: dict[str, Any] = {"worker": int(who), "step": step, **fields}
    if "fate" in found:
        found["fate"] = FATES[found["fate"]]
    if step in ("open", "reclaim") and "res" in found:
        found["res"] = CLAIMS[found["res"]]
    if "verdict" in found:
        found["verdict"] = VERDICTS[found["verdict"]]
    return found


def scenario(
    model: str | pathlib.Path, trail: pathlib.Path, defines: Sequence[str] = ()
) -> dict[str, Any]:
    """The scenario of one trail: configuration, events, and the first mutated step."""
    events = [event(line) for line in trail_lines(model, trail, defines)]
    mutated = next((i for i, e in enumerate(events) if e.get("mut") == 1), None)
    return {
        "model": spinrun._model_path(model).relative_to(spinrun.ROOT).as_posix(),
        "defines": list(defines),
        "config": config(model, defines),
        "events": events,
        "mutated_at": mutated,
    }


def simulate(
    model: str | pathlib.Path, seed: int, steps: int, defines: Sequence[str] = ()
) -> dict[str, Any]:
    """A random run of ``model`` (SPIN's simulation with ``seed``, ``steps`` long) as a
    scenario, with ECPay's batch at most once (ONE_BATCH): its next batch is a day after the
    first, and a replay would have to age every lease and fence by a day for it, which the
    model's batch does not."""
    tools = spinrun.tools()
    if tools is None:
        raise RuntimeError("spin or a C compiler is missing: apt-get install spin gcc")
    path = spinrun._model_path(model)
    with tempfile.TemporaryDirectory(prefix="simulation-") as scratch:
        ran = subprocess.run(
            [tools[0], "-DONE_BATCH", *defines, f"-n{seed}", f"-u{steps}", str(path)],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=True,
        )
    events = [event(line) for line in ran.stdout.splitlines() if _LINE.match(line)]
    return {
        "model": path.relative_to(spinrun.ROOT).as_posix(),
        "defines": list(defines),
        "config": config(model, defines),
        "events": events,
        "mutated_at": None,
        "seed": seed,
    }


def find(
    model: str | pathlib.Path, workdir: pathlib.Path, defines: Sequence[str] = ()
) -> tuple[spinrun.Result, dict[str, Any]]:
    """Search ``model`` for a counterexample (depth-first, a short one) and convert it."""
    result = spinrun.check(model, "mutant", defines=defines, workdir=workdir)
    if result.trail is None:
        raise RuntimeError(f"SPIN found no counterexample in {model}:\n{result.output}")
    return result, scenario(model, result.trail, defines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .pml whose trail this is")
    parser.add_argument("--trail", type=pathlib.Path, help="a .trail; none: search for one")
    parser.add_argument("--seed", type=int, help="a random run (SPIN's simulation) instead")
    parser.add_argument("--steps", type=int, default=600, help="the random run's length")
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    defines = [f"-D{d}" for d in args.defines]
    if args.seed is not None:
        found = simulate(args.model, args.seed, args.steps, defines)
    elif args.trail is not None:
        found = scenario(args.model, args.trail.resolve(), defines)
    else:
        with tempfile.TemporaryDirectory(prefix="trail-") as scratch:
            _, found = find(args.model, pathlib.Path(scratch), defines)
    json.dump(found, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
