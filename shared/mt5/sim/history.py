"""The simulated server's tick history and the bars built from it.

`TickHistory` keeps the last `capacity` ticks of one symbol (a ring buffer: the oldest go first) in UTC
milliseconds, as the broker records them when its prices move. `bars` is a pure function: the OHLC bars of
one timeframe built from ticks, the way MT5 charts build them (from the bid: SYMBOL_CHART_MODE_BID).
"""

from __future__ import annotations

from typing import Any

import numpy

from shared.mt5 import constants as C

__all__ = ["DEFAULT_TICK_CAPACITY", "TIMEFRAMES", "TickHistory", "bar_open_times", "bars"]

# Enough for a day of a busy feed, few enough to stay small in memory (about 3 MB a symbol).
DEFAULT_TICK_CAPACITY = 100_000

_MINUTE = 60
_HOUR = 3600
_WEEK = 7 * 86_400
# MT5's weekly bars open on Sunday 00:00; the epoch (1970-01-01) was a Thursday, three days before one.
_FIRST_SUNDAY = 3 * 86_400

# Every TIMEFRAME_* constant of the package: minutes below 0x4000, hours with 0x4000 (D1 is 24 hours),
# then the week and the month.
TIMEFRAMES: frozenset[int] = frozenset(
    value for name, value in vars(C).items() if name.startswith("TIMEFRAME_") and isinstance(value, int)
)


class TickHistory:
    """The last `capacity` ticks of a symbol: (time_msc UTC, bid, ask, flags), in time order. Times never
    go back: a tick stamped before the last one (a clock stepped back) takes the last one's time."""

    def __init__(self, capacity: int = DEFAULT_TICK_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._time = numpy.zeros(capacity, dtype=numpy.int64)
        self._bid = numpy.zeros(capacity, dtype=numpy.float64)
        self._ask = numpy.zeros(capacity, dtype=numpy.float64)
        self._flags = numpy.zeros(capacity, dtype=numpy.uint32)
        self._next = 0  # where the next tick goes
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, time_msc: int, bid: float, ask: float, flags: int) -> None:
        last = self.last()
        if last is not None and time_msc < last[0]:
            time_msc = last[0]
        i = self._next
        self._time[i], self._bid[i], self._ask[i], self._flags[i] = time_msc, bid, ask, flags
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def last(self) -> tuple[int, float, float, int] | None:
        if not self._size:
            return None
        i = (self._next - 1) % self.capacity
        return int(self._time[i]), float(self._bid[i]), float(self._ask[i]), int(self._flags[i])

    def columns(self) -> tuple[numpy.ndarray[Any, Any], ...]:
        """(time_msc, bid, ask, flags), oldest first (copies)."""
        start = (self._next - self._size) % self.capacity
        order = (numpy.arange(self._size) + start) % self.capacity
        return self._time[order], self._bid[order], self._ask[order], self._flags[order]


def bar_open_times(seconds: numpy.ndarray[Any, Any], timeframe: int) -> numpy.ndarray[Any, Any]:
    """The open time of the bar of `timeframe` that each time (seconds, in the server's time) falls in."""
    if timeframe == C.TIMEFRAME_MN1:
        months = seconds.astype("datetime64[s]").astype("datetime64[M]")
        return months.astype("datetime64[s]").astype(numpy.int64)
    if timeframe == C.TIMEFRAME_W1:
        return (seconds - _FIRST_SUNDAY) // _WEEK * _WEEK + _FIRST_SUNDAY
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"not a TIMEFRAME_* value: {timeframe!r}")
    period = (timeframe & 0x3FFF) * _HOUR if timeframe & 0x4000 else timeframe * _MINUTE
    return seconds // period * period


def bars(
    time_msc: numpy.ndarray[Any, Any],
    bid: numpy.ndarray[Any, Any],
    ask: numpy.ndarray[Any, Any],
    *,
    timeframe: int,
    point: float,
    offset_seconds: int = 0,
) -> list[tuple[int, float, float, float, float, int, int, int]]:
    """The bars of `timeframe` built from ticks (in time order, UTC milliseconds), oldest first: (open
    time in the server's time, open, high, low, close, tick volume, spread, real volume). OHLC follow
    the bid; the tick volume counts the ticks; the spread is the bar's lowest, in points, as MT5 keeps it;
    a simulated broker trades no exchange volume."""
    if not len(time_msc):
        return []
    opens = bar_open_times(time_msc // 1000 + offset_seconds, timeframe)
    starts = numpy.flatnonzero(numpy.r_[True, opens[1:] != opens[:-1]])
    ends = numpy.r_[starts[1:], len(opens)]
    spreads = numpy.rint((ask - bid) / point).astype(numpy.int64)
    return list(
        zip(
            opens[starts].tolist(),
            bid[starts].tolist(),
            numpy.maximum.reduceat(bid, starts).tolist(),
            numpy.minimum.reduceat(bid, starts).tolist(),
            bid[ends - 1].tolist(),
            (ends - starts).tolist(),
            numpy.minimum.reduceat(spreads, starts).tolist(),
            [0] * len(starts),
            strict=True,
        )
    )
