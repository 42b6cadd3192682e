"""Positions, reconciliation events, account status and /metrics, as owners and operators see them."""

from __future__ import annotations

import pytest

from shared.mt5 import constants as mt5c


def test_positions_show_attribution_for_own_accounts_only(api, run, approved, sync, terminal, db_session):
    from shared.models import Trade

    signal_id = approved()
    trade = db_session.get(Trade, run(signal_id).id)
    manual = terminal.sim_open_manual(1001, "USDJPY", mt5c.ORDER_TYPE_BUY, 0.2)
    assert sync(trade.account_id).status == "ok"

    owner_headers = api.login(*_owner_of(db_session, trade.account_id))
    listed = api.http.get("/api/v1/positions", headers=owner_headers).json
    by_ticket = {p["identifier"]: p for p in listed}
    assert by_ticket[trade.position_ticket]["attribution"] == "tradeguard"
    assert by_ticket[trade.position_ticket]["trade_id"] == trade.id
    assert by_ticket[manual]["attribution"] == "outside" and by_ticket[manual]["opened_from"] == "desktop"
    assert all(p["account_id"] == trade.account_id for p in listed)

    same = api.http.get(f"/api/v1/accounts/{trade.account_id}/positions", headers=owner_headers).json
    assert same == listed
    stranger = api.user()
    assert api.http.get("/api/v1/positions", headers=stranger["headers"]).json == []
    assert (
        api.http.get(
            f"/api/v1/accounts/{trade.account_id}/positions", headers=stranger["headers"]
        ).status_code
        == 404
    )


def test_reconciliation_events_filter_and_page(api, sync, terminal, db_session):
    world = api.setup()
    for symbol in ("EURUSD", "GBPUSD", "XAUUSD"):
        terminal.sim_open_manual(1001, symbol, mt5c.ORDER_TYPE_BUY, 0.1)
    sync(world["account"]["id"])
    headers = world["user"]["headers"]
    url = f"/api/v1/reconciliation/{world['account']['id']}"
    page = api.http.get(f"{url}?event_type=outside_position&per_page=2", headers=headers).json
    assert page["total"] == 3 and len(page["items"]) == 2
    assert {e["event_type"] for e in page["items"]} == {"outside_position"}
    assert api.http.get(f"{url}?event_type=matched", headers=headers).json["total"] == 0
    assert api.http.get(f"{url}?since=2099-01-01T00:00:00Z", headers=headers).json["total"] == 0
    bad = api.http.get(f"{url}?event_type=exploded", headers=headers)
    assert bad.status_code == 422 and "event_type" in bad.json["error"]["fields"]
    assert api.http.get(url, headers=api.user()["headers"]).status_code == 404


def test_status_shows_figures_lag_and_the_breaker(api, sync, db_session):
    healthy, failing = api.setup(), api.setup()
    sync(healthy["account"]["id"])
    status = api.http.get(
        f"/api/v1/accounts/{healthy['account']['id']}/status", headers=healthy["user"]["headers"]
    ).json
    assert status["breaker"] == "closed" and status["consecutive_failures"] == 0
    assert status["equity"] == "10000.0000" and status["peak_equity"] == "10000.0000"
    assert status["drawdown_percent"] == "0.0000" and status["open_positions"] == 0
    assert status["currency"] == "USD" and 0 <= status["sync_lag_seconds"] < 60

    sync.unreachable.add(failing["account"]["id"])
    for _ in range(3):
        sync(failing["account"]["id"])
    status = api.http.get(
        f"/api/v1/accounts/{failing['account']['id']}/status", headers=failing["user"]["headers"]
    ).json
    assert status["breaker"] == "open" and status["breaker_open_until"] is not None
    assert status["consecutive_failures"] == 3 and "TerminalUnavailable" in status["last_error"]
    assert status["last_synced_at"] is None and status["equity"] is None


def test_metrics_are_prometheus_text(api, sync, client):
    world, down = api.setup(), api.setup()
    sync(world["account"]["id"])
    sync.unreachable.add(down["account"]["id"])
    for _ in range(3):
        sync(down["account"]["id"])
    body = client.get("/metrics")
    assert body.status_code == 200 and body.mimetype == "text/plain"
    text = body.get_data(as_text=True)
    assert "tradeguard_accounts 2" in text
    assert "tradeguard_accounts_never_synced 1" in text
    assert 'tradeguard_sync_lag_seconds_bucket{le="+Inf"} 1' in text
    assert "tradeguard_breakers_open 1" in text
    assert "tradeguard_breaker_openings_total 1" in text


def test_metrics_show_task_durations_recorded_by_the_workers(client, db_session):
    from shared.core.db import db
    from shared.metrics import task_durations

    # Inside db_session the engine is the test's connection: these rows are rolled back afterwards.
    for seconds, outcome in ((0.5, "success"), (3.0, "success"), (0.25, "retry"), (200.0, "failure")):
        task_durations.record(db.engine, "tradeguard.example", seconds, outcome)
    task_durations.record(db.engine, 'odd"name\\x', 0.01, "success")

    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    example = [line for line in text.splitlines() if 'task="tradeguard.example"' in line]
    name = "tradeguard_task_duration_seconds"
    assert example == [
        *[f'{name}_bucket{{task="tradeguard.example",le="{le}"}} 0' for le in ("0.05", "0.1")],
        f'{name}_bucket{{task="tradeguard.example",le="0.25"}} 1',
        *[f'{name}_bucket{{task="tradeguard.example",le="{le}"}} 2' for le in ("0.5", "1", "2.5")],
        *[f'{name}_bucket{{task="tradeguard.example",le="{le}"}} 3' for le in ("5", "10", "30", "60", "120")],
        f'{name}_bucket{{task="tradeguard.example",le="+Inf"}} 4',
        f'{name}_sum{{task="tradeguard.example"}} 203.75',
        f'{name}_count{{task="tradeguard.example"}} 4',
        'tradeguard_tasks_total{task="tradeguard.example",outcome="failure"} 1',
        'tradeguard_tasks_total{task="tradeguard.example",outcome="retry"} 1',
        'tradeguard_tasks_total{task="tradeguard.example",outcome="success"} 2',
    ]
    assert f"# TYPE {name} histogram" in text and "# TYPE tradeguard_tasks_total counter" in text
    # Label values are escaped: a double quote and a backslash in a task name.
    assert f'{name}_count{{task="odd\\"name\\\\x"}} 1' in text
    # The existing metrics are still there.
    assert "tradeguard_accounts 0" in text and "tradeguard_breakers_open 0" in text


def _owner_of(db_session, account_id):
    from shared.models import Account, User

    account = db_session.get(Account, account_id)
    user = db_session.get(User, account.owner_id)
    return user.email, "correct horse"


def test_out_of_range_since_is_422(api):
    world = api.setup()
    url = f"/api/v1/reconciliation/{world['account']['id']}"
    for since in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        response = api.http.get(url, query_string={"since": since}, headers=world["user"]["headers"])
        assert response.status_code == 422 and "since" in response.json["error"]["fields"]


@pytest.mark.parametrize("name", ["a\u0000b", "a\udc00b"])
def test_nul_characters_or_lone_surrogates_in_names_are_422(api, db_session, name):
    user = api.user()
    body = {"name": name, "terminal_url": "sim://", "login": 1, "password": "p", "server": "s"}
    response = api.http.post("/api/v1/accounts", json=body, headers=user["headers"])
    assert response.status_code == 422 and "name" in response.json["error"]["fields"]


def test_positions_and_reconciliation_events_say_opened_from_alike(api, sync, terminal):
    world = api.setup()
    headers = world["user"]["headers"]
    ticket = terminal.sim_open_manual(1001, "GBPUSD", mt5c.ORDER_TYPE_SELL, 0.2)
    sync(world["account"]["id"])

    (position,) = api.http.get("/api/v1/positions", headers=headers).json
    (event,) = api.http.get(f"/api/v1/reconciliation/{world['account']['id']}", headers=headers).json["items"]
    assert position["identifier"] == event["position_ticket"] == ticket
    assert position["opened_from"] == event["opened_from"] == "desktop"
    assert "opened_by" not in event and "opened_by" not in position

    schemas = api.http.get("/api/openapi.json").json["components"]["schemas"]
    for name in ("PositionView", "ReconciliationEvent"):
        assert "opened_from" in schemas[name]["properties"] and "opened_by" not in schemas[name]["properties"]
