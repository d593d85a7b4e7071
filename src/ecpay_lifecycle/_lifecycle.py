"""The one lifecycle of an ECPay credit-card order, declared once as data.

The lifecycle is docs/ecpay-api.md section 6.

``TRANSITIONS`` is the single declaration. From it this module builds:

* ``MACHINE``: one shared ``transitions.Machine`` (``auto_transitions=False``) whose guards call
  :mod:`._rules`. It is driven through one private holder under a lock, never a machine or a
  model per order (a machine costs ~30 KB and ~100-200 µs; ``add_model`` per order grows with the
  number of live orders, and attrs' ``eq=True`` would make two equal orders share triggers).
* ``fire``: the machine compiled at import into a dict of plain functions (its transitions, in
  order, with their conditions' guards, rules and effects), for the planner's hot path. A test
  drives both with the same inputs and checks they agree.

The division of labour: the planner checks the *intent* (what to send, in which order, for the
outcome the caller wants, and the rules that no single step sees, like R18's capture first); the
machine checks *one DoAction at a time* (each step of a plan is fired through it, and its guards
refuse with the rule's number). :func:`after_batch` fires the machine's batch rows, for the
judgement of unknown outcomes.

A failed guard becomes a :class:`RuleViolation` naming the rule; transitions alone would return a
silent ``False``. Gateway events (``authorize``, ``batch``, ``expire``, ``bank_event``) are in the
table too, so the diagram and the tests see the whole lifecycle, but the library never sends them.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, Protocol, cast

import attrs
from transitions import EventData, Machine, Transition

from . import _rules
from ._exceptions import RuleViolation
from ._models import Action, OrderSnapshot, PaymentKind, State

__all__ = [
    "DO_ACTION_TRIGGERS",
    "MACHINE_STATES",
    "SETTLED_AFTER",
    "STATE_OF",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Context",
    "Phase",
    "Position",
    "TransitionSpec",
    "after_batch",
    "fire",
    "fire_via_machine",
    "position_of",
]


class Phase(enum.StrEnum):
    """Where an order stands in the machine: its :class:`State`, with TO_CLOSE's two flavours,
    which the gateway shows with one status, told apart (R9). The one vocabulary of the
    lifecycle: the machine's states, the compiled table's keys and :class:`Position` use it."""

    UNAUTHORIZED = "unauthorized"
    AUTHORIZED = "authorized"
    TO_CLOSE_CAPTURE = "to_close_capture"
    TO_CLOSE_REFUND = "to_close_refund"
    CLOSED = "closed"
    ABANDONED = "abandoned"
    REFUNDED = "refunded"
    UNSETTLED = "unsettled"

    @property
    def state(self) -> State:
        """The public :class:`State` this phase is shown as."""
        return STATE_OF[self]


UNAUTHORIZED: Final = Phase.UNAUTHORIZED
AUTHORIZED: Final = Phase.AUTHORIZED
TO_CLOSE_CAPTURE: Final = Phase.TO_CLOSE_CAPTURE
TO_CLOSE_REFUND: Final = Phase.TO_CLOSE_REFUND
CLOSED: Final = Phase.CLOSED
ABANDONED: Final = Phase.ABANDONED
REFUNDED: Final = Phase.REFUNDED
UNSETTLED: Final = Phase.UNSETTLED

MACHINE_STATES: Final = tuple(Phase)
#: States with no way out: nothing is left to move (UNSETTLED: nothing the library may do).
TERMINAL_STATES: Final = frozenset({ABANDONED, REFUNDED, UNSETTLED})

#: DoAction triggers, by the Action they send.
DO_ACTION_TRIGGERS: Final[Mapping[Action, str]] = {
    Action.CLOSE: "close",
    Action.REFUND: "refund",
    Action.CANCEL: "cancel",
    Action.ABANDON: "abandon",
}

STATE_OF: Final[Mapping[Phase, State]] = {
    UNAUTHORIZED: State.UNAUTHORIZED,
    AUTHORIZED: State.AUTHORIZED,
    TO_CLOSE_CAPTURE: State.TO_CLOSE,
    TO_CLOSE_REFUND: State.TO_CLOSE,
    CLOSED: State.CLOSED,
    ABANDONED: State.ABANDONED,
    REFUNDED: State.REFUNDED,
    UNSETTLED: State.UNSETTLED,
}


class Position(NamedTuple):
    """Where an order stands in the machine: state, net closed amount (ClsAmt), and the amount
    the last batch settled (``None`` when unknown), which E on a pending refund restores (R15).

    A NamedTuple rather than an attrs value: it is internal, immutable, and made at every step
    of the planner's hot path, where a tuple is half the cost."""

    state: Phase
    closed_amount: int
    settled_amount: int | None


@attrs.frozen
class Context:
    """What the guards need besides the position: the order's fixed facts, ``now``, and the
    event's ``TotalAmount`` (0 for gateway events)."""

    amount: int
    kind: PaymentKind
    auto_close: bool
    authorized_at: dt.datetime
    now: dt.datetime
    event_amount: int = 0


@attrs.frozen
class TransitionSpec:
    """One row of the lifecycle table: ``trigger`` from ``source`` to ``dest``, allowed by
    ``rule``, if every guard passes, with ``effect`` applied to the closed amount."""

    trigger: str
    source: Phase
    dest: Phase
    rule: str
    guards: tuple[str, ...] = ()
    effect: str = "keep"
    gateway: bool = False


_DOACTION_GUARDS = ("outside_blackout", "amount_in_range")

#: The lifecycle of docs/ecpay-api.md section 6, as data. Order matters where one trigger has
#: several rows from one source: the first row whose guards pass wins (as in transitions).
TRANSITIONS: Final[tuple[TransitionSpec, ...]] = (
    # Gateway: the card holder's authorization; UnionPay is closed at once (R8).
    TransitionSpec("authorize", UNAUTHORIZED, AUTHORIZED, "R3", ("not_unionpay",), gateway=True),
    TransitionSpec(
        "authorize", UNAUTHORIZED, CLOSED, "R8", ("is_unionpay",), "close_and_settle", True
    ),
    # Merchant: C, N from Authorized.
    TransitionSpec(
        "close",
        AUTHORIZED,
        TO_CLOSE_CAPTURE,
        "R6",
        (*_DOACTION_GUARDS, "not_unionpay", "whole_order_amount", "within_capture_window"),
        "close_all",
    ),
    TransitionSpec(
        "abandon",
        AUTHORIZED,
        ABANDONED,
        "R14",
        (*_DOACTION_GUARDS, "not_unionpay", "whole_order_amount", "before_forced_abandon"),
        "zero",
    ),
    # Merchant: E, R on a pending capture (R13: R there is partial only; R15: E restores).
    TransitionSpec(
        "cancel",
        TO_CLOSE_CAPTURE,
        AUTHORIZED,
        "R15",
        (*_DOACTION_GUARDS, "not_unionpay", "whole_order_amount"),
        "zero",
    ),
    TransitionSpec(
        "refund",
        TO_CLOSE_CAPTURE,
        TO_CLOSE_CAPTURE,
        "R13",
        (*_DOACTION_GUARDS, "refund_kind_allows", "within_captured", "partial_only"),
        "subtract",
    ),
    # Merchant: E, R on a pending refund; R on a closed order (R10 caps every R).
    TransitionSpec(
        "cancel",
        TO_CLOSE_REFUND,
        CLOSED,
        "R15",
        (*_DOACTION_GUARDS, "not_unionpay", "whole_order_amount", "settled_amount_known"),
        "restore",
    ),
    TransitionSpec(
        "refund",
        TO_CLOSE_REFUND,
        TO_CLOSE_REFUND,
        "R10",
        (*_DOACTION_GUARDS, "refund_kind_allows", "within_captured"),
        "subtract",
    ),
    TransitionSpec(
        "refund",
        CLOSED,
        TO_CLOSE_REFUND,
        "R10",
        (*_DOACTION_GUARDS, "refund_kind_allows", "within_captured"),
        "subtract",
    ),
    # Gateway: the 20:15 batch (R5). With auto-close on it first closes every Authorized order.
    TransitionSpec("batch", AUTHORIZED, CLOSED, "R5", ("auto_close_on",), "close_and_settle", True),
    TransitionSpec("batch", TO_CLOSE_CAPTURE, CLOSED, "R5", ("something_left",), "settle", True),
    TransitionSpec("batch", TO_CLOSE_REFUND, CLOSED, "R5", ("something_left",), "settle", True),
    TransitionSpec("batch", TO_CLOSE_REFUND, REFUNDED, "R5", ("nothing_left",), "settle", True),
    # Gateway: R7, an unclosed order is abandoned after day 90 with auto-close off.
    TransitionSpec(
        "expire",
        AUTHORIZED,
        ABANDONED,
        "R7",
        ("auto_close_off", "past_forced_abandon"),
        "zero",
        True,
    ),
    # Gateway: bank or batch trouble (batch failure, chargeback): nothing the library may do (R3).
    *(
        TransitionSpec("bank_event", source, UNSETTLED, "R3", (), "keep", True)
        for source in (TO_CLOSE_CAPTURE, TO_CLOSE_REFUND, CLOSED)
    ),
)


class Facts(Protocol):
    """The order's fixed facts the guards read: an :class:`OrderSnapshot` or a :class:`Context`."""

    @property
    def amount(self) -> int: ...
    @property
    def kind(self) -> PaymentKind: ...
    @property
    def auto_close(self) -> bool: ...
    @property
    def authorized_at(self) -> dt.datetime: ...


#: A guard reads the position, the order's facts, ``now`` and the event's TotalAmount; it returns
#: the refusal, or None when the row may be taken.
Guard = Callable[[Position, Facts, dt.datetime, int], RuleViolation | None]

_FULL_ONLY: Final = frozenset(kind for kind in PaymentKind if kind.full_refund_only)
# Read once: on Python 3.11 PaymentKind.UNIONPAY goes through EnumType.__getattr__ at each use.
_UNIONPAY: Final = PaymentKind.UNIONPAY


def _outside_blackout(_p: Position, o: Facts, now: dt.datetime, _a: int) -> RuleViolation | None:
    if o.auto_close and _rules.in_blackout(now, True):
        return RuleViolation(
            "R5",
            "ECPay runs its daily close at 20:15 Taipei; actions are not allowed until 20:30",
            retry_at=_rules.blackout_retry_at(now),
        )
    return None


def _amount_in_range(_p: Position, o: Facts, _now: dt.datetime, a: int) -> RuleViolation | None:
    if not 0 < a <= o.amount:
        return RuleViolation(
            "R19",
            f"the amount must be a positive whole TWD no larger than the order's {o.amount}",
        )
    return None


def _whole_order_amount(_p: Position, o: Facts, _now: dt.datetime, a: int) -> RuleViolation | None:
    if a != o.amount:
        return RuleViolation(
            "R14",
            f"this action always covers the whole order ({o.amount} TWD), never part of it",
        )
    return None


def _within_capture_window(
    _p: Position, o: Facts, now: dt.datetime, _a: int
) -> RuleViolation | None:
    if not _rules.within_capture_window(o.authorized_at, now, o.auto_close):
        return RuleViolation(
            "R6",
            "the 21 days to close this order have passed; ECPay's support must close it "
            "(error_overDate)",
        )
    return None


def _before_forced_abandon(
    _p: Position, o: Facts, now: dt.datetime, _a: int
) -> RuleViolation | None:
    if not o.auto_close and now > _rules.forced_abandon_at(o.authorized_at):
        return RuleViolation(
            "R7",
            "ECPay abandons orders left unclosed for 90 days; query the order, it is already "
            "released",
        )
    return None


def _refund_kind_allows(p: Position, o: Facts, _now: dt.datetime, a: int) -> RuleViolation | None:
    if a != p.closed_amount and o.kind in _FULL_ONLY:
        rule, what = (
            ("R11", "instalment") if o.kind is PaymentKind.INSTALLMENT else ("R12", "bonus-point")
        )
        return RuleViolation(rule, f"{what} orders can only be refunded in full")
    return None


def _within_captured(p: Position, _o: Facts, _now: dt.datetime, a: int) -> RuleViolation | None:
    if a > p.closed_amount:
        return RuleViolation(
            "R10",
            f"a refund of {a} TWD is more than the {p.closed_amount} TWD still captured",
        )
    return None


def _partial_only(p: Position, _o: Facts, _now: dt.datetime, a: int) -> RuleViolation | None:
    if a >= p.closed_amount:
        return RuleViolation(
            "R13",
            "before the daily batch a full refund is a cancel (E) then an abandon (N), not R",
        )
    return None


def _settled_amount_known(
    p: Position, _o: Facts, _now: dt.datetime, _a: int
) -> RuleViolation | None:
    if p.settled_amount is None:
        return RuleViolation(
            "R15",
            "cancelling a pending refund restores the last settled amount, which this "
            "snapshot does not carry",
        )
    return None


def _predicate(test: Callable[[Position, Facts, dt.datetime], bool], rule: str, why: str) -> Guard:
    def guard(pos: Position, order: Facts, now: dt.datetime, _a: int) -> RuleViolation | None:
        return None if test(pos, order, now) else RuleViolation(rule, why)

    return guard


GUARDS: Final[Mapping[str, Guard]] = {
    "outside_blackout": _outside_blackout,
    "amount_in_range": _amount_in_range,
    "whole_order_amount": _whole_order_amount,
    "within_capture_window": _within_capture_window,
    "before_forced_abandon": _before_forced_abandon,
    "refund_kind_allows": _refund_kind_allows,
    "within_captured": _within_captured,
    "partial_only": _partial_only,
    "settled_amount_known": _settled_amount_known,
    "not_unionpay": _predicate(
        lambda _p, o, _n: o.kind is not _UNIONPAY,
        "R8",
        "UnionPay orders are closed at authorization; only refunds (R) apply to them",
    ),
    "is_unionpay": _predicate(
        lambda _p, o, _n: o.kind is _UNIONPAY, "R8", "only UnionPay closes at once"
    ),
    "auto_close_on": _predicate(lambda _p, o, _n: o.auto_close, "R5", "auto-close is off"),
    "auto_close_off": _predicate(lambda _p, o, _n: not o.auto_close, "R7", "auto-close is on"),
    "past_forced_abandon": _predicate(
        lambda _p, o, n: n > _rules.forced_abandon_at(o.authorized_at), "R7", "before day 90"
    ),
    "something_left": _predicate(lambda p, _o, _n: p.closed_amount > 0, "R5", "nothing left"),
    "nothing_left": _predicate(lambda p, _o, _n: p.closed_amount == 0, "R5", "something left"),
}

#: An effect computes the position after a row is taken: (before, facts, TotalAmount, dest).
Effect = Callable[[Position, Facts, int, Phase], Position]

EFFECTS: Final[Mapping[str, Effect]] = {
    "keep": lambda p, _o, _a, dest: Position(dest, p.closed_amount, p.settled_amount),
    "zero": lambda p, _o, _a, dest: Position(dest, 0, p.settled_amount),
    "close_all": lambda p, o, _a, dest: Position(dest, o.amount, p.settled_amount),
    "close_and_settle": lambda _p, o, _a, dest: Position(dest, o.amount, o.amount),
    "subtract": lambda p, _o, a, dest: Position(dest, p.closed_amount - a, p.settled_amount),
    "restore": lambda p, _o, _a, dest: Position(dest, p.settled_amount or 0, p.settled_amount),
    "settle": lambda p, _o, _a, dest: Position(dest, p.closed_amount, p.closed_amount),
}


# --- the compiled table: the planner's hot path -------------------------------------------------


@attrs.frozen
class _Compiled:
    dest: Phase
    rule: str
    guards: tuple[Guard, ...]
    effect: Effect


def _no_transition(pos: Position, trigger: str, order: Facts) -> RuleViolation:
    action = next((a for a, t in DO_ACTION_TRIGGERS.items() if t == trigger), None)
    if action is not None and not _rules.action_applies_to_kind(action.value, order.kind):
        return RuleViolation(
            "R8", f"UnionPay orders are closed at authorization; {action} does not apply"
        )
    what = f"{action.value} ({trigger})" if action is not None else trigger
    return RuleViolation(
        "R9", f"{what} is not possible for an order that is {pos.state.replace('_', ' ')}"
    )


def step(
    pos: Position, trigger: str, order: Facts, now: dt.datetime, amount: int
) -> tuple[Position, str]:
    """Apply ``trigger`` with TotalAmount ``amount`` at ``now`` to an order at ``pos``.

    Returns the new position and the rule of the row taken; raises the first failed guard's
    :class:`RuleViolation` (R-numbered) when no row applies. ``order`` is anything with the
    order's ``amount``, ``kind``, ``auto_close`` and ``authorized_at`` (a snapshot will do).
    """
    rows = _TABLE.get((pos.state, trigger))
    if rows is None:
        raise _no_transition(pos, trigger, order)
    first: RuleViolation | None = None
    for row in rows:
        # The guards run here rather than in a chained function: one call fewer per step.
        for guard in row.guards:
            refusal = guard(pos, order, now, amount)
            if refusal is not None:
                first = first or refusal
                break
        else:
            return row.effect(pos, order, amount, row.dest), row.rule
    assert first is not None  # every row had a failing guard
    raise first


def after_batch(state: State, closed_amount: int, order: Facts) -> tuple[State, int]:
    """What ECPay's daily batch makes of an order at (``state``, ``closed_amount``): the
    machine's ``batch`` rows fired on it (a pending close settles, Closed or Refunded; with
    auto-close on an authorization is closed for its whole amount, R5); unchanged where no batch
    row applies. The two flavours of TO_CLOSE settle alike, so either stands for TO_CLOSE here
    (the one ``closed_amount`` suggests); ``order.authorized_at`` serves as the rows' ``now``."""
    name = _NAME_OF[state, closed_amount == 0]
    try:
        after, _ = step(Position(name, closed_amount, None), "batch", order, order.authorized_at, 0)
    except RuleViolation:
        return state, closed_amount
    return STATE_OF[after.state], after.closed_amount


def fire(pos: Position, trigger: str, ctx: Context) -> tuple[Position, str]:
    """:func:`step` with the facts, ``now`` and TotalAmount carried by one :class:`Context`."""
    return step(pos, trigger, ctx, ctx.now, ctx.event_amount)


# --- the shared transitions Machine ---------------------------------------------------------------


class _RuledTransition(Transition):
    """A transition that also carries the rule (R-number) that allows it."""

    def __init__(self, *args: Any, rule: str = "", effect: str = "keep", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.effect = effect


class _LifecycleMachine(Machine):
    transition_cls = _RuledTransition


class _Holder:
    """The one private model the shared machine drives; loaded per call under ``_LOCK``."""

    state: str

    def __init__(self) -> None:
        self.position = Position(Phase.UNAUTHORIZED, 0, None)
        self.context: Context | None = None
        self.refusal: RuleViolation | None = None


def _machine_guard(name: str) -> Callable[[EventData], bool]:
    guard = GUARDS[name]

    def condition(event: EventData) -> bool:  # the machine's own condition, named for compiling
        holder = cast(_Holder, event.model)
        ctx = holder.context
        assert ctx is not None
        refusal = guard(holder.position, ctx, ctx.now, ctx.event_amount)
        if refusal is not None and holder.refusal is None:
            holder.refusal = refusal
        return refusal is None

    condition.guard = name  # type: ignore[attr-defined]  # read back by _compile
    return condition


def _machine_effect(event: EventData) -> None:
    holder = cast(_Holder, event.model)
    transition = event.transition
    assert holder.context is not None
    assert isinstance(transition, _RuledTransition)
    assert transition.dest is not None
    ctx = holder.context
    holder.position = EFFECTS[transition.effect](
        holder.position, ctx, ctx.event_amount, Phase(transition.dest)
    )


_HOLDER: Final = _Holder()
_LOCK: Final = threading.Lock()
MACHINE: Final = _LifecycleMachine(
    model=_HOLDER,
    states=[phase.value for phase in Phase],  # plain str: transitions renames Enum states
    initial=Phase.UNAUTHORIZED.value,
    auto_transitions=False,
    send_event=True,
    ignore_invalid_triggers=False,
)
for _spec in TRANSITIONS:
    MACHINE.add_transition(
        _spec.trigger,
        _spec.source.value,
        _spec.dest.value,
        conditions=[_machine_guard(g) for g in _spec.guards],
        after=_machine_effect,
        rule=_spec.rule,
        effect=_spec.effect,
    )
del _spec


def _compile() -> dict[tuple[Phase, str], tuple[_Compiled, ...]]:
    """The planner's fast table, compiled from the machine's own transitions: per (source,
    trigger), each transition in the machine's order, its conditions' guards in order, its rule
    and its effect. The machine is the single source; :data:`TRANSITIONS`
    only declares what it is built from."""
    table: dict[tuple[Phase, str], tuple[_Compiled, ...]] = {}
    for trigger, event in MACHINE.events.items():
        for source, transitions in event.transitions.items():
            rows = []
            for transition in transitions:
                assert isinstance(transition, _RuledTransition)
                assert transition.dest is not None
                guards = tuple(
                    GUARDS[getattr(condition.func, "guard")]  # noqa: B009 - set by _machine_guard
                    for condition in transition.conditions
                )
                rows.append(
                    _Compiled(
                        Phase(transition.dest),
                        transition.rule,
                        guards,
                        EFFECTS[transition.effect],
                    )
                )
            table[Phase(source), trigger] = tuple(rows)
    return table


_TABLE: Final = _compile()


def fire_via_machine(pos: Position, trigger: str, ctx: Context) -> tuple[Position, str]:
    """The same as :func:`fire`, through the shared ``transitions`` machine (slow; for tests).

    The two must always agree; ``tests/core/test_lifecycle.py`` checks it.
    """
    with _LOCK:
        MACHINE.set_state(pos.state.value, model=_HOLDER)
        _HOLDER.position = pos
        _HOLDER.context = ctx
        _HOLDER.refusal = None
        event = MACHINE.events.get(trigger)
        if event is None or pos.state not in event.transitions:
            raise _no_transition(pos, trigger, ctx)
        moved = _HOLDER.trigger(trigger)  # type: ignore[attr-defined]
        if not moved:
            assert _HOLDER.refusal is not None
            raise _HOLDER.refusal
        taken = [
            t
            for t in event.transitions[pos.state]
            if isinstance(t, _RuledTransition) and t.dest == _HOLDER.state
        ]
        return _HOLDER.position, taken[0].rule


_NAME_OF: Final[Mapping[tuple[State, bool], Phase]] = {
    (state, settled): (
        (TO_CLOSE_REFUND if settled else TO_CLOSE_CAPTURE)
        if state is State.TO_CLOSE
        else Phase(state.value)
    )
    for state in State
    for settled in (False, True)
}
_SETTLED_IS_KNOWN: Final = frozenset({State.CLOSED, State.REFUNDED})


def position_of(snapshot: OrderSnapshot) -> Position:
    """Where a snapshot stands in the machine (R9 tells the two TO_CLOSE flavours apart)."""
    state = snapshot.state
    closed = snapshot.closed_amount
    return Position(
        _NAME_OF[state, snapshot.capture_settled],
        closed,
        closed if state in _SETTLED_IS_KNOWN else None,
    )


def context_of(snapshot: OrderSnapshot, now: dt.datetime, event_amount: int = 0) -> Context:
    """The guards' context for ``snapshot`` at ``now`` with an event's ``TotalAmount``."""
    return Context(
        snapshot.amount,
        snapshot.kind,
        snapshot.auto_close,
        snapshot.authorized_at,
        now,
        event_amount,
    )


SETTLED_AFTER: Final[Mapping[Phase, bool]] = {
    TO_CLOSE_REFUND: True,
    CLOSED: True,
    REFUNDED: True,
    AUTHORIZED: False,
    TO_CLOSE_CAPTURE: False,
    UNAUTHORIZED: False,
    ABANDONED: False,
}


def settled_after(machine_state: Phase, before: bool) -> bool:
    """Whether a capture has settled once the order is in ``machine_state`` (``before``: it had)."""
    return SETTLED_AFTER.get(machine_state, before)
