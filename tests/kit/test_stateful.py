"""LifecycleMachine (issue 5): it runs as is, its hooks and options do what they say.

The differential checks themselves are exercised in tests/kit/test_differential.py; a shop's use of
the machine in tests/docs/test_example_shop.py.
"""

from __future__ import annotations

import collections

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from ecpay_lifecycle import (
    Client,
    Credentials,
    InMemoryJournal,
    Intent,
    PaymentKind,
    RefundExceedsCaptured,
    RuleViolation,
    State,
    strategies,
)
from ecpay_lifecycle.emulator import (
    Emulator,
    EmulatorSettings,
    Endpoint,
    EventKind,
    ReplyFlavour,
)
from ecpay_lifecycle.strategies import REFERENCE_TIME, LifecycleMachine

#: The machine as a user gets it, collected by pytest: random runs locally, derandomized in CI.
TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


def _run(machine: type[LifecycleMachine], examples: int = 30) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=20,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_it_is_public_in_the_strategies_module() -> None:
    assert "LifecycleMachine" in strategies.__all__
    assert strategies.LifecycleMachine is LifecycleMachine


def test_it_starts_at_the_strategies_reference_time() -> None:
    assert LifecycleMachine.start == REFERENCE_TIME
    machine = LifecycleMachine()
    assert machine.emulator.now == REFERENCE_TIME
    machine.teardown()


class AioReplies(LifecycleMachine):
    """The whole lifecycle with CreditDetail in the older AIO shape (Chinese statuses, string
    numbers, localised times, close_data inside RtnValue): the client must read it the same."""

    def make_emulator(self) -> Emulator:
        return Emulator(
            now=self.start, settings=EmulatorSettings(credit_detail_flavour=ReplyFlavour.AIO)
        )


def test_the_client_reads_aio_replies_through_every_state() -> None:
    _run(AioReplies)


def test_hooks_build_the_world_and_hear_of_every_order() -> None:
    journals: list[InMemoryJournal] = []
    paid: list[tuple[str, int]] = []

    class Hooked(LifecycleMachine):
        auto_close = False
        balance = 5_000

        def make_client(self, emulator: Emulator, credentials: Credentials) -> Client:
            journal = InMemoryJournal()
            journals.append(journal)
            assert credentials.auto_close is False
            return Client(
                credentials,
                transport=httpx.MockTransport(emulator.handler),
                clock=emulator.clock,
                journal=journal,
            )

        def on_authorized(self, merchant_trade_no: str) -> None:
            paid.append((merchant_trade_no, self.truth(merchant_trade_no).amount))

    machine = Hooked()
    assert machine.client.journal is journals[0]
    assert machine.emulator.balance(machine.merchant_id) == 5_000
    machine.emulator.authorize(machine.merchant_id, "X1", 700)
    machine.order_numbers.append("X1")
    machine.capture("X1")
    assert machine.client.journal.for_order(machine.merchant_id, "X1")
    machine.teardown()
    _run(Hooked, 10)
    assert paid
    assert all(number.startswith("LM") and amount > 0 for number, amount in paid)


def test_orders_are_of_the_configured_kinds_and_number() -> None:
    seen: collections.Counter[str] = collections.Counter()

    class Instalments(LifecycleMachine):
        kinds = (PaymentKind.INSTALLMENT,)
        max_orders = 2
        max_amount = 50

        def teardown(self) -> None:
            orders = self.emulator.orders(self.merchant_id)
            assert len(orders) <= 2
            for view in orders:
                seen[view.kind.value] += 1
                assert view.amount <= 50
            super().teardown()

    _run(Instalments, 20)
    assert set(seen) == {"installment"}


def test_the_helpers_plan_on_the_emulators_truth() -> None:
    machine = LifecycleMachine()
    machine.emulator.authorize(machine.merchant_id, "H1", 1000)
    machine.order_numbers.append("H1")
    assert machine.truth("H1").state is State.AUTHORIZED
    assert machine.plan(Intent.REFUND, "H1").describe() == "N(1000)"
    with pytest.raises(RuleViolation) as refused:
        machine.plan(Intent.REFUND, "H1", 300)
    assert refused.value.rule == "R18"
    assert machine.plan(Intent.REFUND, "H1", 300, capture_first=True).describe() == (
        "C(1000) -> R(300)"
    )
    machine.capture("H1")
    machine.batch_runs()  # settles the capture: the balance is credited 1000
    assert machine.truth("H1").state is State.CLOSED
    machine.client.refund("H1", 300)
    with pytest.raises(RefundExceedsCaptured):
        machine.plan(Intent.REFUND, "H1", 800)
    plan = machine.plan(Intent.REFUND, "H1", 600)
    assert machine.emulator.balance(machine.merchant_id) == 700
    assert machine.balance_covers("H1", plan)
    machine.set_balance(599)  # R16: ECPay would refuse the R
    assert not machine.balance_covers("H1", plan)
    machine.teardown()


def test_without_probes_a_refusal_sends_nothing_at_all() -> None:
    class Quiet(LifecycleMachine):
        probe_refusals = False

    machine = Quiet()
    machine.emulator.authorize(machine.merchant_id, "Q1", 1000, kind=PaymentKind.UNIONPAY)
    machine.order_numbers.append("Q1")
    before = len(machine.emulator.events)
    machine.capture("Q1")  # R8: nothing to capture
    sent = [e for e in machine.emulator.events[before:] if e.kind is EventKind.REQUEST]
    assert [e.endpoint for e in sent if e.action is not None] == []
    assert machine.reached["refused", "R8", "unionpay"] == 0
    machine.teardown()


def test_bank_events_and_balance_changes_can_be_switched_off() -> None:
    notes: collections.Counter[str] = collections.Counter()

    class Calm(LifecycleMachine):
        bank_events = False
        balance_changes = False

        def teardown(self) -> None:
            notes.update(e.note for e in self.emulator.events if e.kind is EventKind.SETUP)
            for view in self.emulator.orders(self.merchant_id):
                assert view.state not in (State.UNSETTLED, State.UNAUTHORIZED), view
            super().teardown()

    _run(Calm, 30)
    assert notes["merchant added"] > 0  # the runs happened
    assert not [note for note in notes if "balance set" in note or "status forced" in note]


def test_the_machines_own_money_rules_can_be_switched_off() -> None:
    sent: list[object] = []

    class Watching(LifecycleMachine):
        money_rules = False

        def teardown(self) -> None:
            sent.extend(e for e in self.emulator.events if e.endpoint is Endpoint.DO_ACTION)
            assert [key for key in self.reached if key[0] != "state"] == []
            super().teardown()

    _run(Watching, 30)
    assert sent == []


def test_the_agreement_table_names_every_rule_the_planner_refuses_with() -> None:
    # R13 and R15 guard steps the planner never plans alone (it plans E then N); every other
    # refusal rule has its emulator counterparts.
    assert set(LifecycleMachine.agreement) == {
        "R3", "R5", "R6", "R7", "R8", "R9", "R10", "R11", "R12", "R14", "R18", "R19",
    }  # fmt: skip
    assert all(LifecycleMachine.agreement.values())


def test_the_merchants_keys_never_show() -> None:
    machine = LifecycleMachine()
    text = repr(machine) + repr(machine.client) + repr(machine.emulator)
    machine.emulator.authorize(machine.merchant_id, "K1", 10)
    machine.order_numbers.append("K1")
    machine.capture("K1")
    text += "".join(event.describe() + repr(event) for event in machine.emulator.events)
    assert "LifecycleKey2026" not in text
    assert "LifecycleIv20261" not in text
    machine.teardown()
