"""What owners see of the guards: where each account's guards stand (`GET /guards`), and the alerts they
raised with the positions each closed (`GET /alerts`).

Read only: the guard tasks write `guard_states`, `drawdown_alerts` and `alert_closes`. An account they
never read has no `guard_states` row yet: it shows as `ok`, its figures null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from shared.core.db import DbSession
from shared.core.ownership import get_owned
from shared.core.pagination import Page, paginate
from shared.guards.rules import market_warnings
from shared.guards.settings import RiskSettings
from shared.models import (
    LIVE_ALERT_STATUSES,
    Account,
    AccountRisk,
    AlertClose,
    DrawdownAlert,
    GuardState,
    User,
)


def decimal_or_none(value: Any) -> Decimal | None:
    # The guard tasks store figures as decimal strings in JSON; one it cannot read shows as unknown (null)
    # rather than failing the owner's whole page.
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class LimitStanding:
    """One drawdown limit of the account's settings, and where it stands at the last reading."""

    name: str
    period: str
    reference: str  # what the drawdown is measured from: peak_equity, period_start_balance, ...
    warn_percent: Decimal | None
    max_percent: Decimal | None
    max_amount: Decimal | None
    action: str
    resume: str
    reference_value: Decimal | None
    period_start: datetime | None
    drawdown_percent: Decimal | None
    drawdown_amount: Decimal | None
    level: str  # ok | warning | breach


@dataclass(frozen=True)
class BlockedSymbol:
    symbol: str
    reason: str | None
    kind: str | None  # spread | gap | stale
    since: datetime | None


@dataclass(frozen=True)
class AlertDetail:
    """An alert with the positions it closes (or closed); its other attributes are the alert's."""

    alert: DrawdownAlert
    closes: list[AlertClose]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.alert, name)


@dataclass(frozen=True)
class AccountGuards:
    account_id: int
    account_name: str
    state: str  # ok | warning | alert | halted
    currency: str
    equity: Decimal | None
    balance: Decimal | None
    margin_level: Decimal | None
    min_margin_level_percent: Decimal | None
    read_at: datetime | None
    halted_at: datetime | None
    halted_reason: str | None
    halted_limit: str | None
    halted_resume: str | None
    limits: list[LimitStanding]
    blocked_symbols: list[BlockedSymbol]
    # Symbols whose market problem the guard confirmed and, its action being `warn`, only told.
    market_warnings: list[BlockedSymbol]
    active_alert: AlertDetail | None


def _limits(settings: RiskSettings, stored: Mapping[str, Any]) -> list[LimitStanding]:
    """Each limit of the current settings, with what the guard stored of it (nothing yet: figures null,
    level ok). A limit removed from the settings is not shown, whatever the guard still keeps of it."""
    standings = []
    for limit in settings.drawdown_limits:
        figures = stored.get(limit.name)
        if not isinstance(figures, Mapping):
            figures = {}
        standings.append(
            LimitStanding(
                name=limit.name,
                period=limit.period,
                reference=limit.reference,
                warn_percent=limit.warn_percent,
                max_percent=limit.max_percent,
                max_amount=limit.max_amount,
                action=limit.action,
                resume=limit.resume,
                reference_value=decimal_or_none(figures.get("reference")),
                period_start=_when(figures.get("period_start")),
                drawdown_percent=decimal_or_none(figures.get("drawdown_percent")),
                drawdown_amount=decimal_or_none(figures.get("drawdown_amount")),
                level=str(figures.get("level") or "ok"),
            )
        )
    return standings


def _blocked(stored: Mapping[str, Any]) -> list[BlockedSymbol]:
    blocked = []
    for symbol, block in sorted(stored.items()):
        block = block if isinstance(block, Mapping) else {}
        blocked.append(
            BlockedSymbol(
                symbol=symbol,
                reason=block.get("reason"),
                kind=block.get("kind"),
                since=_when(block.get("since")),
            )
        )
    return blocked


def _market_warnings(stored: Mapping[str, Any]) -> list[BlockedSymbol]:
    return [
        BlockedSymbol(
            symbol=symbol, reason=entry.get("reason"), kind=entry.get("kind"), since=_when(entry.get("since"))
        )
        for symbol, entry in sorted(market_warnings(stored).items())
    ]


def _closes_of(session: DbSession, alert_ids: list[int]) -> dict[int, list[AlertClose]]:
    closes: dict[int, list[AlertClose]] = {alert_id: [] for alert_id in alert_ids}
    if alert_ids:
        rows = session.scalars(
            sa.select(AlertClose).where(AlertClose.alert_id.in_(alert_ids)).order_by(AlertClose.id)
        )
        for close in rows:
            closes[close.alert_id].append(close)
    return closes


def own_guards(session: DbSession, owner: User) -> list[AccountGuards]:
    """Every account of `owner`, by id, with where its guards stand. At most three statements, however many
    accounts."""
    rows = session.execute(
        sa.select(Account, AccountRisk.settings, GuardState)
        .outerjoin(AccountRisk, AccountRisk.account_id == Account.id)
        .outerjoin(GuardState, GuardState.account_id == Account.id)
        .where(Account.owner_id == owner.id)
        .order_by(Account.id)
    ).all()
    account_ids = [account.id for account, _, _ in rows]
    # One live alert per account at most (uq_drawdown_alerts_live).
    live_alerts = session.scalars(
        sa.select(DrawdownAlert).where(
            DrawdownAlert.account_id.in_(account_ids), DrawdownAlert.status.in_(LIVE_ALERT_STATUSES)
        )
    )
    live = {alert.account_id: alert for alert in live_alerts}
    closes = _closes_of(session, [alert.id for alert in live.values()])
    shown = []
    for account, document, state in rows:
        settings = RiskSettings.from_document(document)
        alert = live.get(account.id)
        shown.append(
            AccountGuards(
                account_id=account.id,
                account_name=account.name,
                state=state.state if state is not None else "ok",
                currency=(state.currency if state is not None and state.currency else account.currency),
                equity=state.equity if state else None,
                balance=state.balance if state else None,
                margin_level=state.margin_level if state else None,
                min_margin_level_percent=settings.min_margin_level_percent,
                read_at=state.read_at if state else None,
                halted_at=state.halted_at if state else None,
                halted_reason=state.halted_reason if state else None,
                halted_limit=state.halted_limit if state else None,
                halted_resume=state.halted_resume if state else None,
                limits=_limits(settings, state.limits if state and state.limits else {}),
                blocked_symbols=_blocked(state.blocked_symbols if state and state.blocked_symbols else {}),
                market_warnings=_market_warnings(state.limits if state and state.limits else {}),
                active_alert=AlertDetail(alert, closes[alert.id]) if alert is not None else None,
            )
        )
    return shown


def list_own_alerts(
    session: DbSession,
    owner: User,
    *,
    account_id: int | None,
    status: str | None,
    since: datetime | None,
    page: int,
    per_page: int,
) -> Page[DrawdownAlert]:
    """`owner`'s alerts, newest first; only one account's, of one status, or raised at or after `since`
    when asked."""
    where = [DrawdownAlert.owner_id == owner.id]
    if account_id is not None:
        where.append(DrawdownAlert.account_id == account_id)
    if status is not None:
        where.append(DrawdownAlert.status == status)
    if since is not None:
        where.append(DrawdownAlert.created_at >= since)
    statement = (
        sa.select(DrawdownAlert)
        .where(*where)
        .order_by(DrawdownAlert.created_at.desc(), DrawdownAlert.id.desc())
    )
    return paginate(session, statement, page=page, per_page=per_page)


def get_own_alert(session: DbSession, owner: User, alert_id: int) -> AlertDetail:
    """`owner`'s alert `alert_id` with each position it closes; NotFound for anyone else's."""
    alert = get_owned(session, DrawdownAlert, alert_id, owner.id, name="alert")
    return AlertDetail(alert, _closes_of(session, [alert.id])[alert.id])
