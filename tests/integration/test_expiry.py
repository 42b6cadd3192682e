"""The expiry sweep against Postgres: only due pending signals, each once, even with sweeps racing."""

import threading
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.core.db import utcnow
from shared.models import AuditLog, Signal, SignalStatus
from shared.signals.expiry import expire_due_signals

GOOD = {
    "instrument": "USDJPY",
    "side": "buy",
    "volume": "1",
    "price": "150.000",
    "sl": "149.500",
    "tp": "151.000",
}


def make_signals(api, n, **payload_changes):
    world = api.setup()
    return world, [
        api.send_signal(world["client"], {**GOOD, **payload_changes, "comment": f"#{i}"}).json["id"]
        for i in range(n)
    ]


def backdate(session, ids, seconds=1):
    for signal_id in ids:
        session.get(Signal, signal_id).expires_at = utcnow() - timedelta(seconds=seconds)
    session.commit()


def test_only_due_pending_signals_expire_each_with_one_audit_row(api, db_session):
    world, ids = make_signals(api, 4)
    due, fresh, approved_due = ids[:2], ids[2], ids[3]
    api.decide(world["user"], approved_due)
    backdate(db_session, [*due, approved_due])

    assert sorted(expire_due_signals(db_session)) == sorted(due)
    statuses = {i: db_session.get(Signal, i).status for i in ids}
    assert statuses == {
        due[0]: SignalStatus.EXPIRED,
        due[1]: SignalStatus.EXPIRED,
        fresh: SignalStatus.PENDING,
        approved_due: SignalStatus.APPROVED,
    }
    audited = db_session.scalars(
        sa.select(AuditLog.target_id).where(AuditLog.action == "signal.expired")
    ).all()
    assert sorted(audited) == sorted(due)

    # Running the sweep again changes nothing and writes nothing.
    assert expire_due_signals(db_session) == []
    assert db_session.scalar(sa.select(sa.func.count()).where(AuditLog.action == "signal.expired")) == 2


def test_the_sweep_works_in_batches(api, db_session):
    _, ids = make_signals(api, 5)
    backdate(db_session, ids)
    assert sorted(expire_due_signals(db_session, batch_size=2)) == sorted(ids)


def test_racing_sweeps_expire_each_signal_exactly_once(app, committed_db):
    from tests.conftest import Api

    api = Api(app.test_client())
    _, ids = make_signals(api, 40)
    backdate(committed_db, ids)

    from shared.core.db import db

    engine = db.engine
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def sweep():
        with Session(engine) as session:
            barrier.wait()
            results.append(expire_due_signals(session, batch_size=7))
            session.commit()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    expired = [i for r in results for i in r]
    assert sorted(expired) == sorted(ids)  # every one, none twice
    audit_rows = committed_db.scalar(sa.select(sa.func.count()).where(AuditLog.action == "signal.expired"))
    assert audit_rows == len(ids)
