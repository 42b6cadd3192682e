"""Concurrent duplicates: the database's unique constraints decide, and the loser gets the winner's row."""

import json
import threading

import sqlalchemy as sa

from shared.models import Signal
from tests.conftest import Api

GOOD = {"instrument": "EURUSD", "side": "buy", "volume": "0.1"}


def test_simultaneous_retries_with_one_key_make_one_signal(app, committed_db):
    api = Api(app.test_client())
    world = api.setup()
    body = json.dumps(GOOD).encode()
    headers = api.signed_headers(world["client"], body, key="burst")

    statuses: list[tuple[int, int]] = []
    barrier = threading.Barrier(8)

    def send():
        http = app.test_client()
        barrier.wait()
        response = http.post("/api/v1/signals", data=body, headers=headers)
        statuses.append((response.status_code, response.json["id"]))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    codes = sorted(code for code, _ in statuses)
    assert codes == [200] * 7 + [201]
    assert len({signal_id for _, signal_id in statuses}) == 1
    assert committed_db.scalar(sa.select(sa.func.count()).select_from(Signal)) == 1


# --- the autocommit path: outside the test transaction, as in production ---------------------------

SIGNAL = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "price": "1.1", "sl": "1.09", "tp": "1.2"}


def _stored(committed_db) -> tuple[int, int]:
    from shared.models import AuditLog

    committed_db.rollback()  # a fresh snapshot: the rows were committed by another connection
    signals = committed_db.scalar(sa.select(sa.func.count()).select_from(Signal))
    received = committed_db.scalar(
        sa.select(sa.func.count()).select_from(AuditLog).where(AuditLog.action == "signal.received")
    )
    return signals, received


def test_a_new_signal_is_committed_with_its_audit_row_before_the_201(app, committed_db):
    api = Api(app.test_client())
    world = api.setup()
    response = api.send_signal(world["client"], {**SIGNAL, "comment": "committed"}, key="c-1")
    assert response.status_code == 201
    assert (response.json["volume"], response.json["price"], response.json["status"]) == (
        "0.1",
        "1.1",
        "pending",
    )
    assert _stored(committed_db) == (1, 1)
    # Seen from a connection of its own: committed, not merely written inside a transaction.
    with sa.create_engine(committed_db.get_bind().url).connect() as other:
        row = other.execute(
            sa.text("SELECT comment, idempotency_key, status FROM signals WHERE id = :id"),
            {"id": response.json["id"]},
        ).one()
        audit = other.execute(
            sa.text(
                "SELECT actor_type, actor_id, meta FROM audit_log "
                "WHERE action = 'signal.received' AND target_id = :id"
            ),
            {"id": response.json["id"]},
        ).one()
    assert tuple(row) == ("committed", "c-1", "pending")
    assert (audit.actor_type, audit.actor_id, audit.meta["idempotency_key"]) == (
        "client",
        world["client"]["id"],
        "c-1",
    )

    again = api.send_signal(world["client"], {**SIGNAL, "comment": "committed"}, key="c-1")
    assert again.status_code == 200 and again.json == response.json
    body = json.dumps({**SIGNAL, "comment": "replayed"}).encode()
    headers = api.signed_headers(world["client"], body)
    assert api.http.post("/api/v1/signals", data=body, headers=headers).status_code == 201
    assert api.http.post("/api/v1/signals", data=body, headers=headers).status_code == 409
    assert _stored(committed_db) == (2, 2)


def test_a_revoked_client_with_a_cached_secret_stores_nothing(app, committed_db):
    from shared.models import StrategyClient

    api = Api(app.test_client())
    world = api.setup()
    assert api.send_signal(world["client"], {**SIGNAL, "comment": "warm"}).status_code == 201
    assert app.extensions["tradeguard.client_keys"]._keys.get(world["client"]["id"]) is not None
    committed_db.get(StrategyClient, world["client"]["id"]).revoked = True
    committed_db.commit()
    response = api.send_signal(world["client"], {**SIGNAL, "comment": "after revocation"})
    assert response.status_code == 401 and "revoked" in response.json["error"]["message"]
    assert _stored(committed_db) == (1, 1)


def test_a_lost_prepared_statement_or_connection_is_recovered(app, committed_db):
    from shared.db import db

    api = Api(app.test_client())
    world = api.setup()
    committed_db.commit()
    committed_db.close()
    db.engine.dispose()
    assert api.send_signal(world["client"], {**SIGNAL, "comment": "one"}).status_code == 201
    # The only pooled connection now has the statement prepared; drop it behind the app's back.
    pooled = db.engine.raw_connection()
    cursor = pooled.cursor()
    cursor.execute("DEALLOCATE ALL")
    cursor.close()
    pooled.commit()
    pooled.close()
    assert api.send_signal(world["client"], {**SIGNAL, "comment": "two"}).status_code == 201
    # The server ends every connection (a restart, say): pre-ping replaces them and it prepares anew.
    with sa.create_engine(committed_db.get_bind().url).connect() as admin:
        admin.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert api.send_signal(world["client"], {**SIGNAL, "comment": "three"}).status_code == 201
    assert _stored(committed_db) == (3, 3)
