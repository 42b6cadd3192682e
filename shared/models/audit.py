"""The audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from shared.core.db import JSONType, UTCDateTime, db, utcnow


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
