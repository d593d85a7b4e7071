"""What the operator commands of ``ecpay-lifecycle`` share, and ``sweep`` and ``journal``.

The order commands (``query``, ``capture``, ``refund``, ``abandon``, ``reconcile``,
``deadlines``) live in ``_ops_commands.py``; this module holds what every command needs:

- settings: credentials from the environment (``ECPAY_MERCHANT_ID``, ``ECPAY_HASH_KEY``,
  ``ECPAY_HASH_IV``, ``ECPAY_PLATFORM_ID``, ``ECPAY_BASE_URL``, ``ECPAY_AUTO_CLOSE``: the merchant's
  daily auto-close, ``1`` by default, ``0`` when off) or from a file only its owner can read
  (``--credentials-file`` or ``ECPAY_CREDENTIALS_FILE``, ``NAME=VALUE`` lines), never from the
  command line, where the process list would show them;
- the journal: ``--journal`` or ``ECPAY_JOURNAL`` (a SQLite file that must exist, or a
  ``postgresql://`` URL), else a durable SQLite file in the user's data directory;
- one exit code per kind of result (:data:`EXIT_CODES`, documented in docs/operations.md), and
  errors reported as text or, with ``--json``, as one JSON object on standard output;
- tables that are aligned everywhere and styled only on a terminal.

No HashKey or HashIV ever reaches the output, a message or the JSON: the commands never print
a setting's value, and a setting that is wrong is named, not shown.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import pathlib
import re
import stat
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, NoReturn, TextIO

from ._client import Client
from ._exceptions import (
    ClockOutOfSync,
    ConfigurationError,
    EcpayError,
    GatewayRefused,
    InvalidArgument,
    InvalidArgumentType,
    JournalError,
    OperationInProgress,
    OrderLocked,
    OutcomeUnknown,
    OwnershipLost,
    RuleViolation,
    ServiceNotEnabled,
    WrongCredentials,
)
from ._journal import AttemptRecord, Journal, OperationRecord
from ._models import Intent, OrderSnapshot, Plan
from ._outcome import SweepReport, Verdict
from ._protocol import PRODUCTION_URL, Credentials
from ._rules import TAIPEI

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNKNOWN",
    "SETTINGS",
    "Parser",
    "UsageError",
    "add_commands",
    "common_arguments",
    "credentials_from_environment",
    "default_journal_path",
    "emit_json",
    "exit_code",
    "iso",
    "journal_for",
    "now",
    "open_journal",
    "operator_settings",
    "plan_body",
    "plan_lines",
    "read_credentials_file",
    "render_table",
    "report_error",
    "resolvable",
    "snapshot_body",
    "styled",
    "when",
]

#: Done: nothing is left for a person.
EXIT_OK: Final = 0
#: Refused by a rule (the planner's, R1-R20) or by ECPay (RtnCode != 1): nothing moved.
EXIT_REFUSED: Final = 1
#: Bad input or configuration: the command line, a setting, the journal, the HashKey/HashIV
#: (ECPay's TransCode 110), the host's clock (104), the merchant's services (115).
EXIT_BAD_INPUT: Final = 2
#: Outcome unknown: money may have moved, or another caller is moving it (R22, R23).
EXIT_UNKNOWN: Final = 3
#: ECPay or the network failed (HTTP 403, a timeout before sending, a reply that is not ECPay's):
#: nothing took effect; try again later with the same key.
EXIT_FAILED: Final = 4
#: A bug (an error the library did not raise on purpose): what happened to money is not known.
EXIT_INTERNAL: Final = 70

#: Each exit code and what it means, as docs/operations.md tabulates it.
EXIT_CODES: Final[Mapping[int, str]] = {
    EXIT_OK: "ok",
    EXIT_REFUSED: "refused",
    EXIT_BAD_INPUT: "bad input or configuration",
    EXIT_UNKNOWN: "outcome unknown",
    EXIT_FAILED: "gateway or transport error",
    EXIT_INTERNAL: "internal error",
}

#: The settings the commands read, from the environment or a credentials file.
SETTINGS: Final = (
    "ECPAY_MERCHANT_ID",
    "ECPAY_HASH_KEY",
    "ECPAY_HASH_IV",
    "ECPAY_PLATFORM_ID",
    "ECPAY_BASE_URL",
    "ECPAY_AUTO_CLOSE",
    "ECPAY_JOURNAL",
)
_CREDENTIALS_FILE_VARIABLE: Final = "ECPAY_CREDENTIALS_FILE"
_MERCHANT_ID = re.compile(r"[A-Za-z0-9]{1,10}")
_BOOLEANS: Final = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}

#: How long ``sweep --watch`` may run at most between two runs, and at least.
_WATCH_LIMITS: Final = (1.0, 86_400.0)


# -- the parser -------------------------------------------------------------------------------


class UsageError(Exception):
    """The command line is wrong (argparse's complaint); ``parser`` is the one that complained."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.message = message
        self.parser = parser


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises :class:`UsageError` instead of exiting, so that ``main``
    can report a wrong command line as JSON under ``--json`` (subcommands inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def common_arguments(parser: argparse.ArgumentParser, *, journal: bool = True) -> None:
    """``--json``, ``--credentials-file`` and (unless ``journal=False``) ``--journal``."""
    if journal:
        parser.add_argument(
            "--journal",
            metavar="PATH_OR_URL",
            help="a SQLite file or a postgresql:// URL (default: $ECPAY_JOURNAL, else "
            "ecpay-lifecycle/journal.db in the user's data directory)",
        )
    parser.add_argument(
        "--credentials-file",
        metavar="PATH",
        help="NAME=VALUE lines (ECPAY_MERCHANT_ID, ECPAY_HASH_KEY, ...) in a file only its "
        "owner can read (default: $ECPAY_CREDENTIALS_FILE); overrides the environment",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# -- settings ---------------------------------------------------------------------------------


def read_credentials_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The settings in ``path``: ``NAME=VALUE`` lines, ``#`` comments, blank lines, an optional
    ``export`` and quotes. The file must be a regular file of the current user that nobody
    else may read or write (``chmod 600``); otherwise nothing is read. Errors name the line,
    never its text, which may hold a secret."""
    where = os.fspath(path)
    try:
        # Checked on the open file, so the file read is the file checked; O_NONBLOCK keeps a
        # FIFO from hanging the command before the check refuses it.
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the credentials file {where}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"the credentials file {where} is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise ConfigurationError(
                f"the credentials file {where} belongs to another user (uid {info.st_uid}); "
                "it must be yours and readable only by you"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigurationError(
                f"the credentials file {where} can be read or changed by its group or by "
                f"others (mode {mode:04o}); nothing was read from it. Run: chmod 600 {where}"
            )
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"cannot read the credentials file {where}: it is not UTF-8 text"
        ) from None
    settings: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals or name not in SETTINGS:
            raise ConfigurationError(
                f"the credentials file {where}, line {number}: not NAME=VALUE with a NAME of "
                f"{', '.join(SETTINGS)}"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        settings[name] = value
    return settings


def operator_settings(credentials_file: str | None = None) -> dict[str, str]:
    """The ``ECPAY_*`` settings: the environment's, overridden by those of the credentials file
    (``credentials_file``, else ``$ECPAY_CREDENTIALS_FILE``) when there is one."""
    settings = {name: os.environ[name] for name in SETTINGS if os.environ.get(name)}
    path = credentials_file or os.environ.get(_CREDENTIALS_FILE_VARIABLE)
    if path:
        settings.update({k: v for k, v in read_credentials_file(path).items() if v})
    return settings


def credentials_from_environment(
    settings: Mapping[str, str] | None = None,
) -> tuple[Credentials, str]:
    """The merchant's credentials and base URL from ``settings`` (default: the environment and
    ``$ECPAY_CREDENTIALS_FILE``); never from argv. A wrong value is named, never shown."""
    values = operator_settings() if settings is None else settings
    missing = [
        name
        for name in ("ECPAY_MERCHANT_ID", "ECPAY_HASH_KEY", "ECPAY_HASH_IV")
        if not values.get(name)
    ]
    if missing:
        raise ConfigurationError(
            f"set {', '.join(missing)} in the environment or a credentials file (credentials "
            "are never taken from the command line, where the process list shows them)"
        )
    for name in ("ECPAY_MERCHANT_ID", "ECPAY_PLATFORM_ID"):
        if values.get(name) and not _MERCHANT_ID.fullmatch(values[name]):
            raise ConfigurationError(f"{name} must be 1-10 letters or digits")
    for name in ("ECPAY_HASH_KEY", "ECPAY_HASH_IV"):
        secret = values[name]
        if not secret.isascii() or len(secret) != 16:
            raise ConfigurationError(
                f"{name} must be exactly 16 ASCII characters (R1); check that the HashKey and "
                "HashIV are not swapped with another setting"
            )
    auto_close = _BOOLEANS.get(values.get("ECPAY_AUTO_CLOSE", "1").strip().lower())
    if auto_close is None:
        raise ConfigurationError("ECPAY_AUTO_CLOSE must be 1 or 0 (the merchant's auto-close)")
    try:
        credentials = Credentials(
            values["ECPAY_MERCHANT_ID"],
            values["ECPAY_HASH_KEY"],
            values["ECPAY_HASH_IV"],
            platform_id=values.get("ECPAY_PLATFORM_ID", ""),
            auto_close=auto_close,
        )
    except EcpayError:
        # The library's message may quote a value; this one names the settings only.
        raise ConfigurationError(
            "ECPAY_MERCHANT_ID, ECPAY_HASH_KEY and ECPAY_HASH_IV do not make valid credentials"
        ) from None
    return credentials, values.get("ECPAY_BASE_URL") or PRODUCTION_URL


def merchant_id(settings: Mapping[str, str], doing: str) -> str:
    """``ECPAY_MERCHANT_ID`` (not a secret), for the commands that read the journal only."""
    value = settings.get("ECPAY_MERCHANT_ID")
    if not value:
        raise ConfigurationError(f"set ECPAY_MERCHANT_ID to {doing}")
    return value


# -- the journal ------------------------------------------------------------------------------


def default_journal_path() -> pathlib.Path:
    """``$XDG_DATA_HOME/ecpay-lifecycle/journal.db`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return pathlib.Path(base) / "ecpay-lifecycle" / "journal.db"


def open_journal(spec: str | None) -> Journal:
    """The journal named by ``--journal``, ``$ECPAY_JOURNAL`` or the default path."""
    spec = spec or os.environ.get("ECPAY_JOURNAL")
    if spec and spec.startswith(("postgres://", "postgresql://")):
        from ._postgres import PostgresJournal  # noqa: PLC0415  # the [postgres] extra

        return PostgresJournal(spec)
    from ._sqlite import SQLiteJournal  # noqa: PLC0415  # only the commands that need it

    path = pathlib.Path(spec) if spec else default_journal_path()
    if not spec:
        # The user's own directory: the journal holds no secret, but it is nobody else's.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SQLiteJournal(path)


def journal_for(
    args: argparse.Namespace, settings: Mapping[str, str], *, create_default: bool
) -> Journal:
    """The command's journal. A named SQLite file must exist: a mistyped path would otherwise
    be a new, empty journal that knows no key and no lock, and a refund could go out twice.
    The default file is created only by a command that records (``create_default``)."""
    spec = args.journal or settings.get("ECPAY_JOURNAL")
    if spec and spec.startswith(("postgres://", "postgresql://")):
        return open_journal(spec)
    path = pathlib.Path(spec) if spec else default_journal_path()
    if not path.exists() and (spec or not create_default):
        raise ConfigurationError(
            f"no journal at {path}: name the shop's journal with --journal or ECPAY_JOURNAL "
            "(a SQLite file the workers created, or a postgresql:// URL)"
        )
    return open_journal(spec)  # None: the default file, made in a directory of the user's


# -- time ---------------------------------------------------------------------------------------


def now(args: argparse.Namespace) -> dt.datetime:
    """The command's clock: the system's, unless ``main`` was given one (tests, docs)."""
    clock: Callable[[], dt.datetime] | None = getattr(args, "clock", None)
    return clock() if clock is not None else dt.datetime.now(dt.UTC)


def when(moment: dt.datetime | None) -> str:
    """An instant for people: ISO 8601 to the second, in Asia/Taipei (ECPay's time)."""
    if moment is None:
        return "-"
    return moment.astimezone(TAIPEI).isoformat(timespec="seconds")


def resolvable(verdict: Verdict, retry_at: dt.datetime | None) -> str:
    """When an attempt can be settled: ``-`` when it is, the fence, or a person's verdict."""
    if verdict is not Verdict.UNKNOWN:
        return "-"
    return when(retry_at) if retry_at else "a person: --declare"


def iso(moment: dt.datetime | None) -> str | None:
    """An instant for machines (``--json``): ISO 8601 as recorded, or None."""
    return None if moment is None else moment.isoformat()


# -- output -------------------------------------------------------------------------------------


def styled(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that takes ANSI styles (not a pipe, a file or a log;
    not with ``NO_COLOR`` set or ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    return (
        bool(isatty and isatty())
        and "NO_COLOR" not in os.environ
        and os.environ.get("TERM") != "dumb"
    )


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: CJK characters (ECPay's RtnMsg) take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, style: bool
) -> list[str]:
    """Aligned columns, two spaces apart; the header is bold only when ``style``."""
    widths = [max([_width(h)] + [_width(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True)]
        return "  ".join(padded).rstrip()

    head = line(headers)
    return [f"\x1b[1m{head}\x1b[0m" if style else head, *(line(row) for row in rows)]


def emit_json(body: object, out: TextIO) -> None:
    """One JSON document on one line."""
    print(json.dumps(body, ensure_ascii=False), file=out, flush=True)


def snapshot_body(snapshot: OrderSnapshot) -> dict[str, Any]:
    """An order as ECPay showed it, for ``--json``."""
    return {
        "order": snapshot.merchant_trade_no,
        "trade_no": snapshot.trade_no,
        "state": snapshot.state.value,
        "amount": snapshot.amount,
        "closed_amount": snapshot.closed_amount,
        "refundable": snapshot.refundable,
        "capture_settled": snapshot.capture_settled,
        "kind": snapshot.kind.value,
        "auto_close": snapshot.auto_close,
        "authorized_at": snapshot.authorized_at.isoformat(),
    }


def plan_body(plan: Plan) -> dict[str, Any]:
    """A plan, for ``--json`` (``plan`` and the dry runs)."""
    return {
        "order": plan.merchant_trade_no,
        "intent": plan.intent.value,
        "steps": [
            {
                "action": s.action.value,
                "amount": s.amount,
                "state_after": s.state_after.value,
                "closed_amount_after": s.closed_amount_after,
                "rule": s.rule,
            }
            for s in plan.steps
        ],
        "refund_total": plan.refund_total,
        "reason": plan.reason,
    }


def plan_lines(plan: Plan, snapshot: OrderSnapshot) -> list[str]:
    """A plan, for people: the order, then each DoAction and what it must leave behind."""
    lines = [
        (
            f"order {snapshot.merchant_trade_no}: {snapshot.state} {snapshot.amount} TWD, "
            f"closed {snapshot.closed_amount}, {snapshot.kind}"
        ),
        f"plan ({plan.intent}): {plan.describe()}",
    ]
    lines.extend(
        f"  {number}. send {step.action.value} TotalAmount={step.amount}: expect "
        f"{step.state_after}, closed {step.closed_amount_after}  [{step.rule}]"
        for number, step in enumerate(plan.steps, 1)
    )
    if plan.intent is Intent.REFUND:
        lines.append(f"returns {plan.refund_total} TWD to the card holder. {plan.reason}")
    elif plan.intent is Intent.ABANDON:
        lines.append(f"releases the {plan.refund_total} TWD held on the card. {plan.reason}")
    else:
        lines.append(plan.reason)
    return lines


# -- errors -------------------------------------------------------------------------------------


def exit_code(error: BaseException) -> int:
    """The exit code that says what ``error`` means for the money (docs/operations.md)."""
    if isinstance(error, RuleViolation | GatewayRefused):
        return EXIT_REFUSED
    if isinstance(error, OutcomeUnknown | OrderLocked | OperationInProgress | OwnershipLost):
        return EXIT_UNKNOWN
    if isinstance(
        error,
        UsageError
        | InvalidArgument
        | InvalidArgumentType
        | JournalError
        | WrongCredentials
        | ClockOutOfSync
        | ServiceNotEnabled,
    ):
        return EXIT_BAD_INPUT
    if isinstance(error, EcpayError):
        return EXIT_FAILED
    return EXIT_INTERNAL


_HINTS: Final[Mapping[int, str]] = {
    EXIT_REFUSED: "nothing was sent for the refused step",
    EXIT_BAD_INPUT: "nothing was sent; fix the command or its settings",
    EXIT_UNKNOWN: "money may have moved: do not repeat it by hand; after retry_at run "
    "`ecpay-lifecycle reconcile ORDER` (docs/operations.md)",
    EXIT_FAILED: "nothing took effect; try again later with the same --key",
    EXIT_INTERNAL: "a bug in ecpay-lifecycle: treat the money as unknown and check "
    "`ecpay-lifecycle journal --order ORDER`",
}


def _error_body(error: BaseException, code: int, context: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": type(error).__name__,
        "exit": code,
        "message": error.message if isinstance(error, EcpayError | UsageError) else str(error),
    }
    order = getattr(error, "merchant_trade_no", None) or context.get("order")
    if order:
        body["order"] = order
    if isinstance(error, RuleViolation):
        body["refused"] = error.rule
    if isinstance(error, GatewayRefused):
        body["rtn_code"] = error.rtn_code
        body["rtn_msg"] = error.rtn_msg
    if hasattr(error, "retry_at"):
        retry_at = error.retry_at
        body["retry_at"] = iso(retry_at) if isinstance(retry_at, dt.datetime) else None
    key = getattr(error, "idempotency_key", None) or context.get("key")
    if key:
        body["key"] = key
    notes = getattr(error, "__notes__", None)
    if notes:
        body["notes"] = list(notes)
    body["hint"] = _HINTS.get(code, "").replace("ORDER", order or "ORDER")
    return body


def report_error(
    error: BaseException,
    *,
    as_json: bool,
    out: TextIO,
    context: Mapping[str, Any] | None = None,
) -> int:
    """Report ``error`` and return its exit code. With ``--json``: one object on ``out``. As
    text: a refusal or an unknown outcome is the command's answer, on ``out``; anything else
    is a diagnostic, on stderr."""
    code = exit_code(error)
    body = _error_body(error, code, context or {})
    if as_json:
        emit_json(body, out)
        return code
    if isinstance(error, UsageError):
        error.parser.print_usage(sys.stderr)
        print(f"{error.parser.prog}: error: {error.message}", file=sys.stderr)
        return code
    if code == EXIT_INTERNAL:
        import traceback  # noqa: PLC0415  # only for a bug

        traceback.print_exception(error, file=sys.stderr)
    label = {EXIT_REFUSED: "refused", EXIT_UNKNOWN: "outcome unknown"}.get(code, "error")
    stream = out if code in (EXIT_REFUSED, EXIT_UNKNOWN) else sys.stderr
    lines = [f"{label}: {error}"]
    if isinstance(error, EcpayError) and not isinstance(error, RuleViolation):
        retry_at = getattr(error, "retry_at", None)
        if isinstance(retry_at, dt.datetime):
            lines.append(f"  retry at {when(retry_at)}")
    if body.get("key"):
        lines.append(f"  key {body['key']}")
    lines.extend(f"  note: {note}" for note in body.get("notes", ()))
    lines.append(f"  {body['hint']}")
    print("\n".join(lines), file=stream, flush=True)
    return code


# -- sweep and journal ------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Register ``sweep`` and ``journal`` on the CLI's subparsers."""
    sweep = commands.add_parser(
        "sweep",
        help="resolve every stuck operation in the journal by R22 (sends no DoAction)",
        description="Find operations with an open attempt or a lapsed owner and resolve each "
        "by a query (docs/ecpay-api.md section 9). Credentials from ECPAY_MERCHANT_ID, "
        "ECPAY_HASH_KEY, ECPAY_HASH_IV (and ECPAY_PLATFORM_ID, ECPAY_BASE_URL) or a "
        "credentials file. Safe on every worker at once.",
    )
    common_arguments(sweep)
    sweep.add_argument("--limit", type=int, default=100, help="operations per run (default 100)")
    sweep.add_argument("--watch", type=float, metavar="SECONDS", help="run again every SECONDS")
    sweep.add_argument("--runs", type=int, help="with --watch: stop after this many runs")
    sweep.set_defaults(run=_run_sweep)

    journal = commands.add_parser(
        "journal",
        help="list operations in the journal (open ones, one order's, the old ones)",
        description="Read the journal, nothing else: no HashKey, no network.",
    )
    common_arguments(journal)
    journal.add_argument("--order", help="every operation of this MerchantTradeNo")
    journal.add_argument(
        "--older-than",
        type=float,
        metavar="MINUTES",
        help="open operations whose attempt was sent (or owner last wrote) MINUTES ago or more",
    )
    journal.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    journal.set_defaults(run=_run_journal)


def _run_sweep(args: argparse.Namespace, out: TextIO) -> int:
    if args.watch is not None and not _WATCH_LIMITS[0] <= args.watch <= _WATCH_LIMITS[1]:
        raise InvalidArgument(
            f"--watch takes {_WATCH_LIMITS[0]:g} to {_WATCH_LIMITS[1]:g} seconds, got {args.watch}"
        )
    if args.runs is not None and args.runs < 1:
        raise InvalidArgument(f"--runs must be at least 1, got {args.runs}")
    if args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {args.limit}")
    settings = operator_settings(args.credentials_file)
    credentials, base_url = credentials_from_environment(settings)
    journal = journal_for(args, settings, create_default=False)
    runs = 0
    code = EXIT_OK
    with Client(
        credentials, base_url=base_url, journal=journal, clock=getattr(args, "clock", None)
    ) as client:
        while True:
            with _progress(sys.stderr, quiet=args.json) as show:
                report = client.sweep(limit=args.limit, progress=show)
            runs += 1
            code = _sweep_code(report)
            _emit_sweep(report, args.json, out)
            if args.watch is None or (args.runs is not None and runs >= args.runs):
                return code
            time.sleep(args.watch)


@contextlib.contextmanager
def _progress(stream: TextIO, *, quiet: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """On a terminal (and not with ``--json``), one line on stderr that says which order the
    sweep is at, erased when it ends; elsewhere nothing (logs and pipes stay clean)."""
    if quiet or not stream.isatty():
        yield None
        return
    drawn = False

    def show(position: int, total: int, order: str) -> None:
        nonlocal drawn
        stream.write(f"\r\x1b[2Ksweeping {position}/{total}: order {order} ...")
        stream.flush()
        drawn = True

    try:
        yield show
    finally:
        if drawn:
            stream.write("\r\x1b[2K")
            stream.flush()


def _sweep_code(report: SweepReport) -> int:
    if report.stopped is not None or report.failed:
        return EXIT_FAILED
    if report.still_unknown:
        return EXIT_UNKNOWN
    return EXIT_OK


def _emit_sweep(report: SweepReport, as_json: bool, out: TextIO) -> None:
    if as_json:
        body = {
            "resolved": report.resolved,
            "still_unknown": report.still_unknown,
            "orders": [
                {
                    "order": r.merchant_trade_no,
                    "attempts": [
                        {
                            "key": res.key,
                            "action": res.action.value,
                            "amount": res.amount,
                            "verdict": res.verdict.value,
                            "retry_at": iso(res.retry_at),
                        }
                        for res in r.resolutions
                    ],
                }
                for r in report.reconciled
            ],
            "busy": list(report.busy),
            "waiting": list(report.waiting),
            "released": list(report.released),
            "failed": [{"order": order, "error": error} for order, error in report.failed],
            "stopped": report.stopped,
        }
        emit_json(body, out)
        return
    rows = [
        [
            reconciliation.merchant_trade_no,
            f"{res.action.value}({res.amount})",
            res.verdict.value,
            resolvable(res.verdict, res.retry_at),
            res.key,
        ]
        for reconciliation in report.reconciled
        for res in reconciliation.resolutions
    ]
    if rows:
        headers = ["ORDER", "STEP", "VERDICT", "RESOLVABLE FROM", "KEY"]
        print("\n".join(render_table(headers, rows, style=styled(out))), file=out)
    for order, error in report.failed:
        print(f"{order}  failed: {error}", file=out)
    print(
        f"swept: {report.resolved} resolved, {report.still_unknown} still unknown, "
        f"{len(report.busy)} busy, {len(report.waiting)} backing off, "
        f"{len(report.released)} released"
        + (f"; stopped: {report.stopped}" if report.stopped else ""),
        file=out,
        flush=True,
    )


def _run_journal(args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {args.limit}")
    if args.older_than is not None and args.older_than < 0:
        raise InvalidArgument(f"--older-than takes minutes, not {args.older_than}")
    settings = operator_settings(args.credentials_file)
    journal = journal_for(args, settings, create_default=False)
    records: list[OperationRecord]
    if args.order:
        merchant = merchant_id(settings, "look up an order's operations")
        records = list(journal.for_order(merchant, args.order))[-args.limit :]
    else:
        records = list(journal.open_operations(settings.get("ECPAY_MERCHANT_ID"), limit=args.limit))
        if args.older_than is not None:
            cutoff = now(args) - dt.timedelta(minutes=args.older_than)
            records = [r for r in records if _stuck_since(r) <= cutoff]
    if args.json:
        emit_json([_row(record) for record in records], out)
        return EXIT_OK
    if not records:
        print("no operations", file=out)
        return EXIT_OK
    headers = ["ORDER", "KEY", "STATUS", "ATTEMPTS", "UPDATED", "OWNER"]
    rows = [
        [
            r.merchant_trade_no,
            r.key,
            r.status.value,
            ", ".join(_attempt_text(a) for a in r.attempts) or "-",
            when(r.updated_at),
            r.owner or "-",
        ]
        for r in records
    ]
    print("\n".join(render_table(headers, rows, style=styled(out))), file=out)
    return EXIT_OK


def _stuck_since(record: OperationRecord) -> dt.datetime:
    """Since when an open operation waits: its open attempt's sending (a sweep that looks at
    it again does not make it younger), else its owner's last write."""
    attempt = record.open_attempt
    return attempt.at if attempt is not None else record.updated_at


def _attempt_text(attempt: AttemptRecord) -> str:
    text = f"{attempt.action.value}({attempt.amount}) {attempt.status.value}"
    if attempt.status.open and attempt.resolvable_at is not None:
        text += f" until {when(attempt.resolvable_at)}"
    return text


def _row(record: OperationRecord) -> dict[str, Any]:
    return {
        "merchant_id": record.merchant_id,
        "order": record.merchant_trade_no,
        "key": record.key,
        "status": record.status.value,
        "request": record.request,
        "owner": record.owner,
        "lease_until": iso(record.lease_until),
        "updated_at": record.updated_at.isoformat(),
        "attempts": [
            {
                "action": a.action.value,
                "amount": a.amount,
                "status": a.status.value,
                "at": a.at.isoformat(),
                "resolvable_at": iso(a.resolvable_at),
                "note": a.note,
            }
            for a in record.attempts
        ],
    }
