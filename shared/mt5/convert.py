"""From a terminal's plain answers (dicts of numbers and text) to the dataclasses of
`shared.mt5.types`, refusing what is not a number where a number must be."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.mt5 import constants as mt5c
from shared.mt5.types import AccountSnapshot, Deal, OrderResult, Position, Quote, SymbolSpec

_DEAL_SIDES = {
    0: "buy",
    1: "sell",
    2: "balance",
    3: "credit",
    4: "charge",
    5: "correction",
    6: "bonus",
    7: "commission",
}


# Longer number text than any price, volume or amount has is not a number of the terminal's: refused
# before it is parsed or cached (the cache would keep it for the life of the worker).
_MAX_NUMBER_TEXT = 40


@functools.lru_cache(maxsize=65536, typed=True)
def _decimal_of(value: float | int | str) -> Decimal:
    # str() of a float is its shortest round-trip form, so 1.085 becomes Decimal("1.085") rather than
    # 1.08499999999999996447286321199499070644378662109375.
    number = Decimal(str(value))
    if not number.is_finite():
        # NaN or infinity is no price, volume or amount: a terminal bug, never something to book.
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _dec(value: Any) -> Decimal:
    # Cached: a sync converts ~150 numbers, most of them repeats (volumes, zero SL/TP and swap, one
    # current price per symbol), and a Decimal is immutable, so sharing one is safe. `value` is a float
    # (a terminal in this process) or the text of one (an RPyC terminal's JSON: see decode_answers).
    # ValueError / TypeError for anything else (Gateway._reply_of makes it a TerminalProtocolError).
    if value is None:
        return Decimal(0)
    kind = type(value)
    if kind is str:
        if len(value) > _MAX_NUMBER_TEXT:
            raise ValueError(f"a number of {len(value)} characters")
    elif kind is int:
        if not -(10**_MAX_NUMBER_TEXT) < value < 10**_MAX_NUMBER_TEXT:
            raise ValueError("an integer out of range")
    elif kind is not float:
        raise TypeError(f"a {kind.__name__} where a number belongs")
    return _decimal_of(value)


def _price_or_none(value: Any) -> Decimal | None:
    # MT5 uses 0.0 for "no SL/TP" (a float here, or its text from an RPyC terminal's JSON).
    price = _dec(value)
    return price if price else None


def _time(seconds: Any, msc: Any = None) -> datetime:
    if msc:
        return datetime.fromtimestamp(int(msc) / 1000, tz=UTC)
    return datetime.fromtimestamp(int(seconds or 0), tz=UTC)


def _side(order_type: int) -> str:
    return "buy" if order_type == mt5c.ORDER_TYPE_BUY else "sell"


def account_from(d: Mapping[str, Any]) -> AccountSnapshot:
    margin = _dec(d["margin"])
    return AccountSnapshot(
        login=int(d["login"]),
        server=str(d["server"]),
        currency=str(d["currency"]),
        balance=_dec(d["balance"]),
        equity=_dec(d["equity"]),
        margin=margin,
        margin_free=_dec(d["margin_free"]),
        margin_level=_dec(d["margin_level"]) if margin else None,
        leverage=int(d["leverage"]),
        profit=_dec(d["profit"]),
    )


def symbol_from(d: Mapping[str, Any]) -> SymbolSpec:
    trade_mode = d.get("trade_mode", mt5c.SYMBOL_TRADE_MODE_FULL)
    return SymbolSpec(
        name=str(d["name"]),
        digits=int(d["digits"]),
        point=_dec(d["point"]),
        contract_size=_dec(d["trade_contract_size"]),
        tick_value=_dec(d["trade_tick_value"]),
        # A terminal that reports no tick size (0) moves in points.
        tick_size=_dec(d.get("trade_tick_size") or d["point"]),
        volume_min=_dec(d["volume_min"]),
        volume_max=_dec(d["volume_max"]),
        volume_step=_dec(d["volume_step"]),
        stops_level_points=int(d.get("trade_stops_level", 0)),
        trade_allowed=trade_mode
        in (mt5c.SYMBOL_TRADE_MODE_FULL, mt5c.SYMBOL_TRADE_MODE_LONGONLY, mt5c.SYMBOL_TRADE_MODE_SHORTONLY),
    )


def quote_from(symbol: str, d: Mapping[str, Any]) -> Quote:
    return Quote(
        symbol=symbol, bid=_dec(d["bid"]), ask=_dec(d["ask"]), time=_time(d["time"], d.get("time_msc"))
    )


def position_from(d: Mapping[str, Any]) -> Position:
    return Position(
        ticket=int(d["ticket"]),
        identifier=int(d["identifier"]),
        symbol=str(d["symbol"]),
        side=_side(int(d["type"])),
        volume=_dec(d["volume"]),
        price_open=_dec(d["price_open"]),
        sl=_price_or_none(d["sl"]),
        tp=_price_or_none(d["tp"]),
        price_current=_dec(d["price_current"]),
        profit=_dec(d["profit"]),
        swap=_dec(d["swap"]),
        magic=int(d["magic"]),
        comment=str(d["comment"]),
        reason=int(d["reason"]),
        opened_at=_time(d["time"], d.get("time_msc")),
    )


def deal_from(d: Mapping[str, Any]) -> Deal:
    deal_type = int(d["type"])
    return Deal(
        ticket=int(d["ticket"]),
        order=int(d["order"]),
        position_id=int(d["position_id"]),
        symbol=str(d["symbol"]),
        side=_DEAL_SIDES.get(deal_type, f"type_{deal_type}"),
        entry=int(d["entry"]),
        volume=_dec(d["volume"]),
        price=_dec(d["price"]),
        profit=_dec(d["profit"]),
        commission=_dec(d["commission"]),
        swap=_dec(d["swap"]),
        magic=int(d["magic"]),
        comment=str(d["comment"]),
        reason=int(d["reason"]),
        time=_time(d["time"], d.get("time_msc")),
    )


def order_result_from(d: Mapping[str, Any]) -> OrderResult:
    return OrderResult(
        retcode=int(d["retcode"]),
        deal=int(d["deal"]),
        order=int(d["order"]),
        volume=_dec(d["volume"]),
        price=_dec(d["price"]),
        bid=_dec(d["bid"]),
        ask=_dec(d["ask"]),
        comment=str(d["comment"]),
        request_id=int(d["request_id"]),
    )
