from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.models import AuditLog
from web.api import Blueprint
from web.auth import admin_required
from web.extensions import db
from web.schemas import AuditPageSchema, AuditQuerySchema

blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit", description="The audit log (administrators)")


@blp.get("")
@admin_required
@blp.arguments(AuditQuerySchema, location="query")
@blp.response(200, AuditPageSchema)
@blp.errors(401, 403, 503)
def list_audit(query: dict[str, Any]) -> Any:
    where = [
        column == query[name]
        for name, column in (
            ("action", AuditLog.action),
            ("target_type", AuditLog.target_type),
            ("target_id", AuditLog.target_id),
        )
        if query[name] is not None
    ]
    total = db.session.scalar(sa.select(sa.func.count()).select_from(AuditLog).where(*where))
    items = db.session.scalars(
        sa.select(AuditLog)
        .where(*where)
        .order_by(AuditLog.id.desc())
        .limit(query["per_page"])
        .offset((query["page"] - 1) * query["per_page"])
    )
    return {"items": list(items), "total": total, "page": query["page"], "per_page": query["per_page"]}
