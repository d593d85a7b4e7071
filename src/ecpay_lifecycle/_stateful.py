"""``LifecycleMachine``: a hypothesis state machine running the real Client against the emulator.

Part of the public testing kit (re-exported by :mod:`ecpay_lifecycle.strategies`). Each run
builds an :class:`~ecpay_lifecycle.emulator.Emulator` with one merchant and a
:class:`~ecpay_lifecycle.Client` over ``httpx.MockTransport``, then drives random sequences of
authorizations, captures, refunds, abandons, retries, clock moves (across the 20:15 batch and
the 21/80/90-day marks), bank events and balance changes. It is the project's differential
test (issue 4): before every money movement it asks the planner what should happen, on the
emulator's own truth at the emulator's time, and then checks that

* the planner refuses exactly when the client does, with the same rule and nothing sent;
* what the planner allows, the emulator applies step for step (the one intended exception is
  R16, the merchant's balance, which no snapshot shows);
* what the planner refuses, the emulator refuses too when sent the plain DoAction a caller
  without the library would send (:attr:`LifecycleMachine.agreement` pairs refusals with rules);
* after every step: the client's query equals the emulator's truth for every order, refunds
  never exceed what was captured, the balance is never negative, and no order is locked.

With :attr:`LifecycleMachine.faults` switched on (issue 11), a rule arms fault schedules between
the steps (the sequences that once moved money twice among them, docs/ecpay-api.md section 9).
A call that meets a fault may then answer ``OutcomeUnknown``, ``OrderLocked`` or another typed
error instead of what the planner planned: those are right answers. The machine settles them
as a shop should, by waiting past the fence (``retry_at``, R22) and reconciling or retrying the
same key, never by sending again; and after every step it counts the money on the emulator's
books: every DoAction ECPay applied was sent by one attempt in the journal, no step of any
idempotency key applied twice, no attempt recorded "not done" applied, refunds never above the
order.

A shop subclasses it, builds its own service on :attr:`LifecycleMachine.client` and adds
``@rule`` methods that call the service and ``@invariant`` methods that check its books (see
``docs/testing.md`` and ``examples/test_shop_service.py``). It also runs as is::

    TestLifecycle = LifecycleMachine.TestCase
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, cast

import attrs
import httpx
from hypothesis import strategies as st
from hypothesis.stateful import (
    RULE_MARKER,
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from . import _planner
from ._client import Client
from ._exceptions import (
    EcpayError,
    GatewayRefused,
    InvalidAmount,
    OperationInProgress,
    OrderLocked,
    OutcomeUnknown,
    RuleViolation,
)
from ._journal import AttemptRecord, AttemptStatus, Journal, OperationRecord
from ._models import Action, GatewayStatus, Intent, OrderSnapshot, PaymentKind, Plan, State
from ._outcome import Outcome, Reconciliation, Verdict
from ._protocol import Credentials
from ._rules import TAIPEI, in_blackout
from ._schedules import ScheduledFault, fault_schedules
from ._value_strategies import refund_requests
from .emulator._emulator import Emulator
from .emulator._events import Event, EventKind
from .emulator._faults import Endpoint, Fault, FaultRule, Faults
from .emulator._settings import Refusal
from .emulator._state import OrderView

__all__ = ["LifecycleMachine"]

# Made-up keys for the machine's merchant: 16 ASCII bytes each (R1). Never printed.
_KEY: Final = "LifecycleKey2026"
_IV: Final = "LifecycleIv20261"

#: For each rule the planner refuses with, the emulator's refusals that agree with it when it is
#: sent the plain DoAction for the same intent (C to capture, N to abandon, R to refund). Besides
#: these, the emulator may always answer :attr:`Refusal.BATCH_WINDOW` while the R5 window is
#: open: it refuses every DoAction then before looking further, where the planner first names
#: what the order's state or kind forbids for good. Where a set has more than one member, its
#: comment says why.
_AGREEMENT: Final[Mapping[str, frozenset[Refusal]]] = {
    # Unauthorized or unsettled: no DoAction applies.
    "R3": frozenset({Refusal.WRONG_STATE}),
    "R5": frozenset({Refusal.BATCH_WINDOW}),
    # C after 21 days (for a refund with capture_first, the probe sends that C).
    "R6": frozenset({Refusal.OVER_DATE}),
    # N after day 90: by then the emulator has abandoned the order itself (error_nopay).
    "R7": frozenset({Refusal.ALREADY_ABANDONED}),
    "R8": frozenset({Refusal.UNIONPAY}),
    "R9": frozenset({Refusal.WRONG_STATE}),
    # More than is left of a captured order; or an abandoned one, whose status takes no R.
    "R10": frozenset({Refusal.OVER_CAPTURED, Refusal.WRONG_STATE}),
    # A part of an instalment or bonus order: the planner names the kind first; the emulator
    # refuses R on an authorized order for its state (error_amount_R) before the kind.
    "R11": frozenset({Refusal.INSTALLMENT_FULL_ONLY, Refusal.NOT_CAPTURED, Refusal.WRONG_STATE}),
    "R12": frozenset({Refusal.BONUS_FULL_ONLY, Refusal.NOT_CAPTURED, Refusal.WRONG_STATE}),
    # N on an order already abandoned (error_nopay), or on one N no longer applies to.
    "R14": frozenset({Refusal.ALREADY_ABANDONED, Refusal.WRONG_STATE}),
    # A part of an authorized order: R does not apply before C (error_amount_R); the library's
    # path C then R is taken only when the caller asks (capture_first).
    "R18": frozenset({Refusal.NOT_CAPTURED}),
    # More than the order: the planner checks the amount first, the emulator the status first.
    "R19": frozenset({Refusal.BAD_AMOUNT, Refusal.NOT_CAPTURED, Refusal.WRONG_STATE}),
}

#: How :meth:`LifecycleMachine.move_clock` moves time: by some seconds, to one of R5's edges
#: (Asia/Taipei wall times), or to a second around day 21, 80 or 90 of an order (R6, R7).
_CLOCK_MOVES: Final = st.one_of(
    st.tuples(st.just("by"), st.integers(1, 3600) | st.integers(3600, 3 * 86400)),
    st.tuples(
        st.just("to"),
        st.sampled_from(
            (dt.time(20, 14, 59), dt.time(20, 15), dt.time(20, 29, 59), dt.time(20, 30))
        ),
    ),
    st.tuples(
        st.just("day"),
        st.sampled_from((21, 80, 90)),
        st.sampled_from((-1, 0, 1)),
        st.integers(0, 9),
    ),
)
_CAPTURED_STATUSES: Final = frozenset({GatewayStatus.TO_BE_CAPTURED, GatewayStatus.CAPTURED})
_SERVER_ERRORS: Final = frozenset({Fault.SERVER_ERROR_BEFORE_APPLY, Fault.SERVER_ERROR_AFTER_APPLY})
_NOT_APPLIED: Final = frozenset({AttemptStatus.NOT_DONE, AttemptStatus.REFUSED})
#: What ``faults = True`` arms: random faults and the sequences that once moved money twice.
_KIT_SCHEDULES: Final = fault_schedules(sequences=True)


@attrs.frozen
class _Call:
    """A money call that succeeded, kept so that a rule can repeat it with the same key."""

    intent: Intent
    merchant_trade_no: str
    amount: int | None
    capture_first: bool
    key: str
    outcome: Outcome


@attrs.frozen
class _Unknown:
    """A money call whose outcome was unknown (``OutcomeUnknown``), kept to settle it with its
    idempotency key."""

    intent: Intent
    merchant_trade_no: str
    amount: int | None
    capture_first: bool
    key: str


def _position(snapshot: OrderSnapshot) -> str:
    """The state with TO_CLOSE's two flavours told apart (R9), for coverage counts."""
    if snapshot.pending_capture:
        return "to_close_capture"
    if snapshot.pending_refund:
        return "to_close_refund"
    return snapshot.state.value


class LifecycleMachine(RuleBasedStateMachine):
    """Random order lifecycles through :class:`~ecpay_lifecycle.Client` against the emulator,
    checked at every step against the planner and the emulator's own books (docs/ecpay-api.md
    sections 8 and 10).

    Class attributes a subclass may change:

    * ``auto_close``: the merchant's daily auto-close setting (R5-R7), default True;
    * ``start``: the emulator's start time (the strategies' ``REFERENCE_TIME``);
    * ``balance``: the merchant's ECPay balance at the start (R16), default 0;
    * ``kinds``, ``max_amount``, ``max_orders``: the orders :meth:`first_order` and
      :meth:`authorize` create;
    * ``probe_refusals``: also send the plain DoAction the planner refused and check the
      emulator refuses it (one more round trip per refusal), default True;
    * ``agreement``: for each rule the planner refuses with, the emulator refusals that agree
      (change it with the emulator's settings);
    * ``money_rules``: whether the machine's own capture, refund, abandon and retry rules run
      (default True); switch them off to give a subclass's own money rules the whole run;
    * ``bank_events`` and ``balance_changes``: whether the rules that force a bank status (R3)
      and set the balance (R16) run, default True;
    * ``faults``: the fault switch, default False. True arms schedules drawn from
      ``fault_schedules(sequences=True)`` between steps; a strategy of schedules (such as
      ``fault_schedules(...)``) arms those. See :meth:`arm_faults`, :meth:`settle` and
      :meth:`money_moves_once`.

    Hooks: :meth:`make_emulator`, :meth:`make_client`, :meth:`on_authorized` and
    :meth:`journals`. Helpers for a subclass's own rules: :meth:`truth`, :meth:`plan`,
    :meth:`balance_covers` and :attr:`credentials`. :attr:`reached` counts what a run covered
    (states and kinds, plans, refusals; with faults, the faults armed and how calls ended).
    """

    merchant_id: ClassVar[str] = "3002607"
    auto_close: ClassVar[bool] = True
    # The strategies' REFERENCE_TIME (a Wednesday, 10:00 Taipei); a test keeps the two equal.
    start: ClassVar[dt.datetime] = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)
    balance: ClassVar[int] = 0
    kinds: ClassVar[tuple[PaymentKind, ...]] = tuple(PaymentKind)
    max_amount: ClassVar[int] = 20_000
    max_orders: ClassVar[int] = 4
    probe_refusals: ClassVar[bool] = True
    money_rules: ClassVar[bool] = True
    agreement: ClassVar[Mapping[str, frozenset[Refusal]]] = _AGREEMENT
    bank_events: ClassVar[bool] = True
    balance_changes: ClassVar[bool] = True
    faults: ClassVar[bool | st.SearchStrategy[Sequence[ScheduledFault]]] = False

    #: The MerchantTradeNo of every order authorized so far.
    orders = Bundle[str]("orders")

    def __init__(self) -> None:
        super().__init__()
        self.emulator: Emulator = self.make_emulator()
        self.emulator.add_merchant(
            self.merchant_id, _KEY, _IV, auto_close=self.auto_close, balance=self.balance
        )
        #: The merchant's credentials (made-up keys that never show), for a service that
        #: builds clients of its own.
        self.credentials = Credentials(self.merchant_id, _KEY, _IV, auto_close=self.auto_close)
        self.client: Client = self.make_client(self.emulator, self.credentials)
        #: Every order authorized so far, oldest first.
        self.order_numbers: list[str] = []
        #: What this run covered: ``("state", position, kind)`` for every order after every
        #: step, ``("plan", intent, actions)`` for every plan carried out, ``("refused", rule,
        #: emulator refusal)`` for every refusal, ``("gateway", rule)`` for every R16 refusal,
        #: ``("retry", intent)`` for every replay.
        self.reached: collections.Counter[tuple[str, ...]] = collections.Counter()
        self._keys = itertools.count(1)
        self._succeeded: list[_Call] = []
        self._bank_event_done = False
        self._checked: dict[str, OrderView] = {}
        # With faults: the machine's own calls whose outcome is still unknown, and its keys.
        self._unsettled: list[_Unknown] = []
        self._own_keys: set[str] = set()

    # -- hooks -------------------------------------------------------------------------------

    def make_emulator(self) -> Emulator:
        """The emulator this run uses; override to pass :class:`EmulatorSettings`."""
        return Emulator(now=self.start)

    def make_client(self, emulator: Emulator, credentials: Credentials) -> Client:
        """The client the rules use (and a shop's service should use): over
        ``httpx.MockTransport(emulator.handler)`` on the emulator's clock."""
        return Client(
            credentials, transport=httpx.MockTransport(emulator.handler), clock=emulator.clock
        )

    def on_authorized(self, merchant_trade_no: str) -> None:
        """Called after each new order is authorized: tell your service it was paid."""

    def journals(self) -> Sequence[Journal]:
        """The journals whose attempts must account for every DoAction ECPay applied (checked
        with ``faults`` on, :meth:`money_moves_once`): the client's. If your service builds
        clients of its own on other journals, return those too; a DoAction that none of them
        recorded was sent outside the library, as a blind re-send is."""
        return (self.client.journal,)

    def teardown(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # -- helpers for rules -------------------------------------------------------------------

    def truth(self, merchant_trade_no: str) -> OrderSnapshot:
        """The order as the emulator knows it now (not as any client believes it)."""
        return self.emulator.snapshot(self.merchant_id, merchant_trade_no)

    def plan(
        self,
        intent: Intent,
        merchant_trade_no: str,
        amount: int | None = None,
        *,
        capture_first: bool = False,
    ) -> Plan:
        """What the planner makes of the emulator's truth at the emulator's time.

        The planner is docs/ecpay-api.md section 8.

        Raises exactly what the planner raises (:class:`RuleViolation`, :class:`InvalidAmount`,
        ...): the oracle a shop's rule compares its own service's answer with.
        """
        return self._plan(
            intent, self.truth(merchant_trade_no), amount, capture_first=capture_first
        )

    def balance_covers(self, merchant_trade_no: str, plan: Plan) -> bool:
        """R16: whether the merchant's balance covers the plan's refund after settlement.

        The planner cannot know (no snapshot carries the balance), so ECPay refuses such a
        plan's R; a shop must expect that refusal (``GatewayRefused``) even for planned refunds.
        """
        settled = self.truth(merchant_trade_no).capture_settled
        balance = self.emulator.balance(self.merchant_id)
        for step in plan.steps:
            if step.action is Action.REFUND and settled and step.amount > balance:
                return False
            settled = step.capture_settled_after
        return True

    def _plan(
        self, intent: Intent, truth: OrderSnapshot, amount: object, *, capture_first: bool
    ) -> Plan:
        return _planner.plan(
            intent, truth, cast(Any, amount), now=self.emulator.now, capture_first=capture_first
        )

    # -- rules: orders and money -------------------------------------------------------------

    @initialize(target=orders, data=st.data())
    def first_order(self, data: st.DataObject) -> str:
        """The run starts with one order, so that every rule has something to act on."""
        return self._authorize(data)

    @rule(target=orders, data=st.data())
    def authorize(self, data: st.DataObject) -> str | MultipleResults[str]:
        """Another card holder pays; nothing once ``max_orders`` exist."""
        if len(self.order_numbers) >= self.max_orders:
            return multiple()
        return self._authorize(data)

    def _authorize(self, data: st.DataObject) -> str:
        """A new order of a drawn kind and amount, maybe authorized up to 100 days ago (the
        batches and day rules it missed are applied at once, R5-R8)."""
        amount = data.draw(st.integers(1, self.max_amount), label="amount")
        kind = data.draw(st.sampled_from(self.kinds), label="kind")
        age = data.draw(st.just(0) | st.integers(0, 100 * 86400), label="age (seconds)")
        number = f"LM{len(self.order_numbers) + 1}"
        at = self.emulator.now - dt.timedelta(seconds=age)
        self.emulator.authorize(self.merchant_id, number, amount, kind=kind, at=at)
        self.order_numbers.append(number)
        self.on_authorized(number)
        return number

    # Preconditions only on class settings: they never change within a run, so shrinking can
    # delete steps without shifting the rule choices after them. What changes within a run
    # (an order limit reached, nothing to retry yet) makes a rule do nothing instead.
    @precondition(lambda self: self.money_rules)
    @rule(order=orders)
    def capture(self, order: str) -> None:
        """``Client.capture``, checked against the planner and the emulator (R6, R8, R9, R5)."""
        self._money(Intent.CAPTURE, order)

    @precondition(lambda self: self.money_rules)
    @rule(order=orders, capture_first=st.booleans(), data=st.data())
    def refund(self, order: str, capture_first: bool, data: st.DataObject) -> None:
        """``Client.refund`` of an amount drawn for the order as it is now: everything, a part,
        too much, or not an amount at all (R9-R13, R18, R19)."""
        truth = self.truth(order)
        anything = refund_requests(truth, valid=None)
        valid = anything
        if truth.state.actionable and truth.refundable:
            valid = refund_requests(truth)
        # Both sides at once (valid=None) would draw mostly the many invalid shapes, so a third
        # of the draws are valid requests, a third any part of the order (R18, capture_first)
        # and a third either side. The choice is drawn whatever the state, so that shrinking
        # can delete steps without misaligning.
        requests = data.draw(
            st.sampled_from((valid, st.integers(1, truth.amount), anything)),
            label="kind of request",
        )
        amount = data.draw(requests, label="amount")
        self._money(Intent.REFUND, order, amount, capture_first=capture_first)

    @precondition(lambda self: self.money_rules)
    @rule(order=orders)
    def abandon(self, order: str) -> None:
        """``Client.abandon``: N, or E then N on a pending capture (R14, R15)."""
        self._money(Intent.ABANDON, order)

    @precondition(lambda self: self.money_rules)
    @rule(back=st.integers(0, 7))
    def retry_same_key(self, back: int) -> None:
        """Repeat a successful call (the last one, or ``back`` calls before it) with its
        idempotency key: the recorded outcome comes back and nothing is sent, however the order
        changed since (docs/ecpay-api.md section 9)."""
        if not self._succeeded:
            return
        last = self._succeeded[max(0, len(self._succeeded) - 1 - back)]
        mark = self._mark()
        if last.intent is Intent.REFUND:
            again = self.client.refund(
                last.merchant_trade_no,
                last.amount,
                idempotency_key=last.key,
                capture_first=last.capture_first,
            )
        elif last.intent is Intent.CAPTURE:
            again = self.client.capture(last.merchant_trade_no, idempotency_key=last.key)
        else:
            again = self.client.abandon(last.merchant_trade_no, idempotency_key=last.key)
        assert again == attrs.evolve(last.outcome, replayed=True), again
        assert self._sent(mark) == [], "a replayed call sent a DoAction"
        self.reached["retry", last.intent.value] += 1

    # -- rules: the world moves --------------------------------------------------------------

    @rule()
    def batch_runs(self) -> None:
        """The clock moves on to the end of the next daily batch window (20:30 Taipei): every
        pending close settles, and with auto-close on every authorized order is closed (R5).

        Time passing is what turns pending closes into settled orders, and refunds into
        refunded ones; this rule gets there in one step.
        """
        local = self.emulator.now.astimezone(TAIPEI)
        end = dt.datetime.combine(local.date(), dt.time(20, 30), tzinfo=TAIPEI)
        self.emulator.set_time(end if end > local else end + dt.timedelta(days=1))

    @rule(move=_CLOCK_MOVES)
    def move_clock(self, move: tuple[Any, ...]) -> None:
        """Time passes, running every 20:15 batch crossed (R5) and the day rules (R7):

        * ``("by", seconds)``: minutes, hours or days;
        * ``("to", wall_time)``: the next 20:14:59, 20:15:00, 20:29:59 or 20:30:00 Taipei, R5's
          edges;
        * ``("day", days, offset, n)``: a second before, on or after day 21, 80 or 90 of the
          ``n``-th order (R6, R7), if that is still ahead.
        """
        now = self.emulator.now
        if move[0] == "by":
            self.emulator.advance(dt.timedelta(seconds=move[1]))
        elif move[0] == "to":
            local = now.astimezone(TAIPEI)
            target = dt.datetime.combine(local.date(), move[1], tzinfo=TAIPEI)
            self.emulator.set_time(target if target > local else target + dt.timedelta(days=1))
        elif self.order_numbers:
            _, days, offset, n = move
            authorized = self.truth(self.order_numbers[n % len(self.order_numbers)]).authorized_at
            target = authorized + dt.timedelta(days=days, seconds=offset)
            if target > now:
                self.emulator.set_time(target)

    @precondition(lambda self: self.bank_events)
    @rule(order=orders, chargeback=st.booleans())
    def bank_event(self, order: str, chargeback: bool) -> None:
        """The bank or ECPay takes the order out of the merchant's hands (R3: nothing may be
        sent): a live hold turns out unauthorized; anything else meets a chargeback or a failed
        batch. Once per run, because such an order never moves again."""
        if self._bank_event_done:
            return
        if self.emulator.order(self.merchant_id, order).state is State.AUTHORIZED:
            status = GatewayStatus.UNAUTHORIZED
        else:
            status = GatewayStatus.BANK_RECLAIMING if chargeback else GatewayStatus.BATCH_FAILED
        self.emulator.set_status(self.merchant_id, order, status)
        self._bank_event_done = True

    @precondition(lambda self: self.balance_changes)
    @rule(balance=st.integers(0, 50_000))
    def set_balance(self, balance: int) -> None:
        """The merchant's ECPay balance changes (payouts, other refunds): R16's input."""
        self.emulator.set_balance(self.merchant_id, balance)

    # -- rules: faults (the ``faults`` switch) -----------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that sets ``faults`` gets the fault rules (:meth:`arm_faults`,
        :meth:`call_meets_faults`, :meth:`settle`, :meth:`retry_unknown`). Without it the rules
        are not there at all, so hypothesis draws the very runs it drew before the switch."""
        super().__init_subclass__(**kwargs)
        if cls.faults is False:
            return
        made = {
            "arm_faults": (_faults_on, rule(order=cls.orders, data=st.data())),
            "call_meets_faults": (_faults_and_money_on, rule(order=cls.orders, data=st.data())),
            "settle": (_faults_on, rule(order=cls.orders)),
            "retry_unknown": (_faults_and_money_on, rule(back=st.integers(0, 3))),
        }
        for name, (allowed, as_rule) in made.items():
            function = getattr(cls, name)
            if getattr(function, RULE_MARKER, None) is None:  # a base class made it a rule
                setattr(cls, name, precondition(allowed)(as_rule(function)))

    def arm_faults(self, order: str, data: st.DataObject) -> None:
        """Arm a drawn fault schedule on the requests about ``order``: what the next calls on it
        meet (docs/ecpay-api.md section 9).

        A STALE_QUERY waits for a DoAction on the order and answers the queries right after
        it, within the step that sent it: the fence rests on ECPay's data lagging a write by
        less than the client's ``fence_margin`` (docs/client.md, "The fence"); behind a longer
        lag no client can tell an applied step from one not done, nor plan from a query.
        """
        schedule = data.draw(self._schedules(), label="faults")
        for planned in schedule:
            armed = planned
            if planned.fault is Fault.STALE_QUERY:
                armed = attrs.evolve(planned, after_do_action=True)
            armed.arm(self.emulator, merchant_trade_no=order)
            self.reached["fault", planned.fault.name] += 1

    def call_meets_faults(self, order: str, data: st.DataObject) -> None:
        """A drawn fault schedule armed on ``order``, then at once a capture, refund (all, or
        a part: C then R on an authorized order) or abandon that the planner allows, if any
        is left: most money calls the other rules draw are refused before anything is sent."""
        self.arm_faults(order, data)
        truth = self.truth(order)
        allowed = []
        for intent in (Intent.REFUND, Intent.CAPTURE, Intent.ABANDON):
            with contextlib.suppress(EcpayError):
                self._plan(intent, truth, None, capture_first=False)
                allowed.append(intent)
        choices = allowed or [Intent.REFUND, Intent.CAPTURE, Intent.ABANDON]
        intent = data.draw(st.sampled_from(choices), label="intent")
        amount = None
        if intent is Intent.REFUND and truth.refundable > 1 and not truth.kind.full_refund_only:
            amount = data.draw(st.none() | st.integers(1, truth.refundable), label="amount")
        capture_first = amount is not None and truth.state is State.AUTHORIZED
        self._money(intent, order, amount, capture_first=capture_first)

    def settle(self, order: str) -> None:
        """What a shop does for an order left locked, or a client told to wait by HTTP 403:
        wait until every unknown step's fence (``retry_at``, R22) and the 403's pause are past,
        ``client.reconcile`` the order, then retry the machine's own unknown calls on it with
        their idempotency keys. Nothing is sent again by hand; reconcile sends no DoAction.

        A step still unknown after its fence with ``retry_at`` None (the order changed in a way
        the step does not explain, such as a chargeback) is declared from the emulator's books,
        as a person reading ECPay's merchant back office would. Past the fences, a reconcile
        whose query met no fault leaves no step unknown.
        """
        calls = [call for call in self._unsettled if call.merchant_trade_no == order]
        waits = [a.resolvable_at for _, a in self._open_attempts(order) if a.resolvable_at]
        quiet = self._rate_limited_until()
        if quiet is not None:
            waits.append(quiet)
        if not waits and not calls:
            return
        if waits and max(waits) >= self.emulator.now:
            self.emulator.set_time(max(waits) + dt.timedelta(seconds=1))
        self._heal()
        if self._open_attempts(order):
            self._reconcile(order)
        for call in calls:
            self._retry_unknown(call)

    def retry_unknown(self, back: int) -> None:
        """Repeat a call whose outcome was unknown (the last one, or ``back`` before it) with
        its idempotency key, whenever: before its fence the unknown step is never sent again
        (one query, which settles it only if it shows the step done); after it, it settles
        (docs/client.md, "When a reply is lost: the timeline")."""
        if not self._unsettled:
            return
        self._retry_unknown(self._unsettled[max(0, len(self._unsettled) - 1 - back)])

    def _schedules(self) -> st.SearchStrategy[Sequence[ScheduledFault]]:
        if isinstance(self.faults, bool):
            return _KIT_SCHEDULES
        return self.faults

    def _reconcile(self, order: str) -> None:
        """``client.reconcile`` past the fences; what only a person can tell, from the books."""
        mark = self._mark()
        result: Reconciliation | EcpayError
        try:
            result = self.client.reconcile(order)
            person = {
                r.key: self._verdict_on_the_books(order, r.key)
                for r in result.resolutions
                if r.verdict is Verdict.UNKNOWN and r.retry_at is None
            }
            if person:
                result = self.client.reconcile(order, declare=person)
                self.reached["settle", "declared"] += 1
        except EcpayError as error:
            result = error
        assert self._sent(mark) == [], "reconcile sent a DoAction"
        clean = not self._faults_fired(mark, order)
        if isinstance(result, EcpayError):
            # Its query met a fault: the order stays locked until the next settle.
            assert not clean, f"reconcile failed with no fault: {result!r}"
            self.reached["settle", type(result).__name__] += 1
            return
        assert not (clean and result.locked), f"past every fence, a clean query left {result}"
        self.reached["settle", "still locked" if result.locked else "settled"] += 1

    def _retry_unknown(self, call: _Unknown) -> None:
        """The same call with the same key: its unknown step is not sent again before its
        fence; what settles it leaves the order unlocked and, done, is replayed from then on."""
        self._heal()
        record = self.client.journal.get(self.merchant_id, call.key)
        attempt = record.open_attempt if record else None
        fence = attempt.resolvable_at if attempt is not None else None
        fenced = fence is not None and self.emulator.now < fence
        mark = self._mark()
        got: Outcome | EcpayError
        try:
            got = self._call(
                call.intent, call.merchant_trade_no, call.amount, call.capture_first, call.key
            )
        except EcpayError as error:
            got = error
        record = self.client.journal.get(self.merchant_id, call.key)
        if fenced and attempt is not None and record is not None:
            # A query that shows the step done lets the operation go on to its next step; the
            # unknown step itself is never sent again before its fence.
            again = [
                f"{a.action.value}({a.amount})"
                for a in record.attempts
                if a.index == attempt.index and a.attempt > attempt.attempt
            ]
            assert again == [], f"before its fence, a retry of {call.key} sent {again} again"
        still_open = record is not None and record.open_attempt is not None
        if isinstance(got, OutcomeUnknown):
            assert still_open, f"OutcomeUnknown for {call.key}, yet it locks nothing"
        if isinstance(got, Outcome):
            if not got.replayed and not self._faults_fired(mark, call.merchant_trade_no):
                after = self.truth(call.merchant_trade_no)
                assert got.final == after, f"outcome says {got.final}, the emulator has {after}"
            self._succeeded.append(
                _Call(
                    call.intent,
                    call.merchant_trade_no,
                    call.amount,
                    call.capture_first,
                    call.key,
                    got,
                )
            )
        if not still_open:
            self._unsettled.remove(call)
        when = "before the fence" if fenced else "after the fence"
        self.reached["retry unknown", when, type(got).__name__] += 1

    # -- faults: the machine's bookkeeping ---------------------------------------------------

    def _open_attempts(self, order: str) -> list[tuple[OperationRecord, AttemptRecord]]:
        """The unresolved attempts that lock ``order``, in every journal."""
        return [
            (record, record.open_attempt)
            for journal in self.journals()
            for record in journal.for_order(self.merchant_id, order)
            if record.open_attempt is not None
        ]

    def _rate_limited_until(self) -> dt.datetime | None:
        """Until when the client sends nothing after an HTTP 403, if it remembers one."""
        until = getattr(self.client, "rate_limited_until", None)
        return until if isinstance(until, dt.datetime) else None

    def _faults_fired(self, mark: int, order: str) -> bool:
        """Whether a request about ``order`` met a fault (or a late DoAction landed) since
        ``mark``."""
        return any(
            event.seq > mark and event.fault is not None and event.merchant_trade_no == order
            for event in self.emulator.events
        )

    def _heal(self) -> None:
        """ECPay's data catches up by the end of the step whose write it lagged: a STALE_QUERY
        a DoAction woke is gone (one still waiting for its DoAction stays)."""
        faults = self.emulator.faults
        if any(_lagging(faults, r) for r in faults.pending()):
            self._rearm(lambda r: not _lagging(faults, r))

    def _rearm(self, keep: Callable[[FaultRule], bool]) -> list[tuple[FaultRule, int | None, bool]]:
        """Disarm every fault, then arm again, in their order, what is left of those ``keep``
        accepts. Returns what was armed."""
        faults = self.emulator.faults
        armed = [
            (armed_rule, faults.remaining(armed_rule), faults.is_dormant(armed_rule))
            for armed_rule in faults.pending()
        ]
        faults.clear()
        for fault_rule, left, dormant in armed:
            if keep(fault_rule):
                _arm_again(faults, fault_rule, left, dormant)
        return armed

    @contextlib.contextmanager
    def _faults_held(self) -> Iterator[None]:
        """The machine's own look at ECPay (the invariants' queries, the probes) neither meets
        nor uses up the faults armed for the calls under test."""
        faults = self.emulator.faults
        armed = self._rearm(lambda _: False)
        try:
            yield
        finally:
            faults.clear()
            # Invariants run after every step: the end of the step heals a lag (_heal).
            for fault_rule, left, dormant in armed:
                if dormant or fault_rule.fault is not Fault.STALE_QUERY:
                    _arm_again(faults, fault_rule, left, dormant)

    def _observing(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self.faults is False else self._faults_held()

    def _books(self, order: str) -> dict[tuple[str, int, Action, int], Event]:
        """Every DoAction the emulator applied to ``order``, keyed by the step of the journaled
        operation that sent it (key, step index, action, amount); asserts the money moved once.

        A DoAction applied at once is matched to the attempt sent at that instant; one landing
        late (``Fault.LATE_APPLY``) to one sent within ECPay's Timestamp window before (R20).
        """
        attempts = [
            (record, attempt)
            for journal in self.journals()
            for record in journal.for_order(self.merchant_id, order)
            for attempt in record.attempts
        ]
        window = self.emulator.settings.timestamp_tolerance.total_seconds() + 1
        taken: set[int] = set()
        books: dict[tuple[str, int, Action, int], Event] = {}
        refunded = 0
        for event in self.emulator.applied_do_actions(self.merchant_id, order):
            late = event.fault is Fault.LATE_APPLY
            candidates = []
            for n, (_, attempt) in enumerate(attempts):
                if n in taken or (attempt.action, attempt.amount) != (event.action, event.amount):
                    continue
                gap = (event.at - attempt.at).total_seconds()
                if abs(gap) < 1 or (late and 0 <= gap <= window):
                    candidates.append(n)
            # Two attempts sent alike at one instant: the one the journal says went through.
            candidates.sort(key=lambda n: attempts[n][1].status in _NOT_APPLIED)
            found = candidates[0] if candidates else None
            assert found is not None, (
                f"ECPay applied {event.describe()}, which no attempt in the journal sent: money "
                "moved outside the library (a DoAction sent again by hand?)"
            )
            taken.add(found)
            record, attempt = attempts[found]
            assert attempt.status not in _NOT_APPLIED, (
                f"{record.key} recorded its {attempt.action.value}({attempt.amount}) "
                f"{attempt.status.value}, yet ECPay applied it: {event.describe()}"
            )
            # A step is its place in the plan and what it does: a plan made again from a fresh
            # query (after a step proved done or not done) numbers its steps from 0 again.
            step = (record.key, attempt.index, attempt.action, attempt.amount)
            twice = books.get(step)
            assert twice is None, (
                f"{attempt.action.value}({attempt.amount}), step {attempt.index} of "
                f"{record.key}, was applied twice: {twice.describe()} and {event.describe()}"
            )
            books[step] = event
            if event.action is Action.REFUND:
                refunded += event.amount or 0
        amount = self.emulator.order(self.merchant_id, order).amount
        assert refunded <= amount, f"ECPay refunded {refunded} TWD of a {amount} TWD order {order}"
        return books

    def _verdict_on_the_books(self, order: str, key: str) -> Verdict:
        """Whether the emulator applied the open attempt of the operation ``key``."""
        books = self._books(order)
        steps = {
            (record.key, attempt.index, attempt.action, attempt.amount)
            for record, attempt in self._open_attempts(order)
            if record.key == key
        }
        return Verdict.DONE if steps & books.keys() else Verdict.NOT_DONE

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def client_sees_what_the_emulator_has(self) -> None:
        """For every order, a fresh query through the client equals the emulator's truth (R3,
        R4, R9): state, both TO_CLOSE flavours, closed amount, kind, times. With faults, the
        query meets none of those armed (and uses none up); while the client waits out an
        HTTP 403 it is not asked."""
        quiet = self._rate_limited_until() is not None
        with self._observing():
            for order in self.order_numbers:
                view = self.emulator.order(self.merchant_id, order)
                # A query's answer depends only on what the emulator holds for the order: one
                # that has not changed since its last check need not be asked again.
                if self._checked.get(order) != view and not quiet:
                    seen = self.client.query(order)
                    # Read after the query: a DoAction in flight that is due lands on it.
                    truth = self.truth(order)
                    assert seen == truth, f"client sees {seen}, the emulator has {truth}"
                    self._checked[order] = self.emulator.order(self.merchant_id, order)
                truth = self.truth(order)
                self.reached["state", _position(truth), truth.kind.value] += 1

    @invariant()
    def refunds_never_exceed_captures(self) -> None:
        """R10: per order, the refunds in effect plus what is still closed is the whole amount
        once captured, and nothing at all before."""
        for view in self.emulator.orders(self.merchant_id):
            captured = view.refunded_total + view.closed_amount
            assert 0 <= view.refunded_total <= view.amount, view
            assert captured in (0, view.amount), view
            if view.status in _CAPTURED_STATUSES:
                assert captured == view.amount, view

    @invariant()
    def balance_never_negative(self) -> None:
        """R16: ECPay refuses a refund the balance does not cover; it never goes below 0."""
        assert self.emulator.balance(self.merchant_id) >= 0

    @invariant()
    def no_order_locked(self) -> None:
        """Without faults no step's outcome is ever unknown: nothing is locked.

        With faults a locked order is a right answer, but only a step whose outcome is
        ``unknown`` locks it (never one left ``sending`` between steps), and of the machine's
        own calls only one that answered ``OutcomeUnknown`` and is not settled yet. Unknown
        outcomes are docs/ecpay-api.md section 9.
        """
        unsettled = {call.key for call in self._unsettled}
        for order in self.order_numbers:
            for record in self.client.journal.for_order(self.merchant_id, order):
                attempt = record.open_attempt
                if self.faults is False or attempt is None:
                    assert attempt is None, record
                    continue
                assert attempt.status is AttemptStatus.UNKNOWN, record
                if record.key in self._own_keys:
                    assert record.key in unsettled, f"{record.key} locks {order}: {record}"

    @precondition(lambda self: self.faults is not False)
    @invariant()
    def money_moves_once(self) -> None:
        """With faults, the money counted on the emulator's books (``applied_do_actions``):
        every DoAction ECPay applied was sent by one attempt in :meth:`journals`; no step of an
        idempotency key was applied twice; no attempt recorded not done or refused was applied;
        the refunds applied never exceed the order (R10, R21, R22)."""
        for order in self.order_numbers:
            self._books(order)

    # -- the differential check --------------------------------------------------------------

    def _mark(self) -> int:
        events = self.emulator.events
        return events[-1].seq if events else 0

    def _sent(self, mark: int) -> list[Event]:
        """The DoActions the emulator received since ``mark``."""
        return [
            event
            for event in self.emulator.events
            if event.seq > mark
            and event.kind is EventKind.REQUEST
            and event.endpoint is Endpoint.DO_ACTION
        ]

    def _money(
        self, intent: Intent, order: str, amount: object = None, *, capture_first: bool = False
    ) -> None:
        """Plan on the truth, act through the client, and check the two agree.

        Planning and unknown outcomes are docs/ecpay-api.md sections 8 and 9.
        """
        before = self.truth(order)
        expected: Plan | EcpayError
        try:
            expected = self._plan(intent, before, amount, capture_first=capture_first)
        except EcpayError as refusal:
            expected = refusal
        # R16 is judged on the balance before the call: a refund that is carried out lowers it.
        covered = isinstance(expected, Plan) and self.balance_covers(order, expected)
        key = f"lm-{next(self._keys)}"
        self._own_keys.add(key)
        self._heal()
        locked = bool(self._open_attempts(order))
        quiet = self._rate_limited_until() is not None
        # A DoAction still in flight inside ECPay changes the order when it lands: the truth
        # the planner sees now is not the whole story yet.
        in_flight = any(x.merchant_trade_no == order for x in self.emulator.pending_landings())
        mark = self._mark()
        got: Outcome | EcpayError
        try:
            got = self._call(intent, order, amount, capture_first, key)
        except EcpayError as error:
            got = error
        sent = self._sent(mark)
        if self.faults is not False and (
            locked or quiet or in_flight or self._faults_fired(mark, order)
        ):
            call = _Unknown(intent, order, cast(Any, amount), capture_first, key)
            self._under_faults(call, got, sent, locked=locked, quiet=quiet)
            return
        if isinstance(expected, EcpayError):
            self._check_refused(expected, got, sent)
            if self.probe_refusals:
                self._probe(intent, before, amount, capture_first, expected)
            return
        if not covered:
            self._check_balance_refusal(before, expected, got, sent)
            return
        assert isinstance(got, Outcome), f"the planner planned {expected.describe()}; got {got!r}"
        assert got.plan == expected, f"client planned {got.plan}, the planner {expected}"
        done = [(e.action, e.amount, e.applied, e.refusal) for e in sent]
        wanted = [(s.action, s.amount, True, None) for s in expected.steps]
        assert done == wanted, f"the emulator saw {done}; the plan was {expected.describe()}"
        after = self.truth(order)
        assert got.final == after, f"outcome says {got.final}, the emulator has {after}"
        assert before.refundable - after.refundable == expected.refund_total, (before, after)
        self.reached["plan", intent.value, ",".join(a.value for a in expected.actions)] += 1
        self._succeeded.append(_Call(intent, order, cast(Any, amount), capture_first, key, got))

    def _under_faults(
        self,
        call: _Unknown,
        got: Outcome | EcpayError,
        sent: list[Event],
        *,
        locked: bool,
        quiet: bool,
    ) -> None:
        """A call that met a fault, a locked order or a 403's pause. Any typed error is a right
        answer then (the planner cannot foresee a fault), but only ``OutcomeUnknown`` leaves
        the order locked; on an order already locked, or while the client waits out a 403,
        nothing is sent; ``OrderLocked`` comes only from an order that was locked. The money
        itself is checked on the books after every step (:meth:`money_moves_once`)."""
        order, key = call.merchant_trade_no, call.key
        record = self.client.journal.get(self.merchant_id, key)
        left_open = record is not None and record.open_attempt is not None
        name = type(got).__name__
        if isinstance(got, OutcomeUnknown):
            assert left_open, f"OutcomeUnknown for {key}, yet it locks nothing"
            assert got.idempotency_key == key, (got.idempotency_key, key)
            self._unsettled.append(call)
        else:
            assert not left_open, f"{got!r} left {order} locked: {record}"
        if locked or quiet or isinstance(got, OrderLocked | OperationInProgress):
            assert sent == [], f"{name}, yet it sent {[e.describe() for e in sent]}"
        if isinstance(got, OrderLocked):
            assert locked, f"OrderLocked on {order}, which nothing locked: {got}"
        if isinstance(got, Outcome):
            self._succeeded.append(
                _Call(call.intent, order, call.amount, call.capture_first, key, got)
            )
        self.reached["under faults", call.intent.value, name] += 1

    def _call(
        self, intent: Intent, order: str, amount: object, capture_first: bool, key: str
    ) -> Outcome:
        if intent is Intent.CAPTURE:
            return self.client.capture(order, idempotency_key=key)
        if intent is Intent.ABANDON:
            return self.client.abandon(order, idempotency_key=key)
        return self.client.refund(
            order, cast(Any, amount), idempotency_key=key, capture_first=capture_first
        )

    def _check_refused(
        self, expected: EcpayError, got: Outcome | EcpayError, sent: list[Event]
    ) -> None:
        """The planner refused: the client refuses alike (type, rule, message) and sends nothing."""
        assert isinstance(got, EcpayError), f"the planner refused ({expected}); client did {got}"
        assert type(got) is type(expected), f"client raised {got!r}, the planner {expected!r}"
        assert got.message == expected.message, (got.message, expected.message)
        if isinstance(expected, RuleViolation):
            assert isinstance(got, RuleViolation)
            assert (got.rule, got.retry_at) == (expected.rule, expected.retry_at), (got, expected)
        assert sent == [], f"a refused call sent {[e.describe() for e in sent]}"

    def _check_balance_refusal(
        self, before: OrderSnapshot, plan: Plan, got: Outcome | EcpayError, sent: list[Event]
    ) -> None:
        """R16, the intended difference: planned, but ECPay refuses the R; nothing moves."""
        assert isinstance(got, GatewayRefused), f"R16 should refuse {plan.describe()}: {got!r}"
        assert [e.refusal for e in sent] == [Refusal.INSUFFICIENT_BALANCE], sent
        assert self.truth(before.merchant_trade_no) == before
        self.reached["gateway", "R16"] += 1

    def _probe(
        self,
        intent: Intent,
        before: OrderSnapshot,
        amount: object,
        capture_first: bool,
        refusal: EcpayError,
    ) -> None:
        """The other direction: the plain DoAction for a refused intent is refused by the
        emulator too, for a reason :attr:`agreement` pairs with the planner's rule."""
        if isinstance(refusal, RuleViolation):
            rule_name = refusal.rule
        elif isinstance(refusal, InvalidAmount) and isinstance(amount, int) and amount > 0:
            rule_name = "R19"
        else:
            return  # not an amount at all: the client refuses to build such a request
        action, total = _plain_action(intent, before, amount, capture_first, rule_name)
        mark = self._mark()
        try:
            with self._observing():
                reply = self.client.do_action(
                    before.merchant_trade_no, before.trade_no, action, total
                )
        except GatewayRefused:
            pass
        else:
            raise AssertionError(
                f"the planner refused {intent} ({refusal}) but the emulator accepted "
                f"{action.value}({total}) on {before}: {reply}"
            )
        sent = self._sent(mark)
        assert len(sent) == 1, sent
        assert not sent[0].applied, sent
        answer = sent[0].refusal
        assert answer is not None
        window = answer is Refusal.BATCH_WINDOW and in_blackout(self.emulator.now, self.auto_close)
        assert window or answer in self.agreement.get(rule_name, frozenset()), (
            f"the planner refused with {rule_name}, the emulator with {answer}: {before}"
        )
        self.reached["refused", rule_name, answer.value] += 1


def _faults_on(machine: LifecycleMachine) -> bool:
    """Precondition of the fault rules: the switch is on (a subclass may turn it off again)."""
    return machine.faults is not False


def _faults_and_money_on(machine: LifecycleMachine) -> bool:
    """Precondition of the fault rules that make the machine's own money calls."""
    return machine.faults is not False and machine.money_rules


def _lagging(faults: Faults, armed: FaultRule) -> bool:
    """Whether ``armed`` is a STALE_QUERY that a DoAction woke."""
    return armed.fault is Fault.STALE_QUERY and not faults.is_dormant(armed)


def _arm_again(faults: Faults, armed: FaultRule, left: int | None, dormant: bool) -> FaultRule:
    """Arm ``armed`` again for the ``left`` requests it had to go, dormant if it was."""
    fault = armed.fault
    return faults.inject(
        fault,
        endpoint=armed.endpoint,
        action=armed.action,
        times=left,
        seconds=armed.seconds,
        status_code=armed.status_code if fault in _SERVER_ERRORS else None,
        trans_code=armed.trans_code if fault is Fault.TRANS_CODE_ERROR else None,
        land_after=armed.land_after if fault is Fault.LATE_APPLY else None,
        writes=armed.writes if fault is Fault.STALE_QUERY else None,
        merchant_trade_no=armed.merchant_trade_no,
        after_do_action=dormant,
    )


def _plain_action(
    intent: Intent,
    before: OrderSnapshot,
    amount: object,
    capture_first: bool,
    rule_name: str,
) -> tuple[Action, int]:
    """The DoAction a caller without the library would send for ``intent``: C or N for the
    order amount, R for the amount asked (or all that is left); for a refund with
    ``capture_first`` refused by its capture (R5, R6), the C of the C-then-R path (R18)."""
    if intent is Intent.CAPTURE:
        return Action.CLOSE, before.amount
    if intent is Intent.ABANDON:
        return Action.ABANDON, before.amount
    if capture_first and before.state is State.AUTHORIZED and rule_name == "R6":
        return Action.CLOSE, before.amount
    if isinstance(amount, int) and not isinstance(amount, bool):
        return Action.REFUND, amount
    return Action.REFUND, before.refundable or before.amount
