"""The engine: claim, plan, attempt and resolve money movements without moving money twice.

No I/O of its own (style habit 3). Every decision both clients share lives here as *flows*:
generators that yield *effects*, a :class:`~._protocol.WireRequest` (sent back the reply's
status and bytes, or the httpx exception thrown in) or a :class:`JournalCall` (sent back its
result, or the journal's error thrown in). The shells (``_client.py``) keep the HTTP
configuration, carry out the effects (awaiting an asynchronous journal's calls) and hold the
journal's order lock around the flows. A cancellation or interrupt is thrown in too, so a flow
still records what it must on the way out.

A money-moving call meets, in order (docs/ecpay-api.md section 9):

1. Its idempotency identity (key and canonical request) is fixed before anything is sent.
2. R23, one owner per operation: :meth:`Engine.open` claims the key in the journal. A recorded
   success replays (nothing sent); another live owner gives :class:`OperationInProgress`; a lapsed
   owner's record is taken over.
3. Under the order's lock (the journal's :class:`~._locks.OrderLocks`): the operation's own open
   attempt is resolved first by R22; another operation's open attempt refuses with
   :class:`OrderLocked`.
4. Query first (R4), plan (docs/ecpay-api.md section 8), then per step: record ``SENDING`` (with
   its fence), read the order's other operations again (:meth:`Engine._recheck`: nothing leaves
   if another has a step in flight or recorded one since the plan, for a store can lose the
   order's lock under a live holder), send.
   R21: an intact accepted reply is proof; the step is done and no query overrules it. A step
   after it is planned from a fresh query.
5. R22: a lost or doubtful reply is settled by a query: reached -> done; anything else ->
   :class:`OutcomeUnknown` until the fence (``Timestamp + 600 s + margin + measured skew``, and
   the first batch after it where the step's effect may only show then). Only a query taken
   after the fence proves "not done"; then the same key sends the step once more.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Final, TypeVar, cast

import attrs
import httpx

from . import _planner, _rules
from ._exceptions import (
    ClockOutOfSync,
    CodecError,
    ConfigurationError,
    EcpayError,
    EnvelopeRejected,
    GatewayRefused,
    InvalidArgument,
    InvalidArgumentType,
    JournalError,
    OperationInProgress,
    OrderChanged,
    OrderLocked,
    OutcomeUnknown,
    PlanInterrupted,
    ProtocolError,
    RateLimited,
    RuleViolation,
    ServiceNotEnabled,
    TransportError,
    WrongCredentials,
)
from ._journal import (
    AsyncJournal,
    AttemptRecord,
    AttemptStatus,
    Claim,
    ClaimStatus,
    InMemoryJournal,
    Journal,
    OperationRecord,
    OperationStatus,
)
from ._locks import ProcessOrderLocks
from ._models import (
    Action,
    Intent,
    OrderSnapshot,
    PaymentKind,
    Plan,
    State,
    Step,
    check_amount,
    check_aware,
    check_order_number,
)
from ._outcome import (
    Outcome,
    Reconciliation,
    Resolution,
    StepResult,
    SweepReport,
    Verdict,
    judge,
)
from ._protocol import (
    Credentials,
    DoActionReply,
    WireRequest,
    build_cashier_query,
    build_credit_detail,
    build_do_action,
    is_production,
    is_stage,
    open_reply_stamped,
    parse_cashier_query,
    parse_credit_detail,
    parse_do_action,
    snapshot_from,
)

__all__ = [
    "DEFAULT_FENCE_MARGIN",
    "DEFAULT_LEASE",
    "DEFAULT_RATE_LIMIT_PAUSE",
    "Call",
    "Effect",
    "Engine",
    "Flow",
    "JournalCall",
    "Reply",
    "Run",
    "Sweep",
]

_log = logging.getLogger("ecpay_lifecycle")

#: R22: added to ECPay's 10-minute Timestamp window before "unchanged" proves "not done". It
#: covers clock skew not yet measured and ECPay's own processing time.
DEFAULT_FENCE_MARGIN: Final = dt.timedelta(seconds=300)
#: R23: how long an owner's claim on an operation lasts without a save. Each save renews it; it
#: only has to outlast one HTTP call, and a dead owner's operation is taken over after it.
DEFAULT_LEASE: Final = dt.timedelta(minutes=2)
#: After ECPay's HTTP 403 ("wait 30 minutes"), how long a client sends nothing more to ECPay.
DEFAULT_RATE_LIMIT_PAUSE: Final = dt.timedelta(minutes=30)

_KEY_MAX: Final = 255
#: The sweeper's back-off for an attempt that stays unknown after its fence: a person must look.
_BACKOFF: Final = (
    dt.timedelta(minutes=1),
    dt.timedelta(minutes=5),
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
)
_WINDOW: Final = _rules.TIMESTAMP_TOLERANCE

# Failures after which the request provably never reached ECPay: no connection was made.
_NOT_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)
# TransCodes ECPay answers before processing anything: the attempt is provably not done.
_REJECTED_UNPROCESSED: Final = (WrongCredentials, ClockOutOfSync, ServiceNotEnabled)

_T = TypeVar("_T")
_R = TypeVar("_R")
_owners = itertools.count(1)


@attrs.frozen
class Reply:
    """What a shell hands back to a flow: the HTTP status and the body bytes."""

    status_code: int
    content: bytes


@attrs.frozen
class JournalCall:
    """A journal call a flow asks its shell to make: ``method`` of the journal with ``args``.

    The engine makes no journal call itself, as it makes no HTTP request itself: a shell runs
    each one (awaiting it when the journal is asynchronous, like :class:`~ecpay_lifecycle.
    AsyncPostgresJournal`) and sends the result back, or throws the journal's error in.
    """

    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)


#: What a flow yields: a request to POST, or a journal call to make.
Effect = WireRequest | JournalCall
#: A flow yields effects, is sent their results (a :class:`Reply` for a request; httpx errors
#: and journal errors are thrown in) and returns a value.
Flow = Generator[Effect, Any, _T]


def journal_call(result: type[_R], method: str, *args: Any, **kwargs: Any) -> Flow[_R]:
    """Yield one journal call and return its result, typed as ``result``."""
    value = yield JournalCall(method, args, kwargs)
    return cast(_R, value)


@attrs.frozen
class Call:
    """One money-moving call with its idempotency identity fixed (style habit 8).

    ``trade_no`` and ``kind`` are what the caller already knows of the order (they save the
    Cashier query); they are hints, not part of the request's identity.
    """

    intent: Intent
    merchant_trade_no: str
    amount: int | None
    capture_first: bool
    key: str
    caller_key: bool
    trade_no: str | None = None
    kind: PaymentKind | None = None

    @property
    def request(self) -> str:
        """Canonical text of the parameters: the same key with another request is refused."""
        amount = "all" if self.amount is None else str(self.amount)
        if self.intent is Intent.REFUND:
            return f"refund amount={amount} capture_first={self.capture_first}"
        return str(self.intent)


class Run:
    """The journal record of an operation this worker owns (or resolves); every change is one
    conditional save (R23), which also renews the owner's lease."""

    def __init__(
        self,
        record: OperationRecord,
        *,
        owner: str | None,
        now: Callable[[], dt.datetime],
        lease: dt.timedelta,
    ) -> None:
        self._now = now
        self._lease = lease
        self.owner = owner
        self.record = record

    def save(self, **changes: Any) -> Flow[None]:
        now = self._now()
        if self.owner is not None and "owner" not in changes:
            changes["lease_until"] = now + self._lease
        record = attrs.evolve(self.record, updated_at=now, **changes)
        self.record = yield from journal_call(OperationRecord, "save", record)

    def stage(self, **changes: Any) -> None:
        """Change the record here and write it with the next save: for facts that need not be
        durable on their own (the plan is recomputed from a fresh query if the worker dies
        before its first attempt is recorded). One fsync fewer per operation."""
        self.record = attrs.evolve(self.record, **changes)

    def sending(self, attempt: AttemptRecord) -> Flow[None]:
        yield from self.save(
            attempts=(*self.record.attempts, attempt), status=OperationStatus.RUNNING
        )

    def note(self, text: str) -> Flow[None]:
        yield from self.save(notes=(*self.record.notes, text))

    def resolve(
        self,
        status: AttemptStatus,
        *,
        observed: OrderSnapshot | None = None,
        rtn_code: int | str | None = None,
        rtn_msg: str = "",
        note: str = "",
    ) -> Flow[None]:
        """Record how the last attempt ended, and with it the operation's status, in one save."""
        last = attrs.evolve(
            self.record.attempts[-1], status=status, rtn_code=rtn_code, rtn_msg=rtn_msg, note=note
        )
        attempts = (*self.record.attempts[:-1], last)
        plan = self.record.plan
        final_step = plan is None or last.index == len(plan.steps) - 1
        if status is AttemptStatus.DONE and final_step:
            # Done: nothing more is sent, so ownership ends in the same write (R23).
            ownership = {"owner": None, "lease_until": None} if self.owner is not None else {}
            yield from self.save(
                attempts=attempts, status=OperationStatus.SUCCEEDED, final=observed, **ownership
            )
        elif status is AttemptStatus.DONE:
            yield from self.save(attempts=attempts, status=OperationStatus.RUNNING)
        elif status is AttemptStatus.UNKNOWN:
            yield from self.save(attempts=attempts, status=OperationStatus.UNKNOWN)
        else:
            yield from self.save(attempts=attempts, status=OperationStatus.STOPPED)

    def release(self) -> Flow[None]:
        """Give up ownership: an open attempt leaves the operation UNKNOWN (it keeps the order
        locked), one that ended early STOPPED (the same key resumes it)."""
        record = self.record
        if self.owner is None or record.owner != self.owner:
            return None
        status = record.status
        if record.open_attempt is not None:
            status = OperationStatus.UNKNOWN
        elif status is OperationStatus.RUNNING:
            status = OperationStatus.STOPPED
        yield from self.save(status=status, owner=None, lease_until=None)


def _system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _seconds(value: object, field: str) -> dt.timedelta:
    """A non-negative duration given as seconds or a timedelta."""
    if isinstance(value, dt.timedelta):
        duration = value
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(
            f"{field} must be seconds (a number) or a timedelta, not {type(value).__name__}"
        )
    else:
        if not math.isfinite(value):
            raise InvalidArgument(f"{field} must be a finite number of seconds")
        duration = dt.timedelta(seconds=value)
    if duration < dt.timedelta(0):
        raise InvalidArgument(f"{field} must not be negative")
    return duration


def check_key(key: object) -> str | None:
    """An idempotency key: 1-255 printable characters, or None."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise InvalidArgumentType(f"idempotency_key must be a str, not {type(key).__name__}")
    if not 1 <= len(key) <= _KEY_MAX or not key.isprintable():
        raise InvalidArgument(
            f"idempotency_key must be 1-{_KEY_MAX} printable characters, got {key!r}"
        )
    return key


def check_kind(kind: object) -> PaymentKind | None:
    """A payment kind given as the enum or its value, or None."""
    if kind is None or isinstance(kind, PaymentKind):
        return kind
    if isinstance(kind, str):
        try:
            return PaymentKind(kind)
        except ValueError as exc:
            raise InvalidArgument(
                f"kind must be one of {', '.join(k.value for k in PaymentKind)}, got {kind!r}"
            ) from exc
    raise InvalidArgumentType(f"kind must be a PaymentKind, not {type(kind).__name__}")


def check_action(action: object) -> Action:
    """A DoAction letter given as the enum or C/R/E/N."""
    if isinstance(action, Action):
        return action
    if isinstance(action, str):
        try:
            return Action(action)
        except ValueError as exc:
            raise InvalidArgument(f"action must be one of C, R, E, N, got {action!r}") from exc
    raise InvalidArgumentType(f"action must be an Action, not {type(action).__name__}")


def _shown(snapshot: OrderSnapshot | None) -> str:
    if snapshot is None:
        return "unknown"
    return f"{snapshot.state}, closed {snapshot.closed_amount} TWD"


def _heard(lost: BaseException | None) -> str:
    """What the client heard back from a DoAction, for notes and messages."""
    return "ECPay accepted it" if lost is None else f"the reply was lost ({type(lost).__name__})"


def _code(value: object) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


def _after(before: OrderSnapshot, step: Step) -> OrderSnapshot:
    """The order as an accepted ``step`` leaves it (R21: the reply is proof of this)."""
    return attrs.evolve(
        before,
        state=step.state_after,
        closed_amount=step.closed_amount_after,
        capture_settled=step.capture_settled_after,
    )


def outcome_of(record: OperationRecord, *, replayed: bool) -> Outcome:
    """The :class:`Outcome` a succeeded operation's record describes."""
    if record.intent is None or record.plan is None or record.before is None:
        raise InvalidArgument(f"journal record {record.key!r} has no plan: it is not an outcome")
    if record.final is None:
        raise InvalidArgument(f"journal record {record.key!r} has no final snapshot")
    done = tuple(
        StepResult(
            action=attempt.action,
            amount=attempt.amount,
            rtn_code=attempt.rtn_code,
            rtn_msg=attempt.rtn_msg,
            attempts=attempt.attempt,
            recovered=attempt.rtn_code is None,
        )
        for attempt in record.attempts
        if attempt.status is AttemptStatus.DONE
    )
    return Outcome(
        intent=record.intent,
        merchant_trade_no=record.merchant_trade_no,
        plan=record.plan,
        steps_done=done,
        before=record.before,
        final=record.final,
        idempotency_key=record.key if record.caller_key else None,
        replayed=replayed,
        disagreements=record.notes,
    )


def _note_progress(exc: BaseException, record: OperationRecord) -> None:
    """Tell the caller, on the error itself, which steps already took effect before it."""
    done = [a for a in record.attempts if a.status is AttemptStatus.DONE]
    if done:
        steps = ", ".join(f"{a.action.value}({a.amount})" for a in done)
        exc.add_note(f"already done under this operation: {steps}; query the order before acting")


class Engine:
    """Every decision the two clients share (docs/ecpay-api.md section 9); no I/O of its own.

    ``fence_margin`` (seconds or a timedelta, default 300 s) is added to ECPay's 10-minute
    Timestamp window before a query showing no change proves a lost DoAction not done (R22);
    the clock skew measured from replies widens it further. ``refund_visible_at_once`` says
    whether this merchant's ``ClsAmt`` drops as soon as a refund on a pending close is accepted;
    the cautious default (False) waits for the first batch after the fence. ``lease`` is how
    long an owner holds an operation without saving (R23).
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str,
        clock: Callable[[], dt.datetime] | None,
        journal: Journal | AsyncJournal | None,
        fence_margin: float | dt.timedelta = DEFAULT_FENCE_MARGIN,
        lease: float | dt.timedelta = DEFAULT_LEASE,
        refund_visible_at_once: bool = False,
        allow_stage_do_action: bool = False,
        rate_limit_pause: float | dt.timedelta = DEFAULT_RATE_LIMIT_PAUSE,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise InvalidArgumentType(
                f"credentials must be Credentials, not {type(credentials).__name__}"
            )
        if clock is not None and not callable(clock):
            raise InvalidArgumentType("clock must be a callable returning an aware datetime")
        if journal is not None and not isinstance(journal, Journal):
            raise InvalidArgumentType(
                f"journal must implement the Journal protocol (with its locks), not "
                f"{type(journal).__name__}"
            )
        if not isinstance(refund_visible_at_once, bool):
            raise InvalidArgumentType(
                "refund_visible_at_once must be a bool, not "
                f"{type(refund_visible_at_once).__name__}"
            )
        self.fence_margin = _seconds(fence_margin, "fence_margin")
        self.lease = _seconds(lease, "lease")
        self.rate_limit_pause = _seconds(rate_limit_pause, "rate_limit_pause")
        #: Until when this client sends nothing to ECPay, after an HTTP 403.
        self.quiet_until: dt.datetime | None = None
        if not self.lease:
            raise InvalidArgument("lease must be longer than zero")
        if not isinstance(allow_stage_do_action, bool):
            raise InvalidArgumentType(
                f"allow_stage_do_action must be a bool, not {type(allow_stage_do_action).__name__}"
            )
        self.refund_visible_at_once = refund_visible_at_once
        self.allow_stage_do_action = allow_stage_do_action
        self.credentials = credentials
        self.base_url = base_url
        self.stage = is_stage(base_url)
        self._clock = clock or _system_clock
        self.journal: Journal | AsyncJournal = InMemoryJournal() if journal is None else journal
        if isinstance(self.journal, InMemoryJournal) and is_production(base_url):
            _log.warning(
                "ecpay-lifecycle: this client talks to ECPay's production host with the in-memory "
                "journal: a crash or restart loses the record of an attempt in flight, and a "
                "retry of its idempotency key could then refund twice. Give the client a durable "
                "journal shared by every worker (see docs/client.md)",
                extra={"ecpay_merchant_id": credentials.merchant_id},
            )
        self._owner_prefix = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        #: The largest |local clock - ECPay's RpHeader.Timestamp| seen, in seconds (R22).
        self.skew = 0.0
        #: Whether the journal's order lock stays with its holder until it lets go (see
        #: _recheck, which it makes redundant).
        self._lock_holds = _lock_holds(self.journal)

    # -- small facts ---------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        return check_aware(self._clock(), field="clock()")

    def _new_owner(self) -> str:
        return f"{self._owner_prefix}/{next(_owners)}"

    def _measure(self, stamp: int | None) -> float | None:
        """Widen the measured skew by a reply's ``RpHeader.Timestamp``; return this reply's."""
        if stamp is None:
            return None
        offset = self.now().timestamp() - stamp
        self.skew = max(self.skew, abs(offset))
        return offset

    def fence(self, sent_at: dt.datetime, action: Action, before: OrderSnapshot) -> dt.datetime:
        """R22: from when a query showing no change proves an attempt sent at ``sent_at`` not
        done: ECPay's 10-minute window, the margin and the measured skew; and where the step's
        effect may only show at the batch (a refund on a pending close, unless
        ``refund_visible_at_once``), the end of the first batch after that."""
        fence = sent_at + _WINDOW + self.fence_margin + dt.timedelta(seconds=self.skew)
        if (
            action is Action.REFUND
            and before.state is State.TO_CLOSE
            and not self.refund_visible_at_once
        ):
            return _rules.first_batch_end_after(fence)
        return fence

    def _check_quiet(self, merchant_trade_no: str | None) -> None:
        """Refuse, before anything is recorded or sent, while ECPay's 403 is remembered."""
        until = self.quiet_until
        if until is not None and self.now() < until:
            raise RateLimited(
                f"ECPay answered HTTP 403 (calls came too fast); this client sends nothing to it "
                f"until {until.isoformat()} (rate_limit_pause), so nothing was sent",
                merchant_trade_no=merchant_trade_no,
                retry_at=until,
            )

    def _remember(self, error: RateLimited) -> None:
        """ECPay answered 403: send nothing more to it for ``rate_limit_pause``."""
        if self.rate_limit_pause:
            self.quiet_until = self.now() + self.rate_limit_pause
            error.retry_at = self.quiet_until
            _log.error(
                "ECPay answered HTTP 403: nothing is sent to it until %s",
                self.quiet_until.isoformat(),
                extra={
                    "ecpay_merchant_id": self.credentials.merchant_id,
                    "ecpay_outcome": "rate_limited",
                    "ecpay_retry_at": self.quiet_until.isoformat(),
                },
            )

    def order_key(self, merchant_trade_no: str) -> tuple[str, str]:
        return self.credentials.merchant_id, merchant_trade_no

    # -- journal reads (effects the shells carry out) -------------------------------------------

    def _for_order(self, merchant_trade_no: str) -> Flow[Sequence[OperationRecord]]:
        return (
            yield from journal_call(
                list, "for_order", self.credentials.merchant_id, merchant_trade_no
            )
        )

    def _get(self, key: str) -> Flow[OperationRecord | None]:
        record = yield from journal_call(OperationRecord, "get", self.credentials.merchant_id, key)
        return record

    def _open_operations(self, limit: int) -> Flow[Sequence[OperationRecord]]:
        return (
            yield from journal_call(
                list, "open_operations", self.credentials.merchant_id, limit=limit
            )
        )

    # -- checking calls (before any lock or I/O) -----------------------------------------------

    def refuse_stage(self, merchant_trade_no: str) -> None:
        """DoAction against ECPay's stage host is refused before anything is sent, unless the
        shop opted in (docs/ecpay-api.md section 1): ECPay's page says stage cannot run it,
        though stage answers it for its own test authorizations."""
        if self.stage and not self.allow_stage_do_action:
            raise ConfigurationError(
                f"DoAction against ECPay's stage host {self.base_url} is refused by default: "
                "ECPay documents no DoAction there, and stage answers it only for its own test "
                "authorizations. Test money movement against ecpay_lifecycle.emulator, or pass "
                "allow_stage_do_action=True to the client for one real check on stage",
                merchant_trade_no=merchant_trade_no,
            )

    def money_call(
        self,
        intent: Intent,
        merchant_trade_no: object,
        *,
        amount: object = None,
        capture_first: object = False,
        idempotency_key: object = None,
        trade_no: object = None,
        kind: object = None,
    ) -> Call:
        """Check a capture/refund/abandon call now, before anything is recorded or sent."""
        order = check_order_number(merchant_trade_no)
        checked = None if amount is None else check_amount(amount)
        if not isinstance(capture_first, bool):
            raise InvalidArgumentType(
                f"capture_first must be a bool, not {type(capture_first).__name__}"
            )
        key = check_key(idempotency_key)
        known = None if trade_no is None else check_order_number(trade_no, field="trade_no")
        checked_kind = check_kind(kind)
        self.refuse_stage(order)
        return Call(
            intent=intent,
            merchant_trade_no=order,
            amount=checked,
            capture_first=capture_first,
            key=key if key is not None else f"auto-{uuid.uuid4().hex}",
            caller_key=key is not None,
            trade_no=known,
            kind=checked_kind,
        )

    def query_call(
        self, merchant_trade_no: object, trade_no: object, kind: object
    ) -> Flow[OrderSnapshot]:
        """Check a query call now; return its flow."""
        order = check_order_number(merchant_trade_no)
        known = None if trade_no is None else check_order_number(trade_no, field="trade_no")
        return self.query_flow(order, known, check_kind(kind))

    def raw_call(
        self, merchant_trade_no: object, trade_no: object, action: object, amount: object
    ) -> tuple[str, str, Action, int]:
        """Check a raw DoAction call now (stage refused)."""
        order = check_order_number(merchant_trade_no)
        number = check_order_number(trade_no, field="trade_no")
        checked_action = check_action(action)
        checked_amount = check_amount(amount)
        self.refuse_stage(order)
        return order, number, checked_action, checked_amount

    def check_declare(self, declare: object) -> dict[str, Verdict]:
        """``declare`` maps an operation's key to the verdict a person established."""
        if declare is None:
            return {}
        if not isinstance(declare, Mapping):
            raise InvalidArgumentType(
                "declare must map an operation's key to 'done' or 'not_done', not "
                f"{type(declare).__name__}"
            )
        checked: dict[str, Verdict] = {}
        for key, verdict in declare.items():
            if not isinstance(key, str):
                raise InvalidArgumentType(f"declare's keys must be str, not {type(key).__name__}")
            if not isinstance(verdict, str):
                raise InvalidArgumentType(
                    f"declare[{key!r}] must be a Verdict, not {type(verdict).__name__}"
                )
            if verdict not in (Verdict.DONE, Verdict.NOT_DONE):
                raise InvalidArgument(
                    f"declare[{key!r}] must be 'done' or 'not_done', got {verdict!r}"
                )
            checked[key] = Verdict(verdict)
        return checked

    # -- ownership (R23), before the order lock ------------------------------------------------

    def open(self, call: Call) -> Flow[Run | Outcome]:
        """Claim the call's key: replay a success, refuse a running one, or own it (R23)."""
        now = self.now()
        owner = self._new_owner()
        fresh = OperationRecord(
            merchant_id=self.credentials.merchant_id,
            key=call.key,
            caller_key=call.caller_key,
            merchant_trade_no=call.merchant_trade_no,
            request=call.request,
            intent=call.intent,
            status=OperationStatus.RUNNING,
            started_at=now,
            updated_at=now,
            owner=owner,
            lease_until=now + self.lease,
        )
        return (yield from self._claimed(call, fresh, owner, now))

    def _claimed(
        self, call: Call, fresh: OperationRecord, owner: str, now: dt.datetime
    ) -> Flow[Run | Outcome]:
        claim = yield from journal_call(Claim, "claim", fresh, now=now)
        existing = claim.record
        if claim.status is ClaimStatus.CONFLICT:
            raise InvalidArgument(
                f"idempotency key {call.key!r} was used for {existing.request!r} on order "
                f"{existing.merchant_trade_no}; this call is {call.request!r}. Use a new key "
                "for a different request",
                merchant_trade_no=call.merchant_trade_no,
            )
        if claim.status is ClaimStatus.FINISHED:
            _log.info(
                "order %s: idempotency key seen before; replaying the recorded %s, sending nothing",
                call.merchant_trade_no,
                call.intent,
                extra=self._fields(call.merchant_trade_no, existing, outcome="replayed"),
            )
            return outcome_of(existing, replayed=True)
        if claim.status is ClaimStatus.BUSY:
            raise OperationInProgress(
                f"another caller is running this {call.intent} (idempotency key "
                f"{call.key!r}) now; nothing was sent. Ask again later: the same key then "
                "replays its outcome",
                merchant_trade_no=call.merchant_trade_no,
                retry_at=existing.lease_until,
                idempotency_key=call.key,
            )
        if claim.taken_over:
            _log.warning(
                "order %s: taking over operation %r from %s, whose lease lapsed",
                call.merchant_trade_no,
                call.key,
                existing.owner,
                extra=self._fields(
                    call.merchant_trade_no, existing, intent=str(call.intent), outcome="taken_over"
                ),
            )
        return Run(existing, owner=owner, now=self.now, lease=self.lease)

    def _reclaim(self, run: Run, call: Call) -> Flow[Outcome | None]:
        """Under the order lock: renew the claim (the record may have moved on while this
        worker waited for the lock). A success recorded meanwhile is replayed."""
        fresh = attrs.evolve(run.record, lease_until=self.now() + self.lease)
        claimed = yield from self._claimed(call, fresh, run.owner or self._new_owner(), self.now())
        if isinstance(claimed, Outcome):
            return claimed
        run.record = claimed.record
        return None

    # -- queries (side-effect free) ------------------------------------------------------------

    def _exchange(self, request: WireRequest) -> Flow[dict[str, Any]]:
        """Send a query and open its reply. Queries move nothing, so any failure is plain."""
        self._check_quiet(request.merchant_trade_no)
        try:
            reply = yield request
        except httpx.HTTPError as exc:
            raise TransportError(
                f"query {request.path} failed: {type(exc).__name__}: {exc}",
                merchant_trade_no=request.merchant_trade_no,
            ) from exc
        try:
            inner, stamp = open_reply_stamped(
                self.credentials, reply.status_code, reply.content, request=request
            )
        except ClockOutOfSync as exc:
            exc.skew_seconds = self._measure(_stamp_of(exc.raw))
            raise
        except RateLimited as exc:
            self._remember(exc)
            raise
        self._measure(stamp)
        return inner

    def detail_flow(
        self, merchant_trade_no: str, trade_no: str, kind: PaymentKind
    ) -> Flow[OrderSnapshot]:
        """CreditDetail/QueryTrade: the order's state and closed amount now (R4).

        See docs/ecpay-api.md section 4.
        """
        request = build_credit_detail(
            self.credentials,
            merchant_trade_no=merchant_trade_no,
            trade_no=trade_no,
            now=self.now(),
        )
        inner = yield from self._exchange(request)
        detail = parse_credit_detail(inner, request=request)
        return snapshot_from(
            detail,
            merchant_trade_no=merchant_trade_no,
            trade_no=trade_no,
            kind=kind,
            auto_close=self.credentials.auto_close,
        )

    def query_flow(
        self, merchant_trade_no: str, trade_no: str | None, kind: PaymentKind | None
    ) -> Flow[OrderSnapshot]:
        """Cashier/QueryTrade for TradeNo and kind unless both are known, then CreditDetail."""
        if trade_no is None or kind is None:
            request = build_cashier_query(
                self.credentials, merchant_trade_no=merchant_trade_no, now=self.now()
            )
            inner = yield from self._exchange(request)
            info = parse_cashier_query(inner, request=request)
            if trade_no is not None and info.trade_no != trade_no:
                raise InvalidArgument(
                    f"trade_no {trade_no!r} is not this order's: ECPay says {info.trade_no!r}",
                    merchant_trade_no=merchant_trade_no,
                )
            trade_no = info.trade_no
            kind = info.kind if kind is None else kind
        return (yield from self.detail_flow(merchant_trade_no, trade_no, kind))

    def _known(
        self,
        merchant_trade_no: str,
        trade_no: str | None,
        kind: PaymentKind | None,
        records: Sequence[OperationRecord] | None = None,
    ) -> Flow[tuple[str | None, PaymentKind | None]]:
        """TradeNo and kind as the caller gave them, else as the journal learned them before
        (so Cashier/QueryTrade runs at most once per order). ``records``: the order's records
        if the caller has read them already."""
        if trade_no is not None and kind is not None:
            return trade_no, kind
        if records is None:
            records = yield from self._for_order(merchant_trade_no)
        for record in reversed(records):
            seen = record.before
            if seen is None and record.attempts:
                seen = record.attempts[-1].before
            if seen is not None:
                if trade_no is not None and trade_no != seen.trade_no:
                    raise InvalidArgument(
                        f"trade_no {trade_no!r} is not this order's: the journal recorded "
                        f"{seen.trade_no!r} from ECPay",
                        merchant_trade_no=merchant_trade_no,
                    )
                return seen.trade_no, seen.kind if kind is None else kind
        return trade_no, kind

    # -- money movement, under the order lock --------------------------------------------------

    def _fields(
        self, merchant_trade_no: str, record: OperationRecord | None, **more: object
    ) -> dict[str, object]:
        """Structured log fields of a money movement (``extra=``), never a secret."""
        fields: dict[str, object] = {
            "ecpay_merchant_id": self.credentials.merchant_id,
            "ecpay_order": merchant_trade_no,
        }
        if record is not None:
            fields["ecpay_key"] = record.key if record.caller_key else None
        fields.update({f"ecpay_{name}": value for name, value in more.items()})
        return fields

    def _attempt_fields(
        self, merchant_trade_no: str, record: OperationRecord, attempt: AttemptRecord, outcome: str
    ) -> dict[str, object]:
        """:meth:`_fields` of one attempt and what became of it."""
        return self._fields(
            merchant_trade_no,
            record,
            action=attempt.action.value,
            amount=attempt.amount,
            attempt=attempt.attempt,
            outcome=outcome,
        )

    def unresolved(
        self,
        merchant_trade_no: str,
        *,
        but: str | None = None,
        records: Sequence[OperationRecord] | None = None,
    ) -> Flow[OperationRecord | None]:
        """The operation (other than ``but``) whose unresolved step locks the order.

        See docs/ecpay-api.md section 9.
        """
        if records is None:
            records = yield from self._for_order(merchant_trade_no)
        for record in records:
            if record.key != but and record.open_attempt is not None:
                return record
        return None

    def locked(self, merchant_trade_no: str, record: OperationRecord) -> OrderLocked:
        attempt = record.open_attempt
        step = "a step" if attempt is None else f"{attempt.action.value}({attempt.amount})"
        retry_at = None if attempt is None else attempt.resolvable_at
        when = f" after {retry_at.isoformat()}" if retry_at is not None else ""
        return OrderLocked(
            f"{step} sent at {attempt.at.isoformat() if attempt else '?'} (operation "
            f"{record.key!r}) has an unknown outcome; no money moves on this order until "
            f"reconcile() or a retry of that key resolves it{when} (R22)",
            merchant_trade_no=merchant_trade_no,
            retry_at=retry_at,
            idempotency_key=record.key,
        )

    def _plan(self, call: Call, snapshot: OrderSnapshot) -> Plan:
        return _planner.plan(
            call.intent,
            snapshot,
            call.amount,
            now=self.now(),
            capture_first=call.capture_first,
        )

    def operation_flow(self, run: Run, call: Call) -> Flow[Outcome]:
        """Resolve the key's own open attempt (R22), query (R4), plan, and carry out each step."""
        order = call.merchant_trade_no
        try:
            replay = yield from self._reclaim(run, call)
            if replay is not None:
                return replay
            # The order's records, read once and before any query: for the lock check, the
            # kind, the fresh check, and the baseline every attempt is held against before it
            # leaves (_recheck). A durable store decodes each record it reads.
            records = yield from self._for_order(order)
            current: OrderSnapshot | None = None
            attempt = run.record.open_attempt
            if attempt is not None:
                queried_at = self.now()
                observed = yield from self.detail_flow(order, attempt.trade_no, attempt.before.kind)
                verdict = yield from self._resolve(
                    run, attempt, observed, queried_at, how="a retry's query"
                )
                if verdict is Verdict.UNKNOWN:
                    raise self._unknown(run, attempt, observed, lost=None, queried=True)
                if run.record.status is OperationStatus.SUCCEEDED:
                    yield from _release(run)
                    return outcome_of(run.record, replayed=False)
                current = observed
            records = [run.record if r.key == run.record.key else r for r in records]
            blocking = yield from self.unresolved(order, but=run.record.key, records=records)
            if blocking is not None:
                raise self.locked(order, blocking)
            if current is None:
                trade_no, kind = yield from self._known(order, call.trade_no, call.kind, records)
                queried_at = self.now()
                current = yield from self.query_flow(order, trade_no, kind)
            yield from self._check_fresh(run, current, records, queried_at)
            baseline = self._baseline(run, records)
            plan = self._plan(call, current)
            run.stage(plan=plan, before=run.record.before or current, final=None)
            _log.info(
                "order %s: %s planned as %s",
                order,
                call.intent,
                plan.describe(),
                extra=self._fields(order, run.record, intent=str(call.intent), outcome="planned"),
            )
            for index, step in enumerate(plan.steps):
                current, reply = yield from self._attempt_flow(
                    run,
                    index=index,
                    action=step.action,
                    amount=step.amount,
                    step=step,
                    before=current,
                    baseline=baseline,
                )
                if reply is None and index + 1 < len(plan.steps):
                    # Settled by a query, not by ECPay's word: the rest must follow from it.
                    self._check_rest(run, call, plan, index + 1, current)
        except BaseException as exc:
            # Also on cancellation (thrown in by the shell): ownership is given up; an open
            # attempt keeps the order locked. A flow closed unfinished cannot write; its lease
            # lapses instead (R23).
            if not isinstance(exc, OperationInProgress | GeneratorExit):
                yield from _release(run)
            if isinstance(exc, EcpayError):
                _note_progress(exc, run.record)
            raise
        yield from _release(run)
        return outcome_of(run.record, replayed=False)

    @staticmethod
    def _baseline(run: Run, records: Sequence[OperationRecord]) -> dict[str, int]:
        """How many attempts each other operation of the order had recorded when the plan was
        made: what :meth:`_recheck` holds every attempt of the plan against."""
        return {r.key: len(r.attempts) for r in records if r.key != run.record.key}

    def _recheck(self, run: Run, baseline: Mapping[str, int], attempt: AttemptRecord) -> Flow[None]:
        """After the attempt is recorded and before it leaves: the order's other operations
        again (R23 across the keys of one order).

        The order's lock keeps two operations of one order from being between their plan and
        their send at once, but a store can lose a lock under a holder that still runs (a
        PostgreSQL session that ended, ``PostgresLeaseLocks``' lease that lapsed while its
        holder paused). Every worker records its attempt first (a conditional save) and reads
        the order's records after it, so of two workers racing without the lock the one that
        reads last sees the other's attempt: open (:class:`OrderLocked`), or recorded since
        the ``baseline`` its plan was made against (:class:`OrderChanged`: the plan may
        follow from a view that attempt made stale). Either way this attempt is recorded not
        done, as it never left. A lock that cannot be lost under its holder (an
        :class:`~._journal.InMemoryJournal`'s) makes this read redundant: skipped.
        """
        if self._lock_holds:
            return
        order = run.record.merchant_trade_no
        try:
            records = yield from self._for_order(order)
        except JournalError:
            with contextlib.suppress(EcpayError):
                yield from run.resolve(
                    AttemptStatus.NOT_DONE, note="not sent: the order's records could not be read"
                )
            raise
        blocking = moved = None
        for record in records:
            if record.key == run.record.key:
                continue
            if record.open_attempt is not None:
                blocking = record
                break
            if len(record.attempts) != baseline.get(record.key, 0):
                moved = moved or record
        if blocking is None and moved is None:
            return
        other = blocking or moved
        assert other is not None
        why = (
            f"operation {other.key!r} has a step in flight"
            if blocking is not None
            else f"operation {other.key!r} recorded a step since this plan was made"
        )
        label = f"{attempt.action.value}({attempt.amount})"
        _log.warning(
            "order %s: %s not sent: %s, although this worker held the order's lock (lost)",
            order,
            label,
            why,
            extra=self._attempt_fields(order, run.record, attempt, "not_done"),
        )
        yield from run.resolve(AttemptStatus.NOT_DONE, note=f"not sent: {why}")
        if blocking is not None:
            raise self.locked(order, blocking)
        raise OrderChanged(
            f"{label} was not sent: {why}, although this worker held the order's lock (the "
            "store lost it), so the plan may follow from a view that step has made stale. "
            "Nothing moved; ask again with the same idempotency key: it plans from a fresh query",
            merchant_trade_no=order,
            idempotency_key=other.key,
        )

    def _check_rest(
        self, run: Run, call: Call, plan: Plan, index: int, observed: OrderSnapshot
    ) -> None:
        """Before a later step whose predecessor was settled by a query: the rest of the plan
        must follow from what that query showed (R4), else it is not sent."""
        try:
            rest = self._plan(call, observed).steps
        except RuleViolation:
            rest = ()
        planned = plan.steps[index:]
        if [(s.action, s.amount) for s in rest] == [(s.action, s.amount) for s in planned]:
            return
        remaining = " -> ".join(s.describe() for s in planned)
        raise PlanInterrupted(
            f"{plan.steps[index - 1].describe()} was done, but the query shows "
            f"{_shown(observed)}, from which the rest of the plan ({remaining}) does not follow; "
            "it was not sent. Ask again with the same idempotency key later: it continues from "
            "a fresh query",
            merchant_trade_no=call.merchant_trade_no,
            observed=observed,
            idempotency_key=run.record.key,
        )

    def _check_fresh(
        self,
        run: Run,
        observed: OrderSnapshot,
        records: Sequence[OperationRecord],
        queried_at: dt.datetime,
    ) -> Flow[None]:
        """Hold a planning query against the last step proven done on this order (R21, R4).

        A query showing exactly the order as it was *before* that step, taken (at
        ``queried_at``) while the step was still inside its fence, is served from data behind
        what ECPay accepted: nothing is planned from it (:class:`TransportError`, nothing sent;
        ask again shortly). The query's time counts, not the check's: a query may be served
        behind a write until that write's fence, and a worker may pause between its query and
        this check. A query that otherwise contradicts a step ECPay accepted is reported on the
        outcome, never turned into "not done"; the plan follows the fresh query.
        """
        order = observed.merchant_trade_no
        proven = [
            attempt
            for record in records
            for attempt in record.attempts
            if attempt.status is AttemptStatus.DONE and attempt.step is not None
        ]
        if not proven:
            return
        # The latest in time; of steps sent in the same second, the one recorded last.
        last = max(enumerate(proven), key=lambda pair: (pair[1].at, pair[0]))[1]
        verdict = judge(last.before, observed, last.expected)
        if verdict is Verdict.DONE:
            return
        step = last.step
        assert step is not None
        fence = last.resolvable_at or (last.at + _WINDOW + self.fence_margin)
        if verdict is Verdict.NOT_DONE and queried_at < fence:
            raise TransportError(
                f"ECPay's query shows the order as it was before {step.describe()}, which was "
                f"done at {last.at.isoformat()}: the query is served from data behind that "
                "step, so nothing was planned from it and nothing was sent. Ask again shortly",
                merchant_trade_no=order,
            )
        if last.rtn_code is not None and last in run.record.attempts:
            yield from run.note(
                f"ECPay accepted {step.describe()} (RtnCode {last.rtn_code}), yet a later query "
                f"shows {_shown(observed)}, not {step.state_after}, closed "
                f"{step.closed_amount_after} TWD (R21: the accepted reply stands)"
            )

    def _attempt_flow(
        self,
        run: Run,
        *,
        index: int,
        action: Action,
        amount: int,
        step: Step | None,
        before: OrderSnapshot,
        baseline: Mapping[str, int],
    ) -> Flow[tuple[OrderSnapshot, DoActionReply | None]]:
        """Record, recheck (:meth:`_recheck`), send and settle one DoAction (R21, R22); return
        the order after it and ECPay's accepted reply (None when a query proved a lost reply's
        step done). ``baseline``: the order's other operations as the plan saw them
        (:meth:`_baseline`).

        For a raw DoAction (``step`` None) the returned snapshot is ``before``.
        """
        order = before.merchant_trade_no
        label = f"{action.value}({amount})"
        now = self.now()
        if step is not None and _rules.in_blackout(now, before.auto_close):
            # The planner checked R5 at planning time; a later step or a re-send checks again.
            raise RuleViolation(
                "R5",
                f"{label} was not sent: DoAction is not allowed 20:15-20:30 Asia/Taipei while "
                "ECPay's daily auto-close runs",
                retry_at=_rules.blackout_retry_at(now),
                merchant_trade_no=order,
            )
        self._check_quiet(order)  # before the attempt is recorded: nothing is sent after a 403
        request = build_do_action(
            self.credentials,
            merchant_trade_no=order,
            trade_no=before.trade_no,
            action=action,
            amount=amount,
            now=now,
        )
        sends = sum(
            1
            for a in run.record.attempts
            if (a.action, a.amount) == (action, amount) and a.status is AttemptStatus.NOT_DONE
        )
        attempt = AttemptRecord(
            index=index,
            attempt=sends + 1,
            action=action,
            amount=amount,
            trade_no=before.trade_no,
            before=before,
            step=step,
            status=AttemptStatus.SENDING,
            at=now,
            resolvable_at=self.fence(now, action, before),
        )
        # Recorded before the request leaves (style habit 15): a crash from here on leaves an
        # open attempt that locks the order until resolved by R22.
        yield from run.sending(attempt)
        yield from self._recheck(run, baseline, attempt)
        fields = self._fields(
            order, run.record, action=action.value, amount=amount, attempt=attempt.attempt
        )
        _log.info(
            "order %s: sending %s (attempt %d)",
            order,
            label,
            attempt.attempt,
            extra={**fields, "ecpay_outcome": "sending"},
        )
        try:
            return (
                yield from self._send_and_settle(
                    run, request, label, step, before=before, fields=fields
                )
            )
        except JournalError as exc:
            # The request may have left: its SENDING record stays open, so the order stays
            # locked until R22 resolves it. The caller must not read this as "not done".
            raise OutcomeUnknown(
                f"{label} was sent, but the journal could not record what came back "
                f"({exc.message}); it is resolved by R22 like a lost reply",
                merchant_trade_no=order,
                step=step if step is not None else label,
                retry_at=attempt.resolvable_at,
                idempotency_key=run.record.key,
            ) from exc

    def _send_and_settle(
        self,
        run: Run,
        request: WireRequest,
        label: str,
        step: Step | None,
        *,
        before: OrderSnapshot,
        fields: dict[str, object],
    ) -> Flow[tuple[OrderSnapshot, DoActionReply | None]]:
        """Send the recorded attempt and settle it by ECPay's reply (R21) or a query (R22)."""
        order = before.merchant_trade_no
        lost: BaseException | None = None
        try:
            wire = yield request
        except _NOT_SENT as exc:
            yield from run.resolve(AttemptStatus.NOT_DONE, note=f"not sent: {type(exc).__name__}")
            raise TransportError(
                f"{label} was not sent ({type(exc).__name__}: no connection); nothing moved",
                merchant_trade_no=order,
            ) from exc
        except httpx.HTTPError as exc:
            lost = exc
        else:
            try:
                inner, stamp = open_reply_stamped(
                    self.credentials, wire.status_code, wire.content, request=request
                )
                self._measure(stamp)
                reply = parse_do_action(inner, request=request)
            except RateLimited as exc:
                self._remember(exc)
                yield from run.resolve(AttemptStatus.NOT_DONE, note="not processed: HTTP 403")
                raise
            except _REJECTED_UNPROCESSED as exc:
                if isinstance(exc, ClockOutOfSync):
                    exc.skew_seconds = self._measure(_stamp_of(exc.raw))
                yield from run.resolve(
                    AttemptStatus.NOT_DONE,
                    note=f"not processed: TransCode {exc.trans_code} ({type(exc).__name__})",
                )
                raise
            except GatewayRefused as exc:
                yield from run.resolve(
                    AttemptStatus.REFUSED,
                    rtn_code=_code(exc.rtn_code),
                    rtn_msg=exc.rtn_msg,
                    note=exc.token or "",
                )
                _log.info(
                    "order %s: ECPay refused %s (RtnCode %s)",
                    order,
                    label,
                    exc.rtn_code,
                    extra={**fields, "ecpay_outcome": "refused"},
                )
                raise
            except (EnvelopeRejected, ProtocolError, CodecError) as exc:
                # Another TransCode, 5xx, not JSON, garbled Data, mismatched echoes (R2): the
                # request may have been applied (R22).
                lost = exc
            else:
                after = before if step is None else _after(before, step)
                yield from run.resolve(
                    AttemptStatus.DONE,
                    observed=None if step is None else after,
                    rtn_code=reply.rtn_code,
                    rtn_msg=reply.rtn_msg,
                    note="accepted (R21)",
                )
                _log.info(
                    "order %s: %s done (RtnCode %s)",
                    order,
                    label,
                    reply.rtn_code,
                    extra={**fields, "ecpay_outcome": "done"},
                )
                return after, reply
        settled = yield from self._settle_lost(run, run.record.attempts[-1], lost)
        return settled, None

    def _settle_lost(
        self, run: Run, attempt: AttemptRecord, lost: BaseException
    ) -> Flow[OrderSnapshot]:
        """A doubtful reply: a query may show the step done; anything else waits for the fence."""
        order = attempt.before.merchant_trade_no
        label = f"{attempt.action.value}({attempt.amount})"
        _log.warning(
            "order %s: the reply to %s was lost (%s); querying whether it took effect",
            order,
            label,
            type(lost).__name__,
            extra=self._attempt_fields(order, run.record, attempt, "lost"),
        )
        queried_at = self.now()
        try:
            observed = yield from self.detail_flow(order, attempt.trade_no, attempt.before.kind)
        except EcpayError as exc:
            yield from run.resolve(
                AttemptStatus.UNKNOWN, note=f"{_heard(lost)}; the confirming query failed"
            )
            raise self._unknown(run, attempt, None, lost=lost, queried=False) from exc
        verdict = yield from self._resolve(
            run, attempt, observed, queried_at, how="the confirming query", lost=lost
        )
        if verdict is Verdict.DONE:
            return observed if attempt.step is not None else attempt.before
        if verdict is Verdict.NOT_DONE:
            raise TransportError(
                f"the reply to {label} was lost and a query after its fence shows no change: "
                "it did not take effect (R22); nothing moved. The same idempotency key sends it "
                "once more",
                merchant_trade_no=order,
            ) from lost
        raise self._unknown(run, attempt, observed, lost=lost, queried=True) from lost

    def _resolve(
        self,
        run: Run,
        attempt: AttemptRecord,
        observed: OrderSnapshot,
        queried_at: dt.datetime,
        *,
        how: str,
        lost: BaseException | None = None,
    ) -> Flow[Verdict]:
        """R22: judge an open attempt by a query taken at ``queried_at`` and record the verdict.

        Reached -> done. Unchanged -> not done, but only if the query was taken after the
        attempt's fence; before it, and for anything else, the attempt stays unknown.
        """
        verdict = judge(attempt.before, observed, attempt.expected)
        fence = attempt.resolvable_at or (attempt.at + _WINDOW + self.fence_margin)
        early = verdict is Verdict.NOT_DONE and queried_at < fence
        base = attempt.note if attempt.note and lost is None else _heard(lost)
        if verdict is Verdict.DONE:
            yield from run.resolve(
                AttemptStatus.DONE,
                observed=observed,
                rtn_code=attempt.rtn_code,
                rtn_msg=attempt.rtn_msg,
                note=f"{base}; {how} shows it done",
            )
        elif verdict is Verdict.NOT_DONE and not early:
            yield from run.resolve(
                AttemptStatus.NOT_DONE,
                note=f"{base}; {how} after the fence shows no change (R22)",
            )
        else:
            shown = "no change yet, before the fence" if early else _shown(observed)
            yield from run.resolve(AttemptStatus.UNKNOWN, note=f"{base}; {how} shows {shown}")
            verdict = Verdict.UNKNOWN
        _log.log(
            logging.WARNING if verdict is Verdict.UNKNOWN else logging.INFO,
            "order %s: %s(%d) %s: %s",
            attempt.before.merchant_trade_no,
            attempt.action.value,
            attempt.amount,
            how,
            verdict,
            extra=self._attempt_fields(
                attempt.before.merchant_trade_no, run.record, attempt, str(verdict)
            ),
        )
        return verdict

    def _unknown(
        self,
        run: Run,
        attempt: AttemptRecord,
        observed: OrderSnapshot | None,
        *,
        lost: BaseException | None,
        queried: bool,
    ) -> OutcomeUnknown:
        label = f"{attempt.action.value}({attempt.amount})"
        order = attempt.before.merchant_trade_no
        retry_at = attempt.resolvable_at
        judged = judge(attempt.before, observed, attempt.expected) if observed else None
        if judged is Verdict.UNKNOWN and retry_at is not None and self.now() >= retry_at:
            retry_at = None
        seen = (
            f"the order shows {_shown(observed)}" if queried else "the query to confirm it failed"
        )
        when = (
            f"it can be resolved from {retry_at.isoformat()} (R22)"
            if retry_at is not None
            else "a query cannot tell: a person must check and reconcile(declare=...)"
        )
        _log.error(
            "order %s: outcome of %s unknown; order locked",
            order,
            label,
            extra=self._attempt_fields(order, run.record, attempt, "unknown"),
        )
        return OutcomeUnknown(
            f"{label}: {_heard(lost) if lost is not None else 'its reply was lost'}, and {seen}; "
            f"nothing was re-sent and no money moves on this order until it is resolved: {when}. "
            "Retry the same idempotency key or call reconcile() then",
            merchant_trade_no=order,
            step=attempt.step if attempt.step is not None else label,
            observed=observed,
            retry_at=retry_at,
            idempotency_key=run.record.key,
        )

    # -- raw DoAction ----------------------------------------------------------------------------

    def open_raw(self, order: str, trade_no: str, action: Action, amount: int) -> Flow[Run]:
        """Record a raw DoAction as its own operation, owned by this caller."""
        now = self.now()
        owner = self._new_owner()
        fresh = OperationRecord(
            merchant_id=self.credentials.merchant_id,
            key=f"auto-{uuid.uuid4().hex}",
            caller_key=False,
            merchant_trade_no=order,
            request=f"do_action {action.value} amount={amount} trade_no={trade_no}",
            intent=None,
            status=OperationStatus.RUNNING,
            started_at=now,
            updated_at=now,
            owner=owner,
            lease_until=now + self.lease,
        )
        claim = yield from journal_call(Claim, "claim", fresh, now=now)
        return Run(claim.record, owner=owner, now=self.now, lease=self.lease)

    def raw_flow(self, run: Run, trade_no: str, action: Action, amount: int) -> Flow[DoActionReply]:
        """One raw DoAction, journaled, locked and settled like a planned step, never re-sent."""
        order = run.record.merchant_trade_no
        try:
            records = yield from self._for_order(order)
            blocking = yield from self.unresolved(order, but=run.record.key, records=records)
            if blocking is not None:
                raise self.locked(order, blocking)
            _, kind = yield from self._known(order, trade_no, None, records)
            before = yield from self.query_flow(order, trade_no, kind)
            yield from run.save(before=before)
            _, reply = yield from self._attempt_flow(
                run,
                index=0,
                action=action,
                amount=amount,
                step=None,
                before=before,
                baseline=self._baseline(run, records),
            )
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                yield from _release(run)
            raise
        yield from _release(run)
        if reply is None:
            raise TransportError(
                f"{action.value}({amount})'s reply was lost; a query shows it took effect, but a "
                "raw call has no reply to return",
                merchant_trade_no=order,
            )
        return reply

    # -- the sweeper ---------------------------------------------------------------------------

    def start_sweep(self, limit: int) -> Flow[Sweep]:
        """Which orders to sweep now, which a live owner is working on, which back off.

        Reads the journal's open operations (an indexed query in a durable store): those with
        an open attempt or an owner. An order with a live owner is left to it (R23).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"limit must be a positive int, got {limit!r}")
        now = self.now()
        due: list[str] = []
        busy: list[str] = []
        waiting: list[str] = []
        for record in (yield from self._open_operations(limit)):
            order = record.merchant_trade_no
            if order in due or order in busy or order in waiting:
                continue
            records = yield from self._for_order(order)
            if any(r.owned_by_other(None, now) for r in records):
                busy.append(order)
            elif all(
                r.next_sweep_at is not None and r.next_sweep_at > now
                for r in records
                if r.open_attempt is not None
            ) and any(r.open_attempt is not None for r in records):
                waiting.append(order)
            else:
                due.append(order)
        return Sweep(due, busy, waiting)

    def sweep_flow(self, merchant_trade_no: str) -> Flow[tuple[Reconciliation, list[str]]]:
        """Under the order's lock: free operations whose owner's lease lapsed with nothing in
        flight, resolve each open attempt by R22 (as ``reconcile``), and back off the ones
        that stay unknown. Never sends a DoAction."""
        now = self.now()
        released: list[str] = []
        for record in (yield from self._for_order(merchant_trade_no)):
            lapsed = record.owner is not None and not record.owned_by_other(None, now)
            if lapsed and record.open_attempt is None:
                run = Run(record, owner=None, now=self.now, lease=self.lease)
                status = record.status
                if status is OperationStatus.RUNNING:
                    status = OperationStatus.STOPPED
                yield from run.save(owner=None, lease_until=None, status=status)
                released.append(record.key)
        result = yield from self.reconcile_flow(merchant_trade_no, {})
        for resolution in result.resolutions:
            if resolution.verdict is not Verdict.UNKNOWN:
                continue
            stuck = yield from self._get(resolution.key)
            if stuck is None or stuck.open_attempt is None:
                continue
            fence = stuck.open_attempt.resolvable_at
            if fence is not None and now < fence:
                later, sweeps = fence, stuck.sweeps
            else:
                later = now + _BACKOFF[min(stuck.sweeps, len(_BACKOFF) - 1)]
                sweeps = stuck.sweeps + 1
            run = Run(stuck, owner=None, now=self.now, lease=self.lease)
            yield from run.save(next_sweep_at=later, sweeps=sweeps)
        return result, released

    # -- reconcile -------------------------------------------------------------------------------

    def reconcile_flow(
        self, merchant_trade_no: str, declare: Mapping[str, Verdict]
    ) -> Flow[Reconciliation]:
        """Resolve each open attempt of the order on its own by R22; never sends money."""
        now = self.now()
        records = yield from self._for_order(merchant_trade_no)
        open_records = [r for r in records if r.open_attempt]
        by_key = {r.key: r for r in open_records}
        for key, verdict in declare.items():
            record = by_key.get(key)
            if record is None:
                raise InvalidArgument(
                    f"declare names operation {key!r}, which has no open attempt on order "
                    f"{merchant_trade_no}; nothing was recorded",
                    merchant_trade_no=merchant_trade_no,
                )
            attempt = record.open_attempt
            assert attempt is not None
            if (
                verdict is Verdict.NOT_DONE
                and attempt.resolvable_at
                and now < attempt.resolvable_at
            ):
                raise InvalidArgument(
                    f"declare[{key!r}] = 'not_done' before the fence: the request may still "
                    f"take effect until {attempt.resolvable_at.isoformat()} (R22); nothing was "
                    "recorded",
                    merchant_trade_no=merchant_trade_no,
                )
        queried_at = now
        if open_records:
            known = open_records[-1].open_attempt
            assert known is not None
            snapshot = yield from self.detail_flow(
                merchant_trade_no, known.trade_no, known.before.kind
            )
        else:
            trade_no, kind = yield from self._known(merchant_trade_no, None, None)
            snapshot = yield from self.query_flow(merchant_trade_no, trade_no, kind)
        resolutions = []
        for stored in open_records:
            record = (yield from self._get(stored.key)) or stored
            attempt = record.open_attempt
            if attempt is None:
                continue  # resolved meanwhile by its owner
            run = Run(record, owner=None, now=self.now, lease=self.lease)
            if record.owned_by_other(None, self.now()):
                resolutions.append(
                    self._resolution(
                        record,
                        attempt,
                        Verdict.UNKNOWN,
                        declared=False,
                        retry_at=record.lease_until,
                    )
                )
                continue
            verdict = yield from self._resolve(
                run, attempt, snapshot, queried_at, how="reconcile's query"
            )
            declared = verdict is Verdict.UNKNOWN and record.key in declare
            if declared:
                verdict = declare[record.key]
                status = AttemptStatus.DONE if verdict is Verdict.DONE else AttemptStatus.NOT_DONE
                settled = run.record.attempts[-1]
                yield from run.resolve(
                    status,
                    observed=snapshot,
                    rtn_code=settled.rtn_code,
                    rtn_msg=settled.rtn_msg,
                    note=f"{settled.note}; declared by the caller: {verdict}",
                )
            if run.record.status is OperationStatus.RUNNING:
                # An earlier step of a plan took effect but the operation stopped there.
                yield from run.save(status=OperationStatus.STOPPED)
            if run.record.owner is not None and run.record.open_attempt is None:
                # The owner's lease lapsed (a live one was skipped above): it died with this
                # attempt in flight. Resolved now, the operation is nobody's (R23).
                yield from run.save(owner=None, lease_until=None)
            outcome = None
            if run.record.status is OperationStatus.SUCCEEDED and run.record.plan is not None:
                outcome = outcome_of(run.record, replayed=False)
            retry_at = None
            if verdict is Verdict.UNKNOWN and attempt.resolvable_at and now < attempt.resolvable_at:
                retry_at = attempt.resolvable_at
            resolutions.append(
                self._resolution(
                    run.record,
                    attempt,
                    verdict,
                    declared=declared,
                    retry_at=retry_at,
                    outcome=outcome,
                )
            )
        return Reconciliation(
            merchant_trade_no=merchant_trade_no, snapshot=snapshot, resolutions=tuple(resolutions)
        )

    @staticmethod
    def _resolution(
        record: OperationRecord,
        attempt: AttemptRecord,
        verdict: Verdict,
        *,
        declared: bool,
        retry_at: dt.datetime | None,
        outcome: Outcome | None = None,
    ) -> Resolution:
        return Resolution(
            idempotency_key=record.key if record.caller_key else None,
            key=record.key,
            action=attempt.action,
            amount=attempt.amount,
            verdict=verdict,
            declared=declared,
            outcome=outcome,
            retry_at=retry_at,
        )


class Sweep:
    """One sweep under way: the plan from the journal and what came of each order. Both shells
    run its ``due`` orders through :meth:`Engine.sweep_flow` and record the results here."""

    def __init__(self, due: list[str], busy: list[str], waiting: list[str]) -> None:
        self.due = due
        self._busy = busy
        self._waiting = waiting
        self._reconciled: list[Reconciliation] = []
        self._released: list[str] = []
        self._failed: list[tuple[str, str]] = []
        self._stopped: str | None = None

    def done(self, result: Reconciliation, released: list[str]) -> None:
        self._reconciled.append(result)
        self._released.extend(released)

    def fail(self, merchant_trade_no: str, error: EcpayError) -> None:
        self._failed.append((merchant_trade_no, str(error)))

    def stop(self, error: RateLimited) -> None:
        self._stopped = f"{error.message}; the sweep stopped and resumes on its next run"

    def report(self) -> SweepReport:
        return SweepReport(
            reconciled=tuple(self._reconciled),
            busy=tuple(self._busy),
            waiting=tuple(self._waiting),
            released=tuple(self._released),
            failed=tuple(self._failed),
            stopped=self._stopped,
        )


def _release(run: Run) -> Flow[None]:
    """Give up ownership unless another worker already took it (then there is nothing to
    release and nothing more is sent)."""
    try:
        yield from run.release()
    except EcpayError as exc:
        record = run.record
        _log.warning(
            "could not release operation %r: %s",
            record.key,
            exc,
            extra={
                "ecpay_merchant_id": record.merchant_id,
                "ecpay_order": record.merchant_trade_no,
                "ecpay_key": record.key if record.caller_key else None,
                "ecpay_outcome": "release_failed",
            },
        )


def _lock_holds(journal: Journal | AsyncJournal) -> bool:
    """Whether ``journal``'s order lock cannot be lost under a holder that still runs: its
    locks are :class:`~._locks.ProcessOrderLocks` (:class:`~._journal.InMemoryJournal`'s), a
    thread lock that only its holder releases, for a journal whose workers are the threads and
    tasks of one process. Any other store's lock may be lost (a PostgreSQL session that ended,
    a lease that lapsed, a POSIX lock released by another descriptor of its file), so every
    attempt is rechecked before it leaves (:meth:`Engine._recheck`)."""
    return type(journal.locks) is ProcessOrderLocks


def _stamp_of(raw: object) -> int | None:
    if not isinstance(raw, Mapping):
        return None
    header = raw.get("RpHeader")
    if not isinstance(header, Mapping):
        return None
    value = header.get("Timestamp")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
