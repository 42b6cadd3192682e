"""Reading an account's snapshot history across its tiers: sync rows for the recent past, minute and
hour roll-ups (shared.insight.retention) further back. They live in one table, so a time range is one
query; a roll-up row stands at its bucket's start and carries the bucket's extremes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.models import PositionSnapshot


@dataclass(frozen=True)
class SeriesPoint:
    """One row of the history: at `at` (a sync, or a roll-up bucket's start), equity (the bucket's last)
    with the lowest and highest equity it covers, balance, the deepest drawdown in percent of the peak
    reconciliation tracked, and the resolution the row has (sync | minute | hour)."""

    at: datetime
    equity: Decimal
    equity_low: Decimal
    equity_high: Decimal
    balance: Decimal
    drawdown_percent: Decimal
    resolution: str
    currency: str


def series(
    session: DbSession, account_id: int, start: datetime | None = None, end: datetime | None = None
) -> Iterator[SeriesPoint]:
    """The account's points in [start, end), oldest first, whatever their tier. Streamed in chunks from a
    server-side cursor (a year of history is not built in memory here)."""
    table = PositionSnapshot
    statement = (
        sa.select(
            table.synced_at,
            table.equity,
            sa.func.coalesce(table.equity_min, table.equity),
            sa.func.coalesce(table.equity_max, table.equity),
            table.balance,
            table.drawdown_percent,
            table.resolution,
            table.currency,
        )
        .where(table.account_id == account_id)
        .order_by(table.synced_at, table.id)
    )
    if start is not None:
        statement = statement.where(table.synced_at >= start)
    if end is not None:
        statement = statement.where(table.synced_at < end)
    result = session.execute(statement.execution_options(yield_per=5000))
    for row in result:
        yield SeriesPoint(*row)
