"""Retention of the snapshot history: sync rows older than `full_days` become one row per account and
minute, minute rows older than `minute_days` one per account and hour (shared.insight.retention_rules
says what a roll-up keeps). Run by beat every minute (`tradeguard.roll_up_snapshots`), in bounded
batches: at most `accounts_per_run` accounts, each at most `minute_span` of sync rows and `hour_span` of
minute rows, one transaction per account. Where each account stands is kept in `snapshot_retention`, so
a run starts where the last one stopped and reads only the rows it rolls up.

Safe to run twice, also at once: an account's `snapshot_retention` row is locked while it is rolled up
(Postgres skips an account another run holds), and a bucket rolled up again merges into its row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from shared.core.db import DbSession, dialect_insert, utcnow
from shared.insight import retention_rules as rules
from shared.models import Account, PositionSnapshot, SnapshotRetention

_SNAPSHOTS = PositionSnapshot.__table__
_FIGURES = (
    "currency",
    "equity",
    "balance",
    "peak_equity",
    "drawdown_percent",
    "margin_level",
    "open_positions",
    "total_lots",
    "samples",
)


@dataclass(frozen=True)
class RetentionSettings:
    full_days: float = 7.0
    minute_days: float = 90.0
    accounts_per_run: int = 200
    minute_span: timedelta = timedelta(hours=6)
    hour_span: timedelta = timedelta(days=7)
    # An account is taken again once this much more has come due (fewer, larger runs per account).
    minute_backlog: timedelta = timedelta(hours=1)
    hour_backlog: timedelta = timedelta(days=1)


@dataclass
class RunFigures:
    accounts: int = 0
    rows_read: int = 0
    rows_written: int = 0
    per_resolution: dict[str, int] = field(default_factory=dict)  # rows written


def roll_up_snapshots(
    session: DbSession,
    settings: RetentionSettings = RetentionSettings(),
    now: Callable[[], datetime] = utcnow,
) -> RunFigures:
    """One bounded run: the accounts furthest behind first. Commits once per account."""
    cutoff = rules.cutoffs(now(), settings.full_days, settings.minute_days)
    figures = RunFigures()
    _track_new_accounts(session, now())
    for account_id in _accounts_due(session, cutoff, settings):
        if _roll_account(session, account_id, cutoff, settings, figures):
            figures.accounts += 1
        session.commit()
    return figures


def _track_new_accounts(session: DbSession, at: datetime) -> None:
    missing = sa.select(Account.id, sa.literal(at)).where(
        ~sa.exists().where(SnapshotRetention.account_id == Account.id)
    )
    insert = dialect_insert(session.get_bind())(SnapshotRetention.__table__)
    session.execute(
        insert.from_select(["account_id", "updated_at"], missing).on_conflict_do_nothing(),
    )
    session.commit()


def _accounts_due(session: DbSession, cutoff: dict[str, datetime], settings: RetentionSettings) -> list[int]:
    due = sa.or_(
        SnapshotRetention.minute_through.is_(None),
        SnapshotRetention.hour_through.is_(None),
        SnapshotRetention.minute_through <= cutoff["minute"] - settings.minute_backlog,
        SnapshotRetention.hour_through <= cutoff["hour"] - settings.hour_backlog,
    )
    return list(
        session.scalars(
            sa.select(SnapshotRetention.account_id)
            .where(due)
            .order_by(SnapshotRetention.minute_through.asc().nulls_first(), SnapshotRetention.account_id)
            .limit(settings.accounts_per_run)
        )
    )


def _roll_account(
    session: DbSession,
    account_id: int,
    cutoff: dict[str, datetime],
    settings: RetentionSettings,
    figures: RunFigures,
) -> bool:
    state = session.scalars(
        sa.select(SnapshotRetention)
        .where(SnapshotRetention.account_id == account_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if state is None:
        return False  # another run holds it
    # Minutes first: the hour tier then reads the minute rows as they stand.
    state.minute_through = _roll_tier(
        session, account_id, "minute", state.minute_through, cutoff["minute"], settings.minute_span, figures
    )
    state.hour_through = _roll_tier(
        session, account_id, "hour", state.hour_through, cutoff["hour"], settings.hour_span, figures
    )
    return True


def _roll_tier(
    session: DbSession,
    account_id: int,
    resolution: str,
    done_through: datetime | None,
    cutoff: datetime,
    longest: timedelta,
    figures: RunFigures,
) -> datetime:
    """Roll up the next span of the account's rows into `resolution`; where the tier now stands."""
    source = rules.SOURCE[resolution]
    of_account = (_SNAPSHOTS.c.account_id == account_id, _SNAPSHOTS.c.synced_at < cutoff)
    # The first source row not rolled up yet: an idle stretch is skipped in one step, not span by span.
    oldest_query = sa.select(sa.func.min(_SNAPSHOTS.c.synced_at)).where(
        *of_account, _SNAPSHOTS.c.resolution == source
    )
    if done_through is not None:
        oldest_query = oldest_query.where(_SNAPSHOTS.c.synced_at >= done_through)
    oldest = session.scalar(oldest_query)
    if oldest is None:
        return cutoff  # nothing before it to roll up: the tier stands there
    start = rules.bucket_start(oldest, resolution)
    end = rules.span_end(start, cutoff, longest)
    in_span = (
        _SNAPSHOTS.c.account_id == account_id,
        _SNAPSHOTS.c.synced_at >= start,
        _SNAPSHOTS.c.synced_at < end,
        _SNAPSHOTS.c.resolution.in_((source, resolution)),
    )
    rows = [_row(record) for record in session.execute(sa.select(_SNAPSHOTS).where(*in_span))]
    rolled = rules.roll_up(rows, resolution)
    session.execute(sa.delete(_SNAPSHOTS).where(*in_span))
    if rolled:
        session.execute(sa.insert(_SNAPSHOTS), [_values(account_id, resolution, row) for row in rolled])
    figures.rows_read += len(rows)
    figures.rows_written += len(rolled)
    figures.per_resolution[resolution] = figures.per_resolution.get(resolution, 0) + len(rolled)
    return end


def _row(record: sa.Row[object]) -> rules.Row:
    values = record._mapping
    return rules.Row(
        at=values["synced_at"],
        currency=values["currency"],
        equity=values["equity"],
        equity_min=values["equity_min"] if values["equity_min"] is not None else values["equity"],
        equity_max=values["equity_max"] if values["equity_max"] is not None else values["equity"],
        balance=values["balance"],
        peak_equity=values["peak_equity"],
        drawdown_percent=values["drawdown_percent"],
        margin_level=values["margin_level"],
        open_positions=values["open_positions"],
        total_lots=values["total_lots"],
        samples=values["samples"] or 1,
    )


def _values(account_id: int, resolution: str, row: rules.Row) -> dict[str, object]:
    return {
        "account_id": account_id,
        "resolution": resolution,
        "synced_at": row.at,
        "equity_min": row.equity_min,
        "equity_max": row.equity_max,
        **{name: getattr(row, name) for name in _FIGURES},
    }
