"""The embedded setup (SQLite) executes approved signals too: the trade is claimed by one INSERT that does
nothing when the signal has its trade already, as on Postgres."""

import json
import time
from contextlib import contextmanager

import sqlalchemy as sa

from shared.core import extensions
from shared.core.db import db
from shared.core.signing import sign
from shared.execution import service as execution
from shared.identity import accounts, clients, users
from shared.models import Approval, AuditLog, Decision, Trade, TradeState, User
from shared.mt5.gateway import Gateway
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.terminal import SimTerminal
from shared.signals import approvals


def approved_signal(app) -> int:
    with app.app_context():
        user = users.register(db.session, "owner@example.com", "password one")
        box = extensions.secret_box(app)
        account = accounts.create_account(
            db.session,
            box,
            user,
            declared_terminals=extensions.declared_terminals(app),
            name="a",
            terminal_url="sim://",
            login=1001,
            password="p",
            server="TradeGuard-Sim",
        )
        client, secret = clients.create_client(db.session, box, user, name="c", account_id=account.id)
        db.session.commit()
        client_id, user_id = client.id, user.id
    body = json.dumps({"instrument": "EURUSD", "side": "buy", "volume": "0.01"}).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Client-Id": str(client_id),
        "X-Timestamp": ts,
        "X-Signature": sign(secret, ts, body),
    }
    signal_id = app.test_client().post("/api/v1/signals", data=body, headers=headers).json["id"]
    with app.app_context():
        user = db.session.get(User, user_id)
        approvals.decide(db.session, user, signal_id=signal_id, decision=Decision.APPROVE, reason=None)
        db.session.commit()
    return signal_id


def test_an_approved_signal_is_claimed_once_and_executed_on_sqlite(sqlite_app, tmp_path):
    signal_id = approved_signal(sqlite_app)
    broker = SimBroker(seed=3)

    @contextmanager
    def open_terminal(account):
        with Gateway.from_module(
            SimTerminal(broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    settings = execution.ExecutionSettings(lock_dir=tmp_path / "locks")
    with sqlite_app.app_context():
        claimed = execution._claim_trade(db.session, signal_id, settings)
        again = execution._claim_trade(db.session, signal_id, settings)  # the INSERT does nothing
        assert again is not None and claimed is not None and again.id == claimed.id
        assert claimed.comment == f"TG-{claimed.id}" and claimed.state == TradeState.PENDING
        approval_id = db.session.scalar(sa.select(Approval.id).where(Approval.signal_id == signal_id))
        assert claimed.approval_id == approval_id  # looked up by the INSERT itself

        trade = execution.execute_signal(
            db.session, signal_id, engine=db.engine, open_terminal=open_terminal, settings=settings
        )
        assert trade is not None and trade.state == TradeState.FILLED and trade.attempts == 1
        db.session.commit()

        assert db.session.scalar(sa.select(sa.func.count()).select_from(Trade)) == 1
        created = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "trade.created")).all()
        assert [entry.target_id for entry in created] == [trade.id]
