from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.core.errors import NotFound
from shared.models import Trade, TradeState
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
    where = [Trade.owner_id == current_user().id]
    if query["state"]:
        where.append(Trade.state == TradeState(query["state"]))
    if query["account_id"]:
        where.append(Trade.account_id == query["account_id"])
    total = db.session.scalar(sa.select(sa.func.count()).select_from(Trade).where(*where))
    items = db.session.scalars(
        sa.select(Trade)
        .where(*where)
        .order_by(Trade.id.desc())
        .limit(query["per_page"])
        .offset((query["page"] - 1) * query["per_page"])
    )
    return {"items": list(items), "total": total, "page": query["page"], "per_page": query["per_page"]}


@blp.get("/<id:trade_id>")
@login_required
@blp.response(200, TradeSchema)
@blp.errors(401, 404, 503)
def get_trade(trade_id: int) -> Any:
    trade = db.session.get(Trade, trade_id)
    if trade is None or trade.owner_id != current_user().id:
        raise NotFound(f"trade {trade_id} not found")
    return trade
