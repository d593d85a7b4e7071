"""The diagram is generated from the machine and committed fresh; the plan command works."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys

from ecpay_lifecycle import _cli
from ecpay_lifecycle._diagram import render_mermaid
from ecpay_lifecycle._lifecycle import TRANSITIONS

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_diagram_is_fresh() -> None:
    committed = (ROOT / "diagrams" / "lifecycle.mmd").read_text(encoding="utf-8")
    assert committed == render_mermaid(), "run `ecpay-lifecycle diagram` and commit the result"


def test_diagram_has_one_edge_per_transition() -> None:
    text = render_mermaid()
    assert text.count(" --> ") == len(TRANSITIONS) + 1 + 3  # + [*] start + 3 terminal ends
    for spec in TRANSITIONS:
        assert f"{spec.source} --> {spec.dest} :" in text


def test_diagram_command_writes_the_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "d.mmd"
    assert _cli.main(["diagram", "--output", str(target)], out=io.StringIO()) == 0
    assert target.read_text(encoding="utf-8") == render_mermaid()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = _cli.main(list(argv), out=out)
    return code, out.getvalue()


NOW = "2026-11-25T10:00:00+08:00"


def test_plan_partial_refund_of_a_pending_capture() -> None:
    code, text = run(
        "plan", "--state", "to_close", "--amount", "1000", "--refund", "300", "--now", NOW
    )
    assert code == 0
    assert "R(300)" in text
    assert "closed 700" in text


def test_plan_full_refund_json() -> None:
    code, text = run(
        "plan", "--state", "to_close", "--amount", "1000", "--refund", "--json", "--now", NOW
    )
    assert code == 0
    body = json.loads(text)
    assert [s["action"] for s in body["steps"]] == ["E", "N"]
    assert body["refund_total"] == 1000


def test_plan_refusal_exit_code_and_rule() -> None:
    code, text = run(
        "plan",
        "--state",
        "closed",
        "--amount",
        "1000",
        "--kind",
        "installment",
        "--refund",
        "300",
        "--json",
        "--now",
        NOW,
    )
    assert code == 1
    assert json.loads(text)["refused"] == "R11"


def test_plan_blackout_says_when() -> None:
    code, text = run(
        "plan",
        "--state",
        "authorized",
        "--amount",
        "500",
        "--capture",
        "--now",
        "2026-11-25T20:20:00+08:00",
    )
    assert code == 1
    assert "R5" in text
    assert "2026-11-25T20:30:00+08:00" in text


def test_plan_bad_input_exit_code() -> None:
    code, _ = run("plan", "--state", "closed", "--amount", "1000", "--refund", "0", "--now", NOW)
    assert code == 2


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecpay_lifecycle",
            "plan",
            "--state",
            "authorized",
            "--amount",
            "800",
            "--abandon",
            "--now",
            NOW,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "N(800)" in done.stdout


def test_readme_shows_the_current_diagram() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = "\n".join(line for line in render_mermaid().splitlines() if not line.startswith("%%"))
    assert f"```mermaid\n{body}\n```" in readme, "paste the generated diagram into README.md"
