"""Reading and saving an account's risk settings (the document `shared.guards.settings` validates), and
the one read the execution path makes of the guards before an order goes out.

Guard-side code: it must never import `shared.execution`, which imports it (sibling packages of
`shared` stay acyclic).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared.audit import trail
from shared.core.db import DbSession, utcnow
from shared.core.ownership import get_owned
from shared.guards.settings import OrderLimits, RiskSettings, default_settings, validate_settings
from shared.models import LIVE_ALERT_STATUSES, Account, AccountRisk, DrawdownAlert, GuardState, User

RISK_UPDATED = "account.risk_updated"


def document_of(session: DbSession, account_id: int) -> dict[str, Any]:
    """The account's risk settings document as stored, or the defaults when its owner never saved one."""
    stored = session.scalar(sa.select(AccountRisk.settings).where(AccountRisk.account_id == account_id))
    return dict(stored) if stored is not None else default_settings()


def risk_settings_of(session: DbSession, account_id: int) -> RiskSettings:
    """The account's risk settings, typed (the defaults when none were saved)."""
    stored = session.scalar(sa.select(AccountRisk.settings).where(AccountRisk.account_id == account_id))
    return RiskSettings.from_document(stored)


def risk_settings_many(session: DbSession, account_ids: Collection[int]) -> dict[int, RiskSettings]:
    """`risk_settings_of` for many accounts in one query; every id given has an entry."""
    stored: dict[int, Any] = dict(
        session.execute(
            sa.select(AccountRisk.account_id, AccountRisk.settings).where(
                AccountRisk.account_id.in_(account_ids)
            )
        ).all()
    )
    return {account_id: RiskSettings.from_document(stored.get(account_id)) for account_id in account_ids}


def save_risk_settings(session: DbSession, user: User, account_id: int, document: Any) -> dict[str, Any]:
    """Store `document` as the risk settings of `user`'s account `account_id`, with who saved it and
    when, and audit the change (`account.risk_updated`, with the previous and the new document). Returns
    the document as stored: every omitted optional value filled in. The caller commits.

    NotFound for an account that is not the user's; InvalidInput (naming each bad field) for a document
    that is not valid, and then nothing is written. A document equal to the current one writes nothing
    either: there is no change to audit."""
    get_owned(session, Account, account_id, user.id, name="account")  # before the body: 404 whatever it says
    settings = validate_settings(document)
    # Two owners' sessions saving at once (two browser tabs) take turns on the account's row, so each
    # audits the document it replaced and neither trips over the other's first insert. NO KEY: new trades
    # and signals of the account (whose foreign keys take KEY SHARE) are not held up meanwhile.
    session.execute(
        sa.select(Account.id).where(Account.id == account_id).with_for_update(key_share=True)
    ).one()
    row = session.get(AccountRisk, account_id, populate_existing=True)
    previous = dict(row.settings) if row is not None else default_settings()
    if previous == settings:
        return settings
    if row is None:
        row = AccountRisk(account_id=account_id)
        session.add(row)
    row.settings = settings
    row.updated_by = user.id
    row.updated_at = utcnow()
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=user.id,
        action=RISK_UPDATED,
        target_type="account",
        target_id=account_id,
        meta={"previous": previous, "settings": settings},
    )
    session.flush()
    return settings


@dataclass(frozen=True)
class OrderGuard:
    """What the guards say of a new order on one account: its order limits, whether the account is
    halted (and why), and the symbols the market guard blocks ({symbol: {"reason", "since", "kind"}})."""

    orders: OrderLimits
    halted_at: datetime | None
    halted_reason: str | None
    blocked_symbols: dict[str, Any]
    # The alert counting down to close the account's positions (pending or closing), as the owner is told
    # it: "alert 12 (max drawdown: drawdown 2.1%) closes at 2026-12-01 10:00:10+00".
    live_alert: str | None = None


def _guard_columns(account_id: int) -> tuple[Any, ...]:
    """What an order is refused for, as columns: the halt, the market blocks, and the account's live
    alert as one text (a scalar subquery, NULL when there is none)."""
    live_alert = (
        sa.select(
            "alert "
            + sa.cast(DrawdownAlert.id, sa.String)
            + " ("
            + DrawdownAlert.reason
            + ") closes at "
            + sa.cast(DrawdownAlert.close_at, sa.String)
        )
        .where(DrawdownAlert.account_id == account_id, DrawdownAlert.status.in_(LIVE_ALERT_STATUSES))
        .limit(1)
        .scalar_subquery()
    )
    return (
        GuardState.halted_at,
        GuardState.halted_reason,
        GuardState.blocked_symbols,
        live_alert.label("live_alert"),
    )


def _guards_of(row: Any) -> dict[str, Any]:
    """`_guard_columns` as read (None: the account has no guard state yet) for an OrderGuard."""
    return {
        "halted_at": row.halted_at if row is not None else None,
        "halted_reason": row.halted_reason if row is not None else None,
        "blocked_symbols": dict(row.blocked_symbols or {}) if row is not None else {},
        "live_alert": row.live_alert if row is not None else None,
    }


def guard_now(session: DbSession, account_id: int, guard: OrderGuard) -> OrderGuard:
    """`guard` with the halt, the market blocks and the live alert as they are at this moment, the
    account's guard state locked against change (FOR SHARE) until the caller's transaction ends. Read
    again in the transaction that records an order as sent: a halt or an alert the guards commit
    meanwhile is either seen here, or waits for that commit and then finds the order on the terminal to
    close. The order limits are not read again (the checks made with them stand).

    The lock is taken first, in a statement of its own: read in the same statement, an alert the guards
    committed while it waited for the lock would not be seen (only the locked row is read afresh after
    the wait; the rest of a statement keeps the snapshot it started with)."""
    session.execute(
        sa.select(GuardState.account_id).where(GuardState.account_id == account_id).with_for_update(read=True)
    ).all()
    # No guard state, no alert: the guards write the state before they raise one.
    state = session.execute(
        sa.select(*_guard_columns(account_id)).where(GuardState.account_id == account_id)
    ).first()
    return replace(guard, **_guards_of(state))


def order_guard_of(session: DbSession, account_id: int) -> OrderGuard:
    """The account's order limits, halt, market blocks and live alert, in one statement: the execution
    path's first look at the guards for every order, before any terminal call (`guard_now` looks again
    just before the order is sent; a limit on orders per minute reads the recent trades too)."""
    row = session.execute(
        sa.select(AccountRisk.settings, *_guard_columns(account_id))
        .select_from(Account)
        .outerjoin(AccountRisk, AccountRisk.account_id == Account.id)
        .outerjoin(GuardState, GuardState.account_id == Account.id)
        .where(Account.id == account_id)
    ).one()
    return OrderGuard(orders=RiskSettings.from_document(row.settings).orders, **_guards_of(row))
