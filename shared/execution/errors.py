"""What stops an execution attempt, in TradeGuard's error tree (shared.core.errors, shared.mt5.errors).

The terminal's own failures are raised as they come (shared.mt5.errors); this module adds what execution
itself decides must wait.
"""

from __future__ import annotations

from shared.mt5.errors import RetryableTerminalError


class TerminalRetryLater(RetryableTerminalError):
    """The trade cannot go further now, and nothing was harmed by stopping: another worker holds the
    trade's lock (it is executing it at this moment), the last order sent may still be executing on the
    terminal (its reply was lost less than the terminal timeout plus the grace ago), or the trade server
    answered with a retcode that leaves the order's fate unknown (timeout, connection, error, too many
    requests, placed). The task retries with back-off, and each retry looks for the order before it sends
    again. Nothing to do by hand unless it persists for an account: then check that account's terminal
    (its journal, its connection to the broker) and compare the broker's trade history with the trade.
    After TRADEGUARD_EXECUTION_MAX_RETRIES the task gives up: a trade that may have an order stays `sent`
    for reconciliation to settle, any other is marked failed."""

    code = "retry_later"
