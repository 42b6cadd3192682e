"""What reconciliation saw and decided: per-account sync state, position snapshots, and its event log."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from shared.core.db import JSONType, Money, Price, UTCDateTime, Volume, db, utcnow


class AccountSync(db.Model):  # type: ignore[name-defined]
    """Where reconciliation stands for one account: last sync, peak equity, and the circuit breaker.

    Kept apart from `accounts` so that the workers' frequent writes never touch the owner's row.
    """

    __tablename__ = "account_sync"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), primary_key=True)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    breaker_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    breaker_openings: Mapped[int] = mapped_column(default=0)  # ever, for /metrics
    peak_equity: Mapped[Decimal | None] = mapped_column(Money)
    # Deals are read from here on the next sync, so each closing deal is seen once.
    deals_synced_to: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_sync_ms: Mapped[int | None] = mapped_column(sa.Integer)  # how long the last sync took
    # The last sync's account figures, read with its positions (what the guards' watch starts from).
    equity: Mapped[Decimal | None] = mapped_column(Money)
    balance: Mapped[Decimal | None] = mapped_column(Money)
    margin: Mapped[Decimal | None] = mapped_column(Money)
    # The last sync's open positions with their attribution, for the positions API.
    positions: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)


# A snapshot's resolution: one sync, or one account's syncs of a minute or an hour rolled into one row by
# the retention task (shared.insight.retention), oldest data coarsest.
SNAPSHOT_RESOLUTIONS = ("sync", "minute", "hour")


class PositionSnapshot(db.Model):  # type: ignore[name-defined]
    """One account's figures at one sync: the time series behind charts and the drawdown guard.

    Older rows are rolled up (`resolution` minute, then hour; `synced_at` is then the bucket's start):
    equity is the bucket's last, `equity_min` / `equity_max` its extremes (null on a sync row: its
    equity is both), drawdown its deepest, margin level its lowest, the rest its last."""

    __tablename__ = "position_snapshots"
    __table_args__ = (
        sa.Index("ix_position_snapshots_account_synced", "account_id", "synced_at"),
        # One rolled-up row per account, resolution and bucket: a retention run that repeats a bucket
        # merges into it.
        sa.Index(
            "uq_position_snapshots_rollup",
            "account_id",
            "resolution",
            "synced_at",
            unique=True,
            postgresql_where=sa.text("resolution <> 'sync'"),
            sqlite_where=sa.text("resolution <> 'sync'"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    currency: Mapped[str] = mapped_column(sa.String(3))
    equity: Mapped[Decimal] = mapped_column(Money)
    balance: Mapped[Decimal] = mapped_column(Money)
    peak_equity: Mapped[Decimal] = mapped_column(Money)
    drawdown_percent: Mapped[Decimal] = mapped_column(sa.Numeric(9, 4))
    margin_level: Mapped[Decimal | None] = mapped_column(sa.Numeric(14, 4))
    open_positions: Mapped[int] = mapped_column(sa.Integer)
    total_lots: Mapped[Decimal] = mapped_column(Volume)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolution: Mapped[str] = mapped_column(sa.String(8), default="sync", server_default="sync")
    equity_min: Mapped[Decimal | None] = mapped_column(Money)
    equity_max: Mapped[Decimal | None] = mapped_column(Money)
    samples: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")  # syncs rolled in


class ReconciliationLog(db.Model):  # type: ignore[name-defined]
    """A reconciliation event: a position matched, a divergence, a trade closed outside TradeGuard, a
    position opened outside it, a trade's position vanished without a closing deal. Recorded once; a
    divergence each time it changes, clearing included."""

    __tablename__ = "reconciliation_logs"
    __table_args__ = (
        # Matched, outside, closed and vanished events happen once per position; divergences recur as
        # they change. A position is its key, not its ticket: a ticket can come back (a terminal that
        # restarted without its state, another login or server behind the same account).
        sa.Index(
            "uq_reconciliation_logs_once",
            "account_id",
            "event_type",
            "position_key",
            unique=True,
            postgresql_where=sa.text("event_type <> 'divergence'"),
            sqlite_where=sa.text("event_type <> 'divergence'"),
        ),
        sa.Index("ix_reconciliation_logs_account_created", "account_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    trade_id: Mapped[int | None] = mapped_column(sa.ForeignKey("trades.id"), index=True)
    event_type: Mapped[str] = mapped_column(sa.String(24))
    position_ticket: Mapped[int] = mapped_column(sa.BigInteger)
    # Which position (shared.reconciliation.rules.position_key): its login, server, identifier and open
    # time. Events recorded before it was kept have "ticket:<position_ticket>".
    position_key: Mapped[str] = mapped_column(sa.String(64))
    fingerprint: Mapped[str] = mapped_column(sa.String(64), default="")
    symbol: Mapped[str] = mapped_column(sa.String(32))
    side: Mapped[str | None] = mapped_column(sa.String(4))
    volume: Mapped[Decimal | None] = mapped_column(Volume)
    price_open: Mapped[Decimal | None] = mapped_column(Price)
    sl: Mapped[Decimal | None] = mapped_column(Price)
    tp: Mapped[Decimal | None] = mapped_column(Price)
    opened_from: Mapped[str | None] = mapped_column(sa.String(16))  # desktop, mobile, web, expert
    close_reason: Mapped[str | None] = mapped_column(sa.String(16))
    close_price: Mapped[Decimal | None] = mapped_column(Price)
    pnl: Mapped[Decimal | None] = mapped_column(Money)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SnapshotRetention(db.Model):  # type: ignore[name-defined]
    """How far the retention task has rolled up one account's snapshots: every sync row before
    `minute_through` is in a minute row, every minute row before `hour_through` in an hour row. Kept apart
    from `account_sync`, which reconciliation writes at every sync."""

    __tablename__ = "snapshot_retention"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), primary_key=True)
    minute_through: Mapped[datetime | None] = mapped_column(UTCDateTime())
    hour_through: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
