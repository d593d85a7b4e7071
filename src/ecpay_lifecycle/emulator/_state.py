"""The emulator's state engine: merchants, orders, the clock, the daily batch and the day rules.

No HTTP and no codec here: the engine takes already-decoded actions and answers with a
:class:`Refusal` or applies the change. It enforces the rules of docs/ecpay-api.md (section 7;
every "section N" here is one of that document) with its own code (it does not
import the planner or ``_rules``), so the planner and the emulator can be tested against each
other. It is not thread-safe by itself; :class:`~ecpay_lifecycle.emulator.Emulator` holds one
lock around every call.
"""

from __future__ import annotations

import collections
import datetime as dt
import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

import attrs

from ecpay_lifecycle._codec import AesCodec, Secret
from ecpay_lifecycle._exceptions import (
    ConfigurationError,
    EcpayError,
    InvalidArgument,
    InvalidArgumentType,
)
from ecpay_lifecycle._models import (
    Action,
    GatewayStatus,
    OrderSnapshot,
    PaymentKind,
    State,
    check_amount,
    check_aware,
    check_order_number,
)

from ._events import EventKind
from ._persist import Reader
from ._reply_codec import ReplyCodec
from ._settings import EmulatorSettings, Refusal

__all__ = ["HISTORY", "TAIPEI", "CloseRowView", "Ledger", "MerchantView", "OrderView"]

#: Asia/Taipei as a fixed UTC+8 offset (no DST since 1979). Defined here rather than imported
#: from ``_rules`` so that the emulator's rules stay independent of the library's.
TAIPEI = dt.timezone(dt.timedelta(hours=8), "Asia/Taipei")

#: How many CreditDetail views (one per write) each order keeps for ``Fault.STALE_QUERY`` and
#: ``EmulatorSettings.credit_detail_lag``; asking further back shows the oldest one kept.
HISTORY = 16

#: Statuses in which the card hold is live and nothing is closed: C and N apply (R15).
_HOLDING = frozenset({GatewayStatus.AUTHORIZED, GatewayStatus.OPERATION_CANCELED})
#: Statuses :meth:`Ledger.set_status` may force: those the emulator never reaches by itself.
_FORCEABLE = frozenset(
    {GatewayStatus.UNAUTHORIZED} | {s for s in GatewayStatus if s.english is None}
)
#: The last instant of the calendar: where a clock with nothing left to happen may go.
_END = dt.datetime.max.replace(tzinfo=dt.UTC)
#: The smallest step of the clock: an expiry has happened this long after its deadline (R7).
_INSTANT = dt.timedelta(microseconds=1)


@attrs.frozen
class CloseRowView:
    """One row of CreditDetail's ``CloseData``: a capture settled by a batch (or UnionPay, R8)."""

    status: GatewayStatus
    amount: int
    at: dt.datetime


@attrs.frozen(kw_only=True)
class MerchantView:
    """A frozen view of one emulated merchant (:meth:`Emulator.merchants`): never its HashKey
    or HashIV, which stay inside its codecs."""

    merchant_id: str
    auto_close: bool
    balance: int
    platform_id: str | None


@attrs.frozen(kw_only=True)
class OrderView:
    """A frozen view of one emulated order, for tests (:meth:`Emulator.order`).

    ``closed_amount`` is ECPay's ``ClsAmt`` as CreditDetail shows it; ``refunded_total`` sums
    the refunds in effect (undone ones excluded), ``pending_refund_total`` those the next batch
    settles; ``capture_settled`` says a batch has settled the capture (R9).
    """

    merchant_id: str
    merchant_trade_no: str
    trade_no: str
    trade_id: int
    amount: int
    closed_amount: int
    status: GatewayStatus
    kind: PaymentKind
    authorized_at: dt.datetime
    refunded_total: int
    pending_refund_total: int
    close_rows: tuple[CloseRowView, ...]
    capture_settled: bool
    auto_close: bool

    @property
    def state(self) -> State:
        """The lifecycle state this status and ClsAmt mean (R3)."""
        return self.status.to_state(self.closed_amount)


class Recorder(Protocol):
    """How the engine writes to the emulator's event log."""

    def __call__(self, kind: EventKind, at: dt.datetime, **fields: Any) -> None: ...


@attrs.define
class _Refund:
    amount: int
    at: dt.datetime
    settled: bool = False


@attrs.define(kw_only=True)
class LedgerMerchant:
    """A merchant as the ledger keeps it: its codecs (never shown), auto-close and balance."""

    merchant_id: str
    codec: AesCodec = attrs.field(repr=False)
    #: Encrypts replies with ECPay's servers' URL-encoding (R1); the codec reads requests.
    replies: ReplyCodec = attrs.field(repr=False)
    auto_close: bool
    balance: int
    platform_id: str | None


@attrs.define(kw_only=True)
class LedgerOrder:
    """An order as the ledger keeps it, mutable under the ledger's lock; views are frozen copies."""

    merchant: LedgerMerchant
    merchant_trade_no: str
    trade_no: str
    trade_id: int
    amount: int
    kind: PaymentKind
    authorized_at: dt.datetime
    status: GatewayStatus
    #: The true net closed amount; what CreditDetail shows also depends on the settings.
    net: int = 0
    capture_settled: bool = False
    rows: list[CloseRowView] = attrs.Factory(list)
    refunds: list[_Refund] = attrs.Factory(list)
    #: ``(changed_at, view)`` after each write: each change of what CreditDetail shows.
    history: collections.deque[tuple[dt.datetime, OrderView]] = attrs.Factory(
        lambda: collections.deque(maxlen=HISTORY)
    )

    def pending(self) -> int:
        return sum(r.amount for r in self.refunds if not r.settled)


class Ledger:
    """Merchants, orders and the clock; applies DoActions and the timed rules (R5-R16)."""

    def __init__(self, now: dt.datetime, settings: EmulatorSettings, record: Recorder) -> None:
        self.now = check_aware(now)
        try:
            # Every time the emulator shows is in Asia/Taipei: it must exist there.
            self.now.astimezone(TAIPEI)
        except OverflowError as exc:
            raise InvalidArgument("the emulator's calendar ends with year 9999") from exc
        self.settings = settings
        self._record = record
        self.merchants: dict[str, LedgerMerchant] = {}
        self.orders: dict[tuple[str, str], LedgerOrder] = {}
        self._trade_nos: set[str] = set()
        self._sequence = 0
        #: R7's day rules still to come, as a heap of ``(stop, tie, rank, at, order)``: ``stop``
        #: is the first instant at which the rule has happened (its moment for the notice, just
        #: after it for the expiry), so the next one is found without looking at every order.
        self._agenda: list[tuple[dt.datetime, int, int, dt.datetime, LedgerOrder]] = []
        self._agenda_tie = itertools.count()
        #: An order's day rules fall after the end of the calendar: the clock cannot move.
        self._beyond_calendar = False

    # -- set-up ------------------------------------------------------------------------------

    def add_merchant(
        self,
        merchant_id: object,
        hash_key: object,
        hash_iv: object,
        *,
        auto_close: object,
        balance: object,
        platform_id: object,
    ) -> None:
        """Register a merchant; the key and IV are kept only inside its codecs.

        The four IDs and keys are held as :class:`Secret` values from the first line (swapped
        arguments put a HashKey in any of them), and no message shows one.
        """
        given = (merchant_id, hash_key, hash_iv, platform_id)
        merchant, key, iv, platform_given = (Secret[object](value) for value in given)
        del merchant_id, hash_key, hash_iv, platform_id, given
        mid = _merchant_id(merchant, "merchant_id")
        if mid in self.merchants:
            raise InvalidArgument(f"merchant {mid} is already registered")
        if not isinstance(auto_close, bool):
            raise InvalidArgumentType(f"auto_close must be a bool, not {type(auto_close).__name__}")
        money = check_amount(balance, field="balance", allow_zero=True)
        platform = (
            None if platform_given.reveal() is None else _merchant_id(platform_given, "platform_id")
        )
        codec = AesCodec(key, iv)  # it validates the type and length
        self.merchants[mid] = LedgerMerchant(
            merchant_id=mid,
            codec=codec,
            replies=ReplyCodec(_key_bytes(key), _key_bytes(iv)),
            auto_close=auto_close,
            balance=money,
            platform_id=platform,
        )
        self._record(EventKind.SETUP, self.now, merchant_id=mid, note="merchant added")

    def merchant(self, merchant_id: object) -> LedgerMerchant:
        """The registered merchant, or :class:`InvalidArgument`."""
        found = self.merchants.get(merchant_id) if isinstance(merchant_id, str) else None
        if found is None:
            raise InvalidArgument(f"no merchant {merchant_id!r} in the emulator")
        return found

    def authorize(
        self,
        merchant_id: object,
        merchant_trade_no: object,
        amount: object,
        *,
        kind: object,
        at: object,
    ) -> str:
        """Create an authorized order and return its TradeNo (UnionPay starts closed, R8).

        An order authorized in the past lives through the batches and day rules it missed.
        """
        merchant = self.merchant(merchant_id)
        number = check_order_number(merchant_trade_no)
        total = check_amount(amount)
        if not isinstance(kind, PaymentKind):
            raise InvalidArgumentType(f"kind must be a PaymentKind, not {kind!r}")
        when = self.now if at is None else check_aware(at, field="at")
        if when > self.now:
            raise InvalidArgument(
                f"at={when.isoformat()} is after the emulator's clock {self.now.isoformat()}"
            )
        if (merchant.merchant_id, number) in self.orders:
            raise InvalidArgument(
                f"merchant {merchant.merchant_id} already has an order {number}",
                merchant_trade_no=number,
            )
        order = LedgerOrder(
            merchant=merchant,
            merchant_trade_no=number,
            trade_no=self._new_trade_no(when),
            trade_id=10_000_000 + len(self.orders) + 1,
            amount=total,
            kind=kind,
            authorized_at=when,
            status=GatewayStatus.AUTHORIZED,
        )
        missed = self._schedule(when, self.now, [order])
        if kind is PaymentKind.UNIONPAY:
            order.status = self.settings.unionpay_start_status
            order.net = total
            if order.status is GatewayStatus.CAPTURED:
                self._settle_capture(order, when)
        self._wrote(order, when)
        self.orders[(merchant.merchant_id, number)] = order
        self._plan_day_rules(order)
        self._record(
            EventKind.SETUP,
            when,
            merchant_id=merchant.merchant_id,
            merchant_trade_no=number,
            amount=total,
            note=f"authorized {kind.value} TradeNo {order.trade_no}",
        )
        for happen in missed:
            happen()
        return order.trade_no

    def _new_trade_no(self, when: dt.datetime) -> str:
        """A 16-digit TradeNo in ECPay's shape: yyMMddHHmmss (Taipei) and a 4-digit sequence."""
        stamp = when.astimezone(TAIPEI).strftime("%y%m%d%H%M%S")
        while True:
            self._sequence += 1
            candidate = f"{stamp}{self._sequence % 10_000:04d}"
            if candidate not in self._trade_nos:
                self._trade_nos.add(candidate)
                return candidate

    def find(self, merchant_id: str, merchant_trade_no: str) -> LedgerOrder | None:
        """The order, or None."""
        return self.orders.get((merchant_id, merchant_trade_no))

    def order(self, merchant_id: object, merchant_trade_no: object) -> LedgerOrder:
        """The order, or :class:`InvalidArgument` naming it."""
        merchant = self.merchant(merchant_id)
        found = (
            self.orders.get((merchant.merchant_id, merchant_trade_no))
            if isinstance(merchant_trade_no, str)
            else None
        )
        if found is None:
            raise InvalidArgument(
                f"merchant {merchant.merchant_id} has no order {merchant_trade_no!r}"
            )
        return found

    def set_balance(self, merchant_id: object, balance: object) -> None:
        """Set the merchant's ECPay balance (R16)."""
        merchant = self.merchant(merchant_id)
        merchant.balance = check_amount(balance, field="balance", allow_zero=True)
        self._record(
            EventKind.SETUP,
            self.now,
            merchant_id=merchant.merchant_id,
            amount=merchant.balance,
            note="balance set",
        )

    def set_status(self, order: LedgerOrder, status: object) -> None:
        """Force a status ECPay reaches without the merchant (bank rejection, chargeback, ...)."""
        if not isinstance(status, GatewayStatus) or status not in _FORCEABLE:
            raise InvalidArgument(
                f"set_status takes Unauthorized or an undocumented status, not {status!r}; "
                "reach the others with DoAction and the clock",
                merchant_trade_no=order.merchant_trade_no,
            )
        if status is GatewayStatus.UNAUTHORIZED and order.status not in _HOLDING:
            raise InvalidArgument(
                "only an order that is still Authorized can become Unauthorized",
                merchant_trade_no=order.merchant_trade_no,
            )
        order.status = status
        self._wrote(order, self.now)
        self._record(
            EventKind.SETUP,
            self.now,
            merchant_id=order.merchant.merchant_id,
            merchant_trade_no=order.merchant_trade_no,
            note=f"status forced to {status.chinese}",
        )

    # -- views -------------------------------------------------------------------------------

    def shown_closed_amount(self, order: LedgerOrder) -> int:
        """``ClsAmt`` as CreditDetail shows it (section 4 [HOUSE])."""
        if self.settings.refund_lowers_closed_amount_at_once:
            return order.net
        return order.net + order.pending()

    def view(self, order: LedgerOrder) -> OrderView:
        """The frozen view of ``order``."""
        return OrderView(
            merchant_id=order.merchant.merchant_id,
            merchant_trade_no=order.merchant_trade_no,
            trade_no=order.trade_no,
            trade_id=order.trade_id,
            amount=order.amount,
            closed_amount=self.shown_closed_amount(order),
            status=order.status,
            kind=order.kind,
            authorized_at=order.authorized_at,
            refunded_total=sum(r.amount for r in order.refunds),
            pending_refund_total=order.pending(),
            close_rows=tuple(order.rows),
            capture_settled=order.capture_settled,
            auto_close=order.merchant.auto_close,
        )

    def credit_detail_view(self, order: LedgerOrder, *, writes_back: int = 0) -> OrderView:
        """What CreditDetail shows of ``order``: as it was ``credit_detail_lag`` ago (the latest
        write at or before ``now - lag``), then ``writes_back`` writes further back
        (``Fault.STALE_QUERY``). Past the kept history: the oldest view kept."""
        lag = self.settings.credit_detail_lag
        if not lag and not writes_back:
            return self.view(order)
        history = order.history
        index = len(history) - 1
        if lag:
            try:
                cutoff = self.now - lag
            except OverflowError:  # a lag reaching before year 1: nothing is that old
                index = 0
            else:
                index = max((i for i, (at, _view) in enumerate(history) if at <= cutoff), default=0)
        return history[max(0, index - writes_back)][1]

    def _wrote(self, order: LedgerOrder, at: dt.datetime) -> None:
        """Keep the view CreditDetail shows after a change at ``at``, if it did change."""
        view = self.view(order)
        if order.history and _shown(order.history[-1][1]) == _shown(view):
            return
        order.history.append((at, view))

    def snapshot(self, order: LedgerOrder) -> OrderSnapshot:
        """The truth about ``order`` as the library models it (for differential tests)."""
        closed = self.shown_closed_amount(order)
        return OrderSnapshot(
            merchant_trade_no=order.merchant_trade_no,
            trade_no=order.trade_no,
            amount=order.amount,
            state=order.status.to_state(closed),
            authorized_at=order.authorized_at,
            closed_amount=closed,
            kind=order.kind,
            auto_close=order.merchant.auto_close,
            capture_settled=order.capture_settled,
        )

    # -- the clock ---------------------------------------------------------------------------

    def check_move(self, when: object, *, floor: dt.datetime | None = None) -> dt.datetime:
        """``when`` if the clock may move there: aware, not before ``floor`` (default: now), and
        with every batch and day rule on the way inside the calendar; otherwise
        :class:`InvalidArgument`. Pure: a move checked here cannot fail half-way."""
        target = check_aware(when, field="when")
        floor = self.now if floor is None else floor
        if target < floor:
            raise InvalidArgument(
                f"the emulator's clock never goes back: {target.isoformat()} is before "
                f"{floor.isoformat()}"
            )
        try:
            target.astimezone(TAIPEI)
        except OverflowError as exc:
            raise InvalidArgument("the emulator's calendar ends with year 9999") from exc
        if self._beyond_calendar and target > self.now:
            raise InvalidArgument("the emulator's calendar ends with year 9999")
        return target

    def glide(self, when: dt.datetime) -> bool:
        """Move the clock to ``when`` if nothing happens on the way (no batch, no day rule);
        whether it did. The cheap path of a clock that runs in real time."""
        if when <= self.now:
            return True
        if when < self._first_moment():
            self.now = when
            return True
        return False

    def step_toward(
        self, target: dt.datetime, landing: dt.datetime | None = None
    ) -> list[Callable[[], None]]:
        """Move the clock to the first moment after now where something happens (a batch, a
        day rule, or ``landing``), but not past ``target`` (checked by :meth:`check_move`), and
        return what happens in between, in time order, as small callables (one order each) for
        the caller to run under its lock, a few at a time."""
        instant = min(target, self._first_moment())
        if landing is not None and self.now < landing < instant:
            instant = landing
        happenings = self._schedule(self.now, instant, None)
        self.now = instant
        return happenings

    def _first_moment(self) -> dt.datetime:
        """The first instant after now by which a batch or a day rule has happened (the end of
        the calendar when none can)."""
        try:
            first = next(self.batch_times(self.now, self.now + dt.timedelta(days=2)), _END)
        except OverflowError:
            first = _END
        if self._agenda and self._agenda[0][0] < first:
            first = self._agenda[0][0]
        return first

    def _plan_day_rules(self, order: LedgerOrder) -> None:
        """Put R7's notice and expiry of ``order`` (auto-close off) on the agenda, if still to
        come (a backdated order's earlier ones were replayed by :meth:`authorize`)."""
        if order.merchant.auto_close:
            return
        try:
            notice = order.authorized_at + self.settings.notice_after
            expiry = order.authorized_at + self.settings.abandon_after
            after_expiry = expiry + _INSTANT
        except OverflowError:
            self._beyond_calendar = True  # as _schedule would say on any move
            return
        if notice > self.now:
            heapq.heappush(self._agenda, (notice, next(self._agenda_tie), 0, notice, order))
        if expiry >= self.now:
            entry = (after_expiry, next(self._agenda_tie), 1, expiry, order)
            heapq.heappush(self._agenda, entry)

    def batch_times(self, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
        """Every batch instant in ``(start, end]``, in order (R5)."""
        first = start.astimezone(TAIPEI).date()
        last = end.astimezone(TAIPEI).date()
        for offset in range((last - first).days + 1):
            day = first + dt.timedelta(days=offset)
            at = dt.datetime.combine(day, self.settings.batch_time, tzinfo=TAIPEI)
            if start < at <= end:
                yield at

    def next_batch(self) -> dt.datetime:
        """The first batch instant after the clock."""
        try:
            return next(self.batch_times(self.now, self.now + dt.timedelta(days=2)))
        except OverflowError as exc:
            raise InvalidArgument("no batch is left before the end of the calendar") from exc

    def _schedule(
        self, start: dt.datetime, end: dt.datetime, only: list[LedgerOrder] | None
    ) -> list[Callable[[], None]]:
        """What happens in ``(start, end]``, in time order: batches and R7's day rules.

        Nothing changes until the caller runs the returned callables, except that the day rules
        returned leave the agenda (the caller moves the clock to ``end``). ``only`` restricts
        the work to some orders (replaying an order authorized in the past; the agenda is not
        used); then the batch itself is not logged, only what it did to those orders.
        """
        if end <= start:
            return []
        happenings: list[tuple[dt.datetime, int, int, Callable[[], None]]] = []
        tie = itertools.count()
        rules = {0: self._notice, 1: self._expire}
        try:
            if only is None:
                agenda = self._agenda
                while agenda and agenda[0][0] <= end:
                    _stop, _tie, rank, at, order = heapq.heappop(agenda)
                    happenings.append((at, rank, next(tie), _bind(rules[rank], order, at)))
            for order in () if only is None else only:
                if order.merchant.auto_close:
                    continue
                notice = order.authorized_at + self.settings.notice_after
                if start < notice <= end:
                    happenings.append((notice, 0, next(tie), _bind(self._notice, order, notice)))
                # R7: abandoned *after* the deadline: at the deadline the order still stands.
                expiry = order.authorized_at + self.settings.abandon_after
                if start <= expiry < end:
                    happenings.append((expiry, 1, next(tie), _bind(self._expire, order, expiry)))
            for at in self.batch_times(start, end):
                # One piece per order, so that a clock moving over a batch of many orders can
                # let requests in between (the orders are the ones known now; an order
                # authorized at the batch instant comes after it, as it would anyway).
                tally = _Tally()
                for order in self._batched(only):
                    happenings.append(
                        (at, 2, next(tie), _bind(self._batch_order, order, at, tally))
                    )
                if only is None:
                    happenings.append((at, 2, next(tie), _bind(self._batch_done, at, tally)))
        except OverflowError as exc:
            raise InvalidArgument("the emulator's calendar ends with year 9999") from exc
        happenings.sort(key=lambda item: item[:3])
        return [happen for _at, _rank, _n, happen in happenings]

    def _notice(self, order: LedgerOrder, at: dt.datetime) -> None:
        if order.status in _HOLDING:
            self._record(
                EventKind.NOTICE,
                at,
                merchant_id=order.merchant.merchant_id,
                merchant_trade_no=order.merchant_trade_no,
                note="R7: unclosed order notice (day 80)",
            )

    def _expire(self, order: LedgerOrder, at: dt.datetime) -> None:
        if order.status in _HOLDING:
            order.status = GatewayStatus.CANCELED
            order.net = 0
            self._wrote(order, at)
            self._record(
                EventKind.EXPIRE,
                at,
                merchant_id=order.merchant.merchant_id,
                merchant_trade_no=order.merchant_trade_no,
                amount=order.amount,
                note="R7: unclosed after day 90, abandoned without capture",
            )

    def _batched(self, only: list[LedgerOrder] | None) -> list[LedgerOrder]:
        """The orders a batch may change: ``only`` as given (a replay, whose order is still being
        set up), otherwise those holding under auto-close or with a pending close now. An order
        that changes between the pieces of a move is checked again when its piece runs, and one
        that gets a pending close after the batch was planned waits for the next batch, as a
        request arriving just after the batch would."""
        if only is not None:
            return only
        closes = self.settings.batch_closes_authorized
        return [
            order
            for order in self.orders.values()
            if order.status is GatewayStatus.TO_BE_CAPTURED
            or (closes and order.merchant.auto_close and order.status in _HOLDING)
        ]

    def _batch_order(self, order: LedgerOrder, at: dt.datetime, tally: _Tally) -> None:
        """R5 for one order: with auto-close, an Authorized order is closed; then any pending
        close is settled."""
        if (
            self.settings.batch_closes_authorized
            and order.merchant.auto_close
            and order.status in _HOLDING
        ):
            order.status = GatewayStatus.TO_BE_CAPTURED
            order.net = order.amount
            self._wrote(order, at)
            self._record(
                EventKind.AUTO_CLOSE,
                at,
                merchant_id=order.merchant.merchant_id,
                merchant_trade_no=order.merchant_trade_no,
                amount=order.amount,
                note="R5: daily auto-close",
            )
        if order.status is GatewayStatus.TO_BE_CAPTURED:
            self._settle(order, at)
            tally.settled += 1

    def _batch_done(self, at: dt.datetime, tally: _Tally) -> None:
        self._record(EventKind.BATCH, at, note=f"settled {tally.settled} order(s)")

    def _settle(self, order: LedgerOrder, at: dt.datetime) -> None:
        """The batch settles a pending close: a capture gets its row, pending refunds are done."""
        if not order.capture_settled:
            self._settle_capture(order, at)
        for refund in order.refunds:
            refund.settled = True
        order.status = GatewayStatus.CAPTURED
        self._wrote(order, at)
        self._record(
            EventKind.SETTLE,
            at,
            merchant_id=order.merchant.merchant_id,
            merchant_trade_no=order.merchant_trade_no,
            amount=order.net,
            note="settled",
        )

    def _settle_capture(self, order: LedgerOrder, at: dt.datetime) -> None:
        order.capture_settled = True
        order.rows.append(CloseRowView(GatewayStatus.CAPTURED, order.net, at))
        if self.settings.credit_settlements:
            order.merchant.balance += order.net

    # -- state files -------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Merchants (with their HashKey and HashIV: the file must stay the owner's), orders
        and the clock as JSON, for :meth:`restore`."""
        merchants = []
        for merchant in self.merchants.values():
            key, iv = merchant.replies.secrets()
            merchants.append(
                {
                    "merchant_id": merchant.merchant_id,
                    "hash_key": key.reveal().decode("latin-1"),
                    "hash_iv": iv.reveal().decode("latin-1"),
                    "auto_close": merchant.auto_close,
                    "balance": merchant.balance,
                    "platform_id": merchant.platform_id,
                }
            )
        return {
            "now": self.now.isoformat(),
            "trade_no_sequence": self._sequence,
            "merchants": merchants,
            "orders": [_order_json(order) for order in self.orders.values()],
        }

    @classmethod
    def restore(
        cls, data: Reader, now: dt.datetime, settings: EmulatorSettings, record: Recorder
    ) -> Ledger:
        """The ledger :meth:`dump` wrote, at ``now``; a bad field is a
        :class:`~ecpay_lifecycle.ConfigurationError` naming it. Logs nothing."""
        ledger = cls(now, settings, _quiet)
        for entry in data.items("merchants"):
            try:
                ledger.add_merchant(
                    entry.text("merchant_id"),
                    entry.text("hash_key").encode("latin-1"),
                    entry.text("hash_iv").encode("latin-1"),
                    auto_close=entry.flag("auto_close"),
                    balance=entry.integer("balance"),
                    platform_id=entry.optional_text("platform_id"),
                )
            except UnicodeEncodeError as error:
                raise ConfigurationError(
                    f"{entry.where}: a HashKey or HashIV holds a character that is no byte"
                ) from error
            except (InvalidArgument, InvalidArgumentType) as error:
                raise ConfigurationError(f"{entry.where}: {error}") from error
        for entry in data.items("orders"):
            ledger._restore_order(entry)
        ledger._sequence = data.integer("trade_no_sequence")
        ledger._record = record
        return ledger

    def _restore_order(self, entry: Reader) -> None:
        merchant = self.merchants.get(entry.text("merchant_id"))
        if merchant is None:
            raise ConfigurationError(f"{entry.where}.merchant_id is not one of the merchants")
        number = entry.text("merchant_trade_no")
        trade_no = entry.text("trade_no")
        if (merchant.merchant_id, number) in self.orders or trade_no in self._trade_nos:
            raise ConfigurationError(f"{entry.where} repeats an earlier order")
        order = LedgerOrder(
            merchant=merchant,
            merchant_trade_no=number,
            trade_no=trade_no,
            trade_id=entry.integer("trade_id"),
            amount=entry.integer("amount", minimum=1),
            kind=entry.member("kind", PaymentKind),
            authorized_at=entry.time("authorized_at"),
            status=entry.member("status", GatewayStatus),
            net=entry.integer("net", minimum=None),
            capture_settled=entry.flag("capture_settled"),
            rows=[_row(row) for row in entry.items("rows")],
            refunds=[
                _Refund(item.integer("amount"), item.time("at"), item.flag("settled"))
                for item in entry.items("refunds")
            ],
        )
        for item in entry.items("history"):
            view = attrs.evolve(
                self.view(order),
                closed_amount=item.integer("closed_amount", minimum=None),
                status=item.member("status", GatewayStatus),
                refunded_total=item.integer("refunded_total"),
                pending_refund_total=item.integer("pending_refund_total"),
                close_rows=tuple(_row(row) for row in item.items("rows")),
                capture_settled=item.flag("capture_settled"),
            )
            order.history.append((item.time("changed_at"), view))
        if not order.history:
            self._wrote(order, order.authorized_at)
        self.orders[(merchant.merchant_id, number)] = order
        self._trade_nos.add(trade_no)
        self._plan_day_rules(order)

    # -- DoAction ----------------------------------------------------------------------------

    def in_batch_window(self, merchant: LedgerMerchant) -> bool:
        """R5: DoAction is refused in [20:15, 20:30) Asia/Taipei when auto-close is on."""
        if not merchant.auto_close:
            return False
        local = self.now.astimezone(TAIPEI).time()
        return self.settings.batch_time <= local < self.settings.batch_window_end

    def do_action(self, order: LedgerOrder, action: Action, amount: int) -> Refusal | None:
        """Apply one DoAction to ``order``, or return why ECPay would refuse it (nothing changes).

        Checks run in this order: the batch window (R5: ECPay asks not to call DoAction at all
        then), the payment kind (R8), the status (R9, R15, R18), the amount against the order
        (R19), then the action's own rules (R6, R10-R16).
        """
        if self.in_batch_window(order.merchant):
            return Refusal.BATCH_WINDOW
        check = _CHECKS[action]
        refusal = check(self, order, amount)
        if refusal is None:
            _APPLY[action](self, order, amount)
            self._wrote(order, self.now)
        return refusal

    def _check_close(self, order: LedgerOrder, amount: int) -> Refusal | None:
        if order.kind is PaymentKind.UNIONPAY:
            return Refusal.UNIONPAY
        if order.status not in _HOLDING:
            return Refusal.WRONG_STATE
        if amount > order.amount:
            return Refusal.BAD_AMOUNT
        if (
            not order.merchant.auto_close
            and self.now >= order.authorized_at + self.settings.close_limit
        ):
            return Refusal.OVER_DATE
        return self._full_amount(Action.CLOSE, order, amount)

    def _check_refund(self, order: LedgerOrder, amount: int) -> Refusal | None:
        if order.status in _HOLDING:
            return Refusal.NOT_CAPTURED  # R18: nothing is captured yet
        if order.status not in (GatewayStatus.TO_BE_CAPTURED, GatewayStatus.CAPTURED):
            return Refusal.WRONG_STATE
        if amount > order.amount:
            return Refusal.BAD_AMOUNT
        if not self.settings.stack_pending_refunds and order.pending():
            return Refusal.REFUND_PENDING
        if amount > order.net:
            return Refusal.OVER_CAPTURED
        if order.kind.full_refund_only and amount != order.net:
            if order.kind is PaymentKind.INSTALLMENT:
                return Refusal.INSTALLMENT_FULL_ONLY
            return Refusal.BONUS_FULL_ONLY
        if not order.capture_settled and amount == order.net:
            return Refusal.FULL_REFUND_PENDING_CAPTURE
        if order.capture_settled and order.merchant.balance < amount:
            return Refusal.INSUFFICIENT_BALANCE
        return None

    def _check_cancel(self, order: LedgerOrder, amount: int) -> Refusal | None:
        if order.kind is PaymentKind.UNIONPAY:
            return Refusal.UNIONPAY
        if order.status is not GatewayStatus.TO_BE_CAPTURED:
            return Refusal.WRONG_STATE
        if order.capture_settled and not self.settings.cancel_restores_pending_refund:
            return Refusal.WRONG_STATE
        if amount > order.amount:
            return Refusal.BAD_AMOUNT
        return self._full_amount(Action.CANCEL, order, amount)

    def _check_abandon(self, order: LedgerOrder, amount: int) -> Refusal | None:
        if order.kind is PaymentKind.UNIONPAY:
            return Refusal.UNIONPAY
        if order.status is GatewayStatus.CANCELED:
            return Refusal.ALREADY_ABANDONED
        if order.status not in _HOLDING:
            return Refusal.WRONG_STATE
        if amount > order.amount:
            return Refusal.BAD_AMOUNT
        return self._full_amount(Action.ABANDON, order, amount)

    def _full_amount(self, action: Action, order: LedgerOrder, amount: int) -> Refusal | None:
        """[HOUSE]: C and E carry the order amount, and N too when strict (R14; see
        ``full_amount_actions``). Otherwise N abandons the whole authorization whatever its
        amount, as ECPay does [OBS]."""
        if action in self.settings.full_amount_actions and amount != order.amount:
            return Refusal.AMOUNT_NOT_ORDER_AMOUNT
        return None

    def _apply_close(self, order: LedgerOrder, amount: int) -> None:
        order.status = GatewayStatus.TO_BE_CAPTURED
        order.net = amount

    def _apply_refund(self, order: LedgerOrder, amount: int) -> None:
        order.net -= amount
        order.refunds.append(_Refund(amount, self.now))
        if order.capture_settled:
            order.status = GatewayStatus.TO_BE_CAPTURED
            if self.settings.debit_refunds:
                order.merchant.balance -= amount

    def _apply_cancel(self, order: LedgerOrder, _amount: int) -> None:
        pending = [r for r in order.refunds if not r.settled]
        undone = sum(r.amount for r in pending)
        order.refunds = [r for r in order.refunds if r.settled]
        if order.capture_settled:
            # R15 [HOUSE]: back to Captured with the pending refunds undone (and repaid).
            order.status = GatewayStatus.CAPTURED
            order.net += undone
            if self.settings.debit_refunds:
                order.merchant.balance += undone
        else:
            # R15: the close is cancelled, the hold is still live ("Operation canceled").
            order.status = GatewayStatus.OPERATION_CANCELED
            order.net = 0

    def _apply_abandon(self, order: LedgerOrder, _amount: int) -> None:
        order.status = GatewayStatus.CANCELED
        order.net = 0


class _Tally:
    """How many orders one batch settled, counted across its pieces."""

    __slots__ = ("settled",)

    def __init__(self) -> None:
        self.settled = 0


def _shown(view: OrderView) -> tuple[GatewayStatus, int, tuple[CloseRowView, ...]]:
    """What CreditDetail shows that can change: a difference here is a write."""
    return view.status, view.closed_amount, view.close_rows


def _quiet(kind: EventKind, at: dt.datetime, **fields: Any) -> None:
    """A recorder that keeps nothing (restoring a ledger is not an event of it)."""


def _rows_json(rows: Sequence[CloseRowView]) -> list[dict[str, Any]]:
    return [
        {"status": row.status.name, "amount": row.amount, "at": row.at.isoformat()} for row in rows
    ]


def _row(item: Reader) -> CloseRowView:
    return CloseRowView(
        item.member("status", GatewayStatus), item.integer("amount"), item.time("at")
    )


def _order_json(order: LedgerOrder) -> dict[str, Any]:
    """One order for a state file: its truth and the CreditDetail views it keeps."""
    return {
        "merchant_id": order.merchant.merchant_id,
        "merchant_trade_no": order.merchant_trade_no,
        "trade_no": order.trade_no,
        "trade_id": order.trade_id,
        "amount": order.amount,
        "kind": order.kind.name,
        "authorized_at": order.authorized_at.isoformat(),
        "status": order.status.name,
        "net": order.net,
        "capture_settled": order.capture_settled,
        "rows": _rows_json(order.rows),
        "refunds": [
            {"amount": refund.amount, "at": refund.at.isoformat(), "settled": refund.settled}
            for refund in order.refunds
        ],
        "history": [
            {
                "changed_at": at.isoformat(),
                "status": view.status.name,
                "closed_amount": view.closed_amount,
                "refunded_total": view.refunded_total,
                "pending_refund_total": view.pending_refund_total,
                "capture_settled": view.capture_settled,
                "rows": _rows_json(view.close_rows),
            }
            for at, view in order.history
        ],
    }


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    def call() -> None:
        fn(*args)

    return call


def _key_bytes(given: Secret[object]) -> Secret[bytes]:
    """A HashKey or HashIV that :class:`AesCodec` has accepted, as its 16 bytes (R1)."""
    value = given.reveal()
    if isinstance(value, str):
        return Secret(value.encode("ascii"))
    assert isinstance(value, bytes | bytearray)  # AesCodec refused anything else
    return Secret(bytes(value))


def _merchant_id(given: Secret[object], field: str) -> str:
    """MerchantID / PlatformID: String(10), letters and digits (section 3).

    The error is raised here, where only the :class:`Secret` is a local, and never shows the
    value: arguments swapped by mistake would put a HashKey in it.
    """
    problem = _merchant_id_problem(given.reveal(), field)
    if problem is not None:
        raise problem
    return cast("str", given.reveal())


def _merchant_id_problem(value: object, field: str) -> EcpayError | None:
    if not isinstance(value, str):
        return InvalidArgumentType(f"{field} must be a str, not {type(value).__name__}")
    if 1 <= len(value) <= 10 and value.isascii() and value.isalnum():
        return None
    if len(value) == 16:
        got = "16 characters, the length of a HashKey or HashIV: are the arguments swapped?"
    elif 1 <= len(value) <= 10:
        got = "a character that is not an ASCII letter or digit"
    else:
        got = f"{len(value)} characters"
    return InvalidArgument(f"{field} must be 1-10 letters or digits, got {got}")


_CHECKS: dict[Action, Callable[[Ledger, LedgerOrder, int], Refusal | None]] = {
    Action.CLOSE: Ledger._check_close,
    Action.REFUND: Ledger._check_refund,
    Action.CANCEL: Ledger._check_cancel,
    Action.ABANDON: Ledger._check_abandon,
}
_APPLY: dict[Action, Callable[[Ledger, LedgerOrder, int], None]] = {
    Action.CLOSE: Ledger._apply_close,
    Action.REFUND: Ledger._apply_refund,
    Action.CANCEL: Ledger._apply_cancel,
    Action.ABANDON: Ledger._apply_abandon,
}
