"""End to end: a real Celery worker and beat, over Redis, expire a pending signal in Postgres."""

import sqlalchemy as sa

from shared.models import AuditLog, Signal, SignalStatus
from tests.conftest import Api
from tests.processes import celery_beat, celery_worker, wait_for


def test_beat_and_a_worker_expire_signals_past_their_ttl(app, committed_db):
    api = Api(app.test_client())
    world = api.setup()
    short = api.send_signal(
        world["client"], {"instrument": "EURUSD", "side": "buy", "volume": "0.1", "ttl_seconds": 1}
    )
    long = api.send_signal(
        world["client"], {"instrument": "EURUSD", "side": "sell", "volume": "0.1", "ttl_seconds": 600}
    )
    assert short.status_code == long.status_code == 201

    def status_of(signal_id):
        committed_db.rollback()  # end the snapshot, so the next read sees the worker's commit
        return committed_db.get(Signal, signal_id).status

    sweep_every = {"TRADEGUARD_EXPIRY_SWEEP_SECONDS": "1"}
    with celery_worker(env=sweep_every) as worker, celery_beat(env=sweep_every) as beat:
        assert wait_for(lambda: status_of(short.json["id"]) == SignalStatus.EXPIRED), (
            worker.log() + beat.log()
        )
        assert "tradeguard.expire_signals" in beat.log()
        assert "tradeguard.expire_signals" in worker.log() and "succeeded" in worker.log()

    assert status_of(long.json["id"]) == SignalStatus.PENDING
    audit = committed_db.scalars(sa.select(AuditLog).where(AuditLog.action == "signal.expired")).all()
    assert [(a.actor_type, a.target_id) for a in audit] == [("system", short.json["id"])]

    listed = api.http.get("/api/v1/signals?status=expired", headers=world["user"]["headers"]).json
    assert [s["id"] for s in listed["items"]] == [short.json["id"]]
    late = api.http.post(
        "/api/v1/approvals",
        json={"signal_id": short.json["id"], "decision": "approve"},
        headers=world["user"]["headers"],
    )
    assert late.status_code == 409
