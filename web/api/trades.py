from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from shared.execution import queries
from shared.insight import timeline, timeline_queries
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


# --- the timeline ---------------------------------------------------------------------------------------


class TimelineEntrySchema(ma.Schema):
    at = fields.DateTime(metadata={"description": "when, in UTC"})
    broker_time = fields.String(
        metadata={
            "description": "the same instant on the trade server's clock: UTC shifted by the server's offset "
            "(the timeline's broker_offset_seconds), in ISO-8601 without an offset, as MT5 shows times; "
            "the UTC time itself while the offset is not known"
        }
    )
    kind = fields.String(
        validate=validate.OneOf(timeline.KINDS),
        metadata={
            "description": "what happened, one of a fixed list of names: signal.received (the client "
            "that sent it), signal.approved (by whom), trade.created, risk.checked (the pre-trade and "
            "risk checks passed before an order) or risk.refused (the problems), order.sent (attempt, "
            "price asked), order.requoted / order.rejected (retcode), order.lost, order.attempt_failed, "
            "order.filled (volume, price, retcode), trade.failed, reconciliation.matched, "
            "reconciliation.divergence (each figure: expected, actual, difference, unit; or cleared), "
            "reconciliation.vanished / reappeared / closed, guard.warning (a drawdown limit of the "
            "account warned while the trade was open), alert.raised / cancelled / closing / executed / "
            "failed (the guard alerts that touched the trade), close.sent / requoted / not_found / "
            "failed / gone (the alert's closing order), trade.closed (why, price, P&L)"
        },
    )
    details = fields.Dict(
        keys=fields.String(),
        metadata={"description": "the entry's figures, by kind; decimals as strings, times in ISO-8601"},
    )


class TimelineSchema(ma.Schema):
    trade_id = fields.Integer()
    account_id = fields.Integer()
    broker_offset_seconds = fields.Integer(
        metadata={
            "description": "the trade server's clock minus UTC, as the guards last learnt it (0 while "
            "unknown): what broker_time is shifted by"
        }
    )
    entries = fields.List(
        fields.Nested(TimelineEntrySchema),
        metadata={
            "description": "oldest first; entries at the same instant in the order of a trade's life "
            "(the signal before its approval before the order)"
        },
    )


@blp.get("/<id:trade_id>/timeline")
@login_required
@blp.response(200, TimelineSchema)
@blp.errors(401, 404, 503)
def get_trade_timeline(trade_id: int) -> Any:
    """Everything that happened to a trade, in order

    The signal and the client that sent it, its approval and by whom, each pre-trade and risk check,
    each order sent and what the broker answered, the fill, what reconciliation found (the position
    matched, each divergence with its figures), the guards' warnings and alerts that touched it, and
    the close (why, at what price, the P&L). Other users' trades are not found.
    """
    trade, offset, entries = timeline_queries.own_trade_timeline(db.session, current_user(), trade_id)
    return {
        "trade_id": trade.id,
        "account_id": trade.account_id,
        "broker_offset_seconds": offset,
        "entries": entries,
    }
