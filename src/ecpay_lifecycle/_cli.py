"""The ``ecpay-lifecycle`` command (also ``python -m ecpay_lifecycle``).

Subcommands: ``demo`` (the main job: the whole story through the real client against the
embedded emulator), ``plan`` (ask the planner about one order, no network), ``serve`` (the
emulator over HTTP on 127.0.0.1), ``diagram`` (write the lifecycle diagram from the machine),
and the operator commands of ``_ops.py`` and ``_ops_commands.py`` (docs/operations.md):
``query``, ``capture``, ``refund``, ``abandon``, ``reconcile``, ``sweep``, ``journal`` and
``deadlines``. The exit codes are ``_ops.EXIT_CODES``; with ``--json`` an error is JSON on
stdout too. The command never prints a HashKey or HashIV.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from . import _ops, _ops_commands
from ._demo import run_demo
from ._diagram import render_mermaid
from ._exceptions import InvalidArgument
from ._models import OrderSnapshot, PaymentKind, State
from ._planner import plan_abandon, plan_capture, plan_refund
from ._rules import TAIPEI
from .emulator import _serve

__all__ = ["main"]

DIAGRAM_PATH = pathlib.Path("diagrams") / "lifecycle.mmd"


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    clock: Callable[[], dt.datetime] | None = None,
) -> int:
    """Run the command; return the process exit code (``_ops.EXIT_CODES``: 0 ok, 1 refused,
    2 bad input or configuration, 3 outcome unknown, 4 gateway or transport error, 70 a bug).

    ``clock`` replaces the system clock for tests and docs (never settable from the command
    line, where a wrong time would misjudge a fence, R22).
    """
    stdout = out if out is not None else sys.stdout
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(words)
    except _ops.UsageError as usage:
        return _ops.report_error(usage, as_json="--json" in words, out=stdout)
    except SystemExit as done:  # --help and --version have printed what was asked
        return done.code if isinstance(done.code, int) else 0
    args.clock = clock
    try:
        code: int = args.run(args, stdout)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaced for the interpreter's exit flush
        return 0
    except Exception as error:  # every error gets its exit code and its report (JSON too)
        return _ops.report_error(error, as_json=getattr(args, "json", False), out=stdout)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = _ops.Parser(
        prog="ecpay-lifecycle",
        description="Capture and refund ECPay credit-card orders safely. Operator commands: "
        "docs/operations.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the whole capture/refund story against the embedded emulator (no credentials)",
        description="The real Client against the embedded ECPay emulator: capture, refunds "
        "before and after the batch, refusals with their rules, a lost reply resolved safely.",
    )
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.set_defaults(run=_run_demo)

    plan = commands.add_parser(
        "plan",
        help="plan a capture, refund or abandon for one order (no network)",
        description="Ask the planner what to send for an order in a given state "
        "(docs/ecpay-api.md section 8).",
    )
    plan.add_argument("--order", default="DEMO1", help="MerchantTradeNo (default DEMO1)")
    plan.add_argument("--trade-no", default="2411250000000001", help="ECPay TradeNo")
    plan.add_argument("--state", required=True, choices=[s.value for s in State])
    plan.add_argument("--amount", required=True, type=int, help="the order amount, TWD")
    plan.add_argument("--closed-amount", type=int, default=None, help="ClsAmt (default: derived)")
    plan.add_argument("--capture-settled", action="store_true", help="TO_CLOSE is a pending refund")
    plan.add_argument("--kind", default="one_time", choices=[k.value for k in PaymentKind])
    plan.add_argument("--auto-close", action=argparse.BooleanOptionalAction, default=True)
    plan.add_argument("--authorized-at", type=_aware, help="ISO time (default: a day before now)")
    plan.add_argument("--now", type=_aware, help="ISO time with offset (default: the clock)")
    intent = plan.add_mutually_exclusive_group(required=True)
    intent.add_argument("--refund", metavar="TWD", nargs="?", const="all", help="refund TWD or all")
    intent.add_argument("--capture", action="store_true", help="capture (close) the order")
    intent.add_argument("--abandon", action="store_true", help="release the hold")
    plan.add_argument("--capture-first", action="store_true", help="allow C then R (R18)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(run=_run_plan)

    serve = commands.add_parser(
        "serve",
        help="run the ECPay emulator over HTTP on 127.0.0.1 (needs the [serve] extra)",
        description="Serve the emulator for other languages' test suites; see docs/emulator.md.",
    )
    _serve.add_arguments(serve)
    serve.set_defaults(run=lambda args, _out: _serve.run(args))

    diagram = commands.add_parser(
        "diagram",
        help="write diagrams/lifecycle.mmd from the lifecycle machine",
        description="Render the one lifecycle table as a mermaid state diagram.",
    )
    diagram.add_argument("--output", type=pathlib.Path, default=DIAGRAM_PATH)
    diagram.add_argument("--stdout", action="store_true", help="print instead of writing")
    diagram.add_argument("--json", action="store_true", help="machine-readable output")
    diagram.set_defaults(run=_run_diagram)
    _ops_commands.add_commands(commands)
    _ops.add_commands(commands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("ecpay-lifecycle")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def _run_demo(args: argparse.Namespace, out: TextIO) -> int:
    return run_demo(json_output=args.json, out=out)


def _aware(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {text!r}") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=TAIPEI)


def _run_plan(args: argparse.Namespace, out: TextIO) -> int:
    now = args.now or _ops.now(args)
    if args.authorized_at is not None and args.authorized_at > now:
        raise InvalidArgument(
            f"--authorized-at {args.authorized_at.isoformat()} is after --now "
            f"{now.isoformat()}: an order is authorized before it is planned"
        )
    state = State(args.state)
    closed = args.closed_amount
    if closed is None:
        closed = args.amount if state in (State.TO_CLOSE, State.CLOSED) else 0
    snapshot = OrderSnapshot(
        merchant_trade_no=args.order,
        trade_no=args.trade_no,
        amount=args.amount,
        state=state,
        closed_amount=closed,
        capture_settled=args.capture_settled or state in (State.CLOSED, State.REFUNDED),
        kind=PaymentKind(args.kind),
        auto_close=args.auto_close,
        authorized_at=args.authorized_at or now - dt.timedelta(days=1),
    )
    if args.capture:
        plan = plan_capture(snapshot, now=now)
    elif args.abandon:
        plan = plan_abandon(snapshot, now=now)
    else:
        wanted = None if args.refund in (None, "all") else _int(args.refund)
        plan = plan_refund(snapshot, wanted, now=now, capture_first=args.capture_first)
    if args.json:
        _ops.emit_json(_ops.plan_body(plan), out)
    else:
        print("\n".join(_ops.plan_lines(plan, snapshot)), file=out)
    return 0


def _int(text: str) -> int:
    if not text.lstrip("-").isdigit():
        raise InvalidArgument(f"--refund takes a whole number of TWD or 'all', not {text!r}")
    return int(text)


def _run_diagram(args: argparse.Namespace, out: TextIO) -> int:
    text = render_mermaid()
    if args.stdout:
        if args.json:
            _ops.emit_json({"mermaid": text}, out)
        else:
            out.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    if args.json:
        _ops.emit_json({"wrote": str(args.output)}, out)
    else:
        print(f"wrote {args.output}", file=out)
    return 0
