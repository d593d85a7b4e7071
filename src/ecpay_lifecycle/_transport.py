"""``AsyncStreamTransport``: a lean httpx transport for :class:`AsyncClient` (``transport=``).

An HTTP/1.1 keep-alive client on asyncio's protocols, with ``h11`` doing every byte of framing
(Content-Length and chunked bodies, both ways). It exists for speed: httpx's own transport
(httpcore on anyio) spends several times the CPU of this one on every request over a socket
(``benchmarks/bench_wire.py``; the figures are in ``benchmarks/README.md``).

It keeps one pool per origin of at most ``max_connections`` connections, each kept alive for
``keepalive_expiry`` seconds. How its errors read matters to the engine (``_engine._NOT_SENT``):

* ``ConnectError``, ``ConnectTimeout`` and ``PoolTimeout`` are raised only before a byte of the
  request was handed to the socket: the request provably did not leave.
* Once the request was written, every failure is ``WriteError``, ``WriteTimeout``,
  ``ReadError``, ``ReadTimeout`` or ``RemoteProtocolError``: the outcome is unknown.
* A kept-alive connection the server closed (or wrote to) while it sat idle is found before it
  is reused (its state and the socket's readability are checked) and is never sent on.

It logs nothing, so neither bodies nor credentials can leak through it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import select
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Final

import h11
import httpx

from ._exceptions import ConfigurationError, InvalidArgumentType

__all__ = ["AsyncStreamTransport"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Seconds ``aclose`` waits for a closed connection's socket to be released before aborting it.
_CLOSE_GRACE: Final = 1.0
_HTTP_VERSION: Final = b"HTTP/1.1"
_END: Final = h11.EndOfMessage()  # h11 never changes an event, so one serves every request
#: Distinct request heads kept checked (see ``AsyncStreamTransport._head``).
_HEADS_KEPT: Final = 64


def _readable(fd: int) -> bool:
    """Whether a socket has something to read (bytes, an EOF or an error) right now."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


if sys.platform == "win32" or not hasattr(select, "poll"):  # pragma: no cover - no poll there

    def _readable(fd: int) -> bool:
        return bool(select.select([fd], [], [], 0)[0])


def _keep_alive_timeout(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The idle seconds a ``Keep-Alive: timeout=N`` response header announces, if any
    (``headers`` as h11 gives them: names in lower case)."""
    for name, value in headers:
        if name == b"keep-alive":
            for part in value.split(b","):
                key, _, number = part.strip().partition(b"=")
                if key.strip().lower() == b"timeout":
                    try:
                        return float(number)
                    except ValueError:
                        return None
    return None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: an asyncio protocol feeding ``h11``, awaited one event at a time."""

    transport: asyncio.Transport  # set by connection_made, before the pool ever sees it
    fd: int

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.h11 = h11.Connection(h11.CLIENT)
        # Set from the loop's callbacks; any of them makes the connection unfit for reuse.
        self.closed = False  # EOF or connection lost
        self.error: BaseException | None = None  # why the connection was lost, if it was
        self.stray = False  # bytes arrived while no request was in flight
        self.busy = False
        self.idle_until = 0.0
        self.expiry = 0.0  # idle seconds allowed after the current response
        self._waiter: asyncio.Future[bool] | None = None
        self._drain: asyncio.Future[bool] | None = None
        self._paused = False
        self._lost: asyncio.Future[None] = loop.create_future()

    # asyncio.Protocol callbacks: record and wake, nothing else.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()  # passed through by TLS too

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.closed:
            self.stray = True
            return
        self.h11.receive_data(data)
        self._wake(self._waiter)

    def eof_received(self) -> bool:
        self.closed = True
        self.h11.receive_data(b"")
        self._wake(self._waiter)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self.h11.receive_data(b"")
        self._wake(self._waiter)
        self._wake(self._drain)
        self._lost.set_result(None)  # asyncio calls this once

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(self._drain)

    @staticmethod
    def _wake(waiter: asyncio.Future[bool] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # Used by the pool and the transport.

    def reusable(self, now: float, loop: asyncio.AbstractEventLoop) -> bool:
        """Fit to carry the next request: open, quiet, not expired, and its socket has nothing
        to read (a server's close the loop has not seen yet shows as a readable socket)."""
        return (
            loop is self.loop
            and not (self.closed or self.stray)
            and not self.transport.is_closing()
            and now < self.idle_until
            and not _readable(self.fd)
        )

    async def close(self, grace: float) -> None:
        """Close, waiting up to ``grace`` seconds for what is buffered to leave (and a TLS
        close_notify to be answered); then abort."""
        if self.loop.is_closed():
            return  # see abort()
        self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), grace)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once. One left open on an event loop that has since closed
        (a client kept across ``asyncio.run`` calls and not closed) cannot be closed through
        that loop any more; asyncio releases its socket, with a ResourceWarning, when it is
        collected."""
        if not self.loop.is_closed():
            self.transport.abort()

    def write(self, head: h11.Request, content: bytes, request: httpx.Request) -> None:
        """Write a request whose body is whole, head and body in one write (one segment for a
        small request). From here on, nothing raised may say "not sent"."""
        try:
            out = [self.h11.send(head)]
            if content:
                out.append(self.h11.send(h11.Data(data=content)))
            out.append(self.h11.send(_END))
        except h11.LocalProtocolError as exc:  # a body that disagrees with Content-Length
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        self.transport.write(b"".join(out))

    async def write_stream(
        self, head: h11.Request, request: httpx.Request, write_timeout: float | None
    ) -> None:
        """Write a request whose body is a stream, chunk by chunk as it comes."""
        assert isinstance(request.stream, httpx.AsyncByteStream)
        transport = self.transport
        try:
            transport.write(self.h11.send(head))
            async for chunk in request.stream:
                if chunk:
                    transport.write(self.h11.send(h11.Data(data=chunk)))
                    if self.blocked:
                        await self.drained(request, write_timeout)
            transport.write(self.h11.send(_END))
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc

    @property
    def blocked(self) -> bool:
        """Writing must wait (the buffer is over its high-water mark) or cannot go on."""
        return self._paused or self.closed

    async def drained(self, request: httpx.Request, write_timeout: float | None) -> None:
        """Wait while the transport's buffer is over its high-water mark (the write timeout)."""
        while self._paused and not self.closed:
            waiter = self.loop.create_future()
            self._drain = waiter
            handle = (
                self.loop.call_later(write_timeout, _expire, waiter)
                if write_timeout is not None
                else None
            )
            try:
                woken = await waiter
            finally:
                self._drain = None
                if handle is not None:
                    handle.cancel()
            if not woken:
                raise httpx.WriteTimeout("timed out writing the request", request=request)
        if self.closed:
            raise httpx.WriteError(
                f"the connection was lost while writing the request ({self._reason()})",
                request=request,
            )

    def buffered_event(self, request: httpx.Request) -> h11.Event | None:
        """The next response event in the bytes already received, or ``None``."""
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            if self.error is not None:
                raise httpx.ReadError(
                    f"the connection was lost while reading the response ({self._reason()})",
                    request=request,
                ) from exc
            closed = " (the server closed the connection)" if self.closed else ""
            raise httpx.RemoteProtocolError(f"{exc}{closed}", request=request) from exc
        if isinstance(event, h11.Event):
            return event
        if event is h11.NEED_DATA:
            return None
        # h11.PAUSED: reading stops at the response's end, so it never gets this far.
        raise httpx.RemoteProtocolError(  # pragma: no cover
            "bytes beyond the response", request=request
        )

    async def next_event(self, request: httpx.Request, read_timeout: float | None) -> h11.Event:
        """The next response event h11 parses, waiting for bytes at most ``read_timeout``
        seconds each time none are buffered."""
        while True:
            event = self.buffered_event(request)
            if event is not None:
                return event
            waiter = self.loop.create_future()
            self._waiter = waiter
            handle = (
                self.loop.call_later(read_timeout, _expire, waiter)
                if read_timeout is not None
                else None
            )
            try:
                woken = await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()
            if not woken:
                raise httpx.ReadTimeout("timed out reading the response", request=request)

    def _reason(self) -> str:
        return type(self.error).__name__ if self.error is not None else "closed by the server"


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Pool:
    """The connections to one origin: at most ``limit``, idle ones reused newest first, callers
    beyond the limit served in arrival order as connections come back."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limit: int,
        expiry: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._limit = limit
        self._expiry = expiry
        self._idle: list[_Connection] = []
        self._count = 0  # idle, in use and being opened
        # Each waiter receives a connection handed back, or None: a slot to open one in.
        self._waiters: collections.deque[asyncio.Future[_Connection | _Wait | None]] = (
            collections.deque()
        )
        self.connections: set[_Connection] = set()
        self.closed = False

    def idle(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        """The newest idle connection fit for reuse, if any; unfit ones are dropped."""
        idle = self._idle
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.reusable(now, loop):
                    return connection
                self._drop(connection)
        return None

    async def acquire(
        self,
        loop: asyncio.AbstractEventLoop,
        request: httpx.Request,
        timeouts: Mapping[str, float | None],
    ) -> _Connection:
        """A connection for ``request``: a waiting one, else a new one, else the next one
        handed back (up to the pool timeout)."""
        if self._count < self._limit:
            self._count += 1
        else:
            handed = await self._wait(loop, request, timeouts.get("pool"))
            if handed is not None:
                if handed.reusable(time.monotonic(), loop):
                    return handed
                self._forget(handed)  # its slot is ours: open a new connection in it
        return await self._open(loop, request, timeouts.get("connect"))

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, request: httpx.Request, timeout: float | None
    ) -> _Connection | None:
        waiter: asyncio.Future[_Connection | _Wait | None] = loop.create_future()
        self._waiters.append(waiter)
        handle = loop.call_later(timeout, _time_out, waiter) if timeout is not None else None
        try:
            handed = await waiter
        except BaseException:
            # Cancelled: whatever was handed over in the meantime goes back.
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not _Wait.TIMED_OUT:
                    self._give_back(handed)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if handed is _Wait.TIMED_OUT:
            raise httpx.PoolTimeout(
                f"no connection to {self._host} free within {timeout} s", request=request
            )
        return handed

    async def _open(
        self, loop: asyncio.AbstractEventLoop, request: httpx.Request, timeout: float | None
    ) -> _Connection:
        """Open a connection in a slot already counted. Every failure here is before the request
        was written: ConnectError or ConnectTimeout."""
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except BaseException as exc:
            self._count -= 1
            self._pass_slot()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(
                    f"timed out connecting to {self._host}:{self._port}", request=request
                ) from exc
            if isinstance(exc, OSError):  # refused, unreachable, DNS, and TLS (ssl.SSLError)
                raise httpx.ConnectError(
                    f"could not connect to {self._host}:{self._port}: {exc}", request=request
                ) from exc
            raise
        if self.closed or connection.closed or connection.stray:
            # The transport was closed meanwhile, or the server closed (or wrote on) the new
            # connection at once: nothing was written yet.
            connection.abort()
            self._count -= 1
            self._pass_slot()
            why = "the transport was closed" if self.closed else "the server closed it at once"
            raise httpx.ConnectError(
                f"connected to {self._host}:{self._port} but sent nothing: {why}", request=request
            )
        self.connections.add(connection)
        return connection

    def release(self, connection: _Connection, *, reuse: bool) -> None:
        """Take a connection back after its exchange: kept for the next caller when ``reuse``,
        else closed and its slot passed on."""
        if reuse and not self.closed:
            self._give_back(connection)
        else:
            self._drop(connection)

    def _give_back(self, connection: _Connection | None) -> None:
        if connection is None:  # a slot handed to a waiter that left
            self._count -= 1
            self._pass_slot()
            return
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(connection)
        else:
            self._idle.append(connection)

    def _drop(self, connection: _Connection) -> None:
        self._forget(connection)
        self._count -= 1
        self._pass_slot()

    def _forget(self, connection: _Connection) -> None:
        # Abort, not close: a close waits to flush what is still buffered, and a server that
        # stopped reading would keep the socket open for ever.
        connection.abort()
        self.connections.discard(connection)

    def _pass_slot(self) -> None:
        if self._count < self._limit:
            waiter = self._next_waiter()
            if waiter is not None:
                self._count += 1
                waiter.set_result(None)

    def _next_waiter(self) -> asyncio.Future[_Connection | _Wait | None] | None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def expiry(self, headers: Iterable[tuple[bytes, bytes]]) -> float:
        """How long a connection may sit idle after this response: ``keepalive_expiry``, cut to
        a second less than the server's own ``Keep-Alive: timeout`` when it announces one."""
        announced = _keep_alive_timeout(headers)
        return self._expiry if announced is None else min(self._expiry, announced - 1.0)

    async def aclose(self) -> None:
        self.closed = True
        await asyncio.gather(*(c.close(_CLOSE_GRACE) for c in self.connections))
        self.connections.clear()
        self._idle.clear()


class _Wait(enum.Enum):
    TIMED_OUT = "timed out"


def _time_out(waiter: asyncio.Future[_Connection | _Wait | None]) -> None:
    if not waiter.done():
        waiter.set_result(_Wait.TIMED_OUT)


def _finish(pool: _Pool, connection: _Connection, *, complete: bool) -> None:
    """Hand a connection back after its response: kept for the next request only when the
    exchange completed cleanly both ways and nothing is left unread."""
    connection.busy = False
    state = connection.h11
    reuse = (
        complete
        and state.our_state is h11.DONE
        and state.their_state is h11.DONE
        and not any(state.trailing_data)
        and not connection.stray
    )
    if reuse:
        state.start_next_cycle()
        connection.idle_until = time.monotonic() + connection.expiry
    pool.release(connection, reuse=reuse)


class _Body(httpx.AsyncByteStream):
    """A response body still arriving: the chunks already parsed, then the rest as it comes.
    The connection goes back to the pool when the body ends, or is closed if it is left
    unfinished."""

    def __init__(
        self,
        pool: _Pool,
        connection: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
        parsed: list[bytes],
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._request = request
        self._timeout = read_timeout
        self._parsed = parsed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        complete = False
        try:
            for chunk in self._parsed:
                yield chunk
            self._parsed = []
            while True:
                event = await connection.next_event(self._request, self._timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
        finally:
            self._release(complete=complete)

    def _release(self, *, complete: bool) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            _finish(self._pool, connection, complete=complete)

    async def aclose(self) -> None:
        self._release(complete=False)


class AsyncStreamTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 keep-alive transport on asyncio for ``httpx.AsyncClient``.

    Per origin, at most ``max_connections`` connections, each kept ``keepalive_expiry`` idle
    seconds (less when the server announces a shorter ``Keep-Alive: timeout``). Timeouts come
    from the request's ``timeout`` extension, as httpx sets it: connect (TLS handshake included),
    read (each wait for bytes), write and pool. ``verify`` is ``True`` (httpx's own default
    context: certifi's roots, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), ``False``, or an
    :class:`ssl.SSLContext`. HTTP proxies and HTTP/2 are not spoken. Asyncio only.
    """

    def __init__(
        self,
        *,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 10,
        keepalive_expiry: float = 60.0,
    ) -> None:
        if not isinstance(verify, bool | ssl.SSLContext):
            raise InvalidArgumentType(
                f"verify must be a bool or ssl.SSLContext, not {type(verify).__name__}"
            )
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None  # made for the first https origin
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise InvalidArgumentType(
                f"max_connections must be an int, not {type(max_connections).__name__}"
            )
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be at least 1, got {max_connections}")
        self._limit = max_connections
        self._expiry = float(keepalive_expiry)
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._heads: dict[tuple[str, bytes, tuple[tuple[bytes, bytes], ...]], h11.Request] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_connections={self._limit}, keepalive_expiry={self._expiry})"
        )

    @property
    def connections(self) -> int:
        """How many connections are open now, idle or in use, across every origin."""
        return sum(len(pool.connections) for pool in self._pools.values())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        head = self._head(request)
        pool = self._pool(request)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        loop = asyncio.get_running_loop()
        connection = pool.idle(loop) or await pool.acquire(loop, request, timeouts)
        connection.busy = True
        read_timeout = timeouts.get("read")
        try:
            try:
                content: bytes | None = request.content
            except httpx.RequestNotRead:
                content = None
            if content is None:
                await connection.write_stream(head, request, timeouts.get("write"))
            else:
                connection.write(head, content, request)
            if connection.blocked:
                await connection.drained(request, timeouts.get("write"))
            while True:
                event = await connection.next_event(request, read_timeout)
                if isinstance(event, h11.Response):
                    break
                # InformationalResponse (1xx) events are skipped.
            # The body parsed as far as it has arrived: usually all of it, so the connection
            # goes back at once and no stream is left to await.
            parsed: list[bytes] = []
            complete = False
            while (part := connection.buffered_event(request)) is not None:
                if isinstance(part, h11.Data):
                    parsed.append(bytes(part.data))
                elif isinstance(part, h11.EndOfMessage):
                    complete = True
                    break
        except BaseException:
            _finish(pool, connection, complete=False)
            raise
        connection.expiry = pool.expiry(event.headers)
        headers = event.headers.raw_items()
        extensions = {"http_version": _HTTP_VERSION, "reason_phrase": event.reason}
        if not complete:
            stream = _Body(pool, connection, request, read_timeout, parsed)
            return httpx.Response(
                event.status_code, headers=headers, stream=stream, extensions=extensions
            )
        _finish(pool, connection, complete=True)
        response = httpx.Response(
            event.status_code,
            headers=headers,
            stream=httpx.ByteStream(b"".join(parsed)),
            extensions=extensions,
        )
        # Read here, as httpx does for a body given whole (``content=``): the client's own
        # read then has nothing left to do, which saves it a chain of async iterators.
        response.read()
        return response

    def _pool(self, request: httpx.Request) -> _Pool:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"the URL's scheme must be http or https, not {scheme!r}", request=request
            )
        host = url.host
        port = url.port or _DEFAULT_PORTS[scheme]
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(
                host,
                port,
                limit=self._limit,
                expiry=self._expiry,
                ssl_context=self._ssl_context() if scheme == "https" else None,
            )
        return pool

    def _ssl_context(self) -> ssl.SSLContext:
        """The TLS settings, made once: loading the roots costs tens of milliseconds, which
        a client that only speaks http (tests, the emulator) need not pay."""
        if self._ssl is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            else:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
                self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def _head(self, request: httpx.Request) -> h11.Request:
        """The request's head as an h11 event, validated by h11 (no CR, LF or NUL smuggled into
        a header). A client sends the same few heads over and over, and h11's checks cost a
        third of a request's parsing, so each distinct head is checked once and its event
        reused: h11 never changes an event."""
        target = request.url.raw_path
        raw = request.headers.raw
        key = (request.method, target, tuple(raw))
        event = self._heads.get(key)
        if event is None:
            try:
                event = h11.Request(method=request.method, target=target, headers=raw)
            except h11.LocalProtocolError as exc:
                raise httpx.LocalProtocolError(str(exc), request=request) from exc
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads[key] = event
        return event

    async def aclose(self) -> None:
        self._closed = True
        self._heads.clear()
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(pool.aclose() for pool in pools))
