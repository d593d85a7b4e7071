"""``ecpay-lifecycle serve``: the emulator over real HTTP on 127.0.0.1, for any language's tests.

uvicorn is an optional extra (``pip install 'ecpay-lifecycle[serve]'``) and is imported only
when a server actually starts. Merchants and orders come from ``--seed FILE`` (JSON) and/or flags;
test suites can add more at run time through the admin routes (see :mod:`._asgi`). The server
binds to loopback only: the emulator has no authentication and is not meant to be reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import pathlib
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ecpay_lifecycle._exceptions import ConfigurationError, EcpayError, InvalidArgument
from ecpay_lifecycle._models import Action, GatewayStatus, PaymentKind

from ._emulator import Emulator
from ._settings import EmulatorSettings, Refusal, RefusalReply, ReplyFlavour, UrlEncoding
from ._wire import parse_aware_iso

__all__ = ["add_arguments", "build_emulator", "run", "serving"]

HOST = "127.0.0.1"
_INSTALL_HINT = "pip install 'ecpay-lifecycle[serve]'"
_STARTUP_LIMIT = 10.0


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
        metavar="ID:HASHKEY:HASHIV",
        help="register a merchant (repeatable)",
    )
    parser.add_argument(
        "--manual-close",
        action="store_true",
        help="merchants from --merchant have daily auto-close off (R6, R7)",
    )
    parser.add_argument(
        "--balance", type=int, default=0, help="ECPay balance of merchants from --merchant (R16)"
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
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 2 on bad options or missing uvicorn.

    On SIGINT/SIGTERM uvicorn finishes in-flight requests and then re-raises the signal, so the
    process exit status reports it (uvicorn's behaviour); 0 when the server stops by itself.
    """
    try:
        server_module = _uvicorn()
        emulator = build_emulator(args)
        sock = _bind(args.port)
    except EcpayError as error:
        print(f"ecpay-lifecycle serve: error: {error}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    config = server_module.Config(
        emulator.asgi_app,
        log_level=args.log_level,
        lifespan="on",
        interface="asgi3",
        timeout_graceful_shutdown=5,
    )
    server = server_module.Server(config)
    print(
        f"ECPay emulator on http://{HOST}:{port} (admin routes under /_emulator/); "
        f"clock at {emulator.now.isoformat()}",
        flush=True,
    )
    server.run(sockets=[sock])
    return 0


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


def build_emulator(args: argparse.Namespace) -> Emulator:
    """The emulator the ``serve`` options describe: seed file first, then flags (R-rules apply).

    Bad options raise :class:`InvalidArgument` (or a subclass) naming what is wrong.
    """
    seed: Mapping[str, Any] = {}
    if args.seed is not None:
        seed = load_seed(args.seed)
    start_text = args.start if args.start is not None else seed.get("start")
    start = (
        parse_aware_iso(start_text, "start")
        if start_text is not None
        else dt.datetime.now(dt.UTC).replace(microsecond=0)
    )
    emulator = Emulator(now=start, settings=settings_from_json(seed.get("settings", {})))
    for entry in _list(seed, "merchants"):
        emulator.add_merchant(
            _get(entry, "merchant_id"),
            _get(entry, "hash_key"),
            _get(entry, "hash_iv"),
            auto_close=_get(entry, "auto_close", True),
            balance=_get(entry, "balance", 0),
            platform_id=_get(entry, "platform_id"),
        )
    for spec in args.merchant:
        parts = spec.split(":")
        if len(parts) != 3:
            raise InvalidArgument("--merchant takes ID:HASHKEY:HASHIV")
        emulator.add_merchant(
            parts[0], parts[1], parts[2], auto_close=not args.manual_close, balance=args.balance
        )
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
    return emulator


def load_seed(path: pathlib.Path) -> Mapping[str, Any]:
    """Read a seed file: a JSON object (see docs/emulator.md)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidArgument(f"cannot read seed file {path}: {error.strerror}") from error
    except ValueError as error:
        raise InvalidArgument(f"seed file {path} is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise InvalidArgument(f"seed file {path} must hold a JSON object")
    return data


_DURATIONS = {
    "close_limit",
    "notice_after",
    "abandon_after",
    "timestamp_tolerance",
    "credit_detail_lag",
}
_TIMES = {"batch_time", "batch_window_end"}


def settings_from_json(data: object) -> EmulatorSettings:
    """:class:`EmulatorSettings` from JSON: durations in seconds, times as ``"HH:MM"``,
    statuses and enums by value, ``full_amount_actions`` as letters, ``refusals`` as
    ``{"over_date": [code, "message"]}``. Unknown keys are errors."""
    if not isinstance(data, dict):
        raise InvalidArgument("settings must be a JSON object")
    names = {field.name for field in attrs.fields(EmulatorSettings)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise InvalidArgument(f"unknown emulator setting {key!r}")
        try:
            values[key] = _setting(key, value)
        except (ValueError, TypeError, OverflowError) as error:
            raise InvalidArgument(f"setting {key}: {error}") from error
    return EmulatorSettings(**values)


def _setting(key: str, value: Any) -> Any:
    if key in _DURATIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{key} is a number of seconds")
        return dt.timedelta(seconds=value)
    if key in _TIMES:
        return dt.time.fromisoformat(value)
    if key == "credit_detail_flavour":
        return ReplyFlavour(value)
    if key == "reply_url_encoding":
        return UrlEncoding(value)
    if key == "unionpay_start_status":
        return GatewayStatus.parse(value)
    if key == "full_amount_actions":
        return frozenset(Action(letter) for letter in value)
    if key == "refusals":
        return {Refusal(name): RefusalReply(*pair) for name, pair in dict(value).items()}
    return value


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
