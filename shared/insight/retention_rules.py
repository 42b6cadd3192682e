"""Rolling snapshots up into coarser rows: pure, so that what a roll-up keeps is tested without a
database. A roll-up row stands at its bucket's start; it keeps the bucket's extremes of equity (so a
spike survives every tier), its deepest drawdown and lowest margin level, the count of syncs it holds,
and otherwise the bucket's last figures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1)}
# Which tier each roll-up reads from.
SOURCE = {"minute": "sync", "hour": "minute"}


@dataclass(frozen=True)
class Row:
    """A snapshot row as the roll-up reads and writes it (position_snapshots' figures)."""

    at: datetime  # synced_at: the sync's time, or a roll-up's bucket start
    currency: str
    equity: Decimal
    equity_min: Decimal
    equity_max: Decimal
    balance: Decimal
    peak_equity: Decimal
    drawdown_percent: Decimal
    margin_level: Decimal | None
    open_positions: int
    total_lots: Decimal
    samples: int


def bucket_start(at: datetime, resolution: str) -> datetime:
    """The start of the minute or hour `at` falls in (same timezone)."""
    if resolution == "minute":
        return at.replace(second=0, microsecond=0)
    if resolution == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    raise ValueError(f"no such resolution: {resolution}")


def cutoffs(now: datetime, full_days: float, minute_days: float) -> dict[str, datetime]:
    """Per target resolution, the bucket boundary before which rows are rolled up into it: sync rows
    older than `full_days` into minutes, minute rows older than `minute_days` into hours. On a boundary,
    so that a bucket is always rolled up whole, by one run."""
    return {
        "minute": bucket_start(now - timedelta(days=full_days), "minute"),
        "hour": bucket_start(now - timedelta(days=minute_days), "hour"),
    }


def roll_up(rows: Iterable[Row], resolution: str) -> list[Row]:
    """One row per bucket of `resolution` for `rows` (any order; earlier roll-ups among them merge in,
    their extremes and counts included), oldest bucket first."""
    buckets: dict[datetime, list[Row]] = {}
    for row in rows:
        buckets.setdefault(bucket_start(row.at, resolution), []).append(row)
    return [_merged(start, sorted(members, key=lambda r: r.at)) for start, members in sorted(buckets.items())]


def _merged(start: datetime, members: Sequence[Row]) -> Row:
    last = members[-1]
    margins = [row.margin_level for row in members if row.margin_level is not None]
    return Row(
        at=start,
        currency=last.currency,
        equity=last.equity,
        equity_min=min(row.equity_min for row in members),
        equity_max=max(row.equity_max for row in members),
        balance=last.balance,
        peak_equity=max(row.peak_equity for row in members),
        drawdown_percent=max(row.drawdown_percent for row in members),
        margin_level=min(margins) if margins else None,
        open_positions=last.open_positions,
        total_lots=last.total_lots,
        samples=sum(row.samples for row in members),
    )


def span_end(start: datetime, cutoff: datetime, longest: timedelta) -> datetime:
    """Where the span of source rows rolled up from `start` ends: at most `longest` on, never past
    `cutoff` (both on bucket boundaries, so the span holds whole buckets)."""
    return min(cutoff, start + longest)
