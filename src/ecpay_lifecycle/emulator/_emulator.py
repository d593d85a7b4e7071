"""The :class:`Emulator`: ECPay's three credit endpoints, stateful, on a clock that tests move.

The facade over the emulator's parts: the :class:`~._state.Ledger` (sections 3-7), the
clock that moves it (batches, day rules, and the landings of DoActions in flight, section 9),
the event log, the faults, and the front doors. :attr:`Emulator.handler` /
:attr:`Emulator.async_handler` for ``httpx.MockTransport`` and :attr:`Emulator.asgi_app` for any
ASGI server (:mod:`._asgi`) all send requests through one :class:`~._pipeline.Pipeline`. One
re-entrant lock guards all state. Sections are those of docs/ecpay-api.md.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from ecpay_lifecycle._codec import Secret
from ecpay_lifecycle._exceptions import ConfigurationError, InvalidArgument, InvalidArgumentType
from ecpay_lifecycle._models import GatewayStatus, OrderSnapshot, PaymentKind

from ._asgi import BODY_TIMEOUT, serve
from ._events import Event, EventKind, Landing
from ._faults import Endpoint, Faults
from ._persist import FORMAT, VERSION, Reader, settings_from_json, settings_to_json
from ._pipeline import Failure, Pipeline, Received, Reply
from ._settings import EmulatorSettings
from ._state import Ledger, MerchantView, OrderView

__all__ = ["AsgiApp", "Emulator"]

#: How many batch or day-rule happenings (one order each) run under one hold of the lock while
#: the clock moves: small enough that a request waits at most a millisecond or two.
_PIECE = 32
#: How long a clock move steps aside for a request that knocked: enough for a woken thread to
#: take the lock, short enough that a move over two years of batches loses little time.
_STEP_ASIDE = 0.0005


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
        self.faults = Faults(self._lock)
        self._ledger = Ledger(now, settings, self._record)
        self._pipeline = self._pipeline_for(self._ledger)
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
            first_landing = self._pipeline.next_landing()
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
                queued = self._pipeline.queued()
                if queued and queued[0].at <= ledger.now:
                    # At its moment, after everything else that happens then (R22's fence).
                    self._pipeline.land(queued[0])
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
            return tuple(landing.view() for landing in self._pipeline.queued())

    def _record(self, kind: EventKind, at: dt.datetime, **fields: Any) -> None:
        self._seq += 1
        self._events.append(Event(seq=self._seq, at=at, kind=kind, **fields))

    def _pipeline_for(self, ledger: Ledger) -> Pipeline:
        """The request path over ``ledger``, sharing this emulator's lock, faults, event log
        and clock, with no DoAction in flight."""
        return Pipeline(
            ledger,
            self._lock,
            self.faults,
            self._record,
            catch_up=self.catch_up,
            glide=self._glide,
        )

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
                "landings": self._pipeline.dump_landings(),
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
        emulator._pipeline = emulator._pipeline_for(emulator._ledger)
        emulator._pipeline.restore_landings(reader.items("landings"))
        emulator._seq = reader.integer("event_seq")
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

    # -- front doors -------------------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        """Answer one request for ``httpx.MockTransport`` (works for Client and AsyncClient).

        Transport faults raise the httpx exception a real network would (``ConnectTimeout``,
        ``ReadTimeout``, ``RemoteProtocolError``, ``ReadError``); DELAY sleeps in this thread.
        """
        got = self._pipeline.receive(request.method, request.url.path, request.content)
        if isinstance(got, Received):
            if got.delay:
                time.sleep(got.delay)
            got = self._pipeline.process(got)
        return _to_httpx(got, request)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        """Like :meth:`handler` for ``httpx.AsyncClient``: a DELAY fault awaits, and a running
        clock catches up in a thread, instead of blocking the event loop."""
        reply = await self._pipeline.answer(request.method, request.url.path, request.content)
        return _to_httpx(reply, request)

    @property
    def asgi_app(self) -> AsgiApp:
        """A plain ASGI 3 application: the three endpoints plus admin routes under
        ``/_emulator/`` (see ``docs/emulator.md``). No framework needed; mount it in any ASGI
        server (``uvicorn``, ``hypercorn``) or test it with ``httpx.ASGITransport``."""
        return AsgiApp(self)


class AsgiApp:
    """The ASGI 3 callable of one emulator (an object, so servers detect ASGI 3 reliably).

    ``body_timeout``: seconds a request body may take to arrive (default
    ``_asgi.BODY_TIMEOUT``, 10); a slower one answers 408.
    """

    __slots__ = ("_body_timeout", "_emulator", "_pipeline")

    def __init__(self, emulator: Emulator, *, body_timeout: float | None = None) -> None:
        if body_timeout is not None and (
            isinstance(body_timeout, bool)
            or not isinstance(body_timeout, int | float)
            or not body_timeout > 0
        ):
            raise InvalidArgument("body_timeout must be a number of seconds > 0")
        self._emulator = emulator
        self._pipeline = emulator._pipeline
        self._body_timeout = body_timeout

    def __repr__(self) -> str:
        return f"<AsgiApp of {self._emulator!r}>"

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        """Handle one ASGI scope (``http`` and ``lifespan``)."""
        timeout = BODY_TIMEOUT if self._body_timeout is None else self._body_timeout
        await serve(self._emulator, self._pipeline, scope, receive, send, body_timeout=timeout)


def _to_httpx(reply: Reply, request: httpx.Request) -> httpx.Response:
    """Deliver through MockTransport: a response, or the exception a real network raises."""
    failure = reply.failure
    if failure is Failure.CONNECT_TIMEOUT:
        raise httpx.ConnectTimeout("emulator fault: connect timed out", request=request)
    if failure is Failure.READ_TIMEOUT:
        raise httpx.ReadTimeout("emulator fault: read timed out", request=request)
    if failure is Failure.DISCONNECT:
        raise httpx.RemoteProtocolError(
            "emulator fault: server disconnected without sending a response", request=request
        )
    if failure is Failure.RESET:
        raise httpx.ReadError("emulator fault: connection reset by peer", request=request)
    return httpx.Response(
        reply.status, content=reply.body, headers={"Content-Type": reply.content_type}
    )
