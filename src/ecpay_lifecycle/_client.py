"""``Client`` and ``AsyncClient``: carry out plans against ECPay without moving money twice.

One brain, two shells (style habit 3). Every decision (what to query, what to send, how to read
the reply, what a lost reply means, who owns an operation, what to record) lives in
:class:`~._engine.Engine` as *flows*. :class:`Client` runs a flow with ``httpx.Client`` and
holds the journal's order lock with :meth:`OrderLocks.hold`; :class:`AsyncClient` with
``httpx.AsyncClient`` and :meth:`OrderLocks.ahold`. Nothing else differs. The safety protocol
(docs/ecpay-api.md section 9: R21 the accepted reply is proof, R22 the fence, R23 one owner per
operation) is described in ``_engine.py`` and ``docs/client.md``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Final, NoReturn, SupportsIndex, TypeVar, cast

import httpx

from ._codec import not_serialisable
from ._engine import (
    DEFAULT_FENCE_MARGIN,
    DEFAULT_LEASE,
    DEFAULT_RATE_LIMIT_PAUSE,
    Engine,
    Flow,
    JournalCall,
    Reply,
)
from ._exceptions import ConfigurationError, EcpayError, InvalidArgumentType, RateLimited
from ._journal import AsyncJournal, Journal, is_async_journal
from ._models import Action, Intent, OrderSnapshot, PaymentKind, check_order_number
from ._outcome import Outcome, Reconciliation, SweepReport, Verdict
from ._protocol import PRODUCTION_URL, Credentials, DoActionReply, WireRequest
from ._transport import AsyncStreamTransport, Route

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "KEEPALIVE_EXPIRY",
    "AsyncClient",
    "Client",
]

_log = logging.getLogger("ecpay_lifecycle")

#: Seconds for connect, read, write and waiting for a pooled connection. Always set: a request
#: without a timeout can hang a worker forever.
DEFAULT_TIMEOUT: Final = 10.0
#: Connections per client, all kept alive. ECPay answers bursts with HTTP 403 (wait 30 minutes),
#: so a few reused connections serve a shop better than many short-lived ones.
DEFAULT_MAX_CONNECTIONS: Final = 10
#: Seconds an idle connection is kept for the next call. Long enough for a shop's sparse calls
#: to reuse it; a connection the server closed meanwhile is noticed before reuse and replaced.
KEEPALIVE_EXPIRY: Final = 60.0

_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    # Named, not left to httpx: its default grows with optional packages (br, zstd), and
    # AsyncStreamTransport.exchange decodes these two only.
    "Accept-Encoding": "gzip, deflate",
    "User-Agent": "ecpay-lifecycle",
}
_JSON = json.JSONEncoder(separators=(",", ":"))

_T = TypeVar("_T")


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
    # opens and drops connections (httpx's default 20 of 100 did 2,000 connects for 2,000 calls),
    # and for KEEPALIVE_EXPIRY: a shop's calls are sparse, and httpx's 5 s default would open a
    # new TCP + TLS connection to ECPay for nearly every one.
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )


def _proxied(base_url: str) -> bool:
    """Whether the environment names a proxy httpx would consider for ``base_url``
    (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``; httpx itself then applies ``NO_PROXY``)."""
    scheme = urllib.parse.urlsplit(base_url).scheme
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all"))


def _body(request: WireRequest) -> bytes:
    return _JSON.encode(request.body).encode("ascii")


class _Shell:
    """Configuration both shells share: the engine and the HTTP settings."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str,
        timeout: float | httpx.Timeout,
        clock: Callable[[], dt.datetime] | None,
        journal: Journal | AsyncJournal | None,
        max_connections: int,
        fence_margin: float | dt.timedelta,
        lease: float | dt.timedelta,
        refund_visible_at_once: bool,
        allow_stage_do_action: bool,
        rate_limit_pause: float | dt.timedelta,
    ) -> None:
        if isinstance(self, Client) and is_async_journal(journal):
            raise ConfigurationError(
                f"{type(journal).__name__} is asynchronous: its calls must be awaited, so it "
                "serves AsyncClient. Give Client a synchronous journal (PostgresJournal, "
                "SQLiteJournal)"
            )
        checked_url = _check_base_url(base_url)
        self._engine = Engine(
            credentials,
            base_url=checked_url,
            clock=clock,
            journal=journal,
            fence_margin=fence_margin,
            lease=lease,
            refund_visible_at_once=refund_visible_at_once,
            allow_stage_do_action=allow_stage_do_action,
            rate_limit_pause=rate_limit_pause,
        )
        self._base_url = checked_url
        self._timeout = _check_timeout(timeout)
        self._limits = _check_limit(max_connections)

    def __repr__(self) -> str:
        engine = getattr(self, "_engine", None)
        if engine is None:  # a client whose constructor refused its arguments
            return f"{type(self).__name__}(<not configured>)"
        return (
            f"{type(self).__name__}(merchant_id={engine.credentials.merchant_id!r}, "
            f"base_url={self._base_url!r})"
        )

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise not_serialisable(f"a {type(self).__name__}")

    def __copy__(self) -> NoReturn:
        # A copy would share the engine and its journal but not the HTTP pool's owner: make a
        # second client from the same Credentials instead.
        raise not_serialisable(f"a {type(self).__name__}")

    @property
    def journal(self) -> Journal | AsyncJournal:
        """The journal this client records operations in (its ``locks`` serialise orders)."""
        return self._engine.journal

    @property
    def fence_margin(self) -> dt.timedelta:
        """R22: the margin added to ECPay's 10-minute Timestamp window (see docs/client.md)."""
        return self._engine.fence_margin

    @property
    def rate_limited_until(self) -> dt.datetime | None:
        """Until when this client sends nothing to ECPay, after an HTTP 403 (``None``: no 403
        remembered, or ``rate_limit_pause=0``)."""
        until = self._engine.quiet_until
        return until if until is not None and self._engine.now() < until else None

    @property
    def clock_skew(self) -> float:
        """The largest difference, in seconds, seen between this host's clock and ECPay's
        (from replies' ``RpHeader.Timestamp``); it widens every fence (R22)."""
        return self._engine.skew

    def _lock_key(self, merchant_trade_no: str) -> tuple[str, str]:
        return self._engine.order_key(merchant_trade_no)


class Client(_Shell):
    """A long-lived, thread-safe ECPay client for one merchant: query, capture, refund, abandon.

    ``transport`` is an httpx transport (tests pass ``httpx.MockTransport(emulator.handler)``);
    ``clock`` returns the aware time used for Timestamps and the rules (system UTC by default);
    ``journal`` records operations and brings the per-order locks (in memory by default: use a
    durable one where keys must outlive the process). One pool of at most ``max_connections``
    kept-alive connections is reused by every call; close the client (or use it as a context
    manager) when done. Money movement on one order is serialised across every client sharing
    the journal; different orders proceed in parallel. ``fence_margin``, ``lease`` and
    ``refund_visible_at_once`` tune the safety protocol (R22, R23; see docs/client.md).
    Against ECPay's stage host, DoAction is refused unless ``allow_stage_do_action=True``
    (stage answers it only for its own test authorizations; docs/ecpay-api.md section 1).
    After ECPay's HTTP 403 the client sends nothing to ECPay for ``rate_limit_pause`` (seconds
    or a timedelta, default 30 minutes, ECPay's advice; 0 turns the memory off): each call
    raises :class:`RateLimited` with ``retry_at`` before anything is recorded or sent.
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
        fence_margin: float | dt.timedelta = DEFAULT_FENCE_MARGIN,
        lease: float | dt.timedelta = DEFAULT_LEASE,
        refund_visible_at_once: bool = False,
        allow_stage_do_action: bool = False,
        rate_limit_pause: float | dt.timedelta = DEFAULT_RATE_LIMIT_PAUSE,
    ) -> None:
        super().__init__(
            credentials,
            base_url=base_url,
            timeout=timeout,
            clock=clock,
            journal=journal,
            max_connections=max_connections,
            fence_margin=fence_margin,
            lease=lease,
            refund_visible_at_once=refund_visible_at_once,
            allow_stage_do_action=allow_stage_do_action,
            rate_limit_pause=rate_limit_pause,
        )
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise InvalidArgumentType(
                f"transport must be an httpx.BaseTransport, not {type(transport).__name__}"
            )
        self._http = httpx.Client(
            base_url=self._base_url,
            transport=transport,
            timeout=self._timeout,
            limits=self._limits,
            headers=_HEADERS,
        )

    @property
    def journal(self) -> Journal:
        """The journal this client records operations in (its ``locks`` serialise orders)."""
        return cast(Journal, self._engine.journal)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        self._http.close()

    def _drive(self, flow: Flow[_T]) -> _T:
        """Run a flow to its end: every request it yields is POSTed and every journal call made;
        their errors (and an interrupt) are thrown in, so the flow records what it must."""
        journal = self.journal
        try:
            effect = next(flow)
            while True:
                try:
                    if isinstance(effect, JournalCall):
                        result: object = getattr(journal, effect.method)(
                            *effect.args, **effect.kwargs
                        )
                    else:
                        response = self._http.post(effect.path, content=_body(effect))
                        result = Reply(response.status_code, response.content)
                except BaseException as exc:  # the flow decides what each means
                    effect = flow.throw(exc)
                else:
                    effect = flow.send(result)
        except StopIteration as stop:
            return cast(_T, stop.value)
        finally:
            flow.close()

    def _drive_locked(self, merchant_trade_no: str, flow: Flow[_T]) -> _T:
        with self.journal.locks.hold(*self._lock_key(merchant_trade_no)):
            return self._drive(flow)

    def _money(self, intent: Intent, merchant_trade_no: object, **call: object) -> Outcome:
        engine = self._engine
        checked = engine.money_call(intent, merchant_trade_no, **call)
        opened = self._drive(engine.open(checked))
        if isinstance(opened, Outcome):
            return opened
        return self._drive_locked(checked.merchant_trade_no, engine.operation_flow(opened, checked))

    def query(
        self,
        merchant_trade_no: str,
        *,
        trade_no: str | None = None,
        kind: PaymentKind | None = None,
    ) -> OrderSnapshot:
        """The order as ECPay sees it now (R4): CreditDetail for the state, Cashier/QueryTrade
        for TradeNo and the payment kind unless both ``trade_no`` and ``kind`` are given."""
        return self._drive(self._engine.query_call(merchant_trade_no, trade_no, kind))

    def capture(
        self,
        merchant_trade_no: str,
        *,
        idempotency_key: str | None = None,
        kind: PaymentKind | str | None = None,
        trade_no: str | None = None,
    ) -> Outcome:
        """Close (capture) an authorized order: C (R9, R6, R8, R5).

        ``kind`` and ``trade_no``, when the shop stores them, save the Cashier query; the
        journal remembers them per order anyway.
        """
        return self._money(
            Intent.CAPTURE,
            merchant_trade_no,
            idempotency_key=idempotency_key,
            kind=kind,
            trade_no=trade_no,
        )

    def refund(
        self,
        merchant_trade_no: str,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
        capture_first: bool = False,
        kind: PaymentKind | str | None = None,
        trade_no: str | None = None,
    ) -> Outcome:
        """Return ``amount`` TWD (``None``: all that is left) by the R9 recipe (R10-R13, R18)."""
        return self._money(
            Intent.REFUND,
            merchant_trade_no,
            amount=amount,
            capture_first=capture_first,
            idempotency_key=idempotency_key,
            kind=kind,
            trade_no=trade_no,
        )

    def abandon(
        self,
        merchant_trade_no: str,
        *,
        idempotency_key: str | None = None,
        kind: PaymentKind | str | None = None,
        trade_no: str | None = None,
    ) -> Outcome:
        """Release the card hold without capture: N, or E then N on a pending capture (R14, R15)."""
        return self._money(
            Intent.ABANDON,
            merchant_trade_no,
            idempotency_key=idempotency_key,
            kind=kind,
            trade_no=trade_no,
        )

    def do_action(
        self, merchant_trade_no: str, trade_no: str, action: Action | str, amount: int
    ) -> DoActionReply:
        """One raw DoAction for experts: no planner and no re-send, but queried first, journaled,
        locked per order, settled by R21/R22 and refused on stage like every other action."""
        engine = self._engine
        order, number, checked_action, checked_amount = engine.raw_call(
            merchant_trade_no, trade_no, action, amount
        )
        run = self._drive(engine.open_raw(order, number, checked_action, checked_amount))
        return self._drive_locked(
            order, engine.raw_flow(run, number, checked_action, checked_amount)
        )

    def reconcile(
        self,
        merchant_trade_no: str,
        *,
        declare: Mapping[str, Verdict | str] | None = None,
    ) -> Reconciliation:
        """Resolve each of the order's open attempts on its own by R22; sends no DoAction.

        Reached -> done; unchanged after the fence -> not done (the same key may then send it
        again); anything else stays unknown and is reported. ``declare`` maps an operation's key
        (``Resolution.key``, ``OutcomeUnknown.idempotency_key``) to the verdict a person
        established, e.g. from ECPay's merchant back office; "not_done" only after the fence.
        """
        engine = self._engine
        order, checked = _reconcile_args(engine, merchant_trade_no, declare)
        return self._drive_locked(order, engine.reconcile_flow(order, checked))

    def sweep(
        self, *, limit: int = 100, progress: Callable[[int, int, str], object] | None = None
    ) -> SweepReport:
        """Resolve the journal's stuck operations for this merchant (docs/ecpay-api.md section 9):
        each order with an open attempt or a lapsed owner, under its lock, by R22 (as
        :meth:`reconcile`); never sends a DoAction. Orders a live owner runs are skipped; unknown
        ones back off. Stops at ECPay's HTTP 403. Safe to run on every worker at once.
        ``progress(position, total, order)`` is called before each order is swept (the CLI draws it
        on a terminal)."""
        engine = self._engine
        sweep = self._drive(engine.start_sweep(limit))
        for position, order in enumerate(sweep.due, 1):
            _tell(progress, position, len(sweep.due), order)
            try:
                sweep.done(*self._drive_locked(order, engine.sweep_flow(order)))
            except RateLimited as exc:
                sweep.stop(exc)
                break
            except EcpayError as exc:
                sweep.fail(order, exc)
        return sweep.report()


class AsyncClient(_Shell):
    """The asyncio twin of :class:`Client`: the same methods and decisions, awaited.

    ``max_connections`` bounds the pool; calls beyond it wait for a connection (up to the
    timeout), so size it to the concurrency you run. Without ``transport=`` the connections are
    :class:`AsyncStreamTransport`'s, kept alive ``KEEPALIVE_EXPIRY`` seconds (httpx's own
    transport when the environment names a proxy); over it each call is exchanged as bytes on a
    head prepared once a path, without an ``httpx.Request`` and ``httpx.Response``. Close with
    :meth:`aclose` or ``async with``. Order locks are awaited without blocking the event loop,
    and exclude the threads and other loops that share the journal too.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str = PRODUCTION_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], dt.datetime] | None = None,
        journal: Journal | AsyncJournal | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        fence_margin: float | dt.timedelta = DEFAULT_FENCE_MARGIN,
        lease: float | dt.timedelta = DEFAULT_LEASE,
        refund_visible_at_once: bool = False,
        allow_stage_do_action: bool = False,
        rate_limit_pause: float | dt.timedelta = DEFAULT_RATE_LIMIT_PAUSE,
    ) -> None:
        super().__init__(
            credentials,
            base_url=base_url,
            timeout=timeout,
            clock=clock,
            journal=journal,
            max_connections=max_connections,
            fence_margin=fence_margin,
            lease=lease,
            refund_visible_at_once=refund_visible_at_once,
            allow_stage_do_action=allow_stage_do_action,
            rate_limit_pause=rate_limit_pause,
        )
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise InvalidArgumentType(
                f"transport must be an httpx.AsyncBaseTransport, not {type(transport).__name__}"
            )
        if transport is None and not _proxied(self._base_url):
            # Our own HTTP/1.1 transport: a third of httpcore's CPU a request over a socket
            # (benchmarks/bench_wire.py). Behind a proxy httpx's own transport is left in place,
            # since only it speaks to proxies.
            transport = AsyncStreamTransport(
                max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY
            )
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            transport=transport,
            timeout=self._timeout,
            limits=self._limits,
            headers=_HEADERS,
        )
        # Requests beyond the pool wait here, not in httpx's pool, whose every queued request
        # is re-examined on each change (at 50 in flight on 10 connections that cost more CPU
        # than the requests; benchmarks/bench_wire.py). The wait has the pool's timeout.
        limit = self._limits.max_connections or DEFAULT_MAX_CONNECTIONS
        self._slots = asyncio.Semaphore(limit)
        self._pool_wait = self._timeout.pool
        self._urls: dict[str, httpx.URL] = {}
        # Over AsyncStreamTransport each request is exchanged as bytes: the head httpx would
        # send, prepared once a path (_route), without an httpx.Request and httpx.Response a
        # call, which over a socket cost more CPU than the rest of it (benchmarks/bench_wire.py).
        # A pool of at most max_connections bounds the calls itself (waiters in arrival order,
        # the pool timeout, then PoolTimeout with nothing sent): no semaphore on top.
        self._stream = transport if isinstance(transport, AsyncStreamTransport) else None
        self._pool_bounds = self._stream is not None and self._stream.max_connections <= limit
        self._routes: dict[str, Route] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def _drive(self, flow: Flow[_T]) -> _T:
        """Run a flow to its end: every request it yields is POSTed and every journal call made
        (awaited when the journal is asynchronous); their errors (and a cancellation) are thrown
        in, so the flow records what it must."""
        journal = self.journal
        try:
            effect = next(flow)
            while True:
                try:
                    if isinstance(effect, JournalCall):
                        result: object = getattr(journal, effect.method)(
                            *effect.args, **effect.kwargs
                        )
                        if inspect.isawaitable(result):
                            result = await result
                    else:
                        result = await self._post(effect)
                except BaseException as exc:  # the flow decides what each means
                    effect = flow.throw(exc)
                else:
                    effect = flow.send(result)
        except StopIteration as stop:
            return cast(_T, stop.value)
        finally:
            flow.close()

    async def _post(self, request: WireRequest) -> Reply:
        if self._pool_bounds:  # the transport's own pool queues the calls beyond it
            return await self._send(request)
        slots = self._slots
        if slots.locked():  # every connection is busy: wait, at most the pool timeout
            try:
                async with asyncio.timeout(self._pool_wait):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout(
                    f"no connection to ECPay free within {self._pool_wait} s (max_connections)"
                ) from None
        else:
            await slots.acquire()  # free: returns at once, no timer to arm
        try:
            return await self._send(request)
        finally:
            slots.release()

    async def _send(self, request: WireRequest) -> Reply:
        """POST ``request``: as bytes on its path's route over AsyncStreamTransport, else
        through httpx."""
        stream = self._stream
        if stream is not None:
            route = self._routes.get(request.path) or self._route(stream, request.path)
            return Reply(*await stream.exchange(route, _body(request)))
        response = await self._http.post(self._url(request.path), content=_body(request))
        return Reply(response.status_code, response.content)

    def _route(self, stream: AsyncStreamTransport, path: str) -> Route:
        """The POST to ``path`` as httpx would send it (its headers, URL and timeouts), prepared
        once for AsyncStreamTransport.exchange."""
        route = self._routes[path] = stream.route(
            self._http.build_request("POST", self._url(path), content=b"")
        )
        return route

    def _url(self, path: str) -> httpx.URL:
        """The absolute URL of one of ECPay's few paths, parsed once: httpx parses a relative
        URL and merges it with the base on every request, two thirds of building one."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._base_url + path)
        return url

    async def _drive_locked(self, merchant_trade_no: str, flow: Flow[_T]) -> _T:
        async with self.journal.locks.ahold(*self._lock_key(merchant_trade_no)):
            return await self._drive(flow)

    async def _money(self, intent: Intent, merchant_trade_no: object, **call: object) -> Outcome:
        engine = self._engine
        checked = engine.money_call(intent, merchant_trade_no, **call)
        opened = await self._drive(engine.open(checked))
        if isinstance(opened, Outcome):
            return opened
        return await self._drive_locked(
            checked.merchant_trade_no, engine.operation_flow(opened, checked)
        )

    async def query(
        self,
        merchant_trade_no: str,
        *,
        trade_no: str | None = None,
        kind: PaymentKind | None = None,
    ) -> OrderSnapshot:
        """See :meth:`Client.query`."""
        return await self._drive(self._engine.query_call(merchant_trade_no, trade_no, kind))

    async def capture(
        self,
        merchant_trade_no: str,
        *,
        idempotency_key: str | None = None,
        kind: PaymentKind | str | None = None,
        trade_no: str | None = None,
    ) -> Outcome:
        """See :meth:`Client.capture`."""
        return await self._money(
            Intent.CAPTURE,
            merchant_trade_no,
            idempotency_key=idempotency_key,
            kind=kind,
            trade_no=trade_no,
        )

    async def refund(
        self,
        merchant_trade_no: str,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
        capture_first: bool = False,
        kind: PaymentKind | str | None = None,
        trade_no: str | None = None,
    ) -> Outcome:
        """See :meth:`Client.refund`."""
        return await self._money(
            Intent.REFUND,
            merchant_trade_no,
            amount=amount,
            capture_first=capture_first,
            idempotency_key=idempotency_key,
            kind=kind,
            trade_no=trade_no,
        )

    async def abandon(
        self,
        merchant_trade_no: str,
        *,
        idempotency_key: str | None = None,
        kind: PaymentKind | str | None = None,
        trade_no: str | None = None,
    ) -> Outcome:
        """See :meth:`Client.abandon`."""
        return await self._money(
            Intent.ABANDON,
            merchant_trade_no,
            idempotency_key=idempotency_key,
            kind=kind,
            trade_no=trade_no,
        )

    async def do_action(
        self, merchant_trade_no: str, trade_no: str, action: Action | str, amount: int
    ) -> DoActionReply:
        """See :meth:`Client.do_action`."""
        engine = self._engine
        order, number, checked_action, checked_amount = engine.raw_call(
            merchant_trade_no, trade_no, action, amount
        )
        run = await self._drive(engine.open_raw(order, number, checked_action, checked_amount))
        return await self._drive_locked(
            order, engine.raw_flow(run, number, checked_action, checked_amount)
        )

    async def reconcile(
        self,
        merchant_trade_no: str,
        *,
        declare: Mapping[str, Verdict | str] | None = None,
    ) -> Reconciliation:
        """See :meth:`Client.reconcile`."""
        engine = self._engine
        order, checked = _reconcile_args(engine, merchant_trade_no, declare)
        return await self._drive_locked(order, engine.reconcile_flow(order, checked))

    async def sweep(
        self, *, limit: int = 100, progress: Callable[[int, int, str], object] | None = None
    ) -> SweepReport:
        """See :meth:`Client.sweep`."""
        engine = self._engine
        sweep = await self._drive(engine.start_sweep(limit))
        for position, order in enumerate(sweep.due, 1):
            _tell(progress, position, len(sweep.due), order)
            try:
                sweep.done(*await self._drive_locked(order, engine.sweep_flow(order)))
            except RateLimited as exc:
                sweep.stop(exc)
                break
            except EcpayError as exc:
                sweep.fail(order, exc)
        return sweep.report()


def _tell(
    progress: Callable[[int, int, str], object] | None, position: int, total: int, order: str
) -> None:
    if progress is not None:
        progress(position, total, order)


def _reconcile_args(
    engine: Engine, merchant_trade_no: object, declare: object
) -> tuple[str, dict[str, Verdict]]:
    return check_order_number(merchant_trade_no), engine.check_declare(declare)
