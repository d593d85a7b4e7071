"""``fault_schedules(sequences=True)`` draws issue 8's fault sequences, and a ``ScheduledFault``
arms everything it holds (issue 11 item 4; docs/ecpay-api.md section 9)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault
from ecpay_lifecycle.strategies import REFERENCE_TIME, ScheduledFault, fault_schedules


def _plans(
    strategy: st.SearchStrategy[tuple[ScheduledFault, ...]], examples: int
) -> list[tuple[ScheduledFault, ...]]:
    seen: list[tuple[ScheduledFault, ...]] = []

    @settings(max_examples=examples, database=None, derandomize=True)
    @given(strategy)
    def draw(plan: tuple[ScheduledFault, ...]) -> None:
        seen.append(plan)

    draw()
    return seen


def test_sequences_hold_issue_8s_fault_pairs() -> None:
    plans = _plans(fault_schedules(sequences=True), 600)
    pairs = {tuple(f.fault for f in plan) for plan in plans}
    # A lost reply whose confirming query fails or answers behind; a late landing.
    assert (Fault.LOST_REPLY, Fault.STALE_QUERY) in pairs
    assert (Fault.LOST_REPLY, Fault.SERVER_ERROR_BEFORE_APPLY) in pairs
    assert (Fault.LATE_APPLY,) in pairs
    assert (Fault.LATE_APPLY, Fault.STALE_QUERY) in pairs
    assert (Fault.READ_TIMEOUT_BEFORE_APPLY,) in pairs
    drawn = [f for plan in plans for f in plan]
    landings = {f.land_after for f in drawn if f.fault is Fault.LATE_APPLY}
    # Inside ECPay's 10-minute window and just past it (R20).
    assert {
        dt.timedelta(seconds=30),
        dt.timedelta(seconds=599),
        dt.timedelta(seconds=601),
    } <= landings
    confirming = [f for f in drawn if f.endpoint is Endpoint.CREDIT_DETAIL and f.after_do_action]
    assert {f.fault for f in confirming} >= {Fault.STALE_QUERY, Fault.SERVER_ERROR_BEFORE_APPLY}
    assert {f.writes for f in confirming if f.fault is Fault.STALE_QUERY} == {1, 2}
    assert {f.status_code for f in drawn if f.fault is Fault.SERVER_ERROR_AFTER_APPLY} >= {502, 503}


def test_without_sequences_the_plans_are_what_they_were() -> None:
    plans = _plans(fault_schedules(), 300)
    drawn = [f for plan in plans for f in plan]
    assert all(len(plan) <= 3 for plan in plans)
    assert not any(f.after_do_action or f.land_after or f.writes or f.status_code for f in drawn)


def test_a_scheduled_fault_arms_all_it_holds_for_one_order() -> None:
    emulator = Emulator(now=REFERENCE_TIME)
    late = ScheduledFault(
        fault=Fault.LATE_APPLY,
        endpoint=Endpoint.DO_ACTION,
        action=None,
        times=1,
        land_after=dt.timedelta(seconds=601),
    ).arm(emulator, merchant_trade_no="A1")
    stale = ScheduledFault(
        fault=Fault.STALE_QUERY,
        endpoint=Endpoint.CREDIT_DETAIL,
        action=None,
        times=2,
        after_do_action=True,
        writes=2,
    ).arm(emulator)
    error = ScheduledFault(
        fault=Fault.SERVER_ERROR_AFTER_APPLY,
        endpoint=Endpoint.DO_ACTION,
        action=None,
        times=1,
        status_code=503,
    ).arm(emulator)
    assert (late.land_after, late.merchant_trade_no) == (dt.timedelta(seconds=601), "A1")
    assert (stale.writes, stale.after_do_action) == (2, True)
    assert emulator.faults.is_dormant(stale)
    assert emulator.faults.remaining(stale) == 2
    assert error.status_code == 503
