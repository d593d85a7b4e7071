"""Logs a shop can search (issue 11, item 7): every record of a money movement carries its
structured fields through ``extra`` (docs/client.md, Logging), whatever happens to the call."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecpay_lifecycle import TAIPEI, Client, Credentials, EcpayError
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault

MID = "3002607"
KEY, IV = "StructLogsKey016", "StructLogsIv0016"
START = dt.datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI)
OUTCOMES = {
    "planned",
    "sending",
    "done",
    "refused",
    "lost",
    "not_done",
    "unknown",
    "replayed",
    "taken_over",
    "rate_limited",
    "release_failed",
}
STEP_OUTCOMES = {"sending", "done", "refused", "lost", "not_done", "unknown"}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> list[logging.LogRecord]:
    handler = Collect()
    logger = logging.getLogger("ecpay_lifecycle")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old)


def check(records: list[logging.LogRecord]) -> set[str]:
    """Assert every money-movement record carries its fields; return the outcomes seen."""
    seen: set[str] = set()
    for record in records:
        fields = vars(record)
        if "production host" in record.getMessage():
            continue  # the one warning at construction, not about a money movement
        assert fields.get("ecpay_merchant_id") == MID, record.getMessage()
        outcome = fields.get("ecpay_outcome")
        assert outcome in OUTCOMES, record.getMessage()
        seen.add(str(outcome))
        if outcome != "rate_limited":
            assert fields.get("ecpay_order"), record.getMessage()
            assert "ecpay_key" in fields, record.getMessage()
        if outcome in STEP_OUTCOMES:
            assert fields.get("ecpay_action") in {"C", "R", "E", "N"}, record.getMessage()
            assert isinstance(fields.get("ecpay_amount"), int), record.getMessage()
            assert isinstance(fields.get("ecpay_attempt"), int), record.getMessage()
        if outcome == "rate_limited":
            assert fields.get("ecpay_retry_at"), record.getMessage()
        for value in fields.values():
            assert KEY not in str(value)
            assert IV not in str(value)
    return seen


FAULTS = [
    None,
    Fault.LOST_REPLY,
    Fault.READ_TIMEOUT_BEFORE_APPLY,
    Fault.TIMEOUT_AFTER_APPLY,
    Fault.GARBLED_DATA,
    Fault.RATE_LIMITED,
    Fault.SERVER_ERROR_AFTER_APPLY,
]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fault=st.sampled_from(FAULTS),
    amount=st.integers(1, 1000),
    retry=st.booleans(),
    keyed=st.booleans(),
)
def test_every_money_movement_record_carries_its_fields(
    collected: list[logging.LogRecord],
    fault: Fault | None,
    amount: int,
    retry: bool,
    keyed: bool,
) -> None:
    collected.clear()
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    emulator.authorize(MID, "L1", 1000, at=START - dt.timedelta(days=1))
    key = "refund-L1" if keyed else None
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
        rate_limit_pause=0,
    ) as client:
        if fault is not None:
            emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION)
        with contextlib.suppress(EcpayError):
            client.refund("L1", amount, idempotency_key=key)
        if retry:
            emulator.advance(dt.timedelta(minutes=16))
            with contextlib.suppress(EcpayError):
                client.refund("L1", amount, idempotency_key=key)
    seen = check(collected)
    assert "planned" in seen or fault is Fault.RATE_LIMITED or retry


def test_the_outcomes_of_each_kind_of_record_are_logged(
    collected: list[logging.LogRecord],
) -> None:
    """One run that meets most outcomes, so the check above has something to check."""
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=10**9)
    for order in ("A1", "A2", "A3"):
        emulator.authorize(MID, order, 1000, at=START - dt.timedelta(days=1))
    with Client(
        Credentials(MID, KEY, IV),
        transport=httpx.MockTransport(emulator.handler),
        clock=emulator.clock,
    ) as client:
        client.refund("A1", 100, idempotency_key="k1")
        client.refund("A1", 100, idempotency_key="k1")  # replayed
        emulator.faults.inject(Fault.READ_TIMEOUT_BEFORE_APPLY, endpoint=Endpoint.DO_ACTION)
        with pytest.raises(EcpayError):
            client.refund("A2", 100, idempotency_key="k2")  # lost, unknown
        emulator.advance(dt.timedelta(minutes=16))
        client.refund("A2", 100, idempotency_key="k2")  # not done after the fence, sent again
        emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.DO_ACTION)
        with pytest.raises(EcpayError):
            client.refund("A3", 100, idempotency_key="k3")
    seen = check(collected)
    assert {"planned", "sending", "done", "replayed", "lost", "unknown", "not_done"} <= seen
    assert "rate_limited" in seen
