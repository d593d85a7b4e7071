"""A throwaway PostgreSQL cluster for the PostgreSQL benchmarks (``bench_postgres.py``).

The cluster logic of ``tests/_pg.py``, copied rather than imported: that module is a pytest
fixture module (it imports pytest and skips or fails through it), and the benchmarks must not
depend on the tests' directory. Two differences, both on purpose:

- the server keeps its durability settings (``fsync``, ``synchronous_commit`` and
  ``full_page_writes`` at their defaults): a benchmark of durable commits must pay for the
  flush, where the tests turn it off to go faster;
- statements can be logged per database (:meth:`Cluster.count_statements`), to count the
  round trips of one operation from the server's side.

``initdb`` and ``pg_ctl`` run in a temporary directory on a free port of 127.0.0.1; as root, as
the ``postgres`` user (``initdb`` refuses root). The binaries are the newest
``/usr/lib/postgresql/*/bin`` (Debian's layout) or those on ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator

#: How long starting or stopping the server may take before the benchmark gives up.
START_TIMEOUT = 30
#: What to tell someone whose machine lacks the server.
HOW_TO_ENABLE = (
    "install PostgreSQL's server (Debian/Ubuntu: `apt-get install postgresql`; the binaries are "
    "found in /usr/lib/postgresql/*/bin or on PATH) to run the PostgreSQL benchmarks"
)
# What log_statement = 'all' writes for each statement a backend runs: simple-protocol
# statements, and executions of unnamed or prepared extended-protocol ones.
_LOGGED = re.compile(r"LOG:  (?:statement|execute [^:]+): (.*)")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_binaries() -> pathlib.Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: Debian's newest, else ``PATH``'s."""

    def major(path: pathlib.Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), key=major)
    for directory in reversed(candidates):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and pathlib.Path(initdb).parent == pathlib.Path(pg_ctl).parent:
        return pathlib.Path(initdb).parent
    return None


class Cluster:
    """A running throwaway cluster: its directory and port, databases in it, how to stop it."""

    def __init__(self, bin_dir: pathlib.Path, root: pathlib.Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.user = user  # run the server's programs as this user (None: as ourselves)
        self.port = 0
        self.version = ""

    def dsn(self, database: str = "postgres") -> str:
        """Conninfo of ``database`` over TCP on loopback (trust authentication: no password)."""
        return f"host=127.0.0.1 port={self.port} dbname={database} user=postgres"

    def url(self, database: str) -> str:
        """The same as a ``postgresql://`` URL (what ``open_journal`` and the CLI take)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command: list[str] = [str(self.bin_dir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 5,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """``initdb`` and ``pg_ctl start``; a port taken meanwhile is retried with another."""
        done = self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",  # only initdb's own files; the server below syncs as usual
        )
        _check(done, "initdb")
        for _ in range(3):
            self.port = free_port()
            options = " ".join(
                (
                    "-c listen_addresses=127.0.0.1",
                    f"-c port={self.port}",
                    f"-c unix_socket_directories={self.root}",
                    "-c max_connections=200",
                )
            )
            started = self.run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-l",
                str(self.log),
                "-o",
                options,
            )
            if started.returncode == 0:
                break
        else:
            _check(started, f"pg_ctl start (log: {self.log_tail()})")
        row = self.admin("SHOW server_version")
        self.version = str(row[0]) if row else "?"

    def admin(self, sql: str) -> tuple[object, ...] | None:
        """Run one statement as the superuser in the ``postgres`` database; its first row."""
        import psycopg  # the caller has checked that psycopg is there

        with psycopg.connect(
            self.dsn(), autocommit=True, connect_timeout=START_TIMEOUT
        ) as connection:
            cursor = connection.execute(sql)  # our own fixed statements
            return cursor.fetchone() if cursor.description else None

    def create_database(self, name: str, *, log_statements: bool = False) -> None:
        """A fresh database; with ``log_statements``, every statement run in it is logged."""
        self.admin(f'CREATE DATABASE "{name}"')
        if log_statements:
            self.admin(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")

    @contextlib.contextmanager
    def count_statements(self) -> Iterator[Callable[[], list[str]]]:
        """Yield a function giving the statements the server logged since the block began
        (only databases made with ``log_statements`` log any)."""
        start = self.log.stat().st_size if self.log.exists() else 0

        def logged() -> list[str]:
            with open(self.log, encoding="utf-8", errors="replace") as log:
                log.seek(start)
                return [m.group(1) for line in log if (m := _LOGGED.search(line))]

        yield logged

    def server_cpu(self) -> float | None:
        """CPU seconds used so far by the server's processes (the postmaster and its children:
        backends, WAL writer, checkpointer...), from ``/proc``; ``None`` where there is none."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(entry.name) == postmaster:  # its own, and its ended children's
                total += sum(int(f) for f in fields[11:15]) / tick
            elif int(fields[1]) == postmaster:  # a live child: utime + stime
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text().splitlines()[-lines:])
        return "no server log"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        output = " ".join((done.stdout + done.stderr).split())[-800:]
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {output}")


def _server_user() -> str | None:
    """Who runs the server: ourselves, or the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError(
            "running as root, and there is no 'postgres' user to run the server as"
        ) from exc
    if shutil.which("runuser") is None:
        raise RuntimeError(
            "running as root, and there is no `runuser` to run the server as postgres"
        )
    return "postgres"


def start_cluster() -> Cluster:
    """Start a throwaway cluster; raise ``RuntimeError`` (or ``OSError``) saying why it cannot."""
    try:
        import psycopg  # noqa: F401  # the [postgres] extra
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"psycopg 3 and psycopg_pool are not installed ({exc})") from exc
    bin_dir = find_binaries()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl)")
    user = _server_user()
    # Under /tmp when root: the postgres user must reach the directory, and $TMPDIR may be
    # private to root.
    root = pathlib.Path(tempfile.mkdtemp(prefix="ecpay-bench-pg-", dir="/tmp" if user else None))
    cluster = Cluster(bin_dir, root, user)
    try:
        if user is not None:
            shutil.chown(root, user)
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running() -> Iterator[Cluster]:
    """A started cluster, stopped and removed when the block ends."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
