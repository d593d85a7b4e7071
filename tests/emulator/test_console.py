"""The emulator's console in a real headless browser: Debian's ``chromium`` driven by Playwright.

A QA engineer's session, clicked: authorize an order on the page, capture and refund it with
:class:`ecpay_lifecycle.Client` pointed at the served emulator and watch the page follow; run the
20:15 batch and watch the states settle; arm faults by clicking and watch the client meet them and
the event log show them; jump to an order's day-21/80/90 deadlines. Also against a real
``ecpay-lifecycle serve`` process. The page must load nothing from elsewhere, raise no script
error, and never show a HashKey or HashIV. ``CONSOLE_SCREENSHOT=path`` saves the screenshot of
docs/images/console.png.

Every wait is bounded (``WAIT``). Without chromium or Playwright these tests skip and say how to
install them; under ``CI=true`` they fail instead (``.ci/run`` installs both).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ecpay_lifecycle import (
    Client,
    Credentials,
    GatewayRefused,
    OutcomeUnknown,
    RateLimited,
    Verdict,
)
from ecpay_lifecycle.emulator import Emulator, serving
from test_emulator_support import IV, KEY, MID, START, TAIPEI

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

#: Milliseconds: the bound of every wait on the page (the page polls every POLL_MS).
WAIT = 10_000
POLL_MS = 150
MANUAL = "3002608"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
_INSTALL = (
    "the console's browser tests drive Debian's chromium with Playwright: "
    "apt-get install chromium && pip install -e '.[dev]' (never `playwright install`: "
    "it downloads a browser build)"
)


def _unavailable(what: str) -> None:
    """Under CI a missing browser is a failure (.ci/run installs it); elsewhere a skip."""
    message = f"{what}; {_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        _unavailable("chromium is not installed")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """One headless chromium for the module, with a fresh profile directory."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed")
    executable = _chromium()
    expect.set_options(timeout=WAIT)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
            timeout=30_000,
        )
        context.set_default_timeout(WAIT)
        context.set_default_navigation_timeout(WAIT)
        try:
            yield context
        finally:
            context.close()


class Console:
    """One page on one served emulator, recording every request the page makes and every
    script error, console error and uncaught exception it meets."""

    def __init__(self, context: BrowserContext, base_url: str, emulator: Emulator) -> None:
        self.base_url = base_url
        self.emulator = emulator
        self.requests: list[str] = []
        self.errors: list[str] = []
        #: Chromium logs each admin call answered 4xx; a test that provokes one counts it here.
        self.refused_calls: list[str] = []
        self.expected_refusals = 0
        self.page: Page = context.new_page()
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", self._console_message)
        self.page.goto(f"{base_url}/?poll={POLL_MS}")
        self.expect(self.page.locator("#connection")).to_have_text("live")

    def _console_message(self, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        if message.text.startswith(
            "Failed to load resource: the server responded with a status of 4"
        ):
            self.refused_calls.append(message.text)
        else:
            self.errors.append(f"console {message.type}: {message.text}")

    @staticmethod
    def expect(locator: Any) -> Any:
        from playwright.sync_api import expect

        return expect(locator)

    def order(self, number: str, merchant_id: str = MID) -> Any:
        return self.page.locator(f'#order-rows tr[data-order="{merchant_id}/{number}"]')

    def field(self, number: str, name: str, merchant_id: str = MID) -> Any:
        return self.order(number, merchant_id).locator(f'[data-field="{name}"]')

    def balance(self, merchant_id: str = MID) -> Any:
        return self.page.locator(
            f'#merchant-rows tr[data-merchant="{merchant_id}"] [data-field="balance"]'
        )

    def event(self, pattern: str) -> Any:
        return self.page.locator("#event-rows li", has_text=re.compile(pattern))

    def arm(self, fault: str, **fields: Any) -> None:
        """Arm a fault through the form, as a person would."""
        page = self.page
        page.select_option("#fault-kind", fault)
        page.select_option("#fault-endpoint", fields.get("endpoint", ""))
        page.select_option("#fault-action", fields.get("action", ""))
        page.fill("#fault-order", fields.get("order", ""))
        page.set_checked("#fault-forever", fields.get("forever", False))
        page.set_checked("#fault-after", fields.get("after_do_action", False))
        page.click("#fault-arm")
        self.expect(page.locator("#message")).to_contain_text("Armed fault #")

    def check_clean(self) -> None:
        """Nothing loaded from elsewhere, no script error, no HashKey or HashIV anywhere."""
        outside = [url for url in self.requests if not url.startswith(self.base_url + "/")]
        assert outside == [], outside
        assert self.errors == []
        assert len(self.refused_calls) == self.expected_refusals, self.refused_calls
        dom = self.page.content()
        text = self.page.inner_text("body")
        overview = httpx.get(
            f"{self.base_url}/_emulator/overview",
            headers={"Content-Type": "application/json"},
            timeout=5.0,
        ).text
        for shown in (dom, text, overview):
            assert KEY not in shown
            assert IV not in shown
            assert KEY[:8] not in shown


@pytest.fixture
def console(browser: BrowserContext) -> Iterator[Console]:
    emulator = Emulator(now=START)
    emulator.add_merchant(MID, KEY, IV, balance=50_000)
    emulator.add_merchant(MANUAL, KEY, IV, auto_close=False)
    with serving(emulator) as base_url:
        console = Console(browser, base_url, emulator)
        try:
            yield console
            console.check_clean()
        finally:
            console.page.close()


def _client(console: Console, merchant_id: str = MID) -> Client:
    return Client(
        Credentials(merchant_id, KEY, IV),
        base_url=console.base_url,
        clock=console.emulator.clock,
        timeout=5.0,
    )


def test_an_order_made_on_the_page_follows_the_clients_capture_refund_and_the_batch(
    console: Console,
) -> None:
    page, expect = console.page, console.expect
    expect(console.balance()).to_have_text("50,000")
    expect(page.locator("#now")).to_have_text("2026-08-03 10:00:00")
    # Authorize a test order on the page.
    page.select_option("#authorize-merchant", MID)
    page.fill("#authorize-number", "QA1001")
    page.fill("#authorize-amount", "1000")
    page.click("#authorize-submit")
    expect(console.order("QA1001")).to_have_attribute("data-state", "authorized")
    expect(page.locator("#message")).to_contain_text("QA1001: TradeNo 2608031000000001")
    assert console.emulator.order(MID, "QA1001").amount == 1000
    expect(console.field("QA1001", "kind")).to_have_text("one_time")
    expect(console.field("QA1001", "closed_amount")).to_have_text("0")

    with _client(console) as client:
        client.capture("QA1001")
        expect(console.order("QA1001")).to_have_attribute("data-state", "to_close")
        expect(console.field("QA1001", "status")).to_have_text("To be captured")
        expect(console.field("QA1001", "closed_amount")).to_have_text("1000")
        expect(console.field("QA1001", "actions")).to_contain_text("C 1000 · 08-03 10:00")
        expect(console.event(r"request DO_ACTION QA1001 C\(1000\) applied")).to_have_count(1)

        # Run the 20:15 batch by clicking: the capture settles and the balance grows.
        expect(page.locator("#run-batch")).to_have_text("Run the 20:15 batch")
        page.click("#run-batch")
        expect(page.locator("#now")).to_have_text("2026-08-03 20:30:00")
        expect(console.order("QA1001")).to_have_attribute("data-state", "closed")
        expect(console.field("QA1001", "status")).to_have_text("Captured")
        expect(console.field("QA1001", "close_rows")).to_have_text("Captured 1000 · 08-03 20:15")
        expect(console.balance()).to_have_text("51,000")
        expect(console.event("batch settled 1 order")).to_have_count(1)

        # A refund after settlement: ClsAmt drops at once, the batch settles it.
        client.refund("QA1001", 300)
        expect(console.field("QA1001", "closed_amount")).to_have_text("700")
        expect(console.field("QA1001", "refunds")).to_contain_text("R 300 · 08-03 20:30")
        expect(console.field("QA1001", "refunds")).to_contain_text("300 until the batch")
        expect(console.balance()).to_have_text("50,700")
        expect(console.order("QA1001")).to_have_attribute("data-state", "to_close")
        page.click("#run-batch")
        expect(page.locator("#now")).to_have_text("2026-08-04 20:30:00")
        expect(console.order("QA1001")).to_have_attribute("data-state", "closed")
        expect(console.field("QA1001", "closed_amount")).to_have_text("700")
        expect(console.field("QA1001", "refunds")).not_to_contain_text("until the batch")
    assert console.emulator.order(MID, "QA1001").closed_amount == 700

    # A bad order number is refused by the admin route; the page says so and nothing changes.
    page.fill("#authorize-number", "QA1001")
    page.click("#authorize-submit")
    expect(page.locator("#message")).to_have_attribute("data-kind", "error")
    expect(page.locator("#message")).to_contain_text("failed")
    console.expected_refusals = 1
    assert len(console.emulator.orders()) == 1


def test_faults_armed_by_clicking_meet_the_client_and_show_in_the_event_log(
    console: Console,
) -> None:
    page, expect = console.page, console.expect
    console.emulator.authorize(MID, "A1", 1000)
    with _client(console) as client:
        client.capture("A1")
        # The reply of the next DoAction is lost, and from then on CreditDetail fails: the
        # client cannot confirm its refund, so the outcome is unknown.
        console.arm("lost_reply", endpoint="DO_ACTION")
        console.arm(
            "server_error_before_apply",
            endpoint="CREDIT_DETAIL",
            forever=True,
            after_do_action=True,
        )
        rows = page.locator("#fault-rows tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(1)).to_contain_text("until cleared (waits for a DoAction)")
        with pytest.raises(OutcomeUnknown) as caught:
            client.refund("A1", 100)
        expect(console.event(r"DO_ACTION A1 R\(100\) applied fault:LOST_REPLY")).to_have_count(1)
        expect(console.event("CREDIT_DETAIL A1 fault:SERVER_ERROR_BEFORE_APPLY")).not_to_have_count(
            0
        )
        expect(page.locator('#event-rows li[data-fault="lost_reply"]')).to_have_count(1)
        # The lost reply's refund did land: the page shows what ECPay knows.
        expect(console.field("A1", "closed_amount")).to_have_text("900")
        expect(console.field("A1", "refunds")).to_contain_text("R 100 · 08-03 10:00 · lost_reply")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("until cleared")
        expect(rows.first).not_to_contain_text("waits")

        page.click("#fault-clear")
        expect(page.locator("#fault-rows")).to_have_text("No fault armed.")
        assert console.emulator.faults.pending() == ()
        # Past the fence (R22) by clicking, the client resolves what it could not know.
        assert caught.value.retry_at is not None
        page.click("#advance-1d")
        expect(page.locator("#now")).to_have_text("2026-08-04 10:00:00")
        reconciled = client.reconcile("A1")
        assert [r.verdict for r in reconciled.resolutions] == [Verdict.DONE]
        assert not reconciled.locked

        # A fault that stops every request: the client meets it at once.
        console.arm("rate_limited", endpoint="CREDIT_DETAIL")
        with pytest.raises(RateLimited):
            client.query("A1")
        expect(console.event("CREDIT_DETAIL A1 fault:RATE_LIMITED")).to_have_count(1)
        expect(page.locator("#fault-rows")).to_have_text("No fault armed.")


def test_the_day_buttons_move_the_clock_to_an_orders_deadlines(console: Console) -> None:
    page, expect = console.page, console.expect
    console.emulator.authorize(MANUAL, "OLD1", 500, at=START - dt.timedelta(days=1))
    row = console.order("OLD1", MANUAL)
    expect(row).to_have_attribute("data-state", "authorized")
    day21, day80, day90 = (
        row.locator(f'button[data-goto="{name}"]') for name in ("close_limit", "notice", "abandon")
    )
    expect(day21).to_have_text("day 21")
    day21.click()
    expect(page.locator("#now")).to_have_text("2026-08-23 10:00:00")
    assert console.emulator.now == dt.datetime(2026, 8, 23, 10, 0, tzinfo=TAIPEI)
    expect(day21).to_be_disabled()  # the past cannot be gone to
    with (
        _client(console, MANUAL) as client,
        pytest.raises(GatewayRefused, match=re.escape("(error_overDate)")),  # R6: too late
    ):
        client.capture("OLD1")
    day80.click()
    expect(console.event("OLD1 R7: unclosed order notice")).to_have_count(1)
    expect(row).to_have_attribute("data-state", "authorized")
    day90.click()  # just past day 90: abandoned
    expect(row).to_have_attribute("data-state", "abandoned")
    expect(console.event("expire OLD1")).to_have_count(1)
    expect(page.locator("#now")).to_have_text("2026-10-31 10:00:01")
    page.click("#advance-10m")
    expect(page.locator("#now")).to_have_text("2026-10-31 10:10:01")


def test_the_console_of_a_real_serve_process(
    browser: BrowserContext, tmp_path: pathlib.Path
) -> None:
    """``ecpay-lifecycle serve`` in a child process serves the same page: the seed's merchant,
    its order, and moving the clock by clicking."""
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "start": START.isoformat(),
                "merchants": [{"merchant_id": MID, "hash_key": KEY, "hash_iv": IV, "balance": 7}],
                "orders": [{"merchant_id": MID, "merchant_trade_no": "S1", "amount": 100}],
            }
        ),
        encoding="utf-8",
    )
    command = shutil.which("ecpay-lifecycle", path=os.path.dirname(sys.executable))
    assert command is not None, "the ecpay-lifecycle script is not installed in this venv"
    child = subprocess.Popen(
        [command, "serve", "--port", "0", "--seed", str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        banner = child.stdout.readline()
        assert banner.startswith("ECPay emulator on http://127.0.0.1:"), banner
        base_url = banner.split()[3]
        page = browser.new_page()
        try:
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base_url}/?poll={POLL_MS}")
            Console.expect(page.locator("#connection")).to_have_text("live")
            Console.expect(
                page.locator(f'#merchant-rows tr[data-merchant="{MID}"]')
            ).to_contain_text("7")
            Console.expect(
                page.locator(f'#order-rows tr[data-order="{MID}/S1"]')
            ).to_have_attribute("data-state", "authorized")
            page.click("#run-batch")
            Console.expect(
                page.locator(f'#order-rows tr[data-order="{MID}/S1"]')
            ).to_have_attribute("data-state", "closed")
            for shown in (page.content(), page.inner_text("body")):
                assert KEY not in shown
                assert IV not in shown
            assert errors == []
        finally:
            page.close()
    finally:
        child.terminate()
        try:
            child.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise


def test_screenshot_for_the_docs(console: Console) -> None:
    """The page in a typical state; saved where ``CONSOLE_SCREENSHOT`` says (docs/images/)."""
    page, expect = console.page, console.expect
    emulator = console.emulator
    emulator.authorize(MANUAL, "OLD1", 500, at=START - dt.timedelta(days=30))
    for number, amount in (("SHOP1001", 1000), ("SHOP1002", 2400), ("SHOP1003", 600)):
        emulator.authorize(MID, number, amount)
    with _client(console) as client:
        client.capture("SHOP1001")
        client.capture("SHOP1002")
        page.click("#run-batch")
        expect(console.order("SHOP1001")).to_have_attribute("data-state", "closed")
        client.refund("SHOP1001", 300)
        console.arm("lost_reply", endpoint="DO_ACTION", action="R")
        client.refund("SHOP1002", 400)  # the client queries and sees it landed
        console.arm("late_apply", order="SHOP1003")
    expect(console.field("SHOP1002", "refunds")).to_contain_text("lost_reply")
    page.fill("#authorize-number", "SHOP1004")
    expect(page.locator("#fault-rows tr")).to_have_count(1)
    target = os.environ.get("CONSOLE_SCREENSHOT")
    image = page.screenshot(full_page=True, path=target or None)
    assert image.startswith(b"\x89PNG")
