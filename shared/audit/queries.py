"""Reading the audit log (administrators)."""

from __future__ import annotations

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.core.pagination import Page, paginate
from shared.models import AuditLog


def list_entries(
    session: DbSession,
    *,
    action: str | None,
    target_type: str | None,
    target_id: int | None,
    page: int,
    per_page: int,
) -> Page[AuditLog]:
    """The log, newest first; each filter given (not None) must match exactly."""
    where = [
        column == value
        for value, column in (
            (action, AuditLog.action),
            (target_type, AuditLog.target_type),
            (target_id, AuditLog.target_id),
        )
        if value is not None
    ]
    statement = sa.select(AuditLog).where(*where).order_by(AuditLog.id.desc())
    return paginate(session, statement, page=page, per_page=per_page)
