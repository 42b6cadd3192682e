"""Loading one trade's timeline for its owner: every record of what happened to it (the rules that turn
them into entries are `shared.insight.timeline`)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa

from shared.core.db import DbSession, utcnow
from shared.execution.queries import get_own_trade
from shared.insight import timeline
from shared.models import (
    AlertClose,
    Approval,
    AuditLog,
    DrawdownAlert,
    GuardState,
    ReconciliationLog,
    Signal,
    StrategyClient,
    Trade,
    User,
)


def own_trade_timeline(
    session: DbSession, owner: User, trade_id: int, *, now: datetime | None = None
) -> tuple[Trade, int, list[timeline.Entry]]:
    """The trade, the broker offset its times are shown with, and its timeline. NotFound for a trade
    that is not the owner's, as for one that does not exist."""
    trade = get_own_trade(session, owner, trade_id)
    history = load_history(session, trade, now=now or utcnow())
    return trade, history.broker_offset_seconds, timeline.build(history)


def load_history(session: DbSession, trade: Trade, *, now: datetime) -> timeline.TradeHistory:
    facts = _trade_facts(trade)
    window = timeline.open_window(facts, now)
    return timeline.TradeHistory(
        trade=facts,
        signal=_signal(session, trade.signal_id),
        approval=_approval(session, trade.approval_id),
        audit=_audit(session, sa.and_(AuditLog.target_type == "trade", AuditLog.target_id == trade.id)),
        reconciliation=_reconciliation(session, trade.id),
        warnings=_warnings(session, trade.account_id, window),
        alerts=_alerts(session, trade, window),
        broker_offset_seconds=session.scalar(
            sa.select(GuardState.broker_offset_seconds).where(GuardState.account_id == trade.account_id)
        )
        or 0,
        now=now,
    )


def _trade_facts(trade: Trade) -> timeline.TradeFacts:
    return timeline.TradeFacts(
        id=trade.id,
        account_id=trade.account_id,
        symbol=trade.symbol,
        side=trade.side.value,
        state=trade.state.value,
        requested_volume=trade.requested_volume,
        filled_volume=trade.filled_volume,
        filled_price=trade.filled_price,
        position_ticket=trade.position_ticket,
        sent_at=trade.sent_at,
        filled_at=trade.filled_at,
        closed_at=trade.closed_at,
        close_reason=trade.close_reason,
        close_price=trade.close_price,
        pnl=trade.pnl,
    )


def _signal(session: DbSession, signal_id: int) -> timeline.SignalFacts:
    row = session.execute(
        sa.select(Signal, StrategyClient.name)
        .outerjoin(StrategyClient, StrategyClient.id == Signal.client_id)
        .where(Signal.id == signal_id)
    ).one()
    signal, client_name = row
    return timeline.SignalFacts(
        id=signal.id,
        received_at=signal.created_at,
        client_id=signal.client_id,
        client_name=client_name,
        instrument=signal.instrument,
        side=signal.side.value,
        volume=signal.volume,
        price=signal.price,
        sl=signal.sl,
        tp=signal.tp,
        comment=signal.comment,
        expires_at=signal.expires_at,
    )


def _approval(session: DbSession, approval_id: int) -> timeline.ApprovalFacts | None:
    row = session.execute(
        sa.select(Approval, User.email)
        .outerjoin(User, User.id == Approval.user_id)
        .where(Approval.id == approval_id)
    ).one_or_none()
    if row is None:
        return None
    approval, email = row
    return timeline.ApprovalFacts(
        id=approval.id,
        at=approval.created_at,
        user_id=approval.user_id,
        email=email,
        decision=approval.decision.value,
        reason=approval.reason,
    )


def _audit(session: DbSession, *where: sa.ColumnElement[bool]) -> list[timeline.AuditFacts]:
    rows = session.execute(
        sa.select(AuditLog.id, AuditLog.created_at, AuditLog.action, AuditLog.meta)
        .where(*where)
        .order_by(AuditLog.id)
    )
    return [timeline.AuditFacts(row.id, row.created_at, row.action, row.meta or {}) for row in rows]


def _reconciliation(session: DbSession, trade_id: int) -> list[timeline.ReconciliationFacts]:
    rows = session.scalars(
        sa.select(ReconciliationLog)
        .where(ReconciliationLog.trade_id == trade_id)
        .order_by(ReconciliationLog.id)
    )
    return [
        timeline.ReconciliationFacts(
            id=row.id,
            at=row.created_at,
            event_type=row.event_type,
            position_ticket=row.position_ticket,
            volume=row.volume,
            price_open=row.price_open,
            sl=row.sl,
            tp=row.tp,
            close_reason=row.close_reason,
            close_price=row.close_price,
            pnl=row.pnl,
            details=row.details or {},
        )
        for row in rows
    ]


def _warnings(
    session: DbSession, account_id: int, window: tuple[datetime, datetime] | None
) -> list[timeline.AuditFacts]:
    """The guards' warnings about the account while the trade was open."""
    if window is None:
        return []
    start, end = window
    return _audit(
        session,
        AuditLog.action == "guard.warning",
        AuditLog.target_type == "account",
        AuditLog.target_id == account_id,
        AuditLog.created_at >= start,
        AuditLog.created_at <= end,
    )


def _alerts(
    session: DbSession, trade: Trade, window: tuple[datetime, datetime] | None
) -> list[timeline.AlertFacts]:
    """The alerts that closed (or tried to close) the trade's position, and the account's alerts live
    while it was open (timeline.touched decides which of those touched it)."""
    closes = {
        row.alert_id: row
        for row in session.scalars(
            sa.select(AlertClose).where(AlertClose.trade_id == trade.id).order_by(AlertClose.id)
        )
    }
    chosen: sa.ColumnElement[bool] = DrawdownAlert.id.in_(list(closes))
    if window is not None:
        start, end = window
        live_then = sa.and_(
            DrawdownAlert.account_id == trade.account_id,
            DrawdownAlert.created_at <= end,
            sa.or_(DrawdownAlert.executed_at.is_(None), DrawdownAlert.executed_at >= start),
        )
        chosen = sa.or_(chosen, live_then)
    alerts = list(session.scalars(sa.select(DrawdownAlert).where(chosen).order_by(DrawdownAlert.id)))
    # The alerts' audit entries about the trade's close (its close id in their meta).
    close_ids = {row.id for row in closes.values()}
    by_alert: dict[int, list[timeline.AuditFacts]] = defaultdict(list)
    if closes:
        for entry in _audit(
            session,
            AuditLog.target_type == "alert",
            AuditLog.target_id.in_(list(closes)),
            AuditLog.action.like("position.close%"),
        ):
            if entry.meta.get("close_id") in close_ids:
                by_alert[int(entry.meta["close_id"])].append(entry)
    result = []
    for alert in alerts:
        close = closes.get(alert.id)
        result.append(
            timeline.AlertFacts(
                id=alert.id,
                created_at=alert.created_at,
                alert_type=alert.alert_type,
                limit_name=alert.limit_name,
                symbol=alert.symbol,
                reason=alert.reason,
                currency=alert.currency,
                drawdown_percent=alert.drawdown_percent,
                drawdown_amount=alert.drawdown_amount,
                threshold_percent=alert.threshold_percent,
                equity=alert.equity,
                margin_level=alert.margin_level,
                status=alert.status,
                close_at=alert.close_at,
                executed_at=alert.executed_at,
                positions_closed_count=alert.positions_closed_count,
                total_loss=alert.total_loss,
                details=alert.details or {},
                close=None if close is None else _close_facts(close),
                close_audit=() if close is None else tuple(by_alert.get(close.id, ())),
            )
        )
    return result


def _close_facts(row: AlertClose) -> timeline.CloseFacts:
    return timeline.CloseFacts(
        id=row.id,
        decided_at=row.created_at,
        position_ticket=row.position_ticket,
        volume=row.volume,
        state=row.state,
        attempts=row.attempts,
        close_price=row.close_price,
        pnl=row.pnl,
        error=row.error,
    )
