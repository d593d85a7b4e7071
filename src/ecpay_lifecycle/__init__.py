"""ecpay-lifecycle: the capture and refund lifecycle of ECPay (綠界) credit-card orders.

The pure core decides (rules, planner, codec); the clients carry the decision out safely; the
emulator stands in for ECPay where its stage environment cannot (DoAction).
"""

from __future__ import annotations

import logging

from ._client import AsyncClient, Client
from ._codec import AesCodec
from ._exceptions import (
    ClockOutOfSync,
    CodecError,
    ConfigurationError,
    EcpayError,
    EnvelopeRejected,
    GatewayRefused,
    InvalidAmount,
    InvalidArgument,
    InvalidArgumentType,
    JournalError,
    NotCreditCardOrder,
    OperationInProgress,
    OrderChanged,
    OrderLocked,
    OutcomeUnknown,
    OwnershipLost,
    PlanInterrupted,
    ProtocolError,
    RateLimited,
    RefundExceedsCaptured,
    ReplyMismatch,
    RuleViolation,
    SecretNotSerialisable,
    ServiceNotEnabled,
    TransportError,
    UnknownStatusError,
    WrongCredentials,
)
from ._journal import (
    AsyncJournal,
    AttemptRecord,
    AttemptStatus,
    Claim,
    ClaimStatus,
    InMemoryJournal,
    Journal,
    OperationRecord,
    OperationStatus,
    arbitrate,
)
from ._locks import OrderLocks, ProcessOrderLocks
from ._models import (
    Action,
    GatewayStatus,
    Intent,
    OrderSnapshot,
    PaymentKind,
    Plan,
    State,
    Step,
)
from ._outcome import Outcome, Reconciliation, Resolution, StepResult, SweepReport, Verdict
from ._planner import plan, plan_abandon, plan_capture, plan_refund
from ._postgres import PostgresJournal, PostgresLeaseLocks, PostgresOrderLocks
from ._postgres_async import AsyncPostgresJournal, AsyncPostgresOrderLocks
from ._protocol import (
    PRODUCTION_URL,
    STAGE_URL,
    CashierInfo,
    CloseRow,
    Credentials,
    CreditDetail,
    DoActionReply,
)
from ._rules import TAIPEI
from ._sqlite import FileOrderLocks, SQLiteJournal

__version__ = "0.1.0.dev0"

# A library never decides where log records go (logging's own advice): without this, warnings
# would reach stderr through logging's last-resort handler in programs that configure nothing.
logging.getLogger("ecpay_lifecycle").addHandler(logging.NullHandler())

__all__ = [
    "PRODUCTION_URL",
    "STAGE_URL",
    "TAIPEI",
    "Action",
    "AesCodec",
    "AsyncClient",
    "AsyncJournal",
    "AsyncPostgresJournal",
    "AsyncPostgresOrderLocks",
    "AttemptRecord",
    "AttemptStatus",
    "CashierInfo",
    "Claim",
    "ClaimStatus",
    "Client",
    "ClockOutOfSync",
    "CloseRow",
    "CodecError",
    "ConfigurationError",
    "Credentials",
    "CreditDetail",
    "DoActionReply",
    "EcpayError",
    "EnvelopeRejected",
    "FileOrderLocks",
    "GatewayRefused",
    "GatewayStatus",
    "InMemoryJournal",
    "Intent",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidArgumentType",
    "Journal",
    "JournalError",
    "NotCreditCardOrder",
    "OperationInProgress",
    "OperationRecord",
    "OperationStatus",
    "OrderChanged",
    "OrderLocked",
    "OrderLocks",
    "OrderSnapshot",
    "Outcome",
    "OutcomeUnknown",
    "OwnershipLost",
    "PaymentKind",
    "Plan",
    "PlanInterrupted",
    "PostgresJournal",
    "PostgresLeaseLocks",
    "PostgresOrderLocks",
    "ProcessOrderLocks",
    "ProtocolError",
    "RateLimited",
    "Reconciliation",
    "RefundExceedsCaptured",
    "ReplyMismatch",
    "Resolution",
    "RuleViolation",
    "SQLiteJournal",
    "SecretNotSerialisable",
    "ServiceNotEnabled",
    "State",
    "Step",
    "StepResult",
    "SweepReport",
    "TransportError",
    "UnknownStatusError",
    "Verdict",
    "WrongCredentials",
    "arbitrate",
    "plan",
    "plan_abandon",
    "plan_capture",
    "plan_refund",
]
