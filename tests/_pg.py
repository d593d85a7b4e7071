"""A throwaway PostgreSQL cluster for the tests that need a real server (``PostgresJournal``).

``start_cluster`` (behind the session fixture ``postgres_dsn`` of ``conftest.py``) runs
``initdb`` into a temporary directory, starts the server with ``pg_ctl`` on a free port of
127.0.0.1 (its unix socket in the same directory), creates a database and returns the cluster
with its conninfo; ``Cluster.stop`` stops the server (``pg_ctl stop -m fast``) and removes the
directory. It takes about a second.

Run as root, it runs the server as the ``postgres`` user (``initdb`` refuses root). The binaries
are the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout) or those on ``PATH``. Without them,
or when the server cannot start, the tests skip and say how to enable them; with ``CI=true`` they
fail instead, so a CI machine without PostgreSQL cannot pass by skipping.

A test asks for the fixture by name (``postgres_dsn: str``); nothing needs importing.
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
from collections.abc import Sequence
from typing import NoReturn

import pytest

__all__ = ["Cluster", "free_port", "start_cluster", "unavailable"]

#: The database the fixture creates in the throwaway cluster.
DATABASE = "ecpay_test"
#: How long starting or stopping the server may take before the fixture gives up.
START_TIMEOUT = 30
#: What to tell a developer whose machine lacks the server.
HOW_TO_ENABLE = (
    "install PostgreSQL's server (Debian/Ubuntu: `apt-get install postgresql`; the binaries are "
    "found in /usr/lib/postgresql/*/bin or on PATH) to run the PostgresJournal tests"
)


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
    """A running throwaway cluster: its directory, port and conninfo, and how to stop it."""

    def __init__(self, bin_dir: pathlib.Path, root: pathlib.Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.user = user  # run the server's programs as this user (None: as ourselves)
        self.port = 0

    @property
    def dsn(self) -> str:
        """Conninfo for the test database (trust authentication on loopback: no password)."""
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user=postgres"

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
            "--no-sync",
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
                    # A throwaway cluster: no crash safety needed, commits still go through WAL.
                    "-c fsync=off",
                    "-c full_page_writes=off",
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
                str(self.root / "server.log"),
                "-o",
                options,
            )
            if started.returncode == 0:
                break
        else:
            _check(started, f"pg_ctl start (log: {self.log_tail()})")
        self.create_database()

    def create_database(self) -> None:
        import psycopg

        admin = f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"
        try:
            with psycopg.connect(
                admin, autocommit=True, connect_timeout=START_TIMEOUT
            ) as connection:
                connection.execute(f"CREATE DATABASE {DATABASE}")
        except psycopg.Error as exc:
            raise RuntimeError(f"CREATE DATABASE failed: {exc}") from exc

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.root / "server.log").read_text().splitlines()[-lines:])
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
    """Start a throwaway cluster; raise ``RuntimeError`` saying why it cannot."""
    bin_dir = find_binaries()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl)")
    user = _server_user()
    # Under /tmp when root: the postgres user must reach the directory, and $TMPDIR may be
    # private to root.
    root = pathlib.Path(tempfile.mkdtemp(prefix="ecpay-pg-", dir="/tmp" if user else None))
    cluster = Cluster(bin_dir, root, user)
    try:
        if user is not None:
            shutil.chown(root, user)
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def unavailable(reason: str, *, ci: Sequence[str] = ("true", "1", "yes")) -> NoReturn:
    if os.environ.get("CI", "").lower() in ci:
        pytest.fail(f"CI needs PostgreSQL for the PostgresJournal tests: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL is not available ({reason}); {HOW_TO_ENABLE}")
