"""What the clients return, and the one pure judgement behind unknown outcomes.

Unknown outcomes are docs/ecpay-api.md section 9.

:class:`Outcome` is what ``capture``, ``refund`` and ``abandon`` return; :class:`Reconciliation`
is what ``reconcile`` returns. :func:`judge` decides, from the order before a step, the state the
step expected and what a fresh query shows, whether the step took effect. The clients call it
after every DoAction, whether its reply arrived or was lost, and ``reconcile`` calls it later; it
does no I/O, so every case is tested directly.
"""

from __future__ import annotations

import datetime as dt
import enum

import attrs

from ._lifecycle import after_batch
from ._models import Action, Intent, OrderSnapshot, Plan, State

__all__ = [
    "Outcome",
    "Reconciliation",
    "Resolution",
    "StepResult",
    "SweepReport",
    "Verdict",
    "judge",
]


class Verdict(enum.StrEnum):
    """Whether a DoAction took effect, as established by a query (docs/ecpay-api.md section 9)."""

    #: The order shows what the step expected: the step happened.
    DONE = "done"
    #: The order is as it was before the step: the step did not happen.
    NOT_DONE = "not_done"
    #: Anything else: the library cannot tell and will not guess.
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class StepResult:
    """One DoAction that took effect.

    ``rtn_code`` and ``rtn_msg`` are ECPay's raw reply values; both are ``None``/empty when the
    reply was lost and a query proved the step happened (``recovered``). ``attempts`` is 1, or 2
    when a first attempt was proved not to have happened and the step was sent once more.
    """

    action: Action
    amount: int
    rtn_code: int | str | None
    rtn_msg: str
    attempts: int
    recovered: bool

    def describe(self) -> str:
        """``R(300)``-style short form, as :meth:`Step.describe`."""
        return f"{self.action.value}({self.amount})"


@attrs.frozen(kw_only=True)
class Outcome:
    """What a capture, refund or abandon did to one order.

    ``before`` is the order as the first query saw it (R4), ``plan`` what the planner chose from
    it, ``steps_done`` every DoAction carried out under this operation (across a resumption, see
    docs/client.md), and ``final`` the order after the last step: as ECPay's accepted reply
    implies it (R21: no confirming query is sent after an intact reply), or as the query that
    resolved a lost reply showed it. ``replayed`` is True when the same ``idempotency_key`` was
    seen before: the recorded outcome is returned and nothing is sent. ``disagreements`` reports
    queries that contradicted an accepted reply (R21: reported, never turned into "not done").
    """

    intent: Intent
    merchant_trade_no: str
    plan: Plan
    steps_done: tuple[StepResult, ...]
    before: OrderSnapshot
    final: OrderSnapshot
    idempotency_key: str | None
    replayed: bool = False
    disagreements: tuple[str, ...] = ()

    @property
    def refunded(self) -> int:
        """TWD returned to the card holder (or released from the hold) by this operation."""
        return self.plan.refund_total


@attrs.frozen(kw_only=True)
class Resolution:
    """How ``reconcile`` resolved one step whose outcome had been unknown.

    ``idempotency_key`` is the caller's key of the operation the step belongs to (``None`` when
    the caller gave none) and ``key`` its journal key (the one ``reconcile(declare=...)`` names).
    ``declared`` is True when the caller declared the verdict because the query alone could not
    tell. ``retry_at`` says, for a step still unknown, when a query can resolve it (R22); None
    when only a person can. ``outcome`` is the operation's :class:`Outcome` when this step was
    its last, so the operation is now complete (a retry with the key replays it).
    """

    idempotency_key: str | None
    key: str
    action: Action
    amount: int
    verdict: Verdict
    declared: bool
    outcome: Outcome | None
    retry_at: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class Reconciliation:
    """What ``reconcile`` found: the order now, and a :class:`Resolution` per unresolved step."""

    merchant_trade_no: str
    snapshot: OrderSnapshot
    resolutions: tuple[Resolution, ...]

    @property
    def locked(self) -> bool:
        """Whether some step is still unknown, so the order still refuses money movement."""
        return any(r.verdict is Verdict.UNKNOWN for r in self.resolutions)


@attrs.frozen(kw_only=True)
class SweepReport:
    """What one ``sweep()`` did (R22, R23): the orders it reconciled and the ones it left.

    ``busy`` orders had an operation with a live owner (another worker runs it); ``waiting``
    orders were swept recently and back off (1 minute, 5 minutes, 1 hour, then daily);
    ``released`` names operations whose owner's lease lapsed with nothing in flight, now free
    for their key to resume; ``failed`` pairs an order with what went wrong; ``stopped`` says
    why the sweep ended early (ECPay's HTTP 403: wait before sweeping again), if it did.
    """

    reconciled: tuple[Reconciliation, ...] = ()
    busy: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    stopped: str | None = None

    @property
    def resolved(self) -> int:
        """Attempts settled done or not done by this sweep."""
        return sum(
            1
            for reconciliation in self.reconciled
            for resolution in reconciliation.resolutions
            if resolution.verdict is not Verdict.UNKNOWN
        )

    @property
    def still_unknown(self) -> int:
        """Attempts this sweep could not settle yet (before their fence, or for a person)."""
        return sum(
            1
            for reconciliation in self.reconciled
            for resolution in reconciliation.resolutions
            if resolution.verdict is Verdict.UNKNOWN
        )


def judge(
    before: OrderSnapshot,
    observed: OrderSnapshot,
    expected: tuple[State, int] | None,
) -> Verdict:
    """Did the step that expected ``expected`` (state, closed amount) take effect?

    The judgement of docs/ecpay-api.md section 9. DONE when ``observed`` shows the expected state
    and closed amount; NOT_DONE when it shows those of ``before``; otherwise UNKNOWN. Because
    ECPay's batch may run between the step and the query, the batch's version of either side counts
    too, but only where the two sides stay distinguishable (a capture the auto-close batch would
    have made anyway is UNKNOWN, never guessed). ``expected`` is ``None`` for a raw DoAction: then
    only NOT_DONE can be proved.
    """
    seen = (observed.state, observed.closed_amount)
    was = (before.state, before.closed_amount)
    if expected is not None and expected == was:
        # A step that changes nothing cannot be told apart from one that did not happen.
        return Verdict.UNKNOWN
    if expected is not None and seen == expected:
        return Verdict.DONE
    if seen == was:
        return Verdict.NOT_DONE
    # The batch may run between the step and the query: its rows of the machine, fired on
    # either side (docs/ecpay-api.md section 10).
    settled_was = after_batch(*was, before)
    if expected is None:
        return Verdict.NOT_DONE if seen == settled_was else Verdict.UNKNOWN
    settled_expected = after_batch(*expected, before)
    if settled_expected == settled_was:
        return Verdict.UNKNOWN
    if seen == settled_expected:
        return Verdict.DONE
    if seen == settled_was:
        return Verdict.NOT_DONE
    return Verdict.UNKNOWN
