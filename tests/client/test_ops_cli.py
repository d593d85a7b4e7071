"""``ecpay-lifecycle sweep`` and ``ecpay-lifecycle journal`` against the emulator over real HTTP.

Credentials come from the environment only; the journal is a SQLite file. The emulator's clock is
the real time here, since the commands use the system clock like a shop's cron job does; the
merchant's daily auto-close is off (``ECPAY_AUTO_CLOSE=0``), so the 20:15 window (R5) never
falls on a run, whatever the time of day.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import pathlib
from collections.abc import Iterator

import pytest

from ecpay_lifecycle import Client, Credentials, OutcomeUnknown
from ecpay_lifecycle._cli import main
from ecpay_lifecycle._sqlite import SQLiteJournal
from ecpay_lifecycle.emulator import Emulator, Endpoint, Fault, serving

MID = "3002607"
KEY, IV = "OpsCommandKey016", "OpsCommandIv0016"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(now=dt.datetime.now(dt.UTC))
    emulator.add_merchant(MID, KEY, IV, balance=10**9, auto_close=False)
    with serving(emulator) as url:
        monkeypatch.setenv("ECPAY_AUTO_CLOSE", "0")
        monkeypatch.setenv("ECPAY_MERCHANT_ID", MID)
        monkeypatch.setenv("ECPAY_HASH_KEY", KEY)
        monkeypatch.setenv("ECPAY_HASH_IV", IV)
        monkeypatch.setenv("ECPAY_BASE_URL", url)
        yield emulator, url


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def stuck(emulator: Emulator, url: str, path: pathlib.Path, order: str, fault: Fault) -> None:
    emulator.authorize(MID, order, 1000)
    # Over HTTP a timeout fault hangs, then answers 504: one second is enough here.
    emulator.faults.inject(fault, endpoint=Endpoint.DO_ACTION, merchant_trade_no=order, seconds=1)
    if fault is Fault.LOST_REPLY:
        emulator.faults.inject(
            Fault.SERVER_ERROR_BEFORE_APPLY,
            endpoint=Endpoint.CREDIT_DETAIL,
            merchant_trade_no=order,
            after_do_action=True,
        )
    with (
        Client(
            Credentials(MID, KEY, IV, auto_close=False), base_url=url, journal=SQLiteJournal(path)
        ) as client,
        pytest.raises(OutcomeUnknown),
    ):
        client.capture(order, idempotency_key=f"c-{order}")


def test_sweep_resolves_what_a_query_can_and_says_what_waits(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    emulator, url = served
    path = tmp_path / "ecpay.db"
    stuck(emulator, url, path, "A1", Fault.LOST_REPLY)  # applied: a query proves it
    stuck(emulator, url, path, "B2", Fault.READ_TIMEOUT_BEFORE_APPLY)  # waits for the fence
    code, text = run("journal", "--journal", str(path), "--json")
    assert code == 0
    assert sorted(row["order"] for row in json.loads(text)) == ["A1", "B2"]
    code, text = run("sweep", "--journal", str(path), "--json")
    body = json.loads(text)
    assert code == 3  # something is still unknown
    verdicts = {o["order"]: o["attempts"][0]["verdict"] for o in body["orders"]}
    assert verdicts == {"A1": "done", "B2": "unknown"}
    (b2,) = [o for o in body["orders"] if o["order"] == "B2"]
    assert b2["attempts"][0]["retry_at"] is not None
    code, text = run("sweep", "--journal", str(path))
    assert code == 0  # B2 backs off until its fence; nothing else to do
    assert "1 backing off" in text
    code, text = run("journal", "--journal", str(path), "--order", "A1")
    assert "succeeded" in text
    applied = [e.merchant_trade_no for e in emulator.applied_do_actions(MID)]
    assert applied == ["A1"]  # the sweeper sent no DoAction
    for output in (text,):
        assert KEY not in output
        assert IV not in output


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sweep_shows_progress_on_a_terminal_only(
    served: tuple[Emulator, str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, url = served
    path = tmp_path / "ecpay.db"
    # On a pipe: nothing drawn, though an order was swept.
    stuck(emulator, url, path, "P0", Fault.READ_TIMEOUT_BEFORE_APPLY)
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    assert run("sweep", "--journal", str(path))[0] == 3
    assert piped.getvalue() == ""
    # On a terminal: one line per order on stderr, erased at the end; stdout keeps the report.
    stuck(emulator, url, path, "P1", Fault.READ_TIMEOUT_BEFORE_APPLY)
    stuck(emulator, url, path, "P2", Fault.READ_TIMEOUT_BEFORE_APPLY)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    code, text = run("sweep", "--journal", str(path))
    assert code == 3
    drawn = terminal.getvalue()
    assert "sweeping 1/2: order P1" in drawn
    assert "sweeping 2/2: order P2" in drawn
    assert drawn.endswith("\r\x1b[2K")
    assert "sweeping" not in text
    # Never with --json, even on a terminal.
    stuck(emulator, url, path, "P3", Fault.READ_TIMEOUT_BEFORE_APPLY)
    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    code, text = run("sweep", "--journal", str(path), "--json")
    assert [o["order"] for o in json.loads(text)["orders"]] == ["P3"]
    assert quiet.getvalue() == ""


def test_sweep_watch_runs_a_bounded_number_of_times(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "j.db"
    SQLiteJournal(path).close()  # what the workers create; the sweep never does
    code, text = run("sweep", "--journal", str(path), "--watch", "1", "--runs", "2", "--json")
    assert code == 0
    assert len(text.strip().splitlines()) == 2


def test_a_named_journal_that_does_not_exist_is_refused_not_created(
    served: tuple[Emulator, str], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped path would be a new, empty journal: no keys, no locks, a refund sent twice.
    typo = tmp_path / "ecapy.db"
    for argv in (["sweep"], ["journal"], ["refund", "A1", "100"], ["reconcile", "A1"]):
        assert run(*argv, "--journal", str(typo))[0] == 2
        assert f"no journal at {typo}" in capsys.readouterr().err
    assert not typo.exists()


def test_operator_commands_take_credentials_only_from_the_environment(
    served: tuple[Emulator, str],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ECPAY_HASH_IV")
    code, _ = run("sweep", "--journal", str(tmp_path / "j.db"))
    assert code == 2
    err = capsys.readouterr().err
    assert "ECPAY_HASH_IV" in err
    assert KEY not in err
    for bad in (["--watch", "0"], ["--watch", "5", "--runs", "0"]):
        assert run("sweep", "--journal", str(tmp_path / "j.db"), *bad)[0] == 2
    (tmp_path / "not.db").write_text("this is not a database", encoding="utf-8")
    assert run("journal", "--journal", str(tmp_path / "not.db"))[0] == 2
    assert "database" in capsys.readouterr().err
