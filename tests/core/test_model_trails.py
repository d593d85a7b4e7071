"""Trails become tests (issue 13 item 5): SPIN's counterexamples replayed against the real code.

Each mutant under model/mutants/ removes one rule of the safety protocol, and SPIN finds a run
in which it refunds a key twice (tests/core/test_model.py). Here that run is turned into an emulator
scenario (model/trail2scenario.py: the calls each worker makes, the faults, the clock's moves,
the processes killed) and played against ``ecpay_lifecycle.Client`` step by step
(tests/_model_replay.py). The real client does everything the trail does up to the step the
mutant changed, refuses that step, and after the shop waits past the fences, sweeps and asks
again, ECPay's books hold exactly one refund: the real code resists what the mutant allowed.
The mutant without Engine._recheck refunds two keys of one order above the capture once the order
lock is lost under a live holder (P2): there the real code refuses before sending, and ECPay's
event log shows no DoAction it had to refuse.

The replay harness is tested first on scenarios written by hand, one it must follow to the end
and one it must leave where the code and the scenario part, so that its verdicts on the
trails mean something.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from _model_replay import UNIT, Outcome, replay
from ecpay_lifecycle import AttemptStatus, OperationStatus

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "model"))

import spinrun  # noqa: E402  (model/spinrun.py)
import trail2scenario  # noqa: E402  (model/trail2scenario.py)

from test_model import P1, P1_MUTANTS, P2, RECHECK_MUTANT, require_spin  # noqa: E402

#: One key refunding 1 unit of a Closed order of 2 (model/one_key.pml's configuration).
ONE_KEY = {
    "NW": 2, "NK": 1, "CAP": 2, "AMT0": 1, "AMT1": 0, "AT_ONCE": 1, "SETTLED": 1, "BATCH": 0,
}  # fmt: skip
#: Steps that are not effects of the real code.
NOT_EFFECTS = ("start", "crashed", "resume")


def scenario(config: Mapping[str, int], lines: Sequence[str]) -> dict[str, Any]:
    """A scenario written by hand, in the lines the models print."""
    return {"config": dict(config), "events": [trail2scenario.event(line) for line in lines]}


def refunded_once(outcome: Outcome) -> None:
    """Exactly one refund of the key on ECPay's books, and a journal that agrees."""
    assert outcome.refunds == [UNIT], outcome
    (record,) = outcome.records
    assert record.status is OperationStatus.SUCCEEDED
    assert record.owner is None
    assert record.open_attempt is None
    done = [a for a in record.attempts if a.status is AttemptStatus.DONE]
    assert [(a.amount, a.step is not None) for a in done] == [(UNIT, True)]
    assert not any("harness error" in answer for answer in outcome.answers), outcome.answers


# -- the parts, without SPIN ------------------------------------------------------------------


def test_a_printed_step_becomes_an_event() -> None:
    assert trail2scenario.event("@@ 1 send k=0 amt=1 age=2 fate=5") == {
        "worker": 1, "step": "send", "k": 0, "amt": 1, "age": 2, "fate": "late",
    }  # fmt: skip
    assert trail2scenario.event("  @@ 0 reclaim k=0 res=2") == {
        "worker": 0, "step": "reclaim", "k": 0, "res": "busy",
    }  # fmt: skip
    assert trail2scenario.event("@@ 1 resolve k=0 verdict=2 ok=1 mut=1")["verdict"] == "not_done"
    assert trail2scenario.event("@@ env crash w=1") == {"env": "crash", "w": 1}
    assert trail2scenario.event("@@ gw apply k=0 amt=1 applied=2 total=2")["applied"] == 2
    with pytest.raises(ValueError, match="not a model step"):
        trail2scenario.event("spin: trail ends after 12 steps")


LATE_THEN_LANDED = [
    "@@ 0 start k=0",
    "@@ 0 open k=0 res=1",
    "@@ 0 lock",
    "@@ 0 reclaim k=0 res=1",
    "@@ 0 for_order k=0 fail=0",
    "@@ 0 query stale=0 ph=0 cls=2",
    "@@ 0 sending k=0 amt=1 ok=1 mut=0",
    "@@ 0 recheck k=0 fail=0",
    "@@ 0 send k=0 amt=1 age=0 fate=5",
    "@@ 0 reply k=0 fate=5",
    "@@ 0 query stale=0 ph=0 cls=2",
    "@@ 0 resolve k=0 verdict=3 ok=1 mut=0",
    "@@ 0 release k=0 ok=1 status=4 mut=0",
    "@@ 0 end",
    "@@ env tick",
    "@@ env land slot=0 k=0 age=1",
    "@@ env tick",
    "@@ env tick",
    "@@ 0 start k=0",
    "@@ 0 open k=0 res=1",
    "@@ 0 lock",
    "@@ 0 reclaim k=0 res=1",
    "@@ 0 for_order k=0 fail=0",
    "@@ 0 query stale=0 ph=1 cls=1",
    "@@ 0 resolve k=0 verdict=1 ok=1 mut=0",
    "@@ 0 end",
]


def test_the_replay_follows_a_scenario_the_code_agrees_with() -> None:
    """A DoAction ECPay holds and applies a tick later: unknown at first, done after."""
    outcome = replay(scenario(ONE_KEY, LATE_THEN_LANDED))
    assert outcome.diverged_at is None, outcome.reasons
    steps = [line for line in LATE_THEN_LANDED if not line.startswith(("@@ env", "@@ 0 start"))]
    assert outcome.followed == len(steps) == 20
    assert outcome.answers == [
        "<call of worker 0, key 0>: OutcomeUnknown",
        "<call of worker 0, key 0>: done",
    ]
    assert outcome.final == {0: "replayed"}
    refunded_once(outcome)


def test_the_replay_stops_following_where_the_code_does_something_else() -> None:
    """The same scenario, but it claims "not done" a tick after the send, with ECPay still
    holding the request: the code writes "unknown" there (R22), and the replay says so."""
    lines = [
        *LATE_THEN_LANDED[:14],
        "@@ env tick",
        "@@ 0 start k=0",
        "@@ 0 open k=0 res=1",
        "@@ 0 lock",
        "@@ 0 reclaim k=0 res=1",
        "@@ 0 for_order k=0 fail=0",
        "@@ 0 query stale=0 ph=0 cls=2",
        "@@ 0 resolve k=0 verdict=2 ok=1 mut=1",
        "@@ 0 sending k=0 amt=1 ok=1 mut=0",
    ]
    outcome = replay(scenario(ONE_KEY, lines))
    assert outcome.diverged_at == len(lines) - 2
    assert "the model does resolve {'attempt': 'not_done'}" in outcome.reasons[0]
    assert "'attempt': 'unknown'" in outcome.reasons[0]
    # After the trail ECPay lands the request it held (still inside R20's window), and the
    # shop's retry past the fence finds that one attempt done: nothing is sent again.
    refunded_once(outcome)
    assert [a.status for a in outcome.records[0].attempts] == [AttemptStatus.DONE]
    assert outcome.answers == [
        "<call of worker 0, key 0>: OutcomeUnknown",
        "<call of worker 0, key 0>: OutcomeUnknown",
    ]


def test_a_claim_the_code_answers_otherwise_is_a_departure() -> None:
    lines = [*LATE_THEN_LANDED[:2], "@@ 1 start k=0", "@@ 1 open k=0 res=1"]
    outcome = replay(scenario(ONE_KEY, lines))
    assert outcome.diverged_at == 3
    assert "res=owner, the code's busy" in outcome.reasons[0]


# -- the mutants' trails ----------------------------------------------------------------------


def first_effect(events: Sequence[Mapping[str, Any]], at: int) -> int:
    """The first effect of the mutated step's worker from ``at`` on: where the code must part."""
    worker = events[at]["worker"]
    return next(
        index
        for index in range(at, len(events))
        if events[index].get("worker") == worker and events[index]["step"] not in NOT_EFFECTS
    )


@pytest.mark.parametrize("mutant", P1_MUTANTS)
def test_the_mutants_trail_against_the_real_client_refunds_once(
    mutant: str, tmp_path: pathlib.Path
) -> None:
    require_spin()
    result, found = trail2scenario.find(mutant, tmp_path)
    assert result.violation == P1
    events = found["events"]
    applied = [event for event in events if event.get("gateway") == "apply"]
    assert applied[-1]["applied"] == 2  # in the model the key's refund landed twice
    assert found["mutated_at"] is not None  # the trail passes through the mutated rule
    before = [
        event
        for event in events[: found["mutated_at"]]
        if "worker" in event and event["step"] not in NOT_EFFECTS
    ]
    outcome = replay(found)
    print(  # the figures the closing note quotes
        f"\n{mutant}: {len(events)} events, mutated at {found['mutated_at']}, the code parted "
        f"at {outcome.diverged_at} ({outcome.reasons[:1]}), refunds {outcome.refunds}"
    )
    # The real code did everything the trail did before the mutated step...
    assert len(before) > 5
    assert outcome.followed >= len(before)
    # ... refused the mutated step itself ...
    assert outcome.diverged_at == first_effect(events, found["mutated_at"]), outcome.reasons
    # ... and ECPay's books hold one refund, which the journal records as done.
    assert outcome.final == {0: "replayed"}
    refunded_once(outcome)


#: Random runs of each model that must hold, replayed: seeds and length (SPIN's steps).
SEEDS = range(1, 16)
STEPS = 3000


@pytest.mark.parametrize("model", spinrun.MUST_HOLD)
def test_random_runs_of_the_models_are_what_the_real_client_does(model: str) -> None:
    """The model and the code stay together: random runs of each model that must hold (SPIN's
    simulation, fixed seeds), replayed against the real client, are followed to their last
    step: the same effects, claim results, attempt statuses and refused writes. One departure
    is expected: the model's sweeper does not back off, so where the code's sweeper waits for
    an unknown attempt's next_sweep_at, the run stops being comparable. ECPay's books then hold
    each key's refund once, never above the capture, and every attempt the journal records done
    was applied."""
    require_spin()
    followed = waited = 0
    for seed in SEEDS:
        found = trail2scenario.simulate(model, seed, STEPS)
        outcome = replay(found)
        if outcome.diverged_at is not None:
            assert outcome.diverged_at == outcome.waited_at, (seed, outcome.reasons)
            waited += 1
        assert not any("harness error" in answer for answer in outcome.answers), outcome
        followed += outcome.followed
        capture = found["config"]["CAP"] * UNIT
        assert sum(outcome.refunds) <= capture, (seed, outcome.refunds)
        done = [
            attempt
            for record in outcome.records
            for attempt in record.attempts
            if attempt.status is AttemptStatus.DONE
        ]
        assert sorted(a.amount for a in done) == sorted(outcome.refunds), (seed, outcome)
        assert all(record.open_attempt is None for record in outcome.records), seed
        assert len(outcome.refunds) == found["config"]["NK"] or found["config"]["AMT1"] == 0
    print(
        f"\n{model}: {len(SEEDS)} random runs, {followed} steps followed, {waited} ended where "
        "the code's sweeper backs off"
    )
    assert followed > 25 * len(SEEDS)  # runs long enough to mean something
    assert waited < len(SEEDS) / 2


def test_the_recheck_mutants_trail_against_the_real_client_refuses_before_sending(
    tmp_path: pathlib.Path,
) -> None:
    """model/mutants/no_recheck.pml: what model/cross_key_lock_loss.pml found before
    Engine._recheck (docs/safety.md). With the order lock lost under a live holder, two keys of
    one order each record a refund planned from the same ClsAmt; the mutant sends the second one
    although the order's records, read again, show the other key's refund recorded since its
    plan, and the two together exceed the capture (P2).

    The real client follows the trail up to that step and refuses it: it records the attempt
    not done and sends nothing. Money is counted on the emulator's event log: the refunds
    applied stay within the capture, and not one DoAction ECPay had to refuse was sent (the
    emulator's R10 check, which cannot be switched off, is never put to the test)."""
    require_spin()
    result, found = trail2scenario.find(RECHECK_MUTANT, tmp_path)
    assert result.violation == P2
    events = found["events"]
    assert found["config"]["NK"] == 2
    assert any(event.get("env") == "lockloss" for event in events)
    applied = [event for event in events if event.get("gateway") == "apply"]
    assert applied[-1]["total"] > found["config"]["CAP"]  # in the model: above the capture
    mutated = found["mutated_at"]
    assert events[mutated]["step"] == "norecheck"
    assert events[mutated - 1]["step"] == "recheck"
    assert events[mutated - 1]["fail"] != 0  # the read saw the other key's refund
    before = [e for e in events[:mutated] if "worker" in e and e["step"] not in NOT_EFFECTS]
    outcome = replay(found)
    print(
        f"\nno_recheck: {len(events)} events, mutated at {mutated}, the code parted at "
        f"{outcome.diverged_at} ({outcome.reasons[:1]}), sent {outcome.sent}"
    )
    # The real code did every step before, the recheck's read included...
    assert outcome.followed >= len(before)
    # ... and where the mutant sends, it records the attempt not done instead.
    assert outcome.diverged_at == first_effect(events, mutated), outcome.reasons
    assert "'attempt': 'not_done'" in outcome.reasons[0], outcome.reasons
    capture = found["config"]["CAP"] * UNIT
    assert sum(outcome.refunds) <= capture, outcome
    assert all(applied for _, applied, _ in outcome.sent), outcome.sent  # nothing refused
    assert sum(amount for amount, _, _ in outcome.sent) <= capture, outcome.sent
    done = sorted(
        attempt.amount
        for record in outcome.records
        for attempt in record.attempts
        if attempt.status is AttemptStatus.DONE
    )
    assert done == sorted(outcome.refunds), outcome
    assert all(record.open_attempt is None for record in outcome.records)


def test_the_model_with_the_recheck_goes_on_where_the_code_does(tmp_path: pathlib.Path) -> None:
    """The same trail up to the recheck that refused, continued as the model that holds goes
    on (model/cross_key_lock_loss.pml: the attempt recorded not done, ownership given up, the
    call ended): the real client follows it to the end, and the refused caller is told to ask
    again (OrderChanged, nothing moved)."""
    require_spin()
    _, found = trail2scenario.find(RECHECK_MUTANT, tmp_path)
    mutated = found["mutated_at"]
    refused = found["events"][mutated]
    worker, key = refused["worker"], refused["k"]
    rest = [
        f"@@ {worker} resolve k={key} verdict=2 ok=1 mut=0",
        f"@@ {worker} release k={key} ok=1 status=3 mut=0",
        f"@@ {worker} end",
    ]
    events = [*found["events"][:mutated], *(trail2scenario.event(line) for line in rest)]
    outcome = replay({"config": found["config"], "events": events})
    assert outcome.diverged_at is None, outcome.reasons
    assert f"<call of worker {worker}, key {key}>: OrderChanged" in outcome.answers
    assert all(applied for _, applied, _ in outcome.sent), outcome.sent
    assert sum(outcome.refunds) <= found["config"]["CAP"] * UNIT
