"""The owner's pages in a real browser (Debian's Chromium through Playwright) against the system as the
Procfile runs it (web, the orders worker and the simulated terminal, on the embedded defaults): signing
in, a pending signal arriving, approving it and its trade filling, rejecting with a reason, a signal
decided elsewhere or expired leaving the list, a form without its CSRF token refused, and nobody else's
rows; a guard alert counting down on the accounts page, which updates by itself when the positions are
closed, and what that left on the other pages.

With TRADEGUARD_SCREENSHOTS=1 each page is saved under docs/screens/ (the README shows them); otherwise
the screenshots go to a temporary folder, so that a test run leaves the tree as it was."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.core.signing import sign
from shared.mt5.sim.client import connect
from tests.integration.conftest import SITE
from tests.integration.test_guards_engine import MAX_DRAWDOWN
from tests.processes import ROOT, embedded_env, free_port, listening, procfile_processes, wait_for

SCREENS = (
    ROOT / "docs" / "screens"
    if os.environ.get("TRADEGUARD_SCREENSHOTS")
    else Path(tempfile.mkdtemp(prefix="tg-screens-"))
)


class _Http(requests.Session):
    """requests with a timeout on every call: a stuck server fails the test instead of hanging it."""

    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("timeout", 30)
        return super().request(*args, **kwargs)


http = _Http()
PASSWORD = "correct horse battery"


class System:
    def __init__(self, port: int, terminal_port: int):
        self.port = port
        self.terminal_port = terminal_port
        self.base = f"http://{SITE}:{port}"
        self.api = f"http://127.0.0.1:{port}/api/v1"

    def owner(self, login: int) -> dict[str, Any]:
        """A registered owner with an account on the terminal and a strategy client."""
        email = f"browser-{uuid.uuid4().hex[:6]}@example.com"
        assert http.post(f"{self.api}/auth/register", json={"email": email, "password": PASSWORD}).ok
        token = http.post(f"{self.api}/auth/login", json={"email": email, "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        account = http.post(
            f"{self.api}/accounts",
            json={
                "name": "Main",
                "terminal_url": f"sim://127.0.0.1:{self.terminal_port}",
                "login": login,
                "password": "demo",
                "server": "TradeGuard-Sim",
            },
            headers=headers,
        )
        assert account.status_code == 201, account.text
        client = http.post(
            f"{self.api}/clients",
            json={"name": "trend follower", "account_id": account.json()["id"]},
            headers=headers,
        ).json()
        return {"email": email, "headers": headers, "account": account.json(), "client": client}

    def signal(self, owner: dict[str, Any], **body: Any) -> int:
        payload = {
            "instrument": "EURUSD",
            "side": "buy",
            "volume": "0.10",
            "comment": uuid.uuid4().hex,
            **body,
        }
        raw = json.dumps(payload).encode()
        timestamp = str(int(time.time()))
        client = owner["client"]
        response = http.post(
            f"{self.api}/signals",
            data=raw,
            headers={
                "Content-Type": "application/json",
                "X-Client-Id": str(client["id"]),
                "X-Timestamp": timestamp,
                "X-Signature": sign(client["secret"], timestamp, raw),
            },
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def guard(self, owner: dict[str, Any]) -> dict[str, Any]:
        [standing] = [
            g
            for g in http.get(f"{self.api}/guards", headers=owner["headers"]).json()
            if g["account_id"] == owner["account"]["id"]
        ]
        return standing

    def trades(self, owner: dict[str, Any]) -> list[dict[str, Any]]:
        return http.get(f"{self.api}/trades", headers=owner["headers"]).json()["items"]


@pytest.fixture(scope="module")
def system(_embedded_database_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    instance = tmp_path_factory.mktemp("pages-browser")
    for database_file in _embedded_database_template.glob("tradeguard.db*"):
        shutil.copy(database_file, instance / database_file.name)
    port, terminal_port = free_port(), free_port()
    env = embedded_env(
        instance,
        {
            "PORT": str(port),
            "WEB_CONCURRENCY": "1",
            "TRADEGUARD_TERMINAL_PORT": str(terminal_port),
            "TRADEGUARD_TERMINALS": f"sim://127.0.0.1:{terminal_port}",
        },
    )
    with procfile_processes(["terminal", "web", "worker", "reconciler", "guards", "beat"], env) as processes:
        assert wait_for(lambda: listening(port) and listening(terminal_port), timeout=60), processes[
            "web"
        ].log()
        processes["worker"].wait_for_log("ready.", timeout=60)
        yield System(port, terminal_port)


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Any, system: System, email: str) -> None:
    page.goto(f"{system.base}/signals")
    assert page.url.startswith(f"{system.base}/login?next=/signals")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{system.base}/signals")


def screenshot(page: Any, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def test_an_owner_signs_in_sees_a_signal_arrive_and_approves_it(system, browser_page):
    page = browser_page
    owner = system.owner(login=4101)
    page.goto(f"{system.base}/login")
    screenshot(page, "sign-in")
    sign_in(page, system, owner["email"])
    assert "Nothing waits for a decision" in page.inner_text("#pending")

    signal_id = system.signal(owner, volume="0.20", sl="1.00000", tp="1.30000")
    # The table is replaced every second: locators find the row afresh each time, element handles would not.
    page.wait_for_selector(f"#signal-{signal_id}", timeout=3_000)
    row = page.locator(f"#signal-{signal_id}")
    cells = row.inner_text()
    for shown in ("trend follower", "EURUSD", "buy", "0.2", "market", "1", "1.3"):
        assert shown in cells, (shown, cells)
    seconds_left = int(row.locator(".countdown").inner_text().split()[0])
    assert 0 < seconds_left <= 3600
    time.sleep(1.2)
    assert int(row.locator(".countdown").inner_text().split()[0]) < seconds_left  # counting down
    screenshot(page, "pending-signals")

    row.locator("button.approve").click()
    page.wait_for_url(f"{system.base}/signals?notice=approved")
    assert "Approved: the order is on its way." in page.inner_text("main")
    assert page.query_selector(f"#signal-{signal_id}") is None
    assert wait_for(lambda: [t["state"] for t in system.trades(owner)] == ["filled"], timeout=30)
    assert system.trades(owner)[0]["signal_id"] == signal_id


def test_rejecting_with_a_reason_and_signals_decided_elsewhere_or_expired_leave_the_list(
    system, browser_page
):
    page = browser_page
    owner = system.owner(login=4102)
    sign_in(page, system, owner["email"])
    rejected = system.signal(owner)
    page.wait_for_selector(f"#signal-{rejected}", timeout=3_000)
    row = page.locator(f"#signal-{rejected}")
    row.locator("input[name=reason]").fill("spread too wide <b>now</b>")  # typing pauses the refresh
    row.locator("button.reject").click()
    page.wait_for_url(f"{system.base}/signals?notice=rejected")
    approval = http.get(f"{system.api}/approvals", headers=owner["headers"]).json()["items"][0]
    assert (approval["signal_id"], approval["decision"], approval["reason"]) == (
        rejected,
        "reject",
        "spread too wide <b>now</b>",
    )
    assert system.trades(owner) == []

    elsewhere = system.signal(owner)
    expiring = system.signal(owner, ttl_seconds=3)
    page.wait_for_selector(f"#signal-{elsewhere}", timeout=3_000)
    page.wait_for_selector(f"#signal-{expiring}", timeout=3_000)
    decided = http.post(
        f"{system.api}/approvals",
        json={"signal_id": elsewhere, "decision": "reject", "reason": "from the API"},
        headers=owner["headers"],
    )
    assert decided.status_code == 201
    started = time.monotonic()
    page.wait_for_selector(f"#signal-{elsewhere}", state="detached", timeout=2_000)  # the 2 s
    assert time.monotonic() - started <= 2.0
    page.wait_for_selector(f"#signal-{expiring}", state="detached", timeout=6_000)  # 3 s of life, then gone


def test_a_form_posted_without_its_csrf_token_is_refused(system, browser_page):
    page = browser_page
    owner = system.owner(login=4103)
    sign_in(page, system, owner["email"])
    signal_id = system.signal(owner)
    page.wait_for_selector(f"#signal-{signal_id}", timeout=3_000)
    status = page.evaluate(
        """async (id) => {
            const response = await fetch(`/signals/${id}/decision`, {
                method: "POST", credentials: "same-origin",
                body: new URLSearchParams({decision: "approve"})});
            return response.status;
        }""",
        signal_id,
    )
    assert status == 403
    forged = page.evaluate(
        """async (id) => {
            const response = await fetch(`/signals/${id}/decision`, {
                method: "POST", credentials: "same-origin",
                body: new URLSearchParams({decision: "approve", csrf_token: "0".repeat(64)})});
            return response.status;
        }""",
        signal_id,
    )
    assert forged == 403
    assert http.get(f"{system.api}/approvals", headers=owner["headers"]).json()["total"] == 0
    assert page.query_selector(f"#signal-{signal_id}") is not None


def test_nobody_sees_another_owners_signals(system, browser_page):
    page = browser_page
    mine, theirs = system.owner(login=4104), system.owner(login=4105)
    their_signal = system.signal(theirs)
    my_signal = system.signal(mine)
    sign_in(page, system, mine["email"])
    page.wait_for_selector(f"#signal-{my_signal}", timeout=3_000)
    time.sleep(1.2)  # a refresh or two
    assert page.query_selector(f"#signal-{their_signal}") is None
    assert "trend follower" in page.inner_text("#pending")
    assert len(page.query_selector_all("#pending tbody tr")) == 1


# 1 lot of EURUSD is 10 USD a pip on the simulated account's 10,000 USD: 30 pips are 3 %.
CLOSE_AT_2_PERCENT = {"grace_seconds": 5, "confirmations": 2, "drawdown_limits": [MAX_DRAWDOWN]}


def test_an_alert_counts_down_on_the_accounts_page_which_updates_when_the_positions_close(
    system, browser_page
):
    page = browser_page
    owner = system.owner(login=4110)
    account_id = owner["account"]["id"]
    risk_url = f"{system.api}/accounts/{account_id}/risk"
    document = http.get(risk_url, headers=owner["headers"]).json()
    assert http.put(risk_url, json={**document, **CLOSE_AT_2_PERCENT}, headers=owner["headers"]).ok
    terminal = connect("127.0.0.1", system.terminal_port)
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    signal_id = system.signal(owner, volume="1.00")
    approved = http.post(
        f"{system.api}/approvals",
        json={"signal_id": signal_id, "decision": "approve"},
        headers=owner["headers"],
    )
    assert approved.status_code == 201
    assert wait_for(lambda: [t["state"] for t in system.trades(owner)] == ["filled"], timeout=30)
    trade_id = system.trades(owner)[0]["id"]
    # Synced and read by the guards: the limit has its reference (the peak) before the price falls.
    assert wait_for(lambda: system.guard(owner)["equity"] is not None, timeout=40)

    sign_in(page, system, owner["email"])
    page.goto(f"{system.base}/positions")
    page.wait_for_selector("tr[data-attribution=tradeguard]", timeout=15_000)
    assert f"TradeGuard: trade {trade_id}" in page.inner_text("main")
    screenshot(page, "positions")
    page.goto(f"{system.base}/accounts")
    card = page.locator(f"#account-{account_id}")
    assert card.get_attribute("data-state") == "ok"
    screenshot(page, "accounts")

    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)  # 30 pips down: past the 2 % maximum
    card.locator(".countdown").wait_for(timeout=10_000)  # no reload: the accounts part refreshes itself
    seconds_left = int(card.locator(".countdown").inner_text().split()[0])
    assert 0 <= seconds_left <= 5
    assert card.get_attribute("data-state") == "alert"
    assert "It will close every open position" in card.inner_text() and "EURUSD" in card.inner_text()
    screenshot(page, "accounts-alert")

    page.wait_for_selector(f"#account-{account_id}[data-state=halted]", timeout=20_000)
    assert card.locator(".countdown").count() == 0
    assert "New orders are refused until it resumes" in card.inner_text()
    screenshot(page, "accounts-halted")

    page.goto(f"{system.base}/alerts")
    assert "executed" in page.inner_text("main")
    screenshot(page, "alerts")
    page.goto(f"{system.base}/positions")
    page.wait_for_selector("tr[data-attribution=tradeguard]", state="detached", timeout=15_000)
    page.goto(f"{system.base}/trades")
    screenshot(page, "trades")
    page.goto(f"{system.base}/trades/{trade_id}")
    kinds = [element.inner_text() for element in page.query_selector_all("ol.timeline code.kind")]
    for kind in (
        "signal.received",
        "signal.approved",
        "order.sent",
        "order.filled",
        "alert.raised",
        "trade.closed",
    ):
        assert kind in kinds, (kind, kinds)
    assert kinds.index("signal.received") < kinds.index("order.filled") < kinds.index("trade.closed")
    screenshot(page, "trade-timeline")
    terminal.sim_release_quote("EURUSD")


def test_the_risk_form_shows_the_apis_messages_by_their_fields_and_a_webhooks_secret_is_shown_once(
    system, browser_page
):
    page = browser_page
    owner = system.owner(login=4111)
    sign_in(page, system, owner["email"])
    page.goto(f"{system.base}/risk")
    # The new limit row: a warning above its maximum.
    page.fill('input[name="drawdown_limits.0.name"]', "daily loss")
    page.fill('input[name="drawdown_limits.0.warn_percent"]', "6")
    page.fill('input[name="drawdown_limits.0.max_percent"]', "5")
    page.click("button.save")
    problem = page.locator('[id="error-drawdown_limits.0.warn_percent"]')
    problem.wait_for(timeout=5_000)
    api_answer = http.put(
        f"{system.api}/accounts/{owner['account']['id']}/risk",
        json={
            **http.get(
                f"{system.api}/accounts/{owner['account']['id']}/risk", headers=owner["headers"]
            ).json(),
            "drawdown_limits": [
                {
                    "name": "daily loss",
                    "period": "day",
                    "reference": "peak_equity",
                    "warn_percent": 6,
                    "max_percent": 5,
                    "max_amount": None,
                    "action": "warn",
                    "resume": "next_period",
                }
            ],
        },
        headers=owner["headers"],
    ).json()
    assert problem.inner_text() in " ".join(api_answer["error"]["fields"]["drawdown_limits.0.warn_percent"])
    assert page.input_value('input[name="drawdown_limits.0.warn_percent"]') == "6"  # what was typed, kept
    screenshot(page, "risk-settings")

    page.goto(f"{system.base}/webhooks")
    page.fill('input[name="url"]', f"http://127.0.0.1:{system.port}/nowhere")
    page.click("form:has(input[name=url]) button[type=submit]")
    secret = page.locator("input.secret-value").input_value()
    assert len(secret) >= 32
    screenshot(page, "webhooks")
    page.goto(f"{system.base}/webhooks")
    assert page.locator("input.secret-value").count() == 0 and secret not in page.content()
