from __future__ import annotations

from typing import Any

from shared.execution import dispatch
from shared.models import Decision
from shared.signals import approvals
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_user, login_required
from web.extensions import db, task_queue
from web.schemas import ApprovalCreateSchema, ApprovalPageSchema, ApprovalSchema, PageQuerySchema

blp = Blueprint(
    "approvals", __name__, url_prefix="/api/v1/approvals", description="Approve or reject signals"
)


@blp.post("")
@login_required
@blp.arguments(ApprovalCreateSchema)
@blp.response(201, ApprovalSchema)
@blp.errors(
    *BODY_ERRORS,
    401,
    (404, "no such signal of yours"),
    (409, "the signal is already decided or expired"),
    503,
)
def create_approval(body: dict[str, Any]) -> Any:
    approval = approvals.decide(
        db.session,
        current_user(),
        signal_id=body["signal_id"],
        decision=Decision(body["decision"]),
        reason=body["reason"],
    )
    if approval.decision == Decision.APPROVE:
        dispatch.enqueue_execution_after_commit(db.session, task_queue(), approval.signal_id)
    db.session.commit()
    return approval


@blp.get("")
@login_required
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, ApprovalPageSchema)
@blp.errors(401, 503)
def list_approvals(query: dict[str, Any]) -> Any:
    return approvals.list_own_approvals(
        db.session, current_user(), page=query["page"], per_page=query["per_page"]
    )


@blp.get("/<id:approval_id>")
@login_required
@blp.response(200, ApprovalSchema)
@blp.errors(401, 404, 503)
def get_approval(approval_id: int) -> Any:
    return approvals.get_own_approval(db.session, current_user(), approval_id)
