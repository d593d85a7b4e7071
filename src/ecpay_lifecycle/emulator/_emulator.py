"""The :class:`Emulator`: ECPay's three credit endpoints, stateful, on a clock that tests move.

Front doors: :attr:`Emulator.handler` / :attr:`Emulator.async_handler` for
``httpx.MockTransport`` and :meth:`Emulator.asgi_app` for any ASGI server. All three share one
request pipeline: read the envelope (section 2), pick an armed fault, apply the request to the
:class:`~._state.Ledger` (sections 3-7), shape the reply. A DoAction let in by ``Fault.LATE_APPLY``
waits in a queue of landings until the clock reaches its moment (section 9, R22). One re-entrant
lock guards all state. Sections are those of docs/ecpay-api.md.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import enum
import itertools
import json
import threading
import time
import types
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from ecpay_lifecycle._codec import Secret
from ecpay_lifecycle._exceptions import (
    CodecError,
    ConfigurationError,
    InvalidArgument,
    InvalidArgumentType,
)
from ecpay_lifecycle._models import (
    Action,
    GatewayStatus,
    OrderSnapshot,
    PaymentKind,
    check_order_number,
)

from ._events import Event, EventKind, Landing
from ._faults import Endpoint, Fault, FaultRule, Faults
from ._persist import FORMAT, VERSION, Reader, settings_from_json, settings_to_json
from ._settings import EmulatorSettings, Refusal
from ._state import Ledger, MerchantView, OrderView, _Merchant, _Order
from ._wire import (
    DECRYPT_FAIL,
    STALE_TIMESTAMP,
    TRANS_MESSAGES,
    EnvelopeProblem,
    credit_detail_reply,
    echo,
    garble,
    other_number,
    query_trade_reply,
    read_envelope,
)

__all__ = ["AsgiApp", "Emulator"]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
#: A landing so far away that it overflows the calendar never lands.
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)
#: How many batch or day-rule happenings (one order each) run under one hold of the lock while
#: the clock moves: small enough that a request waits at most a millisecond or two.
_PIECE = 32
#: How long a clock move steps aside for a request that knocked: enough for a woken thread to
#: take the lock, short enough that a move over two years of batches loses little time.
_STEP_ASIDE = 0.0005


class _Failure(enum.Enum):
    """What the transport does instead of delivering the reply."""

    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    DISCONNECT = "disconnect"
    RESET = "reset"


@attrs.frozen
class _Reply:
    """A finished answer; ``failure`` (with ``hang`` seconds for real servers) hides it."""

    status: int
    body: bytes
    content_type: str = _JSON
    failure: _Failure | None = None
    hang: float = 0.0


@attrs.frozen
class _Received:
    """A request whose envelope decrypted, waiting (maybe after a DELAY) to be processed.

    ``timestamp`` is its ``RqHeader.Timestamp`` (epoch seconds), ``received_at`` the emulator
    time it arrived.
    """

    endpoint: Endpoint
    merchant: _Merchant
    inner: dict[str, Any]
    action: Action | None
    rule: FaultRule | None
    timestamp: float
    received_at: dt.datetime

    @property
    def delay(self) -> float:
        return self.rule.seconds if self.rule and self.rule.fault is Fault.DELAY else 0.0


@attrs.frozen(eq=False)
class _Landing:
    """A DoAction in flight (``Fault.LATE_APPLY``): it lands at ``at``; ``seq`` breaks ties."""

    seq: int
    at: dt.datetime
    got: _Received

    def view(self) -> Landing:
        inner = self.got.inner
        amount = inner.get("TotalAmount")
        return Landing(
            at=self.at,
            received_at=self.got.received_at,
            timestamp=dt.datetime.fromtimestamp(self.got.timestamp, dt.UTC),
            merchant_id=echo(inner.get("MerchantID")) or self.got.merchant.merchant_id,
            merchant_trade_no=echo(inner.get("MerchantTradeNo")) or None,
            action=self.got.action,
            amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
            request=types.MappingProxyType(inner),
        )


@attrs.frozen
class _Outcome:
    """What processing a request did: the inner reply, whether the order changed, why not."""

    reply: dict[str, Any]
    applied: bool = False
    refusal: Refusal | None = None
    merchant_trade_no: str | None = None
    amount: int | None = None


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Emulator:
    """A faithful, stateful, local stand-in for ECPay's credit-card endpoints (section 10).

    It keeps merchants and orders, a clock that tests move (:meth:`advance`, :meth:`set_time`)
    and that may also run in real time (``realtime=True``); the 20:15 Asia/Taipei batch and the
    day rules R6/R7 happen as it passes them. It enforces every rule of section 7 with its own
    code, answers in ECPay's envelope
    and shapes, logs every event (:meth:`applied_do_actions` counts the money movements), and
    injects faults on demand (:attr:`faults`), among them DoActions that land after the client
    gave up (:meth:`pending_landings`) and CreditDetail answers from older data. Thread-safe.

    >>> import datetime as dt, httpx
    >>> from ecpay_lifecycle.emulator import Emulator
    >>> emulator = Emulator(now=dt.datetime(2026, 8, 1, 9, 30, tzinfo=dt.timezone.utc))
    >>> emulator.add_merchant("3002607", "ejCk326UnaZWKisg", "q9jcZX8Ib9LM8wYk")
    >>> trade_no = emulator.authorize("3002607", "A1", 1000)
    >>> emulator.order("3002607", "A1").status
    <GatewayStatus.AUTHORIZED: ('已授權', 'Authorized')>
    >>> http = httpx.Client(transport=httpx.MockTransport(emulator.handler))
    """

    def __init__(
        self,
        *,
        now: dt.datetime,
        settings: EmulatorSettings | None = None,
        max_events: int | None = 100_000,
        realtime: bool = False,
    ) -> None:
        """Start the emulator's clock at ``now`` (timezone-aware) with ``settings``.

        The event log keeps the last ``max_events`` events (None: all of them). With
        ``realtime`` the clock runs from ``now`` at the speed of the wall clock (measured with
        :func:`time.monotonic`); otherwise it stands still until moved.
        """
        if not isinstance(realtime, bool):
            raise InvalidArgumentType(f"realtime must be a bool, not {type(realtime).__name__}")
        if settings is None:
            settings = EmulatorSettings()
        if not isinstance(settings, EmulatorSettings):
            raise InvalidArgumentType(
                f"settings must be EmulatorSettings, not {type(settings).__name__}"
            )
        if max_events is not None and (
            isinstance(max_events, bool) or not isinstance(max_events, int)
        ):
            raise InvalidArgumentType("max_events must be an int or None")
        if max_events is not None and max_events < 0:
            raise InvalidArgument(f"max_events must be >= 0, got {max_events}")
        self._lock = threading.RLock()
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self._seq = 0
        self._ledger = Ledger(now, settings, self._record)
        self._landings: list[_Landing] = []
        self._landing_seq = itertools.count(1)
        self.faults = Faults(self._lock)
        #: Real time: the emulator time at a monotonic instant; None: the clock is frozen.
        self._anchor: tuple[dt.datetime, float] | None = (
            (self._ledger.now, time.monotonic()) if realtime else None
        )
        #: Held by whoever moves the clock over batches (one at a time); never by a request
        #: that only passes by, so a long move never makes other requests wait.
        self._mover = threading.Lock()
        self._moves = 0
        #: Counts requests arriving (see :meth:`_let_in`); races only lose a count, harmlessly.
        self._knocks = 0

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Emulator now={self._ledger.now.isoformat()} "
                f"merchants={len(self._ledger.merchants)} orders={len(self._ledger.orders)}>"
            )

    # -- the clock ---------------------------------------------------------------------------

    @property
    def settings(self) -> EmulatorSettings:
        """The settings this emulator runs with (immutable)."""
        return self._ledger.settings

    @property
    def realtime(self) -> bool:
        """Whether the clock runs by itself at the speed of the wall clock."""
        return self._anchor is not None

    @property
    def now(self) -> dt.datetime:
        """The emulator's current time."""
        self.catch_up()
        with self._lock:
            return self._ledger.now

    def clock(self) -> dt.datetime:
        """The emulator's current time; pass ``clock=emulator.clock`` to a client (R20)."""
        self.catch_up()
        with self._lock:
            return self._ledger.now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        """Move the clock forward by ``delta`` and return the new time.

        Every 20:15 Asia/Taipei batch crossed runs once, in order (R5), the R7 day rules of
        auto-close-off merchants happen when their moment passes, and DoActions in flight
        (:meth:`pending_landings`) land at theirs, interleaved in time order. Requests go on
        while the clock moves: the work runs a few orders at a time and each request meanwhile
        sees the emulator at the moment the clock has reached. A negative ``delta`` raises
        :class:`InvalidArgument` and changes nothing. In real time the clock runs on from the
        new time.
        """
        if not isinstance(delta, dt.timedelta):
            raise InvalidArgumentType(f"delta must be a timedelta, not {type(delta).__name__}")
        with self._mover:
            with self._lock:
                base = self._base()
                try:
                    target = base + delta
                except OverflowError as exc:
                    raise InvalidArgument(f"advancing by {delta} leaves the calendar") from exc
                self._ledger.check_move(target, floor=base)
            self._jump(target)
        return target

    def set_time(self, when: dt.datetime) -> None:
        """Move the clock forward to ``when`` (aware); like :meth:`advance`. Never backwards:
        an earlier time (in real time: earlier than the running clock) raises
        :class:`InvalidArgument` and changes nothing."""
        with self._mover:
            with self._lock:
                target = self._ledger.check_move(when, floor=self._base())
            self._jump(target)

    def catch_up(self) -> None:
        """In real time, bring the emulator up to the running clock now: the batches, day rules
        and late landings due since the last call happen, each at its own moment.

        Every method does this first by itself; a server calls it off its event loop so that
        the work never holds up other requests. A frozen clock has nothing to catch up. While
        another thread moves the clock this returns at once: requests are served at the moment
        that move has reached.
        """
        if self._glide():
            return
        target = self._wall()
        if not self._mover.acquire(blocking=False):
            return
        try:
            with self._lock:
                try:
                    self._ledger.check_move(target)
                except InvalidArgument:
                    return  # the calendar ends here: the clock stops
            self._run_clock(target)
        finally:
            self._mover.release()

    def _glide(self) -> bool:
        """The cheap part of :meth:`catch_up`: bring the clock to the running clock's time if
        nothing happens on the way; whether the emulator is caught up (frozen: always). Knocks
        for the caller, so that a clock move in progress lets it in."""
        self._knocks += 1
        if self._anchor is None:
            return True
        target = self._wall()
        with self._lock:
            if target <= self._ledger.now:
                return True
            first_landing = min((landing.at for landing in self._landings), default=None)
            return (first_landing is None or target < first_landing) and self._ledger.glide(target)

    def _wall(self) -> dt.datetime:
        """Where the running clock is now (the ledger's time when frozen)."""
        if self._anchor is None:
            return self._ledger.now
        at, mark = self._anchor
        try:
            return at + dt.timedelta(seconds=time.monotonic() - mark)
        except OverflowError:
            return at

    def _base(self) -> dt.datetime:
        """The time a jump starts from: the ledger's, or the running clock's if ahead."""
        return max(self._ledger.now, self._wall())

    def _jump(self, target: dt.datetime) -> None:
        """Run the clock to ``target`` (checked, mover held) and, in real time, run on from it."""
        self._run_clock(target)
        with self._lock:
            self._moves += 1
            if self._anchor is not None:
                self._anchor = (max(target, self._ledger.now), time.monotonic())

    def _run_clock(self, target: dt.datetime) -> None:
        """Move the ledger to ``target`` (checked), stopping at each moment where something
        happens; the lock is released between pieces of at most ``_PIECE`` happenings, so
        requests interleave and each sees a consistent moment. The caller holds the mover."""
        seen = self._knocks
        while True:
            with self._lock:
                ledger = self._ledger
                queued = self._queued()
                if queued and queued[0].at <= ledger.now:
                    # At its moment, after everything else that happens then (R22's fence).
                    self._land(queued[0])
                    continue
                if ledger.now >= target:
                    return
                happenings = ledger.step_toward(target, queued[0].at if queued else None)
            for start in range(0, len(happenings), _PIECE):
                with self._lock:
                    for happen in happenings[start : start + _PIECE]:
                        happen()
                seen = self._let_in(seen)
            seen = self._let_in(seen)

    def _let_in(self, seen: int) -> int:
        """Between two pieces of a move: if a request knocked since ``seen``, step aside long
        enough for it to take the lock (a released lock is not handed over: the mover would
        take it back at once and starve the request)."""
        knocks = self._knocks
        if knocks != seen:
            time.sleep(_STEP_ASIDE)
        return knocks

    def next_batch(self) -> dt.datetime:
        """The next daily batch instant after the clock (20:15 Asia/Taipei by default, R5)."""
        self.catch_up()
        with self._lock:
            return self._ledger.next_batch()

    # -- set-up for tests --------------------------------------------------------------------

    def add_merchant(
        self,
        merchant_id: str,
        hash_key: str,
        hash_iv: str,
        *,
        auto_close: bool = True,
        balance: int = 0,
        platform_id: str | None = None,
    ) -> None:
        """Register a merchant with its HashKey/HashIV (16 ASCII bytes each, R1).

        ``auto_close`` is the daily auto-close setting (R5-R7), ``balance`` its ECPay account
        balance in TWD (R16), ``platform_id`` the platform that may act for it (section 3).
        The key and IV never appear in a repr, the event log, an error message or the locals of
        a frame in an error's traceback (even when the arguments are swapped).
        """
        given = (merchant_id, hash_key, hash_iv, platform_id)
        merchant, key, iv, platform = (Secret[object](value) for value in given)
        del merchant_id, hash_key, hash_iv, platform_id, given
        self.catch_up()
        with self._lock:
            self._ledger.add_merchant(
                merchant, key, iv, auto_close=auto_close, balance=balance, platform_id=platform
            )

    def authorize(
        self,
        merchant_id: str,
        merchant_trade_no: str,
        amount: int,
        *,
        kind: PaymentKind = PaymentKind.ONE_TIME,
        at: dt.datetime | None = None,
    ) -> str:
        """Create a card authorization and return ECPay's 16-digit TradeNo.

        The order starts Authorized (UnionPay: closed, R8). ``at`` (default: now, never in the
        future) backdates it; the batches and day rules it missed are applied at once. A
        duplicate MerchantTradeNo or a bad amount raises :class:`InvalidArgument`.
        """
        self.catch_up()
        with self._lock:
            return self._ledger.authorize(merchant_id, merchant_trade_no, amount, kind=kind, at=at)

    def balance(self, merchant_id: str) -> int:
        """The merchant's ECPay balance in TWD (R16)."""
        self.catch_up()
        with self._lock:
            return self._ledger.merchant(merchant_id).balance

    def set_balance(self, merchant_id: str, balance: int) -> None:
        """Set the merchant's ECPay balance (to test R16)."""
        self.catch_up()
        with self._lock:
            self._ledger.set_balance(merchant_id, balance)

    def set_status(self, merchant_id: str, merchant_trade_no: str, status: GatewayStatus) -> None:
        """Force a status that only the bank or ECPay reach (``UNAUTHORIZED``, ``BANK_REJECTED``,
        ``BANK_RECLAIMING``, ...), to test how a client treats non-actionable orders (R3).

        DoAction on such an order is refused; the batch leaves it alone.
        """
        self.catch_up()
        with self._lock:
            self._ledger.set_status(self._ledger.order(merchant_id, merchant_trade_no), status)

    # -- inspection --------------------------------------------------------------------------

    def merchants(self) -> tuple[MerchantView, ...]:
        """Views of every merchant, in the order they were added (no HashKey or HashIV)."""
        self.catch_up()
        with self._lock:
            return tuple(
                MerchantView(
                    merchant_id=merchant.merchant_id,
                    auto_close=merchant.auto_close,
                    balance=merchant.balance,
                    platform_id=merchant.platform_id,
                )
                for merchant in self._ledger.merchants.values()
            )

    def order(self, merchant_id: str, merchant_trade_no: str) -> OrderView:
        """A frozen view of one order; an unknown order raises :class:`InvalidArgument`."""
        self.catch_up()
        with self._lock:
            return self._ledger.view(self._ledger.order(merchant_id, merchant_trade_no))

    def orders(self, merchant_id: str | None = None) -> tuple[OrderView, ...]:
        """Views of every order (of one merchant), in the order they were authorized."""
        self.catch_up()
        with self._lock:
            return tuple(
                self._ledger.view(order)
                for order in self._ledger.orders.values()
                if merchant_id is None or order.merchant.merchant_id == merchant_id
            )

    def snapshot(self, merchant_id: str, merchant_trade_no: str) -> OrderSnapshot:
        """The order as an :class:`~ecpay_lifecycle.OrderSnapshot`: the truth to compare a
        client's or planner's belief with (differential tests)."""
        self.catch_up()
        with self._lock:
            return self._ledger.snapshot(self._ledger.order(merchant_id, merchant_trade_no))

    @property
    def events(self) -> tuple[Event, ...]:
        """The event log, oldest first."""
        self.catch_up()
        with self._lock:
            return tuple(self._events)

    def clear_events(self) -> None:
        """Empty the event log (sequence numbers keep counting)."""
        with self._lock:
            self._events.clear()

    def applied_do_actions(
        self, merchant_id: str | None = None, merchant_trade_no: str | None = None
    ) -> tuple[Event, ...]:
        """The DoActions that changed an order (REQUEST events with ``applied``), oldest first,
        of one merchant and/or order: how tests count money movements, late landings included.

        Counts what the event log still holds (see ``max_events``).
        """
        for name, value in (("merchant_id", merchant_id), ("merchant_trade_no", merchant_trade_no)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentType(f"{name} must be a str or None, not {value!r}")
        self.catch_up()
        with self._lock:
            return tuple(
                event
                for event in self._events
                if event.kind is EventKind.REQUEST
                and event.endpoint is Endpoint.DO_ACTION
                and event.applied
                and (merchant_id is None or event.merchant_id == merchant_id)
                and (merchant_trade_no is None or event.merchant_trade_no == merchant_trade_no)
            )

    def pending_landings(self) -> tuple[Landing, ...]:
        """The DoActions ``Fault.LATE_APPLY`` let in that have not landed yet, in landing order.

        ``faults.clear()`` does not recall them: like ECPay, the emulator has them already.
        """
        self.catch_up()
        with self._lock:
            return tuple(landing.view() for landing in self._queued())

    def _queued(self) -> list[_Landing]:
        return sorted(self._landings, key=lambda landing: (landing.at, landing.seq))

    def _record(self, kind: EventKind, at: dt.datetime, **fields: Any) -> None:
        self._seq += 1
        self._events.append(Event(seq=self._seq, at=at, kind=kind, **fields))

    # -- state files -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """A number that grows whenever something :meth:`dump_state` keeps changes (every
        event, every jump of the clock); the clock running in real time does not count, since
        a state file resumes it anyway. For savers and pollers."""
        with self._lock:
            return self._seq + self._moves

    def dump_state(self) -> dict[str, Any]:
        """Everything needed to resume this emulator later, as JSON: settings, merchants
        **with their HashKey and HashIV in the clear**, orders with the CreditDetail views
        they keep, DoActions in flight, the clock. Keep the result, and any file it goes to,
        readable by its owner only. Armed faults and the event log are not kept.

        :meth:`from_state` reads it back.
        """
        self.catch_up()
        with self._lock:
            return {
                "format": FORMAT,
                "version": VERSION,
                "saved_at": dt.datetime.now(dt.UTC).isoformat(),
                "realtime": self.realtime,
                "settings": settings_to_json(self.settings),
                "ledger": self._ledger.dump(),
                "landings": [_landing_json(landing) for landing in self._queued()],
                "event_seq": self._seq,
            }

    @classmethod
    def from_state(
        cls, data: object, *, realtime: bool = False, max_events: int | None = 100_000
    ) -> Emulator:
        """The emulator :meth:`dump_state` described, with a fresh event log and no faults.

        The clock resumes where it was; when both the saved emulator and this one run in real
        time, plus the wall-clock time since it was saved (what happened meanwhile, batches
        included, happens on first use). Anything that is not such a state, or a state of a
        newer format than this version reads, raises
        :class:`~ecpay_lifecycle.ConfigurationError` saying what and where (never a value).
        """
        reader = Reader(data, "")  # holds it as a Secret: the state has HashKeys in the clear
        del data
        if reader.optional_text("format") != FORMAT:
            raise ConfigurationError(f"not an emulator state: its format is not {FORMAT!r}")
        version = reader.integer("version", minimum=1)
        if version > VERSION:
            raise ConfigurationError(
                f"the state was written by a newer ecpay-lifecycle (state format {version}; "
                f"this version reads format {VERSION} and older)"
            )
        try:
            settings = settings_from_json(reader.raw("settings"))
        except ConfigurationError:
            raise
        except InvalidArgument as error:
            raise ConfigurationError(f"settings: {error}") from error
        ledger = reader.obj("ledger")
        saved_now = ledger.time("now")
        try:
            emulator = cls(now=saved_now, settings=settings, max_events=max_events)
        except InvalidArgument as error:
            raise ConfigurationError(f"ledger.now: {error}") from error
        emulator._ledger = Ledger.restore(ledger, saved_now, settings, emulator._record)
        emulator._seq = reader.integer("event_seq")
        emulator._landings = [emulator._restore_landing(item) for item in reader.items("landings")]
        emulator._landing_seq = itertools.count(
            max((landing.seq for landing in emulator._landings), default=0) + 1
        )
        if realtime:
            resume = saved_now
            if reader.flag("realtime"):
                downtime = dt.datetime.now(dt.UTC) - reader.time("saved_at")
                try:
                    resume = saved_now + max(downtime, dt.timedelta(0))
                except OverflowError:
                    resume = saved_now
            emulator._anchor = (resume, time.monotonic())
        emulator._record(EventKind.SETUP, saved_now, note="state restored")
        return emulator

    def _restore_landing(self, item: Reader) -> _Landing:
        merchant = self._ledger.merchants.get(item.text("merchant_id"))
        if merchant is None:
            raise ConfigurationError(f"{item.where}.merchant_id is not one of the merchants")
        request = item.raw("request")
        if not isinstance(request, dict):
            raise ConfigurationError(f"{item.where}.request must be a JSON object")
        action = item.optional_text("action")
        got = _Received(
            endpoint=item.member("endpoint", Endpoint),
            merchant=merchant,
            inner=request,
            action=None if action is None else _action(action),
            rule=None,
            timestamp=item.number("timestamp"),
            received_at=item.time("received_at"),
        )
        return _Landing(item.integer("seq"), item.time("at"), got)

    # -- front doors -------------------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        """Answer one request for ``httpx.MockTransport`` (works for Client and AsyncClient).

        Transport faults raise the httpx exception a real network would (``ConnectTimeout``,
        ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``); DELAY sleeps in this thread.
        """
        got = self._receive(request.method, request.url.path, request.content)
        if isinstance(got, _Received):
            if got.delay:
                time.sleep(got.delay)
            got = self._process(got)
        return _to_httpx(got, request)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        """Like :meth:`handler` for ``httpx.AsyncClient``; a DELAY fault awaits instead of
        blocking the event loop."""
        got = self._receive(request.method, request.url.path, request.content)
        if isinstance(got, _Received):
            if got.delay:
                await asyncio.sleep(got.delay)
            got = self._process(got)
        return _to_httpx(got, request)

    @property
    def asgi_app(self) -> AsgiApp:
        """A plain ASGI 3 application: the three endpoints plus admin routes under
        ``/_emulator/`` (see ``docs/emulator.md``). No framework needed; mount it in any ASGI
        server (``uvicorn``, ``hypercorn``) or test it with ``httpx.ASGITransport``."""
        return AsgiApp(self)

    # -- the pipeline ------------------------------------------------------------------------

    def _receive(self, method: str, path: str, body: bytes) -> _Received | _Reply:
        """Phase one: route, read and decrypt the envelope, pick a fault. Never raises."""
        endpoint = Endpoint.from_path(path)
        if endpoint is None:
            return _Reply(404, b"Not Found", _TEXT)
        if method.upper() != "POST":
            return _Reply(405, b"Method Not Allowed", _TEXT)
        self.catch_up()
        with self._lock:
            # A request arriving at or after a landing's moment finds it landed (R22's fence).
            for landing in self._queued():
                if landing.at <= self._ledger.now:
                    self._land(landing)
            envelope = read_envelope(body)
            if isinstance(envelope, EnvelopeProblem):
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    envelope.message,
                    trans_code=envelope.trans_code,
                    trans_msg=envelope.trans_msg,
                )
            merchant = self._ledger.merchants.get(envelope.merchant_id)
            if merchant is None:
                return self._reject(endpoint, envelope.merchant_id, "MerchantID is not registered")
            now = self._ledger.now.timestamp()
            if abs(now - envelope.timestamp) > self.settings.timestamp_tolerance.total_seconds():
                code, text = STALE_TIMESTAMP
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    "Timestamp is outside 10 minutes (R20)",
                    trans_code=code,
                    trans_msg=text,
                )
            try:
                inner = merchant.codec.decrypt(envelope.data)
            except CodecError:
                code, text = DECRYPT_FAIL
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    "Data does not decrypt (R1)",
                    trans_code=code,
                    trans_msg=text,
                )
            platform = inner.get("PlatformID")
            if platform not in (None, "") and platform != envelope.merchant_id:
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    "PlatformID is set and differs from MerchantID",
                    inner,
                )
            action = _action(inner.get("Action")) if endpoint is Endpoint.DO_ACTION else None
            number = echo(inner.get("MerchantTradeNo")) or None
            rule = self.faults.take(endpoint, action, number)
            return _Received(
                endpoint, merchant, inner, action, rule, envelope.timestamp, self._ledger.now
            )

    def _reject(
        self,
        endpoint: Endpoint,
        merchant_id: str,
        message: str,
        inner: dict[str, Any] | None = None,
        *,
        trans_code: int | None = None,
        trans_msg: str | None = None,
    ) -> _Reply:
        """A bad envelope: TransCode != 1, nothing processed, nothing changed (section 2).

        ``trans_code`` / ``trans_msg``: ECPay's own answer where observed (110, 104); otherwise
        the settings' bad-envelope code and ``message``.
        """
        code = self.settings.bad_envelope_trans_code if trans_code is None else trans_code
        self._record(
            EventKind.REQUEST,
            self._ledger.now,
            merchant_id=merchant_id or None,
            endpoint=endpoint,
            request=None if inner is None else types.MappingProxyType(inner),
            trans_code=code,
            note=f"bad envelope: {message}",
        )
        body = _dumps(self._outer(merchant_id, code, trans_msg or message, ""))
        return _Reply(self.settings.envelope_error_http_status, body)

    def _outer(self, merchant_id: str, code: int, message: str, data: str) -> dict[str, Any]:
        """The reply envelope (section 2), with the ID and TransCode types the settings
        ask for (``numeric_merchant_ids``, ``string_trans_code``)."""
        return {
            "MerchantID": self._id(merchant_id),
            "RpHeader": {"Timestamp": int(self._ledger.now.timestamp())},
            "TransCode": str(code) if self.settings.string_trans_code else code,
            "TransMsg": message,
            "Data": data,
        }

    def _id(self, value: object) -> object:
        """A MerchantID or PlatformID as a JSON number when ``numeric_merchant_ids`` is on and
        the number spells it exactly (no leading zero); otherwise as it is."""
        if (
            self.settings.numeric_merchant_ids
            and isinstance(value, str)
            and value.isascii()
            and value.isdigit()
            and str(int(value)) == value
        ):
            return int(value)
        return value

    def _shape_ids(self, inner: dict[str, Any]) -> dict[str, Any]:
        """The inner reply with its MerchantID and PlatformID typed as the settings ask."""
        if not self.settings.numeric_merchant_ids:
            return inner
        return {
            key: self._id(value) if key in ("MerchantID", "PlatformID") else value
            for key, value in inner.items()
        }

    def _process(self, got: _Received) -> _Reply:
        """Phase two: apply the request (unless a fault stops it first) and shape the reply."""
        self.catch_up()  # a DELAY fault may have let real time pass
        with self._lock:
            fault = got.rule.fault if got.rule else None
            outcome: _Outcome | None = None
            note = ""
            if fault is None or fault.applies_change:
                outcome = self._dispatch(got)
            elif fault is Fault.LATE_APPLY:
                note = self._queue_landing(got)
            reply = self._deliver(got, outcome)
            trans_code = 1 if outcome else _trans_code_of(reply)
            self._record_request(got, outcome, fault, trans_code, note)
            return reply

    def _record_request(
        self,
        got: _Received,
        outcome: _Outcome | None,
        fault: Fault | None,
        trans_code: int | None,
        note: str = "",
    ) -> None:
        self._record(
            EventKind.REQUEST,
            self._ledger.now,
            merchant_id=echo(got.inner.get("MerchantID")) or got.merchant.merchant_id,
            merchant_trade_no=(outcome.merchant_trade_no if outcome else None)
            or (echo(got.inner.get("MerchantTradeNo")) or None),
            endpoint=got.endpoint,
            action=got.action,
            amount=outcome.amount if outcome else None,
            request=types.MappingProxyType(got.inner),
            applied=bool(outcome and outcome.applied),
            reply=types.MappingProxyType(outcome.reply) if outcome else None,
            trans_code=trans_code,
            rtn_code=_rtn_code(outcome.reply) if outcome else None,
            refusal=outcome.refusal if outcome else None,
            fault=fault,
            note=note,
        )

    def _queue_landing(self, got: _Received) -> str:
        """LATE_APPLY: ECPay has the DoAction; it lands ``land_after`` from now (section 9)."""
        assert got.rule is not None  # only LATE_APPLY queues
        try:
            at = got.received_at + got.rule.land_after
        except OverflowError:
            at = _NEVER
        self._landings.append(_Landing(next(self._landing_seq), at, got))
        return f"in flight: lands at {at.isoformat()}"

    def _land(self, landing: _Landing) -> None:
        """A DoAction in flight lands now: R20 refuses it if its Timestamp has grown too old,
        otherwise it is processed like any DoAction at this moment (rules checked now)."""
        self._landings.remove(landing)
        got = landing.got
        came = f"landed late (received {got.received_at.isoformat()})"
        age = self._ledger.now.timestamp() - got.timestamp
        if age > self.settings.timestamp_tolerance.total_seconds():
            code, text = STALE_TIMESTAMP
            note = f"{came}: {text}, refused (R20)"
            self._record_request(got, None, Fault.LATE_APPLY, code, note)
            return
        self._record_request(got, self._dispatch(got), Fault.LATE_APPLY, 1, came)

    def _deliver(self, got: _Received, outcome: _Outcome | None) -> _Reply:
        """Wrap the inner reply in the envelope, or let the armed fault spoil it."""
        rule = got.rule
        merchant = got.merchant
        if outcome is None:
            assert rule is not None  # only a before-apply fault skips processing
            return self._before_apply_reply(rule, merchant.merchant_id)
        inner = outcome.reply
        outer_id = merchant.merchant_id
        if rule is not None and rule.fault is Fault.MISMATCHED_REPLY:
            inner, outer_id = _mismatch(inner, outer_id)
        data = merchant.replies.encrypt(self._shape_ids(inner), self.settings.reply_url_encoding)
        if rule is not None and rule.fault is Fault.GARBLED_DATA:
            data = garble(merchant.codec, data)
        body = _dumps(self._outer(outer_id, 1, "Success", data))
        status = 200 if outcome.refusal is None else self.settings.refusal_http_status
        fault = rule.fault if rule else None
        if fault is Fault.TIMEOUT_AFTER_APPLY:
            assert rule is not None
            return _Reply(200, body, failure=_Failure.READ_TIMEOUT, hang=rule.seconds)
        if fault is Fault.LOST_REPLY:
            return _Reply(200, body, failure=_Failure.DISCONNECT)
        if fault is Fault.CONNECTION_RESET:
            return _Reply(200, body, failure=_Failure.RESET)
        if fault is Fault.SERVER_ERROR_AFTER_APPLY:
            assert rule is not None
            return _status_reply(rule.status_code)
        return _Reply(status, body)

    def _before_apply_reply(self, rule: FaultRule, merchant_id: str) -> _Reply:
        fault = rule.fault
        if fault is Fault.TIMEOUT_BEFORE_APPLY:
            return _Reply(
                504, b"Gateway Timeout", _TEXT, failure=_Failure.CONNECT_TIMEOUT, hang=rule.seconds
            )
        if fault in (Fault.READ_TIMEOUT_BEFORE_APPLY, Fault.LATE_APPLY):
            return _Reply(
                504, b"Gateway Timeout", _TEXT, failure=_Failure.READ_TIMEOUT, hang=rule.seconds
            )
        if fault is Fault.RATE_LIMITED:
            return _status_reply(403)
        if fault is Fault.SERVER_ERROR_BEFORE_APPLY:
            return _status_reply(rule.status_code)
        code = self.settings.bad_envelope_trans_code if rule.trans_code is None else rule.trans_code
        message = TRANS_MESSAGES.get(code, "TransCode error (fault)")
        body = _dumps(self._outer(merchant_id, code, message, ""))
        return _Reply(self.settings.envelope_error_http_status, body)

    def _dispatch(self, got: _Received) -> _Outcome:
        if got.endpoint is Endpoint.DO_ACTION:
            return self._do_action(got)
        if got.endpoint is Endpoint.CREDIT_DETAIL:
            return self._credit_detail(got)
        return self._query_trade(got)

    def _refuse(self, reason: Refusal, echoes: dict[str, Any], **extra: Any) -> _Outcome:
        answer = self.settings.refusal(reason)
        reply = {"RtnCode": answer.rtn_code, "RtnMsg": answer.rtn_msg, **echoes}
        return _Outcome(reply, refusal=reason, **extra)

    def _lookup(self, got: _Received, *, need_trade_no: bool) -> _Order | Refusal:
        """The order the inner data names, if this envelope's merchant may see it (section 3).

        The inner MerchantID is checked first, as ECPay does on all three endpoints [OBS]:
        missing (5000220), then not the envelope's nor one of its platform's merchants
        (5000261); then the numbers (R19); then the order (10000185).
        """
        inner = got.inner
        merchant_id = inner.get("MerchantID")
        number = inner.get("MerchantTradeNo")
        trade_no = inner.get("TradeNo")
        if merchant_id is None or merchant_id == "":
            return Refusal.MERCHANT_ID_MISSING
        if not isinstance(merchant_id, str):
            return Refusal.BAD_PARAMETER
        outer = got.merchant.merchant_id
        owner = self._ledger.merchants.get(merchant_id)
        platform = inner.get("PlatformID")
        on_behalf = platform == outer and owner is not None and owner.platform_id == outer
        if merchant_id != outer and not on_behalf:
            return Refusal.MERCHANT_ID_MISMATCH
        if not _is_number(number):
            return Refusal.BAD_PARAMETER
        if (need_trade_no or trade_no not in (None, "")) and not _is_number(trade_no):
            return Refusal.BAD_PARAMETER
        assert isinstance(number, str)
        order = self._ledger.find(merchant_id, number)
        if order is None or trade_no not in (None, "", order.trade_no):
            return Refusal.ORDER_NOT_FOUND
        return order

    def _do_action(self, got: _Received) -> _Outcome:
        """DoAction (section 3): validate the inner data (R19), find the order, apply or refuse."""
        inner = got.inner
        echoes = {
            "PlatformID": echo(inner.get("PlatformID")),
            "MerchantID": echo(inner.get("MerchantID")),
            "MerchantTradeNo": echo(inner.get("MerchantTradeNo")),
            "TradeNo": echo(inner.get("TradeNo")),
        }
        number = echoes["MerchantTradeNo"] or None
        found = self._lookup(got, need_trade_no=True)
        amount = inner.get("TotalAmount")
        if isinstance(found, Refusal) and found is not Refusal.ORDER_NOT_FOUND:
            return self._refuse(found, echoes, merchant_trade_no=number)
        if got.action is None or "TotalAmount" not in inner:
            return self._refuse(Refusal.BAD_PARAMETER, echoes, merchant_trade_no=number)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return self._refuse(Refusal.BAD_AMOUNT, echoes, merchant_trade_no=number)
        if isinstance(found, Refusal):
            return self._refuse(found, echoes, merchant_trade_no=number, amount=amount)
        refusal = self._ledger.do_action(found, got.action, amount)
        if refusal is not None:
            return self._refuse(refusal, echoes, merchant_trade_no=number, amount=amount)
        reply = {"RtnCode": 1, "RtnMsg": self.settings.success_message, **echoes}
        return _Outcome(reply, applied=True, merchant_trade_no=number, amount=amount)

    def _credit_detail(self, got: _Received) -> _Outcome:
        """CreditDetail/QueryTrade (section 4): the order's status, ClsAmt and close rows, as they
        were ``credit_detail_lag`` ago and, under STALE_QUERY, some writes before that."""
        found = self._lookup(got, need_trade_no=False)
        if isinstance(found, Refusal):
            return self._refuse(found, {})
        rule = got.rule
        writes_back = rule.writes if rule is not None and rule.fault is Fault.STALE_QUERY else 0
        view = self._ledger.credit_detail_view(found, writes_back=writes_back)
        reply = credit_detail_reply(view, self.settings.credit_detail_flavour)
        return _Outcome(reply, merchant_trade_no=view.merchant_trade_no)

    def _query_trade(self, got: _Received) -> _Outcome:
        """Cashier/QueryTrade (section 5): the order and its payment kind."""
        found = self._lookup(got, need_trade_no=False)
        if isinstance(found, Refusal):
            # Only RtnCode and RtnMsg, as ECPay's recorded refusals of this endpoint [OBS].
            return self._refuse(found, {})
        view = self._ledger.view(found)
        settings = self.settings
        reply = query_trade_reply(
            view,
            echo(got.inner.get("PlatformID")),
            message=settings.cashier_success_message,
            keys_by_kind=settings.cashier_keys_by_kind,
            one_time_card_info=settings.cashier_one_time_card_info,
        )
        return _Outcome(reply, merchant_trade_no=view.merchant_trade_no)


class AsgiApp:
    """The ASGI 3 callable of one emulator (an object, so servers detect ASGI 3 reliably).

    ``body_timeout``: seconds a request body may take to arrive (default
    ``_asgi.BODY_TIMEOUT``, 10); a slower one answers 408.
    """

    __slots__ = ("_body_timeout", "_emulator")

    def __init__(self, emulator: Emulator, *, body_timeout: float | None = None) -> None:
        if body_timeout is not None and (
            isinstance(body_timeout, bool)
            or not isinstance(body_timeout, int | float)
            or not body_timeout > 0
        ):
            raise InvalidArgument("body_timeout must be a number of seconds > 0")
        self._emulator = emulator
        self._body_timeout = body_timeout

    def __repr__(self) -> str:
        return f"<AsgiApp of {self._emulator!r}>"

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        """Handle one ASGI scope (``http`` and ``lifespan``)."""
        from ._asgi import BODY_TIMEOUT, serve  # noqa: PLC0415  # the ASGI module imports this one

        timeout = BODY_TIMEOUT if self._body_timeout is None else self._body_timeout
        await serve(self._emulator, scope, receive, send, body_timeout=timeout)


def _landing_json(landing: _Landing) -> dict[str, Any]:
    """A DoAction in flight, for a state file."""
    got = landing.got
    return {
        "seq": landing.seq,
        "at": landing.at.isoformat(),
        "received_at": got.received_at.isoformat(),
        "timestamp": got.timestamp,
        "merchant_id": got.merchant.merchant_id,
        "endpoint": got.endpoint.name,
        "action": None if got.action is None else got.action.value,
        "request": got.inner,
    }


def _action(value: object) -> Action | None:
    if not isinstance(value, str):
        return None
    try:
        return Action(value)
    except ValueError:
        return None


def _is_number(value: object) -> bool:
    """R19: 1-20 letters and digits."""
    if not isinstance(value, str):
        return False
    try:
        check_order_number(value)
    except (InvalidArgumentType, ValueError):
        return False
    return True


def _rtn_code(reply: Mapping[str, Any]) -> int | None:
    code = reply.get("RtnCode")
    return code if isinstance(code, int) else None


def _trans_code_of(reply: _Reply) -> int | None:
    if reply.content_type != _JSON:
        return None
    code = json.loads(reply.body).get("TransCode")
    if isinstance(code, str) and code.isdigit():  # ``string_trans_code``
        return int(code)
    return code if isinstance(code, int) else None


def _status_reply(status: int) -> _Reply:
    text = "Forbidden" if status == 403 else httpx.codes.get_reason_phrase(status) or "Error"
    return _Reply(status, text.encode("utf-8"), _TEXT)


def _mismatch(inner: dict[str, Any], outer_id: str) -> tuple[dict[str, Any], str]:
    """R2 fault: change every echoed order number; with none to change, the outer MerchantID."""
    changed = dict(inner)
    touched = False
    for key in ("MerchantTradeNo", "TradeNo"):
        if key in changed:
            changed[key] = other_number(changed[key])
            touched = True
    info = changed.get("OrderInfo")
    if isinstance(info, dict):
        changed["OrderInfo"] = {
            **info,
            "MerchantTradeNo": other_number(info.get("MerchantTradeNo")),
            "TradeNo": other_number(info.get("TradeNo")),
        }
        touched = True
    if touched:
        return changed, outer_id
    return changed, other_number(outer_id)


def _to_httpx(reply: _Reply, request: httpx.Request) -> httpx.Response:
    """Deliver through MockTransport: a response, or the exception a real network raises."""
    failure = reply.failure
    if failure is _Failure.CONNECT_TIMEOUT:
        raise httpx.ConnectTimeout("emulator fault: connect timed out", request=request)
    if failure is _Failure.READ_TIMEOUT:
        raise httpx.ReadTimeout("emulator fault: read timed out", request=request)
    if failure is _Failure.DISCONNECT:
        raise httpx.RemoteProtocolError(
            "emulator fault: server disconnected without sending a response", request=request
        )
    if failure is _Failure.RESET:
        raise httpx.ReadError("emulator fault: connection reset by peer", request=request)
    return httpx.Response(
        reply.status, content=reply.body, headers={"Content-Type": reply.content_type}
    )
