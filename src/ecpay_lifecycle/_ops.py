"""Operator commands of ``ecpay-lifecycle`` that read the journal and talk to real ECPay.

``sweep`` resolves every stuck operation (docs/ecpay-api.md section 9, R22) and ``journal`` lists
records for people.
Credentials come from the environment only (``ECPAY_MERCHANT_ID``, ``ECPAY_HASH_KEY``,
``ECPAY_HASH_IV``, ``ECPAY_PLATFORM_ID``, ``ECPAY_BASE_URL``, and ``ECPAY_AUTO_CLOSE``: the
merchant's daily auto-close setting, ``1`` by default, ``0`` when it is off), never from the
command line,
where the process list would show them. The journal comes from ``--journal`` or
``ECPAY_JOURNAL``: a file path (SQLite) or a ``postgresql://`` URL.

Exit codes (documented in docs/client.md): 0 done, 2 bad input or configuration, 3 something
is still unknown (a person or a later run must settle it), 4 ECPay or the network failed (the
sweep stopped at HTTP 403, or an order could not be queried).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TextIO

from ._client import Client
from ._exceptions import ConfigurationError, InvalidArgument
from ._journal import Journal, OperationRecord
from ._outcome import SweepReport
from ._protocol import PRODUCTION_URL, Credentials

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "add_commands",
    "open_journal",
]

EXIT_OK: Final = 0
EXIT_BAD_INPUT: Final = 2
EXIT_UNKNOWN: Final = 3
EXIT_FAILED: Final = 4

#: How long ``sweep --watch`` may run at most between two runs, and at least.
_WATCH_LIMITS: Final = (1.0, 86_400.0)


def add_commands(commands: Any) -> None:
    """Register ``sweep`` and ``journal`` on the CLI's subparsers."""
    sweep = commands.add_parser(
        "sweep",
        help="resolve every stuck operation in the journal by R22 (sends no DoAction)",
        description="Find operations with an open attempt or a lapsed owner and resolve each "
        "by a query (docs/ecpay-api.md section 9). Credentials from ECPAY_MERCHANT_ID, "
        "ECPAY_HASH_KEY, ECPAY_HASH_IV (and ECPAY_PLATFORM_ID, ECPAY_BASE_URL). Safe on every "
        "worker at once.",
    )
    _journal_argument(sweep)
    sweep.add_argument("--limit", type=int, default=100, help="operations per run (default 100)")
    sweep.add_argument("--watch", type=float, metavar="SECONDS", help="run again every SECONDS")
    sweep.add_argument("--runs", type=int, help="with --watch: stop after this many runs")
    sweep.add_argument("--json", action="store_true", help="one JSON object per run")
    sweep.set_defaults(run=_run_sweep)

    journal = commands.add_parser(
        "journal",
        help="list operations in the journal (open ones, one order's, the old ones)",
        description="Read the journal, nothing else: no credentials, no network.",
    )
    _journal_argument(journal)
    journal.add_argument("--order", help="every operation of this MerchantTradeNo")
    journal.add_argument(
        "--older-than", type=float, metavar="MINUTES", help="open operations idle this long"
    )
    journal.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    journal.add_argument("--json", action="store_true", help="machine-readable output")
    journal.set_defaults(run=_run_journal)


def _journal_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal",
        help="a SQLite file or a postgresql:// URL (default: $ECPAY_JOURNAL, else "
        "ecpay-lifecycle/journal.db in the user's data directory)",
    )


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
        path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteJournal(path)


def credentials_from_environment() -> tuple[Credentials, str]:
    """The merchant's credentials and base URL from the environment; never from argv."""
    missing = [
        name
        for name in ("ECPAY_MERCHANT_ID", "ECPAY_HASH_KEY", "ECPAY_HASH_IV")
        if not os.environ.get(name)
    ]
    if missing:
        raise ConfigurationError(
            f"set {', '.join(missing)} in the environment (credentials are never taken from "
            "the command line, where the process list shows them)"
        )
    auto_close = os.environ.get("ECPAY_AUTO_CLOSE", "1").strip().lower()
    if auto_close not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ConfigurationError("ECPAY_AUTO_CLOSE must be 1 or 0 (the merchant's auto-close)")
    credentials = Credentials(
        os.environ["ECPAY_MERCHANT_ID"],
        os.environ["ECPAY_HASH_KEY"],
        os.environ["ECPAY_HASH_IV"],
        platform_id=os.environ.get("ECPAY_PLATFORM_ID", ""),
        auto_close=auto_close in ("1", "true", "yes", "on"),
    )
    return credentials, os.environ.get("ECPAY_BASE_URL") or PRODUCTION_URL


def _run_sweep(args: argparse.Namespace, out: TextIO) -> int:
    if args.watch is not None and not _WATCH_LIMITS[0] <= args.watch <= _WATCH_LIMITS[1]:
        raise InvalidArgument(
            f"--watch takes {_WATCH_LIMITS[0]:g} to {_WATCH_LIMITS[1]:g} seconds, got {args.watch}"
        )
    if args.runs is not None and args.runs < 1:
        raise InvalidArgument(f"--runs must be at least 1, got {args.runs}")
    credentials, base_url = credentials_from_environment()
    journal = open_journal(args.journal)
    runs = 0
    code = EXIT_OK
    with Client(credentials, base_url=base_url, journal=journal) as client:
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
                            "retry_at": res.retry_at.isoformat() if res.retry_at else None,
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
        print(json.dumps(body, ensure_ascii=False), file=out, flush=True)
        return
    for reconciliation in report.reconciled:
        for res in reconciliation.resolutions:
            when = f" (resolvable from {res.retry_at.isoformat()})" if res.retry_at else ""
            print(
                f"{reconciliation.merchant_trade_no}  {res.action.value}({res.amount})  "
                f"{res.verdict.value}{when}  [{res.key}]",
                file=out,
            )
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
    journal = open_journal(args.journal)
    records: list[OperationRecord]
    if args.order:
        merchant = os.environ.get("ECPAY_MERCHANT_ID")
        if not merchant:
            raise ConfigurationError("set ECPAY_MERCHANT_ID to look up an order's operations")
        records = list(journal.for_order(merchant, args.order))[-args.limit :]
    else:
        records = list(journal.open_operations(None, limit=args.limit))
        if args.older_than is not None:
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=args.older_than)
            records = [r for r in records if r.updated_at <= cutoff]
    rows = [_row(record) for record in records]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False), file=out)
        return EXIT_OK
    if not rows:
        print("no operations", file=out)
        return EXIT_OK
    for row in rows:
        attempts = ", ".join(f"{a['action']}({a['amount']}) {a['status']}" for a in row["attempts"])
        print(
            f"{row['order']}  {row['status']}  {row['key']}  updated {row['updated_at']}"
            f"{'  owner ' + row['owner'] if row['owner'] else ''}  [{attempts}]",
            file=out,
        )
    return EXIT_OK


def _row(record: OperationRecord) -> dict[str, Any]:
    return {
        "merchant_id": record.merchant_id,
        "order": record.merchant_trade_no,
        "key": record.key,
        "status": record.status.value,
        "request": record.request,
        "owner": record.owner,
        "lease_until": record.lease_until.isoformat() if record.lease_until else None,
        "updated_at": record.updated_at.isoformat(),
        "attempts": [
            {
                "action": a.action.value,
                "amount": a.amount,
                "status": a.status.value,
                "at": a.at.isoformat(),
                "resolvable_at": a.resolvable_at.isoformat() if a.resolvable_at else None,
                "note": a.note,
            }
            for a in record.attempts
        ],
    }
