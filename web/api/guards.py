"""What owners see of the guards: each account's standing, and the alerts the guards raised."""

from __future__ import annotations

from typing import Any

from shared.guards import queries
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.schemas import AccountGuardsSchema, AlertDetailSchema, AlertPageSchema, AlertQuerySchema

blp = Blueprint("guards", __name__, url_prefix="/api/v1", description="Risk guards and their alerts")


@blp.get("/guards")
@login_required
@blp.response(200, AccountGuardsSchema(many=True))
@blp.errors(401, 503)
def all_guards() -> Any:
    """Where the guards of every own account stand

    Each account's state (`ok`, `warning`, `alert` or `halted`), each drawdown limit's current drawdown
    and what it is measured from, the margin level, the symbols the market guard blocks and why, and the
    live alert with when it closes. An account the guards have not read yet is `ok`, its figures null.
    """
    return queries.own_guards(db.session, current_user())


@blp.get("/alerts")
@login_required
@blp.arguments(AlertQuerySchema, location="query")
@blp.response(200, AlertPageSchema)
@blp.errors(401, 503)
def list_alerts(query: dict[str, Any]) -> Any:
    """Alerts the guards raised on own accounts, newest first"""
    return queries.list_own_alerts(
        db.session,
        current_user(),
        account_id=query["account_id"],
        status=query["status"],
        since=query["since"],
        page=query["page"],
        per_page=query["per_page"],
    )


@blp.get("/alerts/<id:alert_id>")
@login_required
@blp.response(200, AlertDetailSchema)
@blp.errors(401, 404, 503)
def get_alert(alert_id: int) -> Any:
    """An alert, with each position it closes"""
    return queries.get_own_alert(db.session, current_user(), alert_id)
