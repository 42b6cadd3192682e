"""Signals and the owner's decisions on them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.core.db import Price, UTCDateTime, Volume, db, utcnow
from shared.models.enums import Decision, Side, SignalStatus, string_enum


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
    side: Mapped[Side] = mapped_column(string_enum(Side, "signal_side"))
    volume: Mapped[Decimal] = mapped_column(Volume)
    price: Mapped[Decimal | None] = mapped_column(Price)
    sl: Mapped[Decimal | None] = mapped_column(Price)
    tp: Mapped[Decimal | None] = mapped_column(Price)
    comment: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[SignalStatus] = mapped_column(
        string_enum(SignalStatus, "signal_status"), default=SignalStatus.PENDING
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

    # Who may read it (shared.core.ownership): the user who decided.
    owner_column: ClassVar[str] = "user_id"

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    signal_id: Mapped[int] = mapped_column(sa.ForeignKey("signals.id"), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    decision: Mapped[Decision] = mapped_column(string_enum(Decision, "approval_decision"))
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    signal: Mapped[Signal] = relationship()
