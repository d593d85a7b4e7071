"""LifecycleMachine with faults (issue 11 item 4): the ``faults`` switch, what its invariants
accept, how it settles unknown outcomes, and that a service sending money again is caught.

The fault sequences are issue 8's (tests/client/test_never_twice.py); unknown outcomes are
docs/ecpay-api.md section 9. Every run here is bounded (examples, steps) to keep the file well
under a minute.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import importlib.util
import itertools
import pathlib
import sys
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from _shrinking import shrunk_failure
from ecpay_lifecycle import (
    Action,
    EcpayError,
    Intent,
    OrderLocked,
    OutcomeUnknown,
    PaymentKind,
    State,
)
from ecpay_lifecycle.emulator import Endpoint, EventKind, Fault
from ecpay_lifecycle.strategies import LifecycleMachine, ScheduledFault, fault_schedules

Reached = collections.Counter[tuple[str, ...]]
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` under its own name, as ``pytest examples/`` would (and as
    tests/docs/test_example_shop.py does: whichever runs first, both share the module)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load("shop_service")
#: The worked example's shop with faults switched on, with the example's settings.
TestShopServiceUnderFaults = _load("test_shop_service").TestShopServiceUnderFaults


def _run(machine: type[LifecycleMachine], examples: int, steps: int = 25) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _collecting(base: type[LifecycleMachine], reached: Reached) -> type[LifecycleMachine]:
    class Collecting(base):  # type: ignore[valid-type,misc]
        def teardown(self) -> None:
            reached.update(self.reached)
            super().teardown()

    return Collecting


class WithFaults(LifecycleMachine):
    faults = True


class WithFaultsAutoCloseOff(LifecycleMachine):
    faults = True
    auto_close = False


@pytest.mark.parametrize("machine", [WithFaults, WithFaultsAutoCloseOff])
def test_the_kit_holds_under_faults_and_settles_what_is_unknown(
    machine: type[LifecycleMachine],
) -> None:
    reached: Reached = collections.Counter()
    # 200 runs, not 80: hypothesis draws integers partly from constants it reads in the code
    # under test, so moving code between modules shifts what it draws; at 80 runs a refactor of
    # the emulator (63723de) left the machine meeting no TransportError at all.
    _run(_collecting(machine, reached), examples=200, steps=20)
    answers = {key[2] for key in reached if key[0] == "under faults"}
    # Right answers under faults: unknown, locked, and the plain errors of a failed request.
    assert {"OutcomeUnknown", "OrderLocked", "TransportError"} <= answers, answers
    settled = {key for key in reached if key[0] in ("settle", "retry unknown")}
    assert ("settle", "settled") in settled, settled
    assert ("retry unknown", "after the fence", "Outcome") in settled, settled
    armed = {key[1] for key in reached if key[0] == "fault"}
    assert {"LOST_REPLY", "STALE_QUERY", "LATE_APPLY", "READ_TIMEOUT_BEFORE_APPLY"} <= armed


def test_a_schedule_strategy_plugs_into_the_switch() -> None:
    reached: Reached = collections.Counter()

    class OnlyLostReplies(LifecycleMachine):
        faults = fault_schedules(faults=[Fault.LOST_REPLY], endpoints=[Endpoint.DO_ACTION])

    _run(_collecting(OnlyLostReplies, reached), examples=20, steps=15)
    armed = {key[1] for key in reached if key[0] == "fault"}
    assert armed == {"LOST_REPLY"}


def test_with_the_switch_off_no_fault_rule_runs() -> None:
    reached: Reached = collections.Counter()
    faulted: list[object] = []

    class Plain(LifecycleMachine):
        def teardown(self) -> None:
            faulted.extend(e for e in self.emulator.events if e.fault is not None)
            super().teardown()

    _run(_collecting(Plain, reached), examples=20, steps=20)
    assert LifecycleMachine.faults is False
    assert faulted == []
    assert not [k for k in reached if k[0] in ("fault", "under faults", "settle", "retry unknown")]


def _check(machine: LifecycleMachine) -> None:
    machine.client_sees_what_the_emulator_has()
    machine.refunds_never_exceed_captures()
    machine.no_order_locked()
    machine.money_moves_once()


def _unlocked(machine: LifecycleMachine, order: str) -> bool:
    records = machine.client.journal.for_order(machine.merchant_id, order)
    return all(record.open_attempt is None for record in records)


def _lost(fault: Fault = Fault.LOST_REPLY) -> ScheduledFault:
    return ScheduledFault(fault=fault, endpoint=Endpoint.DO_ACTION, action=None, times=1)


def _confirming(fault: Fault, **options: object) -> ScheduledFault:
    return ScheduledFault(
        fault=fault,
        endpoint=Endpoint.CREDIT_DETAIL,
        action=None,
        times=1,
        after_do_action=True,
        **options,  # type: ignore[arg-type]
    )


#: Issue 8's sequences, each meeting a capture: (name, schedule, applied at once).
SEQUENCES = [
    ("lost reply, query one write behind", [_lost(), _confirming(Fault.STALE_QUERY)], True),
    (
        "lost reply, confirming query fails",
        [_lost(), _confirming(Fault.SERVER_ERROR_BEFORE_APPLY)],
        True,
    ),
    (
        "5xx after apply, query one write behind",
        [_lost(Fault.SERVER_ERROR_AFTER_APPLY), _confirming(Fault.STALE_QUERY)],
        True,
    ),
    ("timeout before apply", [_lost(Fault.READ_TIMEOUT_BEFORE_APPLY)], False),
    ("5xx before apply", [_lost(Fault.SERVER_ERROR_BEFORE_APPLY)], False),
    (
        "lands late, inside ECPay's window",
        [
            ScheduledFault(
                fault=Fault.LATE_APPLY,
                endpoint=Endpoint.DO_ACTION,
                action=None,
                times=1,
                land_after=dt.timedelta(seconds=30),
            )
        ],
        False,
    ),
    (
        "lands late, refused by R20",
        [
            ScheduledFault(
                fault=Fault.LATE_APPLY,
                endpoint=Endpoint.DO_ACTION,
                action=None,
                times=1,
                land_after=dt.timedelta(seconds=601),
            ),
            _confirming(Fault.STALE_QUERY),
        ],
        False,
    ),
]


@pytest.mark.parametrize(
    ("schedule", "applied"), [(s, a) for _, s, a in SEQUENCES], ids=[n for n, _, _ in SEQUENCES]
)
def test_each_sequence_of_issue_8_is_accepted_locked_and_settled_once(
    schedule: list[ScheduledFault], applied: bool
) -> None:
    class Faulty(LifecycleMachine):
        faults = True

    machine = Faulty()
    number = "LM1"
    machine.emulator.authorize(machine.merchant_id, number, 1000)
    machine.order_numbers.append(number)
    for planned in schedule:
        planned.arm(machine.emulator, merchant_trade_no=number)

    machine.capture(number)  # the reply is lost, or the request never applied (yet)
    _check(machine)
    assert machine.reached["under faults", "capture", "OutcomeUnknown"] == 1, machine.reached
    done = [e for e in machine.emulator.applied_do_actions() if e.action is Action.CLOSE]
    assert len(done) == (1 if applied else 0)

    locked_at = machine.emulator.now
    machine.capture(number)  # another operation on the locked order: refused, nothing sent
    machine.abandon(number)
    _check(machine)
    assert machine.reached["under faults", "capture", "OrderLocked"] == 1
    assert machine.reached["under faults", "abandon", "OrderLocked"] == 1

    machine.settle(number)  # past the fence, reconcile, retry the same key
    _check(machine)
    assert machine.emulator.now > locked_at + dt.timedelta(minutes=15)
    assert machine.reached["settle", "settled"] == 1, machine.reached
    assert machine.reached["retry unknown", "after the fence", "Outcome"] == 1, machine.reached
    done = [e for e in machine.emulator.applied_do_actions() if e.action is Action.CLOSE]
    assert len(done) == 1, [e.describe() for e in done]
    assert machine.truth(number).state is State.TO_CLOSE
    assert _unlocked(machine, number)
    machine.teardown()


def test_a_chargeback_on_a_locked_order_is_settled_from_the_books() -> None:
    """The query after the fence cannot tell (the order changed in a way the step does not
    explain): a person reads ECPay's back office; the machine reads the emulator's books."""

    class Faulty(LifecycleMachine):
        faults = True

    machine = Faulty()
    machine.emulator.authorize(machine.merchant_id, "LM1", 1000)
    machine.order_numbers.append("LM1")
    for planned in (_lost(), _confirming(Fault.SERVER_ERROR_BEFORE_APPLY)):
        planned.arm(machine.emulator, merchant_trade_no="LM1")
    machine.capture("LM1")
    machine.bank_event("LM1", chargeback=True)
    machine.settle("LM1")
    _check(machine)
    assert machine.reached["settle", "declared"] == 1, machine.reached
    assert _unlocked(machine, "LM1")
    machine.teardown()


def test_what_the_invariants_refuse_a_refund_sent_outside_the_journal() -> None:
    class Faulty(LifecycleMachine):
        faults = True

    machine = Faulty()
    machine.emulator.authorize(
        machine.merchant_id, "LM1", 1000, at=machine.emulator.now - dt.timedelta(days=1)
    )
    machine.order_numbers.append("LM1")
    machine.client.refund("LM1", 300)
    _check(machine)
    with machine.make_client(machine.emulator, machine.credentials) as other:
        other.refund("LM1", 300)  # a second client on a journal of its own
    with pytest.raises(AssertionError, match="no attempt in the journal sent"):
        machine.money_moves_once()
    machine.teardown()


class _Shop(LifecycleMachine):
    """A shop's refund endpoint, with the kit's own money rules off so that its rule gets the
    whole run."""

    faults = True
    money_rules = False
    bank_events = False
    balance_changes = False
    kinds = (PaymentKind.ONE_TIME,)
    max_orders = 1

    def __init__(self) -> None:
        super().__init__()
        self.requests = itertools.count(1)

    def refund_again(self, order: str, amount: int, key: str) -> None:
        """What the shop does when ECPay's answer was lost."""

    @rule(order=LifecycleMachine.orders, amount=st.integers(1, 5))
    def customer_asks_for_a_refund(self, order: str, amount: int) -> None:
        key = f"shop-{next(self.requests)}"
        try:
            self.client.refund(order, amount, idempotency_key=key)
        except (OutcomeUnknown, OrderLocked):
            self.refund_again(order, amount, key)
        except EcpayError:
            pass


class SendsAgainThroughAClientOfItsOwn(_Shop):
    """The bug: "it failed, try again", with a new request id through a client built per
    request, so on a journal of its own that knows nothing of the first attempt."""

    def refund_again(self, order: str, amount: int, key: str) -> None:
        with (
            self.make_client(self.emulator, self.credentials) as fresh,
            contextlib.suppress(EcpayError),
        ):
            fresh.refund(order, amount, idempotency_key=f"{key}-again")


class SendsTheRawDoActionAgain(_Shop):
    """The bug: "it failed, send the refund by hand" (a raw DoAction, outside the journal)."""

    def refund_again(self, order: str, amount: int, key: str) -> None:
        trade_no = self.truth(order).trade_no
        with (
            self.make_client(self.emulator, self.credentials) as fresh,
            contextlib.suppress(EcpayError),
        ):
            fresh.do_action(order, trade_no, Action.REFUND, amount)


@pytest.mark.parametrize("broken", [SendsAgainThroughAClientOfItsOwn, SendsTheRawDoActionAgain])
def test_a_service_that_sends_again_after_a_lost_reply_is_caught_and_shrunk(
    broken: type[_Shop],
) -> None:
    error, notes, steps = shrunk_failure(broken, step_count=12)
    assert "no attempt in the journal sent" in str(error), error
    # An order the batch has settled, a fault armed on it, one refund: the whole story.
    assert len(steps) <= 6, notes
    assert any(step.startswith("state.arm_faults(") for step in steps), notes
    assert any(step.startswith("state.customer_asks_for_a_refund(") for step in steps), notes


def test_a_service_that_retries_with_a_new_key_on_the_shared_journal_is_stopped() -> None:
    """The same bug through the kit's client: the order is locked, so the new key is refused
    with OrderLocked and nothing is sent; the money still moves once."""
    reached: Reached = collections.Counter()

    class NewKeySameClient(_Shop):
        def refund_again(self, order: str, amount: int, key: str) -> None:
            self.reached["again", "sent"] += 1
            try:
                self.client.refund(order, amount, idempotency_key=f"{key}-again")
            except OrderLocked:
                self.reached["again", "locked"] += 1
            except EcpayError:
                pass

    _run(_collecting(NewKeySameClient, reached), examples=60, steps=12)
    assert reached["again", "locked"] > 0, reached
    assert reached["again", "locked"] == reached["again", "sent"], reached


def test_a_fault_left_for_later_does_not_outlive_its_step_as_a_lag() -> None:
    """A STALE_QUERY woken by a DoAction answers within that step only (the fence assumes
    ECPay's data lags a write by less than fence_margin)."""

    class Faulty(LifecycleMachine):
        faults = True

    machine = Faulty()
    machine.emulator.authorize(machine.merchant_id, "LM1", 1000)
    machine.order_numbers.append("LM1")
    _confirming(Fault.STALE_QUERY).arm(machine.emulator, merchant_trade_no="LM1")
    machine.capture("LM1")  # intact reply: the woken lag is not met in this step

    def pending() -> list[Fault]:
        return [armed.fault for armed in machine.emulator.faults.pending()]

    assert pending() == [Fault.STALE_QUERY]
    _check(machine)  # the end of the step
    assert pending() == []
    assert not [e for e in machine.emulator.events if e.kind is EventKind.REQUEST and e.fault]
    machine.teardown()


def test_the_invariants_neither_meet_nor_use_up_the_armed_faults() -> None:
    class Faulty(LifecycleMachine):
        faults = True

    machine = Faulty()
    machine.emulator.authorize(machine.merchant_id, "LM1", 1000)
    machine.order_numbers.append("LM1")
    faults = machine.emulator.faults
    for planned in (
        ScheduledFault(fault=Fault.SERVER_ERROR_BEFORE_APPLY, endpoint=None, action=None, times=2),
        _confirming(Fault.GARBLED_DATA),
    ):
        planned.arm(machine.emulator, merchant_trade_no="LM1")

    def armed() -> list[tuple[Fault, int | None, bool, str | None]]:
        return [
            (rule.fault, faults.remaining(rule), faults.is_dormant(rule), rule.merchant_trade_no)
            for rule in faults.pending()
        ]

    before = armed()
    _check(machine)  # queries LM1, with both faults held back
    assert armed() == before
    assert not [e for e in machine.emulator.events if e.fault is not None]
    machine.teardown()


def test_a_capture_then_refund_whose_capture_lands_late_goes_on_once_each() -> None:
    """C lands late (unknown), settle finds it done and the key goes on with a plan made
    again from the query: R is step 0 of that plan, not a second application of the C."""

    class Faulty(LifecycleMachine):
        faults = True

    machine = Faulty()
    machine.emulator.authorize(machine.merchant_id, "LM1", 2)
    machine.order_numbers.append("LM1")
    ScheduledFault(
        fault=Fault.LATE_APPLY,
        endpoint=Endpoint.DO_ACTION,
        action=None,
        times=1,
        land_after=dt.timedelta(seconds=30),
    ).arm(machine.emulator, merchant_trade_no="LM1")
    machine._money(Intent.REFUND, "LM1", 1, capture_first=True)  # C(2) then R(1)
    _check(machine)
    machine.settle("LM1")
    _check(machine)
    applied = [(e.action, e.amount) for e in machine.emulator.applied_do_actions()]
    assert applied == [(Action.CLOSE, 2), (Action.REFUND, 1)], applied
    assert machine.reached["retry unknown", "after the fence", "Outcome"] == 1, machine.reached
    machine.teardown()
