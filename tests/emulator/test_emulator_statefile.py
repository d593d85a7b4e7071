"""State files: ``Emulator.dump_state`` / ``Emulator.from_state`` and ``serve --state FILE``.

A saved emulator resumes exactly (merchants and their keys, orders with the CreditDetail views
they keep, DoActions in flight, the clock, the settings); a real-time one resumes with the time
it was down; a corrupt file, one from a newer version or one others can read is a clear
ConfigurationError, never a crash; the file is 0600."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import pathlib
import stat
import traceback
from typing import Any

import pytest

from ecpay_lifecycle import Action, ConfigurationError, GatewayStatus, InvalidArgument, PaymentKind
from ecpay_lifecycle._codec import Secret
from ecpay_lifecycle.emulator import Emulator, EmulatorSettings, Endpoint, EventKind, Fault
from ecpay_lifecycle.emulator._persist import (
    VERSION,
    check_owner_only,
    settings_from_json,
    settings_to_json,
    write_owner_only,
)
from ecpay_lifecycle.emulator._serve import add_arguments, build_emulator, run
from test_emulator_support import IV, KEY, MID, START, Wire, ok

PLATFORM = "2000132"
MANUAL = "2000214"


def busy() -> Emulator:
    """An emulator with something of everything a state file must keep."""
    settings = EmulatorSettings(
        credit_detail_lag=dt.timedelta(seconds=30),
        full_amount_actions=frozenset({Action.CLOSE, Action.CANCEL, Action.ABANDON}),
        batch_time=dt.time(19, 45),
        stack_pending_refunds=False,
    )
    emulator = Emulator(now=START, settings=settings)
    emulator.add_merchant(PLATFORM, KEY, IV, balance=5_000)
    emulator.add_merchant(MID, KEY, IV, balance=20_000, platform_id=PLATFORM)
    emulator.add_merchant(MANUAL, IV, KEY, auto_close=False)
    wire = Wire(emulator)
    emulator.authorize(MID, "SETTLED", 1000, at=START - dt.timedelta(days=2))
    assert ok(wire.do(Action.REFUND, "SETTLED", 300))  # a refund waiting for the batch
    emulator.authorize(MID, "PENDING", 800)
    assert ok(wire.do(Action.CLOSE, "PENDING", 800))
    emulator.authorize(MID, "UNION", 500, kind=PaymentKind.UNIONPAY)
    emulator.authorize(MID, "BONUS", 900, kind=PaymentKind.BONUS)
    emulator.set_status(MID, "BONUS", GatewayStatus.BANK_RECLAIMING)
    emulator.authorize(MANUAL, "OLD", 400, at=START - dt.timedelta(days=85))
    emulator.authorize(MANUAL, "LATE", 600)
    emulator.faults.inject(Fault.LATE_APPLY, land_after=dt.timedelta(minutes=3))
    with pytest.raises(Exception, match="read timed out"):
        Wire(emulator, merchant_id=MANUAL, key=IV, iv=KEY).do(
            Action.CLOSE, "LATE", 600, merchant_id=MANUAL
        )
    emulator.advance(dt.timedelta(seconds=10))
    return emulator


def through_json(emulator: Emulator, **kwargs: Any) -> Emulator:
    return Emulator.from_state(json.loads(json.dumps(emulator.dump_state())), **kwargs)


def test_a_saved_emulator_resumes_exactly_and_lives_on_the_same() -> None:
    saved = busy()
    loaded = through_json(saved)
    assert loaded.now == saved.now
    assert loaded.settings == saved.settings
    assert loaded.orders() == saved.orders()
    assert loaded.merchants() == saved.merchants()
    assert loaded.pending_landings() == saved.pending_landings()
    assert not loaded.realtime
    assert [e.note for e in loaded.events] == ["state restored"]
    assert loaded.events[0].seq == saved.events[-1].seq + 1
    # The keys came along: the restored merchants read requests and sign replies as before.
    wire = Wire(loaded)
    detail = {"MerchantID": MID, "MerchantTradeNo": "PENDING"}
    assert wire.call(Endpoint.CREDIT_DETAIL, detail) == Wire(saved).call(
        Endpoint.CREDIT_DETAIL, detail
    )
    # And both live the same life from here: the landing, the batch, the day-90 expiry.
    for emulator in (saved, loaded):
        emulator.faults.inject(Fault.STALE_QUERY, writes=2)
        assert ok(Wire(emulator).do(Action.REFUND, "PENDING", 100))
        emulator.advance(dt.timedelta(days=10))
    assert loaded.orders() == saved.orders()
    assert loaded.balance(MID) == saved.balance(MID)
    assert loaded.order(MANUAL, "OLD").status is GatewayStatus.CANCELED
    assert loaded.order(MANUAL, "LATE").status is GatewayStatus.CAPTURED

    def later(emulator: Emulator) -> list[tuple[Any, ...]]:
        return [
            (e.kind, e.at, e.merchant_trade_no, e.applied, e.note)
            for e in emulator.events
            if e.at > START + dt.timedelta(seconds=10) and e.kind is not EventKind.SETUP
        ]

    assert later(loaded) == later(saved)


def test_settings_go_to_json_and_back_unchanged() -> None:
    for settings in (EmulatorSettings(), busy().settings):
        assert settings_from_json(json.loads(json.dumps(settings_to_json(settings)))) == settings


def test_a_real_time_state_resumes_with_the_time_it_was_down() -> None:
    emulator = Emulator(now=START, realtime=True)
    emulator.add_merchant(MID, KEY, IV)
    emulator.authorize(MID, "A1", 1000)
    state = emulator.dump_state()
    saved_now = dt.datetime.fromisoformat(state["ledger"]["now"])
    saved_at = dt.datetime.fromisoformat(state["saved_at"])
    state["saved_at"] = (saved_at - dt.timedelta(hours=12)).isoformat()  # down for 12 hours
    resumed = Emulator.from_state(state, realtime=True)
    assert resumed.now >= saved_now + dt.timedelta(hours=12)
    # The 20:15 batch fell in the downtime: it happened, at its own moment.
    assert resumed.order(MID, "A1").status is GatewayStatus.CAPTURED
    assert [e.at.hour for e in resumed.events if e.kind is EventKind.BATCH] == [20]
    # Loaded frozen, or from a frozen state, the clock is where it was saved.
    assert Emulator.from_state(state).now == saved_now
    state["realtime"] = False
    assert Emulator.from_state(state, realtime=True).now < saved_now + dt.timedelta(hours=1)


def _break(state: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(state)
    target = broken
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return broken


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("format",), "something else", "not an emulator state"),
        (("version",), VERSION + 1, "written by a newer ecpay-lifecycle"),
        (("version",), "1", "version must be a whole number"),
        (("settings",), {"close_limit": "soon"}, "settings: setting close_limit"),
        (("ledger", "now"), "yesterday", "ledger.now must be an ISO 8601 time"),
        (("ledger", "orders", 0, "status"), "Shipped", r"orders\[0\].status must name"),
        (("ledger", "orders", 0, "amount"), True, r"orders\[0\].amount must be a whole number"),
        (("ledger", "orders", 0, "merchant_id"), "9999", "is not one of the merchants"),
        (("ledger", "orders", 1, "trade_no"), None, r"orders\[1\].trade_no must be a string"),
        (("ledger", "orders", 0, "history"), {}, "history must be a list"),
        (("ledger", "merchants", 0, "hash_key"), "short", r"merchants\[0\]: hash_key"),
        (("ledger", "merchants", 1, "hash_iv"), "€" * 16, r"merchants\[1\]: a HashKey or HashIV"),
        (("ledger", "merchants", 0, "balance"), -1, "balance must be at least 0"),
        (("ledger", "merchants"), _DELETE, "ledger.merchants is missing"),
        (("landings", 0, "request"), "C", r"landings\[0\].request must be a JSON object"),
        (("landings", 0, "endpoint"), "NOWHERE", r"landings\[0\].endpoint must name"),
        (("event_seq",), -3, "event_seq must be at least 0"),
    ],
)
def test_a_corrupt_state_is_a_configuration_error_naming_the_field(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    state = busy().dump_state()
    with pytest.raises(ConfigurationError, match=message) as caught:
        Emulator.from_state(_break(state, path, value))
    assert KEY not in str(caught.value)
    assert IV not in str(caught.value)


@pytest.mark.parametrize("data", [[], "state", None, {"format": "ecpay-lifecycle-emulator-state"}])
def test_what_is_no_state_at_all_is_a_configuration_error(data: Any) -> None:
    with pytest.raises(ConfigurationError):
        Emulator.from_state(data)


def test_write_owner_only_makes_and_replaces_a_0600_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old", encoding="utf-8")
    path.chmod(0o644)
    write_owner_only(path, Secret("new\n"))
    assert path.read_text(encoding="utf-8") == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left behind
    check_owner_only(path, "state file")
    path.chmod(0o640)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        check_owner_only(path, "state file")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_serve_state_option_loads_what_was_saved_and_adds_missing_merchants(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "team.json"
    write_owner_only(path, Secret(json.dumps(busy().dump_state())))
    env = {"ECPAY_EMULATOR_MERCHANTS": f"{MID}:{KEY}:{IV} 3000001:{KEY}:{IV}"}
    notes: list[str] = []
    loaded = build_emulator(
        parse("--state", str(path), "--frozen", "--order", f"{MID}:NEW:100"),
        environ=env,
        notes=notes,
    )
    assert {m.merchant_id for m in loaded.merchants()} == {PLATFORM, MID, MANUAL, "3000001"}
    assert [v.merchant_trade_no for v in loaded.orders(MID)][:2] == ["SETTLED", "PENDING"]
    assert "NEW" not in {v.merchant_trade_no for v in loaded.orders(MID)}
    assert any("loaded from" in note for note in notes)
    assert any("--order" in note and "not applied" in note for note in notes)
    # Secrets given for a merchant the state has must be the state's.
    other = {"ECPAY_EMULATOR_MERCHANTS": f"{MID}:{IV}:{KEY}"}
    with pytest.raises(ConfigurationError, match=f"merchant {MID}: the HashKey") as caught:
        build_emulator(parse("--state", str(path)), environ=other)
    assert KEY not in str(caught.value)


def test_serve_refuses_a_bad_state_file_in_one_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.json"
    write_owner_only(path, Secret("{not json"))
    assert run(parse("--state", str(path)), environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecpay-lifecycle serve: error: state file")
    assert "is not JSON" in err
    assert "Traceback" not in err
    state = busy().dump_state()
    state["version"] = VERSION + 1
    write_owner_only(path, Secret(json.dumps(state)))
    assert run(parse("--state", str(path)), environ={}) == 2
    assert "newer ecpay-lifecycle" in capsys.readouterr().err
    path.chmod(0o644)
    assert run(parse("--state", str(path)), environ={}) == 2
    err = capsys.readouterr().err
    assert "can be read by other users" in err
    assert KEY not in err


def test_refusals_leave_no_secret_in_a_traceback_with_its_locals(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pytest --showlocals or Sentry would print when serve refuses a state file, a
    merchants entry or a seed: never a HashKey or HashIV, though each of them holds some."""
    state = busy().dump_state()
    broken = tmp_path / "broken.json"
    write_owner_only(broken, Secret(json.dumps(state)[:-20]))  # cut short: not JSON
    bad_field = tmp_path / "field.json"
    write_owner_only(bad_field, Secret(json.dumps({**state, "event_seq": "x"})))
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps({"merchants": [{"merchant_id": "x-1", "hash_key": KEY, "hash_iv": IV}]}),
        encoding="utf-8",
    )
    cases = [
        (("--state", str(broken)), f"{MID}:{KEY}:{IV}"),
        (("--state", str(bad_field)), ""),
        ((), f"{MID}:{KEY}:{IV},{MID}:{KEY}"),
        (("--seed", str(seed)), ""),
    ]
    for argv, variable in cases:
        monkeypatch.setenv("ECPAY_EMULATOR_MERCHANTS", variable)
        with pytest.raises(InvalidArgument) as caught:
            build_emulator(parse(*argv))
        frames = [
            frame
            for error in (caught.value, caught.value.__cause__, caught.value.__context__)
            if error is not None
            for frame, _line in traceback.walk_tb(error.__traceback__)
            if "ecpay_lifecycle" in frame.f_code.co_filename
        ]
        assert frames
        for frame in frames:
            for name, value in frame.f_locals.items():
                shown = f"{name}={value!r}"
                assert KEY not in shown, (frame.f_code.co_qualname, name)
                assert IV not in shown, (frame.f_code.co_qualname, name)
        assert KEY not in str(caught.value)
