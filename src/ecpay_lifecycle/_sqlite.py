"""A durable journal in one SQLite file, and order locks for the processes of one host.

See docs/ecpay-api.md section 9.

:class:`SQLiteJournal` implements :class:`~._journal.Journal` with the standard library's
``sqlite3``. Each call is one short transaction: a claim reads, decides by
:func:`~._journal.arbitrate` and writes inside ``BEGIN IMMEDIATE``; a save checks the stored
revision and writes in the same way (R23). The file runs in WAL mode with ``synchronous=FULL``,
so the record of an attempt is on disk before :meth:`SQLiteJournal.save` returns and before its
request leaves (style habit 15). No transaction stays open between calls, and none is open while
an order lock is held across HTTP.

:class:`FileOrderLocks` are its ``locks``: an in-process lock, then a POSIX byte-range lock of
one byte in ``<path>.locks``, which the operating system frees when the holding process dies.
They serialise the threads, asyncio tasks and processes of one host; several hosts need a store
with a lock service of its own (docs/ecpay-api.md section 9, order serialisation).

The schema is versioned (``PRAGMA user_version``, with an ``application_id`` naming the file as
a journal) and created or migrated by the library itself. Every failure of the file becomes a
:class:`~ecpay_lifecycle.JournalError` that says what to do; nothing is half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import json
import math
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final, TypeVar

from ._exceptions import InvalidArgument, InvalidArgumentType, JournalError
from ._journal import Claim, OperationRecord, arbitrate, check_record, check_save, check_text
from ._locks import ProcessOrderLocks
from ._models import check_aware

if sys.platform != "win32":
    import fcntl

__all__ = ["SCHEMA_VERSION", "FileOrderLocks", "SQLiteJournal"]

_T = TypeVar("_T")

#: The schema this version of the library writes; a file with a higher ``user_version`` was
#: written by a newer ecpay-lifecycle and is refused rather than misread.
SCHEMA_VERSION: Final = 1
# PRAGMA application_id: "ECPL". Marks the file as a journal, so another program's database is
# refused instead of having tables added to it.
_APPLICATION_ID: Final = 0x4543504C
# Polling bounds for the waits nothing wakes: an asyncio task on a byte another process holds,
# a file another process is switching to WAL. A hand-off costs little next to an ECPay round
# trip (50-300 ms) without spinning.
_FIRST_WAIT: Final = 0.0005
_LONGEST_WAIT: Final = 0.01

# _MIGRATIONS[n] takes a file from user_version n to n + 1, inside one write transaction.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # One row per operation. ``record`` is OperationRecord.to_dict() as JSON, the whole
        # truth; the other columns copy what queries and conditional writes need. An
        # operation's order and request never change, so the rowid (given in insertion order)
        # lists an order's records oldest first. ``open`` is 1 while the last attempt is
        # unresolved (it locks the order); ``saved_seq`` orders writes, least recent first.
        """
        CREATE TABLE operations (
            merchant_id TEXT NOT NULL,
            key TEXT NOT NULL,
            merchant_trade_no TEXT NOT NULL,
            request TEXT NOT NULL,
            revision INTEGER NOT NULL,
            owner TEXT,
            lease_until TEXT,
            open INTEGER NOT NULL CHECK (open IN (0, 1)),
            saved_seq INTEGER NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (merchant_id, key)
        )
        """,
        # Ends in the rowid implicitly, so an order's records come out in insertion order.
        "CREATE INDEX operations_by_order ON operations (merchant_id, merchant_trade_no)",
        # What a sweeper lists: open attempts and owned operations, a small part of the table.
        """
        CREATE INDEX operations_active ON operations (merchant_id, saved_seq)
        WHERE open = 1 OR owner IS NOT NULL
        """,
        # What max_operations may forget: finished and unowned, least recently saved first.
        """
        CREATE INDEX operations_finished ON operations (saved_seq)
        WHERE open = 0 AND owner IS NULL
        """,
        # One row: the write sequence and the number of operations (count(*) would scan).
        """
        CREATE TABLE journal_counters (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            operations INTEGER NOT NULL
        )
        """,
        "INSERT INTO journal_counters (id, seq, operations) VALUES (1, 0, 0)",
        f"PRAGMA application_id = {_APPLICATION_ID}",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_ACTIVE: Final = "(open = 1 OR owner IS NOT NULL)"  # must match operations_active's WHERE


class _Handle:
    """One thread's connection and the process that opened it. It is closed when its thread
    ends or its journal goes (``check_same_thread=False`` lets that run in any thread; each
    connection is only ever used by the thread that opened it), but never in a forked child."""

    __slots__ = ("connection", "pid")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.pid = os.getpid()

    def close(self) -> None:
        if self.pid == os.getpid():
            self.connection.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _Local(threading.local):
    handle: _Handle | None = None


# Connections inherited through fork. SQLite forbids using them in the child, and closing them
# there would run SQLite's close logic (a WAL checkpoint) against the parent's state: they are
# kept, unused, for the life of the child.
_inherited: list[_Handle] = []


class SQLiteJournal:
    """A :class:`~ecpay_lifecycle.Journal` in one SQLite file, shared by threads and processes.

    ``path`` names the file (created with its schema if missing). ``busy_timeout`` is how many
    seconds a call waits for another writer before it fails with
    :class:`~ecpay_lifecycle.JournalError`. ``max_operations`` bounds the file like
    :class:`~ecpay_lifecycle.InMemoryJournal`'s bound: beyond it the least recently saved
    finished operations are forgotten, never one that is owned or has an open attempt; ``None``
    (the default) keeps every operation, so an idempotency key replays for ever.

    Each thread (and each process, after ``fork``) uses its own connection; :meth:`close`
    closes the calling thread's. :attr:`locks` are :class:`FileOrderLocks` on ``<path>.locks``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        max_operations: int | None = None,
    ) -> None:
        self._path = _file_path(path, "path")
        if self._path in ("", ":memory:"):
            raise InvalidArgument(
                f"SQLiteJournal needs a file, not {self._path!r}: an in-memory database is "
                "neither durable nor shared (use InMemoryJournal)"
            )
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, int | float):
            raise InvalidArgumentType(
                f"busy_timeout must be a number of seconds, not {type(busy_timeout).__name__}"
            )
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise InvalidArgument(f"busy_timeout must be >= 0 seconds, got {busy_timeout}")
        if max_operations is not None and (
            isinstance(max_operations, bool) or not isinstance(max_operations, int)
        ):
            raise InvalidArgumentType("max_operations must be an int or None")
        if max_operations is not None and max_operations < 1:
            raise InvalidArgument(f"max_operations must be at least 1, got {max_operations}")
        self._busy_timeout = float(busy_timeout)
        self._max = max_operations
        self._local = _Local()
        self._locks = FileOrderLocks(f"{self._path}.locks")
        # Open (and create or migrate) now, so a wrong file fails here rather than mid-payment.
        self._connection()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._path!r}, busy_timeout={self._busy_timeout}, "
            f"max_operations={self._max})"
        )

    def __len__(self) -> int:
        rows = self._read("count operations", "SELECT operations FROM journal_counters", ())
        return int(rows[0][0])

    def __enter__(self) -> SQLiteJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def locks(self) -> FileOrderLocks:
        """See :attr:`Journal.locks`: locks for every thread, task and process of this host."""
        return self._locks

    def on_connect(self, connection: sqlite3.Connection) -> None:
        """Called with each new connection before the journal applies its own settings (WAL,
        ``synchronous=FULL``, the busy timeout), which therefore always win; does nothing.

        A subclass may add PRAGMAs here (``cache_size``, ``mmap_size``, a ``max_page_count``
        cap). It must not leave a transaction open.
        """

    def close(self) -> None:
        """Close the calling thread's connection; the next call from this thread reopens one."""
        handle, self._local.handle = self._local.handle, None
        if handle is not None:
            handle.close()

    # -- the Journal protocol ------------------------------------------------------------------

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        """See :meth:`Journal.claim`: read, :func:`arbitrate` and write in one ``BEGIN
        IMMEDIATE`` transaction, so exactly one of many simultaneous claimers owns it (R23)."""
        check_record(record)
        check_aware(now, field="now")  # before the transaction, though arbitrate checks too

        def decide(connection: sqlite3.Connection) -> Claim:
            rows = connection.execute(
                "SELECT record FROM operations WHERE merchant_id = ? AND key = ?",
                (record.merchant_id, record.key),
            ).fetchall()
            existing = self._decode(rows[0][0], record.key) if rows else None
            claim, write = arbitrate(existing, record, now)
            if write is not None:
                self._write(connection, write, insert=existing is None)
            return claim

        return self._transaction(f"claim operation {record.key!r}", decide)

    def save(self, record: OperationRecord) -> OperationRecord:
        """See :meth:`Journal.save`: the revision is checked and the record written in one
        transaction, durably (``synchronous=FULL``) before this returns (R23)."""
        check_record(record)

        def replace(connection: sqlite3.Connection) -> OperationRecord:
            rows = connection.execute(
                "SELECT revision, merchant_trade_no, request FROM operations "
                "WHERE merchant_id = ? AND key = ?",
                (record.merchant_id, record.key),
            ).fetchall()
            written = check_save(
                (int(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None, record
            )
            self._write(connection, written, insert=False)
            return written

        return self._transaction(f"save operation {record.key!r}", replace)

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        """See :meth:`Journal.get`."""
        check_text(merchant_id=merchant_id, key=key)
        rows = self._read(
            f"read operation {key!r}",
            "SELECT record FROM operations WHERE merchant_id = ? AND key = ?",
            (merchant_id, key),
        )
        return self._decode(rows[0][0], key) if rows else None

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        """See :meth:`Journal.for_order`: oldest first, by the order's index."""
        check_text(merchant_id=merchant_id, merchant_trade_no=merchant_trade_no)
        rows = self._read(
            f"read the operations of order {merchant_trade_no}",
            "SELECT key, record FROM operations WHERE merchant_id = ? AND merchant_trade_no = ? "
            "ORDER BY rowid",
            (merchant_id, merchant_trade_no),
        )
        return [self._decode(text, key) for key, text in rows]

    def open_operations(
        self, merchant_id: str | None = None, *, limit: int = 100
    ) -> list[OperationRecord]:
        """The operations a sweeper should look at: an open attempt or an owner (live or lapsed),
        least recently saved first, at most ``limit``; of one merchant, or of all when ``None``.

        Each save renews an owner's lease, so the first ones are those stuck the longest; read
        through a small partial index, never the whole table (R22, R23).
        """
        if merchant_id is not None:
            check_text(merchant_id=merchant_id)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidArgumentType(f"limit must be an int, not {type(limit).__name__}")
        if limit < 1:
            raise InvalidArgument(f"limit must be at least 1, got {limit}")
        if merchant_id is None:
            sql = f"SELECT key, record FROM operations WHERE {_ACTIVE} ORDER BY saved_seq LIMIT ?"
            parameters: tuple[object, ...] = (limit,)
        else:
            sql = (
                f"SELECT key, record FROM operations WHERE {_ACTIVE} AND merchant_id = ? "
                "ORDER BY saved_seq LIMIT ?"
            )
            parameters = (merchant_id, limit)
        rows = self._read("list open operations", sql, parameters)
        return [self._decode(text, key) for key, text in rows]

    # -- inside a transaction ------------------------------------------------------------------

    def _write(
        self, connection: sqlite3.Connection, record: OperationRecord, *, insert: bool
    ) -> None:
        """Insert ``record`` or replace its row, and apply the bound, inside the caller's
        transaction."""
        ((seq, count),) = connection.execute(
            "SELECT seq, operations FROM journal_counters WHERE id = 1"
        ).fetchall()
        seq += 1
        lease_until = None
        if record.lease_until is not None:
            # UTC at a fixed width, so the text sorts like the instant.
            lease_until = record.lease_until.astimezone(dt.UTC).isoformat(timespec="microseconds")
        values = {
            "merchant_id": record.merchant_id,
            "key": record.key,
            "merchant_trade_no": record.merchant_trade_no,
            "request": record.request,
            "revision": record.revision,
            "owner": record.owner,
            "lease_until": lease_until,
            "open": int(record.open_attempt is not None),
            "seq": seq,
            "record": json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":")),
        }
        if insert:
            connection.execute(
                "INSERT INTO operations (merchant_id, key, merchant_trade_no, request, revision, "
                "owner, lease_until, open, saved_seq, record) VALUES (:merchant_id, :key, "
                ":merchant_trade_no, :request, :revision, :owner, :lease_until, :open, :seq, "
                ":record)",
                values,
            )
            count += 1
        else:
            connection.execute(
                "UPDATE operations SET revision = :revision, owner = :owner, "
                "lease_until = :lease_until, open = :open, saved_seq = :seq, record = :record "
                "WHERE merchant_id = :merchant_id AND key = :key",
                values,
            )
        if self._max is not None and count > self._max:
            count -= connection.execute(
                "DELETE FROM operations WHERE rowid IN (SELECT rowid FROM operations "
                "WHERE open = 0 AND owner IS NULL ORDER BY saved_seq LIMIT ?)",
                (count - self._max,),
            ).rowcount
        connection.execute(
            "UPDATE journal_counters SET seq = ?, operations = ? WHERE id = 1", (seq, count)
        )

    def _decode(self, text: str, key: str) -> OperationRecord:
        try:
            return OperationRecord.from_dict(json.loads(text))
        except (ValueError, TypeError) as exc:  # JSONDecodeError, InvalidArgument(Type)
            raise JournalError(
                f"the record of operation {key!r} in {self._path} cannot be read ({exc}): the "
                "file was changed by something other than ecpay-lifecycle; restore it from a "
                "backup"
            ) from exc

    # -- connections and transactions ----------------------------------------------------------

    def _transaction(self, doing: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction: committed (durably) when it
        returns, rolled back when anything raises; never left open."""
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                self._abandon(connection)
                raise
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        return result

    def _read(
        self, doing: str, sql: str, parameters: Sequence[object] | dict[str, object]
    ) -> list[Any]:
        # fetchall() runs each statement to its end, so no read snapshot outlives the call.
        try:
            return self._connection().execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    def _abandon(self, connection: sqlite3.Connection) -> None:
        """Roll back whatever is open; a connection that cannot roll back is closed."""
        if not connection.in_transaction:
            return  # SQLite already rolled back (e.g. after SQLITE_FULL)
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            self.close()
            connection.close()

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        handle = local.handle
        if handle is not None:
            if handle.pid == os.getpid():
                return handle.connection
            _inherited.append(handle)
        local.handle = None
        local.handle = handle = _Handle(self._connect())
        return handle.connection

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: every transaction is an explicit BEGIN
                check_same_thread=False,  # see _Handle
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "open the journal") from exc
        try:
            self.on_connect(connection)
            if connection.in_transaction:
                raise InvalidArgument("on_connect() must not leave a transaction open")
            # Checked before anything is written: a foreign or newer file is left untouched.
            self._check_schema(connection, migrate=False)
            mode = self._use_wal(connection)
            if mode.lower() != "wal":
                raise JournalError(
                    f"{self._path} cannot use write-ahead logging (journal_mode is {mode}): put "
                    "the journal on a local file system"
                )
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}")
            self._check_schema(connection, migrate=True)
        except sqlite3.Error as exc:
            connection.close()
            raise self._error(exc, "open the journal") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _use_wal(self, connection: sqlite3.Connection) -> str:
        """Switch the file to WAL (a no-op once it is); return the journal mode now in force."""
        deadline = time.monotonic() + self._busy_timeout
        wait = _FIRST_WAIT
        while True:
            try:
                return str(connection.execute("PRAGMA journal_mode = WAL").fetchall()[0][0])
            except sqlite3.OperationalError as exc:
                # Switching a new file takes an exclusive lock, and SQLite answers BUSY at once,
                # without its busy handler, while another process switches it too: wait here.
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(wait)
            wait = min(wait * 2, _LONGEST_WAIT)

    def _check_schema(self, connection: sqlite3.Connection, *, migrate: bool) -> None:
        """Refuse a file that is not a journal or is newer than this library; with ``migrate``
        bring an empty or older one to :data:`SCHEMA_VERSION` in one write transaction."""
        version = self._version(connection)
        if version == SCHEMA_VERSION or not migrate:
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = self._version(connection)  # another process may have migrated meanwhile
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            self._abandon(connection)
            raise

    def _version(self, connection: sqlite3.Connection) -> int:
        # One statement, so one snapshot: read apart, another process's migration could commit
        # between the reads and make a new journal look like another program's database.
        ((application_id, version, tables),) = connection.execute(
            "SELECT (SELECT application_id FROM pragma_application_id), "
            "(SELECT user_version FROM pragma_user_version), "
            "(SELECT count(*) FROM sqlite_schema)"
        ).fetchall()
        if (application_id, version, tables) == (0, 0, 0):
            return 0  # empty: a new journal
        if application_id != _APPLICATION_ID:
            raise JournalError(
                f"{self._path} is another program's database (application_id {application_id}, "
                "not an ecpay-lifecycle journal); give SQLiteJournal a file of its own"
            )
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self._path} has journal schema version {version}, written by a newer "
                f"ecpay-lifecycle; this version reads schema version {SCHEMA_VERSION}. Upgrade "
                "ecpay-lifecycle (the file was left unchanged)"
            )
        return int(version)

    def _error(self, exc: sqlite3.Error, doing: str) -> JournalError:
        """One :class:`JournalError` per kind of failure, saying what to do."""
        name = getattr(exc, "sqlite_errorname", None) or ""
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            advice = (
                "it is not an SQLite database, or it is damaged: give SQLiteJournal a file of its "
                "own, or restore the journal from a backup"
            )
        elif name.startswith("SQLITE_FULL"):
            advice = "the disk (or the database's size limit) is full: free space and try again"
        elif _busy(exc):
            advice = (
                f"another connection held the file's write lock for more than busy_timeout="
                f"{self._busy_timeout} s: try again, or raise busy_timeout"
            )
        elif name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            advice = "check that the file and its directory exist and are writable by this user"
        else:
            advice = "check the disk and the file, then try again"
        return JournalError(f"SQLiteJournal could not {doing} in {self._path}: {exc}; {advice}")


def _busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _file_path(path: object, name: str) -> str:
    if isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        text = os.fspath(path)
        if isinstance(text, str):
            return text
    raise InvalidArgumentType(f"{name} must be a str or os.PathLike, not {type(path).__name__}")


# -- order locks across processes --------------------------------------------------------------

# The in-process lock is keyed by byte, not by order: two orders whose bytes collide must also
# exclude each other inside a process, or one thread's unlock would free the other's byte.
_BYTE: Final = "byte"


def _offset(merchant_id: str, merchant_trade_no: str) -> int:
    """A stable byte offset (40 bits) for one order; length-prefixed, so no two pairs share a
    text. A collision (about 1 in 10^12 per pair) only makes two orders wait for each other."""
    text = f"{len(merchant_id)}:{merchant_id}{merchant_trade_no}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=5).digest(), "big")


class _LockFile:
    """A lock file as this process uses it: one descriptor, kept open while any
    :class:`FileOrderLocks` on it lives, because closing any descriptor of a file drops every
    POSIX lock this process holds on it."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.users = 0
        self.process = ProcessOrderLocks()

    def lock(self, offset: int) -> None:
        """Block until this process holds the byte."""
        wait = _FIRST_WAIT
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, offset, os.SEEK_SET)
            except OSError as exc:
                # The kernel's deadlock check counts processes, not threads: two threads of
                # one process waiting on two others can look like a cycle. Wait and try again.
                if exc.errno != errno.EDEADLK:
                    raise self._error(exc) from exc
                time.sleep(wait)
                wait = min(wait * 2, _LONGEST_WAIT)
            else:
                return

    def try_lock(self, offset: int) -> bool:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise self._error(exc) from exc
        return True

    def unlock(self, offset: int) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> JournalError:
        return JournalError(f"the order lock file {self.path} failed: {exc}; check the disk")


class _Registry:
    """This process's open lock files, by (device, inode): every :class:`FileOrderLocks` on one
    file shares one descriptor and one in-process lock table."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.files: dict[tuple[int, int], _LockFile] = {}
        # Descriptors that cannot be closed safely (see attach); kept for the process's life.
        self.strays: list[int] = []

    def attach(self, path: str) -> _LockFile:
        with self.guard:
            try:
                status = os.stat(path)
            except FileNotFoundError:
                shared = None
            else:
                shared = self.files.get((status.st_dev, status.st_ino))
            if shared is None:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                except OSError as exc:
                    raise JournalError(
                        f"cannot open the order lock file {path}: {exc}; check that its "
                        "directory exists and is writable by this user"
                    ) from exc
                status = os.fstat(fd)
                ident = (status.st_dev, status.st_ino)
                shared = self.files.get(ident)
                if shared is None:
                    shared = self.files[ident] = _LockFile(fd, path)
                else:
                    # The path was swapped for a file this process already has open: closing
                    # this descriptor would drop the locks held through the other.
                    self.strays.append(fd)
            shared.users += 1
            return shared

    def detach(self, shared: _LockFile) -> None:
        with self.guard:
            shared.users -= 1
            if shared.users or shared.fd < 0:
                return
            # Nobody can hold a lock through it: every holder keeps a FileOrderLocks alive.
            for ident, candidate in list(self.files.items()):
                if candidate is shared:
                    del self.files[ident]
            os.close(shared.fd)
            shared.fd = -1

    def after_fork_in_child(self) -> None:
        # The child holds no POSIX locks (they are not inherited), so closing the inherited
        # descriptors drops nothing; the lock tables were the parent's threads'.
        self.guard = threading.Lock()
        for shared in self.files.values():
            os.close(shared.fd)
            shared.fd = -1
        self.files.clear()


_registry = _Registry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_registry.after_fork_in_child)


class FileOrderLocks:
    """:class:`~ecpay_lifecycle.OrderLocks` for every thread, asyncio task and process of one host
    that uses the lock file ``path`` (docs/ecpay-api.md section 9, order serialisation).

    An order's lock is an in-process lock, then an exclusive POSIX lock (``fcntl.lockf``) on one
    byte of the file at an offset hashed from (merchant_id, order). The operating system frees
    it when the holding process dies, however it dies. Threads block in :meth:`hold`; tasks poll
    in :meth:`ahold` with a short backoff and hold nothing when cancelled. The file must stay in
    place while in use (deleting or replacing it splits the lockers), and on a local file system:
    network file systems' byte-range locks are not to be trusted.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if sys.platform == "win32":  # pragma: no cover - POSIX only
            raise InvalidArgument("FileOrderLocks needs POSIX byte-range locks (not Windows)")
        self._path = _file_path(path, "path")
        self._file: _LockFile | None = None
        self._pid = 0

    def __repr__(self) -> str:
        return f"FileOrderLocks({self._path!r})"

    @property
    def path(self) -> str:
        """The lock file."""
        return self._path

    def _shared(self) -> _LockFile:
        """This process's handle on the file, opened on first use and again after ``fork``."""
        pid = os.getpid()
        shared = self._file
        if shared is not None and self._pid == pid and shared.fd >= 0:
            return shared
        shared = _registry.attach(self._path)
        weakref.finalize(self, _registry.detach, shared)
        self._file, self._pid = shared, pid
        return shared

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        """See :meth:`OrderLocks.hold`: block until this thread holds the order across the host."""
        check_text(merchant_id=merchant_id, merchant_trade_no=merchant_trade_no)
        offset = _offset(merchant_id, merchant_trade_no)
        shared = self._shared()
        with shared.process.hold(_BYTE, str(offset)):
            shared.lock(offset)
            try:
                yield
            finally:
                shared.unlock(offset)

    @contextlib.asynccontextmanager
    async def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        """See :meth:`OrderLocks.ahold`: poll for the order across the host without blocking the
        event loop; a cancelled waiter holds nothing."""
        check_text(merchant_id=merchant_id, merchant_trade_no=merchant_trade_no)
        offset = _offset(merchant_id, merchant_trade_no)
        shared = self._shared()
        async with shared.process.ahold(_BYTE, str(offset)):
            wait = _FIRST_WAIT
            while not shared.try_lock(offset):
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LONGEST_WAIT)
            try:
                yield
            finally:
                shared.unlock(offset)
