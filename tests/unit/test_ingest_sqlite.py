"""The embedded setup (SQLite) stores signals through the generic path: same rules, same audit row."""

import json
import time

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from shared import accounts, clients, users
from shared.config import load_settings
from shared.db import db
from shared.models import AuditLog, Signal
from shared.signing import sign
from web import create_app


@pytest.fixture
def sqlite_app(tmp_path):
    settings = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    app = create_app(settings)
    with app.app_context():
        upgrade()
        user = users.register(db.session, "owner@example.com", "password one")
        box = app.extensions["tradeguard.secret_box"]
        account = accounts.create_account(
            db.session, box, user, name="a", terminal_url="sim://", login=1, password="p", server="s"
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


def test_the_prepared_postgres_statement_matches_its_parameter_and_column_lists():
    """The Postgres ingest SQL is a literal; its parameter types and returned columns must agree with
    the tuples the code binds and reads by."""
    import re

    from shared import signals

    sql = " ".join(signals._PG_INGEST_PREPARE.split())
    declared = re.search(r"PREPARE (\w+) \(([^)]*)\) AS", sql)
    assert declared is not None and declared.group(1) == signals._PG_INGEST_NAME
    assert [t.strip() for t in declared.group(2).split(",")] == [t for _, t in signals._PG_INGEST_PARAMS]
    assert signals._PG_INGEST_EXECUTE.count("%s") == len(signals._PG_INGEST_PARAMS)
    assert max(int(n) for n in re.findall(r"\$(\d+)", sql)) == len(signals._PG_INGEST_PARAMS)
    columns = ", ".join(signals._SIGNAL_COLUMNS)
    returned = re.findall(r"(?:RETURNING|SELECT) (id, .*?) (?:\)|FROM new_signal)", sql)
    assert returned == [columns, columns]
    assert set(signals._SIGNAL_COLUMNS) == {c.name for c in Signal.__table__.c}
    assert list(signals.StoredSignal.__dataclass_fields__) == list(signals._SIGNAL_COLUMNS)
