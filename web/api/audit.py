from __future__ import annotations

from typing import Any

from shared.audit import queries
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
    return queries.list_entries(
        db.session,
        action=query["action"],
        target_type=query["target_type"],
        target_id=query["target_id"],
        page=query["page"],
        per_page=query["per_page"],
    )
