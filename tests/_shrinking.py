"""Run a state machine that must fail, and read the steps of the example hypothesis shrank to.

Shared by the tests proving that a bug is caught and shrunk to a minimal case (the differential
test's planted disagreement, the example shop's broken services).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import INVARIANT_MARKER, RuleBasedStateMachine, run_state_machine_as_test


def shrunk_failure(
    machine: type[RuleBasedStateMachine], *, step_count: int, match: str | None = None
) -> tuple[AssertionError, str, list[str]]:
    """Run ``machine`` until it fails (derandomized), and return the error, hypothesis' notes
    and the falsifying example's rule steps (invariant checks and teardown left out)."""
    with pytest.raises(AssertionError, match=match) as caught:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=300,
                stateful_step_count=step_count,
                deadline=None,
                database=None,
                derandomize=True,
                report_multiple_bugs=False,
                # Explaining the failure re-runs it under a tracer: minutes, for no check here.
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    # The machine's own invariants, read off it, so a renamed one cannot slip into the steps.
    invariants = tuple(
        f"state.{name}("
        for name in dir(machine)
        if hasattr(getattr(machine, name, None), INVARIANT_MARKER)
    )
    steps = [
        line
        for line in notes.splitlines()
        if line.startswith(("state.", "orders_"))
        and not line.startswith(("state.teardown(", *invariants))
    ]
    return caught.value, notes, steps
