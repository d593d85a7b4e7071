"""Fault schedules for the emulator: :class:`ScheduledFault` and :func:`fault_schedules`.

Part of the public testing kit, re-exported by :mod:`ecpay_lifecycle.strategies`; it lives here
so that :mod:`ecpay_lifecycle._stateful` (``LifecycleMachine``'s ``faults`` switch) can draw
from it without importing the public face. Besides single random faults, a schedule can be one
of the fault sequences that once made money move twice (issue 8,
``tests/client/test_never_twice.py``; unknown outcomes are docs/ecpay-api.md section 9).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

import attrs
from hypothesis import strategies as st

from ._exceptions import InvalidArgument
from ._models import Action
from .emulator._emulator import Emulator
from .emulator._faults import Endpoint, Fault, FaultRule

__all__ = ["ScheduledFault", "fault_schedules"]


@attrs.frozen(kw_only=True)
class ScheduledFault:
    """One fault to arm on an :class:`~ecpay_lifecycle.emulator.Emulator`: which fault, on which
    endpoint and DoAction (None: any), for how many matching requests.

    The optional fields are :meth:`~ecpay_lifecycle.emulator.Faults.inject`'s:
    ``after_do_action`` keeps the fault dormant until a DoAction goes by (so it hits the query
    that confirms a step), ``land_after`` is when a LATE_APPLY DoAction lands, ``writes`` how
    many writes behind a STALE_QUERY answers, ``status_code`` a server error's HTTP status.
    """

    fault: Fault
    endpoint: Endpoint | None
    action: Action | None
    times: int
    after_do_action: bool = False
    land_after: dt.timedelta | None = None
    writes: int | None = None
    status_code: int | None = None

    def arm(self, emulator: Emulator, *, merchant_trade_no: str | None = None) -> FaultRule:
        """Arm this fault on ``emulator`` (for requests about ``merchant_trade_no`` only, if
        given); it fires on the next ``times`` matching requests."""
        return emulator.faults.inject(
            self.fault,
            endpoint=self.endpoint,
            action=self.action,
            times=self.times,
            after_do_action=self.after_do_action,
            land_after=self.land_after,
            writes=self.writes,
            status_code=self.status_code,
            merchant_trade_no=merchant_trade_no,
        )


#: Every fault but DELAY, which only costs real time and proves nothing about outcomes.
_FAULTS: Final = tuple(f for f in Fault if f is not Fault.DELAY)
#: Faults the emulator arms on one endpoint only.
_ONLY_ON: Final = {Fault.STALE_QUERY: Endpoint.CREDIT_DETAIL, Fault.LATE_APPLY: Endpoint.DO_ACTION}
#: Faults that hide the reply of a DoAction ECPay applied.
_LOST_AFTER_APPLY: Final = (
    Fault.LOST_REPLY,
    Fault.CONNECTION_RESET,
    Fault.TIMEOUT_AFTER_APPLY,
    Fault.SERVER_ERROR_AFTER_APPLY,
)
#: Ways the query that confirms a step can fail.
_QUERY_FAILURES: Final = (
    Fault.SERVER_ERROR_BEFORE_APPLY,
    Fault.TIMEOUT_BEFORE_APPLY,
    Fault.READ_TIMEOUT_BEFORE_APPLY,
    Fault.GARBLED_DATA,
)
#: When a late DoAction lands: at once, well inside ECPay's 10-minute window, at its edge, just
#: past it (refused by R20), and long after.
_LANDINGS: Final = tuple(dt.timedelta(seconds=s) for s in (0, 30, 599, 601, 1200))


def _on_do_action(fault: Fault, times: st.SearchStrategy[int]) -> st.SearchStrategy[ScheduledFault]:
    """``fault`` on the next DoAction (any action, or one), with a 5xx status if it has one."""
    server_error = fault in (Fault.SERVER_ERROR_BEFORE_APPLY, Fault.SERVER_ERROR_AFTER_APPLY)
    return st.builds(
        ScheduledFault,
        fault=st.just(fault),
        endpoint=st.just(Endpoint.DO_ACTION),
        action=st.none() | st.sampled_from(tuple(Action)),
        times=times,
        status_code=st.sampled_from((502, 500, 503, 504)) if server_error else st.none(),
    )


def _confirming_query(fault: Fault) -> st.SearchStrategy[ScheduledFault]:
    """``fault`` on the CreditDetail queries right after the next DoAction."""
    server_error = fault is Fault.SERVER_ERROR_BEFORE_APPLY
    return st.builds(
        ScheduledFault,
        fault=st.just(fault),
        endpoint=st.just(Endpoint.CREDIT_DETAIL),
        action=st.none(),
        times=st.integers(1, 2),
        after_do_action=st.just(True),
        writes=st.sampled_from((1, 2)) if fault is Fault.STALE_QUERY else st.none(),
        status_code=st.sampled_from((502, 500)) if server_error else st.none(),
    )


def _sequences() -> st.SearchStrategy[tuple[ScheduledFault, ...]]:
    """The fault sequences of issue 8 (``tests/client/test_never_twice.py``), simplest first."""
    once = st.just(1)
    return st.one_of(
        # A request sent but never processed: unknown until the fence, then sent once more.
        st.sampled_from((Fault.READ_TIMEOUT_BEFORE_APPLY, Fault.SERVER_ERROR_BEFORE_APPLY))
        .flatmap(lambda f: _on_do_action(f, once))
        .map(lambda f: (f,)),
        # The reply of an applied DoAction is lost and the confirming query fails too.
        st.tuples(
            st.sampled_from(_LOST_AFTER_APPLY).flatmap(lambda f: _on_do_action(f, once)),
            st.sampled_from(_QUERY_FAILURES).flatmap(_confirming_query),
        ),
        # The reply is lost and the confirming query answers one (or two) writes behind.
        st.tuples(
            st.sampled_from(_LOST_AFTER_APPLY).flatmap(lambda f: _on_do_action(f, once)),
            _confirming_query(Fault.STALE_QUERY),
        ),
        # ECPay has the DoAction but applies it late (or never: R20), maybe seen one write behind.
        st.tuples(
            st.builds(
                ScheduledFault,
                fault=st.just(Fault.LATE_APPLY),
                endpoint=st.just(Endpoint.DO_ACTION),
                action=st.none() | st.sampled_from(tuple(Action)),
                times=once,
                land_after=st.sampled_from(_LANDINGS),
            ),
            st.lists(_confirming_query(Fault.STALE_QUERY), max_size=1).map(tuple),
        ).map(lambda pair: (pair[0], *pair[1])),
    )


def fault_schedules(
    *,
    faults: Sequence[Fault] = _FAULTS,
    endpoints: Sequence[Endpoint | None] = (None, *Endpoint),
    max_faults: int = 3,
    sequences: bool = False,
) -> st.SearchStrategy[tuple[ScheduledFault, ...]]:
    """Fault plans for the emulator: up to ``max_faults`` faults, each on an endpoint (or any),
    a DoAction (or any) and for one or two requests.

    With ``sequences``, a plan may instead be one of the sequences that once made money move
    twice (docs/ecpay-api.md section 9): a DoAction that times out or meets a 5xx before ECPay
    applies it; a reply lost after ECPay applied it (dropped, reset, timed out, 5xx) while the
    query that confirms it fails or answers one or two writes behind; a DoAction ECPay applies
    late, at once, after 30 s, at and just past its 10-minute window (R20), or 20 minutes on.
    This is what ``LifecycleMachine.faults = True`` draws from.

    Arm a plan with ``for fault in plan: fault.arm(emulator)`` before (or between) the steps of
    a flow; faults fire in the order armed. Shrinks toward no fault at all, then toward a single
    fault on any request, so a failure is reported with the fewest faults that cause it.
    """
    if not faults:
        raise InvalidArgument("fault_schedules needs at least one fault")
    if max_faults < 0:
        raise InvalidArgument(f"max_faults must be 0 or more, got {max_faults}")

    def on_its_endpoints(fault: Fault) -> st.SearchStrategy[ScheduledFault]:
        # A fault that only one endpoint can have goes there; an action only on DoAction.
        only = _ONLY_ON.get(fault)
        allowed = tuple(e for e in endpoints if only is None or e in (None, only))
        if not allowed:
            allowed = (only,)
        return st.sampled_from(allowed).flatmap(
            lambda endpoint: st.builds(
                ScheduledFault,
                fault=st.just(fault),
                endpoint=st.just(endpoint),
                action=st.none()
                if endpoint not in (None, Endpoint.DO_ACTION) or only is Endpoint.CREDIT_DETAIL
                else st.one_of(st.none(), st.sampled_from(tuple(Action))),
                times=st.integers(1, 2),
            )
        )

    one = st.sampled_from(tuple(faults)).flatmap(on_its_endpoints)
    plans = st.lists(one, max_size=max_faults).map(tuple)
    return st.one_of(plans, _sequences()) if sequences else plans
