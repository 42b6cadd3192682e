"""The Accounts and Alerts pages and each account's equity chart, through the app (Postgres): the sync,
figures and guards of each own account, drawdown limits as bars, a live alert's countdown and what it
closes, the fragment the page refreshes itself with, the alerts history, and nobody else's rows. The guard
and sync tasks write these tables; here the rows are inserted as they would leave them."""

from __future__ import annotations

import html
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from shared.models import Account, AccountSync, AlertClose, DrawdownAlert, GuardState, PositionSnapshot
from tests.integration.test_pages import sign_in

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def limit(name: str, warn: Any, maximum: Any, **values: Any) -> dict[str, Any]:
    return {
        "name": name,
        "period": "day",
        "reference": "period_start_balance",
        "warn_percent": warn,
        "max_percent": maximum,
        "max_amount": None,
        "action": "close",
        "resume": "next_period",
        **values,
    }


SETTINGS = {
    "grace_seconds": 30,
    "confirmations": 2,
    "drawdown_limits": [
        limit("daily loss", 3, 5),
        limit("weekly loss", None, 10, period="week", action="warn", resume="manual"),
        limit(
            "max drawdown",
            8,
            10,
            period="lifetime",
            reference="peak_equity",
            max_amount=2500,
            resume="manual",
        ),
    ],
    "min_margin_level_percent": 150,
    "market": {"max_spread_pips": 20, "max_gap_pips": 50, "stale_quote_seconds": 120, "action": "block"},
    "orders": {
        "max_lots_per_order": None,
        "max_open_positions": None,
        "max_total_lots": None,
        "max_orders_per_minute": None,
        "max_risk_percent_per_trade": None,
        "symbols": None,
    },
}

POSITIONS = [
    {"ticket": 701, "symbol": "EURUSD", "side": "buy", "volume": "0.10", "profit": "-40.00"},
    {"ticket": 702, "symbol": "XAUUSD", "side": "sell", "volume": "0.02", "profit": "-90.50"},
    {"ticket": 703, "symbol": "EURUSD", "side": "sell", "volume": "0.30", "profit": "12.00"},
]


def card(page: str, account_id: int) -> str:
    found = re.search(rf'<section class="account-card" id="account-{account_id}".*?</section>', page, re.S)
    assert found, page[:2000]
    return found.group(0)


def limit_row(html: str, name: str) -> str:
    found = re.search(rf'<tr class="limit" data-limit="{re.escape(name)}">.*?</tr>', html, re.S)
    assert found, html
    return found.group(0)


def bar_of(row: str) -> tuple[str, str]:
    """The bar's class and width."""
    found = re.search(r'<div class="(bar[^"]*)"[^>]*><span style="width: ([0-9.]+)%"></span></div>', row)
    assert found, row
    return found.group(1), found.group(2)


def add_alert(db_session: Any, world: dict[str, Any], **values: Any) -> DrawdownAlert:
    row = DrawdownAlert(
        **{
            "account_id": world["account"]["id"],
            "owner_id": world["user"]["id"],
            "alert_type": "drawdown",
            "limit_name": "daily loss",
            "reason": "daily loss 5.3% > 5%",
            "currency": "USD",
            "drawdown_percent": Decimal("5.3"),
            "drawdown_amount": Decimal("530.00"),
            "equity": Decimal("9470.00"),
            "threshold_percent": Decimal(5),
            "close_at": T0 + timedelta(seconds=30),
            "created_at": T0,
            **values,
        }
    )
    db_session.add(row)
    db_session.flush()
    db_session.expire(row)  # read back what Postgres stored
    return row


def guard_state(account_id: int, **values: Any) -> GuardState:
    return GuardState(
        **{
            "account_id": account_id,
            "state": "warning",
            "limits": {
                "daily loss": {"reference": "10000.00", "drawdown_percent": "3", "drawdown_amount": "300.00"},
                "weekly loss": {"reference": "10000.00", "drawdown_percent": "1", "drawdown_amount": "100"},
                "max drawdown": {
                    "reference": "10400.00",
                    "drawdown_percent": "7.5",
                    "drawdown_amount": "2600",
                },
            },
            "equity": Decimal("9700.00"),
            "balance": Decimal("10000.00"),
            "margin_level": Decimal("812.5"),
            "currency": "USD",
            "read_at": T0,
            **values,
        }
    )


@pytest.fixture
def world(api: Any, client: Any) -> dict[str, Any]:
    world = api.setup()
    response = client.put(
        f"/api/v1/accounts/{world['account']['id']}/risk", json=SETTINGS, headers=world["user"]["headers"]
    )
    assert response.status_code == 200, response.json
    return world


def test_a_user_without_accounts_is_told_what_to_do_next(api, client):
    user = api.user()
    sign_in(client, user["email"])
    page = client.get("/accounts").get_data(as_text=True)
    assert "No accounts yet: add one with <code>POST /api/v1/accounts</code>" in page
    assert 'data-refresh="/accounts/table" data-every="2000"' in page
    assert 'aria-current="page">Accounts</a>' in page and "<img" not in page
    assert "No accounts yet" in client.get("/accounts/table").get_data(as_text=True)
    alerts = client.get("/alerts").get_data(as_text=True)
    assert "No alerts yet." in alerts and "<table" not in alerts


def test_the_pages_send_a_stranger_to_sign_in(client, world):
    for path in ("/accounts", "/accounts/table", "/alerts", f"/accounts/{world['account']['id']}/equity.png"):
        response = client.get(path)
        assert response.status_code == 302 and response.headers["Location"] == f"/login?next={path}"


def test_an_account_never_read_shows_its_limits_empty_and_not_synced(client, world):
    sign_in(client, world["user"]["email"])
    shown = card(client.get("/accounts").get_data(as_text=True), world["account"]["id"])
    assert f"<h2>{world['account']['name']}</h2>" in shown
    assert f"{world['account']['login']} @ TradeGuard-Sim" in shown
    assert '<span class="guard-state state-ok">ok</span>' in shown
    assert '<dd class="equity">—</dd>' in shown and '<dd class="sync">never</dd>' in shown
    assert "Not synced yet" in shown
    assert bar_of(limit_row(shown, "daily loss")) == ("bar", "0.0")


def test_each_limit_is_a_bar_of_its_drawdown_against_its_maximum(client, db_session, world):
    account_id = world["account"]["id"]
    db_session.add(guard_state(account_id))
    db_session.commit()
    sign_in(client, world["user"]["email"])
    shown = card(client.get("/accounts").get_data(as_text=True), account_id)
    assert '<span class="guard-state state-warning">warning</span>' in shown
    daily = limit_row(shown, "daily loss")
    assert bar_of(daily) == ("bar warn", "60.0")  # 3% of 5%, warning from 3%
    assert '<td class="drawdown">3%' in daily and "(warns at 3%)" in daily
    assert bar_of(limit_row(shown, "weekly loss")) == ("bar", "10.0")  # 1% of 10%, no warn level
    # 7.5% of 10% but 2,600 of 2,500: the amount breached first.
    assert bar_of(limit_row(shown, "max drawdown")) == ("bar breach", "100.0")
    assert (
        '<dd class="equity">9,700.00 USD</dd>' in shown and '<dd class="balance">10,000.00 USD</dd>' in shown
    )
    assert '<dd class="margin-level">812.5% <span class="hint">(min 150%)</span></dd>' in shown


def test_the_sync_its_lag_the_breaker_and_the_last_error(client, db_session, world):
    account_id = world["account"]["id"]
    now = datetime.now(UTC)
    db_session.add(
        AccountSync(
            account_id=account_id,
            last_synced_at=now - timedelta(seconds=42),
            last_error="terminal unreachable: connection refused",
            consecutive_failures=3,
            breaker_open_until=now + timedelta(minutes=5),
            positions=[],
        )
    )
    db_session.commit()
    sign_in(client, world["user"]["email"])
    shown = card(client.get("/accounts").get_data(as_text=True), account_id)
    assert re.search(r"<time datetime=\"[^\"]+\">4[2-9] s ago</time>", shown), shown
    assert "3 failed in a row" in shown
    assert '<dd class="breaker"><span class="state-alert">open</span> until' in shown
    assert '<dd class="last-error">terminal unreachable: connection refused</dd>' in shown


def test_a_live_alert_counts_down_to_its_close_and_says_what_it_closes(client, db_session, world):
    account_id = world["account"]["id"]
    db_session.add(guard_state(account_id, state="alert"))
    db_session.add(AccountSync(account_id=account_id, last_synced_at=T0, positions=POSITIONS))
    close_at = datetime.now(UTC) + timedelta(seconds=25)
    live = add_alert(db_session, world, close_at=close_at)
    db_session.commit()
    sign_in(client, world["user"]["email"])
    shown = card(client.get("/accounts").get_data(as_text=True), account_id)
    box = re.search(rf'<div class="alert-live" id="alert-{live.id}".*?</div>', shown, re.S).group(0)
    assert "daily loss 5.3% &gt; 5%" in box
    assert f'<span class="countdown" data-deadline="{live.close_at.isoformat()}">' in box
    assert re.search(r'data-deadline="[^"]+">(2[0-5]) s</span>', box)
    assert "It will close every open position, the largest loser first:" in box
    # The last sync's positions, the largest loser first.
    assert re.findall(r"<td>#(\d+)</td>", box) == ["702", "701", "703"]
    assert "-90.50 USD" in box and '<td class="side-sell">sell</td>' in box


def test_a_market_alert_closes_its_symbols_positions_and_a_closing_one_its_recorded_closes(
    client, db_session, world
):
    account_id = world["account"]["id"]
    db_session.add(AccountSync(account_id=account_id, last_synced_at=T0, positions=POSITIONS))
    market = add_alert(
        db_session,
        world,
        alert_type="market",
        limit_name=None,
        symbol="EURUSD",
        reason="EURUSD: spread 31 pips > 20",
        close_at=datetime.now(UTC) + timedelta(seconds=60),
    )
    db_session.commit()
    sign_in(client, world["user"]["email"])
    box = re.search(
        r'<div class="alert-live".*?</div>', client.get("/accounts/table").get_data(as_text=True), re.S
    )
    assert "It will close every EURUSD position:" in box.group(0)
    assert re.findall(r"<td>#(\d+)</td>", box.group(0)) == ["701", "703"]

    db_session.execute(sa.update(DrawdownAlert).where(DrawdownAlert.id == market.id).values(status="closing"))
    for ticket, state in ((701, "closed"), (703, "sent")):
        db_session.add(
            AlertClose(
                alert_id=market.id,
                account_id=account_id,
                position_ticket=ticket,
                position_key=f"key-{ticket}",
                symbol="EURUSD",
                side="buy",
                volume=Decimal("0.10"),
                state=state,
                pnl=Decimal("-41.25") if state == "closed" else None,
            )
        )
    db_session.commit()
    box = re.search(
        r'<div class="alert-live".*?</div>', client.get("/accounts/table").get_data(as_text=True), re.S
    )
    text = box.group(0)
    assert "Closing now." in text and "countdown" not in text and "Closing:" in text
    assert re.findall(r"<td>#(\d+)</td>", text) == ["701", "703"]
    assert "<td>closed</td>" in text and "<td>sent</td>" in text and "-41.25 USD" in text


def test_the_fragment_shows_the_close_without_a_reload(client, db_session, world):
    account_id = world["account"]["id"]
    db_session.add(guard_state(account_id, state="alert"))
    live = add_alert(db_session, world, close_at=datetime.now(UTC) + timedelta(seconds=30))
    db_session.commit()
    sign_in(client, world["user"]["email"])
    before = client.get("/accounts/table").get_data(as_text=True)
    assert "<html" not in before and "<nav" not in before  # the fragment alone
    assert f'id="alert-{live.id}"' in before and 'class="countdown"' in before
    # The alert closes: the guard executes it and halts the account.
    db_session.execute(
        sa.update(DrawdownAlert)
        .where(DrawdownAlert.id == live.id)
        .values(status="executed", executed_at=sa.func.now(), action_taken="closed", positions_closed_count=2)
    )
    db_session.execute(
        sa.update(GuardState)
        .where(GuardState.account_id == account_id)
        .values(
            state="halted",
            halted_at=T0,
            halted_reason="daily loss 5.3% > 5%",
            halted_limit="daily loss",
            halted_resume="next_period",
        )
    )
    db_session.commit()
    after = card(client.get("/accounts/table").get_data(as_text=True), account_id)
    assert f'id="alert-{live.id}"' not in after and "countdown" not in after
    assert '<span class="guard-state state-halted">halted</span>' in after
    assert "Halted since" in after and ": daily loss 5.3% &gt; 5%." in after
    assert "at the next period of daily loss" in after


def test_the_alerts_history_newest_first_linked_to_its_account(api, client, db_session, world):
    second = api.account(world["user"], name="second book")
    oldest = add_alert(
        db_session,
        world,
        status="cancelled",
        action_taken="cancelled",
        created_at=T0 - timedelta(hours=2),
        executed_at=T0 - timedelta(hours=2) + timedelta(seconds=30),
    )
    executed = add_alert(
        db_session,
        world,
        status="executed",
        action_taken="closed",
        positions_closed_count=2,
        total_loss=Decimal("-1234.5"),
        created_at=T0 - timedelta(hours=1),
        executed_at=T0 - timedelta(hours=1) + timedelta(seconds=31),
    )
    margin = add_alert(
        db_session,
        {**world, "account": second},
        alert_type="margin",
        limit_name=None,
        reason="margin level 120% < 150%",
        drawdown_percent=None,
        threshold_percent=Decimal(150),
        status="pending",
        created_at=T0,
        close_at=T0 + timedelta(seconds=30),
    )
    db_session.commit()
    sign_in(client, world["user"]["email"])
    page = client.get("/alerts").get_data(as_text=True)
    assert re.findall(r'<tr id="alert-(\d+)"', page) == [str(margin.id), str(executed.id), str(oldest.id)]
    row = re.search(rf'<tr id="alert-{executed.id}".*?</tr>', page, re.S).group(0)
    cells = [
        html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    ]
    assert cells[:4] == [world["account"]["name"], "drawdown: daily loss", "daily loss 5.3% > 5%", "executed"]
    assert f'href="/accounts#account-{world["account"]["id"]}"' in row
    assert cells[4:6] == ["2026-11-30 07:00:00 UTC", "2026-11-30 07:00:31 UTC"]
    assert cells[-5:] == ["5%", "5.3%", "2", "-1,234.50 USD", "closed"]
    margin_row = re.search(rf'<tr id="alert-{margin.id}".*?</tr>', page, re.S).group(0)
    assert "second book" in margin_row and "margin level 120% &lt; 150%" in margin_row
    assert "<td>150%</td>" in margin_row and "<td>—</td>" in margin_row
    # One account's alerts only.
    only = client.get(f"/alerts?account_id={second['id']}").get_data(as_text=True)
    assert re.findall(r'<tr id="alert-(\d+)"', only) == [str(margin.id)] and "Only second book" in only


def test_another_users_accounts_alerts_and_charts_never_show(api, client, db_session, world):
    stranger = api.setup()
    db_session.add(guard_state(stranger["account"]["id"]))
    theirs = add_alert(db_session, stranger, reason="their very own alert", status="executed")
    db_session.commit()
    sign_in(client, world["user"]["email"])
    for path in (
        "/accounts",
        "/accounts/table",
        "/alerts",
        f"/alerts?account_id={stranger['account']['id']}",
    ):
        page = client.get(path).get_data(as_text=True)
        assert stranger["account"]["name"] not in page, path
        assert f'account-{stranger["account"]["id"]}"' not in page and f"alert-{theirs.id}" not in page, path
        assert "their very own alert" not in page, path
    assert client.get(f"/accounts/{stranger['account']['id']}/equity.png").status_code == 404
    assert client.get("/accounts/999999999/equity.png").status_code == 404


def test_the_equity_chart_is_the_apis_png(client, db_session, world):
    account_id = world["account"]["id"]
    for minute in range(30):
        db_session.add(
            PositionSnapshot(
                account_id=account_id,
                currency="USD",
                equity=Decimal(10000 - minute * 5),
                balance=Decimal(10000),
                peak_equity=Decimal(10000),
                drawdown_percent=Decimal(minute * 5) / 100,
                open_positions=1,
                total_lots=Decimal("0.10"),
                synced_at=T0 + timedelta(minutes=minute),
            )
        )
    db_session.commit()
    sign_in(client, world["user"]["email"])
    page = client.get("/accounts").get_data(as_text=True)
    assert f'<img src="/accounts/{account_id}/equity.png"' in page
    response = client.get(f"/accounts/{account_id}/equity.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    assert image.format == "PNG" and image.size == (1200, 700)
    api_png = client.get(
        "/api/v1/charts/equity.png", query_string={"account_id": account_id}, headers=world["user"]["headers"]
    )
    assert api_png.data == response.data  # the same chart, from the same code


def test_what_owners_and_guards_named_is_escaped(client, db_session, world):
    account_id = world["account"]["id"]
    db_session.execute(
        sa.update(Account).where(Account.id == account_id).values(name="<script>alert(1)</script>")
    )
    db_session.add(
        guard_state(
            account_id,
            state="alert",
            blocked_symbols={"<b>X</b>": {"reason": "<img src=x onerror=alert(2)>", "kind": "spread"}},
            limits={
                "market:<u>Y</u>": {"streak": 2, "warned": True, "kind": "gap", "reason": "<em>jump</em>"},
                "market:GBPUSD": {"streak": 1},  # building up, not told yet: not shown
            },
        )
    )
    db_session.add(
        AccountSync(
            account_id=account_id,
            last_synced_at=T0,
            last_error="<script>alert(3)</script>",
            positions=[{**POSITIONS[0], "symbol": "<i>EUR</i>"}],
        )
    )
    add_alert(
        db_session,
        world,
        reason="<script>alert(4)</script>",
        close_at=datetime.now(UTC) + timedelta(seconds=60),
    )
    db_session.commit()
    sign_in(client, world["user"]["email"])
    for path in ("/accounts", "/alerts"):
        page = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in page and "<img src=x" not in page and "<i>EUR" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
        assert "&lt;script&gt;alert(4)&lt;/script&gt;" in page, path
    accounts = client.get("/accounts").get_data(as_text=True)
    assert "&lt;b&gt;X&lt;/b&gt;" in accounts and "&lt;img src=x onerror=alert(2)&gt;" in accounts
    warnings_line = accounts.split('<p class="market-warnings">', 1)[1].split("</p>", 1)[0]
    assert "<strong>&lt;u&gt;Y&lt;/u&gt;</strong> (&lt;em&gt;jump&lt;/em&gt;)" in warnings_line
    assert "GBPUSD" not in warnings_line and "<u>" not in accounts
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in accounts and "&lt;i&gt;EUR&lt;/i&gt;" in accounts
