"""Pre-trade risk, as pure functions: the account's order limits (shared.guards.settings.OrderLimits), its
halt and the market guard's blocked symbols, checked before an order is sent. Each problem names the
limit and the figures, as the owner reads it on the rejected trade.

Every count is of what the order *would make*: with `max_open_positions` 20 and 20 positions open, the
order would be the 21st and is refused; with 19 it is allowed. Exactly at a limit is allowed; past it is
not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, ROUND_UP, Decimal
from typing import Any

from shared.guards.settings import OrderLimits
from shared.mt5.types import SymbolSpec

_CENT = Decimal("0.01")


def _text(number: Decimal | int) -> str:
    """A figure as people write it: 6, not 6.00; 0.5, not 5E-1."""
    return format(Decimal(number).normalize(), "f") if isinstance(number, Decimal) else str(number)


def _above(number: Decimal, limit: Decimal) -> str:
    """`number` (above `limit`) to two places, or as many more as it takes to read above it: a risk of
    2.0002 % must not read "2% > 2%"."""
    for places in (_CENT, Decimal("0.0001")):
        shown = number.quantize(places, rounding=ROUND_HALF_EVEN)
        if shown > limit:
            return _text(shown)
    return _text(number.quantize(Decimal("0.0001"), rounding=ROUND_UP))


def needs_positions(limits: OrderLimits) -> bool:
    """Whether checking an order needs the terminal's open positions."""
    return limits.max_open_positions is not None or limits.max_total_lots is not None


def needs_equity(limits: OrderLimits, sl: Decimal | None) -> bool:
    """Whether checking an order needs the account's equity: only to size the risk of an SL (an order
    without one is refused outright while the limit is set)."""
    return limits.max_risk_percent_per_trade is not None and sl is not None


def needs_recent_orders(limits: OrderLimits) -> bool:
    return limits.max_orders_per_minute is not None


def risk_amount(*, price: Decimal, sl: Decimal, volume: Decimal, spec: SymbolSpec) -> Decimal:
    """What the order loses at its SL, in the account currency: the distance to the SL in ticks, times
    what one tick is worth on one lot (MT5's trade_tick_value, for a move of trade_tick_size), times the
    lots. On a forex pair the tick is the point: EURUSD 1.10000 → SL 1.09800 on 1 lot is 200 points of
    1 USD each, 200 USD."""
    return spec.value_of_move(abs(price - sl), volume)


def guard_problems(
    *,
    symbol: str,
    halted: bool,
    halted_reason: str | None,
    blocked_symbols: Mapping[str, Any],
    live_alert: str | None = None,
) -> list[str]:
    """Why the guards refuse any order on this account, or for this symbol, right now. An account whose
    positions an alert is about to close takes no new ones: they would be opened into the breach, and
    one opened after the close read the positions would outlive the close."""
    problems: list[str] = []
    if halted:
        problems.append(f"account halted: {halted_reason or 'by a guard'}; resume it first")
    if live_alert is not None:
        problems.append(f"a guard is closing the account's positions: {live_alert}")
    block = blocked_symbols.get(symbol)
    if block is not None:
        reason = block.get("reason") if isinstance(block, Mapping) else None
        problems.append(f"{symbol} blocked by the market guard: {reason or 'no reason given'}")
    return problems


def order_limit_problems(
    *,
    symbol: str,
    volume: Decimal,
    price: Decimal,
    sl: Decimal | None,
    limits: OrderLimits,
    spec: SymbolSpec,
    open_positions: Iterable[tuple[str, Decimal]] | None = None,
    orders_last_minute: int | None = None,
    equity: Decimal | None = None,
) -> list[str]:
    """Why the account's order limits refuse this order, or [] when they allow it.

    `open_positions` are (symbol, lots) of every position open on the terminal, those opened outside
    TradeGuard included; `orders_last_minute` the account's orders sent in the last 60 s, this one not
    counted; `equity` the account's. Each is needed only while the limit that reads it is set
    (`needs_positions`, `needs_recent_orders`, `needs_equity`)."""
    problems: list[str] = []
    if limits.symbols is not None and symbol not in limits.symbols:
        problems.append(f"{symbol} is not in the allowed symbols (symbols)")
    if limits.max_lots_per_order is not None and volume > limits.max_lots_per_order:
        problems.append(
            f"volume {_text(volume)} lots > {_text(limits.max_lots_per_order)} (max_lots_per_order)"
        )
    if needs_positions(limits):
        if open_positions is None:
            raise ValueError(
                "the open positions are needed while max_open_positions or max_total_lots is set"
            )
        positions = list(open_positions)
        if limits.max_open_positions is not None and len(positions) + 1 > limits.max_open_positions:
            problems.append(
                f"{len(positions) + 1} open positions > {limits.max_open_positions} (max_open_positions)"
            )
        total = sum((lots for _, lots in positions), Decimal(0)) + volume
        if limits.max_total_lots is not None and total > limits.max_total_lots:
            problems.append(f"total {_text(total)} lots > {_text(limits.max_total_lots)} (max_total_lots)")
    if limits.max_orders_per_minute is not None:
        if orders_last_minute is None:
            raise ValueError("the orders of the last minute are needed while max_orders_per_minute is set")
        if orders_last_minute + 1 > limits.max_orders_per_minute:
            problems.append(
                f"{orders_last_minute + 1} orders in the last minute > {limits.max_orders_per_minute} "
                "(max_orders_per_minute)"
            )
    maximum = limits.max_risk_percent_per_trade
    if maximum is not None:
        if sl is None:
            problems.append("no SL: max_risk_percent_per_trade needs one")
        elif equity is None:
            raise ValueError("the equity is needed while max_risk_percent_per_trade is set")
        elif equity <= 0:
            problems.append(
                f"equity {_text(equity)} leaves no room for any risk (max_risk_percent_per_trade)"
            )
        else:
            amount = risk_amount(price=price, sl=sl, volume=volume, spec=spec)
            percent = amount / equity * 100
            if percent > maximum:
                problems.append(
                    f"risk {_above(percent, maximum)}% of equity > {_text(maximum)}% "
                    f"(max_risk_percent_per_trade): {_text(amount.quantize(_CENT))} at the SL, "
                    f"equity {_text(equity)}"
                )
    return problems
