"""The equity chart: equity and balance over time, the drawdown below it, and where the guards warned,
alerted and closed. Pure: plain data in (downsampled points, markers, the currency, a title), the image's
bytes out; shared.insight.chart_queries loads the data, shared.insight.chart_drawing draws it.

A long range is downsampled first (`downsample`): one bucket per pixel column of the plot at most, each
keeping its lowest and highest equity, so a spike of one sync survives a year of history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, SupportsFloat

ImageFormat = Literal["png", "svg"]
FORMATS: tuple[ImageFormat, ...] = ("png", "svg")
MEDIA_TYPES: dict[ImageFormat, str] = {"png": "image/png", "svg": "image/svg+xml"}

# 1200 x 700 pixels, exactly: 12 x 7 inches at 100 dots per inch (and never bbox_inches="tight", which
# would crop it to another size).
WIDTH_PX, HEIGHT_PX, DPI = 1200, 700, 100
# Where the panels stand, in fractions of the figure (left, bottom, width, height): fixed, so the image
# is laid out the same whatever the data, and tests can find each panel's pixels.
EQUITY_PANEL = (0.08, 0.37, 0.89, 0.50)
DRAWDOWN_PANEL = (0.08, 0.10, 0.89, 0.22)
# The plot is about 1,070 pixels wide: one bucket per pixel column at most.
MAX_BUCKETS = 1000

# Each series and each kind of marker its own colour (the tests look for them in the image's pixels).
COLOURS = {
    "equity": "#1f77b4",
    "balance": "#2ca02c",
    "drawdown": "#fcbba1",  # the shaded area
    "drawdown_edge": "#cb181d",
    "warning": "#ff7f00",
    "alert": "#e6007e",
    "close": "#6a3d9a",
}
MARKER_KINDS = ("warning", "alert", "close")
_MARKER_STYLE = {
    "warning": ("^", "Guard warning"),
    "alert": ("D", "Alert raised"),
    "close": ("X", "Position closed"),
}
NO_DATA_TEXT = "No data in this range"


class Point(Protocol):
    """What `downsample` reads of a point (shared.insight.snapshots.SeriesPoint is one)."""

    @property
    def at(self) -> datetime: ...
    @property
    def equity(self) -> SupportsFloat: ...
    @property
    def equity_low(self) -> SupportsFloat: ...
    @property
    def equity_high(self) -> SupportsFloat: ...
    @property
    def balance(self) -> SupportsFloat: ...
    @property
    def drawdown_percent(self) -> SupportsFloat: ...


@dataclass
class Bucket:
    """The points of one slice of the time range: the lowest and the highest equity with when each was
    seen, and the last point's equity and balance, the deepest drawdown (percent, positive)."""

    low_at: datetime
    low: float
    high_at: datetime
    high: float
    last_at: datetime
    equity: float
    balance: float
    drawdown_percent: float
    count: int = 1


@dataclass(frozen=True)
class Marker:
    """Something to mark on the time axis: a guard warning, an alert raised, a position closed."""

    at: datetime
    kind: str  # one of MARKER_KINDS


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def downsample(
    points: Iterable[Point], start: datetime, end: datetime, buckets: int = MAX_BUCKETS
) -> list[Bucket]:
    """`points` (oldest first) in at most `buckets` equal slices of [start, end], each keeping the lowest
    and highest equity it saw, the last equity and balance, and the deepest drawdown. Streams: holds one
    Bucket per non-empty slice, however many points. A point before the range counts in the first slice,
    one after it in the last; an empty slice is left out."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    origin = _utc(start)
    span = (_utc(end) - origin).total_seconds()
    width = span / buckets if span > 0 else 0.0
    result: list[Bucket] = []
    # The open bucket, in locals (a point that stays in it costs two comparisons and a few stores); the
    # figures stay as given (Decimal) until the bucket is closed.
    boundary: datetime | None = None  # where the open bucket ends; None: no bucket open yet
    index = -1
    low = high = drawdown = None
    low_at = high_at = origin
    last: Point | None = None
    count = 0

    def close() -> None:
        assert last is not None and low is not None and high is not None and drawdown is not None
        result.append(
            Bucket(
                low_at=low_at,
                low=float(low),
                high_at=high_at,
                high=float(high),
                last_at=_utc(last.at),
                equity=float(last.equity),
                balance=float(last.balance),
                drawdown_percent=float(drawdown),
                count=count,
            )
        )

    for point in points:
        at = point.at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        if boundary is not None and at < boundary:
            if point.equity_low < low:  # type: ignore[operator]
                low, low_at = point.equity_low, at
            if point.equity_high > high:  # type: ignore[operator]
                high, high_at = point.equity_high, at
            if point.drawdown_percent > drawdown:  # type: ignore[operator]
                drawdown = point.drawdown_percent
            last = point
            count += 1
            continue
        # A new bucket: which one, and where it ends.
        new_index = 0 if width <= 0 else min(max(int((at - origin).total_seconds() / width), 0), buckets - 1)
        if last is not None:
            close()
        index = new_index
        boundary = (
            datetime.max.replace(tzinfo=UTC)
            if width <= 0 or index == buckets - 1
            else origin + timedelta(seconds=width * (index + 1))
        )
        low, low_at, high, high_at = point.equity_low, at, point.equity_high, at
        drawdown, last, count = point.drawdown_percent, point, 1
    if last is not None:
        close()
    return result


def chart_range(
    start: datetime | None,
    end: datetime | None,
    first_at: datetime | None,
    last_at: datetime | None,
    now: datetime,
) -> tuple[datetime, datetime]:
    """The time axis: the range asked for; where an end was not asked, what the data covers, else now
    and a day before it; a minute around a single point. Never empty."""
    high = end or last_at or now
    low = start or first_at or high - timedelta(days=1)
    if high <= low:
        if start is None and end is None:  # a single point: a minute around it
            low, high = low - timedelta(seconds=30), high + timedelta(seconds=30)
        elif end is None:  # from at the last point, or later than now
            high = low + timedelta(days=1)
        else:
            low = high - timedelta(days=1)
    return _utc(low), _utc(high)
