"""The emulator's request pipeline: one request in, one reply (or transport failure) out.

Every front door shares it: :attr:`Emulator.handler` and :attr:`Emulator.async_handler` for
``httpx.MockTransport`` and the ASGI app of :mod:`._asgi`. A request goes through two phases
so that a DELAY fault can wait between them in whatever way its front door waits
(:meth:`Pipeline.receive`: route, read the envelope (section 2), pick an armed fault;
:meth:`Pipeline.process`: apply it to the :class:`~._state.Ledger` (sections 3-7) unless the
fault stops it, and shape the reply). A DoAction let in by ``Fault.LATE_APPLY`` waits in the
pipeline's queue of landings until the clock reaches its moment (section 9, R22); the clock,
which belongs to :class:`~._emulator.Emulator`, lands it with :meth:`Pipeline.land`.

This module sits below the facade (``_emulator``) and the ASGI app (``_asgi``) and imports
neither. Sections are those of docs/ecpay-api.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import itertools
import json
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import httpx

from ecpay_lifecycle._exceptions import CodecError, ConfigurationError, InvalidArgumentType
from ecpay_lifecycle._models import Action, check_order_number

from ._events import EventKind, Landing
from ._faults import Endpoint, Fault, FaultRule, Faults
from ._persist import Reader
from ._settings import EmulatorSettings, Refusal
from ._state import Ledger, LedgerMerchant, LedgerOrder, Recorder
from ._wire import (
    DECRYPT_FAIL,
    STALE_TIMESTAMP,
    TRANS_MESSAGES,
    EnvelopeProblem,
    credit_detail_reply,
    echo,
    garble,
    other_number,
    query_trade_reply,
    read_envelope,
)

__all__ = ["Failure", "InFlight", "Pipeline", "Received", "Reply"]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
#: A landing so far away that it overflows the calendar never lands.
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


class Failure(enum.Enum):
    """What the transport does instead of delivering the reply."""

    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    DISCONNECT = "disconnect"
    RESET = "reset"


@attrs.frozen
class Reply:
    """A finished answer; ``failure`` (with ``hang`` seconds for real servers) hides it."""

    status: int
    body: bytes
    content_type: str = _JSON
    failure: Failure | None = None
    hang: float = 0.0


@attrs.frozen
class Received:
    """A request whose envelope decrypted, waiting (maybe after a DELAY) to be processed.

    ``timestamp`` is its ``RqHeader.Timestamp`` (epoch seconds), ``received_at`` the emulator
    time it arrived.
    """

    endpoint: Endpoint
    merchant: LedgerMerchant
    inner: dict[str, Any]
    action: Action | None
    rule: FaultRule | None
    timestamp: float
    received_at: dt.datetime

    @property
    def delay(self) -> float:
        return self.rule.seconds if self.rule and self.rule.fault is Fault.DELAY else 0.0


@attrs.frozen(eq=False)
class InFlight:
    """A DoAction in flight (``Fault.LATE_APPLY``): it lands at ``at``; ``seq`` breaks ties."""

    seq: int
    at: dt.datetime
    got: Received

    def view(self) -> Landing:
        inner = self.got.inner
        amount = inner.get("TotalAmount")
        return Landing(
            at=self.at,
            received_at=self.got.received_at,
            timestamp=dt.datetime.fromtimestamp(self.got.timestamp, dt.UTC),
            merchant_id=echo(inner.get("MerchantID")) or self.got.merchant.merchant_id,
            merchant_trade_no=echo(inner.get("MerchantTradeNo")) or None,
            action=self.got.action,
            amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
            request=types.MappingProxyType(inner),
        )


@attrs.frozen
class _Outcome:
    """What processing a request did: the inner reply, whether the order changed, why not."""

    reply: dict[str, Any]
    applied: bool = False
    refusal: Refusal | None = None
    merchant_trade_no: str | None = None
    amount: int | None = None


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Pipeline:
    """The request path of one emulator: its ledger, lock, faults and event log, and the
    DoActions in flight. Thread-safe under the emulator's lock.

    ``catch_up`` and ``glide`` are the emulator's clock (:meth:`Emulator.catch_up` and its
    cheap part): the pipeline brings the clock up to date before it reads the ledger, and a
    server asks :meth:`glide` on its event loop whether the catching up needs a thread.
    """

    def __init__(
        self,
        ledger: Ledger,
        lock: threading.RLock,
        faults: Faults,
        record: Recorder,
        *,
        catch_up: Callable[[], None],
        glide: Callable[[], bool],
    ) -> None:
        self._ledger = ledger
        self._lock = lock
        self._faults = faults
        self._record = record
        self._catch_up = catch_up
        self._glide = glide
        self._landings: list[InFlight] = []
        self._landing_seq = itertools.count(1)

    @property
    def settings(self) -> EmulatorSettings:
        """The emulator's settings (the ledger's)."""
        return self._ledger.settings

    def catch_up(self) -> None:
        """Bring the emulator up to its running clock (:meth:`Emulator.catch_up`)."""
        self._catch_up()

    def glide(self) -> bool:
        """The cheap part of :meth:`catch_up`, safe on an event loop: whether the emulator is
        caught up without running batches, day rules or landings (frozen: always)."""
        return self._glide()

    # -- DoActions in flight (section 9) -----------------------------------------------------

    def queued(self) -> list[InFlight]:
        """The DoActions in flight, in landing order. The caller holds the lock."""
        return sorted(self._landings, key=lambda landing: (landing.at, landing.seq))

    def next_landing(self) -> dt.datetime | None:
        """When the first DoAction in flight lands (None: none). The caller holds the lock."""
        return min((landing.at for landing in self._landings), default=None)

    def dump_landings(self) -> list[dict[str, Any]]:
        """The DoActions in flight, for a state file. The caller holds the lock."""
        return [_landing_json(landing) for landing in self.queued()]

    def restore_landings(self, items: Iterable[Reader]) -> None:
        """Put back the DoActions in flight of a state file (:meth:`dump_landings`); their
        merchants must be in the ledger already. Raises :class:`ConfigurationError`."""
        self._landings = [self._restore_landing(item) for item in items]
        self._landing_seq = itertools.count(
            max((landing.seq for landing in self._landings), default=0) + 1
        )

    def _restore_landing(self, item: Reader) -> InFlight:
        merchant = self._ledger.merchants.get(item.text("merchant_id"))
        if merchant is None:
            raise ConfigurationError(f"{item.where}.merchant_id is not one of the merchants")
        request = item.raw("request")
        if not isinstance(request, dict):
            raise ConfigurationError(f"{item.where}.request must be a JSON object")
        action = item.optional_text("action")
        got = Received(
            endpoint=item.member("endpoint", Endpoint),
            merchant=merchant,
            inner=request,
            action=None if action is None else _action(action),
            rule=None,
            timestamp=item.number("timestamp"),
            received_at=item.time("received_at"),
        )
        return InFlight(item.integer("seq"), item.time("at"), got)

    # -- the two phases ----------------------------------------------------------------------

    def receive(self, method: str, path: str, body: bytes) -> Received | Reply:
        """Phase one: route, read and decrypt the envelope, pick a fault. Never raises."""
        endpoint = Endpoint.from_path(path)
        if endpoint is None:
            return Reply(404, b"Not Found", _TEXT)
        if method.upper() != "POST":
            return Reply(405, b"Method Not Allowed", _TEXT)
        self._catch_up()
        with self._lock:
            # A request arriving at or after a landing's moment finds it landed (R22's fence).
            for landing in self.queued():
                if landing.at <= self._ledger.now:
                    self.land(landing)
            envelope = read_envelope(body)
            if isinstance(envelope, EnvelopeProblem):
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    envelope.message,
                    trans_code=envelope.trans_code,
                    trans_msg=envelope.trans_msg,
                )
            merchant = self._ledger.merchants.get(envelope.merchant_id)
            if merchant is None:
                return self._reject(endpoint, envelope.merchant_id, "MerchantID is not registered")
            now = self._ledger.now.timestamp()
            if abs(now - envelope.timestamp) > self.settings.timestamp_tolerance.total_seconds():
                code, text = STALE_TIMESTAMP
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    "Timestamp is outside 10 minutes (R20)",
                    trans_code=code,
                    trans_msg=text,
                )
            try:
                inner = merchant.codec.decrypt(envelope.data)
            except CodecError:
                code, text = DECRYPT_FAIL
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    "Data does not decrypt (R1)",
                    trans_code=code,
                    trans_msg=text,
                )
            platform = inner.get("PlatformID")
            if platform not in (None, "") and platform != envelope.merchant_id:
                return self._reject(
                    endpoint,
                    envelope.merchant_id,
                    "PlatformID is set and differs from MerchantID",
                    inner,
                )
            action = _action(inner.get("Action")) if endpoint is Endpoint.DO_ACTION else None
            number = echo(inner.get("MerchantTradeNo")) or None
            rule = self._faults.take(endpoint, action, number)
            return Received(
                endpoint, merchant, inner, action, rule, envelope.timestamp, self._ledger.now
            )

    def _reject(
        self,
        endpoint: Endpoint,
        merchant_id: str,
        message: str,
        inner: dict[str, Any] | None = None,
        *,
        trans_code: int | None = None,
        trans_msg: str | None = None,
    ) -> Reply:
        """A bad envelope: TransCode != 1, nothing processed, nothing changed (section 2).

        ``trans_code`` / ``trans_msg``: ECPay's own answer where observed (110, 104); otherwise
        the settings' bad-envelope code and ``message``.
        """
        code = self.settings.bad_envelope_trans_code if trans_code is None else trans_code
        self._record(
            EventKind.REQUEST,
            self._ledger.now,
            merchant_id=merchant_id or None,
            endpoint=endpoint,
            request=None if inner is None else types.MappingProxyType(inner),
            trans_code=code,
            note=f"bad envelope: {message}",
        )
        body = _dumps(self._outer(merchant_id, code, trans_msg or message, ""))
        return Reply(self.settings.envelope_error_http_status, body)

    def _outer(self, merchant_id: str, code: int, message: str, data: str) -> dict[str, Any]:
        """The reply envelope (section 2), with the ID and TransCode types the settings
        ask for (``numeric_merchant_ids``, ``string_trans_code``)."""
        return {
            "MerchantID": self._id(merchant_id),
            "RpHeader": {"Timestamp": int(self._ledger.now.timestamp())},
            "TransCode": str(code) if self.settings.string_trans_code else code,
            "TransMsg": message,
            "Data": data,
        }

    def _id(self, value: object) -> object:
        """A MerchantID or PlatformID as a JSON number when ``numeric_merchant_ids`` is on and
        the number spells it exactly (no leading zero); otherwise as it is."""
        if (
            self.settings.numeric_merchant_ids
            and isinstance(value, str)
            and value.isascii()
            and value.isdigit()
            and str(int(value)) == value
        ):
            return int(value)
        return value

    def _shape_ids(self, inner: dict[str, Any]) -> dict[str, Any]:
        """The inner reply with its MerchantID and PlatformID typed as the settings ask."""
        if not self.settings.numeric_merchant_ids:
            return inner
        return {
            key: self._id(value) if key in ("MerchantID", "PlatformID") else value
            for key, value in inner.items()
        }

    async def answer(self, method: str, path: str, body: bytes) -> Reply:
        """One request on an event loop: :meth:`receive`, a DELAY fault awaited, :meth:`process`.
        Whatever a running clock has due (batches, day rules, landings) runs in a thread first,
        never on the loop, also after the delay let real time pass."""
        if not self.glide():
            await asyncio.to_thread(self.catch_up)
        got = self.receive(method, path, body)
        if isinstance(got, Reply):
            return got
        if got.delay:
            await asyncio.sleep(got.delay)
            if not self.glide():
                await asyncio.to_thread(self.catch_up)
        return self.process(got)

    def process(self, got: Received) -> Reply:
        """Phase two: apply the request (unless a fault stops it first) and shape the reply."""
        self._catch_up()  # a DELAY fault may have let real time pass
        with self._lock:
            fault = got.rule.fault if got.rule else None
            outcome: _Outcome | None = None
            note = ""
            if fault is None or fault.applies_change:
                outcome = self._dispatch(got)
            elif fault is Fault.LATE_APPLY:
                note = self._queue_landing(got)
            reply = self._deliver(got, outcome)
            trans_code = 1 if outcome else _trans_code_of(reply)
            self._record_request(got, outcome, fault, trans_code, note)
            return reply

    def _record_request(
        self,
        got: Received,
        outcome: _Outcome | None,
        fault: Fault | None,
        trans_code: int | None,
        note: str = "",
    ) -> None:
        self._record(
            EventKind.REQUEST,
            self._ledger.now,
            merchant_id=echo(got.inner.get("MerchantID")) or got.merchant.merchant_id,
            merchant_trade_no=(outcome.merchant_trade_no if outcome else None)
            or (echo(got.inner.get("MerchantTradeNo")) or None),
            endpoint=got.endpoint,
            action=got.action,
            amount=outcome.amount if outcome else None,
            request=types.MappingProxyType(got.inner),
            applied=bool(outcome and outcome.applied),
            reply=types.MappingProxyType(outcome.reply) if outcome else None,
            trans_code=trans_code,
            rtn_code=_rtn_code(outcome.reply) if outcome else None,
            refusal=outcome.refusal if outcome else None,
            fault=fault,
            note=note,
        )

    def _queue_landing(self, got: Received) -> str:
        """LATE_APPLY: ECPay has the DoAction; it lands ``land_after`` from now (section 9)."""
        assert got.rule is not None  # only LATE_APPLY queues
        try:
            at = got.received_at + got.rule.land_after
        except OverflowError:
            at = _NEVER
        self._landings.append(InFlight(next(self._landing_seq), at, got))
        return f"in flight: lands at {at.isoformat()}"

    def land(self, landing: InFlight) -> None:
        """A DoAction in flight lands now: R20 refuses it if its Timestamp has grown too old,
        otherwise it is processed like any DoAction at this moment (rules checked now). The
        caller holds the lock."""
        self._landings.remove(landing)
        got = landing.got
        came = f"landed late (received {got.received_at.isoformat()})"
        age = self._ledger.now.timestamp() - got.timestamp
        if age > self.settings.timestamp_tolerance.total_seconds():
            code, text = STALE_TIMESTAMP
            note = f"{came}: {text}, refused (R20)"
            self._record_request(got, None, Fault.LATE_APPLY, code, note)
            return
        self._record_request(got, self._dispatch(got), Fault.LATE_APPLY, 1, came)

    def _deliver(self, got: Received, outcome: _Outcome | None) -> Reply:
        """Wrap the inner reply in the envelope, or let the armed fault spoil it."""
        rule = got.rule
        merchant = got.merchant
        if outcome is None:
            assert rule is not None  # only a before-apply fault skips processing
            return self._before_apply_reply(rule, merchant.merchant_id)
        inner = outcome.reply
        outer_id = merchant.merchant_id
        if rule is not None and rule.fault is Fault.MISMATCHED_REPLY:
            inner, outer_id = _mismatch(inner, outer_id)
        data = merchant.replies.encrypt(self._shape_ids(inner), self.settings.reply_url_encoding)
        if rule is not None and rule.fault is Fault.GARBLED_DATA:
            data = garble(merchant.codec, data)
        body = _dumps(self._outer(outer_id, 1, "Success", data))
        status = 200 if outcome.refusal is None else self.settings.refusal_http_status
        fault = rule.fault if rule else None
        if fault is Fault.TIMEOUT_AFTER_APPLY:
            assert rule is not None
            return Reply(200, body, failure=Failure.READ_TIMEOUT, hang=rule.seconds)
        if fault is Fault.LOST_REPLY:
            return Reply(200, body, failure=Failure.DISCONNECT)
        if fault is Fault.CONNECTION_RESET:
            return Reply(200, body, failure=Failure.RESET)
        if fault is Fault.SERVER_ERROR_AFTER_APPLY:
            assert rule is not None
            return _status_reply(rule.status_code)
        return Reply(status, body)

    def _before_apply_reply(self, rule: FaultRule, merchant_id: str) -> Reply:
        fault = rule.fault
        if fault is Fault.TIMEOUT_BEFORE_APPLY:
            return Reply(
                504, b"Gateway Timeout", _TEXT, failure=Failure.CONNECT_TIMEOUT, hang=rule.seconds
            )
        if fault in (Fault.READ_TIMEOUT_BEFORE_APPLY, Fault.LATE_APPLY):
            return Reply(
                504, b"Gateway Timeout", _TEXT, failure=Failure.READ_TIMEOUT, hang=rule.seconds
            )
        if fault is Fault.RATE_LIMITED:
            return _status_reply(403)
        if fault is Fault.SERVER_ERROR_BEFORE_APPLY:
            return _status_reply(rule.status_code)
        code = self.settings.bad_envelope_trans_code if rule.trans_code is None else rule.trans_code
        message = TRANS_MESSAGES.get(code, "TransCode error (fault)")
        body = _dumps(self._outer(merchant_id, code, message, ""))
        return Reply(self.settings.envelope_error_http_status, body)

    def _dispatch(self, got: Received) -> _Outcome:
        if got.endpoint is Endpoint.DO_ACTION:
            return self._do_action(got)
        if got.endpoint is Endpoint.CREDIT_DETAIL:
            return self._credit_detail(got)
        return self._query_trade(got)

    def _refuse(self, reason: Refusal, echoes: dict[str, Any], **extra: Any) -> _Outcome:
        answer = self.settings.refusal(reason)
        reply = {"RtnCode": answer.rtn_code, "RtnMsg": answer.rtn_msg, **echoes}
        return _Outcome(reply, refusal=reason, **extra)

    def _lookup(self, got: Received, *, need_trade_no: bool) -> LedgerOrder | Refusal:
        """The order the inner data names, if this envelope's merchant may see it (section 3).

        The inner MerchantID is checked first, as ECPay does on all three endpoints [OBS]:
        missing (5000220), then not the envelope's nor one of its platform's merchants
        (5000261); then the numbers (R19); then the order (10000185).
        """
        inner = got.inner
        merchant_id = inner.get("MerchantID")
        number = inner.get("MerchantTradeNo")
        trade_no = inner.get("TradeNo")
        if merchant_id is None or merchant_id == "":
            return Refusal.MERCHANT_ID_MISSING
        if not isinstance(merchant_id, str):
            return Refusal.BAD_PARAMETER
        outer = got.merchant.merchant_id
        owner = self._ledger.merchants.get(merchant_id)
        platform = inner.get("PlatformID")
        on_behalf = platform == outer and owner is not None and owner.platform_id == outer
        if merchant_id != outer and not on_behalf:
            return Refusal.MERCHANT_ID_MISMATCH
        if not _is_number(number):
            return Refusal.BAD_PARAMETER
        if (need_trade_no or trade_no not in (None, "")) and not _is_number(trade_no):
            return Refusal.BAD_PARAMETER
        assert isinstance(number, str)
        order = self._ledger.find(merchant_id, number)
        if order is None or trade_no not in (None, "", order.trade_no):
            return Refusal.ORDER_NOT_FOUND
        return order

    def _do_action(self, got: Received) -> _Outcome:
        """DoAction (section 3): validate the inner data (R19), find the order, apply or refuse."""
        inner = got.inner
        echoes = {
            "PlatformID": echo(inner.get("PlatformID")),
            "MerchantID": echo(inner.get("MerchantID")),
            "MerchantTradeNo": echo(inner.get("MerchantTradeNo")),
            "TradeNo": echo(inner.get("TradeNo")),
        }
        number = echoes["MerchantTradeNo"] or None
        found = self._lookup(got, need_trade_no=True)
        amount = inner.get("TotalAmount")
        if isinstance(found, Refusal) and found is not Refusal.ORDER_NOT_FOUND:
            return self._refuse(found, echoes, merchant_trade_no=number)
        if got.action is None or "TotalAmount" not in inner:
            return self._refuse(Refusal.BAD_PARAMETER, echoes, merchant_trade_no=number)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return self._refuse(Refusal.BAD_AMOUNT, echoes, merchant_trade_no=number)
        if isinstance(found, Refusal):
            return self._refuse(found, echoes, merchant_trade_no=number, amount=amount)
        refusal = self._ledger.do_action(found, got.action, amount)
        if refusal is not None:
            return self._refuse(refusal, echoes, merchant_trade_no=number, amount=amount)
        reply = {"RtnCode": 1, "RtnMsg": self.settings.success_message, **echoes}
        return _Outcome(reply, applied=True, merchant_trade_no=number, amount=amount)

    def _credit_detail(self, got: Received) -> _Outcome:
        """CreditDetail/QueryTrade (section 4): the order's status, ClsAmt and close rows, as they
        were ``credit_detail_lag`` ago and, under STALE_QUERY, some writes before that."""
        found = self._lookup(got, need_trade_no=False)
        if isinstance(found, Refusal):
            return self._refuse(found, {})
        rule = got.rule
        writes_back = rule.writes if rule is not None and rule.fault is Fault.STALE_QUERY else 0
        view = self._ledger.credit_detail_view(found, writes_back=writes_back)
        reply = credit_detail_reply(view, self.settings.credit_detail_flavour)
        return _Outcome(reply, merchant_trade_no=view.merchant_trade_no)

    def _query_trade(self, got: Received) -> _Outcome:
        """Cashier/QueryTrade (section 5): the order and its payment kind."""
        found = self._lookup(got, need_trade_no=False)
        if isinstance(found, Refusal):
            # Only RtnCode and RtnMsg, as ECPay's recorded refusals of this endpoint [OBS].
            return self._refuse(found, {})
        view = self._ledger.view(found)
        settings = self.settings
        reply = query_trade_reply(
            view,
            echo(got.inner.get("PlatformID")),
            message=settings.cashier_success_message,
            keys_by_kind=settings.cashier_keys_by_kind,
            one_time_card_info=settings.cashier_one_time_card_info,
        )
        return _Outcome(reply, merchant_trade_no=view.merchant_trade_no)


def _landing_json(landing: InFlight) -> dict[str, Any]:
    """A DoAction in flight, for a state file."""
    got = landing.got
    return {
        "seq": landing.seq,
        "at": landing.at.isoformat(),
        "received_at": got.received_at.isoformat(),
        "timestamp": got.timestamp,
        "merchant_id": got.merchant.merchant_id,
        "endpoint": got.endpoint.name,
        "action": None if got.action is None else got.action.value,
        "request": got.inner,
    }


def _action(value: object) -> Action | None:
    if not isinstance(value, str):
        return None
    try:
        return Action(value)
    except ValueError:
        return None


def _is_number(value: object) -> bool:
    """R19: 1-20 letters and digits."""
    if not isinstance(value, str):
        return False
    try:
        check_order_number(value)
    except (InvalidArgumentType, ValueError):
        return False
    return True


def _rtn_code(reply: Mapping[str, Any]) -> int | None:
    code = reply.get("RtnCode")
    return code if isinstance(code, int) else None


def _trans_code_of(reply: Reply) -> int | None:
    if reply.content_type != _JSON:
        return None
    code = json.loads(reply.body).get("TransCode")
    if isinstance(code, str) and code.isdigit():  # ``string_trans_code``
        return int(code)
    return code if isinstance(code, int) else None


def _status_reply(status: int) -> Reply:
    text = "Forbidden" if status == 403 else httpx.codes.get_reason_phrase(status) or "Error"
    return Reply(status, text.encode("utf-8"), _TEXT)


def _mismatch(inner: dict[str, Any], outer_id: str) -> tuple[dict[str, Any], str]:
    """R2 fault: change every echoed order number; with none to change, the outer MerchantID."""
    changed = dict(inner)
    touched = False
    for key in ("MerchantTradeNo", "TradeNo"):
        if key in changed:
            changed[key] = other_number(changed[key])
            touched = True
    info = changed.get("OrderInfo")
    if isinstance(info, dict):
        changed["OrderInfo"] = {
            **info,
            "MerchantTradeNo": other_number(info.get("MerchantTradeNo")),
            "TradeNo": other_number(info.get("TradeNo")),
        }
        touched = True
    if touched:
        return changed, outer_id
    return changed, other_number(outer_id)
