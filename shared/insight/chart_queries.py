"""What the equity chart (shared.insight.chart) shows of one of its owner's accounts: the snapshot
history across its tiers, downsampled as it streams in, and the guards' warnings, alerts and closes in
the same range."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

from shared.core.db import DbSession
from shared.identity.accounts import get_own_account
from shared.insight import chart
from shared.insight.snapshots import SeriesPoint, series
from shared.models import AlertClose, AuditLog, DrawdownAlert, GuardState, PositionSnapshot, User

GUARD_WARNING = "guard.warning"  # the audit action shared.guards.engine records, its target the account


@dataclass(frozen=True)
class EquityChart:
    """Everything the chart draws, in plain data."""

    buckets: list[chart.Bucket]
    markers: list[chart.Marker]
    currency: str
    title: str
    start: datetime
    end: datetime

    def render(self, image_format: chart.ImageFormat = "png") -> bytes:
        """The chart's PNG or SVG bytes."""
        # matplotlib is imported by the first chart a process draws, not at start: it takes most of a
        # second, which every web and worker process would otherwise pay, chart or no chart.
        from shared.insight import chart_drawing

        return chart_drawing.render(
            self.buckets,
            self.markers,
            currency=self.currency,
            title=self.title,
            start=self.start,
            end=self.end,
            image_format=image_format,
        )


def _in_range(
    column: InstrumentedAttribute[Any],
    start: datetime | None,
    end: datetime | None,
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [column.is_not(None)]
    if start is not None:
        where.append(column >= start)
    if end is not None:
        where.append(column < end)
    return where


def _bounds(
    session: DbSession, account_id: int, start: datetime | None, end: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """When the account's first and last snapshot in the range were taken (None, None: it has none)."""
    first, last = session.execute(
        sa.select(sa.func.min(PositionSnapshot.synced_at), sa.func.max(PositionSnapshot.synced_at)).where(
            PositionSnapshot.account_id == account_id, *_in_range(PositionSnapshot.synced_at, start, end)
        )
    ).one()
    return first, last


def markers(
    session: DbSession, account_id: int, start: datetime | None, end: datetime | None
) -> list[chart.Marker]:
    """The account's guard warnings (audit_log), alerts raised, and positions its alerts closed, in
    [start, end), oldest first."""
    warnings = sa.select(AuditLog.created_at, sa.literal("warning")).where(
        AuditLog.action == GUARD_WARNING,
        AuditLog.target_type == "account",
        AuditLog.target_id == account_id,
        *_in_range(AuditLog.created_at, start, end),
    )
    alerts = sa.select(DrawdownAlert.created_at, sa.literal("alert")).where(
        DrawdownAlert.account_id == account_id, *_in_range(DrawdownAlert.created_at, start, end)
    )
    closes = sa.select(AlertClose.closed_at, sa.literal("close")).where(
        AlertClose.account_id == account_id,
        AlertClose.state == "closed",
        *_in_range(AlertClose.closed_at, start, end),
    )
    found = [
        chart.Marker(at=at, kind=kind)
        for statement in (warnings, alerts, closes)
        for at, kind in session.execute(statement)
        if at is not None
    ]
    return sorted(found, key=lambda marker: marker.at)


def equity_chart(
    session: DbSession,
    owner: User,
    account_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    now: datetime | None = None,
    buckets: int = chart.MAX_BUCKETS,
) -> EquityChart:
    """The chart of `owner`'s account `account_id` over [start, end) (open ends: as far as its history
    goes); NotFound for anyone else's account. The history streams from the database into the buckets:
    a year of it is never held in memory."""
    account = get_own_account(session, owner, account_id)
    first_at, last_at = _bounds(session, account.id, start, end)
    low, high = chart.chart_range(start, end, first_at, last_at, now or datetime.now(UTC))
    currency: str | None = None

    def noting_currency(points: Iterator[SeriesPoint]) -> Iterator[SeriesPoint]:
        nonlocal currency
        for point in points:
            currency = point.currency or currency  # the latest the snapshots name
            yield point

    history = chart.downsample(noting_currency(series(session, account.id, start, end)), low, high, buckets)
    if currency is None:
        currency = session.scalar(sa.select(GuardState.currency).where(GuardState.account_id == account.id))
    return EquityChart(
        buckets=history,
        markers=markers(session, account.id, start, end),
        currency=currency or account.currency,
        title=account.name,
        start=low,
        end=high,
    )
