"""Trades: what TradeGuard placed on a terminal for an approved signal."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.core.db import Money, Price, UTCDateTime, Volume, db, utcnow
from shared.models.enums import Side, TradeState, string_enum
from shared.models.signals import Signal


class Trade(db.Model):  # type: ignore[name-defined]
    """What TradeGuard placed (or tried to place) for one approved signal: at most one per signal.

    The order carries TradeGuard's magic number and `comment` (unique, short enough for brokers that
    keep 16 characters), so a retried task finds an order it already sent instead of sending another.
    """

    __tablename__ = "trades"
    __table_args__ = (
        sa.Index("ix_trades_owner_created", "owner_id", "created_at"),
        # The account's orders sent in the last minute, which max_orders_per_minute counts before each order.
        sa.Index("ix_trades_account_sent", "account_id", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    signal_id: Mapped[int] = mapped_column(sa.ForeignKey("signals.id"), unique=True)
    approval_id: Mapped[int] = mapped_column(sa.ForeignKey("approvals.id"), unique=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    symbol: Mapped[str] = mapped_column(sa.String(32))
    side: Mapped[Side] = mapped_column(string_enum(Side, "trade_side"))
    state: Mapped[TradeState] = mapped_column(
        string_enum(TradeState, "trade_state"), default=TradeState.PENDING
    )
    magic: Mapped[int] = mapped_column(sa.BigInteger)
    comment: Mapped[str | None] = mapped_column(sa.String(31), unique=True)
    requested_volume: Mapped[Decimal] = mapped_column(Volume)
    requested_price: Mapped[Decimal | None] = mapped_column(Price)
    requested_sl: Mapped[Decimal | None] = mapped_column(Price)
    requested_tp: Mapped[Decimal | None] = mapped_column(Price)
    filled_volume: Mapped[Decimal | None] = mapped_column(Volume)
    filled_price: Mapped[Decimal | None] = mapped_column(Price)
    order_ticket: Mapped[int | None] = mapped_column(sa.BigInteger)
    deal_ticket: Mapped[int | None] = mapped_column(sa.BigInteger)
    position_ticket: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
    # Set by reconciliation when it first finds the position (shared.reconciliation.rules.position_key):
    # a position with this ticket but another key is not this trade's.
    position_key: Mapped[str | None] = mapped_column(sa.String(64))
    # Orders sent, plus attempts that failed with an error nobody classified (execution.count_failed_attempt):
    # what the execution task's attempt limit counts.
    attempts: Mapped[int] = mapped_column(default=0)
    retcode: Mapped[int | None] = mapped_column(sa.Integer)
    failure_reason: Mapped[str | None] = mapped_column(sa.String(500))
    # Set when the execution task schedules another attempt (an unreachable terminal, an order whose fate
    # is unknown, an error nobody classified): the error that attempt met, kept once the trade is
    # finished, and when the next attempt is due, null while none is (see execution.record_retry).
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    filled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set by reconciliation when the position is gone from the terminal (SL, TP, stop-out, by hand).
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(sa.String(16))
    close_price: Mapped[Decimal | None] = mapped_column(Price)
    pnl: Mapped[Decimal | None] = mapped_column(Money)
    # Set by reconciliation when the position is gone from the terminal without a closing deal in its
    # history (the terminal lost it, or its history is incomplete); the trade stays open and is closed
    # with its real close data once a later sync finds the closing deal. Cleared if the position is back.
    vanished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    signal: Mapped[Signal] = relationship()
