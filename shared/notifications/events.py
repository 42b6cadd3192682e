"""The events a webhook can subscribe to, by the name sent in the payload and X-TradeGuard-Event.

Other features emit them with `shared.notifications.webhooks.notify(session, queue, owner_id, EVENT, data)`;
a name not listed here is a programming error there (ValueError), never a silent no-op.
"""

from __future__ import annotations

# Risk guards (emitted by the guards engine).
GUARD_WARNING = "guard.warning"
ALERT_PENDING = "alert.pending"
ALERT_CANCELLED = "alert.cancelled"
ALERT_EXECUTED = "alert.executed"
ALERT_FAILED = "alert.failed"
ACCOUNT_HALTED = "account.halted"
ACCOUNT_RESUMED = "account.resumed"
MARKET_BLOCKED = "market.blocked"
MARKET_UNBLOCKED = "market.unblocked"
# Execution and reconciliation.
TRADE_FILLED = "trade.filled"  # filled or partially filled: the data's `state` says which
TRADE_REJECTED = "trade.rejected"
TRADE_CLOSED = "trade.closed"
BREAKER_OPENED = "breaker.opened"  # reconciliation backs off an account whose terminal keeps failing

ALL_EVENTS: tuple[str, ...] = (
    GUARD_WARNING,
    ALERT_PENDING,
    ALERT_CANCELLED,
    ALERT_EXECUTED,
    ALERT_FAILED,
    ACCOUNT_HALTED,
    ACCOUNT_RESUMED,
    MARKET_BLOCKED,
    MARKET_UNBLOCKED,
    TRADE_FILLED,
    TRADE_REJECTED,
    TRADE_CLOSED,
    BREAKER_OPENED,
)
