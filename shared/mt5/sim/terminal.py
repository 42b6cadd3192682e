"""`SimTerminal`: one simulated terminal, the stand-in for the official `MetaTrader5` module.

Its methods are the module's functions (`shared.mt5.protocol.MetaTrader5Module`) with the official names,
arguments and return conventions (named tuples from `structs`; `None`, or `False` for `initialize`/`login`,
plus `last_error()` on failure), bound to a `SimBroker`; each terminal has its own logged-in account and
its own `last_error()`. Its `sim_*` methods are the simulator's control surface.
"""

from __future__ import annotations

import calendar
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.mt5 import constants as C
from shared.mt5.protocol import MetaTrader5Module
from shared.mt5.sim.broker import COMPANY, DEMO_CURRENCY, SimBroker, SimError, default_broker
from shared.mt5.sim.history import TIMEFRAMES
from shared.mt5.structs import (
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)

if TYPE_CHECKING:
    from numpy import ndarray

__all__ = ["SimTerminal"]

# What version() reports: (terminal version, build, build date), shaped like the real terminal's answer.
TERMINAL_VERSION = 500
TERMINAL_BUILD = 4755
TERMINAL_BUILD_DATE = "24 Jan 2025"

# last_error() messages, as the official package words them.
_MESSAGES: dict[int, str] = {
    C.RES_S_OK: "Success",
    C.RES_E_FAIL: "Terminal: Call failed",
    C.RES_E_INVALID_PARAMS: "Terminal: Invalid params",
    C.RES_E_NO_MEMORY: "Terminal: Out of memory",
    C.RES_E_NOT_FOUND: "Terminal: Not found",
    C.RES_E_AUTH_FAILED: "Terminal: Authorization failed",
    C.RES_E_UNSUPPORTED: "Terminal: Unsupported function",
    C.RES_E_AUTO_TRADING_DISABLED: "Auto-Trading using Python API disabled in Terminal",
    C.RES_E_INTERNAL_FAIL: "IPC call failed",
    C.RES_E_INTERNAL_FAIL_SEND: "IPC send failed",
    C.RES_E_INTERNAL_FAIL_RECEIVE: "IPC recv failed",
    C.RES_E_INTERNAL_FAIL_INIT: "IPC initialize failed",
    C.RES_E_INTERNAL_FAIL_CONNECT: "No IPC connection",
    C.RES_E_INTERNAL_FAIL_TIMEOUT: "IPC timeout",
}

# Request keys and the Python types the official package accepts for them. bool is refused even though
# it is an int subclass, and so is Decimal: both are bugs in the caller, which the real package rejects.
_REQUEST_FIELDS: dict[str, tuple[type, ...]] = {
    "action": (int,),
    "magic": (int,),
    "order": (int,),
    "symbol": (str,),
    "volume": (int, float),
    "price": (int, float),
    "stoplimit": (int, float),
    "sl": (int, float),
    "tp": (int, float),
    "deviation": (int,),
    "type": (int,),
    "type_filling": (int,),
    "type_time": (int,),
    "expiration": (int,),
    "comment": (str,),
    "position": (int,),
    "position_by": (int,),
}
_FLOAT_FIELDS = frozenset(name for name, kinds in _REQUEST_FIELDS.items() if float in kinds)


def _group_matches(name: str, group: str | None) -> bool:
    """MT5 group filters: comma-separated patterns with '*', '!' excluding, e.g. "*USD*,!EUR*"."""
    if not group:
        return True
    patterns = [p.strip().upper() for p in group.split(",") if p.strip()]
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    upper = name.upper()
    if include and not any(fnmatch.fnmatchcase(upper, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(upper, p) for p in exclude)


def _unix_time(value: Any) -> int | None:
    """A history bound as the official package takes it: a datetime (naive ones are read as UTC, as
    MetaQuotes recommends) or unix seconds. None when it is neither."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return calendar.timegm(value.timetuple())
        return int(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def _unix_msc(value: Any) -> int | None:
    """A date argument of copy_ticks_* / copy_rates_*, as the official package takes it (a datetime, naive
    ones read as UTC, or unix seconds), in milliseconds; None when it is neither. A datetime that lives in
    the caller's Python (an RPyC client's, reached through a proxy) is read through its methods."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return round(value * 1000)
    if isinstance(value, datetime) or (hasattr(value, "timestamp") and hasattr(value, "timetuple")):
        if value.tzinfo is None:
            return calendar.timegm(tuple(value.timetuple())[:6]) * 1000 + int(value.microsecond) // 1000
        return round(float(value.timestamp()) * 1000)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SimTerminal:
    """One simulated terminal: the MetaTrader5 module's functions, bound to a `SimBroker`.

    Not logged in until `initialize(login=...)` or `login(...)`. Calls before `initialize` fail as the
    real package's do: None, and last_error() == (RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection").
    """

    def __init__(self, broker: SimBroker | None = None) -> None:
        self.broker = broker if broker is not None else default_broker()
        self._initialized = False
        self._login: int | None = None
        self._error: tuple[int, str] = (C.RES_S_OK, _MESSAGES[C.RES_S_OK])
        self._hidden: set[str] = set()  # symbols taken out of Market Watch with symbol_select(.., False)
        self._algo_trading = True

    # ----- plumbing -----------------------------------------------------------------------------------

    def _fail(self, code: int, message: str | None = None) -> None:
        self._error = (code, message or _MESSAGES.get(code, "Terminal: Call failed"))

    def _ok(self) -> None:
        self._error = (C.RES_S_OK, _MESSAGES[C.RES_S_OK])

    def _enter(self, *, needs_login: bool = False) -> bool:
        """What every call goes through: the configured latency, then the connection and login checks.
        Sleeping happens outside the broker's lock, so a slow terminal does not slow the others."""
        self.broker.wait(self.broker.latency_seconds(self._login))
        if not self._initialized:
            self._fail(C.RES_E_INTERNAL_FAIL_CONNECT)
            return False
        if self.broker.is_disconnected(self._login):
            self._fail(C.RES_E_INTERNAL_FAIL_CONNECT)
            return False
        if needs_login and self._login is None:
            self._fail(C.RES_E_AUTH_FAILED, "Terminal: Authorization failed (not logged in)")
            return False
        return True

    def _authenticate(self, login: Any, password: Any, server: Any) -> bool:
        if not isinstance(login, int) or isinstance(login, bool):
            self._fail(C.RES_E_INVALID_PARAMS, 'Invalid "login" argument')
            return False
        if password is not None and not isinstance(password, str):
            self._fail(C.RES_E_INVALID_PARAMS, 'Invalid "password" argument')
            return False
        if server is not None and not isinstance(server, str):
            self._fail(C.RES_E_INVALID_PARAMS, 'Invalid "server" argument')
            return False
        if self.broker.is_disconnected(login):
            self._fail(C.RES_E_INTERNAL_FAIL_CONNECT)
            return False
        if not self.broker.authenticate(login, password, server):
            self._login = None
            self._fail(C.RES_E_AUTH_FAILED)
            return False
        self._login = login
        return True

    # ----- connection ---------------------------------------------------------------------------------

    def initialize(
        self,
        path: str | None = None,
        *,
        login: int | None = None,
        password: str | None = None,
        server: str | None = None,
        timeout: int | None = None,
        portable: bool = False,
    ) -> bool:
        """Start the terminal, logging in when `login` is given. False plus last_error() on failure."""
        self.broker.wait(self.broker.latency_seconds(login))
        if path is not None and not isinstance(path, str):
            self._fail(C.RES_E_INVALID_PARAMS, 'Invalid "path" argument')
            return False
        if self.broker.is_disconnected(login):
            self._fail(C.RES_E_INTERNAL_FAIL_CONNECT)
            return False
        if login is not None and not self._authenticate(login, password, server):
            return False
        self._initialized = True
        self._ok()
        return True

    def login(
        self, login: int, password: str | None = None, server: str | None = None, timeout: int | None = None
    ) -> bool:
        """Log in to another account. False plus last_error() (RES_E_AUTH_FAILED) on refusal."""
        if not self._enter():
            return False
        if not self._authenticate(login, password, server):
            return False
        self._ok()
        return True

    def shutdown(self) -> None:
        self._initialized = False
        self._login = None
        self._ok()

    def last_error(self) -> tuple[int, str]:
        return self._error

    def version(self) -> tuple[int, int, str] | None:
        if not self._enter():
            return None
        self._ok()
        return (TERMINAL_VERSION, TERMINAL_BUILD, TERMINAL_BUILD_DATE)

    def terminal_info(self) -> TerminalInfo | None:
        if not self._enter():
            return None
        self._ok()
        return TerminalInfo(
            community_account=False, community_connection=False, connected=True, dlls_allowed=False,
            trade_allowed=self._algo_trading, tradeapi_disabled=False, email_enabled=False,
            ftp_enabled=False, notifications_enabled=False, mqid=False, build=TERMINAL_BUILD,
            maxbars=100_000, codepage=0, ping_last=int(self.broker.latency_seconds(self._login) * 1e6),
            community_balance=0.0, retransmission=0.0, company=COMPANY,
            name="TradeGuard Simulated Terminal", language="English", path="sim://", data_path="sim://",
            commondata_path="sim://",
        )  # fmt: skip

    def account_info(self) -> AccountInfo | None:
        if not self._enter(needs_login=True):
            return None
        assert self._login is not None
        self._ok()
        return self.broker.account_info(self._login)

    # ----- symbols ------------------------------------------------------------------------------------

    def _currency(self) -> str:
        if self._login is None:
            return DEMO_CURRENCY
        return self.broker.account_currency(self._login)

    def symbols_total(self) -> int | None:
        if not self._enter():
            return None
        self._ok()
        return len(self.broker.symbol_names())

    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...] | None:
        if not self._enter():
            return None
        if group is not None and not isinstance(group, str):
            self._fail(C.RES_E_INVALID_PARAMS, 'Invalid "group" argument')
            return None
        currency = self._currency()
        result = []
        for name in self.broker.symbol_names():
            if _group_matches(name, group):
                info = self.broker.symbol_info(name, currency=currency, selected=name not in self._hidden)
                if info is not None:
                    result.append(info)
        self._ok()
        return tuple(result)

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        if not self._enter():
            return None
        info = self.broker.symbol_info(symbol, currency=self._currency(), selected=symbol not in self._hidden)
        if info is None:
            self._fail(C.RES_E_NOT_FOUND)
            return None
        self._ok()
        return info

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        if not self._enter():
            return None
        tick = self.broker.tick(symbol)
        if tick is None:
            self._fail(C.RES_E_NOT_FOUND)
            return None
        self._ok()
        return tick

    def symbol_select(self, symbol: str, enable: bool | None = None) -> bool:
        """Show the symbol in Market Watch, or hide it when `enable` is false (None, the default, shows it,
        as officially)."""
        if not self._enter():
            return False
        if not self.broker.has_symbol(symbol):
            self._fail(C.RES_E_NOT_FOUND)
            return False
        if enable is None or enable:
            self._hidden.discard(symbol)
        else:
            self._hidden.add(symbol)
        self._ok()
        return True

    # ----- positions and orders -----------------------------------------------------------------------

    def positions_total(self) -> int | None:
        if not self._enter(needs_login=True):
            return None
        assert self._login is not None
        self._ok()
        return len(self.broker.positions(self._login))

    def positions_get(
        self, *args: Any, symbol: str | None = None, group: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...] | None:
        """Open positions, filtered by symbol, group or ticket (keyword arguments only, as officially)."""
        if not self._enter(needs_login=True):
            return None
        assert self._login is not None
        if args:
            self._fail(C.RES_E_INVALID_PARAMS, "Unnamed arguments not allowed")
            return None
        positions = [
            p
            for p in self.broker.positions(self._login)
            if (symbol is None or p.symbol == symbol)
            and (ticket is None or p.ticket == ticket)
            and _group_matches(p.symbol, group)
        ]
        self._ok()
        return tuple(positions)

    def orders_total(self) -> int | None:
        """Pending orders are not simulated: always 0."""
        if not self._enter(needs_login=True):
            return None
        self._ok()
        return 0

    def orders_get(
        self, *args: Any, symbol: str | None = None, group: str | None = None, ticket: int | None = None
    ) -> tuple[TradeOrder, ...] | None:
        """Pending orders are not simulated: always an empty tuple."""
        if not self._enter(needs_login=True):
            return None
        if args:
            self._fail(C.RES_E_INVALID_PARAMS, "Unnamed arguments not allowed")
            return None
        self._ok()
        return ()

    def _history(
        self,
        records: Callable[[int], list[Any]],
        date_from: Any,
        date_to: Any,
        group: str | None,
        ticket: int | None,
        position: int | None,
    ) -> tuple[Any, ...] | None:
        if not self._enter(needs_login=True):
            return None
        assert self._login is not None
        if ticket is not None:
            selected = [r for r in records(self._login) if r.ticket == ticket]
        elif position is not None:
            selected = [r for r in records(self._login) if r.position_id == position]
        else:
            start, end = _unix_time(date_from), _unix_time(date_to)
            if start is None or end is None:
                self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
                return None
            selected = [
                r
                for r in records(self._login)
                if start <= (r.time if isinstance(r, TradeDeal) else r.time_setup) <= end
                and _group_matches(r.symbol, group)
            ]
        self._ok()
        return tuple(selected)

    def history_orders_get(
        self,
        date_from: datetime | int | None = None,
        date_to: datetime | int | None = None,
        group: str | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeOrder, ...] | None:
        """History orders set up within [date_from, date_to] (optionally of a symbol group), or the one
        with `ticket`, or those of the position `position`."""
        return self._history(self.broker.history_orders, date_from, date_to, group, ticket, position)

    def history_orders_total(self, date_from: datetime | int, date_to: datetime | int) -> int | None:
        orders = self.history_orders_get(date_from, date_to)
        return None if orders is None else len(orders)

    def history_deals_get(
        self,
        date_from: datetime | int | None = None,
        date_to: datetime | int | None = None,
        group: str | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeDeal, ...] | None:
        """Deals done within [date_from, date_to] (optionally of a symbol group), or the one with
        `ticket`, or those of the position `position`."""
        return self._history(self.broker.history_deals, date_from, date_to, group, ticket, position)

    def history_deals_total(self, date_from: datetime | int, date_to: datetime | int) -> int | None:
        deals = self.history_deals_get(date_from, date_to)
        return None if deals is None else len(deals)

    # ----- ticks and bars -------------------------------------------------------------------------------

    def _ticks(
        self, symbol: Any, date_from: Any, flags: Any, *, date_to: Any = None, count: int | None = None
    ) -> ndarray | None:
        if not self._enter():
            return None
        start = _unix_msc(date_from)
        end = None if date_to is None else _unix_msc(date_to)
        if (
            not isinstance(symbol, str)
            or start is None
            or (date_to is not None and end is None)
            or flags not in (C.COPY_TICKS_ALL, C.COPY_TICKS_INFO, C.COPY_TICKS_TRADE)
        ):
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        ticks = self.broker.ticks(symbol, start, to_msc=end, count=count, flags=flags)
        if ticks is None:
            self._fail(C.RES_E_NOT_FOUND)  # as symbol_info: a symbol the server does not have
            return None
        self._ok()
        return ticks

    def copy_ticks_from(
        self, symbol: str, date_from: datetime | int, count: int, flags: int
    ) -> ndarray | None:
        """The first `count` ticks stamped at or after `date_from` (in the server's time), of the kind
        `flags` (COPY_TICKS_ALL, _INFO or _TRADE: the simulator's ticks are all bid/ask ticks)."""
        if not _is_count(count):
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        return self._ticks(symbol, date_from, flags, count=count)

    def copy_ticks_range(
        self, symbol: str, date_from: datetime | int, date_to: datetime | int, flags: int
    ) -> ndarray | None:
        """The ticks stamped within [date_from, date_to] (in the server's time), of the kind `flags`."""
        return self._ticks(symbol, date_from, flags, date_to=date_to)

    def _rates(self, symbol: Any, timeframe: Any, *bounds: Any) -> ndarray | None:
        if not self._enter():
            return None
        if not isinstance(symbol, str) or timeframe not in TIMEFRAMES or any(b is None for b in bounds):
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        rates = self.broker.rates(symbol, timeframe)
        if rates is None:
            self._fail(C.RES_E_NOT_FOUND)
            return None
        self._ok()
        return rates

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> ndarray | None:
        """The last `count` bars opened at or before `date_from` (in the server's time), oldest first."""
        moment = _unix_msc(date_from)
        rates = self._rates(symbol, timeframe, moment, count if _is_count(count) else None)
        if rates is None or moment is None:
            return None
        upto = rates[rates["time"] * 1000 <= moment]
        return upto[max(0, len(upto) - count) :]

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> ndarray | None:
        """`count` bars from bar `start_pos` back (bar 0 is the current, still forming, one), oldest
        first."""
        valid = _is_count(start_pos) and _is_count(count)
        rates = self._rates(symbol, timeframe, start_pos if valid else None)
        if rates is None:
            return None
        end = len(rates) - start_pos
        return rates[max(0, end - count) : max(0, end)]

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> ndarray | None:
        """The bars opened within [date_from, date_to] (in the server's time), oldest first."""
        start, end = _unix_msc(date_from), _unix_msc(date_to)
        rates = self._rates(symbol, timeframe, start, end)
        if rates is None or start is None or end is None:
            return None
        opened = rates["time"] * 1000
        return rates[(opened >= start) & (opened <= end)]

    # ----- trading ------------------------------------------------------------------------------------

    def _calc_arguments(self, action: Any, symbol: Any, volume: Any, *prices: Any) -> bool:
        if not self._enter(needs_login=True):
            return False
        if (
            not isinstance(action, int)
            or not isinstance(symbol, str)
            or not all(_is_number(v) for v in (volume, *prices))
        ):
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return False
        if not self.broker.has_symbol(symbol):
            self._fail(C.RES_E_NOT_FOUND)
            return False
        return True

    def order_calc_margin(self, action: int, symbol: str, volume: float, price: float) -> float | None:
        """The margin (account currency) a position of `volume` lots opened at `price` would take: volume
        * contract size * price / leverage, converted. `action` is an ORDER_TYPE_* (the simulator's margin is
        the same for each side)."""
        if not self._calc_arguments(action, symbol, volume, price):
            return None
        if not C.ORDER_TYPE_BUY <= action <= C.ORDER_TYPE_SELL_STOP_LIMIT:
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        assert self._login is not None
        self._ok()
        return self.broker.calc_margin(self._login, symbol, float(volume), float(price))

    def order_calc_profit(
        self, action: int, symbol: str, volume: float, price_open: float, price_close: float
    ) -> float | None:
        """The profit (account currency) of a position of `volume` lots opened at `price_open` and closed
        at `price_close`; `action` is ORDER_TYPE_BUY or ORDER_TYPE_SELL. The same function values the open
        positions (TradePosition.profit) and the closing deals."""
        if not self._calc_arguments(action, symbol, volume, price_open, price_close):
            return None
        if action not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        assert self._login is not None
        self._ok()
        return self.broker.calc_profit(
            self._login, action, symbol, float(volume), float(price_open), float(price_close)
        )

    def _parse_request(self, request: Any) -> tuple[TradeRequest, frozenset[str]] | None:
        """The request dict as a TradeRequest, or None (and last_error) when the package would refuse it
        before sending: not a dict, an unknown key, or a value of the wrong type."""
        if not isinstance(request, Mapping):
            self._fail(C.RES_E_INVALID_PARAMS, "Invalid arguments")
            return None
        values: dict[str, Any] = {}
        for key, value in request.items():
            kinds = _REQUEST_FIELDS.get(key)
            # A flag rather than the isinstance() in the `if`, which would narrow `value` to object.
            valid = kinds is not None and not isinstance(value, bool) and isinstance(value, kinds)
            if not valid:
                self._fail(C.RES_E_INVALID_PARAMS, f'Invalid "{key}" argument')
                return None
            values[key] = float(value) if key in _FLOAT_FIELDS else value
        return TradeRequest(**values), frozenset(values)

    def order_check(self, request: Mapping[str, Any]) -> OrderCheckResult | None:
        if not self._enter(needs_login=True):
            return None
        assert self._login is not None
        parsed = self._parse_request(request)
        if parsed is None:
            return None
        self._ok()
        return self.broker.check(self._login, *parsed)

    def order_send(self, request: Mapping[str, Any]) -> OrderSendResult | None:
        """Send a trade request. None plus last_error() when it did not reach the server, or (after
        `sim_lose_next_reply`) when the server executed it but the answer was lost."""
        if not self._enter(needs_login=True):
            return None
        assert self._login is not None
        parsed = self._parse_request(request)
        if parsed is None:
            return None
        if not self._algo_trading:
            self._fail(C.RES_E_AUTO_TRADING_DISABLED)
            return None
        result, lost = self.broker.send(self._login, *parsed)
        if lost:
            self._fail(C.RES_E_INTERNAL_FAIL_TIMEOUT)
            return None
        self._ok()
        return result

    # ----- control surface ----------------------------------------------------------------------------

    def sim_set_quote(self, symbol: str, bid: float, ask: float) -> None:
        """Set the symbol's price and pin it there (the random walk stops for it) until
        `sim_release_quote`. Stops and stop-outs are checked at the new price at once."""
        self.broker.set_quote(symbol, bid, ask)

    def sim_release_quote(self, symbol: str) -> None:
        """Let the symbol's price walk again, starting from where it was pinned."""
        self.broker.release_quote(symbol)

    def sim_gap(self, symbol: str, percent: float) -> None:
        """Jump the price by `percent` (e.g. -2.5), keeping the spread; fires stops and stop-outs at the
        gapped price. A pinned price stays pinned at the new level."""
        self.broker.gap(symbol, percent)

    def sim_set_spread(self, symbol: str, points: int) -> None:
        """Set the spread in points (a blow-out: the bid stays, the ask moves)."""
        self.broker.set_spread(symbol, points)

    def sim_set_trade_mode(self, symbol: str, mode: int) -> None:
        """SYMBOL_TRADE_MODE_*: DISABLED makes order_send answer TRADE_RETCODE_MARKET_CLOSED."""
        self.broker.set_trade_mode(symbol, mode)

    def sim_price_path(self, symbol: str, points: Sequence[float], interval_seconds: float) -> None:
        """Script the symbol's bid: the first of `points` now, then one per `interval_seconds` of the
        broker's clock (ask = bid + the current spread), each a tick stamped at its own time, with stops
        and stop-outs checked at each. The price is pinned meanwhile and stays at the last point until
        `sim_release_quote` (or `sim_set_quote`, which also ends the path). A closed market holds the path
        until it opens."""
        self.broker.price_path(symbol, points, interval_seconds)

    def sim_market_closed(self, symbol: str, closed: bool) -> None:
        """Close the symbol's market (True) or open it again (False). Closed: no ticks (the quote and its
        time stay where they were), symbol_info().trade_mode is SYMBOL_TRADE_MODE_DISABLED, order_send and
        order_check answer TRADE_RETCODE_MARKET_CLOSED and no stop loss or take profit fires. A price set
        meanwhile (sim_gap, sim_set_quote: a weekend gap) is the opening tick, when stops fire at it."""
        self.broker.set_market_closed(symbol, closed)

    def sim_stop_quotes(self, symbol: str, stopped: bool = True) -> None:
        """Stale quotes while the symbol trades: its price and tick time stop where they are (no new
        ticks) and orders still fill at that price. `stopped=False` lets the price walk on (as
        `sim_release_quote`)."""
        self.broker.stop_quotes(symbol, stopped)

    def sim_set_server_offset(self, hours: float) -> None:
        """The trade server's clock is `hours` ahead of UTC (e.g. 2 or 3; 0, UTC, by default): tick, bar,
        position, order and deal times are stamped in its time, and the date bounds of history and
        copy_* calls are read in it, as on real servers."""
        try:
            self.broker.set_server_offset(hours)
        except (TypeError, ValueError) as exc:
            raise SimError(str(exc)) from None

    def sim_open_manual(self, login: int, symbol: str, order_type: int, volume: float) -> int:
        """Open a position on `login` as if by hand in the desktop terminal (magic 0, reason CLIENT, no
        comment), at market; returns its ticket."""
        return self.broker.open_manual(login, symbol, order_type, volume)

    def sim_close_manual(self, login: int, ticket: int) -> int:
        """Close a position of `login` by hand (reason CLIENT), at market; returns the closing deal."""
        return self.broker.close_manual(login, ticket)

    def sim_set_latency(self, ms: float, login: int | None = None) -> None:
        """Every call of every terminal (or only of terminals logged in to `login`) sleeps `ms` first."""
        self.broker.set_latency(ms, login)

    def sim_disconnect(self, seconds: float, login: int | None = None) -> None:
        """For `seconds` of broker clock, every call (of every terminal, or of those on `login`) fails:
        None/False with last_error RES_E_INTERNAL_FAIL_CONNECT; order_send sends nothing. 0 reconnects."""
        self.broker.disconnect(seconds, login)

    def sim_set_slippage(self, points: int) -> None:
        """Market orders fill `points` worse than the quote (negative: better)."""
        self.broker.set_slippage(points)

    def sim_set_requotes(self, count: int = 0, *, probability: float = 0.0) -> None:
        """The next `count` market orders are requoted (TRADE_RETCODE_REQUOTE, nothing filled); after
        those, each one is with `probability` (drawn from the broker's seeded generator)."""
        self.broker.set_requotes(count, probability=probability)

    def sim_set_partial_fill(self, fraction: float | None) -> None:
        """Market orders fill only `fraction` of their volume (rounded down to the volume step, at least
        the minimum) and answer TRADE_RETCODE_DONE_PARTIAL, until set to None."""
        self.broker.set_partial_fill(fraction)

    def sim_set_reject(self, retcode: int | None) -> None:
        """Valid trade requests are answered with `retcode` (e.g. TRADE_RETCODE_REJECT) and nothing is
        done, until set to None."""
        self.broker.set_reject(retcode)

    def sim_lose_next_reply(self, count: int = 1) -> None:
        """The next `count` order_send calls (on any terminal) are processed by the server as usual, but
        return None with last_error RES_E_INTERNAL_FAIL_TIMEOUT: the caller cannot know the outcome."""
        self.broker.lose_next_reply(count)

    def sim_set_algo_trading(self, enabled: bool) -> None:
        """This terminal's "Algo Trading" switch: off, order_send returns None with last_error
        RES_E_AUTO_TRADING_DISABLED and terminal_info().trade_allowed is False."""
        self._algo_trading = bool(enabled)


# Checked by mypy: a SimTerminal is what the gateway may be given in place of the MetaTrader5 module.
_FOLLOWS_THE_PROTOCOL: type[MetaTrader5Module] = SimTerminal
