"""What the owner's Accounts page shows of each account: where its guards stand (shared.guards.queries,
as `GET /guards` answers), where its sync stands (shared.reconciliation.queries, as
`GET /accounts/{id}/status` answers), each drawdown limit as a bar, and what a live alert will close.

Here rather than in shared.guards: it reads across two features, which only insight may do. No query of
its own: it composes the features' queries, and decides the rest in pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.core.db import DbSession
from shared.guards.queries import AccountGuards, AlertDetail, LimitStanding, decimal_or_none, own_guards
from shared.identity.accounts import list_own_accounts
from shared.models import Account, User
from shared.reconciliation.breaker import breaker_is_open
from shared.reconciliation.queries import SyncState, sync_state

HUNDRED = Decimal(100)


@dataclass(frozen=True)
class LimitBar:
    """A drawdown limit as a bar: how far its drawdown has gone towards its maximum."""

    limit: LimitStanding
    fraction: Decimal | None  # drawdown / maximum (the larger of percent and amount); None: not read yet
    width_percent: Decimal  # the bar's width, 0 to 100
    css: str  # "bar", "bar warn" (at or past warn_percent) or "bar breach" (at or past the maximum)


@dataclass(frozen=True)
class ClosingPosition:
    """A position a live alert closes: one it recorded (with its close's state), or, before it records
    them at the close, one of the last sync's open positions it will take."""

    ticket: int | None
    symbol: str
    side: str
    volume: Decimal | None
    profit: Decimal | None
    state: str | None  # the close's: pending, sent, closed, gone, failed; None: not recorded yet


@dataclass(frozen=True)
class AccountOverview:
    account: Account
    guards: AccountGuards
    sync: SyncState
    breaker_open: bool
    lag_seconds: float | None  # since the last successful sync; None: never synced
    bars: list[LimitBar]
    to_close: list[ClosingPosition]  # what the live alert closes (empty without one)
    to_close_recorded: bool  # the alert's own closes (True) or the last sync's positions it will take

    @property
    def alert(self) -> AlertDetail | None:
        return self.guards.active_alert


def limit_bar(limit: LimitStanding) -> LimitBar:
    """The bar of one limit: its width the drawdown over the maximum (percent, or amount when that is the
    nearer one), `warn` from warn_percent on, `breach` from the maximum on."""
    fractions = []
    if limit.drawdown_percent is not None and limit.max_percent:
        fractions.append(limit.drawdown_percent / limit.max_percent)
    if limit.drawdown_amount is not None and limit.max_amount:
        fractions.append(limit.drawdown_amount / limit.max_amount)
    fraction = max(fractions) if fractions else None
    width = min(HUNDRED, max(Decimal(0), (fraction or Decimal(0)) * HUNDRED)).quantize(Decimal("0.1"))
    if fraction is not None and fraction >= 1:
        css = "bar breach"
    elif (
        limit.warn_percent is not None
        and limit.drawdown_percent is not None
        and limit.drawdown_percent >= limit.warn_percent
    ):
        css = "bar warn"
    else:
        css = "bar"
    return LimitBar(limit=limit, fraction=fraction, width_percent=width, css=css)


def positions_it_will_close(
    alert: AlertDetail, positions: Iterable[Mapping[str, Any]]
) -> tuple[list[ClosingPosition], bool]:
    """What a live alert closes: its recorded closes once it has them (closing), else the last sync's
    positions it will take, the largest loser first (as shared.guards.rules.positions_to_close orders
    them): that symbol's for a market alert, every one otherwise (a margin alert stops once the margin
    level is back at its minimum, which only the reading at the close tells)."""
    if alert.closes:
        return [
            ClosingPosition(
                ticket=close.position_ticket,
                symbol=close.symbol,
                side=close.side,
                volume=close.volume,
                profit=close.pnl,
                state=close.state,
            )
            for close in alert.closes
        ], True
    chosen = [
        ClosingPosition(
            ticket=row.get("ticket"),
            symbol=str(row.get("symbol") or ""),
            side=str(row.get("side") or ""),
            volume=decimal_or_none(row.get("volume")),
            profit=decimal_or_none(row.get("profit")),
            state=None,
        )
        for row in positions
        if alert.alert_type != "market" or row.get("symbol") == alert.symbol
    ]
    chosen.sort(key=lambda p: (p.profit if p.profit is not None else Decimal(0), p.ticket or 0))
    return chosen, False


def overview(account: Account, guards: AccountGuards, sync: SyncState, now: datetime) -> AccountOverview:
    row = sync.sync
    alert = guards.active_alert
    positions: Sequence[Mapping[str, Any]] = (row.positions or []) if row is not None else []
    to_close, recorded = positions_it_will_close(alert, positions) if alert is not None else ([], False)
    return AccountOverview(
        account=account,
        guards=guards,
        sync=sync,
        breaker_open=breaker_is_open(row.breaker_open_until if row else None, now),
        lag_seconds=(now - row.last_synced_at).total_seconds() if row and row.last_synced_at else None,
        bars=[limit_bar(limit) for limit in guards.limits],
        to_close=to_close,
        to_close_recorded=recorded,
    )


def account_overviews(session: DbSession, owner: User, now: datetime) -> list[AccountOverview]:
    """Every account of `owner`, by id, as the Accounts page shows it."""
    accounts = {account.id: account for account in list_own_accounts(session, owner)}
    return [
        overview(accounts[guards.account_id], guards, sync_state(session, guards.account_id), now)
        for guards in own_guards(session, owner)
        if guards.account_id in accounts
    ]
