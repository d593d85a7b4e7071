"""The operation journal: what the clients record before and after every DoAction.

See docs/ecpay-api.md section 9.

Each money-moving call is one :class:`OperationRecord`, keyed by the caller's idempotency key (or
a generated one). Before a DoAction is sent the record gets an :class:`AttemptRecord` in status
``SENDING``; after the reply (or the confirming query) that attempt becomes ``DONE``,
``NOT_DONE``, ``REFUSED`` or ``UNKNOWN``. A record is saved whole each time, so a durable store
that writes each save atomically never holds a half-updated operation.

R23, one owner per operation: a record names its ``owner`` and the ``lease_until`` of that
ownership, and carries a ``revision``. :meth:`Journal.claim` makes the caller the owner or says
who else is; :meth:`Journal.save` is a compare-and-set on the revision, so a worker that lost
ownership cannot overwrite newer facts (:class:`~ecpay_lifecycle.OwnershipLost`). The decision of
a claim is one pure function, :func:`arbitrate`, that every store applies atomically.

:class:`Journal` is the small protocol a store implements: ``locks`` (its
:class:`~._locks.OrderLocks`), :meth:`~Journal.claim`, :meth:`~Journal.save`,
:meth:`~Journal.get` and :meth:`~Journal.for_order`. Records are frozen values made of plain
data; :meth:`OperationRecord.to_dict` and :meth:`OperationRecord.from_dict` round-trip them
through JSON for a store that keeps text. :class:`InMemoryJournal` is the default: it lives as
long as the process and forgets the oldest finished operations beyond a bound.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import inspect
import json
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import attrs

from ._exceptions import InvalidArgument, InvalidArgumentType, OwnershipLost
from ._locks import OrderLocks, ProcessOrderLocks
from ._models import Action, Intent, OrderSnapshot, PaymentKind, Plan, State, Step, check_aware

__all__ = [
    "AsyncJournal",
    "AttemptRecord",
    "AttemptStatus",
    "Claim",
    "ClaimStatus",
    "InMemoryJournal",
    "Journal",
    "JournalWrapper",
    "OperationRecord",
    "OperationStatus",
    "arbitrate",
    "check_record",
    "check_save",
    "check_text",
    "is_async_journal",
]

_T = TypeVar("_T")


class AttemptStatus(enum.StrEnum):
    """Where one DoAction attempt stands (docs/ecpay-api.md section 9)."""

    #: Recorded just before sending; still there after a crash, so the order stays locked.
    SENDING = "sending"
    #: A query showed the state and closed amount the step expected.
    DONE = "done"
    #: Provably no effect: never sent, TransCode != 1, HTTP 403, or a query showed no change.
    NOT_DONE = "not_done"
    #: ECPay answered RtnCode != 1: processed and refused, no effect.
    REFUSED = "refused"
    #: Sent, and neither the reply nor a query could establish the effect: the order is locked.
    UNKNOWN = "unknown"

    @property
    def open(self) -> bool:
        """Whether the attempt is unresolved, which locks the order (``SENDING``, ``UNKNOWN``)."""
        return self in (AttemptStatus.SENDING, AttemptStatus.UNKNOWN)


class OperationStatus(enum.StrEnum):
    """Where one operation (one capture, refund, abandon or raw DoAction call) stands."""

    #: Planned or under way.
    RUNNING = "running"
    #: Every step took effect; the same idempotency key replays the recorded outcome.
    SUCCEEDED = "succeeded"
    #: Stopped short with its last step not done (refused, rule, transport); the same key resumes.
    STOPPED = "stopped"
    #: A step's outcome is unknown; the order is locked until ``reconcile``.
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """One DoAction sent (or about to be sent) for step ``index`` of an operation's plan.

    ``before`` is the order as last confirmed before this attempt and ``step`` the planned step
    with the state it expects (``None`` for a raw DoAction, which has no plan). ``attempt`` counts
    the sends of this step (2 after one proved not done, R22). ``at`` is the request's Timestamp;
    ``resolvable_at`` the fence (R22): from then on a query showing no change proves the attempt
    not done. ``note`` says, for people, what went wrong; it never holds a secret or ``Data``.
    """

    index: int
    attempt: int
    action: Action
    amount: int
    trade_no: str
    before: OrderSnapshot
    step: Step | None
    status: AttemptStatus
    at: dt.datetime
    rtn_code: int | str | None = None
    rtn_msg: str = ""
    note: str = ""
    resolvable_at: dt.datetime | None = None

    @property
    def expected(self) -> tuple[State, int] | None:
        """The (state, closed amount) a confirming query must show, if the step is planned."""
        if self.step is None:
            return None
        return self.step.state_after, self.step.closed_amount_after

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; :meth:`from_dict` reads them back."""
        return {
            "index": self.index,
            "attempt": self.attempt,
            "action": self.action.value,
            "amount": self.amount,
            "trade_no": self.trade_no,
            "before": snapshot_to_dict(self.before),
            "step": None if self.step is None else step_to_dict(self.step),
            "status": self.status.value,
            "at": self.at.isoformat(),
            "rtn_code": self.rtn_code,
            "rtn_msg": self.rtn_msg,
            "note": self.note,
            "resolvable_at": _iso(self.resolvable_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptRecord:
        """Read what :meth:`to_dict` wrote; anything malformed raises :class:`InvalidArgument`."""
        return _reading(
            "attempt",
            lambda: cls(
                index=_int(data["index"]),
                attempt=_int(data["attempt"]),
                action=Action(data["action"]),
                amount=_int(data["amount"]),
                trade_no=str(data["trade_no"]),
                before=snapshot_from_dict(data["before"]),
                step=None if data["step"] is None else step_from_dict(data["step"]),
                status=AttemptStatus(data["status"]),
                at=_aware(data["at"]),
                rtn_code=_code(data.get("rtn_code")),
                rtn_msg=str(data.get("rtn_msg", "")),
                note=str(data.get("note", "")),
                resolvable_at=_maybe_aware(data.get("resolvable_at")),
            ),
        )


@attrs.frozen(kw_only=True)
class OperationRecord:
    """One money-moving call on one order, as the journal keeps it.

    ``key`` is the caller's idempotency key when ``caller_key`` is True, otherwise a generated
    one. ``request`` is the canonical text of the call's parameters: the same key with another
    request is refused. ``intent`` is ``None`` for a raw DoAction. ``plan`` and ``before`` are set
    once the first query and the planner ran; ``final`` once the last step was done. ``owner`` and
    ``lease_until`` name who runs it now (``None`` when nobody does) and ``revision`` counts its
    saves (R23). ``notes`` hold what people should know, e.g. a query that disagreed with an
    accepted reply (R21). ``sweeps`` and ``next_sweep_at`` are the sweeper's back-off for an
    attempt that stays unknown.
    """

    merchant_id: str
    key: str
    caller_key: bool
    merchant_trade_no: str
    request: str
    intent: Intent | None
    status: OperationStatus
    started_at: dt.datetime
    updated_at: dt.datetime
    plan: Plan | None = None
    before: OrderSnapshot | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    final: OrderSnapshot | None = None
    owner: str | None = None
    lease_until: dt.datetime | None = None
    revision: int = 0
    notes: tuple[str, ...] = ()
    sweeps: int = 0
    next_sweep_at: dt.datetime | None = None

    def owned_by_other(self, owner: str | None, now: dt.datetime) -> bool:
        """Whether someone other than ``owner`` holds a lease that has not lapsed at ``now``."""
        return (
            self.owner is not None
            and self.owner != owner
            and self.lease_until is not None
            and self.lease_until > now
        )

    @property
    def open_attempt(self) -> AttemptRecord | None:
        """The unresolved attempt that locks the order, if any (only ever the last one)."""
        if self.attempts and self.attempts[-1].status.open:
            return self.attempts[-1]
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; :meth:`from_dict` reads them back exactly."""
        return {
            "merchant_id": self.merchant_id,
            "key": self.key,
            "caller_key": self.caller_key,
            "merchant_trade_no": self.merchant_trade_no,
            "request": self.request,
            "intent": None if self.intent is None else self.intent.value,
            "status": self.status.value,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "plan": None if self.plan is None else plan_to_dict(self.plan),
            "before": None if self.before is None else snapshot_to_dict(self.before),
            "attempts": [attempt.to_dict() for attempt in self.attempts],
            "final": None if self.final is None else snapshot_to_dict(self.final),
            "owner": self.owner,
            "lease_until": _iso(self.lease_until),
            "revision": self.revision,
            "notes": list(self.notes),
            "sweeps": self.sweeps,
            "next_sweep_at": _iso(self.next_sweep_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperationRecord:
        """Read what :meth:`to_dict` wrote; anything malformed raises :class:`InvalidArgument`."""
        return _reading(
            "operation",
            lambda: cls(
                merchant_id=str(data["merchant_id"]),
                key=str(data["key"]),
                caller_key=bool(data["caller_key"]),
                merchant_trade_no=str(data["merchant_trade_no"]),
                request=str(data["request"]),
                intent=None if data["intent"] is None else Intent(data["intent"]),
                status=OperationStatus(data["status"]),
                started_at=_aware(data["started_at"]),
                updated_at=_aware(data["updated_at"]),
                plan=None if data["plan"] is None else plan_from_dict(data["plan"]),
                before=None if data["before"] is None else snapshot_from_dict(data["before"]),
                attempts=tuple(AttemptRecord.from_dict(a) for a in data["attempts"]),
                final=None if data["final"] is None else snapshot_from_dict(data["final"]),
                owner=_text_or_none(data.get("owner")),
                lease_until=_maybe_aware(data.get("lease_until")),
                revision=_int(data.get("revision", 0)),
                notes=_texts(data.get("notes", [])),
                sweeps=_int(data.get("sweeps", 0)),
                next_sweep_at=_maybe_aware(data.get("next_sweep_at")),
            ),
        )


class ClaimStatus(enum.StrEnum):
    """What :meth:`Journal.claim` found for an idempotency key (R23)."""

    #: The caller owns the operation now: a new record, or an existing one nobody runs (or whose
    #: owner's lease lapsed, or that the caller already owned).
    OWNER = "owner"
    #: Another owner holds a live lease: the caller must not run it too.
    BUSY = "busy"
    #: The operation succeeded: the caller replays its outcome.
    FINISHED = "finished"
    #: The key names another request (another order or parameters): refused.
    CONFLICT = "conflict"


@attrs.frozen(kw_only=True)
class Claim:
    """The answer of :meth:`Journal.claim`: a status and the record as stored now.

    ``created`` is True when the record is new; ``taken_over`` when the caller took the record
    from another owner whose lease had lapsed (it must resolve any open attempt first, R22).
    """

    status: ClaimStatus
    record: OperationRecord
    created: bool = False
    taken_over: bool = False


def arbitrate(
    existing: OperationRecord | None, fresh: OperationRecord, now: dt.datetime
) -> tuple[Claim, OperationRecord | None]:
    """Decide a claim of ``fresh`` (which names the would-be owner and lease) against what the
    store holds; return the answer and the record to write (``None``: write nothing).

    Every store calls this inside one atomic read-and-write, so all stores decide alike (R23).
    A claim must name its owner and lease, and ``now`` must be aware.
    """
    check_aware(now, field="now")
    if fresh.owner is None or fresh.lease_until is None:
        raise InvalidArgument("a claim names its owner and its lease_until (R23)")
    if existing is None:
        stored = attrs.evolve(fresh, revision=1)
        return Claim(status=ClaimStatus.OWNER, record=stored, created=True), stored
    if (existing.merchant_trade_no, existing.request) != (fresh.merchant_trade_no, fresh.request):
        return Claim(status=ClaimStatus.CONFLICT, record=existing), None
    if existing.status is OperationStatus.SUCCEEDED:
        return Claim(status=ClaimStatus.FINISHED, record=existing), None
    if existing.owned_by_other(fresh.owner, now):
        return Claim(status=ClaimStatus.BUSY, record=existing), None
    taken_over = existing.owner is not None and existing.owner != fresh.owner
    stored = attrs.evolve(
        existing,
        owner=fresh.owner,
        lease_until=fresh.lease_until,
        updated_at=now,
        revision=existing.revision + 1,
    )
    return Claim(status=ClaimStatus.OWNER, record=stored, taken_over=taken_over), stored


def check_record(record: object) -> None:
    """A store's argument check: ``record`` must be an :class:`OperationRecord`."""
    if not isinstance(record, OperationRecord):
        raise InvalidArgumentType(f"record must be an OperationRecord, not {type(record).__name__}")


def check_text(**values: object) -> None:
    """A store's argument check: every value named must be a ``str``."""
    for name, value in values.items():
        if not isinstance(value, str):
            raise InvalidArgumentType(f"{name} must be a str, not {type(value).__name__}")


def check_save(stored: tuple[int, str, str] | None, record: OperationRecord) -> OperationRecord:
    """Decide a conditional save (R23): ``stored`` is what the store holds for the record's key
    as (revision, merchant_trade_no, request), or None. Return the record to write (revision +
    1); raise :class:`~ecpay_lifecycle.OwnershipLost` when the revision moved, and
    :class:`InvalidArgument` when the save would change what the operation is. Every store calls
    this inside one atomic read-and-write, as it calls :func:`arbitrate` for claims."""
    if stored is not None and stored[1:] != (record.merchant_trade_no, record.request):
        raise InvalidArgument(
            f"journal record {record.key!r} names another order or request than the "
            "stored one; a save never changes what an operation is"
        )
    if stored is None or stored[0] != record.revision:
        raise OwnershipLost(
            f"journal record {record.key!r} changed since this worker read it (revision "
            f"{record.revision}, now {None if stored is None else stored[0]}): another worker "
            "owns or resolved the operation; nothing more is sent",
            merchant_trade_no=record.merchant_trade_no,
        )
    return attrs.evolve(record, revision=record.revision + 1)


@runtime_checkable
class Journal(Protocol):
    """Where the clients record operations. A few methods, plain values.

    See docs/ecpay-api.md section 9.

    A store must make each call atomic; a durable one must have written a record before
    :meth:`save` returns, because the client sends a DoAction right after saving ``SENDING``.
    ``locks`` are the per-order locks every client sharing this journal uses.
    """

    @property
    def locks(self) -> OrderLocks:
        """The per-order locks that come with this store (order serialisation).

        See docs/ecpay-api.md section 9.
        """

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """Atomically decide by :func:`arbitrate` and write what it says (R23)."""

    def save(self, record: OperationRecord) -> OperationRecord:
        """Replace the stored record if its revision is still ``record.revision`` and return it
        as stored (revision + 1); otherwise raise :class:`~ecpay_lifecycle.OwnershipLost`."""

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """The record of one operation, if kept."""

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        """Every record kept for one order, oldest first (the lock check reads these)."""

    def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> Sequence[OperationRecord]:
        """Records with an open attempt or an owner (the sweeper's work), least recently
        updated first, at most ``limit``. A durable store answers from an index."""


class AsyncJournal(Protocol):
    """A :class:`Journal` whose calls are coroutines (:class:`~ecpay_lifecycle.
    AsyncPostgresJournal`): the same methods, the same promises, awaited. Only
    :class:`~ecpay_lifecycle.AsyncClient` takes one; it awaits each call, so a journal write
    never blocks the event loop. Its ``locks`` are awaited with ``ahold``."""

    @property
    def locks(self) -> OrderLocks:
        """The per-order locks that come with this store (awaited with ``ahold``)."""

    async def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """See :meth:`Journal.claim`."""

    async def save(self, record: OperationRecord) -> OperationRecord:
        """See :meth:`Journal.save`."""

    async def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """See :meth:`Journal.get`."""

    async def for_order(
        self, merchant_id: str, merchant_trade_no: str
    ) -> Sequence[OperationRecord]:
        """See :meth:`Journal.for_order`."""

    async def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> Sequence[OperationRecord]:
        """See :meth:`Journal.open_operations`."""


def is_async_journal(journal: object) -> bool:
    """Whether ``journal``'s calls are coroutines (an :class:`AsyncJournal`)."""
    return inspect.iscoroutinefunction(getattr(journal, "claim", None))


class JournalWrapper:
    """A :class:`Journal` that hands every call to another one; subclass it to watch or change
    one call (the demo's dying worker, the tests' crash points) without rewriting the rest."""

    def __init__(self, journal: Journal) -> None:
        self.wrapped = journal

    @property
    def locks(self) -> OrderLocks:
        """The wrapped journal's locks."""
        return self.wrapped.locks

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """See :meth:`Journal.claim`."""
        return self.wrapped.claim(record, now=now)

    def save(self, record: OperationRecord) -> OperationRecord:
        """See :meth:`Journal.save`."""
        return self.wrapped.save(record)

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """See :meth:`Journal.get`."""
        return self.wrapped.get(merchant_id, key)

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        """See :meth:`Journal.for_order`."""
        return self.wrapped.for_order(merchant_id, merchant_trade_no)

    def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> Sequence[OperationRecord]:
        """See :meth:`Journal.open_operations`."""
        return self.wrapped.open_operations(merchant_id, limit=limit)


#: Finished records :class:`InMemoryJournal` keeps as values before packing them.
HOT_RECORDS: Final = 64


class InMemoryJournal:
    """The default :class:`Journal`: a dict in this process, safe to share between threads.

    It keeps at most ``max_operations`` records, forgetting the least recently saved finished
    ones first; a record with an unresolved attempt or an owner is never forgotten, because it
    locks its order. What it forgets, an idempotency key no longer replays, and a crash forgets
    everything: give the clients a durable journal where keys must outlive the process or the
    bound. Its :attr:`locks` serialise the threads and tasks of this process.

    A finished record is kept flat, as compressed JSON built back into a value when read: a few
    hundred bytes and no object for the garbage collector to walk per operation, so a journal
    of 100,000 replayable keys costs a full collection next to nothing. The last
    :data:`HOT_RECORDS` finished stay values (the operations that follow on the same orders
    read them). Forgetting the oldest is constant-time whatever stays unresolved
    (benchmarks/bench_journal_memory.py).
    """

    def __init__(self, *, max_operations: int = 10_000) -> None:
        if isinstance(max_operations, bool) or not isinstance(max_operations, int):
            raise InvalidArgumentType("max_operations must be an int")
        if max_operations < 1:
            raise InvalidArgument(f"max_operations must be at least 1, got {max_operations}")
        self._max = max_operations
        self._lock = threading.Lock()
        self._locks = ProcessOrderLocks()
        # Records are found by one str, "merchant NUL key" (a tuple would cost its own object).
        # Unfinished records (an open attempt or an owner), as values: few, and read often.
        self._live: dict[str, OperationRecord] = {}
        # Finished records, least recently saved first: the record itself while among the last
        # HOT_RECORDS finished (listed in _hot), then one bytes object (see _pack).
        self._done: collections.OrderedDict[str, OperationRecord | bytes] = (
            collections.OrderedDict()
        )
        self._hot: collections.OrderedDict[str, None] = collections.OrderedDict()
        # "merchant NUL order" -> its records' ids, oldest first: the id itself (the same str
        # object as the key above) for an order with one operation, else a tuple of them.
        self._by_order: dict[str, str | tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"InMemoryJournal({len(self)} operations, max {self._max})"

    def __len__(self) -> int:
        return len(self._live) + len(self._done)

    @property
    def locks(self) -> ProcessOrderLocks:
        """See :attr:`Journal.locks`: locks for the threads and tasks of this process."""
        return self._locks

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """See :meth:`Journal.claim`."""
        with self._lock:
            claim, write = arbitrate(self._read(_id(record.merchant_id, record.key)), record, now)
            if write is not None:
                self._store(write)
            return claim

    def save(self, record: OperationRecord) -> OperationRecord:
        """See :meth:`Journal.save`."""
        with self._lock:
            stored = self._read(_id(record.merchant_id, record.key))
            written = check_save(
                None
                if stored is None
                else (stored.revision, stored.merchant_trade_no, stored.request),
                record,
            )
            self._store(written)
            return written

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """See :meth:`Journal.get`."""
        with self._lock:
            return self._read(_id(merchant_id, key))

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        """See :meth:`Journal.for_order`."""
        with self._lock:
            ids = _ids(self._by_order.get(_id(merchant_id, merchant_trade_no), ()))
            return [record for ident in ids if (record := self._read(ident)) is not None]

    def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> Sequence[OperationRecord]:
        """See :meth:`Journal.open_operations`: the unfinished records only, kept apart."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"limit must be a positive int, got {limit!r}")
        with self._lock:
            found = [
                record
                for record in self._live.values()
                if merchant_id is None or record.merchant_id == merchant_id
            ]
        found.sort(key=lambda record: record.updated_at)
        return found[:limit]

    def _read(self, ident: str) -> OperationRecord | None:
        live = self._live.get(ident)
        if live is not None:
            return live
        done = self._done.get(ident)
        if done is None or isinstance(done, OperationRecord):
            return done
        return _unpack(done)

    def _store(self, record: OperationRecord) -> None:
        ident = _id(record.merchant_id, record.key)
        order = _id(record.merchant_id, record.merchant_trade_no)
        known = self._by_order.get(order)
        ids = () if known is None else _ids(known)
        stored = next((k for k in ids if k == ident), None)
        if stored is None:
            # New: index it under its order (a save never changes an operation's order).
            self._by_order[order] = ident if known is None else (*ids, ident)
        else:
            ident = stored  # one str object for the index and the store
        if record.open_attempt is None and record.owner is None:
            self._live.pop(ident, None)
            self._done[ident] = record
            self._done.move_to_end(ident)
            self._hot[ident] = None
            self._hot.move_to_end(ident)
            if len(self._hot) > HOT_RECORDS:
                cooled, _ = self._hot.popitem(last=False)
                value = self._done.get(cooled)
                if isinstance(value, OperationRecord):
                    self._done[cooled] = _pack(value)  # keeps its place in the order
        else:
            self._done.pop(ident, None)
            self._hot.pop(ident, None)
            self._live[ident] = record
        # Forget the least recently saved finished records: O(1) each, whatever is unresolved.
        while len(self) > self._max and self._done:
            ident, value = self._done.popitem(last=False)
            self._hot.pop(ident, None)
            merchant_id = ident[: ident.index("\x00")]
            if isinstance(value, OperationRecord):
                order = _id(merchant_id, value.merchant_trade_no)
            else:
                order = _id(merchant_id, value[: value.index(0)].decode())
            kept = tuple(k for k in _ids(self._by_order.get(order, ())) if k != ident)
            if len(kept) > 1:
                self._by_order[order] = kept
            elif kept:
                self._by_order[order] = kept[0]
            else:
                self._by_order.pop(order, None)


def _id(merchant_id: str, name: str) -> str:
    """One str for a (merchant, key or order) pair; NUL appears in neither (check_text)."""
    return f"{merchant_id}\x00{name}"


def _ids(found: str | tuple[str, ...]) -> tuple[str, ...]:
    return (found,) if isinstance(found, str) else found


def _sample_record_text() -> bytes:
    """The text every packed record is compressed against (zlib's preset dictionary): field
    names and the common values of a record, so each record stores only what is its own."""
    snapshot = {
        "merchant_trade_no": "",
        "trade_no": "",
        "amount": 1000,
        "state": "closed",
        "authorized_at": "2026-01-01T10:00:00+08:00",
        "closed_amount": 1000,
        "kind": "one_time",
        "auto_close": True,
        "capture_settled": True,
    }
    step = {
        "action": "R",
        "amount": 300,
        "state_after": "to_close",
        "closed_amount_after": 700,
        "capture_settled_after": True,
        "rule": "R10",
    }
    attempt = {
        "index": 0,
        "attempt": 1,
        "action": "R",
        "amount": 300,
        "trade_no": "",
        "before": snapshot,
        "step": step,
        "status": "done",
        "at": "2026-01-01T10:00:00+08:00",
        "rtn_code": 1,
        "rtn_msg": "Succeeded.",
        "note": "accepted (R21)",
        "resolvable_at": "2026-01-01T10:15:00+08:00",
    }
    record = {
        "merchant_id": "",
        "key": "refund-",
        "caller_key": True,
        "merchant_trade_no": "",
        "request": "refund amount=all capture_first=False",
        "intent": "refund",
        "status": "succeeded",
        "started_at": "2026-01-01T10:00:00+08:00",
        "updated_at": "2026-01-01T10:00:00+08:00",
        "plan": {
            "intent": "refund",
            "merchant_trade_no": "",
            "steps": [step],
            "refund_total": 300,
            "reason": "R9: a captured order is refunded with R",
        },
        "before": snapshot,
        "attempts": [attempt],
        "final": snapshot,
        "owner": None,
        "lease_until": None,
        "revision": 4,
        "notes": [],
        "sweeps": 0,
        "next_sweep_at": None,
    }
    return json.dumps(record, separators=(",", ":")).encode()


_ZDICT: Final = _sample_record_text()


def _pack(record: OperationRecord) -> bytes:
    """The order's number (ASCII letters and digits), a NUL, and the record as JSON compressed
    against :data:`_ZDICT`: one flat bytes object."""
    packer = zlib.compressobj(level=9, zdict=_ZDICT)
    text = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False)
    head = record.merchant_trade_no.encode() + b"\x00"
    return head + packer.compress(text.encode()) + packer.flush()


def _unpack(data: bytes) -> OperationRecord:
    unpacker = zlib.decompressobj(zdict=_ZDICT)
    packed = memoryview(data)[data.index(0) + 1 :]
    return OperationRecord.from_dict(json.loads(unpacker.decompress(packed) + unpacker.flush()))


# Plain-value forms of the domain values a record holds. The domain values validate themselves
# on construction, so reading a tampered record fails with their typed errors.


def snapshot_to_dict(snapshot: OrderSnapshot) -> dict[str, Any]:
    """An :class:`OrderSnapshot` as plain JSON-ready values."""
    return {
        "merchant_trade_no": snapshot.merchant_trade_no,
        "trade_no": snapshot.trade_no,
        "amount": snapshot.amount,
        "state": snapshot.state.value,
        "authorized_at": snapshot.authorized_at.isoformat(),
        "closed_amount": snapshot.closed_amount,
        "kind": snapshot.kind.value,
        "auto_close": snapshot.auto_close,
        "capture_settled": snapshot.capture_settled,
    }


def snapshot_from_dict(data: Mapping[str, Any]) -> OrderSnapshot:
    """Read :func:`snapshot_to_dict` output back."""
    return _reading(
        "snapshot",
        lambda: OrderSnapshot(
            merchant_trade_no=data["merchant_trade_no"],
            trade_no=data["trade_no"],
            amount=data["amount"],
            state=State(data["state"]),
            authorized_at=_aware(data["authorized_at"]),
            closed_amount=data["closed_amount"],
            kind=PaymentKind(data["kind"]),
            auto_close=data["auto_close"],
            capture_settled=data["capture_settled"],
        ),
    )


def step_to_dict(step: Step) -> dict[str, Any]:
    """A planned :class:`Step` as plain JSON-ready values."""
    return {
        "action": step.action.value,
        "amount": step.amount,
        "state_after": step.state_after.value,
        "closed_amount_after": step.closed_amount_after,
        "capture_settled_after": step.capture_settled_after,
        "rule": step.rule,
    }


def step_from_dict(data: Mapping[str, Any]) -> Step:
    """Read :func:`step_to_dict` output back."""
    return _reading(
        "step",
        lambda: Step(
            action=Action(data["action"]),
            amount=_int(data["amount"]),
            state_after=State(data["state_after"]),
            closed_amount_after=_int(data["closed_amount_after"]),
            capture_settled_after=bool(data["capture_settled_after"]),
            rule=str(data["rule"]),
        ),
    )


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """A :class:`Plan` as plain JSON-ready values."""
    return {
        "intent": plan.intent.value,
        "merchant_trade_no": plan.merchant_trade_no,
        "steps": [step_to_dict(step) for step in plan.steps],
        "refund_total": plan.refund_total,
        "reason": plan.reason,
    }


def plan_from_dict(data: Mapping[str, Any]) -> Plan:
    """Read :func:`plan_to_dict` output back."""
    return _reading(
        "plan",
        lambda: Plan(
            intent=Intent(data["intent"]),
            merchant_trade_no=str(data["merchant_trade_no"]),
            steps=tuple(step_from_dict(step) for step in data["steps"]),
            refund_total=_int(data["refund_total"]),
            reason=str(data["reason"]),
        ),
    )


def _reading(what: str, build: Callable[[], _T]) -> _T:
    """Run ``build``; a missing key or a bad value becomes one typed error naming ``what``."""
    try:
        return build()
    except (InvalidArgument, InvalidArgumentType):
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"malformed journal {what}: {type(exc).__name__}: {exc}") from exc


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return value


def _code(value: object) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    return _int(value)


def _text_or_none(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a str or null, got {type(value).__name__}")


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of str")
    return tuple(value)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _maybe_aware(value: object) -> dt.datetime | None:
    return None if value is None else _aware(value)


def _aware(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 text, got {type(value).__name__}")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}")
    return parsed
