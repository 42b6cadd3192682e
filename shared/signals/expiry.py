"""The expiry sweep: pending signals past their time-to-live become expired."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from shared.audit import trail
from shared.core.db import DbSession, utcnow
from shared.models import Signal, SignalStatus


def expire_due_signals(
    session: DbSession, *, now: datetime | None = None, batch_size: int = 500
) -> list[int]:
    """Mark pending signals past their time-to-live as expired, each with an audit row.

    Safe with several sweeps at once: rows are claimed with SKIP LOCKED on Postgres, and the UPDATE
    re-checks `status = 'pending'`, so a signal approved a moment ago is never expired and no signal is
    expired (or audited) twice.
    """
    now = now or utcnow()
    expired_ids: list[int] = []
    while True:
        due_ids = list(
            session.scalars(
                sa.select(Signal.id)
                .where(Signal.status == SignalStatus.PENDING, Signal.expires_at <= now)
                .order_by(Signal.expires_at)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        )
        if not due_ids:
            break
        claimed = list(
            session.scalars(
                sa.update(Signal)
                .where(Signal.id.in_(due_ids), Signal.status == SignalStatus.PENDING)
                .values(status=SignalStatus.EXPIRED, decided_at=now)
                .returning(Signal.id)
                .execution_options(synchronize_session=False)
            )
        )
        for signal_id in claimed:
            trail.record(
                session,
                actor_type=trail.SYSTEM,
                actor_id=None,
                action="signal.expired",
                target_type="signal",
                target_id=signal_id,
                meta={"expired_at": now.isoformat()},
            )
        expired_ids.extend(claimed)
        if len(due_ids) < batch_size:
            break
    # Objects already loaded in this session must not show the old status.
    session.expire_all()
    return expired_ids
