"""Reading an owner's trades."""

from __future__ import annotations

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.core.ownership import get_owned
from shared.core.pagination import Page, paginate
from shared.models import Trade, TradeState, User


def get_own_trade(session: DbSession, owner: User, trade_id: int) -> Trade:
    return get_owned(session, Trade, trade_id, owner.id, name="trade")


def list_own_trades(
    session: DbSession,
    owner: User,
    *,
    state: TradeState | None,
    account_id: int | None,
    page: int,
    per_page: int,
) -> Page[Trade]:
    where = [Trade.owner_id == owner.id]
    if state is not None:
        where.append(Trade.state == state)
    if account_id is not None:
        where.append(Trade.account_id == account_id)
    statement = sa.select(Trade).where(*where).order_by(Trade.id.desc())
    return paginate(session, statement, page=page, per_page=per_page)
