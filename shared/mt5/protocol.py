"""The terminal protocol: the functions of the official `MetaTrader5` package that TradeGuard calls or its
simulated terminal implements, with the signatures the package documents. Written once, here.

Everything behind the gateway follows it: the package itself (`mt5://`), the package in a remote Python
(`mt5linux://host:port`), and TradeGuard's `SimTerminal` (`sim://`, in-process or over RPyC). The
simulator's MetaTrader5 stand-in (`shared.mt5.sim.install`) exports exactly `FUNCTIONS`; mypy holds
`SimTerminal` to `MetaTrader5Module`; tests/unit/test_terminal_protocol.py holds the simulator's signatures
to these, and every function the gateway calls to this list.

Names, parameters and defaults are those of the official documentation (mql5.com, "Python Integration"), which
match the function list in the package's own docstrings (MetaTrader5 5.0.6231, the wheel `constants` was
copied from). Return types are the named tuples of `structs`, as the package returns them, and for ticks and
bars numpy structured arrays with the official fields (`shared.mt5.arrays`). A function that fails answers
None (False for initialize, login and symbol_select) and sets `last_error()`; `shutdown` always answers None.

Not listed, because TradeGuard neither calls nor simulates them: market_book_add, market_book_get and
market_book_release (the order book).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

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
)

if TYPE_CHECKING:
    from numpy import ndarray

__all__ = ["FUNCTIONS", "MetaTrader5Module"]

# A history bound: a datetime (naive ones are taken as UTC, as MetaQuotes recommends) or unix seconds.
HistoryBound = datetime | int


class MetaTrader5Module(Protocol):
    """What an object that behaves like the official `MetaTrader5` module offers: the module itself, or an
    object with these methods (a `SimTerminal`)."""

    # ----- connection -----------------------------------------------------------------------------------

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
        """Connect to the terminal (starting it from `path` if need be), logging in when `login` is
        given; `timeout` in milliseconds."""
        ...

    def login(
        self, login: int, password: str | None = None, server: str | None = None, timeout: int | None = None
    ) -> bool:
        """Log the connected terminal in to another account."""
        ...

    def shutdown(self) -> None: ...

    def last_error(self) -> tuple[int, str]:
        """(code, description) of the last call: RES_S_OK after a success."""
        ...

    def version(self) -> tuple[int, int, str] | None:
        """(terminal version, build, build date)."""
        ...

    def terminal_info(self) -> TerminalInfo | None: ...

    def account_info(self) -> AccountInfo | None: ...

    # ----- symbols --------------------------------------------------------------------------------------

    def symbols_total(self) -> int | None: ...

    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...] | None: ...

    def symbol_info(self, symbol: str) -> SymbolInfo | None: ...

    def symbol_info_tick(self, symbol: str) -> Tick | None: ...

    def symbol_select(self, symbol: str, enable: bool | None = None) -> bool:
        """Show the symbol in Market Watch, or hide it when `enable` is false."""
        ...

    # ----- ticks and bars (numpy structured arrays: shared.mt5.arrays) -----------------------------------
    # All parameters are required and unnamed in the documentation; times are the trade server's.

    def copy_ticks_from(self, symbol: str, date_from: HistoryBound, count: int, flags: int) -> ndarray | None:
        """`count` ticks from `date_from` on, of the COPY_TICKS_* kind `flags`."""
        ...

    def copy_ticks_range(
        self, symbol: str, date_from: HistoryBound, date_to: HistoryBound, flags: int
    ) -> ndarray | None: ...

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: HistoryBound, count: int
    ) -> ndarray | None:
        """`count` bars of TIMEFRAME_* `timeframe` opened at or before `date_from`."""
        ...

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> ndarray | None:
        """`count` bars from index `start_pos` back (0 is the current bar)."""
        ...

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: HistoryBound, date_to: HistoryBound
    ) -> ndarray | None: ...

    # ----- positions and orders -------------------------------------------------------------------------

    def positions_total(self) -> int | None: ...

    # The package refuses unnamed arguments here ("Unnamed arguments not allowed"): keywords only.
    def positions_get(
        self, *, symbol: str | None = None, group: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...] | None: ...

    def orders_total(self) -> int | None: ...

    def orders_get(
        self, *, symbol: str | None = None, group: str | None = None, ticket: int | None = None
    ) -> tuple[TradeOrder, ...] | None: ...

    # ----- history --------------------------------------------------------------------------------------

    def history_orders_total(self, date_from: HistoryBound, date_to: HistoryBound) -> int | None: ...

    def history_orders_get(
        self,
        date_from: HistoryBound | None = None,
        date_to: HistoryBound | None = None,
        group: str | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeOrder, ...] | None:
        """Orders set up within [date_from, date_to] (optionally of a symbol group), or the one with
        `ticket`, or those of the position `position`."""
        ...

    def history_deals_total(self, date_from: HistoryBound, date_to: HistoryBound) -> int | None: ...

    def history_deals_get(
        self,
        date_from: HistoryBound | None = None,
        date_to: HistoryBound | None = None,
        group: str | None = None,
        *,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeDeal, ...] | None:
        """Deals done within [date_from, date_to] (optionally of a symbol group), or the one with
        `ticket`, or those of the position `position`."""
        ...

    # ----- trading --------------------------------------------------------------------------------------

    def order_calc_margin(self, action: int, symbol: str, volume: float, price: float) -> float | None:
        """The margin, in the account currency, a trade of `volume` lots at `price` needs."""
        ...

    def order_calc_profit(
        self, action: int, symbol: str, volume: float, price_open: float, price_close: float
    ) -> float | None:
        """The profit, in the account currency, of a trade opened at `price_open`, closed at `price_close`."""
        ...

    def order_check(self, request: dict[str, Any]) -> OrderCheckResult | None: ...

    def order_send(self, request: dict[str, Any]) -> OrderSendResult | None: ...


# The protocol's functions by name, in the order above: what the simulator's module stand-in exports.
FUNCTIONS: tuple[str, ...] = tuple(
    name for name, member in vars(MetaTrader5Module).items() if callable(member) and not name.startswith("_")
)
