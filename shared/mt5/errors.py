"""What can go wrong talking to an MT5 terminal, sorted by what to do about it.

Two families matter to callers:

- `RetryableTerminalError`: the terminal could not be reached or did not answer in time. Retry later
  (with back-off). `OrderOutcomeUnknown` is the dangerous member: look for the order before resending.
- `PermanentTerminalError`: retrying will not help until a person changes something (credentials,
  symbol name, terminal URL, the terminal's settings).

Every error carries `call` (the MetaTrader5 function that failed) and `terminal_code` /
`terminal_message` (what `last_error()` said, when there was something to ask). `code` keeps the meaning
it has for every `TradeGuardError`: a stable string name, which the web layer puts in its JSON envelope.
"""

from __future__ import annotations

from shared.core.errors import TradeGuardError
from shared.mt5.constants import (
    RES_E_AUTH_FAILED,
    RES_E_AUTO_TRADING_DISABLED,
    RES_E_FAIL,
    RES_E_INTERNAL_FAIL,
    RES_E_INTERNAL_FAIL_CONNECT,
    RES_E_INTERNAL_FAIL_INIT,
    RES_E_INTERNAL_FAIL_RECEIVE,
    RES_E_INTERNAL_FAIL_SEND,
    RES_E_INTERNAL_FAIL_TIMEOUT,
    RES_E_INVALID_PARAMS,
    RES_E_INVALID_VERSION,
    RES_E_NO_MEMORY,
    RES_E_NOT_FOUND,
    RES_E_UNSUPPORTED,
)

# Calls after which a failure may hide an order that was in fact placed.
ORDER_CALLS = frozenset({"order_send"})
# Calls whose "not found" means the symbol name is wrong for this broker.
SYMBOL_CALLS = frozenset({"symbol_info", "symbol_info_tick", "symbol_select"})


class TerminalError(TradeGuardError):
    """A call to the MT5 terminal failed. Read `call`, `terminal_code` and the message in the log.

    This base class itself is raised only for failures the terminal did not explain (a generic
    "call failed"): check the terminal's own journal, then retry once by hand before automating it.
    """

    code = "terminal_error"
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        call: str | None = None,
        terminal_code: int | None = None,
        terminal_message: str | None = None,
    ):
        super().__init__(message)
        self.call = call
        self.terminal_code = terminal_code
        self.terminal_message = terminal_message

    @property
    def retryable(self) -> bool:
        return isinstance(self, RetryableTerminalError)


class RetryableTerminalError(TerminalError):
    """A transient failure: the same call may well succeed later. Nothing to fix by hand unless it
    persists; the scheduler retries with back-off and the circuit breaker reports accounts that keep
    failing."""

    code = "terminal_unavailable"
    http_status = 503


class TerminalUnavailable(RetryableTerminalError):
    """The terminal is unreachable: connection lost, terminal disconnected from the broker, IPC error,
    or the RPyC server is down. Check that the terminal (or the `terminal` process / mt5linux server)
    runs and is connected to its broker; work resumes by itself once it is back."""


class TerminalTimeout(RetryableTerminalError):
    """A call took longer than the per-call timeout. The terminal is slow or hung: if this keeps
    happening, restart the terminal or raise the timeout; the late answer, if any, is discarded."""

    code = "terminal_timeout"


class OrderOutcomeUnknown(RetryableTerminalError):
    """order_send returned nothing, timed out, or the connection broke while it ran: the order may or
    may not have been placed. Never resend blindly. Callers must first look for the order (positions and
    deals with TradeGuard's magic number and the trade's comment) and send again only if it is not
    there. An operator seeing this repeatedly should compare the broker's trade history with TradeGuard's
    trades for that account."""

    code = "order_outcome_unknown"


class PermanentTerminalError(TerminalError):
    """A failure that retrying will not cure. A person must fix the cause named in the message (the
    account settings, the symbol name, the terminal) before work for this account can resume."""

    code = "terminal_rejected"
    http_status = 502


class TerminalLoginFailed(PermanentTerminalError):
    """The terminal refused the login: wrong login number, password or server name. Correct the account's
    credentials (or ask the broker whether the account is disabled); TradeGuard will not retry them."""

    code = "terminal_login_failed"


class SymbolNotFound(PermanentTerminalError):
    """The broker does not offer this symbol under this name (brokers often add suffixes such as
    "EURUSD.m"). Fix the instrument in the signal or map it to the broker's name."""

    code = "symbol_not_found"


class TerminalNotSupported(PermanentTerminalError):
    """This machine cannot drive that kind of terminal, e.g. an `mt5://` account on a worker without the
    MetaTrader5 package (it is Windows-only), or a terminal build the package does not support. Run the
    account on a Windows worker, or change its terminal URL to an `mt5linux://host:port` bridge."""

    code = "terminal_not_supported"


class InvalidTerminalUrl(PermanentTerminalError):
    """The account's terminal URL cannot be used (unknown scheme, missing host or port). Correct it:
    `mt5://`, `mt5linux://host:port`, `sim://` or `sim://host:port`."""

    code = "invalid_terminal_url"


class TerminalNotDeclared(PermanentTerminalError):
    """The account's terminal is not one the operator declared in TRADEGUARD_TERMINALS, so TradeGuard
    will not connect to it. An operator adds the terminal to TRADEGUARD_TERMINALS (on every web and worker
    machine) if it is theirs and trusted; otherwise the owner changes the account to a declared one."""

    code = "terminal_not_declared"


class TerminalProtocolError(TerminalError):
    """The terminal answered with something that is not a well-formed reply: not plain data, the wrong
    shape, or an error raised by its Python. A misbehaving or hostile terminal server (or a bridge bug)
    is behind the declared URL: check what actually listens there. Nothing it sent was executed here.
    Counted as a failure (the breaker backs the account off); after an order call it is treated as
    OrderOutcomeUnknown instead, since the order may have been placed."""

    code = "terminal_protocol_error"


class InvalidTerminalRequest(PermanentTerminalError):
    """The terminal rejected the call's parameters before doing anything (RES_E_INVALID_PARAMS). This is
    a TradeGuard bug, not a market condition: report it with the logged request."""

    code = "invalid_terminal_request"


class AutoTradingDisabled(PermanentTerminalError):
    """The terminal refuses to trade because "Algo Trading" is switched off in it. Switch it on in the
    terminal (toolbar button, and Tools > Options > Expert Advisors) and retry."""

    code = "auto_trading_disabled"


class CredentialsUnreadable(PermanentTerminalError):
    """The account's stored terminal password cannot be decrypted with the keys in
    TRADEGUARD_ENCRYPTION_KEY (the key that encrypted it was dropped from the list), so its terminal
    cannot be logged in to. Put that key back in TRADEGUARD_ENCRYPTION_KEY (anywhere in the list, on every
    worker), or have the owner enter the account's password again. Until then the account's trades fail at
    once and its syncs fail (its breaker opens); nothing is retried."""

    code = "credentials_unreadable"


_TRANSPORT_CODES = frozenset(
    {
        RES_E_NO_MEMORY,
        RES_E_INTERNAL_FAIL,
        RES_E_INTERNAL_FAIL_SEND,
        RES_E_INTERNAL_FAIL_RECEIVE,
        RES_E_INTERNAL_FAIL_INIT,
        RES_E_INTERNAL_FAIL_CONNECT,
    }
)


def classify(call: str, code: int | None, message: str | None) -> TerminalError:
    """The exception to raise for a failed `call` whose `last_error()` was (`code`, `message`).

    Returns an instance (ready to raise), chosen by the RES_* code and, where the same code means
    different things, by the call: a failure of order_send is never "permanent" or "unavailable" but
    `OrderOutcomeUnknown` unless the terminal said it refused the request outright (bad parameters,
    algo trading off, wrong credentials, no IPC connection at all) — in those cases nothing was sent.
    """
    cls = _classify(call, code)
    text = f"{call} failed: {message or 'no message'} (last_error {code})"
    return cls(text, call=call, terminal_code=code, terminal_message=message)


def _classify(call: str, code: int | None) -> type[TerminalError]:
    if code == RES_E_AUTH_FAILED:
        return TerminalLoginFailed
    if code == RES_E_AUTO_TRADING_DISABLED:
        return AutoTradingDisabled
    if code == RES_E_INVALID_PARAMS:
        return InvalidTerminalRequest
    if code in (RES_E_UNSUPPORTED, RES_E_INVALID_VERSION):
        return TerminalNotSupported
    if call in ORDER_CALLS:
        if code in (RES_E_INTERNAL_FAIL_CONNECT, RES_E_INTERNAL_FAIL_INIT):
            # "No IPC connection": the terminal answered that it could not even take the request.
            return TerminalUnavailable
        # Anything else during order_send (timeout, a send or receive that broke halfway, a generic
        # failure, no answer at all) leaves the order's fate unknown.
        return OrderOutcomeUnknown
    if code == RES_E_INTERNAL_FAIL_TIMEOUT:
        return TerminalTimeout
    if code in _TRANSPORT_CODES:
        return TerminalUnavailable
    if call in SYMBOL_CALLS and code in (RES_E_NOT_FOUND, RES_E_FAIL):
        # The official package answers an unknown symbol with None and a generic or not-found error.
        return SymbolNotFound
    return TerminalError
