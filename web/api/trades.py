from __future__ import annotations

from typing import Any

from shared.execution import queries
from shared.models import TradeState
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.schemas import TradePageSchema, TradeQuerySchema, TradeSchema

blp = Blueprint(
    "trades", __name__, url_prefix="/api/v1/trades", description="Orders placed for approved signals"
)


@blp.get("")
@login_required
@blp.arguments(TradeQuerySchema, location="query")
@blp.response(200, TradePageSchema)
@blp.errors(401, 503)
def list_trades(query: dict[str, Any]) -> Any:
    return queries.list_own_trades(
        db.session,
        current_user(),
        state=TradeState(query["state"]) if query["state"] else None,
        account_id=query["account_id"],
        page=query["page"],
        per_page=query["per_page"],
    )


@blp.get("/<id:trade_id>")
@login_required
@blp.response(200, TradeSchema)
@blp.errors(401, 404, 503)
def get_trade(trade_id: int) -> Any:
    return queries.get_own_trade(db.session, current_user(), trade_id)
