"""``ecpay-lifecycle demo``: the whole story, end to end, through the real Client and the emulator.

Nothing here is simulated beyond ECPay itself: every step goes through :class:`Client`, the
planner, the codec and HTTP (``httpx.MockTransport``) to the embedded :class:`Emulator`, which
enforces the rules with its own code. No credentials are needed: the demo merchant's keys are
made up at random for each run and never printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
import secrets
import string
import tempfile
from collections.abc import Callable
from typing import Any, TextIO

import attrs
import httpx

from ._client import Client
from ._exceptions import EcpayError, OperationInProgress, RuleViolation
from ._journal import AttemptStatus, JournalWrapper, OperationRecord
from ._models import Action, PaymentKind
from ._outcome import Outcome
from ._protocol import Credentials
from ._rules import TAIPEI
from ._sqlite import SQLiteJournal
from .emulator._emulator import Emulator
from .emulator._faults import Endpoint, Fault

__all__ = ["run_demo"]

MERCHANT = "3002607"
START = dt.datetime(2026, 11, 25, 10, 0, tzinfo=TAIPEI)


@attrs.frozen
class Row:
    """One line of the demo's table: what was asked, the plan, what was sent, the state after."""

    time: str
    order: str
    kind: str
    asked: str
    plan: str
    sent: str
    result: str
    note: str = ""


def _random_key() -> str:
    # 16 ASCII letters and digits: the shape of a HashKey/HashIV, made up for this run only.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


class _WorkerDied(BaseException):
    """The demo's first worker stops dead, as a process killed mid-refund would."""


class _DiesAfterSending(JournalWrapper):
    """A worker's view of the journal that dies once a sent DoAction's result is to be written:
    ECPay applied the refund; the journal holds the attempt, open."""

    def __init__(self, journal: SQLiteJournal) -> None:
        super().__init__(journal)
        self._dead = False

    def save(self, record: OperationRecord) -> OperationRecord:
        last = record.attempts[-1] if record.attempts else None
        if self._dead or (last is not None and last.status is AttemptStatus.DONE):
            self._dead = True  # nothing a dead process would write reaches the journal
            raise _WorkerDied
        return super().save(record)


class _Story:
    def __init__(self, keys: tuple[str, str] | None, folder: pathlib.Path) -> None:
        self.emulator = Emulator(now=START)
        key, iv = keys if keys is not None else (_random_key(), _random_key())
        self.emulator.add_merchant(MERCHANT, key, iv, auto_close=True, balance=0)
        self.credentials = Credentials(MERCHANT, key, iv, auto_close=True)
        # A durable journal, as several workers of a shop on one host would share it.
        self.journal_path = folder / "ecpay.db"
        self.client = self.worker(SQLiteJournal(self.journal_path))
        self.rows: list[Row] = []
        self.kinds: dict[str, PaymentKind] = {}

    def worker(self, journal: Any) -> Client:
        """A shop worker: its own Client, on the shared journal file."""
        return Client(
            self.credentials,
            transport=httpx.MockTransport(self.emulator.handler),
            clock=self.emulator.clock,
            journal=journal,
        )

    def worker_dies(self, order: str, amount: int, key: str) -> None:
        """A worker refunds; ECPay applies it; the worker dies before recording the result."""
        doomed = self.worker(_DiesAfterSending(SQLiteJournal(self.journal_path)))
        with doomed, contextlib.suppress(_WorkerDied):
            doomed.refund(order, amount, idempotency_key=key)
        self._row(
            order,
            f"worker A: refund {amount}; dies",
            f"R({amount})",
            f"R({amount}), then the worker died",
            "?",
            "ECPay applied it; the journal holds the attempt, open: the order is locked",
        )

    def sweep(self, note: str) -> None:
        """Another worker's sweeper: resolves every stuck operation by R22."""
        report = self.client.sweep()
        for reconciliation in report.reconciled:
            verdicts = ", ".join(
                f"{r.action.value}({r.amount}) {r.verdict}" for r in reconciliation.resolutions
            )
            order = reconciliation.merchant_trade_no
            self._row(order, "worker B: sweep", "-", "nothing", verdicts, note)

    def authorize(self, order: str, amount: int, kind: PaymentKind) -> None:
        self.emulator.authorize(MERCHANT, order, amount, kind=kind)
        self.kinds[order] = kind
        state = self.client.query(order)
        self._row(order, f"authorize {amount}", "-", "-", _state(state), "")

    def act(
        self, order: str, asked: str, call: Callable[[Client], Outcome], note: str = ""
    ) -> None:
        try:
            outcome = call(self.client)
        except RuleViolation as refusal:
            when = f"; possible from {refusal.retry_at:%H:%M}" if refusal.retry_at else ""
            self._row(
                order, asked, "-", "nothing", f"refused {refusal.rule}", refusal.message + when
            )
            return
        except OperationInProgress as busy:
            self._row(order, asked, "-", "nothing", "in progress (R23)", note or busy.message)
            return
        except EcpayError as error:
            self._row(order, asked, "-", "?", f"error {type(error).__name__}", str(error))
            return
        if outcome.replayed:
            sent = "nothing (replayed)"
        else:
            sent = ", ".join(
                step.describe() + (" reply lost, found done" if step.recovered else "")
                for step in outcome.steps_done
            )
        self._row(order, asked, outcome.plan.describe(), sent, _state(outcome.final), note)

    def clock_to(self, when: dt.datetime, note: str) -> None:
        self.emulator.set_time(when)
        self.rows.append(Row(_hhmm(when), "-", "-", f"clock to {_hhmm(when)}", "-", "-", "-", note))

    def _row(self, order: str, asked: str, *cells: str) -> None:
        """Append a row for ``order``: ``cells`` are plan, sent, result and note."""
        plan, sent, result, note = cells
        self.rows.append(
            Row(
                _hhmm(self.emulator.now),
                order,
                str(self.kinds[order]),
                asked,
                plan,
                sent,
                result,
                note,
            )
        )


def _hhmm(when: dt.datetime) -> str:
    return when.astimezone(TAIPEI).strftime("%H:%M")


def _state(snapshot: Any) -> str:
    flavour = ""
    if snapshot.pending_capture:
        flavour = "/capture"
    elif snapshot.pending_refund:
        flavour = "/refund"
    return f"{snapshot.state}{flavour} {snapshot.closed_amount}"


def tell_story(keys: tuple[str, str] | None = None) -> tuple[list[Row], dict[str, Any]]:
    """Run the demo's story and return its rows and the final facts (for tests and --json).

    ``keys`` are the demo merchant's HashKey and HashIV; random for each run by default. The
    journal is an :class:`SQLiteJournal` in a temporary directory, removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="ecpay-demo-") as folder:
        return _tell(_Story(keys, pathlib.Path(folder)))


def _tell(story: _Story) -> tuple[list[Row], dict[str, Any]]:
    one, inst, union, bonus, full = "DEMO1", "DEMO2", "DEMO3", "DEMO4", "DEMO5"
    story.authorize(one, 1000, PaymentKind.ONE_TIME)
    story.authorize(inst, 12000, PaymentKind.INSTALLMENT)
    story.authorize(union, 800, PaymentKind.UNIONPAY)
    story.authorize(bonus, 1500, PaymentKind.BONUS)
    story.authorize(full, 600, PaymentKind.ONE_TIME)
    crash = "DEMO6"
    story.authorize(crash, 900, PaymentKind.ONE_TIME)

    for order in (one, inst, bonus, full):
        story.act(order, "capture", lambda c, o=order: c.capture(o))  # type: ignore[misc]
    story.act(one, "refund 300", lambda c: c.refund(one, 300))
    story.act(
        full,
        "refund all",
        lambda c: c.refund(full),
        "before the batch a full refund is E then N (R13)",
    )
    story.act(inst, "refund 3000", lambda c: c.refund(inst, 3000))

    story.clock_to(START.replace(hour=20, minute=20), "inside ECPay's daily close (R5)")
    story.act(one, "refund 100", lambda c: c.refund(one, 100))

    story.clock_to(START.replace(hour=20, minute=31), "the 20:15 batch has settled every close")
    story.act(one, "refund 200", lambda c: c.refund(one, 200))
    story.act(union, "refund 250", lambda c: c.refund(union, 250))

    story.emulator.faults.inject(
        Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION, action=Action.REFUND, times=1
    )
    story.act(
        bonus,
        "refund all; the reply is lost",
        lambda c: c.refund(bonus, idempotency_key="shop-refund-4711"),
        "ECPay applied it; a query proved it, so it was not re-sent",
    )
    story.act(
        bonus,
        "the shop retries that request",
        lambda c: c.refund(bonus, idempotency_key="shop-refund-4711"),
        "same idempotency key: the recorded outcome comes back, nothing is sent",
    )

    story.worker_dies(crash, 400, "shop-refund-4712")
    story.act(
        crash,
        "worker B: the shop retries",
        lambda c: c.refund(crash, 400, idempotency_key="shop-refund-4712"),
        "worker A still owns it until its lease lapses (R23): nothing is sent",
    )
    story.clock_to(START.replace(hour=20, minute=47), "16 minutes later: past the fence")
    story.sweep("a query shows the refund: done, recorded, the order is unlocked")
    story.act(
        crash,
        "worker B: the shop retries",
        lambda c: c.refund(crash, 400, idempotency_key="shop-refund-4712"),
        "same idempotency key: the recorded outcome comes back, nothing is sent",
    )

    refunds_applied = sum(
        1
        for event in story.emulator.events
        if event.merchant_trade_no == bonus and event.action is Action.REFUND and event.applied
    )
    crash_refunds = sum(
        1 for e in story.emulator.applied_do_actions(MERCHANT, crash) if e.action is Action.REFUND
    )
    facts = {
        "orders": {
            order: _state(story.emulator.snapshot(MERCHANT, order))
            for order in (one, inst, union, bonus, full, crash)
        },
        "bonus_order_refunds_applied_by_ecpay": refunds_applied,
        "dead_worker_refunds_applied_by_ecpay": crash_refunds,
        "merchant_balance": story.emulator.balance(MERCHANT),
    }
    story.client.close()
    return story.rows, facts


_COLUMNS = ("time", "order", "kind", "asked", "plan", "sent", "result")


def run_demo(*, json_output: bool, out: TextIO, keys: tuple[str, str] | None = None) -> int:
    """Tell the story; print a table for people or JSON for machines. Returns the exit code."""
    rows, facts = tell_story(keys)
    if json_output:
        print(
            json.dumps({"rows": [attrs.asdict(r) for r in rows], **facts}, ensure_ascii=False),
            file=out,
        )
        return 0
    print("ecpay-lifecycle demo: the real Client against the embedded ECPay emulator", file=out)
    print(f"merchant {MERCHANT}, daily auto-close on, {START:%Y-%m-%d} Asia/Taipei", file=out)
    print("result: state after (to_close/capture: a pending capture, /refund: a pending", file=out)
    print("refund) and the net closed amount (ClsAmt) in TWD\n", file=out)
    widths = {c: max(len(c), *(len(getattr(r, c)) for r in rows)) for c in _COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in _COLUMNS).rstrip(), file=out)
    print("  ".join("-" * widths[c] for c in _COLUMNS), file=out)
    for row in rows:
        print("  ".join(getattr(row, c).ljust(widths[c]) for c in _COLUMNS).rstrip(), file=out)
        if row.note:
            print(" " * (widths["time"] + 2) + f"└ {row.note}", file=out)
    print("\nwhere every order ended, as the emulator sees it:", file=out)
    for order, state in facts["orders"].items():
        print(f"  {order}: {state}", file=out)
    print(
        f"the lost reply: ECPay applied the bonus order's refund "
        f"{facts['bonus_order_refunds_applied_by_ecpay']} time(s); no double refund.",
        file=out,
    )
    print(
        f"the dead worker: ECPay applied DEMO6's refund "
        f"{facts['dead_worker_refunds_applied_by_ecpay']} time(s); the journal (SQLite, in a "
        "temporary directory) carried it across workers.",
        file=out,
    )
    return 0
