"""The risk guards: each account's risk settings, where its guards stand, the alerts they raised and the
positions an alert closed, and what the market guard sees of each symbol on each trade server."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from shared.core.db import JSONType, Money, Price, UTCDateTime, Volume, db, utcnow

# An alert's statuses: live while its grace period runs (pending) and while it closes (closing), then
# finished one way or another. The live ones are those the partial unique index allows one of per account.
LIVE_ALERT_STATUSES = ("pending", "closing")
ALERT_STATUSES = (*LIVE_ALERT_STATUSES, "executed", "cancelled", "failed")


class AccountRisk(db.Model):  # type: ignore[name-defined]
    """An account's risk settings document (shared.guards.settings), as its owner last saved it. An
    account without a row has the defaults: guards that warn and never close, order limits off."""

    __tablename__ = "account_risk"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GuardState(db.Model):  # type: ignore[name-defined]
    """Where one account's guards stand between readings: each drawdown limit's period and reference,
    the run of consecutive breached readings that `confirmations` counts, whether the account is halted.

    Written by the guard tasks only (under the account's guard lock), apart from the owner's rows."""

    __tablename__ = "guard_states"

    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), primary_key=True)
    # ok | warning | alert | halted, as GET /guards shows it.
    state: Mapped[str] = mapped_column(sa.String(16), default="ok")
    # Per drawdown limit, by its name: period_start, reference, peak, streak, warned, ... (guards.rules).
    limits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The margin guard's run of readings under the minimum, and the market guard's blocked symbols.
    margin_streak: Mapped[int] = mapped_column(default=0)
    blocked_symbols: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # The first balance seen: the `initial_balance` reference.
    initial_balance: Mapped[Decimal | None] = mapped_column(Money)
    # The trade server's clock minus UTC, learnt from its quotes: periods start at broker midnight.
    broker_offset_seconds: Mapped[int] = mapped_column(default=0)
    # The last reading's figures, for GET /guards.
    equity: Mapped[Decimal | None] = mapped_column(Money)
    balance: Mapped[Decimal | None] = mapped_column(Money)
    margin_level: Mapped[Decimal | None] = mapped_column(sa.Numeric(14, 4))
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set by a `close` action: every new order is refused until the account resumes.
    halted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    halted_reason: Mapped[str | None] = mapped_column(sa.String(200))
    halted_by_alert_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Which limit halted it (None: the margin or market guard) and how it resumes: manual | next_period.
    halted_limit: Mapped[str | None] = mapped_column(sa.String(100))
    halted_resume: Mapped[str | None] = mapped_column(sa.String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DrawdownAlert(db.Model):  # type: ignore[name-defined]
    """An alert raised by a guard (the seeds' drawdown_alerts, for every guard kind): pending while its
    grace period runs, then executed (positions closed), cancelled (the breach cleared) or failed."""

    __tablename__ = "drawdown_alerts"
    __table_args__ = (
        # One live alert per account: a second breach while one is pending or closing joins it.
        sa.Index(
            "uq_drawdown_alerts_live",
            "account_id",
            unique=True,
            postgresql_where=sa.text("status IN ('pending', 'closing')"),
            sqlite_where=sa.text("status IN ('pending', 'closing')"),
        ),
        sa.Index("ix_drawdown_alerts_owner_created", "owner_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    alert_type: Mapped[str] = mapped_column(sa.String(16))  # drawdown | margin | market
    limit_name: Mapped[str | None] = mapped_column(sa.String(100))  # the drawdown limit's name
    symbol: Mapped[str | None] = mapped_column(sa.String(32))  # the market guard's symbol
    reason: Mapped[str] = mapped_column(sa.String(300))
    currency: Mapped[str] = mapped_column(sa.String(3))
    drawdown_percent: Mapped[Decimal | None] = mapped_column(sa.Numeric(9, 4))
    drawdown_amount: Mapped[Decimal | None] = mapped_column(Money)
    equity: Mapped[Decimal] = mapped_column(Money)
    threshold_percent: Mapped[Decimal | None] = mapped_column(sa.Numeric(9, 4))
    margin_level: Mapped[Decimal | None] = mapped_column(sa.Numeric(14, 4))
    positions_closed_count: Mapped[int] = mapped_column(default=0)
    total_loss: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    action_taken: Mapped[str | None] = mapped_column(sa.String(32))  # closed | cancelled | none
    # pending → closing → executed | failed; pending → cancelled.
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    close_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    executed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class AlertClose(db.Model):  # type: ignore[name-defined]
    """One position an alert closes: the intent, committed before the closing order is sent, and its
    outcome. An alert closes a position once (the unique key), whatever retries or redeliveries follow.
    A later alert (one is live per account at a time, and an alert ends only once each of its closes has)
    may close what an earlier one left open: a close that failed, or filled in part."""

    __tablename__ = "alert_closes"
    __table_args__ = (sa.UniqueConstraint("alert_id", "position_key"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    alert_id: Mapped[int] = mapped_column(sa.ForeignKey("drawdown_alerts.id"), index=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"))
    trade_id: Mapped[int | None] = mapped_column(sa.ForeignKey("trades.id"))
    position_ticket: Mapped[int] = mapped_column(sa.BigInteger)
    position_key: Mapped[str] = mapped_column(sa.String(64))
    symbol: Mapped[str] = mapped_column(sa.String(32))
    side: Mapped[str] = mapped_column(sa.String(4))
    volume: Mapped[Decimal] = mapped_column(Volume)
    # The closing order's comment: what finds it again after a lost reply or a killed worker.
    comment: Mapped[str | None] = mapped_column(sa.String(31), unique=True)
    # pending (nothing sent) → sent (outcome not known yet) → closed | gone (closed by something else)
    # | failed.
    state: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    retcode: Mapped[int | None] = mapped_column(sa.Integer)
    close_price: Mapped[Decimal | None] = mapped_column(Price)
    pnl: Mapped[Decimal | None] = mapped_column(Money)
    deal_ticket: Mapped[int | None] = mapped_column(sa.BigInteger)
    error: Mapped[str | None] = mapped_column(sa.String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MarketQuote(db.Model):  # type: ignore[name-defined]
    """The market guard's last look at one symbol on one trade server: the quote, the jump from the one
    before it, and when the server last priced it (shared by every account on that server)."""

    __tablename__ = "market_quotes"

    server: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    symbol: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    bid: Mapped[Decimal] = mapped_column(Price)
    ask: Mapped[Decimal] = mapped_column(Price)
    spread_pips: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    gap_pips: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2), default=Decimal(0))
    quoted_at: Mapped[datetime] = mapped_column(UTCDateTime())  # the tick's time, in UTC
    trading: Mapped[bool] = mapped_column(default=True)  # the symbol's session is open
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
