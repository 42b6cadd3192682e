"""What /metrics reads of reconciliation at scrape time, from the rows the workers write (see
`web.api.metrics` for why); the task durations are `task_durations.read`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.models import Account, AccountSync, ReconciliationLog
from shared.reconciliation.breaker import breaker_is_open


@dataclass(frozen=True)
class SyncFigures:
    """Every account's reconciliation, summed up at one moment."""

    accounts: int  # broker accounts known, synced or not
    lags_seconds: list[float]  # the age of each last successful sync (accounts never synced have none)
    durations_ms: list[float]  # how long each account's last successful sync took
    events_by_type: list[tuple[str, int]]  # reconciliation events recorded, ever
    open_breakers: int  # accounts backed off right now
    breaker_openings: int  # times any breaker opened, ever


def sync_figures(session: DbSession, now: datetime) -> SyncFigures:
    syncs = session.execute(
        sa.select(
            AccountSync.last_synced_at,
            AccountSync.last_sync_ms,
            AccountSync.breaker_open_until,
            AccountSync.breaker_openings,
        )
    ).all()
    accounts = session.scalar(sa.select(sa.func.count()).select_from(Account)) or 0
    events_by_type = session.execute(
        sa.select(ReconciliationLog.event_type, sa.func.count()).group_by(ReconciliationLog.event_type)
    ).all()
    return SyncFigures(
        accounts=accounts,
        lags_seconds=[(now - row.last_synced_at).total_seconds() for row in syncs if row.last_synced_at],
        durations_ms=[float(row.last_sync_ms) for row in syncs if row.last_sync_ms is not None],
        events_by_type=[(event_type, count) for event_type, count in events_by_type],
        open_breakers=sum(1 for row in syncs if breaker_is_open(row.breaker_open_until, now)),
        breaker_openings=sum(row.breaker_openings or 0 for row in syncs),
    )
