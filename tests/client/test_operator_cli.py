"""The operator commands (issue 11 item 1) against the emulator served over real HTTP.

``query``, ``capture``, ``refund``, ``abandon`` (and their dry runs), ``reconcile``,
``deadlines``, ``--version``, the credentials file, the exit codes, ``--json`` errors, tables on a
terminal and in a pipe, and no HashKey or HashIV in any output. Credentials come from the
environment (set with monkeypatch) or a file; the journal is a SQLite file. ``main(clock=...)``
runs the commands on the emulator's clock, so a test can move time past a fence (R22); money is
counted on the emulator's books.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ecpay_lifecycle import (
    TAIPEI,
    Client,
    Credentials,
    OrderChanged,
    OrderLocked,
    OutcomeUnknown,
    RuleViolation,
    TransportError,
)
from ecpay_lifecycle import _ops_commands as ops_commands
from ecpay_lifecycle._cli import main
from ecpay_lifecycle._ops import EXIT_CODES, exit_code
from ecpay_lifecycle._sqlite import SQLiteJournal
from ecpay_lifecycle.emulator import Emulator, Endpoint, EventKind, Fault, serving

ROOT = pathlib.Path(__file__).resolve().parents[2]
MID = "3002607"
# Distinctive values: no output may ever contain them, or any 8 characters of them.
KEY, IV = "Kq7ZoperatorKEY1", "Vx3WoperatorIV16"
NOW = dt.datetime(2026, 8, 1, 10, 0, tzinfo=TAIPEI)


class Served:
    """The emulator, its URL and the journal path the commands use."""

    def __init__(self, emulator: Emulator, url: str, journal: pathlib.Path) -> None:
        self.emulator = emulator
        self.url = url
        self.journal = journal

    def run(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main(list(argv), out=out, clock=self.emulator.clock)
        return code, out.getvalue()

    def json(self, *argv: str) -> tuple[int, object]:
        code, text = self.run(*argv, "--json")
        lines = text.strip().splitlines()
        assert len(lines) == 1, text
        return code, json.loads(lines[0])

    def do_actions_received(self, order: str | None = None) -> int:
        return sum(
            1
            for e in self.emulator.events
            if e.kind is EventKind.REQUEST
            and e.endpoint is Endpoint.DO_ACTION
            and (order is None or e.merchant_trade_no == order)
        )

    def applied(self, order: str) -> list[str]:
        return [
            f"{e.action.value}({e.request['TotalAmount']})"
            for e in self.emulator.applied_do_actions(MID, order)
            if e.action is not None
        ]

    def shop_client(self) -> Client:
        """A worker of the shop on the same journal, for setting up lost replies."""
        return Client(
            Credentials(MID, KEY, IV, auto_close=False),
            base_url=self.url,
            journal=SQLiteJournal(self.journal),
            clock=self.emulator.clock,
        )


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[Served]:
    emulator = Emulator(now=NOW)
    emulator.add_merchant(MID, KEY, IV, balance=10**6, auto_close=False)
    journal = tmp_path / "ecpay.db"
    SQLiteJournal(journal).close()
    for name in ("ECPAY_CREDENTIALS_FILE", "ECPAY_PLATFORM_ID", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with serving(emulator) as url:
        monkeypatch.setenv("ECPAY_MERCHANT_ID", MID)
        monkeypatch.setenv("ECPAY_HASH_KEY", KEY)
        monkeypatch.setenv("ECPAY_HASH_IV", IV)
        monkeypatch.setenv("ECPAY_BASE_URL", url)
        monkeypatch.setenv("ECPAY_AUTO_CLOSE", "0")
        monkeypatch.setenv("ECPAY_JOURNAL", str(journal))
        yield Served(emulator, url, journal)


def settled(served: Served, order: str, amount: int = 1000) -> None:
    """An order captured yesterday: Closed after last night's batch."""
    served.emulator.authorize(MID, order, amount, at=NOW - dt.timedelta(days=2))
    with served.shop_client() as shop:
        shop.capture(order, idempotency_key=f"capture-{order}")
    served.emulator.advance(dt.timedelta(days=1))


def lose_a_refund(served: Served, order: str, key: str) -> None:
    """R(300) applied, its reply lost, and the confirming query failed: unknown (R22)."""
    served.emulator.faults.inject(Fault.LOST_REPLY, endpoint=Endpoint.DO_ACTION)
    served.emulator.faults.inject(
        Fault.SERVER_ERROR_BEFORE_APPLY,
        endpoint=Endpoint.CREDIT_DETAIL,
        merchant_trade_no=order,
        after_do_action=True,
    )
    with served.shop_client() as shop, pytest.raises(OutcomeUnknown):
        shop.refund(order, 300, idempotency_key=key)


# -- query, dry runs, money -------------------------------------------------------------------


def test_query_shows_the_order_its_deadlines_and_the_journal(served: Served) -> None:
    served.emulator.authorize(MID, "Q1", 800, at=NOW - dt.timedelta(days=19))
    code, text = served.run("query", "Q1")
    assert code == 0
    assert re.search(r"^state\s+authorized$", text, re.MULTILINE)
    assert re.search(
        r"^capture limit \(R6\)\s+2026-08-03T10:00:00\+08:00 \(in 2 d 0 h\)$", text, re.M
    )
    assert "forced abandon (R7)" in text
    assert re.search(r"^journal\s+0 operations, none open$", text, re.MULTILINE)
    code, body = served.json("query", "Q1")
    assert code == 0
    assert isinstance(body, dict)
    assert body["state"] == "authorized"
    assert [d["name"] for d in body["deadlines"]] == [
        "capture limit",
        "unclosed notice",
        "forced abandon",
    ]
    assert served.do_actions_received() == 0


def test_dry_runs_query_and_plan_and_send_no_doaction(served: Served) -> None:
    settled(served, "D1")
    served.emulator.authorize(MID, "D2", 500)
    before = served.do_actions_received()
    code, text = served.run("refund", "D1", "300", "--dry-run")
    assert code == 0
    assert text.startswith("dry run: nothing sent\n")
    assert "plan (refund): R(300)" in text
    code, body = served.json("refund", "D1", "--dry-run", "--key", "refund-D1-all")
    assert code == 0
    assert isinstance(body, dict)
    assert body["dry_run"] is True
    assert body["key"] == "refund-D1-all"
    assert [s["action"] for s in body["plan"]["steps"]] == ["R"]
    assert body["plan"]["refund_total"] == 1000
    assert served.run("capture", "D2", "--dry-run")[0] == 0
    code, text = served.run("abandon", "D2", "--dry-run")
    assert (code, "N(500)" in text) == (0, True)
    # A dry run the planner refuses exits as the real run would: 1, R18.
    code, body = served.json("refund", "D2", "100", "--dry-run")
    assert code == 1
    assert isinstance(body, dict)
    assert body["refused"] == "R18"
    assert served.do_actions_received() == before  # not one DoAction reached ECPay
    assert served.applied("D1") == ["C(1000)"]
    assert served.applied("D2") == []
    assert served.run("journal", "--order", "D2")[1] == "no operations\n"  # nothing recorded


def test_capture_refund_abandon_move_money_once_per_key(served: Served) -> None:
    served.emulator.authorize(MID, "M1", 1000)
    served.emulator.authorize(MID, "M2", 400)
    code, text = served.run("capture", "M1", "--key", "capture-M1")
    assert code == 0
    assert text.splitlines()[:2] == ["capture M1: C(1000) done", "  C(1000)  RtnCode 1 Succeeded."]
    code, body = served.json("refund", "M1", "300", "--key", "refund-M1-1")
    assert code == 0
    assert isinstance(body, dict)
    assert (body["plan"], body["state"], body["closed_amount"]) == ("R(300)", "to_close", 700)
    assert (body["refunded"], body["replayed"], body["key"]) == (300, False, "refund-M1-1")
    # The same key again replays the recorded outcome and sends nothing.
    code, text = served.run("refund", "M1", "300", "--key", "refund-M1-1")
    assert code == 0
    assert "done before; replayed, nothing sent" in text
    # Without --key the command makes one, and prints it so a re-run can replay it.
    code, text = served.run("abandon", "M2")
    assert code == 0
    (key,) = re.findall(r"^key (cli-abandon-M2-[0-9a-f]{8}) ", text, re.MULTILINE)
    assert served.run("abandon", "M2", "--key", key)[0] == 0
    assert served.applied("M1") == ["C(1000)", "R(300)"]
    assert served.applied("M2") == ["N(400)"]
    code, text = served.run("journal", "--order", "M1")
    assert text.startswith("ORDER  KEY          STATUS     ATTEMPTS")
    assert "refund-M1-1  succeeded  R(300) done" in text


def test_refusals_exit_1_rule_or_gateway(served: Served) -> None:
    served.emulator.authorize(MID, "R1", 1000)
    served.run("abandon", "R1", "--key", "abandon-R1")
    code, text = served.run("refund", "R1", "--key", "refund-R1")
    assert code == 1
    assert text.startswith("refused: R10: the authorization was abandoned")
    code, body = served.json("capture", "R1", "--key", "capture-R1")
    assert code == 1
    assert isinstance(body, dict)
    assert (body["error"], body["refused"], body["order"]) == ("RuleViolation", "R14", "R1")
    assert body["exit"] == 1
    # ECPay refuses: the merchant's balance cannot cover the refund (R16).
    settled(served, "R2")
    served.emulator.set_balance(MID, 0)
    code, body = served.json("refund", "R2", "300", "--key", "refund-R2")
    assert code == 1
    assert isinstance(body, dict)
    assert body["error"] == "GatewayRefused"
    assert body["rtn_code"] not in (1, "1")
    assert served.applied("R2") == ["C(1000)"]


def test_a_lost_reply_exits_3_until_reconciled_and_declared(served: Served) -> None:
    settled(served, "L1")
    lose_a_refund(served, "L1", "refund-L1-1")
    # Meanwhile someone refunds 200 by hand in ECPay's back office: no query can tell now.
    with Client(
        Credentials(MID, KEY, IV, auto_close=False),
        base_url=served.url,
        clock=served.emulator.clock,
    ) as back_office:
        back_office.refund("L1", 200)
    served.emulator.advance(dt.timedelta(minutes=5))
    code, body = served.json("refund", "L1", "100", "--key", "refund-L1-2")
    assert code == 3
    assert isinstance(body, dict)
    assert (body["error"], body["key"]) == ("OrderLocked", "refund-L1-1")
    assert body["retry_at"] == "2026-08-02T10:15:00+08:00"
    code, text = served.run("refund", "L1", "100", "--dry-run")
    assert code == 3
    assert "locked by refund-L1-1 R(300) unknown until 2026-08-02T10:15:00+08:00" in text
    code, text = served.run("sweep")
    assert code == 3
    code, body = served.json("journal", "--older-than", "5")
    assert isinstance(body, list)
    assert [row["key"] for row in body] == ["refund-L1-1"]
    assert served.json("journal", "--older-than", "6")[1] == []
    # Before the fence "not done" cannot be declared: the request may still land (R22).
    assert served.run("reconcile", "L1", "--declare", "refund-L1-1=not_done")[0] == 2
    served.emulator.advance(dt.timedelta(minutes=11))
    code, text = served.run("reconcile", "L1")
    assert code == 3
    assert "a person: --declare" in text
    assert "check the order in ECPay's back office" in text
    code, body = served.json("reconcile", "L1", "--declare", "refund-L1-1=done")
    assert code == 0
    assert isinstance(body, dict)
    assert body["locked"] is False
    (resolution,) = body["resolutions"]
    assert (resolution["verdict"], resolution["declared"]) == ("done", True)
    assert served.run("sweep")[0] == 0
    assert served.run("refund", "L1", "100", "--key", "refund-L1-2")[0] == 0
    assert served.applied("L1") == ["C(1000)", "R(300)", "R(200)", "R(100)"]


def test_gateway_and_transport_errors_exit_4(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.emulator.authorize(MID, "T1", 1000)
    served.emulator.faults.inject(Fault.RATE_LIMITED, endpoint=Endpoint.CREDIT_DETAIL)
    code, body = served.json("capture", "T1", "--key", "capture-T1")
    assert code == 4
    assert isinstance(body, dict)
    assert body["error"] == "RateLimited"
    assert "retry_at" in body
    assert served.applied("T1") == []
    monkeypatch.setenv("ECPAY_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    code, body = served.json("query", "T1")
    assert code == 4
    assert isinstance(body, dict)
    assert body["error"] == "TransportError"


def test_bad_input_exits_2_and_says_what_is_missing(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, body = served.json("refund", "A1", "lots")
    assert code == 2
    assert isinstance(body, dict)
    assert body["error"] == "UsageError"
    assert "AMOUNT is a positive whole number of TWD or 'all'" in body["message"]
    code, text = served.run("refund", "A1", "0")
    assert (code, text) == (2, "")
    assert "usage: ecpay-lifecycle refund" in capsys.readouterr().err
    assert served.json("reconcile", "A1", "--declare", "k=maybe")[0] == 2
    assert served.json("deadlines", "--now", "2026-08-01T10:00:00")[0] == 2  # no offset
    assert served.json("query", "not an order")[0] == 2
    # plan with no action says so instead of planning a refund.
    code, body = served.json("plan", "--state", "closed", "--amount", "100")
    assert code == 2
    assert isinstance(body, dict)
    assert "--refund --capture --abandon is required" in body["message"]
    code, body = served.json(
        "plan",
        "--state",
        "authorized",
        "--amount",
        "100",
        "--capture",
        "--authorized-at",
        "2026-08-02T10:00:00+08:00",
        "--now",
        "2026-08-01T10:00:00+08:00",
    )
    assert code == 2
    assert isinstance(body, dict)
    assert "is after --now" in body["message"]
    code, body = served.json("plan", "--state", "closed", "--amount", "100", "--refund", "x")
    assert code == 2
    monkeypatch.delenv("ECPAY_HASH_KEY")
    code, body = served.json("query", "A1")
    assert code == 2
    assert isinstance(body, dict)
    assert body["error"] == "ConfigurationError"
    assert "ECPAY_HASH_KEY" in body["message"]


def test_an_unexpected_error_is_reported_as_a_bug_with_its_own_code(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_args: object, _out: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(ops_commands, "_run_query", broken)
    code, body = served.json("query", "A1")
    assert code == 70
    assert isinstance(body, dict)
    assert (body["error"], body["message"]) == ("RuntimeError", "boom")


# -- deadlines --------------------------------------------------------------------------------


def test_deadlines_lists_what_nears_day_21_80_and_90(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    emulator = served.emulator
    ages = {"N19": 19, "N10": 10, "N30": 30, "N79": 79}
    for order, days in ages.items():
        emulator.authorize(MID, order, 500, at=NOW - dt.timedelta(days=days))
    emulator.authorize(MID, "NEW", 500)  # never in the journal
    emulator.authorize(MID, "C1", 500, at=NOW - dt.timedelta(days=20))
    assert served.run("capture", "C1", "--key", "capture-C1")[0] == 0
    # The journal learns an order's authorization from an operation's planning query: here a
    # capture (an abandon past day 21, R6) whose reply was garbled (TransCode 10100050), so
    # the order stays locked and its state unknown until a query settles it.
    for order, days in ages.items():
        emulator.faults.inject(
            Fault.TRANS_CODE_ERROR, endpoint=Endpoint.DO_ACTION, trans_code=10100050
        )
        command = "capture" if days < 21 else "abandon"
        assert served.run(command, order, "--key", f"{command}-{order}")[0] == 3
    code, text = served.run("deadlines", *ages, "C1", "NEW")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["ORDER", "AUTHORIZED", "AGE", "NEXT"]
    listed = [line.split()[0] for line in lines[1:] if line and not line.startswith(" ")]
    # Soonest first; N10 is not due within 7 days; C1 is captured; NEW is not in the journal.
    assert listed[:3] == ["N79", "N19", "N30"]
    assert re.search(r"^N79 .* unclosed notice \(R7\) .* in 1 d 0 h", text, re.MULTILINE)
    assert re.search(r"^N19 .* capture limit \(R6\) .* in 2 d 0 h", text, re.MULTILINE)
    assert re.search(r"^N30 .* unclosed notice \(R7\) .* in 50 d 0 h", text, re.MULTILINE)
    assert re.search(r"^N19 .* journal 2026-08-01T10:00:00\+08:00, C\(500\) open$", text, re.M)
    assert "not in the journal (name them with --query to ask ECPay): NEW" in text
    code, body = served.json("deadlines", "N10", "--within", "12")
    assert code == 0
    assert isinstance(body, dict)
    assert [o["order"] for o in body["orders"]] == ["N10"]
    assert body["orders"][0]["next"]["at"] == "2026-08-12T10:00:00+08:00"
    # --now counts from another moment: twelve days on, N79 is past day 90.
    code, text = served.run("deadlines", "N79", "--now", "2026-08-13T10:00:00+08:00")
    assert re.search(r"^N79 .* past day 90: ECPay abandoned it", text, re.MULTILINE)
    # From a file and from standard input; --query asks ECPay for orders the journal lacks.
    listing = tmp_path / "orders.txt"
    listing.write_text("# uncaptured, from the shop's database\nNEW\nN19\n", encoding="utf-8")
    code, body = served.json("deadlines", "--orders-from", str(listing), "--query", "--all")
    assert isinstance(body, dict)
    assert sorted(o["order"] for o in body["orders"]) == ["N19", "NEW"]
    assert body["not_in_journal"] == []
    monkeypatch.setattr("sys.stdin", io.StringIO("N79\n"))
    code, body = served.json("deadlines", "--orders-from", "-")
    assert isinstance(body, dict)
    assert [o["order"] for o in body["orders"]] == ["N79"]
    # Without names: the orders with open operations, the one listing the Journal offers.
    code, text = served.run("deadlines")
    assert code == 0
    assert "read 4 orders with open operations" in text
    assert served.applied("C1") == ["C(500)"]
    assert sum(len(served.applied(order)) for order in ages) == 0


# -- settings, journal, output ----------------------------------------------------------------


def test_credentials_file_readable_only_by_its_owner(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served.emulator.authorize(MID, "F1", 1000)
    for name in ("ECPAY_MERCHANT_ID", "ECPAY_HASH_KEY", "ECPAY_HASH_IV"):
        monkeypatch.delenv(name)
    secrets = tmp_path / "ecpay.env"
    secrets.write_text(
        f"# the shop's merchant\nECPAY_MERCHANT_ID={MID}\nexport ECPAY_HASH_KEY='{KEY}'\n"
        f'ECPAY_HASH_IV="{IV}"\n',
        encoding="utf-8",
    )
    secrets.chmod(0o644)
    code, body = served.json("query", "F1", "--credentials-file", str(secrets))
    assert code == 2
    assert isinstance(body, dict)
    assert "can be read or changed by its group or by others (mode 0644)" in body["message"]
    assert f"chmod 600 {secrets}" in body["message"]
    secrets.chmod(0o600)
    assert served.run("query", "F1", "--credentials-file", str(secrets))[0] == 0
    monkeypatch.setenv("ECPAY_CREDENTIALS_FILE", str(secrets))
    assert served.run("capture", "F1", "--key", "capture-F1")[0] == 0
    # The file overrides the environment.
    monkeypatch.setenv("ECPAY_HASH_KEY", "WrongWrongWrong1")
    assert served.run("query", "F1")[0] == 0
    # A line that is not NAME=VALUE is named by its number, never shown.
    secrets.write_text(f"ECPAY_MERCHANT_ID={MID}\n{KEY}\n", encoding="utf-8")
    code, body = served.json("query", "F1")
    assert code == 2
    assert isinstance(body, dict)
    assert "line 2: not NAME=VALUE" in body["message"]
    assert KEY not in json.dumps(body)
    assert KEY not in capsys.readouterr().err


def test_the_default_journal_lives_in_the_users_data_directory(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("ECPAY_JOURNAL")
    default = tmp_path / "data" / "ecpay-lifecycle" / "journal.db"
    code, body = served.json("journal")  # reading creates nothing
    assert code == 2
    assert isinstance(body, dict)
    assert f"no journal at {default}" in body["message"]
    assert not default.exists()
    served.emulator.authorize(MID, "J1", 1000)
    assert served.run("capture", "J1", "--key", "capture-J1")[0] == 0
    assert default.exists()
    assert oct(default.parent.stat().st_mode & 0o777) == "0o700"
    code, text = served.run("journal", "--order", "J1")
    assert "capture-J1  succeeded" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_are_bold_on_a_terminal_and_plain_in_a_pipe(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.emulator.authorize(MID, "P1", 1000)
    served.run("capture", "P1", "--key", "capture-P1")
    piped = io.StringIO()
    main(["journal", "--order", "P1"], out=piped, clock=served.emulator.clock)
    assert "\x1b" not in piped.getvalue()
    terminal = Terminal()
    main(["journal", "--order", "P1"], out=terminal, clock=served.emulator.clock)
    header, row = terminal.getvalue().splitlines()
    assert header.startswith("\x1b[1mORDER")
    assert header.endswith("\x1b[0m")
    assert "\x1b" not in row
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    main(["journal", "--order", "P1"], out=plain, clock=served.emulator.clock)
    assert "\x1b" not in plain.getvalue()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert re.fullmatch(r"ecpay-lifecycle \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OutcomeUnknown("lost"), 3),
        (OrderLocked("locked"), 3),
        (OrderChanged("another key acted"), 4),  # nothing was sent: try again, same key
        (TransportError("never connected"), 4),
        (RuleViolation("R10", "too much"), 1),
        (ValueError("a bug"), 70),
    ],
)
def test_each_error_exits_with_what_it_means_for_the_money(error: Exception, code: int) -> None:
    assert exit_code(error) == code


def test_operations_md_tabulates_every_exit_code() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \|", text, re.MULTILINE)
    assert {int(code): meaning for code, meaning in rows} == dict(EXIT_CODES)


# -- secrets ----------------------------------------------------------------------------------


def _leaks(text: str) -> list[str]:
    """Any 8 consecutive characters of the HashKey or HashIV in ``text``."""
    pieces = {s[i : i + 8] for s in (KEY, IV) for i in range(len(s) - 7)}
    return sorted(p for p in pieces if p in text)


def test_no_command_ever_prints_the_hash_key_or_iv(
    served: Served,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    settled(served, "S1")
    served.emulator.authorize(MID, "S2", 500, at=NOW - dt.timedelta(days=20))
    lose_a_refund(served, "S1", "refund-S1-1")
    served.emulator.advance(dt.timedelta(minutes=16))
    runs = [
        ["query", "S1"],
        ["query", "S2"],
        ["capture", "S2", "--dry-run"],
        ["refund", "S2", "100"],
        ["abandon", "S2", "--dry-run"],
        ["refund", "S1", "100", "--dry-run"],
        ["refund", "S1", "100"],
        ["reconcile", "S1"],
        ["sweep"],
        ["journal"],
        ["journal", "--order", "S1"],
        ["deadlines", "S1", "S2", "--query"],
        ["plan", "--state", "closed", "--amount", "100", "--refund", "50"],
        ["capture", "S2", "--key", "capture-S2"],
        ["abandon", "S1"],
        ["refund", "S1", "lots"],
    ]
    for argv in runs:
        for extra in ([], ["--json"]):
            main([*argv, *extra], clock=served.emulator.clock)
    # Wrong settings: a swapped key, a key as merchant ID, the wrong key (ECPay's 110).
    for name, value in (
        ("ECPAY_HASH_KEY", IV + "x"),
        ("ECPAY_MERCHANT_ID", KEY),
        ("ECPAY_HASH_IV", KEY),
    ):
        with monkeypatch.context() as patched:
            patched.setenv(name, value)
            for extra in ([], ["--json"]):
                assert main(["query", "S1", *extra], clock=served.emulator.clock) == 2
    secrets = tmp_path / "leaky.env"
    secrets.write_text(f"ECPAY_HASH_KEY={KEY}\n", encoding="utf-8")
    secrets.chmod(0o640)
    main(["query", "S1", "--credentials-file", str(secrets)], clock=served.emulator.clock)
    captured = capfd.readouterr()
    assert "S1" in captured.out  # the commands did print
    assert _leaks(captured.out) == []
    assert _leaks(captured.err) == []
    # A real process on the system clock, against an emulator on the real time.
    live = Emulator(now=dt.datetime.now(dt.UTC))
    live.add_merchant(MID, KEY, IV, auto_close=False)
    live.authorize(MID, "S3", 500)
    with serving(live) as url:
        done = subprocess.run(
            [sys.executable, "-m", "ecpay_lifecycle", "query", "S3", "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "ECPAY_BASE_URL": url},
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "authorized"
    assert _leaks(done.stdout + done.stderr) == []


def test_query_sends_what_client_query_sends(served: Served) -> None:
    """Cashier/QueryTrade and CreditDetail/QueryTrade, nothing else (R4)."""
    served.emulator.authorize(MID, "H1", 1000)
    served.emulator.clear_events()
    served.run("query", "H1")
    seen = [e.endpoint for e in served.emulator.events if e.kind is EventKind.REQUEST]
    assert seen == [Endpoint.QUERY_TRADE, Endpoint.CREDIT_DETAIL]
