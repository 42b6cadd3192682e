"""What owners see of reconciliation: live positions, events, and each account's sync status."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.core.db import utcnow
from shared.identity.accounts import get_own_account
from shared.models import Account, AccountSync, PositionSnapshot, ReconciliationLog
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


def _positions(*where: Any) -> list[dict[str, Any]]:
    """Open positions as of each account's last sync, for the accounts `where` selects (one query)."""
    syncs = db.session.scalars(
        sa.select(AccountSync)
        .join(Account, Account.id == AccountSync.account_id)
        .where(*where)
        .order_by(Account.id)
    )
    return [
        {**row, "account_id": sync.account_id, "synced_at": sync.last_synced_at}
        for sync in syncs
        for row in sync.positions
    ]


@blp.get("/positions")
@login_required
@blp.response(200, PositionViewSchema(many=True))
@blp.errors(401, 503)
def all_positions() -> Any:
    """Open positions of every own account, as of each account's last sync."""
    return _positions(Account.owner_id == current_user().id)


@blp.get("/accounts/<id:account_id>/positions")
@login_required
@blp.response(200, PositionViewSchema(many=True))
@blp.errors(401, 404, 503)
def account_positions(account_id: int) -> Any:
    account = get_own_account(db.session, current_user(), account_id)
    return _positions(Account.id == account.id)


@blp.get("/reconciliation/<id:account_id>")
@login_required
@blp.arguments(ReconciliationQuerySchema, location="query")
@blp.response(200, ReconciliationPageSchema)
@blp.errors(401, 404, 503)
def reconciliation_events(query: dict[str, Any], account_id: int) -> Any:
    account = get_own_account(db.session, current_user(), account_id)
    where = [ReconciliationLog.account_id == account.id]
    if query["event_type"]:
        where.append(ReconciliationLog.event_type == query["event_type"])
    if query["trade_id"]:
        where.append(ReconciliationLog.trade_id == query["trade_id"])
    if query["since"]:
        where.append(ReconciliationLog.created_at >= query["since"])
    total = db.session.scalar(sa.select(sa.func.count()).select_from(ReconciliationLog).where(*where))
    items = db.session.scalars(
        sa.select(ReconciliationLog)
        .where(*where)
        .order_by(ReconciliationLog.id.desc())
        .limit(query["per_page"])
        .offset((query["page"] - 1) * query["per_page"])
    )
    return {"items": list(items), "total": total, "page": query["page"], "per_page": query["per_page"]}


@blp.get("/accounts/<id:account_id>/status")
@login_required
@blp.response(200, AccountStatusSchema)
@blp.errors(401, 404, 503)
def account_status(account_id: int) -> Any:
    account = get_own_account(db.session, current_user(), account_id)
    sync = db.session.get(AccountSync, account.id)
    latest = db.session.scalar(
        sa.select(PositionSnapshot)
        .where(PositionSnapshot.account_id == account.id)
        .order_by(PositionSnapshot.synced_at.desc(), PositionSnapshot.id.desc())
        .limit(1)
    )
    now = utcnow()
    open_until = sync.breaker_open_until if sync else None
    return {
        "account_id": account.id,
        "currency": latest.currency if latest else account.currency,
        "last_synced_at": sync.last_synced_at if sync else None,
        "sync_lag_seconds": (now - sync.last_synced_at).total_seconds()
        if sync and sync.last_synced_at
        else None,
        "last_sync_ms": sync.last_sync_ms if sync else None,
        "last_error": sync.last_error if sync else None,
        "breaker": "open" if open_until and open_until > now else "closed",
        "breaker_open_until": open_until if open_until and open_until > now else None,
        "consecutive_failures": sync.consecutive_failures if sync else 0,
        "equity": latest.equity if latest else None,
        "balance": latest.balance if latest else None,
        "peak_equity": latest.peak_equity if latest else None,
        "drawdown_percent": latest.drawdown_percent if latest else None,
        "margin_level": latest.margin_level if latest else None,
        "open_positions": latest.open_positions if latest else None,
    }
