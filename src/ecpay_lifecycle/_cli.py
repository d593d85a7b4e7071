"""The ``ecpay-lifecycle`` command (also ``python -m ecpay_lifecycle``).

Subcommands: ``demo`` (the main job: the whole story through the real client against the
embedded emulator), ``plan`` (ask the planner about one order, no network), ``serve`` (the
emulator over HTTP on 127.0.0.1), ``diagram`` (write the lifecycle diagram from the machine),
and the operator commands of ``_ops.py``: ``sweep`` (resolve stuck operations by R22) and
``journal`` (list operations). The command never prints a HashKey or HashIV.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TextIO

from . import _ops
from ._demo import run_demo
from ._diagram import render_mermaid
from ._exceptions import EcpayError, RuleViolation
from ._models import OrderSnapshot, PaymentKind, Plan, State
from ._planner import plan_abandon, plan_capture, plan_refund
from ._rules import TAIPEI
from .emulator import _serve

__all__ = ["main"]

DIAGRAM_PATH = pathlib.Path("diagrams") / "lifecycle.mmd"


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command; return the process exit code (0 ok, 1 refused, 2 bad input)."""
    stdout = out if out is not None else sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args, stdout)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaced for the interpreter's exit flush
        return 0
    except RuleViolation as refusal:
        _emit_refusal(refusal, args, stdout)
        return 1
    except EcpayError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecpay-lifecycle",
        description="Capture and refund ECPay credit-card orders safely.",
    )
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
    intent = plan.add_mutually_exclusive_group()
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
    diagram.set_defaults(run=_run_diagram)
    _ops.add_commands(commands)
    return parser


def _run_demo(args: argparse.Namespace, out: TextIO) -> int:
    return run_demo(json_output=args.json, out=out)


def _aware(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {text!r}") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=TAIPEI)


def _run_plan(args: argparse.Namespace, out: TextIO) -> int:
    now = args.now or dt.datetime.now(TAIPEI)
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
    _emit_plan(plan, snapshot, args, out)
    return 0


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise SystemExit(
            f"error: --refund takes a whole number of TWD or 'all', not {text!r}"
        ) from exc


def _emit_plan(plan: Plan, snapshot: OrderSnapshot, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        steps = [
            {
                "action": s.action.value,
                "amount": s.amount,
                "state_after": s.state_after.value,
                "closed_amount_after": s.closed_amount_after,
                "rule": s.rule,
            }
            for s in plan.steps
        ]
        body = {
            "order": plan.merchant_trade_no,
            "intent": plan.intent.value,
            "steps": steps,
            "refund_total": plan.refund_total,
            "reason": plan.reason,
        }
        print(json.dumps(body, ensure_ascii=False), file=out)
        return
    print(
        f"order {snapshot.merchant_trade_no}: {snapshot.state} {snapshot.amount} TWD, "
        f"closed {snapshot.closed_amount}, {snapshot.kind}",
        file=out,
    )
    print(f"plan ({plan.intent}): {plan.describe()}", file=out)
    for number, step in enumerate(plan.steps, 1):
        print(
            f"  {number}. send {step.action.value} TotalAmount={step.amount}: expect "
            f"{step.state_after}, closed {step.closed_amount_after}  [{step.rule}]",
            file=out,
        )
    print(f"returns {plan.refund_total} TWD to the card holder. {plan.reason}", file=out)


def _emit_refusal(refusal: RuleViolation, args: argparse.Namespace, out: TextIO) -> None:
    if getattr(args, "json", False):
        body = {
            "refused": refusal.rule,
            "message": refusal.message,
            "retry_at": refusal.retry_at.isoformat() if refusal.retry_at else None,
        }
        print(json.dumps(body, ensure_ascii=False), file=out)
    else:
        print(f"refused: {refusal}", file=out)


def _run_diagram(args: argparse.Namespace, out: TextIO) -> int:
    text = render_mermaid()
    if args.stdout:
        out.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=out)
    return 0
