"""What owners see of reconciliation: live positions, events, and each account's sync status."""

from __future__ import annotations

from typing import Any

from shared.core.db import utcnow
from shared.identity.accounts import get_own_account
from shared.reconciliation import queries
from shared.reconciliation.breaker import breaker_is_open
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.schemas import (
    AccountStatusSchema,
    PositionViewSchema,
    ReconciliationPageSchema,
    ReconciliationQuerySchema,
)

blp = Blueprint("monitoring", __name__, url_prefix="/api/v1", description="Positions, reconciliation, status")


@blp.get("/positions")
@login_required
@blp.response(200, PositionViewSchema(many=True))
@blp.errors(401, 503)
def all_positions() -> Any:
    """Open positions of every own account, as of each account's last sync."""
    return queries.own_positions(db.session, current_user())


@blp.get("/accounts/<id:account_id>/positions")
@login_required
@blp.response(200, PositionViewSchema(many=True))
@blp.errors(401, 404, 503)
def account_positions(account_id: int) -> Any:
    account = get_own_account(db.session, current_user(), account_id)
    return queries.account_positions(db.session, account.id)


@blp.get("/reconciliation/<id:account_id>")
@login_required
@blp.arguments(ReconciliationQuerySchema, location="query")
@blp.response(200, ReconciliationPageSchema)
@blp.errors(401, 404, 503)
def reconciliation_events(query: dict[str, Any], account_id: int) -> Any:
    account = get_own_account(db.session, current_user(), account_id)
    return queries.list_events(
        db.session,
        account.id,
        event_type=query["event_type"],
        trade_id=query["trade_id"],
        since=query["since"],
        page=query["page"],
        per_page=query["per_page"],
    )


@blp.get("/accounts/<id:account_id>/status")
@login_required
@blp.response(200, AccountStatusSchema)
@blp.errors(401, 404, 503)
def account_status(account_id: int) -> Any:
    account = get_own_account(db.session, current_user(), account_id)
    state = queries.sync_state(db.session, account.id)
    sync, latest = state.sync, state.latest_snapshot
    now = utcnow()
    open_until = sync.breaker_open_until if sync else None
    breaker_open = breaker_is_open(open_until, now)
    return {
        "account_id": account.id,
        "currency": latest.currency if latest else account.currency,
        "last_synced_at": sync.last_synced_at if sync else None,
        "sync_lag_seconds": (now - sync.last_synced_at).total_seconds()
        if sync and sync.last_synced_at
        else None,
        "last_sync_ms": sync.last_sync_ms if sync else None,
        "last_error": sync.last_error if sync else None,
        "breaker": "open" if breaker_open else "closed",
        "breaker_open_until": open_until if breaker_open else None,
        "consecutive_failures": sync.consecutive_failures if sync else 0,
        "equity": latest.equity if latest else None,
        "balance": latest.balance if latest else None,
        "peak_equity": latest.peak_equity if latest else None,
        "drawdown_percent": latest.drawdown_percent if latest else None,
        "margin_level": latest.margin_level if latest else None,
        "open_positions": latest.open_positions if latest else None,
        "vanished_trades": state.vanished_trades,
    }
