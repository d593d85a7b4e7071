"""Play a model scenario (model/trail2scenario.py) against the real Client and the emulator.

A scenario is a SPIN counterexample trail of one of the models in model/, step by step: each
worker's effects (a claim, the order lock, a query, a journal save, the DoAction and its reply)
and the environment's moves (5-minute ticks, ECPay's batch, a worker killed, an order lock
freed under a live holder, a request ECPay held landing late). Here every call of a worker is a
real ``Client.refund`` (or ``Client.sweep``) in its own thread, on one shared journal and one
emulator, and it stops before each effect until the scenario lets it go:

- the journal is a ``JournalWrapper`` that stops before every claim, save, get and read, and
  kills the caller (``Died``, raised from the wrapper as in tests/_refund_worker.py) once the
  scenario says the worker dies; the order lock is one the scenario can take away from a live
  holder;
- the transport stops before each CreditDetail query and before and after each DoAction, and
  arms the emulator fault the trail chose for it: ``LOST_REPLY`` (applied, reply lost),
  ``READ_TIMEOUT_BEFORE_APPLY`` plus a landing later (ECPay held it: ``LATE_APPLY`` at the
  moment the trail says), ``TIMEOUT_BEFORE_APPLY`` (never reached ECPay), ``STALE_QUERY`` (one
  write behind);
- time is the emulator's clock: a tick moves it 5 minutes, the batch moves it to 20:15.

As long as the real code does what the model's step says (the same effect, the same claim
result, the same attempt status written, the same save refused), the replay follows the trail.
The first step where it does not is where the code and the model part: for a mutant's trail,
that must be the step the mutant changed. From there the real calls run by themselves. At the
end ECPay lands whatever it still holds, the shop waits past every fence and the batch, sweeps,
and asks every key again; money is counted on the emulator's books.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from ecpay_lifecycle import (
    TAIPEI,
    Action,
    AttemptStatus,
    Claim,
    Client,
    Credentials,
    EcpayError,
    InMemoryJournal,
    OperationRecord,
    OwnershipLost,
    PaymentKind,
)
from ecpay_lifecycle._journal import JournalWrapper
from ecpay_lifecycle.emulator import Emulator, EmulatorSettings, Endpoint, Fault

MID = "3002607"
KEY, IV = "ModelReplayKey16", "ModelReplayIv016"
ORDER = "MODEL1"
#: One unit of the model in TWD.
UNIT = 500
#: One tick of the model.
TICK = dt.timedelta(minutes=5)
#: R20's window in ticks (protocol.inc's WIN).
WINDOW_TICKS = 2
#: The day the scenario plays on (no batch before its evening unless the trail has one).
DAY = dt.date(2026, 8, 5)
#: How long, in real seconds, a call may take to reach its next effect.
WAIT = 15.0

#: The engine functions whose clock reads belong to the effect just done (see Call.clock).
_AFTER_AN_EFFECT = frozenset(
    {"_measure", "_check_quiet", "_remember", "_plan", "_check_fresh", "_attempt_flow", "_unknown"}
)
_FAULT = {
    "lost": Fault.LOST_REPLY,
    "late": Fault.READ_TIMEOUT_BEFORE_APPLY,
    "not_sent": Fault.TIMEOUT_BEFORE_APPLY,
}


class Died(BaseException):
    """The worker's process is gone (kill -9): nothing after this reaches the journal."""


@dataclasses.dataclass
class Outcome:
    """What the replay saw."""

    followed: int = 0
    diverged_at: int | None = None
    waited_at: int | None = None
    reasons: list[str] = dataclasses.field(default_factory=list)
    answers: list[str] = dataclasses.field(default_factory=list)
    refunds: list[int] = dataclasses.field(default_factory=list)
    sent: list[tuple[int, bool, str | None]] = dataclasses.field(default_factory=list)
    final: dict[int, str] = dataclasses.field(default_factory=dict)
    records: list[OperationRecord] = dataclasses.field(default_factory=list)


class OrderLock:
    """The order's lock as a store keeps it: freed when its holder dies, or taken away."""

    def __init__(self) -> None:
        self.holder: Call | None = None

    @property
    def free(self) -> bool:
        return self.holder is None

    def take(self, call: Call) -> None:
        if self.holder is not None:
            raise RuntimeError(f"worker {call.worker} took a lock held by {self.holder.worker}")
        self.holder = call

    def give_back(self, call: Call) -> None:
        if self.holder is call:
            self.holder = None


class Call:
    """One call of a worker (Client.refund or Client.sweep) in its own thread."""

    def __init__(self, replay: Replay, worker: int, key: int | None) -> None:
        self.replay = replay
        self.worker = worker
        self.key = key
        self.cond = threading.Condition()
        self.pending: tuple[str, dict[str, Any]] | None = None
        self.granted = False
        self.passed = 0
        self.crashed = False
        self.done = False
        self.free = False
        self.locked = False
        self.armed = True
        self.fate: str | None = None
        self.last: dict[str, Any] = {}
        self.answer = "running"
        self.client = Client(
            Credentials(MID, KEY, IV, auto_close=False),
            transport=GatedTransport(self),
            clock=self.clock,
            journal=GatedJournal(replay.journal, self),
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __repr__(self) -> str:
        what = "sweep" if self.key is None else f"key {self.key}"
        return f"<call of worker {self.worker}, {what}>"

    def _run(self) -> None:
        try:
            if self.key is None:
                self.client.sweep()
                self.answer = "swept"
            else:
                outcome = self.client.refund(
                    ORDER,
                    self.replay.amount(self.key),
                    idempotency_key=f"key-{self.key}",
                    trade_no=self.replay.trade_no,
                    kind=PaymentKind.ONE_TIME,
                )
                self.answer = "replayed" if outcome.replayed else "done"
        except Died:
            self.answer = "died"
        except EcpayError as exc:
            self.answer = type(exc).__name__
        except BaseException as exc:  # a fault of the harness: reported, never swallowed
            self.answer = f"harness error {type(exc).__name__}: {exc}"
        finally:
            self.client.close()
            with self.cond:
                self.done = True
                self.cond.notify_all()

    # -- in the call's thread ------------------------------------------------------------------

    def clock(self) -> dt.datetime:
        """The call's clock. The engine reads it just before the effect it stamps (a claim's
        ``now``, a save's lease, a query's ``queried_at``), and a model's step happens at one
        moment: so the first such read after an effect waits for the scenario's next step. Reads
        that finish the step just done (the plan and the attempt's Timestamp after a query, the
        skew measured from a reply: _AFTER_AN_EFFECT) do not wait."""
        if self.armed and threading.current_thread() is self.thread:
            reader = sys._getframe(2).f_code.co_name  # Engine.now's caller
            if reader not in _AFTER_AN_EFFECT:
                self.armed = False
                self.stop("clock")
        return self.replay.emulator.now

    def stop(self, kind: str, **detail: Any) -> None:
        """Wait before an effect until the scenario lets it happen (or kills the worker)."""
        with self.cond:
            if self.crashed:
                raise Died
            self.pending = (kind, detail)
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.granted or self.crashed, timeout=10 * WAIT):
                raise RuntimeError(f"{self!r} waited for ever before {kind}")
            self.pending = None
            self.granted = False
            self.passed += 1
            self.armed = self.armed or kind != "clock"
            self.cond.notify_all()
            if self.crashed:
                raise Died

    def note(self, **result: Any) -> None:
        with self.cond:
            self.last = result

    # -- in the scenario's thread ----------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def settle(self) -> tuple[str, dict[str, Any]] | None:
        """Wait until the call waits (before an effect or a clock read) or has ended."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.pending is not None or self.done, WAIT):
                raise RuntimeError(f"{self!r} neither reached an effect nor ended")
            return self.pending

    def _pass(self) -> None:
        with self.cond:
            passed = self.passed
            self.granted = True
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.passed > passed or self.done, WAIT):
                raise RuntimeError(f"{self!r} did not take its turn")
        self.settle()

    def at_gate(self) -> tuple[str, dict[str, Any]] | None:
        """The effect the call does next, now (its clock read first), or None once it ended."""
        pending = self.settle()
        while pending is not None and pending[0] == "clock":
            self._pass()
            pending = self.settle()
        return pending

    def grant(self) -> dict[str, Any]:
        """Let the effect happen; return what it gave once the call waits again (or ended)."""
        with self.cond:
            self.last = {}
        self._pass()
        with self.cond:
            return dict(self.last)

    def crash(self) -> None:
        with self.cond:
            self.crashed = True
            self.cond.notify_all()
        self.thread.join(WAIT)
        if self.thread.is_alive():
            raise RuntimeError(f"{self!r} did not die")


class GatedLocks:
    """The order lock of one call, through the scenario."""

    def __init__(self, call: Call) -> None:
        self.call = call

    @contextlib.contextmanager
    def hold(self, merchant_id: str, merchant_trade_no: str) -> Iterator[None]:
        self.call.stop("lock")
        lock = self.call.replay.lock
        lock.take(self.call)
        self.call.locked = True
        try:
            yield
        finally:
            lock.give_back(self.call)

    def ahold(self, merchant_id: str, merchant_trade_no: str) -> AsyncIterator[None]:
        raise NotImplementedError("the replay drives Client, not AsyncClient")


class GatedJournal(JournalWrapper):
    """The shared journal, one effect at a time for one call."""

    def __init__(self, journal: InMemoryJournal, call: Call) -> None:
        super().__init__(journal)
        self.call = call
        self._locks = GatedLocks(call)

    @property
    def locks(self) -> GatedLocks:  # type: ignore[override]
        return self._locks

    def claim(self, record: OperationRecord, *, now: dt.datetime) -> Claim:
        self.call.stop("claim")
        claim = super().claim(record, now=now)
        self.call.note(res=claim.status.value)
        return claim

    def save(self, record: OperationRecord) -> OperationRecord:
        last = record.attempts[-1] if record.attempts else None
        self.call.stop(
            "save",
            attempt=None if last is None else last.status.value,
            amount=None if last is None else last.amount,
            owner=record.owner,
        )
        try:
            stored = super().save(record)
        except OwnershipLost:
            self.call.note(ok=0)
            raise
        self.call.note(ok=1)
        return stored

    def get(self, merchant_id: str, key: str) -> OperationRecord | None:
        self.call.stop("get")
        return super().get(merchant_id, key)

    def for_order(self, merchant_id: str, merchant_trade_no: str) -> Sequence[OperationRecord]:
        if self.call.key is not None or self.call.locked:
            self.call.stop("for_order")
        # else: Engine.start_sweep's reads before the lock, which the model does not have
        return super().for_order(merchant_id, merchant_trade_no)


class GatedTransport(httpx.BaseTransport):
    """The emulator, one request at a time for one call, with the fault the trail chose."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        emulator = self.call.replay.emulator
        endpoint = Endpoint.from_path(request.url.path)
        if endpoint is Endpoint.QUERY_TRADE:
            return emulator.handler(request)  # the payment kind: no step of the model
        if endpoint is Endpoint.CREDIT_DETAIL:
            self.call.stop("query")
            return emulator.handler(request)
        self.call.stop("send")
        fate, self.call.fate = self.call.fate, None
        failed: httpx.HTTPError | None = None
        response: httpx.Response | None = None
        try:
            response = emulator.handler(request)
        except httpx.HTTPError as exc:
            failed = exc
        if fate == "late":
            self.call.replay.hold(request)
        self.call.stop("reply")
        if failed is not None:
            raise failed
        assert response is not None
        return response


#: What each step of the model must be in the real code: the effect, and what the effect's
#: request must say (checked before it happens).
def _expected(event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    step = event["step"]
    if step in ("open", "reclaim"):
        return "claim", {}
    if step in ("for_order", "recheck", "sw_read", "rc_read", "rc_known"):
        return "for_order", {}
    if step in ("rc_get", "bo_get"):
        return "get", {}
    if step == "resolve":
        return "save", {"attempt": event["verdict"]}
    if step == "sending":
        return "save", {"attempt": AttemptStatus.SENDING.value, "amount": event["amt"] * UNIT}
    if step in ("release", "sw_free", "rc_free"):
        return "save", {"owner": None}
    if step == "bo_save":
        return "save", {}
    if step in ("lock", "query", "send", "reply"):
        return step, {}
    if step == "norecheck":
        # mutants/no_recheck.pml: the model goes on to send whatever Engine._recheck read
        return "send", {}
    raise ValueError(f"no effect for the model's step {step!r}")


class Replay:
    """One scenario against the real client (see the module docstring)."""

    def __init__(self, scenario: Mapping[str, Any]) -> None:
        self.config: Mapping[str, int] = scenario["config"]
        self.events: Sequence[Mapping[str, Any]] = scenario["events"]
        self.result = Outcome()
        self.journal = InMemoryJournal()
        self.lock = OrderLock()
        self.calls: dict[int, Call] = {}
        self.all_calls: list[Call] = []
        self.late: list[tuple[httpx.Request, int] | None] = [None, None]
        self._held: httpx.Request | None = None
        self._short_tick: int | None = None
        self._ticks = 0
        start = self._start_time()
        setup = dt.datetime.combine(DAY - dt.timedelta(days=2), dt.time(10, 0), tzinfo=TAIPEI)
        settings = EmulatorSettings(
            refund_lowers_closed_amount_at_once=bool(self.config["AT_ONCE"]),
            # The second the batch takes (see _start_time) is ECPay's slack, not the request's
            # age: R20's window stays the model's 2 ticks, exactly.
            timestamp_tolerance=dt.timedelta(minutes=10, seconds=1),
        )
        self.emulator = Emulator(now=setup, settings=settings)
        self.emulator.add_merchant(MID, KEY, IV, auto_close=False, balance=10**9)
        self.trade_no = self._set_up_order(start)

    def amount(self, key: int) -> int | None:
        units = self.config["AMT0"] if key == 0 else self.config["AMT1"]
        return units * UNIT if units else None

    def _start_time(self) -> dt.datetime:
        """10:00; or, when the trail has a batch, the moment from which the ticks before its
        first batch end at 20:15, when ECPay's batch runs: the last of those ticks stops a
        second short and the batch moves the clock that second (in the model the batch falls
        between two steps, not on a tick). A trail that opens with the batch starts at 20:15
        itself, the batch already run."""
        ticks = 0
        for index, event in enumerate(self.events):
            if event.get("env") == "batch":
                batch = dt.datetime.combine(DAY, dt.time(20, 15), tzinfo=TAIPEI)
                if ticks:
                    self._short_tick = ticks
                    return batch - ticks * TICK
                if index == 0:
                    return batch
                return batch - dt.timedelta(seconds=1)
            ticks += event.get("env") == "tick"
        return dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=TAIPEI)

    def _set_up_order(self, start: dt.datetime) -> str:
        """The order of the model: Closed (captured and settled) or a pending capture."""
        emulator = self.emulator
        amount = self.config["CAP"] * UNIT
        with Client(
            Credentials(MID, KEY, IV, auto_close=False),
            transport=httpx.MockTransport(emulator.handler),
            clock=emulator.clock,
        ) as setup:
            if self.config["SETTLED"]:
                trade_no = emulator.authorize(MID, ORDER, amount)
                setup.capture(ORDER, kind=PaymentKind.ONE_TIME, trade_no=trade_no)
                emulator.set_time(emulator.next_batch() + dt.timedelta(minutes=16))
                emulator.set_time(start)
            else:
                emulator.set_time(start - dt.timedelta(minutes=10))
                trade_no = emulator.authorize(MID, ORDER, amount)
                setup.capture(ORDER, kind=PaymentKind.ONE_TIME, trade_no=trade_no)
                emulator.set_time(start)
        return trade_no

    # -- ECPay holding a request ---------------------------------------------------------------

    def hold(self, request: httpx.Request) -> None:
        """A DoAction ECPay received and holds (the trail's LATE_APPLY)."""
        self._held = request

    def _land(self, slot: int) -> None:
        held = self.late[slot]
        self.late[slot] = None
        if held is not None:
            request = held[0]
            self.emulator.handler(httpx.Request("POST", request.url, content=request.content))

    # -- the scenario ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        for index, event in enumerate(self.events):
            if "env" in event:
                self._environment(event)
            elif "worker" in event:
                self._step(index, event)
            self._drain()
        self._finish()
        return self.result

    def _environment(self, event: Mapping[str, Any]) -> None:
        move = event["env"]
        if move == "tick":
            self._ticks += 1
            short = self._ticks == self._short_tick
            self.emulator.advance(TICK - dt.timedelta(seconds=1) if short else TICK)
            for slot, held in enumerate(self.late):
                if held is not None:
                    request, age = held
                    self.late[slot] = (request, age + 1) if age < WINDOW_TICKS else None
        elif move == "batch":
            first = dt.datetime.combine(DAY, dt.time(20, 15), tzinfo=TAIPEI)
            if self.emulator.now < first:
                self.emulator.set_time(first)
            elif self.emulator.now > first:
                # a later batch: ECPay's next one is a day on (everything ages by a day)
                self.emulator.set_time(self.emulator.next_batch())
        elif move == "crash":
            call = self.calls.get(event["w"])
            if call is not None and not call.done:
                call.crash()
        elif move == "lockloss":
            self.lock.holder = None
        elif move == "land":
            self._land(event["slot"])
        else:
            raise ValueError(f"unknown move of the environment: {move!r}")

    def _diverge(self, call: Call, index: int, reason: str) -> None:
        call.free = True
        if self.result.diverged_at is None:
            self.result.diverged_at = index
        self.result.reasons.append(f"step {index}, worker {call.worker}: {reason}")

    def _step(self, index: int, event: Mapping[str, Any]) -> None:
        worker, step = event["worker"], event["step"]
        if step == "start":
            key = event["k"] if event["k"] < self.config["NK"] else None
            call = Call(self, worker, key)
            self.calls[worker] = call
            self.all_calls.append(call)
            call.start()
            if key is None:
                call.at_gate()  # the model's start of a sweep is Engine.start_sweep's decision
            else:
                call.settle()
            return
        call = self.calls.get(worker)
        if call is None or call.free or step in ("crashed", "resume"):
            return  # a diverged call runs by itself; a crash and a resume are not effects
        pending = call.at_gate()
        if step == "end":
            if pending is not None:
                self._diverge(
                    call, index, f"the model's call ended, the real one goes on: {pending}"
                )
            else:
                self.result.followed += 1
            return
        kind, wanted = _expected(event)
        if kind == "save" and event.get("ok") == 0:
            # A write the journal refuses changes nothing: what it would have said is the
            # writer's stale copy, which the model does not keep.
            wanted = {}
        if pending is None:
            if step == "lock" and call.key is None and self._backing_off():
                # Engine.start_sweep skips an order whose unknown attempts back off
                # (next_sweep_at): the model sweeps more often than the code.
                self.result.waited_at = index
            self._diverge(call, index, f"the model's call goes on to {kind}, the real one ended")
            return
        if pending[0] != kind or any(pending[1].get(k) != v for k, v in wanted.items()):
            self._diverge(call, index, f"the model does {step} {dict(wanted)}, the code {pending}")
            return
        if step == "norecheck":
            self.result.followed += 1  # the code is at its send too; the send event grants it
            return
        if kind == "lock" and not self.lock.free:
            self._diverge(call, index, "the model takes the lock, which the code holds")
            return
        if step == "query" and event.get("stale"):
            self.emulator.faults.inject(
                Fault.STALE_QUERY, endpoint=Endpoint.CREDIT_DETAIL, merchant_trade_no=ORDER
            )
        if step == "send":
            call.fate = event["fate"]
            if event["fate"] in _FAULT:
                self.emulator.faults.inject(
                    _FAULT[event["fate"]], endpoint=Endpoint.DO_ACTION, merchant_trade_no=ORDER
                )
        got = call.grant()
        if step == "send" and event["fate"] == "late":
            slot = 0 if self.late[0] is None else 1
            assert self._held is not None
            self.late[slot] = (self._held, event["age"])
            self._held = None
        for field in ("res", "ok"):
            if field in event and field in got and got[field] != event[field]:
                self._diverge(
                    call,
                    index,
                    f"the model's {step} gave {field}={event[field]}, the code's {got[field]}",
                )
                return
        if step == "reply" and event["fate"] in ("accepted", "rejected", "not_sent"):
            # the model records what came back in the same step: Run.resolve
            status = "done" if event["fate"] == "accepted" else "not_done"
            pending = call.at_gate()
            if pending is None or pending[0] != "save" or pending[1].get("attempt") != status:
                self._diverge(call, index, f"the model records {status}, the code {pending}")
                return
            got = call.grant()
            if got.get("ok") != event["ok"]:
                self._diverge(
                    call,
                    index,
                    f"the model's save gave ok={event['ok']}, the code's {got.get('ok')}",
                )
                return
        self.result.followed += 1

    def _backing_off(self) -> bool:
        now = self.emulator.now
        waiting = [
            record.next_sweep_at is not None and record.next_sweep_at > now
            for record in self.journal.for_order(MID, ORDER)
            if record.open_attempt is not None
        ]
        return bool(waiting) and all(waiting)

    def _drain(self) -> None:
        """Let the calls that left the trail go on by themselves, as far as they can."""
        moved = True
        while moved:
            moved = False
            for call in self.all_calls:
                if not call.free or call.done:
                    continue
                pending = call.at_gate()
                if pending is None or (pending[0] == "lock" and not self.lock.free):
                    continue
                call.grant()
                moved = True

    def _finish(self) -> None:
        """After the trail: ECPay lands what it holds, every call ends, the shop finishes."""
        for slot in range(len(self.late)):
            self._land(slot)
        for call in self.all_calls:
            call.free = True
        self._drain()
        for call in self.all_calls:
            if call.settle() is not None:
                raise RuntimeError(f"{call!r} cannot finish: {call.pending}")
            self.result.answers.append(f"{call!r}: {call.answer}")
        # The shop's side: past every fence, lease and the batch, sweep, ask every key again.
        self.emulator.advance(dt.timedelta(minutes=16))
        self.emulator.set_time(self.emulator.next_batch() + dt.timedelta(minutes=16))
        with Client(
            Credentials(MID, KEY, IV, auto_close=False),
            transport=httpx.MockTransport(self.emulator.handler),
            clock=self.emulator.clock,
            journal=self.journal,
        ) as shop:
            shop.sweep()
            for key in range(self.config["NK"]):
                try:
                    outcome = shop.refund(
                        ORDER,
                        self.amount(key),
                        idempotency_key=f"key-{key}",
                        trade_no=self.trade_no,
                        kind=PaymentKind.ONE_TIME,
                    )
                except EcpayError as exc:
                    self.result.final[key] = type(exc).__name__
                else:
                    self.result.final[key] = "replayed" if outcome.replayed else "done"
        self.result.refunds = [
            event.amount or 0
            for event in self.emulator.applied_do_actions(MID, ORDER)
            if event.action is Action.REFUND
        ]
        self.result.sent = [
            (event.amount or 0, event.applied, event.refusal and event.refusal.value)
            for event in self.emulator.events
            if event.endpoint is Endpoint.DO_ACTION and event.action is Action.REFUND
        ]
        self.result.records = list(self.journal.for_order(MID, ORDER))


def replay(scenario: Mapping[str, Any]) -> Outcome:
    """Play ``scenario`` against the real client; see the module docstring."""
    return Replay(scenario).run()
