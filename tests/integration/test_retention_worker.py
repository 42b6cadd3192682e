"""Snapshot retention through a real Celery worker process on Postgres: sync rows older than a week
become minute rows, minute rows older than 90 days hour rows, each keeping its extremes; recent rows
stay as they are; a second run changes nothing; the history reads the same across the tiers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.core.extensions import task_queue
from shared.core.queue import ROLL_UP_SNAPSHOTS
from shared.insight.retention_rules import bucket_start
from shared.insight.snapshots import series
from shared.models import PositionSnapshot, SnapshotRetention
from tests.conftest import Api
from tests.processes import celery_worker, wait_for


@pytest.fixture(scope="module")
def worker():
    with celery_worker(name="retention") as process:
        yield process


def _snapshot(account_id: int, at, equity: str, *, resolution: str = "sync", low=None, high=None, samples=1):
    return PositionSnapshot(
        account_id=account_id,
        currency="USD",
        equity=Decimal(equity),
        balance=Decimal("1000"),
        peak_equity=Decimal("1600"),
        drawdown_percent=(Decimal("1600") - Decimal(low or equity)) / 16,
        margin_level=None,
        open_positions=1,
        total_lots=Decimal("0.10"),
        synced_at=at,
        resolution=resolution,
        equity_min=Decimal(low) if low else None,
        equity_max=Decimal(high) if high else None,
        samples=samples,
    )


def _rows(session, account_id: int) -> list[tuple]:
    session.rollback()  # a fresh snapshot: the worker commits in another process
    return [
        (row.resolution, row.synced_at, row.equity, row.equity_min, row.equity_max, row.samples)
        for row in session.scalars(
            sa.select(PositionSnapshot)
            .where(PositionSnapshot.account_id == account_id)
            .order_by(PositionSnapshot.synced_at, PositionSnapshot.id)
        )
    ]


def _run(app, session, account_id: int) -> None:
    task_queue(app).send(ROLL_UP_SNAPSHOTS, [])

    def ran() -> bool:
        session.rollback()
        state = session.get(SnapshotRetention, account_id, populate_existing=True)
        return state is not None and state.minute_through is not None and state.hour_through is not None

    assert wait_for(ran, timeout=30)


def test_old_syncs_become_minutes_and_old_minutes_hours_keeping_their_extremes(app, committed_db, worker):
    api = Api(app.test_client())
    with app.app_context():
        user = api.user()
        account_id = api.account(user, verify=False, terminal_url="sim://127.0.0.1:1")["id"]
        now = utcnow()
        week_old = bucket_start(now - timedelta(days=8), "minute")
        season_old = bucket_start(now - timedelta(days=91), "hour")
        recent = now - timedelta(days=1)
        committed_db.add_all(
            [
                # Eight days ago: two minutes of syncs every 10 s, a spike and a dip inside the first.
                *[
                    _snapshot(account_id, week_old + timedelta(seconds=10 * i), equity)
                    for i, equity in enumerate(
                        ["1000", "1500", "700", "1000", "1010", "1020", "1030", "1040"]
                    )
                ],
                # A day ago: kept as synced.
                _snapshot(account_id, recent, "990"),
                _snapshot(account_id, recent + timedelta(seconds=10), "980"),
                # 91 days ago: three minute rows of one hour, one with a deep dip, one with a spike.
                _snapshot(
                    account_id, season_old, "1100", resolution="minute", low="1000", high="1200", samples=6
                ),
                _snapshot(
                    account_id,
                    season_old + timedelta(minutes=1),
                    "1100",
                    resolution="minute",
                    low="300",
                    high="1150",
                    samples=6,
                ),
                _snapshot(
                    account_id,
                    season_old + timedelta(minutes=59),
                    "1050",
                    resolution="minute",
                    low="1040",
                    high="1900",
                    samples=5,
                ),
            ]
        )
        committed_db.commit()

        _run(app, committed_db, account_id)

        rows = _rows(committed_db, account_id)
        assert rows == [
            # The hour keeps the dip of its second minute and the spike of its last; equity is its last.
            ("hour", season_old, Decimal("1050.0000"), Decimal("300.0000"), Decimal("1900.0000"), 17),
            # The first minute: 6 syncs, with the spike and the dip; the second: 2 syncs.
            ("minute", week_old, Decimal("1020.0000"), Decimal("700.0000"), Decimal("1500.0000"), 6),
            (
                "minute",
                week_old + timedelta(minutes=1),
                Decimal("1040.0000"),
                Decimal("1030.0000"),
                Decimal("1040.0000"),
                2,
            ),
            ("sync", recent, Decimal("990.0000"), None, None, 1),
            ("sync", recent + timedelta(seconds=10), Decimal("980.0000"), None, None, 1),
        ]
        state = committed_db.get(SnapshotRetention, account_id, populate_existing=True)
        # One span of at most six hours of syncs per run, from the oldest; the hour tier up to its cutoff.
        assert state.minute_through == week_old + timedelta(hours=6)
        assert state.hour_through in {
            bucket_start(now - timedelta(days=90), "hour"),
            bucket_start(utcnow() - timedelta(days=90), "hour"),
        }

        # The chart and analytics read one history across the tiers, oldest first, extremes kept.
        points = list(series(committed_db, account_id))
        assert [(p.resolution, p.equity_low, p.equity_high) for p in points] == [
            ("hour", Decimal("300.0000"), Decimal("1900.0000")),
            ("minute", Decimal("700.0000"), Decimal("1500.0000")),
            ("minute", Decimal("1030.0000"), Decimal("1040.0000")),
            ("sync", Decimal("990.0000"), Decimal("990.0000")),
            ("sync", Decimal("980.0000"), Decimal("980.0000")),
        ]

        # Again: nothing left to roll up, nothing changes.
        committed_db.execute(sa.update(SnapshotRetention).values(minute_through=None, hour_through=None))
        committed_db.commit()
        _run(app, committed_db, account_id)
        assert _rows(committed_db, account_id) == rows
