"""Loading what performance analytics computes over (shared.insight.analytics): an owner's account, its
closed trades, its equity history across the snapshot tiers and the slippage reconciliation recorded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.identity.accounts import get_own_account
from shared.insight import analytics
from shared.insight.analytics import (
    ClosedTrade,
    EquityStats,
    Slippage,
    SlippageStats,
    SymbolStats,
    TradeStats,
)
from shared.insight.snapshots import series
from shared.models import GuardState, ReconciliationLog, Trade, TradeState, User


@dataclass(frozen=True)
class Report:
    """An account's analytics over [start, end) (either open), for `symbol` or every symbol. The equity
    figures are the whole account's: snapshots are not kept per symbol."""

    account_id: int
    currency: str | None
    start: datetime | None
    end: datetime | None
    symbol: str | None
    trades: TradeStats
    by_symbol: list[SymbolStats]
    equity: EquityStats
    slippage: SlippageStats


def own_report(
    session: DbSession,
    owner: User,
    account_id: int,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    symbol: str | None = None,
) -> Report:
    """The report of one of `owner`'s accounts (NotFound for anyone else's, as for one that does not
    exist)."""
    account = get_own_account(session, owner, account_id)
    trades = closed_trades(session, account.id, start, end, symbol)
    return Report(
        account_id=account.id,
        currency=_currency(session, account.id) or account.currency or None,
        start=start,
        end=end,
        symbol=symbol,
        trades=analytics.trade_stats(trades),
        by_symbol=analytics.by_symbol(trades),
        equity=analytics.equity_stats(series(session, account.id, start, end)),
        slippage=analytics.slippage_stats(slippages(session, account.id, start, end, symbol)),
    )


def _currency(session: DbSession, account_id: int) -> str | None:
    """The currency the terminal last reported to the guards, if they have read the account."""
    return session.scalar(sa.select(GuardState.currency).where(GuardState.account_id == account_id))


def closed_trades(
    session: DbSession, account_id: int, start: datetime | None, end: datetime | None, symbol: str | None
) -> list[ClosedTrade]:
    """The account's trades closed (with a P&L) in [start, end), oldest close first."""
    where = [
        Trade.account_id == account_id,
        Trade.state == TradeState.CLOSED,
        Trade.pnl.is_not(None),
        Trade.closed_at.is_not(None),
    ]
    if start is not None:
        where.append(Trade.closed_at >= start)
    if end is not None:
        where.append(Trade.closed_at < end)
    if symbol is not None:
        where.append(Trade.symbol == symbol)
    opened_at = sa.func.coalesce(Trade.filled_at, Trade.sent_at, Trade.created_at)
    rows = session.execute(
        sa.select(Trade.symbol, Trade.pnl, opened_at.label("opened_at"), Trade.closed_at)
        .where(*where)
        .order_by(Trade.closed_at, Trade.id)
    )
    return [ClosedTrade(row.symbol, row.pnl, row.opened_at, row.closed_at) for row in rows]


def slippages(
    session: DbSession, account_id: int, start: datetime | None, end: datetime | None, symbol: str | None
) -> Iterator[Slippage]:
    """The slippage of each divergence event recorded in [start, end), oldest first: signed pips,
    adverse positive (shared.reconciliation.sync writes `details.divergences`, each with kind, change
    and difference in unit, from shared.reconciliation.rules.divergences). Only slippage beyond the
    tolerance (TRADEGUARD_SLIPPAGE_PIPS) is ever recorded."""
    where = [ReconciliationLog.account_id == account_id, ReconciliationLog.event_type == "divergence"]
    if start is not None:
        where.append(ReconciliationLog.created_at >= start)
    if end is not None:
        where.append(ReconciliationLog.created_at < end)
    if symbol is not None:
        where.append(ReconciliationLog.symbol == symbol)
    rows = session.execute(
        sa.select(ReconciliationLog.position_key, ReconciliationLog.details)
        .where(*where)
        .order_by(ReconciliationLog.created_at, ReconciliationLog.id)
        .execution_options(yield_per=1000)
    )
    for key, details in rows:
        pips = _slippage_pips(details)
        if pips is not None:
            yield Slippage(key, pips)


def _slippage_pips(details: Any) -> Decimal | None:
    """The signed slippage an event's details record, or None (none, or not readable as one)."""
    found = details.get("divergences") if isinstance(details, dict) else None
    for divergence in found if isinstance(found, list) else ():
        if not isinstance(divergence, dict) or divergence.get("kind") != "slippage":
            continue
        if divergence.get("unit") != analytics.SLIPPAGE_UNIT or divergence.get("change") not in (
            "adverse",
            "favourable",
        ):
            return None
        try:
            pips = abs(Decimal(str(divergence.get("difference"))))
        except InvalidOperation:
            return None
        if not pips.is_finite():
            return None
        return pips if divergence["change"] == "adverse" else -pips
    return None
