"""Reading what reconciliation recorded, as owners see it: live positions, events, each account's sync."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.core.pagination import Page, paginate
from shared.models import Account, AccountSync, PositionSnapshot, ReconciliationLog, Trade, TradeState, User


def _positions(session: DbSession, *where: Any) -> list[dict[str, Any]]:
    """Open positions as of each account's last sync, for the accounts `where` selects (one query)."""
    syncs = session.scalars(
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


def own_positions(session: DbSession, owner: User) -> list[dict[str, Any]]:
    """Open positions of every account of `owner`."""
    return _positions(session, Account.owner_id == owner.id)


def account_positions(session: DbSession, account_id: int) -> list[dict[str, Any]]:
    return _positions(session, Account.id == account_id)


def list_events(
    session: DbSession,
    account_id: int,
    *,
    event_type: str | None,
    trade_id: int | None,
    since: datetime | None,
    page: int,
    per_page: int,
) -> Page[ReconciliationLog]:
    """One account's reconciliation events, newest first."""
    where = [ReconciliationLog.account_id == account_id]
    if event_type is not None:
        where.append(ReconciliationLog.event_type == event_type)
    if trade_id is not None:
        where.append(ReconciliationLog.trade_id == trade_id)
    if since is not None:
        where.append(ReconciliationLog.created_at >= since)
    statement = sa.select(ReconciliationLog).where(*where).order_by(ReconciliationLog.id.desc())
    return paginate(session, statement, page=page, per_page=per_page)


@dataclass(frozen=True)
class SyncState:
    """Where one account's reconciliation stands."""

    sync: AccountSync | None  # None until its first sync was attempted
    latest_snapshot: PositionSnapshot | None  # its figures at the last successful sync; None before one
    vanished_trades: int  # open trades whose position vanished from the terminal


def sync_state(session: DbSession, account_id: int) -> SyncState:
    sync = session.get(AccountSync, account_id)
    latest_snapshot = session.scalar(
        sa.select(PositionSnapshot)
        .where(PositionSnapshot.account_id == account_id)
        .order_by(PositionSnapshot.synced_at.desc(), PositionSnapshot.id.desc())
        .limit(1)
    )
    vanished_trades = session.scalar(
        sa.select(sa.func.count())
        .select_from(Trade)
        .where(
            Trade.account_id == account_id,
            Trade.vanished_at.is_not(None),
            Trade.state.in_((TradeState.FILLED, TradeState.PARTIAL)),
        )
    )
    return SyncState(sync=sync, latest_snapshot=latest_snapshot, vanished_trades=vanished_trades or 0)
