"""The embedded setup (SQLite) stores signals through the generic path: same rules, same audit row."""

import json
import time

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from shared.core import extensions
from shared.core.config import load_settings
from shared.core.db import db
from shared.core.signing import sign
from shared.identity import accounts, clients, users
from shared.models import AuditLog, Signal
from web import create_app


@pytest.fixture
def sqlite_app(tmp_path):
    settings = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    app = create_app(settings)
    with app.app_context():
        upgrade()
        user = users.register(db.session, "owner@example.com", "password one")
        box = extensions.secret_box(app)
        account = accounts.create_account(
            db.session,
            box,
            user,
            declared_terminals=extensions.declared_terminals(app),
            name="a",
            terminal_url="sim://",
            login=1,
            password="p",
            server="s",
            verify=False,  # ingest is under test here, not the terminal
        )
        client, secret = clients.create_client(db.session, box, user, name="c", account_id=account.id)
        db.session.commit()
        app.config["test_client_id"], app.config["test_secret"] = client.id, secret
    yield app
    with app.app_context():
        db.engine.dispose()


def post(app, payload, key=None, body=None):
    body = body or json.dumps(payload).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Client-Id": str(app.config["test_client_id"]),
        "X-Timestamp": ts,
        "X-Signature": sign(app.config["test_secret"], ts, body),
    }
    if key:
        headers["Idempotency-Key"] = key
    return app.test_client().post("/api/v1/signals", data=body, headers=headers), headers, body


def test_sqlite_ingest_idempotency_replay_and_revocation(sqlite_app):
    payload = {"instrument": "EURUSD", "side": "buy", "volume": "0.1", "price": "1.1", "sl": "1.09"}
    first, headers, body = post(sqlite_app, payload, key="k1")
    assert first.status_code == 201 and first.json["status"] == "pending"
    retry = sqlite_app.test_client().post("/api/v1/signals", data=body, headers=headers)
    assert retry.status_code == 200 and retry.json["id"] == first.json["id"]
    no_key = {k: v for k, v in headers.items() if k != "Idempotency-Key"}
    replay = sqlite_app.test_client().post("/api/v1/signals", data=body, headers=no_key)
    assert replay.status_code == 409

    with sqlite_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Signal)) == 1
        audit = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "signal.received")).one()
        assert audit.target_id == first.json["id"] and audit.meta["instrument"] == "EURUSD"
        from shared.models import StrategyClient

        db.session.get(StrategyClient, sqlite_app.config["test_client_id"]).revoked = True
        db.session.commit()
    revoked, _, _ = post(sqlite_app, {**payload, "comment": "later"})
    assert revoked.status_code == 401


def test_the_prepared_postgres_statement_returns_every_column_of_signals():
    """A column added to `signals` must be added to StoredSignal too, or the ingest response and the
    prepared statement would silently leave it out."""
    from shared.signals import batching

    assert set(batching._SIGNAL_COLUMNS) == {c.name for c in Signal.__table__.c}
    # ...and every column the batch does not bring is filled in by the statement or the database.
    brought = {name for name, _ in batching._BATCH_FIELDS} - {"meta"}
    assert {c.name for c in Signal.__table__.c} - brought == {"id", "owner_id", "account_id", "decided_at"}
