"""GET /api/v1/guards, /alerts and /alerts/{id}: what owners see of the guards. The guard tasks write
these tables; here the rows are inserted directly, as those tasks would leave them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.models import AlertClose, DrawdownAlert, GuardState

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)

SETTINGS = {
    "grace_seconds": 30,
    "confirmations": 2,
    "drawdown_limits": [
        {
            "name": "daily loss",
            "period": "day",
            "reference": "period_start_balance",
            "warn_percent": 3,
            "max_percent": 5,
            "max_amount": None,
            "action": "close",
            "resume": "next_period",
        },
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": None,
            "max_percent": 10,
            "max_amount": 2500,
            "action": "warn",
            "resume": "manual",
        },
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


def alert(db_session, world, **values) -> DrawdownAlert:
    """An alert on the world's account, as the guard tasks raise one: a daily-loss breach by default."""
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
    # The API reads what Postgres stored (its scale, its clock's zone), not these Python values.
    db_session.expire(row)
    return row


def close(db_session, row: DrawdownAlert, ticket: int, **values) -> AlertClose:
    entry = AlertClose(
        alert_id=row.id,
        account_id=row.account_id,
        position_ticket=ticket,
        position_key=f"key-{ticket}",
        symbol="EURUSD",
        side="buy",
        volume=Decimal("0.10"),
        **values,
    )
    db_session.add(entry)
    db_session.flush()
    db_session.expire(entry)
    return entry


def test_an_account_never_read_is_ok_with_its_default_limits_and_no_figures(api, client):
    world = api.setup()
    (shown,) = client.get("/api/v1/guards", headers=world["user"]["headers"]).json
    assert shown["account_id"] == world["account"]["id"] and shown["account_name"] == world["account"]["name"]
    assert shown["state"] == "ok" and shown["currency"] == "USD"
    for figure in ("equity", "balance", "margin_level", "min_margin_level_percent", "read_at", "halted_at"):
        assert shown[figure] is None
    assert shown["blocked_symbols"] == [] and shown["market_warnings"] == [] and shown["active_alert"] is None
    assert [(limit["name"], limit["level"], limit["drawdown_percent"]) for limit in shown["limits"]] == [
        ("daily loss", "ok", None),
        ("max drawdown", "ok", None),
    ]
    assert shown["limits"][0]["max_percent"] == "5" and shown["limits"][0]["action"] == "warn"


def test_every_figure_of_an_account_in_alert(api, client, db_session):
    world, other = api.setup(), api.setup()
    headers, account_id = world["user"]["headers"], world["account"]["id"]
    assert (
        client.put(f"/api/v1/accounts/{account_id}/risk", json=SETTINGS, headers=headers).status_code == 200
    )
    db_session.add(
        GuardState(
            account_id=account_id,
            state="alert",
            limits={
                "daily loss": {
                    "period_start": "2026-11-29T22:00:00+00:00",
                    "reference": "10000.00",
                    "peak": "10050.00",
                    "drawdown_amount": "530.00",
                    "drawdown_percent": "5.3",
                    "streak": 2,
                    "level": "breach",
                    "warned": True,
                },
                "a limit removed since": {"level": "breach", "drawdown_percent": "50"},
                "market:GBPUSD": {
                    "streak": 3,
                    "warned": True,
                    "kind": "stale",
                    "reason": "no quote for 75 s > 60 s",
                    "since": "2026-11-30T07:50:00+00:00",
                },
                "market:USDJPY": {"streak": 1},  # not confirmed yet: not shown
            },
            blocked_symbols={
                "XAUUSD": {
                    "reason": "spread 31 pips > 20",
                    "since": "2026-11-30T07:55:00+00:00",
                    "kind": "spread",
                }
            },
            equity=Decimal("9470.00"),
            balance=Decimal("10000.00"),
            margin_level=Decimal("812.5"),
            currency="USD",
            read_at=T0,
        )
    )
    executed = alert(db_session, world, status="executed", created_at=T0 - timedelta(days=2))
    live = alert(db_session, world, status="pending")
    first = close(
        db_session,
        live,
        501,
        state="closed",
        close_price=Decimal("1.08400"),
        pnl=Decimal("-12.50"),
        closed_at=T0 + timedelta(seconds=31),
        attempts=1,
    )
    close(db_session, live, 502, state="pending")
    close(db_session, executed, 400, state="closed")
    alert(db_session, other, status="pending")  # someone else's: not shown

    (shown,) = client.get("/api/v1/guards", headers=headers).json
    assert shown["state"] == "alert"
    assert (shown["equity"], shown["balance"], shown["margin_level"]) == ("9470.0000", "10000.0000", "812.5")
    assert shown["min_margin_level_percent"] == "150" and shown["read_at"] == T0.isoformat()
    assert shown["halted_at"] is None and shown["halted_reason"] is None
    daily, lifetime = shown["limits"]  # the settings' limits, in their order; the removed one is not shown
    assert daily == {
        "name": "daily loss",
        "period": "day",
        "reference": "period_start_balance",
        "reference_value": "10000",
        "period_start": "2026-11-29T22:00:00+00:00",
        "drawdown_percent": "5.3",
        "drawdown_amount": "530",
        "warn_percent": "3",
        "max_percent": "5",
        "max_amount": None,
        "action": "close",
        "resume": "next_period",
        "level": "breach",
    }
    assert lifetime["name"] == "max drawdown" and lifetime["level"] == "ok"
    assert lifetime["max_amount"] == "2500" and lifetime["reference_value"] is None
    assert shown["blocked_symbols"] == [
        {
            "symbol": "XAUUSD",
            "reason": "spread 31 pips > 20",
            "kind": "spread",
            "since": "2026-11-30T07:55:00+00:00",
        }
    ]
    assert shown["market_warnings"] == [
        {
            "symbol": "GBPUSD",
            "reason": "no quote for 75 s > 60 s",
            "kind": "stale",
            "since": "2026-11-30T07:50:00+00:00",
        }
    ]
    active = shown["active_alert"]
    assert active["id"] == live.id and active["status"] == "pending"
    assert (
        active["reason"] == "daily loss 5.3% > 5%"
        and active["close_at"] == (T0 + timedelta(seconds=30)).isoformat()
    )
    assert [c["position_ticket"] for c in active["closes"]] == [501, 502]
    assert active["closes"][0] == {
        "id": first.id,
        "position_ticket": 501,
        "symbol": "EURUSD",
        "side": "buy",
        "volume": "0.1",
        "state": "closed",
        "attempts": 1,
        "close_price": "1.084",
        "pnl": "-12.5000",
        "error": None,
        "trade_id": None,
        "deal_ticket": None,
        "sent_at": None,
        "closed_at": (T0 + timedelta(seconds=31)).isoformat(),
    }


def test_a_halted_account_says_why_and_how_it_resumes(api, client, db_session):
    world = api.setup()
    db_session.add(
        GuardState(
            account_id=world["account"]["id"],
            state="halted",
            halted_at=T0,
            halted_reason="max drawdown 10.4% > 10%",
            halted_limit="max drawdown",
            halted_resume="manual",
        )
    )
    db_session.flush()
    (shown,) = client.get("/api/v1/guards", headers=world["user"]["headers"]).json
    assert (
        shown["state"],
        shown["halted_at"],
        shown["halted_reason"],
        shown["halted_limit"],
        shown["halted_resume"],
    ) == (
        "halted",
        T0.isoformat(),
        "max drawdown 10.4% > 10%",
        "max drawdown",
        "manual",
    )


def test_guards_list_every_own_account_and_no_one_elses(api, client):
    world, other = api.setup(), api.setup()
    second = api.account(world["user"])
    shown = client.get("/api/v1/guards", headers=world["user"]["headers"]).json
    assert [entry["account_id"] for entry in shown] == [world["account"]["id"], second["id"]]
    assert other["account"]["id"] not in [entry["account_id"] for entry in shown]
    assert client.get("/api/v1/guards").status_code == 401


def test_alerts_are_listed_newest_first_with_filters(api, client, db_session):
    world, other = api.setup(), api.setup()
    second = api.account(world["user"])
    oldest = alert(db_session, world, status="cancelled", created_at=T0 - timedelta(hours=2))
    middle = alert(db_session, world, status="executed", created_at=T0 - timedelta(hours=1))
    newest = alert(
        db_session,
        {**world, "account": second},
        status="pending",
        alert_type="market",
        limit_name=None,
        symbol="XAUUSD",
        created_at=T0,
    )
    alert(db_session, other, status="pending")
    headers = world["user"]["headers"]

    def ids(**query):
        response = client.get("/api/v1/alerts", query_string=query, headers=headers)
        assert response.status_code == 200, response.json
        return [item["id"] for item in response.json["items"]]

    assert ids() == [newest.id, middle.id, oldest.id]
    assert ids(account_id=world["account"]["id"]) == [middle.id, oldest.id]
    assert ids(account_id=other["account"]["id"]) == []
    assert ids(status="executed") == [middle.id]
    assert ids(since=(T0 - timedelta(hours=1)).isoformat()) == [newest.id, middle.id]  # at or after
    assert ids(since="2026-11-30T07:30:00+01:00") == [newest.id, middle.id]  # 06:30 UTC
    page = client.get("/api/v1/alerts?per_page=2&page=2", headers=headers).json
    assert (page["total"], page["page"], page["per_page"], [i["id"] for i in page["items"]]) == (
        3,
        2,
        2,
        [oldest.id],
    )
    item = client.get("/api/v1/alerts?status=pending", headers=headers).json["items"][0]
    assert (item["alert_type"], item["symbol"], item["limit_name"], item["account_id"]) == (
        "market",
        "XAUUSD",
        None,
        second["id"],
    )
    assert "closes" not in item


def test_a_malformed_since_or_status_is_422_naming_it(api, client):
    world = api.setup()
    headers = world["user"]["headers"]
    for query, name in (
        ("since=yesterday", "since"),
        ("since=2026-11-30T08:00:00", "since"),  # no UTC offset: ambiguous
        ("status=open", "status"),
        ("account_id=x", "account_id"),
    ):
        response = client.get(f"/api/v1/alerts?{query}", headers=headers)
        assert response.status_code == 422, query
        assert list(response.json["error"]["fields"]) == [name]


def test_an_alert_with_each_close_and_others_alerts_not_found(api, client, db_session):
    world, other = api.setup(), api.setup()
    row = alert(
        db_session,
        world,
        status="executed",
        executed_at=T0 + timedelta(seconds=35),
        positions_closed_count=1,
        total_loss=Decimal("-12.50"),
        action_taken="closed",
        details={"limit": {"max_percent": "5"}},
    )
    close(db_session, row, 501, state="closed", pnl=Decimal("-12.50"), close_price=Decimal("1.084"))
    close(db_session, row, 502, state="gone")
    response = client.get(f"/api/v1/alerts/{row.id}", headers=world["user"]["headers"])
    assert response.status_code == 200
    shown = response.json
    assert {key: shown[key] for key in shown if key != "closes"} == {
        "id": row.id,
        "account_id": world["account"]["id"],
        "alert_type": "drawdown",
        "limit_name": "daily loss",
        "symbol": None,
        "reason": "daily loss 5.3% > 5%",
        "status": "executed",
        "currency": "USD",
        "drawdown_percent": "5.3",
        "drawdown_amount": "530.0000",
        "equity": "9470.0000",
        "threshold_percent": "5",
        "margin_level": None,
        "positions_closed_count": 1,
        "total_loss": "-12.5000",
        "action_taken": "closed",
        "close_at": (T0 + timedelta(seconds=30)).isoformat(),
        "created_at": T0.isoformat(),
        "executed_at": (T0 + timedelta(seconds=35)).isoformat(),
        "details": {"limit": {"max_percent": "5"}},
    }
    assert [(c["position_ticket"], c["state"], c["pnl"]) for c in shown["closes"]] == [
        (501, "closed", "-12.5000"),
        (502, "gone", None),
    ]
    # Someone else's alert reads word for word as one that does not exist.
    theirs = client.get(f"/api/v1/alerts/{row.id}", headers=other["user"]["headers"])
    missing = client.get("/api/v1/alerts/999999", headers=world["user"]["headers"])
    assert (theirs.status_code, missing.status_code) == (404, 404)
    assert theirs.json == {
        "error": {
            **missing.json["error"],
            "message": missing.json["error"]["message"].replace("999999", str(row.id)),
        }
    }
