"""One trade's timeline, pure: everything that happened to it, from the records that say so, in order.

No database and no clock of its own: `shared.insight.timeline_queries` loads the records (`TradeHistory`)
and `build` turns them into entries. Each entry has `at` (UTC), `broker_time` (the same instant on the
trade server's clock), a `kind` (KINDS, stable names) and its `details` (decimals as text, without
trailing zeros). Entries are ordered by `at`, then, for entries at the same instant, by the order of
KINDS (a trade's life in order: the signal before its approval before the order), then as recorded.

Where each kind comes from:
- the signal and its approval: their rows (the strategy client that sent it, the user who approved it);
- the execution: the audit trail of the trade (`shared.execution.service` records every step in the
  transaction that makes it). Every order sent passed the pre-trade and risk checks just before (none is
  sent otherwise), so each `order.sent` follows a `risk.checked` at the same instant; a refusal is
  `risk.refused` with the problems found;
- reconciliation: its event log rows for the trade (matched, divergence with its figures, vanished,
  closed) and the audit entry of a vanished position found again;
- the guards: warnings about the trade's account while the trade was open; the alerts that touched it
  (see `touched`) with, for the alert that closed it, its closing order's attempts;
- the close: the trade's row (why, at what price, the P&L).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

# Every kind an entry can have, in the order entries at the same instant are listed.
KINDS: tuple[str, ...] = (
    "signal.received",  # the strategy client's signal reached TradeGuard
    "signal.approved",  # the owner approved it (by whom, why)
    "trade.created",  # execution took it up: the trade was made
    "risk.checked",  # the pre-trade and risk checks passed, just before an order was sent
    "risk.refused",  # they did not: the trade was rejected before any order (the problems)
    "order.sent",  # an order went to the terminal (the attempt, the price asked)
    "order.requoted",  # the broker answered with a new price: nothing was filled (retcode)
    "order.lost",  # a reply was lost and the order was not found: it was never made, and is sent again
    "order.attempt_failed",  # an attempt ended in an error nobody classified (the error)
    "order.rejected",  # the broker refused the order, or the price moved on every attempt
    "order.filled",  # filled (volume, price, retcode; or found after a lost reply, or by reconciliation)
    "trade.failed",  # execution gave up: the terminal was unreachable after every retry
    "reconciliation.matched",  # reconciliation found the trade's position on the terminal
    "reconciliation.divergence",  # the position differs from the request (each figure), or no longer does
    "reconciliation.vanished",  # the position is gone from the terminal without a closing deal
    "reconciliation.reappeared",  # the vanished position is back
    "guard.warning",  # a drawdown limit of the account warned while the trade was open
    "alert.raised",  # a guard raised an alert that touched the trade (reason, figures, when it closes)
    "alert.cancelled",  # the breach cleared within the grace period: nothing was closed
    "alert.closing",  # the grace period ended with the breach still there: the trade's position is closed
    "close.sent",  # the closing order went to the terminal (the price asked)
    "close.requoted",  # the broker answered the close with a new price (retcode)
    "close.not_found",  # a close whose reply was lost was not found: it is sent again
    "close.failed",  # the close failed (the error)
    "close.gone",  # the position was closed by something else before the guard's order
    "trade.closed",  # the trade was closed (why, price, P&L)
    "reconciliation.closed",  # reconciliation found the position closed outside TradeGuard
    "alert.executed",  # the alert finished: positions closed, total loss
    "alert.failed",  # the alert finished with a close that failed
)
_RANK = {kind: rank for rank, kind in enumerate(KINDS)}


# --- the records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TradeFacts:
    id: int
    account_id: int
    symbol: str
    side: str
    state: str
    requested_volume: Decimal
    filled_volume: Decimal | None
    filled_price: Decimal | None
    position_ticket: int | None
    sent_at: datetime | None
    filled_at: datetime | None
    closed_at: datetime | None
    close_reason: str | None
    close_price: Decimal | None
    pnl: Decimal | None


@dataclass(frozen=True)
class SignalFacts:
    id: int
    received_at: datetime
    client_id: int
    client_name: str | None
    instrument: str
    side: str
    volume: Decimal
    price: Decimal | None
    sl: Decimal | None
    tp: Decimal | None
    comment: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class ApprovalFacts:
    id: int
    at: datetime
    user_id: int
    email: str | None
    decision: str
    reason: str | None


@dataclass(frozen=True)
class AuditFacts:
    """An audit log entry: the trade's, the account's (a guard warning) or an alert's."""

    id: int
    at: datetime
    action: str
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class ReconciliationFacts:
    id: int
    at: datetime
    event_type: str
    position_ticket: int
    volume: Decimal | None
    price_open: Decimal | None
    sl: Decimal | None
    tp: Decimal | None
    close_reason: str | None
    close_price: Decimal | None
    pnl: Decimal | None
    details: Mapping[str, Any]


@dataclass(frozen=True)
class CloseFacts:
    """The alert's close of the trade's position (an `alert_closes` row)."""

    id: int
    decided_at: datetime
    position_ticket: int
    volume: Decimal
    state: str
    attempts: int
    close_price: Decimal | None
    pnl: Decimal | None
    error: str | None


@dataclass(frozen=True)
class AlertFacts:
    id: int
    created_at: datetime
    alert_type: str
    limit_name: str | None
    symbol: str | None
    reason: str
    currency: str
    drawdown_percent: Decimal | None
    drawdown_amount: Decimal | None
    threshold_percent: Decimal | None
    equity: Decimal
    margin_level: Decimal | None
    status: str
    close_at: datetime
    executed_at: datetime | None
    positions_closed_count: int
    total_loss: Decimal
    details: Mapping[str, Any]
    # The close of the trade's position, when the alert chose it, and the alert's audit entries about
    # that close (position.close_*).
    close: CloseFacts | None = None
    close_audit: Sequence[AuditFacts] = ()


@dataclass(frozen=True)
class TradeHistory:
    trade: TradeFacts
    signal: SignalFacts
    approval: ApprovalFacts | None
    audit: Sequence[AuditFacts]  # the trade's own entries
    reconciliation: Sequence[ReconciliationFacts]
    warnings: Sequence[AuditFacts]  # guard.warning entries of the account (those in the window count)
    alerts: Sequence[AlertFacts]  # the account's alerts that may have touched the trade (see `touched`)
    broker_offset_seconds: int
    now: datetime


@dataclass(frozen=True)
class Entry:
    at: datetime
    broker_time: str
    kind: str
    details: dict[str, Any] = field(default_factory=dict)


# --- the rules -----------------------------------------------------------------------------------------


def broker_time(at: datetime, offset_seconds: int) -> str:
    """`at` on the trade server's clock (UTC shifted by its offset), as ISO-8601 without an offset, as
    MT5 shows times: "2026-11-30T16:00:00" for 14:00 UTC on a UTC+2 server."""
    utc = at.astimezone(UTC) if at.tzinfo is not None else at
    return (utc + timedelta(seconds=offset_seconds)).replace(tzinfo=None).isoformat()


def open_window(trade: TradeFacts, now: datetime) -> tuple[datetime, datetime] | None:
    """When the trade's position was (or may have been) open: from its fill (or, while its order's
    outcome is unknown, from the order) to its close (or now). None for a trade that never held one."""
    start = trade.filled_at
    if start is None and trade.state in ("sent", "closed"):
        start = trade.sent_at
    if start is None:
        return None
    return start, trade.closed_at or now


def touched(alert: AlertFacts, trade: TradeFacts, window: tuple[datetime, datetime] | None) -> bool:
    """Whether the alert touched the trade: it chose to close the trade's position; or it was live
    (pending, then cancelled) while the trade was open and would have closed it (any drawdown or margin
    alert; a market alert of the trade's symbol). An alert that went on to close other positions only
    did not touch it."""
    if alert.close is not None:
        return True
    if window is None or alert.status not in ("pending", "cancelled"):
        return False
    if alert.alert_type == "market" and alert.symbol != trade.symbol:
        return False
    start, end = window
    return alert.created_at <= end and (alert.executed_at is None or alert.executed_at >= start)


def build(history: TradeHistory) -> list[Entry]:
    """The trade's timeline, ordered (see the module docstring)."""
    trade = history.trade
    found: list[tuple[datetime, str, dict[str, Any]]] = []

    def add(at: datetime | None, kind: str, **details: Any) -> None:
        if at is not None:
            found.append((at, kind, details))

    signal = history.signal
    add(
        signal.received_at,
        "signal.received",
        signal_id=signal.id,
        client_id=signal.client_id,
        client=signal.client_name,
        instrument=signal.instrument,
        side=signal.side,
        volume=_text(signal.volume),
        price=_text(signal.price),
        sl=_text(signal.sl),
        tp=_text(signal.tp),
        comment=signal.comment,
        expires_at=_iso(signal.expires_at),
    )
    approval = history.approval
    if approval is not None:
        add(
            approval.at,
            "signal.approved",
            approval_id=approval.id,
            user_id=approval.user_id,
            by=approval.email,
            decision=approval.decision,
            reason=approval.reason,
        )
    for entry in sorted(history.audit, key=lambda e: e.id):
        for kind, details in _execution_entries(entry, trade):
            add(entry.at, kind, **details)
    for event in sorted(history.reconciliation, key=lambda e: e.id):
        for kind, details in _reconciliation_entries(event):
            add(event.at, kind, **details)

    window = open_window(trade, history.now)
    if window is not None:
        start, end = window
        for warning in sorted(history.warnings, key=lambda e: e.id):
            if warning.action == "guard.warning" and start <= warning.at <= end:
                add(warning.at, "guard.warning", **_numbers(warning.meta, _WARNING_NUMBERS))
    closed_by: int | None = None
    for alert in sorted(history.alerts, key=lambda a: a.id):
        if not touched(alert, trade, window):
            continue
        for at, kind, details in _alert_entries(alert):
            add(at, kind, **details)
        if alert.close is not None and alert.close.state == "closed":
            closed_by = alert.id

    if trade.closed_at is not None:
        add(
            trade.closed_at,
            "trade.closed",
            reason=trade.close_reason,
            price=_text(trade.close_price),
            pnl=_text(trade.pnl),
            alert_id=closed_by if trade.close_reason == "guard" else None,
        )

    offset = history.broker_offset_seconds
    ordered = sorted(enumerate(found), key=lambda item: (item[1][0], _RANK[item[1][1]], item[0]))
    return [Entry(at, broker_time(at, offset), kind, details) for _, (at, kind, details) in ordered]


# --- each source ---------------------------------------------------------------------------------------


def _execution_entries(entry: AuditFacts, trade: TradeFacts) -> list[tuple[str, dict[str, Any]]]:
    """What one of the trade's audit entries says, as timeline entries (none for the entries another
    source tells better: a close is the trade's row, a vanished position reconciliation's event)."""
    meta = entry.meta
    action = entry.action
    if action == "trade.created":
        return [("trade.created", {"trade_id": trade.id})]
    if action == "trade.sent":
        attempt = meta.get("attempt")
        return [
            ("risk.checked", {"attempt": attempt, "passed": True, "problems": []}),
            ("order.sent", {"attempt": attempt, "price": _text(meta.get("price"))}),
        ]
    if action == "trade.rejected_pre_trade":
        return [("risk.refused", {"passed": False, "problems": list(meta.get("problems") or [])})]
    if action == "trade.requoted":
        return [("order.requoted", {"attempt": meta.get("attempt"), "retcode": meta.get("retcode")})]
    if action == "trade.not_found_after_lost_reply":
        return [("order.lost", {})]
    if action == "trade.attempt_failed":
        return [("order.attempt_failed", {"attempt": meta.get("attempt"), "error": meta.get("error")})]
    if action == "trade.rejected":
        said = {key: meta.get(key) for key in ("retcode", "comment", "reason")}
        return [("order.rejected", said)]
    if action in ("trade.filled", "trade.partial"):
        return [
            (
                "order.filled",
                {
                    "found_by": "reply",
                    "partial": action == "trade.partial",
                    "retcode": meta.get("retcode"),
                    "volume": _text(meta.get("volume")),
                    "price": _text(meta.get("price")),
                    "requested_price": _text(meta.get("requested_price")),
                    "position_ticket": trade.position_ticket,
                },
            )
        ]
    if action in ("trade.found_after_lost_reply", "trade.filled_by_reconciliation"):
        # The fill found on the terminal: its price is the trade's (there is one fill per trade).
        return [
            (
                "order.filled",
                {
                    "found_by": "terminal" if action == "trade.found_after_lost_reply" else "reconciliation",
                    "partial": meta.get("state") == "partial",
                    "retcode": None,
                    "volume": _text(meta.get("volume")),
                    "price": _text(trade.filled_price),
                    "requested_price": None,
                    "position_ticket": trade.position_ticket,
                },
            )
        ]
    if action == "trade.failed":
        return [("trade.failed", {"reason": meta.get("reason")})]
    if action == "trade.reappeared":
        return [("reconciliation.reappeared", {})]
    return []


def _reconciliation_entries(event: ReconciliationFacts) -> list[tuple[str, dict[str, Any]]]:
    """What one of reconciliation's events about the trade says (an outside position is no trade's)."""
    details = event.details
    ticket = event.position_ticket
    if event.event_type == "matched":
        matched = {
            "position_ticket": ticket,
            "matched_by": details.get("matched_by"),
            "volume": _text(event.volume),
            "price_open": _text(event.price_open),
            "sl": _text(event.sl),
            "tp": _text(event.tp),
        }
        return [("reconciliation.matched", matched)]
    if event.event_type == "divergence":
        figures = [
            _numbers(item, ("expected", "actual", "difference")) for item in details.get("divergences") or []
        ]
        divergence = {
            "position_ticket": ticket,
            "cleared": bool(details.get("cleared", False)),
            "divergences": figures,
        }
        return [("reconciliation.divergence", divergence)]
    if event.event_type == "vanished":
        return [("reconciliation.vanished", {"position_ticket": ticket, "summary": details.get("summary")})]
    if event.event_type == "closed_outside":
        closed = {
            "position_ticket": ticket,
            "reason": event.close_reason,
            "price": _text(event.close_price),
            "pnl": _text(event.pnl),
            "volume": _text(event.volume),
            "summary": details.get("summary"),
        }
        return [("reconciliation.closed", closed)]
    return []


_WARNING_NUMBERS = (
    "drawdown_percent",
    "drawdown_amount",
    "reference",
    "equity",
    "warn_percent",
    "max_percent",
    "max_amount",
)


def _alert_entries(alert: AlertFacts) -> Iterable[tuple[datetime | None, str, dict[str, Any]]]:
    base = {"alert_id": alert.id}
    yield (
        alert.created_at,
        "alert.raised",
        {
            **base,
            "type": alert.alert_type,
            "reason": alert.reason,
            "limit": alert.limit_name,
            "symbol": alert.symbol,
            "drawdown_percent": _text(alert.drawdown_percent),
            "drawdown_amount": _text(alert.drawdown_amount),
            "threshold_percent": _text(alert.threshold_percent),
            "equity": _text(alert.equity),
            "margin_level": _text(alert.margin_level),
            "currency": alert.currency,
            "close_at": _iso(alert.close_at),
        },
    )
    if alert.status == "cancelled":
        equity = alert.details.get("cleared_at_equity")
        yield alert.executed_at, "alert.cancelled", {**base, "equity": _text(equity)}
        return
    close = alert.close
    if close is None:
        return
    yield (
        close.decided_at,
        "alert.closing",
        {
            **base,
            "why": alert.details.get("breach_at_close"),
            "equity": _text(alert.details.get("equity_at_close")),
            "position_ticket": close.position_ticket,
            "volume": _text(close.volume),
        },
    )
    attempt = 0
    for entry in sorted(alert.close_audit, key=lambda e: e.id):
        meta = entry.meta
        if entry.action == "position.close_sent":
            attempt += 1
            yield entry.at, "close.sent", {**base, "attempt": attempt, "price": _text(meta.get("price"))}
        elif entry.action == "position.close_requoted":
            yield entry.at, "close.requoted", {**base, "retcode": meta.get("retcode")}
        elif entry.action == "position.close_not_found":
            yield entry.at, "close.not_found", {**base}
        elif entry.action == "position.close_failed":
            yield entry.at, "close.failed", {**base, "error": meta.get("error")}
        elif entry.action == "position.close_gone":
            price, pnl = _text(close.close_price), _text(close.pnl)
            yield entry.at, "close.gone", {**base, "price": price, "pnl": pnl}
    if alert.status in ("executed", "failed"):
        yield (
            alert.executed_at,
            f"alert.{alert.status}",
            {
                **base,
                "positions_closed": alert.positions_closed_count,
                "total_loss": _text(alert.total_loss),
                "currency": alert.currency,
            },
        )


# --- text ----------------------------------------------------------------------------------------------


def _text(value: Any) -> Any:
    """A decimal (or a decimal written as text) as text without trailing zeros or an exponent; anything
    else as it is."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Decimal | int | str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        if number.is_finite():
            return format(number.normalize(), "f")
    return value


def _numbers(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    numbers = set(keys)
    return {key: _text(value) if key in numbers else value for key, value in values.items()}


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()
