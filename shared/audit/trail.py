"""The audit log: every create, decision and state change writes one row, in the same transaction."""

from __future__ import annotations

from typing import Any

from shared.core.db import DbSession
from shared.models import AuditLog

SYSTEM = "system"
USER = "user"
CLIENT = "client"


def record(
    session: DbSession,
    *,
    actor_type: str,
    actor_id: int | None,
    action: str,
    target_type: str,
    target_id: int | None,
    meta: dict[str, Any] | None = None,
) -> AuditLog:
    entry = AuditLog(
        actor_type=actor_type,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        meta=meta or {},
    )
    session.add(entry)
    return entry
