"""What the gateway hands the rest of the code: frozen dataclasses with Decimal prices, volumes and money,
UTC-aware datetimes, sides as buy/sell.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.mt5 import constants as mt5c


@dataclass(frozen=True)
class AccountSnapshot:
    login: int
    server: str
    currency: str
    balance: Decimal
    equity: Decimal
    margin: Decimal
    margin_free: Decimal
    margin_level: Decimal | None  # percent; None when no margin is used (MT5 reports 0, not infinity)
    leverage: int
    profit: Decimal


@dataclass(frozen=True)
class SymbolSpec:
    name: str
    digits: int
    point: Decimal
    contract_size: Decimal
    # What a price move of `tick_size` is worth on one lot, in the account currency (MT5's
    # trade_tick_value and trade_tick_size). The tick is the point on most symbols, not on all (an index
    # quoted to 0.01 may move in steps of 0.25).
    tick_value: Decimal
    tick_size: Decimal
    volume_min: Decimal
    volume_max: Decimal
    volume_step: Decimal
    stops_level_points: int
    trade_allowed: bool  # new positions may be opened (in at least one direction)

    def value_of_move(self, distance: Decimal, volume: Decimal) -> Decimal:
        """What a price move of `distance` is worth on `volume` lots, in the account currency: MT5's
        trade_tick_value per trade_tick_size (never 0: `convert.symbol_from` takes the point when a
        terminal reports none)."""
        return distance / self.tick_size * self.tick_value * volume

    @property
    def pip(self) -> Decimal:
        return pip_size(self.digits, self.point)


def pip_size(digits: int, point: Decimal) -> Decimal:
    """A pip is 10 points on fractional (3- and 5-digit) quotes — USDJPY 0.001 -> 0.01, EURUSD 0.00001 ->
    0.0001 — and 1 point otherwise (a 2-digit XAUUSD quote: 0.01; a 4-digit EURUSD quote: 0.0001), so
    that tolerances written in pips mean the same thing whatever the broker's quoting precision."""
    return point * 10 if digits in (3, 5) else point


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    time: datetime

    @property
    def spread(self) -> Decimal:
        return self.ask - self.bid


@dataclass(frozen=True)
class Position:
    ticket: int
    identifier: int
    symbol: str
    side: str  # "buy" | "sell"
    volume: Decimal
    price_open: Decimal
    sl: Decimal | None
    tp: Decimal | None
    price_current: Decimal
    profit: Decimal
    swap: Decimal
    magic: int
    comment: str
    reason: int  # POSITION_REASON_*: 0 client (by hand), 1 mobile, 2 web, 3 expert (an API like ours)
    opened_at: datetime


@dataclass(frozen=True)
class Deal:
    ticket: int
    order: int
    position_id: int
    symbol: str
    side: str  # "buy" | "sell" for trades; "balance", "credit", ... for the account's other deals
    entry: int  # DEAL_ENTRY_*: 0 in, 1 out, 2 in/out (reversal), 3 out by
    volume: Decimal
    price: Decimal
    profit: Decimal
    commission: Decimal
    swap: Decimal
    magic: int
    comment: str
    reason: int  # DEAL_REASON_*: 0 client, 3 expert, 4 SL, 5 TP, 6 stop-out, ...
    time: datetime


@dataclass(frozen=True)
class AccountState:
    """One read of an account: its figures, open positions, and recent deals (`Gateway.read_account`)."""

    account: AccountSnapshot
    positions: list[Position]
    deals: list[Deal]


@dataclass(frozen=True)
class OrderResult:
    retcode: int
    deal: int
    order: int
    volume: Decimal
    price: Decimal
    bid: Decimal
    ask: Decimal
    comment: str
    request_id: int

    @property
    def done(self) -> bool:
        return self.retcode in (mt5c.TRADE_RETCODE_DONE, mt5c.TRADE_RETCODE_DONE_PARTIAL)
