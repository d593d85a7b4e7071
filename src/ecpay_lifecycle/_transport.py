"""``AsyncStreamTransport``: the httpx transport under :class:`AsyncClient`.

An HTTP/1.1 keep-alive client on asyncio's protocols. It exists for speed: httpx's own transport
(httpcore on anyio) spends several times its CPU on every request over a socket
(``benchmarks/bench_wire.py``). Each response is parsed once, as its bytes arrive, by the small
strict reader below: a status line, header lines, and a body framed by Content-Length, by
chunked transfer coding, or by the server's close. Anything else (obsolete line folding, both
framings at once, a transfer coding other than chunked, a control character in a header, a head
over 64 KiB) is a ``RemoteProtocolError``: after the request was written that reads as an
unknown outcome, which the engine resolves by a query, never by sending again.

It keeps one pool per origin of at most ``max_connections`` connections, each kept alive for
``keepalive_expiry`` seconds. How its errors read matters to the engine (``_engine._NOT_SENT``):

* ``ConnectError``, ``ConnectTimeout`` and ``PoolTimeout`` are raised only before a byte of the
  request was handed to the socket: the request provably did not leave. So is
  ``LocalProtocolError`` (a header with a line break in it, a body that disagrees with its
  Content-Length): the request is checked and framed whole before anything is written. A
  streamed body can only be measured as it goes out, so one that disagrees with its
  Content-Length is a ``WriteError``: its head has left.
* Once the request was written, every failure is ``WriteError``, ``WriteTimeout``,
  ``ReadError``, ``ReadTimeout`` or ``RemoteProtocolError``: the outcome is unknown. Nothing is
  ever sent again by the transport, whatever the method.
* A kept-alive connection the server closed (or wrote to) while it sat idle is found before it
  is reused (its state and the socket's readability are checked) and is never sent on.

Not spoken: HTTP/2, HTTP proxies (``HTTP(S)_PROXY`` is ignored), ``Expect: 100-continue`` (a
body is sent at once; an interim 1xx reply is skipped), protocol upgrades (101), and transfer
codings other than chunked. A streamed response body is buffered as it arrives, however slowly
it is read. It logs nothing, so neither bodies nor credentials can leak through it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import re
import select
import ssl
import sys
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Final

import attrs
import httpx

from ._exceptions import ConfigurationError, InvalidArgumentType

__all__ = ["AsyncStreamTransport", "Route"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Seconds ``aclose`` waits for a closed connection's socket to be released before aborting it.
_CLOSE_GRACE: Final = 1.0
#: The most a response head (or a chunked body's trailer) may take.
_MAX_HEAD: Final = 65536
#: The most a chunk-size line may take (hex digits and extensions).
_MAX_CHUNK_LINE: Final = 4096
#: Distinct request heads kept encoded (see ``AsyncStreamTransport._head``).
_HEADS_KEPT: Final = 64
#: Request bodies up to this size go out in one write with their head.
_JOIN_BELOW: Final = 65536
#: RFC 9110 §6.4.1: no content in these responses whatever their headers say.
_NO_CONTENT: Final = frozenset({204, 304})

# RFC 9112's grammar, as strict as h11's: a field value is visible characters (and obs-text)
# separated by spaces or tabs; NUL, CR, LF and other whitespace are refused.
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE: Final = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_FIELD: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*")
_NAME: Final = re.compile(_TOKEN)
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00\r\n]*))?")
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00\r\n]*)?")
_REQUEST_HEAD: Final = re.compile(
    _TOKEN + rb" [\x21-\x7e]+ HTTP/1\.1\r\n(?:" + _TOKEN + rb":[ \t]*" + _VALUE + rb"\r\n)*\r\n"
)


# Where the reader is in the current response.
_HEAD: Final = 0  # waiting for the status line and headers (1xx heads are skipped)
_LENGTH: Final = 1  # a body of Content-Length bytes
_CHUNK_SIZE: Final = 2  # a chunk-size line
_CHUNK_DATA: Final = 3
_CHUNK_END: Final = 4  # the CRLF after a chunk's data
_TRAILER: Final = 5  # trailer fields after the last chunk, up to an empty line
_UNTIL_CLOSE: Final = 6  # a body that ends when the server closes
_DONE: Final = 7
_FAILED: Final = 8
_IDLE: Final = 9  # no exchange in progress


class _Malformed(Exception):
    """The server's bytes are not an HTTP/1.1 response this reader accepts."""


def _readable(fd: int) -> bool:
    """Whether a socket has something to read (bytes, an EOF or an error) right now."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


if sys.platform == "win32" or not hasattr(select, "poll"):  # pragma: no cover - no poll there

    def _readable(fd: int) -> bool:
        return bool(select.select([fd], [], [], 0)[0])


def _keep_alive_timeout(value: bytes) -> float | None:
    """The idle seconds a ``Keep-Alive: timeout=N`` response header announces, if any."""
    for part in value.split(b","):
        key, _, number = part.strip().partition(b"=")
        if key.strip().lower() == b"timeout":
            try:
                return float(number)
            except ValueError:
                return None
    return None


def _content_length(value: bytes, known: int | None) -> int:
    """A Content-Length value (RFC 9110 §8.6: a list of one repeated number is allowed)."""
    numbers = {part.strip() for part in value.split(b",")}
    if len(numbers) != 1:
        raise _Malformed("conflicting Content-Length values")
    (number,) = numbers
    if not (number.isdigit() and len(number) <= 18):
        raise _Malformed("a Content-Length that is not a number")
    length = int(number)
    if known is not None and known != length:
        raise _Malformed("conflicting Content-Length headers")
    return length


def _is_chunked(value: bytes) -> bool:
    """Transfer-Encoding: chunked is the only coding spoken; any other is refused."""
    if value.strip().lower() != b"chunked":
        raise _Malformed(f"unsupported Transfer-Encoding {value.decode('latin-1')!r}")
    return True


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection. The loop's callbacks parse each response as its bytes arrive
    and wake the request's task; the task reads the results from the attributes."""

    __slots__ = (
        "_buffer",
        "_drain",
        "_head_only",
        "_left",
        "_lost",
        "_paused",
        "_trailer",
        "_waiter",
        "busy",
        "closed",
        "error",
        "failure",
        "fd",
        "headers",
        "idle_until",
        "keep",
        "keep_alive_timeout",
        "loop",
        "parts",
        "phase",
        "reason",
        "status",
        "stray",
        "transport",
        "version",
    )

    transport: asyncio.Transport  # set by connection_made, before the pool ever sees it
    fd: int

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Set from the loop's callbacks; any of them makes the connection unfit for reuse.
        self.closed = False  # EOF or connection lost
        self.error: BaseException | None = None  # why the connection was lost, if it was
        self.stray = False  # bytes arrived while no response was expected
        self.busy = False
        self.idle_until = 0.0
        self._waiter: asyncio.Future[bool] | None = None
        self._drain: asyncio.Future[bool] | None = None
        self._paused = False
        self._lost: asyncio.Future[None] = loop.create_future()
        self._buffer = b""
        self.phase = _IDLE
        self._head_only = False
        self._left = 0
        self._trailer = 0
        # The current response, as far as it was read.
        self.failure: str | None = None
        self.status = 0
        self.reason = b""
        self.version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.keep = True  # the response lets the connection carry another request
        self.keep_alive_timeout: float | None = None

    # asyncio.Protocol callbacks: parse, record and wake, nothing else.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fd = transport.get_extra_info("socket").fileno()  # passed through by TLS too

    def data_received(self, data: bytes) -> None:
        if self.phase >= _DONE:  # idle, finished or failed: nothing more was asked for
            self.stray = True
            return
        buffer = self._buffer + data if self._buffer else data
        try:
            self._buffer = self._parse(buffer)
        except _Malformed as exc:
            self.failure = str(exc)
            self.phase = _FAILED
            self._buffer = b""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def eof_received(self) -> bool:
        self._closed_now()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self._closed_now()
        self._wake(self._drain)
        self._lost.set_result(None)  # asyncio calls this once

    def _closed_now(self) -> None:
        self.closed = True
        self.keep = False
        if self.phase == _UNTIL_CLOSE and self.error is None:
            self.phase = _DONE
        self._wake(self._waiter)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(self._drain)

    @staticmethod
    def _wake(waiter: asyncio.Future[bool] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # The reader: one pass over the bytes as they come, no copy of a body that came whole.

    def _parse(self, buffer: bytes) -> bytes:
        """Read what ``buffer`` holds of the response; return the bytes left for later."""
        position = 0
        end_of_buffer = len(buffer)
        while True:
            phase = self.phase
            if phase in (_LENGTH, _CHUNK_DATA):
                available = end_of_buffer - position
                if not available:
                    return b""
                take = self._left if self._left < available else available
                self.parts.append(
                    buffer if take == end_of_buffer else buffer[position : position + take]
                )
                position += take
                self._left -= take
                if not self._left:
                    self.phase = _DONE if phase == _LENGTH else _CHUNK_END
            elif phase == _HEAD:
                end = buffer.find(b"\r\n\r\n", position)
                if end < 0 or end - position > _MAX_HEAD:
                    if end_of_buffer - position > _MAX_HEAD:
                        raise _Malformed("a response head over 64 KiB")
                    return buffer[position:]
                self._read_head(buffer[position:end])
                position = end + 4
            elif phase == _UNTIL_CLOSE:
                if position < end_of_buffer:
                    self.parts.append(buffer[position:] if position else buffer)
                return b""
            elif phase == _DONE:  # anything after the response's end is unasked for
                if position < end_of_buffer:
                    self.stray = True
                return b""
            else:
                position = self._chunk_framing(buffer, position)
                if position < 0:
                    return buffer[~position:]

    def _chunk_framing(self, buffer: bytes, position: int) -> int:
        """Read one chunk-size line, the CRLF after a chunk, or a trailer line at ``position``;
        return the position after it, or ``~position`` when it has not all arrived."""
        phase = self.phase
        if phase == _CHUNK_END:
            if len(buffer) - position < 2:
                return ~position
            if buffer[position : position + 2] != b"\r\n":
                raise _Malformed("a chunk not followed by CRLF")
            self.phase = _CHUNK_SIZE
            return position + 2
        end = buffer.find(b"\r\n", position)
        if phase == _CHUNK_SIZE:
            if end < 0:
                if len(buffer) - position > _MAX_CHUNK_LINE:
                    raise _Malformed("a chunk-size line over 4 KiB")
                return ~position
            match = _CHUNK_LINE.fullmatch(buffer, position, end)
            if match is None:
                raise _Malformed("a malformed chunk-size line")
            self._left = int(match[1], 16)
            self.phase = _CHUNK_DATA if self._left else _TRAILER
            return end + 2
        # _TRAILER: fields are checked and dropped (httpx has no place for them)
        if end < 0:
            if self._trailer + len(buffer) - position > _MAX_HEAD:
                raise _Malformed("a trailer over 64 KiB")
            return ~position
        self._trailer += end + 2 - position
        if self._trailer > _MAX_HEAD:
            raise _Malformed("a trailer over 64 KiB")
        if end == position:
            self.phase = _DONE
        elif _FIELD.fullmatch(buffer, position, end) is None:
            raise _Malformed("a malformed trailer field")
        return end + 2

    def _read_head(self, head: bytes) -> None:
        """Read a status line and its header fields, and choose how the body is framed."""
        lines = head.split(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise _Malformed("not an HTTP/1.x status line")
        status = int(status_line[2])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep = status_line[1] == b"1"  # HTTP/1.0 replies close; no 1.0 keep-alive is asked for
        keep_alive_timeout = None
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if field is None:  # obsolete line folding, no colon, a control character ...
                raise _Malformed("a malformed header line")
            name, value = field.group(1, 2)
            headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                length = _content_length(value, length)
            elif lower == b"transfer-encoding":
                chunked = _is_chunked(value)
            elif lower == b"connection":
                if any(token.strip().lower() == b"close" for token in value.split(b",")):
                    keep = False
            elif lower == b"keep-alive":
                keep_alive_timeout = _keep_alive_timeout(value)
        if status < 200:
            if status == 101:
                raise _Malformed("a protocol upgrade (101), which was not asked for")
            return  # an interim reply (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.reason = status_line[3] or b""
        self.version = b"HTTP/1.1" if status_line[1] == b"1" else b"HTTP/1.0"
        self.headers = headers
        self.keep = keep
        self.keep_alive_timeout = keep_alive_timeout
        if chunked and length is not None:
            # RFC 9112 §6.3: a sign of request smuggling or response splitting.
            raise _Malformed("both Transfer-Encoding and Content-Length")
        if self._head_only or status in _NO_CONTENT:
            self.phase = _DONE
        elif chunked:
            self.phase = _CHUNK_SIZE
        elif length is not None:
            self._left = length
            self.phase = _LENGTH if length else _DONE
        else:
            self.keep = False
            self.phase = _UNTIL_CLOSE

    # Used by the pool and the transport.

    def begin(self, head_only: bool) -> None:
        """Expect a response: to a HEAD request when ``head_only`` (no body, whatever it says)."""
        self.busy = True
        self.phase = _HEAD
        self._head_only = head_only
        self._buffer = b""
        self.failure = None
        self.parts = []
        self._trailer = 0

    @property
    def has_head(self) -> bool:
        return _HEAD < self.phase < _FAILED

    @property
    def done(self) -> bool:
        return self.phase == _DONE

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
        self._give_up()
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
            self._give_up()
            self.transport.abort()

    def _give_up(self) -> None:
        """This side closes: a response still being read fails, even one that a close would
        otherwise end (framed by the server's close, it would look whole)."""
        if _HEAD <= self.phase < _DONE:
            self.failure = "the connection was closed by this client"
            self.phase = _FAILED
            self._wake(self._waiter)

    async def write_stream(
        self,
        head: bytes,
        request: httpx.Request,
        length: int | None,
        chunked: bool,
        write_timeout: float | None,
    ) -> None:
        """Write a request whose body is a stream, chunk by chunk as it comes, framed as its
        headers say (chunked, or exactly ``length`` bytes)."""
        assert isinstance(request.stream, httpx.AsyncByteStream)
        transport = self.transport
        transport.write(head)
        sent = 0
        async for chunk in request.stream:
            if not chunk:
                continue
            sent += len(chunk)
            if chunked:
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            elif length is None or sent > length:
                # The head (and maybe a whole body) has left: not a "not sent" error.
                raise httpx.WriteError(
                    "the request body is longer than its Content-Length", request=request
                )
            else:
                transport.write(chunk)
            if self.blocked:
                await self.drained(request, write_timeout)
        if chunked:
            transport.write(b"0\r\n\r\n")
        elif sent != (length or 0):
            raise httpx.WriteError(
                "the request body is shorter than its Content-Length", request=request
            )

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

    def check(self, request: httpx.Request) -> None:
        """Raise if the response cannot go on: malformed, or the connection was lost."""
        if self.failure is not None:
            closed = " (the server closed the connection)" if self.closed else ""
            raise httpx.RemoteProtocolError(f"{self.failure}{closed}", request=request)
        if self.closed and self.phase != _DONE:
            where = "the response's body" if self.has_head else "the response"
            if self.error is not None:
                raise httpx.ReadError(
                    f"the connection was lost while reading {where} ({self._reason()})",
                    request=request,
                )
            raise httpx.RemoteProtocolError(
                f"the server closed the connection before the end of {where}", request=request
            )

    async def wait(self, request: httpx.Request, read_timeout: float | None) -> None:
        """Wait for the next bytes of the response (or its end), at most ``read_timeout``."""
        self.check(request)
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

    def take(self) -> list[bytes]:
        """The body bytes read so far and not yet handed over."""
        parts = self.parts
        self.parts = []
        return parts

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

    def expiry(self, announced: float | None) -> float:
        """How long a connection may sit idle after a response: ``keepalive_expiry``, cut to a
        second less than the server's own ``Keep-Alive: timeout`` when it announced one."""
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
    exchange completed cleanly, the server allows it, and nothing is left unread."""
    connection.busy = False
    reuse = (
        complete
        and connection.phase == _DONE
        and connection.keep
        and not connection.closed
        and not connection.stray
    )
    connection.phase = _IDLE
    if reuse:
        connection.idle_until = time.monotonic() + pool.expiry(connection.keep_alive_timeout)
    pool.release(connection, reuse=reuse)


class _Body(httpx.AsyncByteStream):
    """A response body still arriving: what was read, then the rest as it comes. The connection
    goes back to the pool when the body ends, or is closed if it is left unfinished."""

    def __init__(
        self,
        pool: _Pool,
        connection: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._request = request
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        complete = False
        try:
            while True:
                parts = connection.take()
                if parts:
                    for part in parts:
                        yield part
                    continue  # more may have come, or the end, while the reader held a part
                if connection.done:
                    complete = True
                    break
                await connection.wait(self._request, self._timeout)
        finally:
            self._release(complete=complete)

    def _release(self, *, complete: bool) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            _finish(self._pool, connection, complete=complete)

    async def aclose(self) -> None:
        self._release(complete=False)


def _encode_head(
    request: httpx.Request, raw: list[tuple[bytes, bytes]] | None = None
) -> tuple[bytes, int | None, bool, bool]:
    """The request's head as bytes, checked (no CR, LF or NUL smuggled into a header), with the
    body's framing its headers declare: (head, Content-Length, chunked, ``Connection: close``).
    ``raw`` replaces the request's own header fields."""
    if raw is None:
        raw = request.headers.raw
    lines = [
        b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii", "replace"), request.url.raw_path)
    ]
    length: int | None = None
    chunked = False
    close = False
    host = False
    for name, value in raw:
        if _NAME.fullmatch(name) is None:
            raise httpx.LocalProtocolError(f"an invalid header name {name!r}", request=request)
        lines.append(b"%s: %s\r\n" % (name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not (value.isdigit() and (length is None or int(value) == length)):
                raise httpx.LocalProtocolError(
                    f"an invalid Content-Length {value!r}", request=request
                )
            length = int(value)
        elif lower == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise httpx.LocalProtocolError(
                    f"unsupported Transfer-Encoding {value!r}", request=request
                )
            chunked = True
        elif lower == b"connection":
            close = any(token.strip().lower() == b"close" for token in value.split(b","))
        elif lower == b"host":
            host = True
    if not host:  # RFC 9112 §3.2: every HTTP/1.1 request names its host
        raise httpx.LocalProtocolError("a request without a Host header", request=request)
    lines.append(b"\r\n")
    head = b"".join(lines)
    # A line break inside a value would pass the pattern as two fields: count the lines too.
    if _REQUEST_HEAD.fullmatch(head) is None or head.count(b"\n") != len(lines):
        raise httpx.LocalProtocolError(
            "a request line or header field with a character HTTP does not allow",
            request=request,
        )
    if chunked and length is not None:
        raise httpx.LocalProtocolError("both Transfer-Encoding and Content-Length", request=request)
    return head, length, chunked, close


def _framed(
    request: httpx.Request, head: bytes, content: bytes, length: int | None, chunked: bool
) -> list[bytes]:
    """A whole request, head and body, framed and checked before any of it is written."""
    if chunked:
        if not content:
            return [head + b"0\r\n\r\n"]
        return [b"%s%x\r\n%s\r\n0\r\n\r\n" % (head, len(content), content)]
    if len(content) != (length or 0):
        raise httpx.LocalProtocolError(
            f"a body of {len(content)} bytes does not match its Content-Length ({length})",
            request=request,
        )
    if len(content) < _JOIN_BELOW:  # one write, one segment for a small request
        return [head + content]
    return [head, content]


@attrs.frozen
class Route:
    """One method, URL and set of headers, prepared by :meth:`AsyncStreamTransport.route` for
    :meth:`AsyncStreamTransport.exchange`: the head before its Content-Length, the origin's pool,
    the timeouts, and an ``httpx.Request`` (without a body) that errors name."""

    pool: _Pool = attrs.field(repr=False)
    prefix: bytes = attrs.field(repr=False)
    request: httpx.Request
    timeouts: Mapping[str, float | None] = attrs.field(repr=False)
    read_timeout: float | None = attrs.field(repr=False)
    write_timeout: float | None = attrs.field(repr=False)
    head_only: bool = False
    close: bool = False


def _decoded(headers: list[tuple[bytes, bytes]], body: bytes, request: httpx.Request) -> bytes:
    """``body`` with its Content-Encoding undone, as httpx would: gzip, deflate (zlib-wrapped
    or raw) and identity; any other coding, or bytes that do not decode, is a DecodingError."""
    codings: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            codings += [coding.strip().lower() for coding in value.split(b",")]
    for coding in reversed(codings):
        try:
            if coding == b"gzip":
                body = zlib.decompress(body, zlib.MAX_WBITS | 16)
            elif coding == b"deflate":
                try:
                    body = zlib.decompress(body)
                except zlib.error:
                    body = zlib.decompress(body, -zlib.MAX_WBITS)
            elif coding not in (b"identity", b""):
                raise httpx.DecodingError(
                    f"a response in an unsupported Content-Encoding {coding!r}", request=request
                )
        except zlib.error as exc:
            raise httpx.DecodingError(
                f"a response body that is not valid {coding.decode('ascii', 'replace')}: {exc}",
                request=request,
            ) from None
    return body


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
        self._heads: dict[
            tuple[str, bytes, tuple[tuple[bytes, bytes], ...]],
            tuple[bytes, int | None, bool, bool],
        ] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_connections={self._limit}, keepalive_expiry={self._expiry})"
        )

    @property
    def max_connections(self) -> int:
        """The most connections open at once to each origin."""
        return self._limit

    @property
    def connections(self) -> int:
        """How many connections are open now, idle or in use, across every origin."""
        return sum(len(pool.connections) for pool in self._pools.values())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        # Everything that can be refused is refused before a connection is taken.
        head, length, chunked, close = self._head(request)
        try:
            whole: list[bytes] | None = _framed(request, head, request.content, length, chunked)
        except httpx.RequestNotRead:
            whole = None
        pool = self._pool(request)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        loop = asyncio.get_running_loop()
        connection = pool.idle(loop) or await pool.acquire(loop, request, timeouts)
        connection.begin(request.method == "HEAD")
        read_timeout = timeouts.get("read")
        try:
            if whole is None:
                await connection.write_stream(head, request, length, chunked, timeouts.get("write"))
            else:
                for piece in whole:
                    connection.transport.write(piece)
            if connection.blocked:
                await connection.drained(request, timeouts.get("write"))
            while not connection.has_head:
                await connection.wait(request, read_timeout)
            if not connection.done:
                connection.check(request)
        except BaseException:
            _finish(pool, connection, complete=False)
            raise
        if close:
            connection.keep = False
        extensions = {"http_version": connection.version, "reason_phrase": connection.reason}
        if not connection.done:
            return httpx.Response(
                connection.status,
                headers=connection.headers,
                stream=_Body(pool, connection, request, read_timeout),
                extensions=extensions,
            )
        parts = connection.take()
        status, headers = connection.status, connection.headers
        _finish(pool, connection, complete=True)
        response = httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(parts[0] if len(parts) == 1 else b"".join(parts)),
            extensions=extensions,
        )
        # Read here, as httpx does for a body given whole (``content=``): the client's own
        # read then has nothing left to do, which saves it a chain of async iterators.
        response.read()
        return response

    def route(self, request: httpx.Request) -> Route:
        """Prepare ``request``'s method, URL and headers (its body and Content-Length aside) for
        :meth:`exchange`: checked and encoded once, for every request sent that way."""
        raw = [(name, value) for name, value in request.headers.raw]
        fields = [name.lower() for name, _ in raw]
        if b"transfer-encoding" in fields:
            raise httpx.LocalProtocolError(
                "a route's requests are framed by Content-Length only", request=request
            )
        raw = [
            field for field, lower in zip(raw, fields, strict=True) if lower != b"content-length"
        ]
        head, _, _, close = _encode_head(request, raw)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        return Route(
            pool=self._pool(request),
            prefix=head[:-2],  # the fields without the blank line: Content-Length goes last
            request=httpx.Request(request.method, request.url, headers=raw),
            timeouts=timeouts,
            read_timeout=timeouts.get("read"),
            write_timeout=timeouts.get("write"),
            head_only=request.method == "HEAD",
            close=close,
        )

    async def exchange(self, route: Route, content: bytes) -> tuple[int, bytes]:
        """Send one request on ``route`` with ``content`` as its body; return the response's
        status and its whole body, decoded (``gzip`` and ``deflate``).

        The same exchange as :meth:`handle_async_request` (the same pool, reader and errors, with
        ``route.request`` named in them) without building an ``httpx.Request`` and an
        ``httpx.Response`` around it: over a socket those cost more CPU than the exchange itself
        (``benchmarks/bench_wire.py``). No cookies, redirects or event hooks: what
        :class:`AsyncClient` asks of ECPay needs none of them.
        """
        if self._closed:
            raise RuntimeError("the transport is closed")
        pool = route.pool
        request = route.request
        loop = asyncio.get_running_loop()
        connection = pool.idle(loop) or await pool.acquire(loop, request, route.timeouts)
        connection.begin(route.head_only)
        read_timeout = route.read_timeout
        try:
            head = b"%sContent-Length: %d\r\n\r\n" % (route.prefix, len(content))
            if len(content) < _JOIN_BELOW:
                connection.transport.write(head + content)
            else:
                connection.transport.write(head)
                connection.transport.write(content)
            if connection.blocked:
                await connection.drained(request, route.write_timeout)
            while not connection.done:
                await connection.wait(request, read_timeout)
        except BaseException:
            _finish(pool, connection, complete=False)
            raise
        if route.close:
            connection.keep = False
        parts = connection.take()
        status, headers = connection.status, connection.headers
        _finish(pool, connection, complete=True)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return status, _decoded(headers, body, request)

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

    def _head(self, request: httpx.Request) -> tuple[bytes, int | None, bool, bool]:
        """The request's head, checked and encoded by :func:`_encode_head` once per distinct
        head: a client sends the same few over and over, and the checks are half its cost."""
        key = (request.method, request.url.raw_path, tuple(request.headers.raw))
        head = self._heads.get(key)
        if head is None:
            head = _encode_head(request)
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads[key] = head
        return head

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

    async def aclose(self) -> None:
        self._closed = True
        self._heads.clear()
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(pool.aclose() for pool in pools))
