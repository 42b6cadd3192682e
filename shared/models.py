"""Database models. Money, prices and volumes are `Numeric`; timestamps are UTC-aware."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.db import JSONType, Money, Price, UTCDateTime, Volume, db, utcnow


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class SignalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class TradeState(enum.StrEnum):
    PENDING = "pending"  # row made, nothing sent yet
    SENT = "sent"  # order_send under way or its outcome unknown: look for it before sending again
    FILLED = "filled"
    PARTIAL = "partial"  # filled below the requested volume
    REJECTED = "rejected"  # refused by a pre-trade check or by the broker
    FAILED = "failed"  # gave up: terminal unreachable after every retry
    CLOSED = "closed"


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


def _enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    return [member.value for member in enum_cls]


def _string_enum(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    # Stored as VARCHAR + CHECK rather than a native Postgres ENUM: adding a state later is a plain
    # migration on every database, not an ALTER TYPE.
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=_enum_values,
        validate_strings=True,
    )


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[Role] = mapped_column(_string_enum(Role, "user_role"), default=Role.USER)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class Account(db.Model):  # type: ignore[name-defined]
    """A broker account on an MT5 terminal. Credentials are encrypted at rest and never returned."""

    __tablename__ = "accounts"
    __table_args__ = (sa.UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    terminal_url: Mapped[str] = mapped_column(sa.String(255))
    login: Mapped[int] = mapped_column(sa.BigInteger)
    server: Mapped[str] = mapped_column(sa.String(100))
    credentials_encrypted: Mapped[bytes] = mapped_column(sa.LargeBinary)
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    owner: Mapped[User] = relationship()


class KeyCheck(db.Model):  # type: ignore[name-defined]
    """A value encrypted, or a fingerprint taken, with the deployment's keys (see shared.key_check): a
    process whose keys cannot read it refuses to start instead of running with the wrong keys."""

    __tablename__ = "key_checks"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)  # "encryption" | "jwt"
    token: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StrategyClient(db.Model):  # type: ignore[name-defined]
    """A program allowed to send signals for one account, authenticated by an HMAC secret."""

    __tablename__ = "strategy_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    secret_encrypted: Mapped[bytes] = mapped_column(sa.LargeBinary)
    revoked: Mapped[bool] = mapped_column(default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    account: Mapped[Account] = relationship()


class Signal(db.Model):  # type: ignore[name-defined]
    __tablename__ = "signals"
    __table_args__ = (
        # An idempotency key names one signal per client; a resent signal finds it here.
        sa.UniqueConstraint("client_id", "idempotency_key"),
        sa.Index("ix_signals_owner_status_created", "owner_id", "status", "created_at"),
        # The expiry sweep reads pending signals in expiry order.
        sa.Index("ix_signals_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    # No index of its own: the unique (client_id, idempotency_key) index serves lookups by client.
    client_id: Mapped[int] = mapped_column(sa.ForeignKey("strategy_clients.id"))
    instrument: Mapped[str] = mapped_column(sa.String(32))
    side: Mapped[Side] = mapped_column(_string_enum(Side, "signal_side"))
    volume: Mapped[Decimal] = mapped_column(Volume)
    price: Mapped[Decimal | None] = mapped_column(Price)
    sl: Mapped[Decimal | None] = mapped_column(Price)
    tp: Mapped[Decimal | None] = mapped_column(Price)
    comment: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[SignalStatus] = mapped_column(
        _string_enum(SignalStatus, "signal_status"), default=SignalStatus.PENDING
    )
    ttl_seconds: Mapped[int] = mapped_column(sa.Integer)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128))
    # The request signature is unique: a request replayed byte for byte is refused.
    signature: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # SHA-256 of the canonical body, to tell a retry from a different signal under the same key.
    body_sha256: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Approval(db.Model):  # type: ignore[name-defined]
    """The owner's decision on a signal; at most one per signal."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    signal_id: Mapped[int] = mapped_column(sa.ForeignKey("signals.id"), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    decision: Mapped[Decision] = mapped_column(_string_enum(Decision, "approval_decision"))
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    signal: Mapped[Signal] = relationship()


class AuditLog(db.Model):  # type: ignore[name-defined]
    """Append-only record of every state change: who did what to which row."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_target", "target_type", "target_id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    # user, client or system; actor_id is null for the system (beat sweeps, workers).
    actor_type: Mapped[str] = mapped_column(sa.String(16))
    actor_id: Mapped[int | None] = mapped_column(sa.Integer)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target_type: Mapped[str] = mapped_column(sa.String(32))
    target_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Trade(db.Model):  # type: ignore[name-defined]
    """What TradeGuard placed (or tried to place) for one approved signal: at most one per signal.

    The order carries TradeGuard's magic number and `comment` (unique, short enough for brokers that
    keep 16 characters), so a retried task finds an order it already sent instead of sending another.
    """

    __tablename__ = "trades"
    __table_args__ = (sa.Index("ix_trades_owner_created", "owner_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    signal_id: Mapped[int] = mapped_column(sa.ForeignKey("signals.id"), unique=True)
    approval_id: Mapped[int] = mapped_column(sa.ForeignKey("approvals.id"), unique=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    symbol: Mapped[str] = mapped_column(sa.String(32))
    side: Mapped[Side] = mapped_column(_string_enum(Side, "trade_side"))
    state: Mapped[TradeState] = mapped_column(
        _string_enum(TradeState, "trade_state"), default=TradeState.PENDING
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
    # Orders sent, plus attempts that failed with an error nobody classified (execution.count_failed_attempt):
    # what the execution task's attempt limit counts.
    attempts: Mapped[int] = mapped_column(default=0)
    retcode: Mapped[int | None] = mapped_column(sa.Integer)
    failure_reason: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    filled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set by reconciliation when the position is gone from the terminal (SL, TP, stop-out, by hand).
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(sa.String(16))
    close_price: Mapped[Decimal | None] = mapped_column(Price)
    pnl: Mapped[Decimal | None] = mapped_column(Money)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    signal: Mapped[Signal] = relationship()


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
    # The last sync's open positions with their attribution, for the positions API.
    positions: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)


class PositionSnapshot(db.Model):  # type: ignore[name-defined]
    """One account's figures at one sync: the time series behind charts and the drawdown guard."""

    __tablename__ = "position_snapshots"
    __table_args__ = (sa.Index("ix_position_snapshots_account_synced", "account_id", "synced_at"),)

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


class ReconciliationLog(db.Model):  # type: ignore[name-defined]
    """A reconciliation event: a position matched, a divergence, a trade closed outside TradeGuard, a
    position opened outside it. Recorded once; a divergence each time it changes, clearing included."""

    __tablename__ = "reconciliation_logs"
    __table_args__ = (
        # Matched, outside and closed events happen once per position; divergences recur as they change.
        sa.Index(
            "uq_reconciliation_logs_once",
            "account_id",
            "event_type",
            "position_ticket",
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
    fingerprint: Mapped[str] = mapped_column(sa.String(64), default="")
    symbol: Mapped[str] = mapped_column(sa.String(32))
    side: Mapped[str | None] = mapped_column(sa.String(4))
    volume: Mapped[Decimal | None] = mapped_column(Volume)
    price_open: Mapped[Decimal | None] = mapped_column(Price)
    sl: Mapped[Decimal | None] = mapped_column(Price)
    tp: Mapped[Decimal | None] = mapped_column(Price)
    opened_by: Mapped[str | None] = mapped_column(sa.String(16))
    close_reason: Mapped[str | None] = mapped_column(sa.String(16))
    close_price: Mapped[Decimal | None] = mapped_column(Price)
    pnl: Mapped[Decimal | None] = mapped_column(Money)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TaskDurationTotal(db.Model):  # type: ignore[name-defined]
    """How many times a Celery task ran to each outcome, and the seconds those runs took in all.

    Written by every worker with an atomic upsert (`shared.task_metrics.record`), read by /metrics."""

    __tablename__ = "task_duration_totals"

    task: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    outcome: Mapped[str] = mapped_column(sa.String(16), primary_key=True)  # success, failure, retry, ...
    count: Mapped[int] = mapped_column(sa.BigInteger)
    sum_seconds: Mapped[float] = mapped_column(sa.Float)


class TaskDurationBucket(db.Model):  # type: ignore[name-defined]
    """A task's duration histogram, cumulative as Prometheus shows it: `count` runs took at most `le`
    seconds ("0.05" ... "+Inf"). Written like `TaskDurationTotal`, in the same transaction."""

    __tablename__ = "task_duration_buckets"

    task: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    le: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger)
