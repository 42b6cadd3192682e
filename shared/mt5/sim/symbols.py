"""The simulated broker's symbols: `SimSymbol` defines one (its contract and its price walk), and
`DEFAULT_SYMBOLS` are those a broker trades unless told otherwise.

Not to be confused with `shared.mt5.types.SymbolSpec`, what the gateway reads from any terminal's
`symbol_info()` and hands the rest of TradeGuard.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.mt5 import constants as C

__all__ = ["DEFAULT_SYMBOLS", "SimSymbol"]


@dataclass(frozen=True)
class SimSymbol:
    """One tradable symbol of the simulated broker and the parameters of its price walk."""

    name: str
    description: str
    digits: int
    contract_size: float
    currency_base: str
    currency_profit: str
    currency_margin: str
    start_bid: float
    spread: int  # points
    volatility: float  # standard deviation of the relative price change over one second
    calc_mode: int = C.SYMBOL_CALC_MODE_FOREX
    stops_level: int = 10  # points: the closest an SL/TP may be to the market price
    freeze_level: int = 0
    volume_min: float = 0.01
    volume_max: float = 100.0
    volume_step: float = 0.01
    path: str = ""

    @property
    def point(self) -> float:
        return round(10.0**-self.digits, self.digits)


DEFAULT_SYMBOLS: tuple[SimSymbol, ...] = (
    SimSymbol(
        "EURUSD", "Euro vs US Dollar", 5, 100_000.0, "EUR", "USD", "EUR", 1.08500, 10, 3e-5,
        path="Forex\\Majors\\EURUSD",
    ),
    SimSymbol(
        "GBPUSD", "Great Britain Pound vs US Dollar", 5, 100_000.0, "GBP", "USD", "GBP", 1.27000, 14, 3.5e-5,
        path="Forex\\Majors\\GBPUSD",
    ),
    SimSymbol(
        "USDJPY", "US Dollar vs Japanese Yen", 3, 100_000.0, "USD", "JPY", "USD", 150.000, 12, 3e-5,
        path="Forex\\Majors\\USDJPY",
    ),
    # Gold trades in 100-ounce lots; its margin follows the account leverage like the currency pairs.
    SimSymbol(
        "XAUUSD", "Gold vs US Dollar", 2, 100.0, "XAU", "USD", "USD", 2350.00, 30, 5e-5,
        calc_mode=C.SYMBOL_CALC_MODE_CFDLEVERAGE, path="Metals\\XAUUSD",
    ),
)  # fmt: skip
