"""``Client`` and ``AsyncClient``: carry out plans against ECPay without moving money twice.

One brain, two shells (style habit 3). Every decision (what to query, what to send, how to read
the reply, what a lost reply means, what to record) lives in :class:`_Core` as *flows*:
generators that yield a :class:`~._protocol.WireRequest` and are sent back the reply's status
and bytes, or have the httpx exception thrown in. :class:`Client` runs a flow with
``httpx.Client`` under a per-order ``threading.Lock``; :class:`AsyncClient` with
``httpx.AsyncClient`` under a per-order ``asyncio.Lock``. Nothing else differs.

Safety, in the order a money-moving call meets it (spec section 9):

1. The idempotency identity (key and canonical request) is fixed before anything is sent.
2. Under the order's lock: a recorded success for the key is replayed (nothing sent); an order
   with an unresolved step is refused with :class:`OrderLocked`.
3. Query first (R4), plan (spec 8), then per step: record ``SENDING``, send, and confirm with a
   query that the order shows the state and closed amount the step expected.
4. A lost reply (timeout after sending, reset, 5xx, garbled or mismatched) is resolved by that
   query, never by re-sending blindly: reached -> done; unchanged -> not done, sent once more
   (once, after recording it); anything else, or a failed query -> :class:`OutcomeUnknown`, and
   the order stays locked until :meth:`Client.reconcile`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import threading
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any, Final, TypeVar, cast

import attrs
import httpx

from . import _planner, _rules
from ._exceptions import (
    CodecError,
    ConfigurationError,
    EcpayError,
    EnvelopeRejected,
    GatewayRefused,
    InvalidArgument,
    InvalidArgumentType,
    OrderLocked,
    OutcomeUnknown,
    ProtocolError,
    RateLimited,
    RuleViolation,
    TransportError,
)
from ._journal import (
    AttemptRecord,
    AttemptStatus,
    InMemoryJournal,
    Journal,
    OperationRecord,
    OperationStatus,
)
from ._models import (
    Action,
    Intent,
    OrderSnapshot,
    PaymentKind,
    Plan,
    Step,
    check_amount,
    check_aware,
    check_order_number,
)
from ._outcome import Outcome, Reconciliation, Resolution, StepResult, Verdict, judge
from ._protocol import (
    PRODUCTION_URL,
    Credentials,
    DoActionReply,
    WireRequest,
    build_cashier_query,
    build_credit_detail,
    build_do_action,
    is_stage,
    open_reply,
    parse_cashier_query,
    parse_credit_detail,
    parse_do_action,
    snapshot_from,
)

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "AsyncClient", "Client"]

_log = logging.getLogger("ecpay_lifecycle")

#: Seconds for connect, read, write and waiting for a pooled connection. Always set: a request
#: without a timeout can hang a worker forever.
DEFAULT_TIMEOUT: Final = 10.0
#: Connections per client, all kept alive. ECPay answers bursts with HTTP 403 (wait 30 minutes),
#: so a few reused connections serve a shop better than many short-lived ones.
DEFAULT_MAX_CONNECTIONS: Final = 10

_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "ecpay-lifecycle",
}
_KEY_MAX: Final = 255
_JSON = json.JSONEncoder(separators=(",", ":"))

# Failures after which the request provably never reached ECPay: no connection was made.
_NOT_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)

_T = TypeVar("_T")


@attrs.frozen
class _Reply:
    """What a shell hands back to a flow: the HTTP status and the body bytes."""

    status_code: int
    content: bytes


#: A flow yields requests, is sent replies (or has httpx errors thrown in) and returns a value.
_Flow = Generator[WireRequest, _Reply, _T]


@attrs.frozen
class _Call:
    """One money-moving call with its idempotency identity fixed (style habit 8)."""

    intent: Intent
    merchant_trade_no: str
    amount: int | None
    capture_first: bool
    key: str
    caller_key: bool

    @property
    def request(self) -> str:
        """Canonical text of the parameters: the same key with another request is refused."""
        amount = "all" if self.amount is None else str(self.amount)
        if self.intent is Intent.REFUND:
            return f"refund amount={amount} capture_first={self.capture_first}"
        return str(self.intent)


@attrs.frozen
class _Applied:
    """An attempt that a query showed took effect."""

    observed: OrderSnapshot
    reply: DoActionReply | None


@attrs.frozen
class _NotApplied:
    """An attempt whose reply was lost and that a query proved had no effect."""

    observed: OrderSnapshot
    cause: BaseException


class _Run:
    """The journal record of the operation under way; every change is saved whole at once."""

    def __init__(
        self, journal: Journal, record: OperationRecord, now: Callable[[], dt.datetime]
    ) -> None:
        self._journal = journal
        self._now = now
        self.record = record

    def save(self, **changes: Any) -> None:
        self.record = attrs.evolve(self.record, updated_at=self._now(), **changes)
        self._journal.save(self.record)

    def sending(self, attempt: AttemptRecord) -> None:
        self.save(attempts=(*self.record.attempts, attempt), status=OperationStatus.RUNNING)

    def resolve(
        self,
        status: AttemptStatus,
        *,
        observed: OrderSnapshot | None = None,
        rtn_code: int | str | None = None,
        rtn_msg: str = "",
        note: str = "",
    ) -> None:
        """Record how the last attempt ended, and with it the operation's status, in one save."""
        last = attrs.evolve(
            self.record.attempts[-1], status=status, rtn_code=rtn_code, rtn_msg=rtn_msg, note=note
        )
        attempts = (*self.record.attempts[:-1], last)
        plan = self.record.plan
        final_step = plan is None or last.index == len(plan.steps) - 1
        if status is AttemptStatus.DONE and final_step:
            self.save(attempts=attempts, status=OperationStatus.SUCCEEDED, final=observed)
        elif status is AttemptStatus.DONE:
            self.save(attempts=attempts, status=OperationStatus.RUNNING)
        elif status is AttemptStatus.UNKNOWN:
            self.save(attempts=attempts, status=OperationStatus.UNKNOWN)
        else:
            self.save(attempts=attempts, status=OperationStatus.STOPPED)

    def stop(self) -> None:
        """Mark an operation that ended early as stopped, unless a step is unresolved."""
        if self.record.status is OperationStatus.RUNNING and self.record.open_attempt is None:
            self.save(status=OperationStatus.STOPPED)


def _system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_base_url(base_url: object) -> str:
    if not isinstance(base_url, str):
        raise InvalidArgumentType(f"base_url must be a str, not {type(base_url).__name__}")
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    return base_url.rstrip("/")


def _check_timeout(timeout: object) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        if any(part is None for part in parts):
            raise ConfigurationError("every part of the timeout must be set: none may be None")
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgumentType(
            f"timeout must be seconds (a number) or httpx.Timeout, not {type(timeout).__name__}"
        )
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be positive seconds, got {timeout}")
    return httpx.Timeout(float(timeout))


def _check_limit(max_connections: object) -> httpx.Limits:
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise InvalidArgumentType(
            f"max_connections must be an int, not {type(max_connections).__name__}"
        )
    if max_connections < 1:
        raise ConfigurationError(f"max_connections must be at least 1, got {max_connections}")
    # Keep every connection alive: with fewer keep-alive slots than connections, each burst
    # opens and drops connections (httpx's default 20 of 100 did 2,000 connects for 2,000 calls).
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def _check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str):
        raise InvalidArgumentType(f"idempotency_key must be a str, not {type(key).__name__}")
    if not 1 <= len(key) <= _KEY_MAX or not key.isprintable():
        raise InvalidArgument(
            f"idempotency_key must be 1-{_KEY_MAX} printable characters, got {key!r}"
        )
    return key


def _check_kind(kind: object) -> PaymentKind | None:
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


def _check_action(action: object) -> Action:
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


def _what(state_and_closed: tuple[Any, int] | None) -> str:
    if state_and_closed is None:
        return "a change"
    state, closed = state_and_closed
    return f"{state}, closed {closed} TWD"


def _heard(lost: BaseException | None) -> str:
    """What the client heard back from a DoAction, for notes and messages."""
    return "ECPay accepted it" if lost is None else f"the reply was lost ({type(lost).__name__})"


def _same(a: OrderSnapshot, b: OrderSnapshot) -> bool:
    return (a.state, a.closed_amount) == (b.state, b.closed_amount)


def _code(value: object) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


def _outcome_of(record: OperationRecord, *, replayed: bool) -> Outcome:
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
    )


def _note_progress(exc: BaseException, record: OperationRecord) -> None:
    """Tell the caller, on the error itself, which steps already took effect before it."""
    done = [a for a in record.attempts if a.status is AttemptStatus.DONE]
    if done:
        steps = ", ".join(f"{a.action.value}({a.amount})" for a in done)
        exc.add_note(f"already done under this operation: {steps}; query the order before acting")


class _Core:
    """Configuration and every decision the two clients share; no I/O (style habit 3)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str,
        timeout: float | httpx.Timeout,
        clock: Callable[[], dt.datetime] | None,
        journal: Journal | None,
        max_connections: int,
    ) -> None:
        if not isinstance(credentials, Credentials):
            raise InvalidArgumentType(
                f"credentials must be Credentials, not {type(credentials).__name__}"
            )
        if clock is not None and not callable(clock):
            raise InvalidArgumentType("clock must be a callable returning an aware datetime")
        if journal is not None and not isinstance(journal, Journal):
            raise InvalidArgumentType(
                f"journal must implement the Journal protocol, not {type(journal).__name__}"
            )
        self._credentials = credentials
        self._base_url = _check_base_url(base_url)
        self._stage = is_stage(self._base_url)
        self._timeout = _check_timeout(timeout)
        self._limits = _check_limit(max_connections)
        self._clock = clock or _system_clock
        self._journal: Journal = InMemoryJournal() if journal is None else journal

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(merchant_id={self._credentials.merchant_id!r}, "
            f"base_url={self._base_url!r})"
        )

    @property
    def journal(self) -> Journal:
        """The journal this client records operations in."""
        return self._journal

    # -- checking calls (before any lock or I/O) -----------------------------------------------

    def _now(self) -> dt.datetime:
        return check_aware(self._clock(), field="clock()")

    def _refuse_stage(self, merchant_trade_no: str) -> None:
        """ECPay's stage host cannot run DoAction (spec 1): refuse before anything is sent."""
        if self._stage:
            raise ConfigurationError(
                f"DoAction cannot run against ECPay's stage host {self._base_url}: ECPay has no "
                "DoAction there. Test money movement against ecpay_lifecycle.emulator",
                merchant_trade_no=merchant_trade_no,
            )

    def _money_call(
        self,
        intent: Intent,
        merchant_trade_no: object,
        *,
        amount: object = None,
        capture_first: object = False,
        idempotency_key: object = None,
    ) -> _Call:
        order = check_order_number(merchant_trade_no)
        checked = None if amount is None else check_amount(amount)
        if not isinstance(capture_first, bool):
            raise InvalidArgumentType(
                f"capture_first must be a bool, not {type(capture_first).__name__}"
            )
        key = _check_key(idempotency_key)
        self._refuse_stage(order)
        return _Call(
            intent=intent,
            merchant_trade_no=order,
            amount=checked,
            capture_first=capture_first,
            key=key if key is not None else f"auto-{uuid.uuid4().hex}",
            caller_key=key is not None,
        )

    def _money(
        self,
        intent: Intent,
        merchant_trade_no: object,
        *,
        amount: object = None,
        capture_first: object = False,
        idempotency_key: object = None,
    ) -> tuple[str, _Flow[Outcome]]:
        """Check a capture/refund/abandon call now; return its order and its flow."""
        call = self._money_call(
            intent,
            merchant_trade_no,
            amount=amount,
            capture_first=capture_first,
            idempotency_key=idempotency_key,
        )
        return call.merchant_trade_no, self._operation_flow(call)

    def _query(
        self, merchant_trade_no: object, trade_no: object, kind: object
    ) -> _Flow[OrderSnapshot]:
        """Check a query call now; return its flow."""
        order = check_order_number(merchant_trade_no)
        known = None if trade_no is None else check_order_number(trade_no, field="trade_no")
        return self._query_flow(order, known, _check_kind(kind))

    def _raw(
        self, merchant_trade_no: object, trade_no: object, action: object, amount: object
    ) -> tuple[str, _Flow[DoActionReply]]:
        """Check a raw DoAction call now (stage refused); return its order and its flow."""
        order = check_order_number(merchant_trade_no)
        number = check_order_number(trade_no, field="trade_no")
        checked_action = _check_action(action)
        checked_amount = check_amount(amount)
        self._refuse_stage(order)
        return order, self._do_action_flow(order, number, checked_action, checked_amount)

    def _reconcile(
        self, merchant_trade_no: object, declare: object
    ) -> tuple[str, _Flow[Reconciliation]]:
        """Check a reconcile call now; return its order and its flow."""
        order = check_order_number(merchant_trade_no)
        return order, self._reconcile_flow(order, self._check_declare(declare))

    def _order_key(self, merchant_trade_no: str) -> tuple[str, str]:
        return self._credentials.merchant_id, merchant_trade_no

    # -- queries (side-effect free) ------------------------------------------------------------

    def _exchange(self, request: WireRequest) -> _Flow[dict[str, Any]]:
        """Send a query and open its reply. Queries move nothing, so any failure is plain."""
        try:
            reply = yield request
        except httpx.HTTPError as exc:
            raise TransportError(
                f"query {request.path} failed: {type(exc).__name__}: {exc}",
                merchant_trade_no=request.merchant_trade_no,
            ) from exc
        return open_reply(self._credentials, reply.status_code, reply.content, request=request)

    def _detail_flow(
        self, merchant_trade_no: str, trade_no: str, kind: PaymentKind
    ) -> _Flow[OrderSnapshot]:
        """CreditDetail/QueryTrade: the order's state and closed amount now (spec 4, R4)."""
        request = build_credit_detail(
            self._credentials,
            merchant_trade_no=merchant_trade_no,
            trade_no=trade_no,
            now=self._now(),
        )
        inner = yield from self._exchange(request)
        detail = parse_credit_detail(inner, request=request)
        return snapshot_from(
            detail,
            merchant_trade_no=merchant_trade_no,
            trade_no=trade_no,
            kind=kind,
            auto_close=self._credentials.auto_close,
        )

    def _query_flow(
        self, merchant_trade_no: str, trade_no: str | None, kind: PaymentKind | None
    ) -> _Flow[OrderSnapshot]:
        """Cashier/QueryTrade for TradeNo and kind unless both are known, then CreditDetail."""
        if trade_no is None or kind is None:
            request = build_cashier_query(
                self._credentials, merchant_trade_no=merchant_trade_no, now=self._now()
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
        return (yield from self._detail_flow(merchant_trade_no, trade_no, kind))

    # -- money movement ------------------------------------------------------------------------

    def _open(self, call: _Call) -> _Run | Outcome:
        """Claim the operation's key: replay a recorded success, refuse a locked order (spec 9)."""
        now = self._now()
        merchant_id = self._credentials.merchant_id
        fresh = OperationRecord(
            merchant_id=merchant_id,
            key=call.key,
            caller_key=call.caller_key,
            merchant_trade_no=call.merchant_trade_no,
            request=call.request,
            intent=call.intent,
            status=OperationStatus.RUNNING,
            started_at=now,
            updated_at=now,
        )
        existing = self._journal.claim(fresh)
        if existing is not None:
            if (existing.merchant_trade_no, existing.request) != (
                call.merchant_trade_no,
                call.request,
            ):
                raise InvalidArgument(
                    f"idempotency key {call.key!r} was used for {existing.request!r} on order "
                    f"{existing.merchant_trade_no}; this call is {call.request!r}. Use a new key "
                    "for a different request",
                    merchant_trade_no=call.merchant_trade_no,
                )
            if existing.status is OperationStatus.SUCCEEDED:
                _log.info(
                    "order %s: idempotency key seen before; replaying the recorded %s, sending "
                    "nothing",
                    call.merchant_trade_no,
                    call.intent,
                )
                return _outcome_of(existing, replayed=True)
        blocking = self._unresolved(call.merchant_trade_no)
        if blocking is not None:
            if existing is None:
                self._journal.save(attrs.evolve(fresh, status=OperationStatus.STOPPED))
            raise self._locked(call.merchant_trade_no, blocking)
        if existing is not None:
            _log.info(
                "order %s: resuming an operation that stopped short (%s)",
                call.merchant_trade_no,
                call.intent,
            )
        record = (
            fresh if existing is None else attrs.evolve(existing, status=OperationStatus.RUNNING)
        )
        run = _Run(self._journal, record, self._now)
        if existing is not None:
            run.save()
        return run

    def _unresolved(self, merchant_trade_no: str) -> OperationRecord | None:
        """The operation whose unresolved step locks the order, if any (spec 9)."""
        merchant_id = self._credentials.merchant_id
        for record in self._journal.for_order(merchant_id, merchant_trade_no):
            if record.open_attempt is not None:
                return record
        return None

    def _locked(self, merchant_trade_no: str, record: OperationRecord) -> OrderLocked:
        attempt = record.open_attempt
        step = "a step" if attempt is None else f"{attempt.action.value}({attempt.amount})"
        return OrderLocked(
            f"{step} sent at {attempt.at.isoformat() if attempt else '?'} has an unknown outcome; "
            "no money moves on this order until reconcile() resolves it",
            merchant_trade_no=merchant_trade_no,
        )

    def _plan(self, call: _Call, snapshot: OrderSnapshot) -> Plan:
        now = self._now()
        if call.intent is Intent.REFUND:
            return _planner.plan_refund(
                snapshot, call.amount, now=now, capture_first=call.capture_first
            )
        if call.intent is Intent.CAPTURE:
            return _planner.plan_capture(snapshot, now=now)
        return _planner.plan_abandon(snapshot, now=now)

    def _operation_flow(self, call: _Call) -> _Flow[Outcome]:
        """Query (R4), plan, and carry out each step, confirming each by a query (spec 9)."""
        opened = self._open(call)
        if isinstance(opened, Outcome):
            return opened
        run = opened
        try:
            before = yield from self._query_flow(call.merchant_trade_no, None, None)
            plan = self._plan(call, before)
            run.save(plan=plan, before=before, final=None)
            _log.info(
                "order %s: %s planned as %s", call.merchant_trade_no, call.intent, plan.describe()
            )
            current = before
            for index, step in enumerate(plan.steps):
                current = yield from self._step_flow(run, index, step, current)
        except BaseException as exc:
            # Also on cancellation: an operation that ended early is marked stopped, unless a
            # step is unresolved, which keeps the order locked.
            run.stop()
            if isinstance(exc, EcpayError):
                _note_progress(exc, run.record)
            raise
        return _outcome_of(run.record, replayed=False)

    def _step_flow(
        self, run: _Run, index: int, step: Step, before: OrderSnapshot
    ) -> _Flow[OrderSnapshot]:
        """One planned step: at most two attempts, the second only after a proof (spec 9)."""
        first = yield from self._attempt_flow(
            run,
            index=index,
            attempt=1,
            action=step.action,
            amount=step.amount,
            step=step,
            before=before,
        )
        if isinstance(first, _Applied):
            return first.observed
        order = before.merchant_trade_no
        if not _same(first.observed, before):
            raise TransportError(
                f"the reply to {step.describe()} was lost and a query shows it did not take "
                f"effect, but the order changed meanwhile ({_shown(first.observed)}), so it was "
                "not sent again; nothing moved. Plan again from a fresh query",
                merchant_trade_no=order,
            ) from first.cause
        _log.warning(
            "order %s: %s did not take effect; sending it once more (the only re-send)",
            order,
            step.describe(),
        )
        second = yield from self._attempt_flow(
            run,
            index=index,
            attempt=2,
            action=step.action,
            amount=step.amount,
            step=step,
            before=before,
        )
        if isinstance(second, _Applied):
            return second.observed
        raise TransportError(
            f"{step.describe()} did not take effect in two attempts (replies lost, queries show "
            "no change); nothing moved and it is not tried again",
            merchant_trade_no=order,
        ) from second.cause

    def _attempt_flow(
        self,
        run: _Run,
        *,
        index: int,
        attempt: int,
        action: Action,
        amount: int,
        step: Step | None,
        before: OrderSnapshot,
    ) -> _Flow[_Applied | _NotApplied]:
        """Send one DoAction and establish by a query whether it took effect (spec 9, R2)."""
        order = before.merchant_trade_no
        label = f"{action.value}({amount})"
        now = self._now()
        if step is not None and _rules.in_blackout(now, before.auto_close):
            # The planner checked R5 at planning time; a later step or a re-send checks again.
            raise RuleViolation(
                "R5",
                f"{label} was not sent: DoAction is not allowed 20:15-20:30 Asia/Taipei while "
                "ECPay's daily auto-close runs",
                retry_at=_rules.blackout_retry_at(now),
                merchant_trade_no=order,
            )
        request = build_do_action(
            self._credentials,
            merchant_trade_no=order,
            trade_no=before.trade_no,
            action=action,
            amount=amount,
            now=now,
        )
        run.sending(
            AttemptRecord(
                index=index,
                attempt=attempt,
                action=action,
                amount=amount,
                trade_no=before.trade_no,
                before=before,
                step=step,
                status=AttemptStatus.SENDING,
                at=now,
            )
        )
        _log.info("order %s: sending %s (attempt %d)", order, label, attempt)
        accepted, lost = yield from self._send_flow(run, request, label)
        if lost is not None:
            _log.warning(
                "order %s: the reply to %s was lost (%s); querying whether it took effect",
                order,
                label,
                type(lost).__name__,
            )
        try:
            observed = yield from self._detail_flow(order, before.trade_no, before.kind)
        except EcpayError as exc:
            run.resolve(AttemptStatus.UNKNOWN, note=f"{_heard(lost)}; the confirming query failed")
            _log.error(
                "order %s: outcome of %s unknown; order locked until reconcile", order, label
            )
            raise OutcomeUnknown(
                f"{label}: {_heard(lost)}, and the query to confirm it failed "
                f"({type(exc).__name__}); the order is locked until reconcile()",
                merchant_trade_no=order,
                step=step if step is not None else label,
                observed=None,
            ) from exc
        return self._settle(
            run, label, step=step, before=before, observed=observed, accepted=accepted, lost=lost
        )

    def _send_flow(
        self, run: _Run, request: WireRequest, label: str
    ) -> _Flow[tuple[DoActionReply | None, BaseException | None]]:
        """Send a recorded DoAction. Returns ECPay's acceptance, or what lost the reply.

        Provably not processed (no connection, HTTP 403, TransCode != 1) and refused
        (RtnCode != 1) are recorded and raised: nothing moved. Everything else after the
        request may have left is a lost reply, for the query to settle (spec 9).
        """
        order = request.merchant_trade_no
        try:
            wire = yield request
        except _NOT_SENT as exc:
            run.resolve(AttemptStatus.NOT_DONE, note=f"not sent: {type(exc).__name__}")
            raise TransportError(
                f"{label} was not sent ({type(exc).__name__}: no connection); nothing moved",
                merchant_trade_no=order,
            ) from exc
        except httpx.HTTPError as exc:
            return None, exc
        try:
            inner = open_reply(self._credentials, wire.status_code, wire.content, request=request)
            return parse_do_action(inner, request=request), None
        except (RateLimited, EnvelopeRejected) as exc:
            run.resolve(AttemptStatus.NOT_DONE, note=f"not processed: {type(exc).__name__}")
            raise
        except GatewayRefused as exc:
            run.resolve(
                AttemptStatus.REFUSED,
                rtn_code=_code(exc.rtn_code),
                rtn_msg=exc.rtn_msg,
                note=exc.token or "",
            )
            _log.info("order %s: ECPay refused %s (RtnCode %s)", order, label, exc.rtn_code)
            raise
        except (ProtocolError, CodecError) as exc:
            # 5xx, not JSON, garbled Data, mismatched echoes (R2): the request may have applied.
            return None, exc

    def _settle(
        self,
        run: _Run,
        label: str,
        *,
        step: Step | None,
        before: OrderSnapshot,
        observed: OrderSnapshot,
        accepted: DoActionReply | None,
        lost: BaseException | None,
    ) -> _Applied | _NotApplied:
        """Judge the confirming query (spec 9) and record the verdict; unknown raises."""
        order = before.merchant_trade_no
        expected = None if step is None else (step.state_after, step.closed_amount_after)
        verdict = judge(before, observed, expected)
        if accepted is not None and (
            verdict is Verdict.DONE or (step is None and verdict is Verdict.UNKNOWN)
        ):
            # ECPay said yes and the order changed as expected (a raw call expects only a change).
            run.resolve(
                AttemptStatus.DONE,
                observed=observed,
                rtn_code=accepted.rtn_code,
                rtn_msg=accepted.rtn_msg,
            )
            _log.info("order %s: %s done (RtnCode %s)", order, label, accepted.rtn_code)
            return _Applied(observed, accepted)
        if lost is not None and verdict is Verdict.DONE:
            run.resolve(
                AttemptStatus.DONE, observed=observed, note=f"{_heard(lost)}; a query shows it"
            )
            _log.warning("order %s: %s took effect (a query shows it); not re-sent", order, label)
            return _Applied(observed, None)
        if lost is not None and verdict is Verdict.NOT_DONE:
            run.resolve(AttemptStatus.NOT_DONE, note=f"{_heard(lost)}; a query shows no change")
            return _NotApplied(observed, lost)
        run.resolve(AttemptStatus.UNKNOWN, note=f"{_heard(lost)}; order shows {_shown(observed)}")
        _log.error("order %s: outcome of %s unknown; order locked until reconcile", order, label)
        unknown = OutcomeUnknown(
            f"{label}: {_heard(lost)}, and the order now shows {_shown(observed)}: neither what "
            f"the step expected ({_what(expected)}) nor what it was before ({_shown(before)}). "
            "Nothing was re-sent; the order is locked until reconcile()",
            merchant_trade_no=order,
            step=step if step is not None else label,
            observed=observed,
        )
        if lost is not None:
            raise unknown from lost
        raise unknown

    def _do_action_flow(
        self, merchant_trade_no: str, trade_no: str, action: Action, amount: int
    ) -> _Flow[DoActionReply]:
        """One raw DoAction, journaled, locked and confirmed like a planned step, never re-sent."""
        call_key = f"auto-{uuid.uuid4().hex}"
        now = self._now()
        record = OperationRecord(
            merchant_id=self._credentials.merchant_id,
            key=call_key,
            caller_key=False,
            merchant_trade_no=merchant_trade_no,
            request=f"do_action {action.value} amount={amount} trade_no={trade_no}",
            intent=None,
            status=OperationStatus.RUNNING,
            started_at=now,
            updated_at=now,
        )
        blocking = self._unresolved(merchant_trade_no)
        if blocking is not None:
            raise self._locked(merchant_trade_no, blocking)
        self._journal.save(record)
        run = _Run(self._journal, record, self._now)
        try:
            before = yield from self._query_flow(merchant_trade_no, trade_no, None)
            run.save(before=before)
            result = yield from self._attempt_flow(
                run, index=0, attempt=1, action=action, amount=amount, step=None, before=before
            )
        except BaseException:
            run.stop()
            raise
        if isinstance(result, _NotApplied):
            raise TransportError(
                f"the reply to {action.value}({amount}) was lost and a query shows it did not take "
                "effect; nothing moved (a raw call is never re-sent)",
                merchant_trade_no=merchant_trade_no,
            ) from result.cause
        if result.reply is None:
            raise ProtocolError("a raw DoAction was confirmed without a reply")
        return result.reply

    def _reconcile_flow(
        self, merchant_trade_no: str, declare: Verdict | None
    ) -> _Flow[Reconciliation]:
        """Resolve every unresolved step of the order by one query (spec 9); never sends money."""
        merchant_id = self._credentials.merchant_id
        open_records = [
            r for r in self._journal.for_order(merchant_id, merchant_trade_no) if r.open_attempt
        ]
        if open_records:
            known = cast(AttemptRecord, open_records[-1].open_attempt).before
            snapshot = yield from self._detail_flow(merchant_trade_no, known.trade_no, known.kind)
        else:
            snapshot = yield from self._query_flow(merchant_trade_no, None, None)
        resolutions = []
        for record in open_records:
            attempt = cast(AttemptRecord, record.open_attempt)
            verdict = judge(attempt.before, snapshot, attempt.expected)
            declared = verdict is Verdict.UNKNOWN and declare is not None
            if declared and declare is not None:
                verdict = declare
            outcome = None
            if verdict is not Verdict.UNKNOWN:
                run = _Run(self._journal, record, self._now)
                how = "declared by the caller" if declared else "reconciled by a query"
                status = AttemptStatus.DONE if verdict is Verdict.DONE else AttemptStatus.NOT_DONE
                run.resolve(
                    status,
                    observed=snapshot,
                    rtn_code=attempt.rtn_code,
                    rtn_msg=attempt.rtn_msg,
                    note=f"{attempt.note}; {how}: {verdict}"
                    if attempt.note
                    else f"{how}: {verdict}",
                )
                if run.record.status is OperationStatus.RUNNING:
                    # An earlier step of a plan took effect but the operation stopped there.
                    run.save(status=OperationStatus.STOPPED)
                if run.record.status is OperationStatus.SUCCEEDED and run.record.plan is not None:
                    outcome = _outcome_of(run.record, replayed=False)
            _log.info(
                "order %s: reconciled %s(%d): %s%s",
                merchant_trade_no,
                attempt.action.value,
                attempt.amount,
                verdict,
                " (declared)" if declared else "",
            )
            resolutions.append(
                Resolution(
                    idempotency_key=record.key if record.caller_key else None,
                    action=attempt.action,
                    amount=attempt.amount,
                    verdict=verdict,
                    declared=declared,
                    outcome=outcome,
                )
            )
        return Reconciliation(
            merchant_trade_no=merchant_trade_no, snapshot=snapshot, resolutions=tuple(resolutions)
        )

    def _check_declare(self, declare: object) -> Verdict | None:
        if declare is None:
            return None
        if not isinstance(declare, str):
            raise InvalidArgumentType(f"declare must be a Verdict, not {type(declare).__name__}")
        if declare not in (Verdict.DONE, Verdict.NOT_DONE):
            raise InvalidArgument(f"declare must be 'done' or 'not_done', got {declare!r}")
        return Verdict(declare)


def _body(request: WireRequest) -> bytes:
    return _JSON.encode(request.body).encode("ascii")


# -- per-order locks ---------------------------------------------------------------------------


@attrs.define
class _Entry:
    lock: Any
    users: int = 0


class _ThreadLocks:
    """One ``threading.Lock`` per order while someone holds or waits for it; none otherwise."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(threading.Lock())
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._entries[key]


class _TaskLocks:
    """One ``asyncio.Lock`` per order while a task holds or waits for it; none otherwise.

    No guard is needed: the dict is only touched between awaits, on the client's event loop.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._entries[key]


# -- the shells --------------------------------------------------------------------------------


class Client(_Core):
    """A long-lived, thread-safe ECPay client for one merchant: query, capture, refund, abandon.

    ``transport`` is an httpx transport (tests pass ``httpx.MockTransport(emulator.handler)``);
    ``clock`` returns the aware time used for Timestamps and the rules (system UTC by default);
    ``journal`` records operations (in memory by default). One pool of at most
    ``max_connections`` kept-alive connections is reused by every call; close the client (or use
    it as a context manager) when done. Money movement on one order is serialised; different
    orders proceed in parallel.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str = PRODUCTION_URL,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], dt.datetime] | None = None,
        journal: Journal | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        super().__init__(
            credentials,
            base_url=base_url,
            timeout=timeout,
            clock=clock,
            journal=journal,
            max_connections=max_connections,
        )
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise InvalidArgumentType(
                f"transport must be an httpx.BaseTransport, not {type(transport).__name__}"
            )
        self._locks = _ThreadLocks()
        self._http = httpx.Client(
            base_url=self._base_url,
            transport=transport,
            timeout=self._timeout,
            limits=self._limits,
            headers=_HEADERS,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        self._http.close()

    def _drive(self, flow: _Flow[_T]) -> _T:
        """Run a flow to its end: every request it yields is POSTed; errors are thrown in."""
        try:
            request = next(flow)
            while True:
                try:
                    response = self._http.post(request.path, content=_body(request))
                except httpx.HTTPError as exc:
                    request = flow.throw(exc)
                else:
                    request = flow.send(_Reply(response.status_code, response.content))
        except StopIteration as stop:
            return cast(_T, stop.value)
        finally:
            flow.close()

    def _drive_locked(self, merchant_trade_no: str, flow: _Flow[_T]) -> _T:
        with self._locks.hold(self._order_key(merchant_trade_no)):
            return self._drive(flow)

    def query(
        self,
        merchant_trade_no: str,
        *,
        trade_no: str | None = None,
        kind: PaymentKind | None = None,
    ) -> OrderSnapshot:
        """The order as ECPay sees it now (R4): CreditDetail for the state, Cashier/QueryTrade
        for TradeNo and the payment kind unless both ``trade_no`` and ``kind`` are given."""
        return self._drive(self._query(merchant_trade_no, trade_no, kind))

    def capture(self, merchant_trade_no: str, *, idempotency_key: str | None = None) -> Outcome:
        """Close (capture) an authorized order: C, confirmed by a query (R9, R6, R8, R5)."""
        return self._drive_locked(
            *self._money(Intent.CAPTURE, merchant_trade_no, idempotency_key=idempotency_key)
        )

    def refund(
        self,
        merchant_trade_no: str,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
        capture_first: bool = False,
    ) -> Outcome:
        """Return ``amount`` TWD (``None``: all that is left) by the R9 recipe (R10-R13, R18)."""
        return self._drive_locked(
            *self._money(
                Intent.REFUND,
                merchant_trade_no,
                amount=amount,
                capture_first=capture_first,
                idempotency_key=idempotency_key,
            )
        )

    def abandon(self, merchant_trade_no: str, *, idempotency_key: str | None = None) -> Outcome:
        """Release the card hold without capture: N, or E then N on a pending capture (R14, R15)."""
        return self._drive_locked(
            *self._money(Intent.ABANDON, merchant_trade_no, idempotency_key=idempotency_key)
        )

    def do_action(
        self, merchant_trade_no: str, trade_no: str, action: Action | str, amount: int
    ) -> DoActionReply:
        """One raw DoAction for experts: no planner and no re-send, but queried first, journaled,
        locked per order, confirmed by a query and refused on stage like every other action."""
        return self._drive_locked(*self._raw(merchant_trade_no, trade_no, action, amount))

    def reconcile(
        self, merchant_trade_no: str, *, declare: Verdict | str | None = None
    ) -> Reconciliation:
        """Resolve the order's unknown steps by a query (spec 9); sends no DoAction.

        A step the query cannot settle stays unknown (``locked``) unless ``declare`` gives the
        verdict a person established, e.g. from ECPay's merchant back office.
        """
        return self._drive_locked(*self._reconcile(merchant_trade_no, declare))


class AsyncClient(_Core):
    """The asyncio twin of :class:`Client`: the same methods and decisions, awaited.

    Use one per event loop. ``max_connections`` bounds the pool; calls beyond it wait for a
    connection (up to the timeout), so size it to the concurrency you run. Close with
    :meth:`aclose` or ``async with``.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str = PRODUCTION_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], dt.datetime] | None = None,
        journal: Journal | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        super().__init__(
            credentials,
            base_url=base_url,
            timeout=timeout,
            clock=clock,
            journal=journal,
            max_connections=max_connections,
        )
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise InvalidArgumentType(
                f"transport must be an httpx.AsyncBaseTransport, not {type(transport).__name__}"
            )
        self._locks = _TaskLocks()
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            transport=transport,
            timeout=self._timeout,
            limits=self._limits,
            headers=_HEADERS,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def _drive(self, flow: _Flow[_T]) -> _T:
        """Run a flow to its end: every request it yields is POSTed; errors are thrown in."""
        try:
            request = next(flow)
            while True:
                try:
                    response = await self._http.post(request.path, content=_body(request))
                except httpx.HTTPError as exc:
                    request = flow.throw(exc)
                else:
                    request = flow.send(_Reply(response.status_code, response.content))
        except StopIteration as stop:
            return cast(_T, stop.value)
        finally:
            flow.close()

    async def _drive_locked(self, merchant_trade_no: str, flow: _Flow[_T]) -> _T:
        async with self._locks.hold(self._order_key(merchant_trade_no)):
            return await self._drive(flow)

    async def query(
        self,
        merchant_trade_no: str,
        *,
        trade_no: str | None = None,
        kind: PaymentKind | None = None,
    ) -> OrderSnapshot:
        """See :meth:`Client.query`."""
        return await self._drive(self._query(merchant_trade_no, trade_no, kind))

    async def capture(
        self, merchant_trade_no: str, *, idempotency_key: str | None = None
    ) -> Outcome:
        """See :meth:`Client.capture`."""
        return await self._drive_locked(
            *self._money(Intent.CAPTURE, merchant_trade_no, idempotency_key=idempotency_key)
        )

    async def refund(
        self,
        merchant_trade_no: str,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
        capture_first: bool = False,
    ) -> Outcome:
        """See :meth:`Client.refund`."""
        return await self._drive_locked(
            *self._money(
                Intent.REFUND,
                merchant_trade_no,
                amount=amount,
                capture_first=capture_first,
                idempotency_key=idempotency_key,
            )
        )

    async def abandon(
        self, merchant_trade_no: str, *, idempotency_key: str | None = None
    ) -> Outcome:
        """See :meth:`Client.abandon`."""
        return await self._drive_locked(
            *self._money(Intent.ABANDON, merchant_trade_no, idempotency_key=idempotency_key)
        )

    async def do_action(
        self, merchant_trade_no: str, trade_no: str, action: Action | str, amount: int
    ) -> DoActionReply:
        """See :meth:`Client.do_action`."""
        return await self._drive_locked(*self._raw(merchant_trade_no, trade_no, action, amount))

    async def reconcile(
        self, merchant_trade_no: str, *, declare: Verdict | str | None = None
    ) -> Reconciliation:
        """See :meth:`Client.reconcile`."""
        return await self._drive_locked(*self._reconcile(merchant_trade_no, declare))
