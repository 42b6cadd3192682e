"""GET /api/v1/trades/{id}/timeline: a trade driven through the real code paths (the signal API, the
approval, execution against the simulated terminal, a reconciliation sync, the guards' readings and the
alert's close), then read back as one ordered list."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.guards import engine as guards
from shared.guards import readings
from shared.guards.settings import default_settings, validate_settings
from shared.models import AccountRisk, AlertClose, DrawdownAlert, GuardState, ReconciliationLog, Trade
from shared.mt5 import constants as mt5c
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal
from tests.integration.conftest import BUY
from tests.integration.test_guards_engine import MAX_DRAWDOWN, PIN

# Warn at 1 %, close at 2 % of the peak equity, on the second breached reading, at once.
RISK = {"grace_seconds": 0, "confirmations": 2, "drawdown_limits": [MAX_DRAWDOWN]}


@pytest.fixture
def guards_on(db_session, market):
    """`check(account_id)` reads the account as the guard task does; `execute(alert_id)` carries the
    alert out as its task does; both against the test's simulated broker."""

    @contextmanager
    def open_terminal(account):
        with Gateway.from_module(
            SimTerminal(market.broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    def ignore(*args):
        return None

    def check(account_id):
        return readings.check_account(
            db_session, account_id, open_terminal=open_terminal, notify=ignore, schedule=ignore
        )

    def execute(alert_id):
        return guards.execute_alert(db_session, alert_id, open_terminal=open_terminal, notify=ignore)

    check.execute = execute
    return check


def timeline_of(api, user, trade_id):
    response = api.http.get(f"/api/v1/trades/{trade_id}/timeline", headers=user["headers"])
    assert response.status_code == 200, response.json
    return response.json


def test_the_timeline_of_a_trade_filled_diverged_warned_and_closed_by_a_guard_in_order(
    api, db_session, terminal, run, sync, guards_on
):
    terminal.sim_set_server_offset(2)  # the trade server runs on UTC+2
    terminal.sim_set_quote("EURUSD", *PIN)
    world = api.setup()
    user, account_id = world["user"], world["account"]["id"]
    document = default_settings()
    document.update(RISK)
    db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
    db_session.commit()

    signal = api.send_signal(world["client"], {**BUY, "volume": "1.00"}).json
    api.decide(world["user"], signal["id"])
    terminal.sim_set_requotes(1)  # the first order is requoted: sent again at a fresh price
    terminal.sim_set_slippage(80)  # 8 pips worse than asked: a slippage divergence
    trade_id = run(signal["id"], deviation_points=200).id
    terminal.sim_set_slippage(0)
    sync(account_id)  # matched, and the divergence

    assert guards_on(account_id).state == "ok"  # the peak
    terminal.sim_set_quote("EURUSD", 1.08380, 1.08390)  # 12 pips down on 1 lot: about 1.2 %
    assert guards_on(account_id).state == "warning"
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)  # 30 pips: about 3 %, twice
    guards_on(account_id)
    assert guards_on(account_id).state == "alert"
    (alert,) = db_session.scalars(sa.select(DrawdownAlert).where(DrawdownAlert.account_id == account_id))
    assert guards_on.execute(alert.id).status == "executed"

    db_session.expire_all()
    trade = db_session.get(Trade, trade_id)
    close = db_session.scalar(sa.select(AlertClose).where(AlertClose.trade_id == trade_id))
    timeline = timeline_of(api, user, trade_id)

    assert (timeline["trade_id"], timeline["account_id"]) == (trade_id, account_id)
    assert timeline["broker_offset_seconds"] == 7200
    assert db_session.get(GuardState, account_id).broker_offset_seconds == 7200  # as the guards learnt it
    entries = timeline["entries"]
    assert [entry["kind"] for entry in entries] == [
        "signal.received",
        "signal.approved",
        "trade.created",
        "risk.checked",
        "order.sent",
        "order.requoted",
        "risk.checked",
        "order.sent",
        "order.filled",
        "reconciliation.matched",
        "reconciliation.divergence",
        "guard.warning",
        "alert.raised",
        "alert.closing",
        "close.sent",
        "trade.closed",
        "alert.executed",
    ]
    times = [datetime.fromisoformat(entry["at"]) for entry in entries]
    assert times == sorted(times) and all(at.utcoffset() == timedelta(0) for at in times)
    # The trade server's clock: UTC + 2 h, without an offset.
    assert [entry["broker_time"] for entry in entries] == [
        (at + timedelta(hours=2)).replace(tzinfo=None).isoformat() for at in times
    ]
    kind = {}
    for entry in entries:
        kind.setdefault(entry["kind"], []).append(entry["details"])

    (received,) = kind["signal.received"]
    assert (received["signal_id"], received["client"], received["client_id"]) == (
        signal["id"],
        "strategy",
        world["client"]["id"],
    )
    assert (received["instrument"], received["side"], received["volume"]) == ("EURUSD", "buy", "1")
    (approved,) = kind["signal.approved"]
    assert (approved["by"], approved["user_id"], approved["decision"]) == (
        user["email"],
        user["id"],
        "approve",
    )
    assert [checked["attempt"] for checked in kind["risk.checked"]] == [1, 2]
    assert all(checked["passed"] and checked["problems"] == [] for checked in kind["risk.checked"])
    assert [(sent["attempt"], sent["price"]) for sent in kind["order.sent"]] == [(1, "1.0851"), (2, "1.0851")]
    (requoted,) = kind["order.requoted"]
    assert (requoted["attempt"], requoted["retcode"]) == (1, mt5c.TRADE_RETCODE_REQUOTE)
    (filled,) = kind["order.filled"]
    assert Decimal(filled["price"]) == trade.filled_price == Decimal("1.0859")  # 8 pips of slippage
    assert (filled["volume"], filled["retcode"], filled["requested_price"]) == (
        "1",
        mt5c.TRADE_RETCODE_DONE,
        "1.0851",
    )
    assert filled["position_ticket"] == trade.position_ticket and not filled["partial"]

    (matched,) = kind["reconciliation.matched"]
    assert (matched["position_ticket"], matched["matched_by"], matched["price_open"]) == (
        trade.position_ticket,
        "ticket",
        "1.0859",
    )
    (divergence,) = kind["reconciliation.divergence"]
    stored = db_session.scalar(
        sa.select(ReconciliationLog).where(
            ReconciliationLog.trade_id == trade_id, ReconciliationLog.event_type == "divergence"
        )
    )
    assert divergence == {
        "position_ticket": trade.position_ticket,
        "cleared": False,
        "divergences": [
            {
                "kind": "slippage",
                "change": "adverse",
                "expected": "1.0851",
                "actual": "1.0859",
                "difference": "8",
                "unit": "pips",
            }
        ],
    }
    assert entries[10]["at"] == stored.created_at.isoformat()

    (warning,) = kind["guard.warning"]
    assert (warning["limit"], warning["level"], warning["warn_percent"], warning["currency"]) == (
        "max drawdown",
        "warning",
        "1",
        "USD",
    )
    assert Decimal(1) < Decimal(warning["drawdown_percent"]) < Decimal(2)
    (raised,) = kind["alert.raised"]
    assert (raised["alert_id"], raised["type"], raised["limit"], raised["reason"]) == (
        alert.id,
        "drawdown",
        "max drawdown",
        alert.reason,
    )
    assert (raised["threshold_percent"], raised["currency"]) == ("2", "USD")
    assert Decimal(raised["drawdown_percent"]) > 2
    (closing,) = kind["alert.closing"]
    assert (closing["alert_id"], closing["position_ticket"], closing["volume"]) == (
        alert.id,
        trade.position_ticket,
        "1",
    )
    (close_sent,) = kind["close.sent"]
    assert (close_sent["alert_id"], close_sent["attempt"], close_sent["price"]) == (alert.id, 1, "1.082")
    (closed,) = kind["trade.closed"]
    assert closed == {"reason": "guard", "price": "1.082", "pnl": "-390", "alert_id": alert.id}
    assert (trade.close_reason, trade.close_price, trade.pnl) == ("guard", Decimal("1.082"), Decimal(-390))
    assert entries[-2]["at"] == trade.closed_at.isoformat() == close.closed_at.isoformat()
    (executed,) = kind["alert.executed"]
    assert executed == {"alert_id": alert.id, "positions_closed": 1, "total_loss": "390", "currency": "USD"}


def test_another_users_trade_and_a_missing_one_are_not_found_alike(api, db_session, terminal, run):
    world = api.setup()
    signal = api.send_signal(world["client"], BUY).json
    api.decide(world["user"], signal["id"])
    trade_id = run(signal["id"]).id
    assert timeline_of(api, world["user"], trade_id)["entries"]

    stranger = api.user()
    theirs = api.http.get(f"/api/v1/trades/{trade_id}/timeline", headers=stranger["headers"])
    missing = api.http.get(f"/api/v1/trades/{trade_id + 1000}/timeline", headers=world["user"]["headers"])
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json["error"]["code"] == missing.json["error"]["code"] == "not_found"
    assert api.http.get(f"/api/v1/trades/{trade_id}/timeline").status_code == 401
