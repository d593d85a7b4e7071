"""Faults that tests switch on: the ways a request to ECPay can go wrong (sections 9, 10).

A fault is armed for an endpoint (and for DoAction, an action), optionally for one order and to
wake only after a DoAction, and for a number of requests; the next matching request that the
emulator can decrypt consumes it. Bad envelopes never consume faults. Whether the change is
applied before the fault hides the reply is part of each fault's contract, because that is
exactly what makes an outcome unknown to the client (section 9). Sections are those of
docs/ecpay-api.md.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import threading

import attrs

from ecpay_lifecycle._exceptions import InvalidArgument, InvalidArgumentType
from ecpay_lifecycle._models import Action, check_order_number

__all__ = ["MAX_FAULT_SECONDS", "Endpoint", "Fault", "FaultRule", "Faults"]


class Endpoint(enum.StrEnum):
    """The three ECPay endpoints the emulator serves (section 1); values are URL paths."""

    DO_ACTION = "/1.0.0/Credit/DoAction"
    CREDIT_DETAIL = "/1.0.0/CreditDetail/QueryTrade"
    QUERY_TRADE = "/1.0.0/Cashier/QueryTrade"

    @classmethod
    def from_path(cls, path: str) -> Endpoint | None:
        """The endpoint a URL path ends with (any prefix, e.g. a proxy's), or None."""
        trimmed = path.rstrip("/")
        for endpoint in cls:
            if trimmed.endswith(endpoint.value):
                return endpoint
        return None


class Fault(enum.Enum):
    """A way for one request to go wrong. ``applies_change`` says whether the order changes.

    Through ``httpx.MockTransport`` (:attr:`Emulator.handler`) the transport faults raise the
    httpx exception named below; through the ASGI app they become what a real server can do
    (a hang, a cut-off reply, an error status).
    """

    #: Wait ``seconds`` (real time), then answer normally. Changes applied.
    DELAY = "delay"
    #: ``httpx.ConnectTimeout``: the request never arrived. Nothing applied.
    #: ASGI: hang ``seconds`` and answer 504.
    TIMEOUT_BEFORE_APPLY = "timeout_before_apply"
    #: ``httpx.ReadTimeout`` and nothing applied (the server stalled before processing).
    #: ASGI: hang ``seconds`` and answer 504.
    READ_TIMEOUT_BEFORE_APPLY = "read_timeout_before_apply"
    #: ``httpx.ReadTimeout`` after the change was applied. ASGI: apply, hang ``seconds``, answer.
    TIMEOUT_AFTER_APPLY = "timeout_after_apply"
    #: ``httpx.RemoteProtocolError`` after the change was applied (connection dropped).
    #: ASGI: apply, send half the reply, close the connection.
    LOST_REPLY = "lost_reply"
    #: ``httpx.ReadError`` (connection reset) after the change was applied.
    #: ASGI: apply, send headers only, close the connection.
    CONNECTION_RESET = "connection_reset"
    #: HTTP ``status_code`` (5xx, default 502) and nothing applied.
    SERVER_ERROR_BEFORE_APPLY = "server_error_before_apply"
    #: HTTP ``status_code`` (5xx, default 502) after the change was applied.
    SERVER_ERROR_AFTER_APPLY = "server_error_after_apply"
    #: HTTP 403: calls came too fast (section 2). Nothing applied.
    RATE_LIMITED = "rate_limited"
    #: A reply with ``TransCode`` ``trans_code`` (default the settings' bad-envelope code).
    #: Nothing applied.
    TRANS_CODE_ERROR = "trans_code_error"
    #: TransCode 1 with a ``Data`` that is valid base64 but does not decrypt. Changes applied.
    GARBLED_DATA = "garbled_data"
    #: A well-formed reply whose echoed MerchantID, MerchantTradeNo and TradeNo differ from the
    #: request (R2). Changes applied.
    MISMATCHED_REPLY = "mismatched_reply"
    #: DoAction only. ``httpx.ReadTimeout`` and nothing changes now, but ECPay has the request:
    #: it lands ``land_after`` (emulator time) after it was received, when the clock gets there
    #: or a later request arrives then, and is refused by R20 if its Timestamp is over 10 minutes
    #: old by then. ASGI: hang ``seconds`` and answer 504. See :meth:`Emulator.pending_landings`.
    LATE_APPLY = "late_apply"
    #: CreditDetail only. The reply shows the order as it was ``writes`` writes ago (section 9:
    #: "served from data one write behind"). Processed normally otherwise.
    STALE_QUERY = "stale_query"

    @property
    def applies_change(self) -> bool:
        """Whether the request is processed (and the order changed) when this fault fires."""
        return self not in _BEFORE_APPLY


_BEFORE_APPLY = frozenset(
    {
        Fault.TIMEOUT_BEFORE_APPLY,
        Fault.READ_TIMEOUT_BEFORE_APPLY,
        Fault.SERVER_ERROR_BEFORE_APPLY,
        Fault.RATE_LIMITED,
        Fault.TRANS_CODE_ERROR,
        Fault.LATE_APPLY,
    }
)
_SERVER_ERRORS = frozenset({Fault.SERVER_ERROR_BEFORE_APPLY, Fault.SERVER_ERROR_AFTER_APPLY})
_HANGS = frozenset(
    {
        Fault.TIMEOUT_BEFORE_APPLY,
        Fault.READ_TIMEOUT_BEFORE_APPLY,
        Fault.TIMEOUT_AFTER_APPLY,
        Fault.LATE_APPLY,
    }
)
#: Faults that make sense for one endpoint only: arming them elsewhere is an error, and arming
#: them for any endpoint (``endpoint=None``) means that one.
_ONLY_FOR = {Fault.LATE_APPLY: Endpoint.DO_ACTION, Fault.STALE_QUERY: Endpoint.CREDIT_DETAIL}
_DEFAULT_DELAY = 0.05
_DEFAULT_HANG = 10.0
#: The longest a fault may delay or hang a request, in seconds: a served emulator holds a
#: connection that long, so an absurd number must not hold one for ever.
MAX_FAULT_SECONDS = 300.0
_DEFAULT_LAND_AFTER = dt.timedelta(seconds=60)
_ids = itertools.count(1)


@attrs.frozen(kw_only=True, eq=False)
class FaultRule:
    """One armed fault as returned by :meth:`Faults.inject`; compared by identity.

    ``endpoint``, ``action`` and ``merchant_trade_no`` of None match any; ``times`` None means
    until cleared. ``seconds`` is the delay (DELAY) or, through the ASGI app only, how long a
    timeout hangs. ``land_after`` is LATE_APPLY's, ``writes`` STALE_QUERY's. A rule with
    ``after_do_action`` stays dormant until a DoAction (for its order, if it names one) is
    received after it was armed (:meth:`Faults.is_dormant`).
    """

    fault: Fault
    endpoint: Endpoint | None
    action: Action | None
    times: int | None
    seconds: float
    status_code: int
    trans_code: int | None
    land_after: dt.timedelta = _DEFAULT_LAND_AFTER
    writes: int = 1
    merchant_trade_no: str | None = None
    after_do_action: bool = False
    id: int = attrs.field(factory=lambda: next(_ids))

    def matches(
        self, endpoint: Endpoint, action: Action | None, merchant_trade_no: str | None = None
    ) -> bool:
        """Whether a request to ``endpoint`` (DoAction ``action``) for the order
        ``merchant_trade_no`` triggers this rule, once awake."""
        if self.endpoint is not None and self.endpoint is not endpoint:
            return False
        if self.merchant_trade_no is not None and self.merchant_trade_no != merchant_trade_no:
            return False
        return self.action is None or self.action is action

    def wakes_on(self, endpoint: Endpoint, merchant_trade_no: str | None) -> bool:
        """Whether this request wakes the rule: a DoAction, for its order if it names one."""
        return endpoint is Endpoint.DO_ACTION and (
            self.merchant_trade_no is None or self.merchant_trade_no == merchant_trade_no
        )


class Faults:
    """The emulator's armed faults (``emulator.faults``). Thread-safe.

    >>> from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault
    >>> import datetime as dt
    >>> emulator = Emulator(now=dt.datetime(2026, 8, 1, 10, 0, tzinfo=dt.timezone.utc))
    >>> rule = emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    >>> emulator.faults.remaining(rule)
    1
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._rules: list[FaultRule] = []
        self._remaining: dict[int, int | None] = {}
        self._dormant: set[int] = set()

    def __repr__(self) -> str:
        return f"<Faults armed={len(self.pending())}>"

    def inject(
        self,
        fault: Fault,
        *,
        endpoint: Endpoint | None = None,
        action: Action | None = None,
        times: int | None = 1,
        seconds: float | None = None,
        status_code: int | None = None,
        trans_code: int | None = None,
        land_after: dt.timedelta | None = None,
        writes: int | None = None,
        merchant_trade_no: str | None = None,
        after_do_action: bool = False,
    ) -> FaultRule:
        """Arm ``fault`` for the next ``times`` matching requests and return the rule.

        Rules fire in the order they were armed; one request consumes at most one rule.
        ``action`` restricts the fault to DoAction requests with that Action,
        ``merchant_trade_no`` to requests whose inner MerchantTradeNo is that order.
        ``after_do_action`` keeps the rule dormant until a DoAction (for that order, if given)
        is received; the DoAction that wakes it is not matched by it. ``land_after`` (LATE_APPLY
        only; default 60 seconds, >= 0) is when the accepted DoAction lands; ``writes``
        (STALE_QUERY only; default 1, >= 1) is how many writes behind CreditDetail answers.
        ``seconds`` (a delay or a hang, real time) is at most :data:`MAX_FAULT_SECONDS` (300).
        Bad arguments raise :class:`InvalidArgument` / :class:`InvalidArgumentType` and arm
        nothing.
        """
        rule = _make_rule(
            fault,
            endpoint=endpoint,
            action=action,
            times=times,
            seconds=seconds,
            status_code=status_code,
            trans_code=trans_code,
            land_after=land_after,
            writes=writes,
            merchant_trade_no=merchant_trade_no,
            after_do_action=after_do_action,
        )
        with self._lock:
            self._rules.append(rule)
            self._remaining[rule.id] = times
            if rule.after_do_action:
                self._dormant.add(rule.id)
        return rule

    def clear(self) -> None:
        """Disarm every fault (dormant ones too).

        Requests a LATE_APPLY fault already let in are not faults any more but requests in
        flight inside ECPay: they still land (see :meth:`Emulator.pending_landings`).
        """
        with self._lock:
            self._rules.clear()
            self._remaining.clear()
            self._dormant.clear()

    def pending(self) -> tuple[FaultRule, ...]:
        """The rules that can still fire, in firing order."""
        with self._lock:
            return tuple(self._rules)

    def remaining(self, rule: FaultRule) -> int | None:
        """How many more requests ``rule`` will hit: 0 when spent, None when unlimited."""
        with self._lock:
            return self._remaining.get(rule.id, 0)

    def is_dormant(self, rule: FaultRule) -> bool:
        """Whether ``rule`` (armed with ``after_do_action``) still waits for its DoAction."""
        with self._lock:
            return rule.id in self._dormant

    def take(
        self, endpoint: Endpoint, action: Action | None, merchant_trade_no: str | None = None
    ) -> FaultRule | None:
        """Consume and return the first awake rule matching this request, if any; then let a
        DoAction wake the dormant rules waiting for it (so it never fires the rule it wakes)."""
        with self._lock:
            taken: FaultRule | None = None
            for rule in self._rules:
                if rule.id not in self._dormant and rule.matches(
                    endpoint, action, merchant_trade_no
                ):
                    taken = rule
                    break
            if taken is not None:
                left = self._remaining[taken.id]
                if left is not None:
                    left -= 1
                    self._remaining[taken.id] = left
                    if left == 0:
                        self._rules.remove(taken)
            for rule in self._rules:
                if rule.id in self._dormant and rule.wakes_on(endpoint, merchant_trade_no):
                    self._dormant.discard(rule.id)
            return taken


def _make_rule(
    fault: object,
    *,
    endpoint: object,
    action: object,
    times: object,
    seconds: object,
    status_code: object,
    trans_code: object,
    land_after: object,
    writes: object,
    merchant_trade_no: object,
    after_do_action: object,
) -> FaultRule:
    if not isinstance(fault, Fault):
        raise InvalidArgumentType(f"fault must be a Fault member, not {fault!r}")
    if endpoint is not None and not isinstance(endpoint, Endpoint):
        raise InvalidArgumentType(f"endpoint must be an Endpoint member or None, not {endpoint!r}")
    only = _ONLY_FOR.get(fault)
    if only is not None:
        if endpoint not in (None, only):
            raise InvalidArgument(f"{fault.name} applies to {only.name} only, not {endpoint}")
        endpoint = only
    if action is not None and not isinstance(action, Action):
        raise InvalidArgumentType(f"action must be an Action member or None, not {action!r}")
    if action is not None and endpoint not in (None, Endpoint.DO_ACTION):
        raise InvalidArgument(f"only DoAction requests have an action, not {endpoint}")
    if times is not None:
        if isinstance(times, bool) or not isinstance(times, int):
            raise InvalidArgumentType(f"times must be an int or None, not {times!r}")
        if times < 1:
            raise InvalidArgument(f"times must be at least 1, got {times}")
    if seconds is None:
        seconds = _DEFAULT_HANG if fault in _HANGS else _DEFAULT_DELAY
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= MAX_FAULT_SECONDS
    ):
        raise InvalidArgument(
            f"seconds must be a number from 0 to {MAX_FAULT_SECONDS:g}, got {seconds!r}"
        )
    if status_code is not None and fault not in _SERVER_ERRORS:
        raise InvalidArgument(f"status_code applies to server errors only, not {fault.name}")
    if trans_code is not None and fault is not Fault.TRANS_CODE_ERROR:
        raise InvalidArgument(f"trans_code applies to TRANS_CODE_ERROR only, not {fault.name}")
    if status_code is None:
        status_code = 403 if fault is Fault.RATE_LIMITED else 502
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise InvalidArgumentType(f"status_code must be an int, not {status_code!r}")
    if fault in _SERVER_ERRORS and not 500 <= status_code <= 599:
        raise InvalidArgument(f"a server error needs a 5xx status_code, got {status_code}")
    if trans_code is not None and (isinstance(trans_code, bool) or not isinstance(trans_code, int)):
        raise InvalidArgumentType(f"trans_code must be an int, not {trans_code!r}")
    if trans_code == 1:
        raise InvalidArgument("trans_code 1 means success; a TransCode error needs another code")
    number = None if merchant_trade_no is None else check_order_number(merchant_trade_no)
    if not isinstance(after_do_action, bool):
        raise InvalidArgumentType(f"after_do_action must be a bool, not {after_do_action!r}")
    return FaultRule(
        fault=fault,
        endpoint=endpoint,
        action=action,
        times=times,
        seconds=float(seconds),
        status_code=status_code,
        trans_code=trans_code,
        land_after=_land_after(fault, land_after),
        writes=_writes(fault, writes),
        merchant_trade_no=number,
        after_do_action=after_do_action,
    )


def _land_after(fault: Fault, land_after: object) -> dt.timedelta:
    if land_after is None:
        return _DEFAULT_LAND_AFTER
    if fault is not Fault.LATE_APPLY:
        raise InvalidArgument(f"land_after applies to LATE_APPLY only, not {fault.name}")
    if not isinstance(land_after, dt.timedelta):
        raise InvalidArgumentType(f"land_after must be a datetime.timedelta, not {land_after!r}")
    if land_after < dt.timedelta(0):
        raise InvalidArgument(f"land_after must be >= 0, got {land_after}")
    return land_after


def _writes(fault: Fault, writes: object) -> int:
    if writes is None:
        return 1
    if fault is not Fault.STALE_QUERY:
        raise InvalidArgument(f"writes applies to STALE_QUERY only, not {fault.name}")
    if isinstance(writes, bool) or not isinstance(writes, int):
        raise InvalidArgumentType(f"writes must be an int, not {writes!r}")
    if writes < 1:
        raise InvalidArgument(f"writes must be at least 1, got {writes}")
    return writes
