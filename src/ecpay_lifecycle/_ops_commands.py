"""The order commands of ``ecpay-lifecycle``: what an operator does to one order on real ECPay.

``query`` reads an order; ``capture``, ``refund`` and ``abandon`` move money through
:class:`~._client.Client` with the journal's keys and locks (``--dry-run`` queries and plans,
and sends no DoAction); ``reconcile`` settles an order's unknown attempts by R22, or by the
verdict a person declares; ``deadlines`` lists the orders of the journal that near the day-21
capture limit (R6), the day-80 notice or the day-90 forced abandon (R7) of a merchant whose
auto-close is off. Settings, the journal, exit codes and error reports are ``_ops.py``'s.

``deadlines`` reads the journal through the :class:`~._journal.Journal` protocol only, which
lists no orders but those with an open operation (``open_operations``); other orders are read
when named (``for_order``), on the command line or one per line from ``--orders-from``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TextIO

import attrs

from ._client import Client
from ._exceptions import ConfigurationError, EcpayError, InvalidArgument
from ._journal import Journal, OperationRecord, OperationStatus
from ._models import Intent, OrderSnapshot, PaymentKind, State, check_order_number
from ._ops import (
    EXIT_OK,
    EXIT_UNKNOWN,
    common_arguments,
    credentials_from_environment,
    default_journal_path,
    emit_json,
    iso,
    journal_for,
    merchant_id,
    now,
    operator_settings,
    plan_body,
    plan_lines,
    render_table,
    report_error,
    resolvable,
    snapshot_body,
    styled,
    when,
)
from ._outcome import Outcome, Reconciliation
from ._planner import plan_abandon, plan_capture, plan_refund
from ._rules import capture_deadline, forced_abandon_at, unclosed_notice_at

__all__ = ["add_commands"]

#: ``deadlines`` lists what falls due within this many days unless told otherwise.
DEFAULT_WITHIN_DAYS: Final = 7


def add_commands(commands: Any) -> None:
    """Register ``query``, ``capture``, ``refund``, ``abandon``, ``reconcile``, ``deadlines``."""
    query = commands.add_parser(
        "query",
        help="show one order as ECPay sees it now, with its deadlines and open operations",
        description="Query ECPay (Cashier/QueryTrade, CreditDetail/QueryTrade); moves nothing.",
    )
    query.add_argument("order", metavar="ORDER", help="MerchantTradeNo")
    _order_facts(query)
    common_arguments(query)
    query.set_defaults(run=_run_query)

    capture = commands.add_parser(
        "capture",
        help="capture (close) an authorized order: C",
        description="Query, plan and send C (R6, R8, R9); journaled, one operation per order.",
    )
    capture.add_argument("order", metavar="ORDER", help="MerchantTradeNo")
    _money_arguments(capture)
    capture.set_defaults(run=_run_money, intent=Intent.CAPTURE)

    refund = commands.add_parser(
        "refund",
        help="refund AMOUNT TWD of an order (default: all that is left)",
        description="Query, plan (R9-R13, R18) and send the refund's DoActions; journaled.",
    )
    refund.add_argument("order", metavar="ORDER", help="MerchantTradeNo")
    refund.add_argument(
        "amount",
        metavar="AMOUNT",
        nargs="?",
        type=_amount,
        help="whole TWD, or 'all' (the default): everything still refundable",
    )
    refund.add_argument(
        "--capture-first", action="store_true", help="on an authorized order, C then R (R18)"
    )
    _money_arguments(refund)
    refund.set_defaults(run=_run_money, intent=Intent.REFUND)

    abandon = commands.add_parser(
        "abandon",
        help="release the card hold without capture: N, or E then N on a pending capture",
        description="Query, plan (R14, R15) and send; journaled.",
    )
    abandon.add_argument("order", metavar="ORDER", help="MerchantTradeNo")
    _money_arguments(abandon)
    abandon.set_defaults(run=_run_money, intent=Intent.ABANDON)

    reconcile = commands.add_parser(
        "reconcile",
        help="settle an order's unknown attempts by a query (R22), or by a declared verdict",
        description="Resolve each open attempt of the order: done, not done, or still unknown "
        "(docs/ecpay-api.md section 9). Sends no DoAction.",
    )
    reconcile.add_argument("order", metavar="ORDER", help="MerchantTradeNo")
    reconcile.add_argument(
        "--declare",
        action="append",
        default=[],
        metavar="KEY=VERDICT",
        type=_declaration,
        help="the verdict a person established for an operation's key from ECPay's back "
        "office: done or not_done ('not_done' only after the fence); repeatable",
    )
    common_arguments(reconcile)
    reconcile.set_defaults(run=_run_reconcile)

    deadlines = commands.add_parser(
        "deadlines",
        help="orders nearing the day-21 capture limit, the day-80 notice or the day-90 abandon",
        description="For merchants with auto-close off (R6, R7): the journal's open orders, or "
        "the orders named. Reads the journal; --query asks ECPay too.",
    )
    deadlines.add_argument("orders", metavar="ORDER", nargs="*", help="MerchantTradeNo")
    deadlines.add_argument(
        "--orders-from",
        metavar="FILE",
        help="read more orders from FILE, one per line ('-': standard input)",
    )
    deadlines.add_argument(
        "--within",
        type=float,
        default=DEFAULT_WITHIN_DAYS,
        metavar="DAYS",
        help=f"list what falls due within DAYS (default {DEFAULT_WITHIN_DAYS}), and what passed",
    )
    deadlines.add_argument("--all", action="store_true", help="list every order read")
    deadlines.add_argument(
        "--query", action="store_true", help="ask ECPay for each order's state (credentials)"
    )
    deadlines.add_argument(
        "--now", type=_aware, help="ISO time with offset to count from (default: the clock)"
    )
    deadlines.add_argument(
        "--limit", type=int, default=1000, help="open operations to read (default 1000)"
    )
    common_arguments(deadlines)
    deadlines.set_defaults(run=_run_deadlines)


def _order_facts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trade-no", help="ECPay's TradeNo, if the shop stored it")
    parser.add_argument(
        "--kind",
        choices=[k.value for k in PaymentKind],
        help="the payment kind from ECPay's own record (skips Cashier/QueryTrade with --trade-no)",
    )


def _money_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        help="idempotency key: the same key replays a success and resumes what stopped "
        "(default: a new cli-... key, printed)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="query and plan, print the plan, send nothing"
    )
    _order_facts(parser)
    common_arguments(parser)


def _amount(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"AMOUNT is a positive whole number of TWD or 'all', not {text!r}"
        )
    return int(text)


def _declaration(text: str) -> tuple[str, str]:
    key, equals, verdict = text.rpartition("=")
    if not equals or not key or verdict not in ("done", "not_done"):
        raise argparse.ArgumentTypeError(f"--declare takes KEY=done or KEY=not_done, not {text!r}")
    return key, verdict


def _aware(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the offset too, e.g. {text}+08:00")
    return value


def _client(
    args: argparse.Namespace, journal: Journal | None, settings: Mapping[str, str]
) -> Client:
    credentials, base_url = credentials_from_environment(settings)
    return Client(
        credentials, base_url=base_url, journal=journal, clock=getattr(args, "clock", None)
    )


def _kind(args: argparse.Namespace) -> PaymentKind | None:
    return None if args.kind is None else PaymentKind(args.kind)


# -- query ------------------------------------------------------------------------------------


def _run_query(args: argparse.Namespace, out: TextIO) -> int:
    order = check_order_number(args.order)
    settings = operator_settings(args.credentials_file)
    journal = _existing_journal(args, settings)
    with _client(args, journal, settings) as client:
        snapshot = client.query(order, trade_no=args.trade_no, kind=_kind(args))
    moment = now(args)
    records = None
    if journal is not None:
        records = list(journal.for_order(settings["ECPAY_MERCHANT_ID"], order))
    deadlines = _deadlines(snapshot)
    if args.json:
        body = snapshot_body(snapshot)
        body["deadlines"] = [_deadline_body(d, moment) for d in deadlines]
        body["journal"] = None if records is None else _journal_body(records)
        emit_json(body, out)
        return EXIT_OK
    age = _span(moment - snapshot.authorized_at)
    rows = [
        ("order", snapshot.merchant_trade_no),
        ("trade no", snapshot.trade_no),
        ("state", snapshot.state.value),
        ("amount", f"{snapshot.amount} TWD"),
        ("closed", f"{snapshot.closed_amount} TWD"),
        ("refundable", f"{snapshot.refundable} TWD"),
        ("kind", snapshot.kind.value),
        ("auto-close", "on" if snapshot.auto_close else "off"),
        ("authorized", f"{when(snapshot.authorized_at)} ({age} ago)"),
    ]
    rows.extend(
        (f"{d.name} ({d.rule})", f"{when(d.at)} ({_relative(d.at, moment)})") for d in deadlines
    )
    if records is not None:
        rows.append(("journal", _journal_text(records)))
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label:<{width}}{value}", file=out)
    return EXIT_OK


def _existing_journal(args: argparse.Namespace, settings: Mapping[str, str]) -> Journal | None:
    """``query`` shows the order's operations from the journal named, or from the default one
    if it exists; it never creates one (a query records nothing)."""
    named = args.journal or settings.get("ECPAY_JOURNAL")
    if not named and not default_journal_path().exists():
        return None
    return journal_for(args, settings, create_default=False)


def _journal_body(records: Sequence[OperationRecord]) -> dict[str, Any]:
    return {
        "operations": len(records),
        "open": [
            {
                "key": r.key,
                "step": f"{attempt.action.value}({attempt.amount})",
                "status": attempt.status.value,
                "resolvable_at": iso(attempt.resolvable_at),
            }
            for r in records
            if (attempt := r.open_attempt) is not None
        ],
    }


def _locks(records: Iterable[OperationRecord]) -> list[str]:
    """Each open attempt, for people: ``refund-7 R(300) unknown until 2026-...``."""
    return [
        f"{r.key} {attempt.action.value}({attempt.amount}) {attempt.status.value}"
        + (f" until {when(attempt.resolvable_at)}" if attempt.resolvable_at else "")
        for r in records
        if (attempt := r.open_attempt) is not None
    ]


def _journal_text(records: Sequence[OperationRecord]) -> str:
    locks = _locks(records)
    count = f"{len(records)} operation{'' if len(records) == 1 else 's'}"
    if not locks:
        return f"{count}, none open"
    return f"{count}; locked by {'; '.join(locks)}"


# -- capture, refund, abandon -------------------------------------------------------------------


def _run_money(args: argparse.Namespace, out: TextIO) -> int:
    intent: Intent = args.intent
    order = check_order_number(args.order)
    settings = operator_settings(args.credentials_file)
    key = args.key or f"cli-{intent.value}-{order}-{uuid.uuid4().hex[:8]}"
    # A dry run's key is only a suggestion; a refusal names the key a real run used.
    context = {"order": order} if args.dry_run else {"order": order, "key": key}
    journal = journal_for(args, settings, create_default=True)
    with _client(args, journal, settings) as client:
        try:
            if args.dry_run:
                return _dry_run(
                    args, client, out, order=order, key=key, merchant=settings["ECPAY_MERCHANT_ID"]
                )
            outcome = _move(args, client, intent, order, key)
        except EcpayError as error:
            return report_error(error, as_json=args.json, out=out, context=context)
    _emit_outcome(outcome, args, key, out)
    return EXIT_OK


def _move(
    args: argparse.Namespace, client: Client, intent: Intent, order: str, key: str
) -> Outcome:
    facts: dict[str, Any] = {"idempotency_key": key, "kind": args.kind, "trade_no": args.trade_no}
    if intent is Intent.REFUND:
        return client.refund(order, args.amount, capture_first=args.capture_first, **facts)
    if intent is Intent.CAPTURE:
        return client.capture(order, **facts)
    return client.abandon(order, **facts)


def _dry_run(
    args: argparse.Namespace, client: Client, out: TextIO, *, order: str, key: str, merchant: str
) -> int:
    """Query and plan as the real run would, and say what it would do; send no DoAction.

    The exit code is the one the real run would have: 3 when the journal holds the order
    locked, 1 when the planner refuses (raised to ``main``), 0 otherwise.
    """
    records = list(client.journal.for_order(merchant, order))
    mine = next((r for r in records if r.key == key), None)
    if mine is not None and mine.status is OperationStatus.SUCCEEDED:
        note = f"key {key} already succeeded: a run replays its recorded outcome and sends nothing"
        return _dry_answer(args, out, key=key, order=order, code=EXIT_OK, note=note)
    if mine is not None and mine.open_attempt is not None:
        note = (
            f"this key's own attempt is open ({'; '.join(_locks([mine]))}): a run first "
            "settles it by a query (R22)"
        )
        return _dry_answer(args, out, key=key, order=order, code=EXIT_UNKNOWN, note=note)
    locked = _locks(r for r in records if r.key != key)
    if locked:
        note = (
            f"order {order} is locked by {'; '.join(locked)}: a run would be refused "
            "(OrderLocked) until that attempt is reconciled"
        )
        return _dry_answer(args, out, key=key, order=order, code=EXIT_UNKNOWN, note=note)
    snapshot = client.query(order, trade_no=args.trade_no, kind=_kind(args))
    moment = now(args)
    if args.intent is Intent.REFUND:
        plan = plan_refund(snapshot, args.amount, now=moment, capture_first=args.capture_first)
    elif args.intent is Intent.CAPTURE:
        plan = plan_capture(snapshot, now=moment)
    else:
        plan = plan_abandon(snapshot, now=moment)
    if args.json:
        body = {"dry_run": True, "order": order, "key": key, "snapshot": snapshot_body(snapshot)}
        emit_json({**body, "plan": plan_body(plan), "note": None}, out)
        return EXIT_OK
    print("dry run: nothing sent", file=out)
    print("\n".join(plan_lines(plan, snapshot)), file=out)
    print(f"to send it: the same command without --dry-run (add --key {key})", file=out)
    return EXIT_OK


def _dry_answer(
    args: argparse.Namespace, out: TextIO, *, key: str, order: str, code: int, note: str
) -> int:
    """A dry run that ends before planning, because the journal decides what a run does."""
    if args.json:
        body = {"dry_run": True, "order": order, "key": key, "snapshot": None, "plan": None}
        emit_json({**body, "note": note}, out)
    else:
        print(f"dry run: nothing sent. {note}", file=out)
    return code


def _emit_outcome(outcome: Outcome, args: argparse.Namespace, key: str, out: TextIO) -> None:
    final = outcome.final
    if args.json:
        emit_json(
            {
                "order": outcome.merchant_trade_no,
                "intent": outcome.intent.value,
                "key": key,
                "replayed": outcome.replayed,
                "plan": outcome.plan.describe(),
                "steps": [
                    {
                        "action": s.action.value,
                        "amount": s.amount,
                        "rtn_code": s.rtn_code,
                        "rtn_msg": s.rtn_msg,
                        "attempts": s.attempts,
                        "recovered": s.recovered,
                    }
                    for s in outcome.steps_done
                ],
                "state": final.state.value,
                "closed_amount": final.closed_amount,
                "refunded": outcome.refunded,
                "disagreements": list(outcome.disagreements),
            },
            out,
        )
        return
    done = "done before; replayed, nothing sent" if outcome.replayed else "done"
    print(
        f"{outcome.intent} {outcome.merchant_trade_no}: {outcome.plan.describe()} {done}", file=out
    )
    for step in outcome.steps_done:
        if step.recovered:
            how = "reply lost; a query proved it done (R22)"
        else:
            how = f"RtnCode {step.rtn_code} {step.rtn_msg}".rstrip()
        tries = f", attempt {step.attempts}" if step.attempts > 1 else ""
        print(f"  {step.describe()}  {how}{tries}", file=out)
    money = ""
    if outcome.intent is Intent.REFUND:
        money = f"; {outcome.refunded} TWD back to the card holder"
    elif outcome.intent is Intent.ABANDON:
        money = f"; {outcome.refunded} TWD hold released"
    print(
        f"order {final.merchant_trade_no}: {final.state}, closed {final.closed_amount} TWD{money}",
        file=out,
    )
    for note in outcome.disagreements:
        print(f"  note: {note}", file=out)
    print(f"key {key} (the same --key replays this; nothing is sent twice)", file=out)


# -- reconcile --------------------------------------------------------------------------------


def _run_reconcile(args: argparse.Namespace, out: TextIO) -> int:
    order = check_order_number(args.order)
    declared = dict(args.declare)
    if len(declared) != len(args.declare):
        raise InvalidArgument("--declare names the same key twice")
    settings = operator_settings(args.credentials_file)
    journal = journal_for(args, settings, create_default=False)
    with _client(args, journal, settings) as client:
        reconciliation = client.reconcile(order, declare=declared)
    _emit_reconciliation(reconciliation, args, out)
    return EXIT_UNKNOWN if reconciliation.locked else EXIT_OK


def _emit_reconciliation(result: Reconciliation, args: argparse.Namespace, out: TextIO) -> None:
    snapshot = result.snapshot
    if args.json:
        emit_json(
            {
                "order": result.merchant_trade_no,
                "snapshot": snapshot_body(snapshot),
                "locked": result.locked,
                "resolutions": [
                    {
                        "key": r.key,
                        "idempotency_key": r.idempotency_key,
                        "action": r.action.value,
                        "amount": r.amount,
                        "verdict": r.verdict.value,
                        "declared": r.declared,
                        "retry_at": iso(r.retry_at),
                        "operation_complete": r.outcome is not None,
                    }
                    for r in result.resolutions
                ],
            },
            out,
        )
        return
    print(
        f"order {result.merchant_trade_no} at ECPay now: {snapshot.state}, {snapshot.amount} TWD, "
        f"closed {snapshot.closed_amount}",
        file=out,
    )
    if not result.resolutions:
        print("nothing to reconcile: no open attempt on this order", file=out)
        return
    rows = [
        [
            f"{r.action.value}({r.amount})",
            r.verdict.value + (" (declared)" if r.declared else ""),
            resolvable(r.verdict, r.retry_at),
            r.key,
        ]
        for r in result.resolutions
    ]
    headers = ["STEP", "VERDICT", "RESOLVABLE FROM", "KEY"]
    print("\n".join(render_table(headers, rows, style=styled(out))), file=out)
    if not result.locked:
        print("resolved: the order takes money movements again", file=out)
        return
    waiting = [r for r in result.resolutions if r.verdict.value == "unknown"]
    if any(r.retry_at is None for r in waiting):
        print(
            "still unknown, and a query cannot tell: check the order in ECPay's back office, "
            "then --declare KEY=done or KEY=not_done",
            file=out,
        )
    else:
        print("still unknown: run reconcile again from the time shown", file=out)


# -- deadlines --------------------------------------------------------------------------------


@attrs.frozen
class _Deadline:
    """One of the day rules of an order that is only authorized, with auto-close off."""

    name: str
    rule: str
    at: dt.datetime

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "rule": self.rule, "at": self.at.isoformat()}


def _deadlines(snapshot: OrderSnapshot) -> tuple[_Deadline, ...]:
    """R6 and R7 for an authorized order of a merchant with auto-close off; else none."""
    if snapshot.auto_close or snapshot.state is not State.AUTHORIZED:
        return ()
    authorized = snapshot.authorized_at
    return (
        _Deadline("capture limit", "R6", capture_deadline(authorized)),
        _Deadline("unclosed notice", "R7", unclosed_notice_at(authorized)),
        _Deadline("forced abandon", "R7", forced_abandon_at(authorized)),
    )


def _deadline_body(deadline: _Deadline, moment: dt.datetime) -> dict[str, Any]:
    return {**deadline.body(), "passed": deadline.at <= moment}


@attrs.frozen
class _Due:
    """One order read by ``deadlines``: what is known of it, from where, and what comes next."""

    snapshot: OrderSnapshot
    source: str
    moment: dt.datetime

    @property
    def deadlines(self) -> tuple[_Deadline, ...]:
        return _deadlines(self.snapshot)

    @property
    def following(self) -> _Deadline | None:
        """The next deadline after ``moment``, if one is left."""
        return next((d for d in self.deadlines if d.at > self.moment), None)

    def nearing(self, window: dt.timedelta) -> bool:
        """Due within ``window``, or past the capture limit (only N releases the hold now)."""
        deadlines, following = self.deadlines, self.following
        if not deadlines:
            return False
        return (
            following is None
            or deadlines[0].at <= self.moment
            or (following.at - self.moment <= window)
        )

    def sort_key(self) -> dt.datetime:
        following = self.following
        return following.at if following is not None else self.snapshot.authorized_at

    def note(self) -> str:
        """What the NEXT column says when no deadline is left."""
        if self.snapshot.auto_close:
            return "auto-close on: no deadline"
        if self.snapshot.state is not State.AUTHORIZED:
            return f"{self.snapshot.state}: no deadline"
        return "past day 90: ECPay abandoned it"

    def advice(self) -> str:
        """What to do about it, given where ``moment`` falls among its deadlines."""
        capture, _notice, forced = self.deadlines
        if self.moment < capture.at:
            return (
                f"capture (C) or abandon (N) by {when(capture.at)}; C is refused from then on (R6)"
            )
        if self.moment <= forced.at:
            return (
                f"the capture limit passed on {when(capture.at)}: only abandon (N) releases the "
                f"hold now; ECPay abandons it after {when(forced.at)} (R7)"
            )
        return "past day 90: ECPay has abandoned it (R7); query it to confirm"

    def body(self) -> dict[str, Any]:
        following = self.following
        return {
            "order": self.snapshot.merchant_trade_no,
            "state": self.snapshot.state.value,
            "auto_close": self.snapshot.auto_close,
            "authorized_at": self.snapshot.authorized_at.isoformat(),
            "source": self.source,
            "deadlines": [d.body() for d in self.deadlines],
            "next": None if following is None else following.body(),
            "advice": self.advice() if self.deadlines else self.note(),
        }

    def cells(self) -> list[str]:
        following, moment = self.following, self.moment
        return [
            self.snapshot.merchant_trade_no,
            when(self.snapshot.authorized_at),
            _span(moment - self.snapshot.authorized_at),
            self.note() if following is None else f"{following.name} ({following.rule})",
            "-" if following is None else when(following.at),
            "-" if following is None else _relative(following.at, moment),
            self.source,
        ]


def _span(delta: dt.timedelta) -> str:
    """A duration for people: ``3 d 4 h``, ``5 h 10 min``, ``12 min``."""
    minutes = int(abs(delta).total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def _relative(at: dt.datetime, moment: dt.datetime) -> str:
    return f"in {_span(at - moment)}" if at > moment else f"passed {_span(moment - at)} ago"


def _run_deadlines(args: argparse.Namespace, out: TextIO) -> int:
    if args.within < 0:
        raise InvalidArgument(f"--within takes days, not {args.within}")
    if args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {args.limit}")
    moment = args.now or now(args)
    settings = operator_settings(args.credentials_file)
    merchant = merchant_id(settings, "read the merchant's orders in the journal")
    journal = journal_for(args, settings, create_default=False)
    named = [check_order_number(o) for o in [*args.orders, *_orders_from(args.orders_from)]]
    if named:
        orders = list(dict.fromkeys(named))
    else:
        opened = journal.open_operations(merchant, limit=args.limit)
        orders = list(dict.fromkeys(r.merchant_trade_no for r in opened))
    read: list[_Due] = []
    missing: list[str] = []
    if args.query:
        with _client(args, journal, settings) as client:
            read = [
                _Due(client.query(order), f"ECPay {when(now(args))}", moment) for order in orders
            ]
    else:
        for order in orders:
            found = _last_known(journal.for_order(merchant, order))
            if found is None:
                missing.append(order)
            else:
                read.append(_Due(*found, moment))
    window = dt.timedelta(days=args.within)
    listed = sorted((d for d in read if args.all or d.nearing(window)), key=_Due.sort_key)
    if args.json:
        emit_json(
            {
                "now": moment.isoformat(),
                "within_days": args.within,
                "orders": [due.body() for due in listed],
                "read": len(orders),
                "not_in_journal": missing,
            },
            out,
        )
        return EXIT_OK
    if listed:
        headers = ["ORDER", "AUTHORIZED", "AGE", "NEXT", "AT", "IN", "AS OF"]
        table = [due.cells() for due in listed]
        print("\n".join(render_table(headers, table, style=styled(out))), file=out)
        for due in listed:
            if due.deadlines:
                print(f"  {due.snapshot.merchant_trade_no}: {due.advice()}", file=out)
    else:
        print(f"nothing due within {args.within:g} days", file=out)
    if missing:
        print(
            f"not in the journal (name them with --query to ask ECPay): {', '.join(missing)}",
            file=out,
        )
    print(
        f"read {len(orders)} order{'' if len(orders) == 1 else 's'}"
        + ("" if named else " with open operations (name others, or --orders-from FILE)"),
        file=out,
    )
    return EXIT_OK


def _orders_from(source: str | None) -> list[str]:
    if source is None:
        return []
    if source == "-":
        lines: Iterable[str] = sys.stdin.read().splitlines()
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read --orders-from {source}: {exc.strerror}"
            ) from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _last_known(records: Sequence[OperationRecord]) -> tuple[OrderSnapshot, str] | None:
    """The latest snapshot of the order the journal holds, and when it was recorded."""
    for record in sorted(records, key=lambda r: r.updated_at, reverse=True):
        snapshot = record.final
        if snapshot is None and record.attempts:
            snapshot = record.attempts[-1].before
        if snapshot is None:
            snapshot = record.before
        if snapshot is not None:
            attempt = record.open_attempt
            unknown = "" if attempt is None else f", {attempt.action.value}({attempt.amount}) open"
            return snapshot, f"journal {when(record.updated_at)}{unknown}"
    return None
