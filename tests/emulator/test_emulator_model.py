"""Random walks through the emulator: whatever is sent and however the clock moves, its books
stay consistent (R10, R16), every order is a valid snapshot (R3), and nothing is applied in the R5
window."""

from __future__ import annotations

import datetime as dt

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ecpay_lifecycle import Action, GatewayStatus, PaymentKind
from ecpay_lifecycle.emulator import Emulator, EventKind
from test_emulator_support import IV, KEY, MID, START, Wire, ok

MANUAL = "3002608"
_HOLDING = (GatewayStatus.AUTHORIZED, GatewayStatus.OPERATION_CANCELED)


class EmulatorWalk(RuleBasedStateMachine):
    """Random DoActions, clock moves and balance changes against two merchants."""

    @initialize(balance=st.integers(0, 5000))
    def start(self, balance: int) -> None:
        self.emulator = Emulator(now=START)
        self.emulator.add_merchant(MID, KEY, IV, auto_close=True, balance=balance)
        self.emulator.add_merchant(MANUAL, KEY, IV, auto_close=False, balance=balance)
        self.wires = {MID: Wire(self.emulator), MANUAL: Wire(self.emulator, merchant_id=MANUAL)}
        self.expected_balance = {MID: balance, MANUAL: balance}
        self.numbers: list[tuple[str, str]] = []

    @rule(
        auto=st.booleans(),
        amount=st.integers(1, 3000),
        kind=st.sampled_from(PaymentKind),
    )
    def authorize(self, auto: bool, amount: int, kind: PaymentKind) -> None:
        merchant = MID if auto else MANUAL
        number = f"O{len(self.numbers)}"
        self.emulator.authorize(merchant, number, amount, kind=kind)
        if kind is PaymentKind.UNIONPAY:
            self.expected_balance[merchant] += amount
        self.numbers.append((merchant, number))

    @precondition(lambda self: bool(self.numbers))
    @rule(
        data=st.data(),
        action=st.sampled_from(Action),
        fraction=st.sampled_from([None, 0.0, 0.3, 0.5, 1.0]),
    )
    def act(self, data: st.DataObject, action: Action, fraction: float | None) -> None:
        merchant, number = data.draw(st.sampled_from(self.numbers))
        before = self.emulator.order(merchant, number)
        amount = (
            before.amount
            if fraction is None
            else max(1, round(max(before.closed_amount, 1) * fraction))
        )
        reply = self.wires[merchant].do(action, number, amount)
        after = self.emulator.order(merchant, number)
        event(f"{action.value} {'applied' if ok(reply) else 'refused'}")
        if not ok(reply):
            assert after == before
            return
        if action is Action.REFUND and before.capture_settled:
            self.expected_balance[merchant] -= amount
        if action is Action.CANCEL and before.capture_settled:
            self.expected_balance[merchant] += before.pending_refund_total

    @precondition(lambda self: bool(self.numbers))
    @rule(data=st.data(), pick=st.integers(0, 1), fraction=st.sampled_from([0.2, 0.5, 1.0]))
    def follow_recipe(self, data: st.DataObject, pick: int, fraction: float) -> None:
        """An action that suits the order's status (so E and R after settlement happen often)."""
        merchant, number = data.draw(st.sampled_from(self.numbers))
        view = self.emulator.order(merchant, number)
        if view.status is GatewayStatus.TO_BE_CAPTURED:
            action = (Action.CANCEL, Action.REFUND)[pick]
        elif view.status is GatewayStatus.CAPTURED:
            action = Action.REFUND
        else:
            action = (Action.CLOSE, Action.ABANDON)[pick]
        self.act(data, action, None if action is not Action.REFUND else fraction)

    @rule(minutes=st.integers(1, 60 * 24 * 30))
    def advance(self, minutes: int) -> None:
        rows_before = self._settled_total()
        self.emulator.advance(dt.timedelta(minutes=minutes))
        for merchant, total in self._settled_total().items():
            self.expected_balance[merchant] += total - rows_before[merchant]

    @rule(merchant=st.sampled_from([MID, MANUAL]), balance=st.integers(0, 5000))
    def set_balance(self, merchant: str, balance: int) -> None:
        self.emulator.set_balance(merchant, balance)
        self.expected_balance[merchant] = balance

    def _settled_total(self) -> dict[str, int]:
        totals = {MID: 0, MANUAL: 0}
        for view in self.emulator.orders():
            totals[view.merchant_id] += sum(row.amount for row in view.close_rows)
        return totals

    @invariant()
    def books_balance(self) -> None:
        if not hasattr(self, "emulator"):
            return
        for merchant, expected in self.expected_balance.items():
            balance = self.emulator.balance(merchant)
            assert balance == expected
            assert balance >= 0  # R16: a refund never overdraws

    @invariant()
    def orders_are_consistent(self) -> None:
        if not hasattr(self, "emulator"):
            return
        for view in self.emulator.orders():
            assert 0 <= view.closed_amount <= view.amount
            assert 0 <= view.refunded_total <= view.amount  # R10
            if view.status in (*_HOLDING, GatewayStatus.CANCELED):
                assert (view.closed_amount, view.refunded_total) == (0, 0)
            else:
                assert view.closed_amount + view.refunded_total == view.amount
            if view.kind is PaymentKind.UNIONPAY:
                assert view.status not in _HOLDING  # R8
            snapshot = self.emulator.snapshot(view.merchant_id, view.merchant_trade_no)
            assert snapshot.state is view.state

    @invariant()
    def nothing_applied_in_the_batch_window(self) -> None:
        if not hasattr(self, "emulator"):
            return
        for entry in self.emulator.events:
            if entry.kind is EventKind.REQUEST and entry.applied and entry.merchant_id == MID:
                local = entry.at.astimezone(dt.timezone(dt.timedelta(hours=8))).time()
                assert not dt.time(20, 15) <= local < dt.time(20, 30)


EmulatorWalk.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestEmulatorWalk = EmulatorWalk.TestCase
