"""The rules of execution, as pure functions: what an order_send retcode means for the trade, how the order
names its trade, and the checks an order must pass before it is sent.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal

from shared.models import Side
from shared.mt5.constants import (
    TRADE_RETCODE_CONNECTION,
    TRADE_RETCODE_DONE,
    TRADE_RETCODE_DONE_PARTIAL,
    TRADE_RETCODE_ERROR,
    TRADE_RETCODE_PLACED,
    TRADE_RETCODE_PRICE_CHANGED,
    TRADE_RETCODE_PRICE_OFF,
    TRADE_RETCODE_REQUOTE,
    TRADE_RETCODE_TIMEOUT,
    TRADE_RETCODE_TOO_MANY_REQUESTS,
)
from shared.mt5.types import SymbolSpec


class Outcome(enum.Enum):
    FILLED = "filled"
    PARTIAL = "partial"
    NEW_PRICE = "new_price"  # requote / price changed: retry at a fresh price
    UNKNOWN = "unknown"  # the server may or may not have executed it: look before resending
    REJECTED = "rejected"


def classify_retcode(retcode: int) -> Outcome:
    """What an order_send retcode means for the trade."""
    if retcode == TRADE_RETCODE_DONE:
        return Outcome.FILLED
    if retcode == TRADE_RETCODE_DONE_PARTIAL:
        return Outcome.PARTIAL
    if retcode in (TRADE_RETCODE_REQUOTE, TRADE_RETCODE_PRICE_CHANGED, TRADE_RETCODE_PRICE_OFF):
        return Outcome.NEW_PRICE
    if retcode in (
        TRADE_RETCODE_PLACED,  # accepted, executes later (exchange execution): the order exists
        TRADE_RETCODE_TIMEOUT,
        TRADE_RETCODE_CONNECTION,
        TRADE_RETCODE_ERROR,
        TRADE_RETCODE_TOO_MANY_REQUESTS,
    ):
        return Outcome.UNKNOWN
    return Outcome.REJECTED  # TRADE_RETCODE_REJECT, NO_MONEY, INVALID_STOPS, MARKET_CLOSED, ...


def trade_comment(trade_id: int) -> str:
    """Names the trade in the order's comment. Short: some brokers keep only 16 characters."""
    return f"TG-{trade_id}"


def pre_trade_problems(
    *,
    side: str,
    volume: Decimal,
    sl: Decimal | None,
    tp: Decimal | None,
    bid: Decimal,
    ask: Decimal,
    rules: SymbolSpec,
    expires_at: datetime,
    now: datetime,
) -> list[str]:
    """Why this order must not be sent, or [] when it may."""
    problems: list[str] = []
    if now >= expires_at:
        problems.append("signal expired before it could be executed")
    if not rules.trade_allowed:
        problems.append(f"{rules.name} is not tradeable now")
    if volume < rules.volume_min or volume > rules.volume_max:
        problems.append(f"volume {volume} outside {rules.volume_min}..{rules.volume_max}")
    elif rules.volume_step > 0 and (volume - rules.volume_min) % rules.volume_step != 0:
        problems.append(f"volume {volume} is not a multiple of the step {rules.volume_step}")
    # A buy opens at the ask and is closed at the bid, so its stops are measured from the bid; a sell
    # the other way round. They must sit beyond the broker's stops level.
    reference = bid if side == Side.BUY.value else ask
    gap = rules.point * rules.stops_level_points
    if sl is not None:
        if side == Side.BUY.value and not sl < reference - gap:
            problems.append(f"sl {sl} must be below {reference - gap} (bid less the stops level)")
        if side == Side.SELL.value and not sl > reference + gap:
            problems.append(f"sl {sl} must be above {reference + gap} (ask plus the stops level)")
    if tp is not None:
        if side == Side.BUY.value and not tp > reference + gap:
            problems.append(f"tp {tp} must be above {reference + gap} (bid plus the stops level)")
        if side == Side.SELL.value and not tp < reference - gap:
            problems.append(f"tp {tp} must be below {reference - gap} (ask less the stops level)")
    return problems
