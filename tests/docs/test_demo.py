"""The main job: `ecpay-lifecycle demo` tells the whole story, truthfully and without secrets."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from ecpay_lifecycle import _cli
from ecpay_lifecycle._demo import run_demo, tell_story

KEYS = ("DemoKey0123456AB", "DemoIv0123456789")


def test_story_facts_as_the_emulator_sees_them() -> None:
    _rows, facts = tell_story(KEYS)
    assert facts["orders"] == {
        "DEMO1": "to_close/refund 500",  # 1000 captured, 300 off before the batch, 200 after
        "DEMO2": "closed 12000",  # the instalment partial refund was refused (R11)
        "DEMO3": "to_close/refund 550",  # UnionPay: closed at authorization, R only (R8)
        "DEMO4": "to_close/refund 0",  # the lost reply: refunded once
        "DEMO5": "abandoned 0",  # full refund before the batch: E then N (R13)
        "DEMO6": "to_close/refund 500",  # 900 settled, 400 refunded once by a worker that died
    }
    assert facts["bonus_order_refunds_applied_by_ecpay"] == 1
    # A worker died after ECPay applied its refund; the journal carried it: one refund.
    assert facts["dead_worker_refunds_applied_by_ecpay"] == 1
    # R16: settled captures (700 + 12000 + 1500 + 900) and UnionPay's 800, less the refunds
    # after settlement (200 + 250 + 1500 + 400), as the emulator keeps the balance.
    assert facts["merchant_balance"] == 700 + 12000 + 1500 + 900 + 800 - 200 - 250 - 1500 - 400


def test_story_shows_each_documented_behaviour() -> None:
    rows, _facts = tell_story(KEYS)
    by_asked = {(r.order, r.asked): r for r in rows}
    assert by_asked["DEMO5", "refund all"].plan == "E(600) -> N(600)"
    assert by_asked["DEMO1", "refund 300"].plan == "R(300)"
    assert by_asked["DEMO2", "refund 3000"].result == "refused R11"
    blackout = by_asked["DEMO1", "refund 100"]
    assert blackout.result == "refused R5"
    assert "possible from 20:30" in blackout.note
    assert by_asked["DEMO1", "refund 200"].sent == "R(200)"
    lost = by_asked["DEMO4", "refund all; the reply is lost"]
    assert lost.sent == "R(1500) reply lost, found done"
    assert by_asked["DEMO4", "the shop retries that request"].sent == "nothing (replayed)"
    died = [r for r in rows if r.order == "DEMO6"]
    assert [r.asked for r in died][1:] == [
        "worker A: refund 400; dies",
        "worker B: the shop retries",
        "worker B: sweep",
        "worker B: the shop retries",
    ]
    assert died[2].result == "in progress (R23)"
    assert died[2].sent == "nothing"
    assert died[3].result == "R(400) done"
    assert died[4].sent == "nothing (replayed)"


def test_demo_prints_a_table_and_never_the_keys() -> None:
    out = io.StringIO()
    assert run_demo(json_output=False, out=out, keys=KEYS) == 0
    text = out.getvalue()
    assert "refused R11" in text
    assert "no double refund" in text
    for secret in KEYS:
        assert secret not in text


def test_demo_json_is_machine_readable() -> None:
    out = io.StringIO()
    assert run_demo(json_output=True, out=out, keys=KEYS) == 0
    body = json.loads(out.getvalue())
    assert body["bonus_order_refunds_applied_by_ecpay"] == 1
    assert {"time", "order", "asked", "plan", "sent", "result"} <= set(body["rows"][0])
    for secret in KEYS:
        assert secret not in out.getvalue()


def test_demo_command() -> None:
    out = io.StringIO()
    assert _cli.main(["demo"], out=out) == 0
    assert "DEMO5" in out.getvalue()


def test_python_dash_m_demo_writes_only_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ecpay_lifecycle", "demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ecpay-lifecycle demo" in done.stdout
    assert done.stderr == ""  # the library logs nowhere unless the program configures logging


def test_demo_lines_have_no_trailing_spaces() -> None:
    out = io.StringIO()
    run_demo(json_output=False, out=out, keys=KEYS)
    assert all(line == line.rstrip() for line in out.getvalue().splitlines())
