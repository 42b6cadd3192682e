"""Concurrent duplicates: the database's unique constraints decide, and the loser gets the winner's row."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
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
    from shared.core.db import db

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
    # The server ends every connection (a restart, say): the pool sees the closed sockets, replaces
    # those connections, and the statement is prepared anew.
    terminate_other_connections(committed_db.get_bind().url)
    assert api.send_signal(world["client"], {**SIGNAL, "comment": "three"}).status_code == 201
    assert _stored(committed_db) == (3, 3)


def test_signals_arriving_during_a_commit_are_inserted_together_each_answered_with_its_own(app, committed_db):
    """Group commit: while one batch waits for its commit, concurrent signals queue and then go in
    one statement and one transaction; every request still gets its own signal, and duplicates in
    the batch are answered as duplicates."""
    from shared.core.db import db
    from shared.signals.batching import _batches

    api = Api(app.test_client())
    world = api.setup()
    committed_db.commit()
    url = committed_db.get_bind().url
    with app.app_context():
        batches = _batches(db.engine)
    timestamp = int(time.time())

    def body_and_headers(comment: str, key: str | None = None) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({**SIGNAL, "comment": comment}).encode()
        return body, api.signed_headers(world["client"], body, key=key, timestamp=timestamp)

    # A first signal puts the client's secret in the cache, so that no request below needs a
    # session; its key is then reused below with another body.
    used = api.send_signal(world["client"], {**SIGNAL, "comment": "warm"}, key="used")
    assert used.status_code == 201

    requests = {f"s{i}": body_and_headers(f"s{i}") for i in range(12)}
    requests["keyed"] = body_and_headers("keyed", key="k-1")
    requests["keyed again"] = requests["keyed"]  # the same request resent with its key: 200
    requests["replay"] = requests["s0"]  # the same signed request without a key: 409
    # One signed request under two keys: the one already used for another body is refused (409);
    # that must not stop the other copy, which is a new signal.
    requests["reused key"] = body_and_headers("two keys", key="used")
    requests["fresh key"] = body_and_headers("two keys", key="fresh")
    responses: dict[str, Any] = {}

    def send(name: str) -> None:
        body, headers = requests[name]
        response = app.test_client().post("/api/v1/signals", data=body, headers=headers)
        responses[name] = (response.status_code, response.json)

    # Hold the next batch at its INSERT, so that the others have to queue behind it.
    blocker = sa.create_engine(url).connect()
    try:
        blocker.execute(sa.text("LOCK TABLE signals IN EXCLUSIVE MODE"))
        first = threading.Thread(target=send, args=("s11",), daemon=True)
        first.start()
        deadline = time.monotonic() + 10
        while not blocker.scalar(
            sa.text("SELECT count(*) FROM pg_locks WHERE relation = 'signals'::regclass AND NOT granted")
        ):
            assert time.monotonic() < deadline, "the first batch never reached the locked table"
            time.sleep(0.01)
        others = [
            threading.Thread(target=send, args=(name,), daemon=True) for name in requests if name != "s11"
        ]
        for t in others:
            t.start()
        while len(batches._queue) < len(others):
            assert time.monotonic() < deadline, f"only {len(batches._queue)} of {len(others)} queued"
            time.sleep(0.01)
    finally:
        blocker.commit()
        blocker.close()
    for t in [first, *others]:
        t.join(timeout=30)

    for i in range(1, 12):
        code, signal = responses[f"s{i}"]
        assert (code, signal["comment"], signal["status"]) == (201, f"s{i}", "pending")
    # s0 and its replay are one request: whichever queued first is stored, the other refused.
    codes = sorted([responses["s0"][0], responses["replay"][0]])
    assert codes == [201, 409]
    stored_s0 = next(body for code, body in (responses["s0"], responses["replay"]) if code == 201)
    refused_s0 = next(body for code, body in (responses["s0"], responses["replay"]) if code == 409)
    assert stored_s0["comment"] == "s0" and "X-Signature" in refused_s0["error"]["fields"]
    assert sorted([responses["keyed"][0], responses["keyed again"][0]]) == [200, 201]
    assert responses["keyed"][1]["id"] == responses["keyed again"][1]["id"]
    assert responses["reused key"][0] == 409
    assert "Idempotency-Key" in responses["reused key"][1]["error"]["fields"]
    assert responses["fresh key"][0] == 201 and responses["fresh key"][1]["idempotency_key"] == "fresh"
    assert _stored(committed_db) == (15, 15)
    # Three transactions made the 15 rows: the warm-up, the held batch, and one for everything that
    # queued behind it.
    transactions = committed_db.scalar(sa.text("SELECT count(DISTINCT xmin::text) FROM signals"))
    assert transactions == 3
    audited = committed_db.execute(
        sa.text(
            "SELECT s.comment, a.meta->>'idempotency_key' FROM audit_log a JOIN signals s "
            "ON s.id = a.target_id WHERE a.action = 'signal.received'"
        )
    ).all()
    expected = [*(f"s{i}" for i in range(12)), "keyed", "two keys", "warm"]
    assert sorted(comment for comment, _ in audited) == sorted(expected)
    assert dict(audited)["keyed"] == "k-1" and dict(audited)["two keys"] == "fresh"


@pytest.mark.parametrize("reused_first", [True, False])
def test_in_one_batch_a_copy_under_a_used_key_does_not_stop_the_copy_under_a_fresh_key(
    app, committed_db, reused_first
):
    """The batch statement itself, both ways round: one signed request sent under two keys, one of
    them already used for another signal. Only the fresh copy is stored, with its own audit row."""
    from shared.core.db import db
    from shared.models import Side, SignalStatus
    from shared.signals import auth, batching

    api = Api(app.test_client())
    world = api.setup()
    assert api.send_signal(world["client"], {**SIGNAL, "comment": "earlier"}, key="used").status_code == 201
    client = auth.ClientIdentity(id=world["client"]["id"], owner_id=0, account_id=0)
    now = datetime.now(UTC)

    def copy(key: str) -> batching._BatchItem:
        values = {
            "instrument": "EURUSD", "side": Side.BUY, "volume": Decimal("0.1"), "price": None,
            "sl": None, "tp": None, "comment": "two keys", "status": SignalStatus.PENDING,
            "ttl_seconds": 120, "expires_at": now + timedelta(seconds=120), "idempotency_key": key,
            "signature": "f" * 64, "body_sha256": "b" * 64, "created_at": now,
        }  # fmt: skip
        return batching._batch_item(client, values, {"idempotency_key": key})

    batch = [copy("used"), copy("fresh")] if reused_first else [copy("fresh"), copy("used")]
    with app.app_context():
        outcomes = batching._ingest_autocommit(db.engine, batch)
    stored = {item.idempotency_key: outcome for item, outcome in zip(batch, outcomes, strict=True)}
    assert stored["used"] is None
    assert stored["fresh"] is not None and stored["fresh"].idempotency_key == "fresh"
    assert _stored(committed_db) == (2, 2)


def terminate_other_connections(url: sa.URL) -> None:
    """End every other session on the database, and wait until their processes have closed their
    sockets (pg_terminate_backend only signals them), as after a server restart."""
    # Autocommit: inside one transaction pg_stat_activity would keep showing its first snapshot.
    with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as admin:
        ended = admin.scalars(
            sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ).all()
        admin.execute(sa.text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"), {"pids": ended})
        deadline = time.monotonic() + 10
        while admin.scalar(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": ended}
        ):
            assert time.monotonic() < deadline, "terminated sessions still there after 10 s"
            time.sleep(0.01)
