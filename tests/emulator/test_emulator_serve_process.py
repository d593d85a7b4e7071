"""``ecpay-lifecycle serve`` as a real process: its clock runs in real time, merchants' secrets
come from the environment or an owner-only file and never reach the process list or the console,
its state survives a restart, and SIGTERM stops it cleanly with exit status 0."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from ecpay_lifecycle._cli import main
from ecpay_lifecycle.emulator import Endpoint
from test_emulator_support import IV, KEY, MID, TAIPEI, Wire

PATIENCE = 10.0
GENERATED = "2000132"


def command() -> str:
    found = shutil.which("ecpay-lifecycle", path=os.path.dirname(sys.executable))
    assert found is not None, "the ecpay-lifecycle script is not installed in this venv"
    return found


class Served:
    """One ``ecpay-lifecycle serve`` child process."""

    def __init__(self, *argv: str, env: dict[str, str]) -> None:
        self.child = subprocess.Popen(
            [command(), "serve", "--port", "0", "--log-level", "debug", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.child.stdout is not None
        self.banner = self.child.stdout.readline()
        assert self.banner.startswith("ECPay emulator on http://127.0.0.1:"), self.banner
        self.url = self.banner.split()[3]
        self.http = httpx.Client(base_url=self.url, timeout=5.0)

    def clock(self) -> dt.datetime:
        """The served emulator's time (for request Timestamps, R20)."""
        return dt.datetime.fromisoformat(self.http.get("/_emulator/time").json()["now"])

    def wire(self, merchant_id: str, key: str, iv: str) -> Wire:
        wire = Wire(
            self,  # type: ignore[arg-type]  # it only asks for clock()
            merchant_id=merchant_id,
            key=key,
            iv=iv,
            transport=httpx.HTTPTransport(),
        )
        wire.http.close()
        wire.http = self.http
        return wire

    def order(self, number: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.http.get(f"/_emulator/orders/{MID}/{number}").json()
        return answer

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, as a service manager sends it; the exit status and everything printed."""
        self.http.close()
        os.kill(self.child.pid, signal.SIGTERM)
        try:
            out, err = self.child.communicate(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.communicate()
            raise
        return self.child.returncode, self.banner + out, err


def process_list() -> str:
    return subprocess.run(
        ["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True
    ).stdout


def test_serve_runs_in_real_time_keeps_its_state_and_stops_cleanly(
    tmp_path: pathlib.Path,
) -> None:
    state = tmp_path / "team.json"
    secrets_file = tmp_path / "merchants"
    env = {**os.environ, "ECPAY_EMULATOR_MERCHANTS": f"{MID}:{KEY}:{IV}"}
    start = dt.datetime(2026, 8, 3, 20, 14, 59, 300_000, tzinfo=TAIPEI)
    served = Served(
        "--state",
        str(state),
        "--merchant",
        GENERATED,
        "--merchants-file",
        str(secrets_file),
        "--order",
        f"{MID}:A1:1000",
        "--start",
        start.isoformat(),
        env=env,
    )
    try:
        assert "(real time)" in served.banner
        # The process list shows the command line, never a secret.
        cmdline = pathlib.Path(f"/proc/{served.child.pid}/cmdline").read_bytes()
        generated_key, generated_iv = (
            secrets_file.read_text(encoding="utf-8").split()[0].split(":")[1:]
        )
        secrets = (KEY, IV, generated_key, generated_iv)
        listing = process_list()
        assert "ecpay-lifecycle serve" in listing
        for secret in secrets:
            assert secret.encode() not in cmdline
            assert secret not in listing
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        # Real time: 20:15 comes by itself and the batch captures the order.
        deadline = time.monotonic() + PATIENCE
        while served.order("A1")["status"] != "Captured":
            assert time.monotonic() < deadline, served.order("A1")
            time.sleep(0.05)
        assert served.order("A1")["close_rows"][0]["at"] == "2026-08-03T20:15:00+08:00"
        # The environment's secrets serve MID; the generated ones, written to the file, serve
        # the other merchant.
        detail = served.wire(MID, KEY, IV).detail("A1")
        assert detail["RtnValue"]["Status"] == "Captured"
        other = served.wire(GENERATED, generated_key, generated_iv)
        missing = other.call(
            Endpoint.CREDIT_DETAIL, {"MerchantID": GENERATED, "MerchantTradeNo": "NONE"}
        )
        assert missing["RtnCode"] != 1  # decrypted and answered: no such order
        moved = served.http.post("/_emulator/time", json={"advance_seconds": 86400}).json()
        assert moved["realtime"] is True
        # A bad admin request is refused and printed nowhere with a key.
        served.http.post("/_emulator/merchants", json={"merchant_id": KEY, "hash_key": IV})
    finally:
        code, out, err = served.stop()
    assert code == 0, err
    assert "stopped; state saved to" in err
    assert "Traceback" not in err
    assert "Finished server process" in err  # uvicorn's own graceful end
    for secret in secrets:
        assert secret not in out
        assert secret not in err
    assert stat.S_IMODE(state.stat().st_mode) == 0o600

    # A restart from the state file, with no secrets in the environment at all.
    again = Served("--state", str(state), env={**os.environ, "ECPAY_EMULATOR_MERCHANTS": ""})
    try:
        assert again.clock() >= dt.datetime.fromisoformat(moved["now"])
        assert again.order("A1")["status"] == "Captured"
        assert again.wire(MID, KEY, IV).detail("A1")["RtnValue"]["ClsAmt"] == 1000
    finally:
        code, out, err = again.stop()
    assert code == 0, err
    assert "state loaded from" in err
    for secret in secrets:
        assert secret not in out + err


def test_serve_keeps_secrets_off_the_command_line(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECPAY_EMULATOR_MERCHANTS", raising=False)
    assert main(["serve", "--port", "0", "--merchant", f"{MID}:{KEY}:{IV}"]) == 2
    err = capsys.readouterr().err
    assert "ECPAY_EMULATOR_MERCHANTS" in err
    assert KEY not in err
    assert IV not in err
    readable = tmp_path / "merchants"
    readable.write_text(f"{MID}:{KEY}:{IV}\n", encoding="utf-8")
    readable.chmod(0o644)
    assert main(["serve", "--port", "0", "--merchants-file", str(readable)]) == 2
    err = capsys.readouterr().err
    assert "can be read by other users" in err
    assert KEY not in err
    monkeypatch.setenv("ECPAY_EMULATOR_MERCHANTS", f"{MID}:{KEY}")
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "entry 1 of ECPAY_EMULATOR_MERCHANTS is not ID:HASHKEY:HASHIV" in err
    assert KEY not in err
    monkeypatch.delenv("ECPAY_EMULATOR_MERCHANTS")
    assert main(["serve", "--port", "0", "--merchants-file", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
