"""Webhooks an owner registers, and every delivery of an event to one (kept after the webhook is deleted,
so its history stays readable)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from shared.core.db import JSONType, UTCDateTime, db, utcnow
from shared.models.enums import string_enum


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # not delivered yet; next_attempt_at says when it is tried (again)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt failed, or its webhook was deleted


class Webhook(db.Model):  # type: ignore[name-defined]
    """A URL that receives the owner's events as signed JSON POSTs. Deleted softly (`deleted_at`): a
    deleted webhook gets no new deliveries and its pending ones stop, but they stay on record."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    # The event names it receives; null: every event, including ones added later.
    events: Mapped[list[str] | None] = mapped_column(JSONType)
    # The signing secret, encrypted like a strategy client's (shared.core.crypto); shown once.
    secret_encrypted: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def receives(self, event: str) -> bool:
        # Deleted webhooks are not asked: notify selects the active ones only.
        return self.events is None or event in self.events


class WebhookDelivery(db.Model):  # type: ignore[name-defined]
    """One event sent (or to be sent) to one webhook, with its attempts. `delivery_id` is the id the
    receiver sees (payload `id`, X-TradeGuard-Delivery), the same on every attempt, for de-duplication."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
        # The sweep's look-up (shared.notifications.webhooks.deliveries_due): pending rows by when due.
        sa.Index(
            "ix_webhook_deliveries_pending_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    webhook_id: Mapped[int] = mapped_column(sa.ForeignKey("webhooks.id"))
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    delivery_id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    event: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[DeliveryStatus] = mapped_column(
        string_enum(DeliveryStatus, "webhook_delivery_status"), default=DeliveryStatus.PENDING
    )
    status_code: Mapped[int | None] = mapped_column(sa.Integer)  # the receiver's last answer, if any
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    # When a pending delivery is due; while an attempt is under way, when that attempt's claim lapses.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
