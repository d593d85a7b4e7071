"""``ecpay-lifecycle serve``: the emulator over real HTTP on 127.0.0.1, for any language's tests.

uvicorn is an optional extra (``pip install 'ecpay-lifecycle[serve]'``) and is imported only
when a server actually starts. The served clock runs in real time from the start (``--start``,
default now) unless ``--frozen``; the admin routes jump it either way (see :mod:`._asgi`).
Merchants come from ``--seed FILE`` (JSON), ``ECPAY_EMULATOR_MERCHANTS``, ``--merchants-file``
and ``--merchant ID``; their HashKey and HashIV never go on the command line, where every user
of the machine can read them. ``--state FILE`` keeps everything across restarts (a 0600 JSON
file). SIGTERM and SIGINT stop the server cleanly (in-flight requests finish, the state is
saved) with exit status 0. The server binds to loopback only: the emulator has no
authentication and is not meant to be reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import pathlib
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

from ecpay_lifecycle._codec import Secret
from ecpay_lifecycle._exceptions import ConfigurationError, EcpayError, InvalidArgument
from ecpay_lifecycle._models import PaymentKind

from ._emulator import Emulator
from ._persist import (
    check_owner_only,
    read_json_file,
    settings_from_json,
    write_owner_only,
)
from ._wire import parse_aware_iso

__all__ = [
    "ENV_MERCHANTS",
    "add_arguments",
    "build_emulator",
    "run",
    "serving",
    "settings_from_json",
]

HOST = "127.0.0.1"
#: The environment variable with merchants' secrets: ``ID:HASHKEY:HASHIV`` entries separated by
#: commas or white space.
ENV_MERCHANTS = "ECPAY_EMULATOR_MERCHANTS"
#: How often (seconds) ``serve`` catches its clock up and saves the state file if it changed.
SAVE_EVERY = 1.0
_INSTALL_HINT = "pip install 'ecpay-lifecycle[serve]'"
_STARTUP_LIMIT = 10.0
_SECRET_ALPHABET = string.ascii_letters + string.digits
_SEPARATORS = re.compile(r"[\s,]+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser`` (the lead's CLI calls this for its subcommand)."""
    parser.add_argument(
        "--port", type=int, default=8000, help="TCP port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument(
        "--seed",
        type=pathlib.Path,
        metavar="FILE",
        help='JSON: {"start", "settings", "merchants": [...], "orders": [...]} (docs/emulator.md)',
    )
    parser.add_argument(
        "--merchant",
        action="append",
        default=[],
        metavar="ID",
        help=f"register a merchant (repeatable); its HashKey and HashIV come from {ENV_MERCHANTS} "
        "or --merchants-file, or are generated (and written to --merchants-file); never on the "
        "command line",
    )
    parser.add_argument(
        "--merchants-file",
        type=pathlib.Path,
        metavar="FILE",
        help="merchants' secrets, one ID:HASHKEY:HASHIV per line ('#' comments); must be "
        "readable by you only (chmod 600)",
    )
    parser.add_argument(
        "--manual-close",
        action="store_true",
        help="merchants from --merchant, the environment and --merchants-file have daily "
        "auto-close off (R6, R7)",
    )
    parser.add_argument(
        "--balance",
        type=int,
        default=0,
        help="ECPay balance of the merchants --manual-close applies to (R16)",
    )
    parser.add_argument(
        "--order",
        action="append",
        default=[],
        metavar="MERCHANT_ID:ORDER_NO:AMOUNT[:KIND]",
        help="authorize an order at the start time (repeatable); KIND: "
        + ", ".join(kind.value for kind in PaymentKind),
    )
    parser.add_argument(
        "--start",
        metavar="ISO8601",
        help="the emulator's start time with a UTC offset (default: now)",
    )
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="the clock stands still and moves only through the admin routes "
        "(default: it runs in real time from the start)",
    )
    parser.add_argument(
        "--state",
        type=pathlib.Path,
        metavar="FILE",
        help="keep the emulator in FILE (JSON, mode 0600, holds HashKeys): loaded at start if it "
        "exists, saved within a second of each change and at shutdown",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )


def run(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then save the state and return 0.

    2 on bad options, a bad state or merchants file, or missing uvicorn (one line on stderr,
    no traceback); 1 when the state cannot be saved at shutdown.
    """
    with _Stop() as stop:
        try:
            server_module = _uvicorn()
            notes: list[str] = []
            emulator = build_emulator(args, environ=environ, notes=notes)
            sock = _bind(args.port)
        except EcpayError as error:
            print(f"ecpay-lifecycle serve: error: {error}", file=sys.stderr)
            return 2
        state = None if args.state is None else _StateFile(args.state, emulator)
        try:
            if state is not None:
                state.save()
        except OSError as error:
            sock.close()
            print(
                f"ecpay-lifecycle serve: error: cannot write state file {args.state}: "
                f"{error.strerror}",
                file=sys.stderr,
            )
            return 2
        for note in notes:
            print(f"ecpay-lifecycle serve: {note}", file=sys.stderr)
        port = sock.getsockname()[1]
        config = server_module.Config(
            emulator.asgi_app,
            log_level=args.log_level,
            lifespan="on",
            interface="asgi3",
            timeout_graceful_shutdown=5,
        )
        server = server_module.Server(config)
        mode = "real time" if emulator.realtime else "frozen"
        print(
            f"ECPay emulator on http://{HOST}:{port} (admin routes under /_emulator/, "
            f"console at /); clock at {emulator.now.isoformat()} ({mode})",
            flush=True,
        )
        ticker = _Ticker(emulator, state)
        ticker.start()
        try:
            if stop.arm(server):
                server.run(sockets=[sock])
        finally:
            ticker.stop()
            sock.close()
        if state is not None:
            try:
                state.save()
            except OSError as error:
                print(
                    f"ecpay-lifecycle serve: error: cannot save state file {args.state}: "
                    f"{error.strerror}",
                    file=sys.stderr,
                )
                return 1
        saved = "" if state is None else f"; state saved to {args.state}"
        print(f"ecpay-lifecycle serve: stopped{saved}", file=sys.stderr, flush=True)
    return 0


class _Stop:
    """SIGTERM and SIGINT ask the server to finish, from before it starts until ``run`` returns.

    uvicorn installs its own handlers while it serves and, on its way out, restores these and
    re-raises the signal it caught so the process would die of it; here the re-raised signal
    only asks again, so ``run`` returns 0 after the state is saved.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._server: Any = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for number in self._SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, _number: int, _frame: FrameType | None) -> None:
        self.requested = True
        if self._server is not None:
            self._server.should_exit = True

    def arm(self, server: Any) -> bool:
        """Let a signal stop ``server``; False if one came already (then do not start it)."""
        self._server = server
        return not self.requested


class _StateFile:
    """Where ``--state`` keeps the emulator: written whole, atomically, mode 0600."""

    def __init__(self, path: pathlib.Path, emulator: Emulator) -> None:
        self.path = path
        self._emulator = emulator
        self.saved_revision = -1

    def save(self) -> None:
        """Write the state if anything changed since the last save (OSError if it cannot)."""
        revision = self._emulator.revision
        if revision == self.saved_revision:
            return
        write_owner_only(self.path, _state_text(self._emulator))
        self.saved_revision = revision


def _state_text(emulator: Emulator) -> Secret[str]:
    """The state file's text, held as a :class:`Secret` (it has the HashKeys in the clear)."""
    return Secret(json.dumps(emulator.dump_state(), ensure_ascii=False, indent=1) + "\n")


class _Ticker:
    """A background thread: every ``SAVE_EVERY`` seconds, catch the clock up (batches happen on
    time even when no request comes) and save the state file if something changed."""

    def __init__(self, emulator: Emulator, state: _StateFile | None) -> None:
        self._emulator = emulator
        self._state = state
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="ecpay-emulator-ticker", daemon=True
        )
        self._warned = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=_STARTUP_LIMIT)

    def _loop(self) -> None:
        while not self._done.wait(SAVE_EVERY):
            self._emulator.catch_up()
            if self._state is None:
                continue
            try:
                self._state.save()
            except OSError as error:
                if not self._warned:  # once: the shutdown save reports it again
                    print(
                        f"ecpay-lifecycle serve: warning: cannot save state file "
                        f"{self._state.path}: {error.strerror}",
                        file=sys.stderr,
                    )
                    self._warned = True


@contextlib.contextmanager
def serving(emulator: Emulator, *, port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Run ``emulator`` with uvicorn on 127.0.0.1 in a background thread; yield its base URL.

    For tests whose HTTP client cannot take an ``httpx.MockTransport``. The server stops when
    the block ends (in-flight requests get a few seconds). Needs the ``serve`` extra.
    """
    server_module = _uvicorn()
    sock = _bind(port)
    config = server_module.Config(
        emulator.asgi_app,
        log_level=log_level,
        lifespan="on",
        interface="asgi3",
        timeout_graceful_shutdown=2,
    )
    server = server_module.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ecpay-emulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + _STARTUP_LIMIT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError("the emulator server did not start")
            time.sleep(0.01)
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=_STARTUP_LIMIT)
        sock.close()


def _uvicorn() -> Any:
    """Import uvicorn on demand; without it, say which extra to install."""
    try:
        return importlib.import_module("uvicorn")
    except ImportError as error:
        raise ConfigurationError(
            f"serving the emulator over HTTP needs uvicorn: {_INSTALL_HINT}"
        ) from error


def _bind(port: object) -> socket.socket:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"port must be 0-65535, got {port!r}")
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP, and without it every reply waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise ConfigurationError(f"cannot listen on {HOST}:{port}: {error.strerror}") from error
    sock.listen(128)
    return sock


# -- building the emulator -----------------------------------------------------------------------


#: A merchant's HashKey and HashIV, each hidden (repr ``<hidden>``, not in a traceback's locals).
_Pair = tuple[Secret[object], Secret[object]]


class _Secrets:
    """Merchants' HashKey and HashIV by merchant ID, from the environment and the merchants
    file, plus those generated here. Never shown: no repr of the values, no message with one."""

    def __init__(self) -> None:
        self._by_id: dict[str, _Pair] = {}
        self.generated: list[str] = []

    def __repr__(self) -> str:
        return f"<merchants' secrets for {sorted(self._by_id)}>"

    def ids(self) -> list[str]:
        return list(self._by_id)

    def __contains__(self, merchant_id: object) -> bool:
        return merchant_id in self._by_id

    def add_text(self, held: Secret[str], source: str) -> None:
        """Read ``ID:HASHKEY:HASHIV`` entries separated by commas or white space.

        The error is raised here, where only the :class:`Secret` is a local, never where the
        entries are split (their locals hold the keys)."""
        problem = self._add_entries(held, source)
        if problem is not None:
            raise problem

    def _add_entries(self, held: Secret[str], source: str) -> ConfigurationError | None:
        for number, entry in enumerate(_SEPARATORS.split(held.reveal().strip()), 1):
            if not entry:
                continue
            parts = entry.split(":")
            if len(parts) != 3 or not all(parts):
                return ConfigurationError(f"entry {number} of {source} is not ID:HASHKEY:HASHIV")
            if parts[0] in self._by_id:
                return ConfigurationError(f"merchant {parts[0]} is given twice ({source})")
            self._by_id[parts[0]] = (Secret(parts[1]), Secret(parts[2]))
        return None

    def get(self, merchant_id: str) -> _Pair:
        """The merchant's secrets, generated (16 letters and digits each) if nobody gave them."""
        if merchant_id not in self._by_id:
            self._by_id[merchant_id] = (Secret(_generate()), Secret(_generate()))
            self.generated.append(merchant_id)
        return self._by_id[merchant_id]

    def lines(self, merchant_ids: list[str]) -> str:
        return "".join(
            f"{mid}:{self._by_id[mid][0].reveal()}:{self._by_id[mid][1].reveal()}\n"
            for mid in merchant_ids
        )


def _generate() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(16))


def build_emulator(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
) -> Emulator:
    """The emulator the ``serve`` options describe (``environ``: default ``os.environ``).

    With ``--state FILE`` that exists, the emulator is the one saved there (merchants the options
    name that it lacks are added); otherwise it is built from the seed file first, then the
    merchants and orders of the options. Bad options raise :class:`InvalidArgument` (or a
    subclass) naming what is wrong, never a HashKey; ``notes`` collects what the user should
    know (a loaded state, generated secrets, a seed file others can read).
    """
    notes = [] if notes is None else notes
    for spec in args.merchant:
        if ":" in spec:
            raise InvalidArgument(
                f"--merchant takes a merchant ID only: give HashKey and HashIV in {ENV_MERCHANTS} "
                "or --merchants-file (every user of this machine can read a command line)"
            )
    keys = _read_secrets(
        args, Secret((os.environ if environ is None else environ).get(ENV_MERCHANTS, ""))
    )
    seed: Mapping[str, Any] = {}
    if args.seed is not None:
        seed = load_seed(args.seed)
        _warn_about_seed(args.seed, seed, notes)
    emulator = _load_state(args, notes)
    fresh = emulator is None
    if emulator is None:
        start_text = args.start if args.start is not None else seed.get("start")
        if start_text is not None:
            start = parse_aware_iso(start_text, "start")
        else:
            start = dt.datetime.now(dt.UTC)
            start = start if not args.frozen else start.replace(microsecond=0)
        emulator = Emulator(
            now=start,
            settings=settings_from_json(seed.get("settings", {})),
            realtime=not args.frozen,
        )
    _add_merchants(emulator, args, seed, keys, notes)
    if fresh:
        _add_orders(emulator, args, seed)
    elif args.order or seed.get("orders") or args.start or seed.get("settings"):
        notes.append(
            f"--order, --start and the seed's orders, settings and start make a new state only; "
            f"{args.state} has one already, so they were not applied"
        )
    return emulator


def _read_secrets(args: argparse.Namespace, from_environment: Secret[str]) -> _Secrets:
    keys = _Secrets()
    keys.add_text(from_environment, ENV_MERCHANTS)
    path = args.merchants_file
    if path is not None:
        if path.exists():
            check_owner_only(path, "merchants file")
            keys.add_text(_uncommented(path), f"merchants file {path}")
        elif not args.merchant:
            raise ConfigurationError(f"merchants file {path} does not exist")
    return keys


def _uncommented(path: pathlib.Path) -> Secret[str]:
    """The merchants file without its comments, held as a :class:`Secret`."""
    try:
        held = Secret(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise ConfigurationError(f"cannot read merchants file {path}") from None
    return Secret("\n".join(line.split("#", 1)[0] for line in held.reveal().splitlines()))


def _load_state(args: argparse.Namespace, notes: list[str]) -> Emulator | None:
    path: pathlib.Path | None = args.state
    if path is None or not path.exists():
        return None
    check_owner_only(path, "state file")
    held = read_json_file(path, "state file")
    try:
        emulator = Emulator.from_state(held.reveal(), realtime=not args.frozen)
    except ConfigurationError as error:
        raise ConfigurationError(f"state file {path}: {error}") from error
    notes.append(
        f"state loaded from {path}: {len(emulator.merchants())} merchant(s), "
        f"{len(emulator.orders())} order(s)"
    )
    return emulator


def _add_merchants(
    emulator: Emulator,
    args: argparse.Namespace,
    seed: Mapping[str, Any],
    keys: _Secrets,
    notes: list[str],
) -> None:
    """Seed merchants, then ``--merchant`` IDs, then the rest of the environment's and the
    merchants file's; one a loaded state already has keeps its HashKey and HashIV, and secrets
    given for it elsewhere must match."""
    have = _registered_secrets(emulator)
    flags = {"auto_close": not args.manual_close, "balance": args.balance}
    wanted: list[tuple[object, dict[str, Any], _Pair | None]] = []
    for entry in _list(seed, "merchants"):
        mid = entry.get("merchant_id")
        given = None
        if entry.get("hash_key") is not None or entry.get("hash_iv") is not None:
            given = (Secret(entry.get("hash_key")), Secret(entry.get("hash_iv")))
        fields = {
            "auto_close": entry.get("auto_close", True),
            "balance": entry.get("balance", 0),
            "platform_id": entry.get("platform_id"),
        }
        wanted.append((mid, fields, given))
    named = {mid for mid, _fields, _given in wanted}
    for mid in args.merchant:
        wanted.append((mid, flags, None))
        named.add(mid)
    wanted.extend((mid, flags, None) for mid in keys.ids() if mid not in named)
    for mid, fields, given in wanted:
        if isinstance(mid, str) and mid in have:
            if given is None and mid not in keys:
                continue
            if (given or keys.get(mid)) != have[mid]:
                raise ConfigurationError(
                    f"merchant {mid}: the HashKey or HashIV given differs from the one in the "
                    f"state file {args.state}"
                )
            continue
        # An ID that is not a string is refused by add_merchant before it looks at a key.
        pair = given or (keys.get(mid) if isinstance(mid, str) else (Secret(None), Secret(None)))
        emulator.add_merchant(mid, *pair, **fields)  # type: ignore[arg-type]
    if keys.generated:
        _record_generated(args, keys, notes)


def _registered_secrets(emulator: Emulator) -> dict[str, _Pair]:
    """The merchants a loaded state has, with their secrets (to compare, never to show)."""
    if not emulator.merchants():
        return {}
    return {
        entry["merchant_id"]: (Secret(entry["hash_key"]), Secret(entry["hash_iv"]))
        for entry in emulator.dump_state()["ledger"]["merchants"]
    }


def _record_generated(args: argparse.Namespace, keys: _Secrets, notes: list[str]) -> None:
    """Write generated secrets to the merchants file (created 0600) or say where they are."""
    names = ", ".join(keys.generated)
    path: pathlib.Path | None = args.merchants_file
    if path is not None:
        try:
            write_owner_only(path, _with_generated(path, keys))
        except OSError as error:
            raise ConfigurationError(
                f"cannot write merchants file {path}: {error.strerror}"
            ) from error
        notes.append(f"HashKey and HashIV generated for {names}: written to {path}")
    elif args.state is not None:
        notes.append(
            f"HashKey and HashIV generated for {names}: kept in the state file {args.state}"
        )
    else:
        notes.append(
            f"HashKey and HashIV generated for {names} are kept nowhere you can read them: "
            "give --merchants-file FILE to have them written there"
        )


def _with_generated(path: pathlib.Path, keys: _Secrets) -> Secret[str]:
    """The merchants file's lines, then the generated merchants' (held as a :class:`Secret`)."""
    held = Secret(path.read_text(encoding="utf-8") if path.exists() else "")
    if held.reveal() and not held.reveal().endswith("\n"):
        held = Secret(held.reveal() + "\n")
    return Secret(held.reveal() + keys.lines(keys.generated))


def _add_orders(emulator: Emulator, args: argparse.Namespace, seed: Mapping[str, Any]) -> None:
    for entry in _list(seed, "orders"):
        at = entry.get("at")
        emulator.authorize(
            _get(entry, "merchant_id"),
            _get(entry, "merchant_trade_no"),
            _get(entry, "amount"),
            kind=_kind(entry.get("kind", "one_time")),
            at=None if at is None else parse_aware_iso(at, "at"),
        )
    for spec in args.order:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not parts[2].isdigit():
            raise InvalidArgument("--order takes MERCHANT_ID:ORDER_NO:AMOUNT[:KIND]")
        kind = _kind(parts[3]) if len(parts) == 4 else PaymentKind.ONE_TIME
        emulator.authorize(parts[0], parts[1], int(parts[2]), kind=kind)


def _warn_about_seed(path: pathlib.Path, seed: Mapping[str, Any], notes: list[str]) -> None:
    entries = seed.get("merchants")
    holds_keys = isinstance(entries, list) and any(
        isinstance(entry, dict) and entry.get("hash_key") is not None for entry in entries
    )
    if not holds_keys:
        return
    try:
        check_owner_only(path, "seed file")
    except ConfigurationError as problem:
        notes.append(
            f"warning: {problem}; or leave the keys out of it and give them in {ENV_MERCHANTS}"
        )


def load_seed(path: pathlib.Path) -> Mapping[str, Any]:
    """Read a seed file: a JSON object (see docs/emulator.md). A merchant's ``hash_key`` and
    ``hash_iv`` come back as :class:`Secret` values, so no repr or traceback shows them."""
    try:
        held = read_json_file(path, "seed file")
    except ConfigurationError as error:
        raise InvalidArgument(str(error)) from None
    if not isinstance(held.reveal(), dict):
        raise InvalidArgument(f"seed file {path} must hold a JSON object")
    merchants = held.reveal().get("merchants")
    for entry in merchants if isinstance(merchants, list) else ():
        for field in ("hash_key", "hash_iv"):
            if isinstance(entry, dict) and entry.get(field) is not None:
                entry[field] = Secret(entry[field])
    seed: Mapping[str, Any] = held.reveal()
    return seed


def _list(seed: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    entries = seed.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InvalidArgument(f"seed {key!r} must be a list of JSON objects")
    return entries


def _get(entry: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A seed entry's field as sent; the emulator validates it (typed errors, R19)."""
    return entry.get(key, default)


def _kind(value: object) -> PaymentKind:
    for kind in PaymentKind:
        if value in (kind.value, kind.name):
            return kind
    raise InvalidArgument(f"kind must be one of {', '.join(k.value for k in PaymentKind)}")


def _main() -> int:
    parser = argparse.ArgumentParser(
        prog="ecpay-lifecycle serve", description="Serve the ECPay emulator on 127.0.0.1."
    )
    add_arguments(parser)
    return run(parser.parse_args())
