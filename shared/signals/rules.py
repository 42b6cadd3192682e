"""The rules a signal must follow, as pure functions: where its stops sit, when it has expired."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from shared.models import Side, Signal, SignalStatus


def price_level_errors(
    side: str, price: Decimal | None, sl: Decimal | None, tp: Decimal | None
) -> dict[str, list[str]]:
    """Where stop-loss and take-profit sit relative to the entry price, by field name.

    For a buy the stop is below and the target above (sl < price < tp); for a sell the reverse. Each
    comparison is made only when both of its sides are given.
    """
    errors: dict[str, list[str]] = {}

    def add(field_name: str, message: str) -> None:
        errors.setdefault(field_name, []).append(message)

    buy = side == Side.BUY.value
    if price is not None and sl is not None:
        if buy and not sl < price:
            add("sl", "for a buy, sl must be below price")
        if not buy and not sl > price:
            add("sl", "for a sell, sl must be above price")
    if price is not None and tp is not None:
        if buy and not tp > price:
            add("tp", "for a buy, tp must be above price")
        if not buy and not tp < price:
            add("tp", "for a sell, tp must be below price")
    if price is None and sl is not None and tp is not None:
        if buy and not sl < tp:
            add("sl", "for a buy, sl must be below tp")
        if not buy and not sl > tp:
            add("sl", "for a sell, sl must be above tp")
    return errors


def is_expired(signal: Signal, now: datetime) -> bool:
    return signal.status == SignalStatus.EXPIRED or (
        signal.status == SignalStatus.PENDING and signal.expires_at <= now
    )
