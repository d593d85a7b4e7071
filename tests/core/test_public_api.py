"""The curated public surface: __all__ is exact and sorted; emulator and strategies likewise."""

from __future__ import annotations

import types

import pytest

import ecpay_lifecycle
from ecpay_lifecycle import emulator, strategies

EXPECTED = {
    # values and enums
    "Action", "GatewayStatus", "Intent", "OrderSnapshot", "PaymentKind", "Plan", "State", "Step",
    "TAIPEI",
    # the planner
    "plan", "plan_abandon", "plan_capture", "plan_refund",
    # talking to ECPay
    "AesCodec", "AsyncClient", "Client", "Credentials", "PRODUCTION_URL", "STAGE_URL",
    "CashierInfo", "CloseRow", "CreditDetail", "DoActionReply",
    # outcomes and the journal
    "Outcome", "Reconciliation", "Resolution", "StepResult", "Verdict", "SweepReport",
    "AttemptRecord", "AttemptStatus", "InMemoryJournal", "Journal", "OperationRecord",
    "OperationStatus", "Claim", "ClaimStatus", "arbitrate", "OrderLocks", "ProcessOrderLocks",
    "SQLiteJournal", "FileOrderLocks", "PostgresJournal", "PostgresOrderLocks",
    "PostgresLeaseLocks", "AsyncJournal", "AsyncPostgresJournal", "AsyncPostgresOrderLocks",
    # the exception tree
    "EcpayError", "InvalidArgument", "InvalidAmount", "ConfigurationError", "InvalidArgumentType",
    "RuleViolation", "RefundExceedsCaptured", "CodecError", "ProtocolError", "UnknownStatusError",
    "ReplyMismatch", "TransportError", "RateLimited", "EnvelopeRejected", "GatewayRefused",
    "OutcomeUnknown", "OrderLocked", "WrongCredentials", "ClockOutOfSync", "ServiceNotEnabled",
    "OperationInProgress", "OwnershipLost", "PlanInterrupted", "JournalError",
    "NotCreditCardOrder", "SecretNotSerialisable", "OrderChanged",
}  # fmt: skip


def _isort_key(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("module", [ecpay_lifecycle, emulator, strategies])
def test_all_is_sorted_and_resolvable(module: types.ModuleType) -> None:
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(module, name), name


def test_top_level_all_is_exactly_the_curated_surface() -> None:
    assert set(ecpay_lifecycle.__all__) == EXPECTED


def test_every_exception_is_in_one_tree() -> None:
    errors = [
        getattr(ecpay_lifecycle, n)
        for n in ecpay_lifecycle.__all__
        if isinstance(getattr(ecpay_lifecycle, n), type)
        and issubclass(getattr(ecpay_lifecycle, n), BaseException)
    ]
    assert len(errors) == 27
    assert all(issubclass(e, ecpay_lifecycle.EcpayError) for e in errors)


def test_public_names_document_themselves() -> None:
    for name in ecpay_lifecycle.__all__:
        value = getattr(ecpay_lifecycle, name)
        if isinstance(value, type) or callable(value):
            assert value.__doc__, f"{name} has no docstring"
