"""The guards through Celery: a real worker reads the account on the `terminal` process, raises the alert,
closes after the grace period, and a worker SIGKILLed mid-close leads to one closing deal per position."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from datetime import UTC, datetime

import pytest
import rpyc
import sqlalchemy as sa

from bench.procfs import descendants
from shared.core import extensions
from shared.core.extensions import SETTINGS
from shared.core.queue import CHECK_GUARDS
from shared.guards.settings import default_settings, validate_settings
from shared.models import AccountRisk, AlertClose, DrawdownAlert, GuardState
from shared.mt5 import constants as mt5c
from tests.conftest import Api
from tests.processes import celery_worker, terminal_server, wait_for
from tests.webhook_receiver import receiver


def prop_settings(**overrides):
    document = default_settings()
    document.update(
        {
            "grace_seconds": 1,
            "confirmations": 2,
            "drawdown_limits": [
                {
                    "name": "max drawdown",
                    "period": "lifetime",
                    "reference": "peak_equity",
                    "warn_percent": 1,
                    "max_percent": 2,
                    "action": "close",
                    "resume": "manual",
                }
            ],
            **overrides,
        }
    )
    return validate_settings(document)


class Terminal:
    """A control handle on the terminal process (rpyc classic, as the README shows)."""

    def __init__(self, port):
        self.conn = rpyc.classic.connect("127.0.0.1", port)
        self.conn.execute("import MetaTrader5 as mt5")
        self.mt5 = self.conn.eval("mt5")

    def closing_deals(self, login, position):
        assert self.mt5.initialize(login=login, password="x", server="TradeGuard-Sim")
        deals = self.mt5.history_deals_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
        return [d for d in deals or () if d.position_id == position and d.entry == mt5c.DEAL_ENTRY_OUT]

    def open_positions(self, login):
        assert self.mt5.initialize(login=login, password="x", server="TradeGuard-Sim")
        return [p.ticket for p in self.mt5.positions_get() or ()]

    def close(self):
        self.conn.close()


def guarded_account(app, db, port, login, *, hook_url=None, **settings):
    """An account with the prop settings; with `hook_url`, its owner's webhook there. Returns
    (account id, the webhook's secret or None)."""
    api = Api(app.test_client())
    user = api.user()
    account = api.account(user, terminal_url=f"sim://127.0.0.1:{port}", login=login)
    db.add(AccountRisk(account_id=account["id"], settings=prop_settings(**settings)))
    db.commit()
    secret = None
    if hook_url is not None:
        response = api.http.post("/api/v1/webhooks", json={"url": hook_url}, headers=user["headers"])
        assert response.status_code == 201, response.json
        secret = response.json["secret"]
    return account["id"], secret


def alert_of(db, account_id):
    db.rollback()  # a fresh snapshot: the worker commits in another process
    return db.scalar(sa.select(DrawdownAlert).where(DrawdownAlert.account_id == account_id))


def check(app, account_id):
    extensions.task_queue(app).send(CHECK_GUARDS, [[account_id]])


@pytest.fixture
def private_allowed(app, monkeypatch):
    """The test's web app accepts webhooks on 127.0.0.1 (as the worker delivers to them)."""
    settings = dataclasses.replace(app.extensions[SETTINGS], webhook_allow_private=True)
    monkeypatch.setitem(app.extensions, SETTINGS, settings)


def test_a_real_worker_confirms_the_breach_alerts_and_closes_after_the_grace_period(
    app, committed_db, private_allowed
):
    env = {"TRADEGUARD_WEBHOOK_ALLOW_PRIVATE": "true"}
    with terminal_server() as port, celery_worker(env=env) as worker, receiver(lambda _: 200) as owner:
        terminal = Terminal(port)
        terminal.mt5.sim_set_quote("EURUSD", 1.08500, 1.08510)
        account_id, secret = guarded_account(app, committed_db, port, 7101, hook_url=owner.url)
        tickets = [terminal.mt5.sim_open_manual(7101, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0) for _ in range(2)]
        check(app, account_id)
        assert wait_for(lambda: committed_db.get(GuardState, account_id) is not None, timeout=30), (
            worker.log()
        )

        terminal.mt5.sim_set_quote("EURUSD", 1.08300, 1.08310)  # 20 pips x 2 lots: about 4 %
        breached_at = time.monotonic()
        check(app, account_id)  # one reading; the worker takes the second itself (confirmations: 2)
        assert wait_for(lambda: alert_of(committed_db, account_id) is not None, timeout=30), worker.log()
        alert = alert_of(committed_db, account_id)
        assert alert.status == "pending"
        raised_after = time.monotonic() - breached_at
        assert wait_for(lambda: alert_of(committed_db, account_id).status == "executed", timeout=30), (
            worker.log()
        )
        alert = alert_of(committed_db, account_id)
        assert alert.executed_at >= alert.close_at
        assert alert.positions_closed_count == 2
        for ticket in tickets:
            assert len(terminal.closing_deals(7101, ticket)) == 1
        assert terminal.open_positions(7101) == []
        assert committed_db.get(GuardState, account_id).halted_at is not None
        terminal.close()

        # The owner heard of each step, signed, in order; alert.pending said when the close would be.
        wanted = {"guard.warning", "alert.pending", "alert.executed", "account.halted"}
        assert wait_for(
            lambda: wanted <= {r.headers["X-TradeGuard-Event"] for r in owner.received}, timeout=30
        )
        events = [json.loads(r.body) for r in owner.received]
        assert all(r.signed_by(secret) for r in owner.received)
        names = [e["event"] for e in events]
        assert names.index("alert.pending") < names.index("alert.executed") < names.index("account.halted")
        pending = events[names.index("alert.pending")]
        assert pending["account_id"] == account_id
        assert pending["data"]["alert_id"] == alert.id
        assert pending["data"]["close_at"] == alert.close_at.isoformat()
        executed = events[names.index("alert.executed")]
        assert executed["data"]["positions_closed"] == 2
    assert raised_after < 10


def test_a_worker_killed_mid_close_leads_to_one_closing_deal_per_position(app, committed_db):
    """The pool process is SIGKILLed while a close's order_send waits on a slow terminal, which still
    executes it. The redelivered task finds that close by its comment and closes the rest, once each."""
    env = {"TRADEGUARD_UNKNOWN_OUTCOME_GRACE_SECONDS": "1", "TRADEGUARD_TERMINAL_TIMEOUT_SECONDS": "5"}
    with terminal_server() as port, celery_worker(env=env) as worker:
        terminal = Terminal(port)
        terminal.mt5.sim_set_quote("EURUSD", 1.08500, 1.08510)
        account_id, _ = guarded_account(app, committed_db, port, 7201, grace_seconds=0, confirmations=1)
        tickets = [terminal.mt5.sim_open_manual(7201, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0) for _ in range(2)]
        check(app, account_id)
        assert wait_for(lambda: committed_db.get(GuardState, account_id) is not None, timeout=30), (
            worker.log()
        )

        terminal.mt5.sim_set_latency(1500, 7201)  # every call of this login: 1.5 s
        terminal.mt5.sim_set_quote("EURUSD", 1.08300, 1.08310)
        check(app, account_id)

        def a_close_sent():
            committed_db.rollback()
            return committed_db.scalar(sa.select(AlertClose).where(AlertClose.state == "sent")) is not None

        assert wait_for(a_close_sent, timeout=60), worker.log()
        time.sleep(0.3)  # order_send is on its way to the terminal
        children = descendants(worker.proc.pid)[1:]
        assert children, worker.log()
        for child in children:
            os.kill(child, signal.SIGKILL)

        assert wait_for(lambda: alert_of(committed_db, account_id).status == "executed", timeout=90), (
            worker.log()
        )
        terminal.mt5.sim_set_latency(0, 7201)
        assert "SIGKILL" in worker.log()
        for ticket in tickets:
            assert len(terminal.closing_deals(7201, ticket)) == 1, ticket
        closes = committed_db.scalars(sa.select(AlertClose).order_by(AlertClose.id)).all()
        assert [c.state for c in closes] == ["closed", "closed"]
        assert closes[0].attempts == 1  # found by its comment, never sent again
        terminal.close()
