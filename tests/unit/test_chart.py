"""The equity chart (shared.insight.chart): the downsampling keeps every extreme, and the image is drawn
as it should be, checked on its decoded pixels: its size, each series' colour in its panel, each kind of
marker's colour when there are markers and nowhere when there are none. Drawn from several threads at
once, it comes out the same."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from PIL import Image

from shared.insight import chart, chart_drawing

T0 = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Point:
    at: datetime
    equity: Decimal
    equity_low: Decimal
    equity_high: Decimal
    balance: Decimal
    drawdown_percent: Decimal


def point(at: datetime, equity: float, *, low: float | None = None, high: float | None = None, **kw) -> Point:
    equity_ = Decimal(str(equity))
    return Point(
        at=at,
        equity=equity_,
        equity_low=Decimal(str(low)) if low is not None else equity_,
        equity_high=Decimal(str(high)) if high is not None else equity_,
        balance=Decimal(str(kw.get("balance", 10_000))),
        drawdown_percent=Decimal(str(kw.get("drawdown", 0))),
    )


def flat(count: int, *, step: timedelta = timedelta(seconds=10), equity: float = 10_000) -> list[Point]:
    return [point(T0 + i * step, equity + (i % 7) * 0.5) for i in range(count)]


# --- downsampling ---------------------------------------------------------------------------------


def test_a_single_point_spike_in_100000_points_survives_the_downsampling():
    points = flat(100_000)
    points[43_210] = point(points[43_210].at, 5_000, drawdown=50)  # one sync, far below
    points[77_777] = point(points[77_777].at, 20_000)  # one sync, far above
    end = points[-1].at + timedelta(seconds=10)

    buckets = chart.downsample(points, T0, end, buckets=1000)

    assert len(buckets) == 1000 and sum(bucket.count for bucket in buckets) == 100_000
    lowest = min(buckets, key=lambda bucket: bucket.low)
    highest = max(buckets, key=lambda bucket: bucket.high)
    assert (lowest.low, lowest.low_at) == (5_000.0, points[43_210].at)
    assert (highest.high, highest.high_at) == (20_000.0, points[77_777].at)
    assert max(bucket.drawdown_percent for bucket in buckets) == 50.0
    # Every other bucket stays within the flat line's own range.
    others = [bucket for bucket in buckets if bucket not in (lowest, highest)]
    assert all(10_000 <= bucket.low <= bucket.high <= 10_003 for bucket in others)


def test_each_bucket_keeps_its_extremes_the_last_equity_and_balance_and_the_deepest_drawdown():
    # Rolled-up rows carry their own extremes (equity_min / equity_max) around their last equity.
    points = [
        point(T0, 100, low=90, high=120, balance=100, drawdown=2),
        point(T0 + timedelta(minutes=1), 105, low=80, high=110, balance=101, drawdown=9),
        point(T0 + timedelta(minutes=2), 107, low=104, high=130, balance=102, drawdown=1),
        point(T0 + timedelta(minutes=10), 50, balance=103, drawdown=40),
    ]
    first, second = chart.downsample(points, T0, T0 + timedelta(minutes=11), buckets=2)
    assert (first.low, first.low_at) == (80.0, T0 + timedelta(minutes=1))
    assert (first.high, first.high_at) == (130.0, T0 + timedelta(minutes=2))
    assert (first.equity, first.balance, first.drawdown_percent, first.count) == (107.0, 102.0, 9.0, 3)
    assert first.last_at == T0 + timedelta(minutes=2)
    assert (second.low, second.high, second.equity, second.balance, second.count) == (
        50.0,
        50.0,
        50.0,
        103.0,
        1,
    )


def test_points_outside_the_range_count_in_the_nearest_bucket_and_naive_times_are_utc():
    points = [
        point((T0 - timedelta(hours=1)).replace(tzinfo=None), 1),
        point(T0 + timedelta(minutes=30), 2),
        point(T0 + timedelta(hours=5), 3),
    ]
    buckets = chart.downsample(points, T0, T0 + timedelta(hours=1), buckets=4)
    assert [(bucket.low, bucket.count) for bucket in buckets] == [(1.0, 1), (2.0, 1), (3.0, 1)]
    assert buckets[0].low_at == T0 - timedelta(hours=1)
    # An empty span: one bucket for everything.
    (only,) = chart.downsample(points, T0, T0, buckets=4)
    assert (only.low, only.high, only.count) == (1.0, 3.0, 3)
    assert chart.downsample([], T0, T0 + timedelta(hours=1)) == []
    with pytest.raises(ValueError):
        chart.downsample(points, T0, T0, buckets=0)


def test_the_time_axis_is_the_range_asked_else_what_the_data_covers_never_empty():
    now = T0 + timedelta(days=10)
    day = timedelta(days=1)
    later = T0 + timedelta(hours=3)
    assert chart.chart_range(T0, later, None, None, now) == (T0, later)
    assert chart.chart_range(None, None, T0, later, now) == (T0, later)
    assert chart.chart_range(T0, None, None, None, now) == (T0, now)
    assert chart.chart_range(None, later, None, None, now) == (later - day, later)
    assert chart.chart_range(None, None, None, None, now) == (now - day, now)
    assert chart.chart_range(now, None, None, None, now) == (now, now + day)
    one = chart.chart_range(None, None, T0, T0, now)
    assert one == (T0 - timedelta(seconds=30), T0 + timedelta(seconds=30))


# --- the image ------------------------------------------------------------------------------------


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (chart.WIDTH_PX, chart.HEIGHT_PX)
    return np.asarray(image.convert("RGB")).astype(int)


def panel(pixels: np.ndarray, box: tuple[float, float, float, float], inset: int = 3) -> np.ndarray:
    """The pixels inside a panel's axes (`box` as chart.EQUITY_PANEL: left, bottom, width, height)."""
    left, bottom, width, height = box
    height_px, width_px = pixels.shape[:2]
    x0, x1 = round(left * width_px) + inset, round((left + width) * width_px) - inset
    y0, y1 = round((1 - bottom - height) * height_px) + inset, round((1 - bottom) * height_px) - inset
    return pixels[y0:y1, x0:x1]


def count(pixels: np.ndarray, hex_colour: str, tolerance: int = 12) -> int:
    """How many pixels are this colour (each channel within `tolerance`: antialiasing blurs edges)."""
    return int((np.abs(pixels - rgb(hex_colour)).max(axis=-1) <= tolerance).sum())


def upper_and_lower(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    pixels = decode(png)
    return panel(pixels, chart.EQUITY_PANEL), panel(pixels, chart.DRAWDOWN_PANEL)


def history(count_: int = 5_000) -> tuple[list[chart.Bucket], datetime]:
    """An equity line that dips 4% in its middle and recovers, with the drawdown it makes."""
    points = []
    for i in range(count_):
        dip = 400 * max(0.0, 1 - abs(i - count_ / 2) / (count_ / 4))
        equity = 10_000 - dip
        points.append(point(T0 + i * timedelta(minutes=1), equity, balance=10_000, drawdown=dip / 100))
    end = T0 + count_ * timedelta(minutes=1)
    return chart.downsample(points, T0, end), end


MARKERS = [
    chart.Marker(T0 + timedelta(hours=20), "warning"),
    chart.Marker(T0 + timedelta(hours=30), "warning"),
    chart.Marker(T0 + timedelta(hours=40), "alert"),
    chart.Marker(T0 + timedelta(hours=41), "close"),
    chart.Marker(T0 + timedelta(hours=42), "close"),
]


def render(buckets, markers=(), image_format="png", **overrides) -> bytes:
    end = overrides.pop("end", T0 + timedelta(minutes=5_000))
    return chart_drawing.render(
        buckets,
        list(markers),
        currency=overrides.pop("currency", "USD"),
        title=overrides.pop("title", "Main account"),
        start=T0,
        end=end,
        image_format=image_format,
    )


def test_the_chart_is_1200x700_with_equity_and_balance_above_and_the_drawdown_shaded_below():
    buckets, end = history()
    upper, lower = upper_and_lower(render(buckets, end=end))
    assert count(upper, chart.COLOURS["equity"]) > 500  # a line across the panel
    assert count(upper, chart.COLOURS["balance"]) > 200  # dashed
    assert count(upper, chart.COLOURS["drawdown"]) == 0
    assert count(lower, chart.COLOURS["drawdown"]) > 2_000  # an area, not a line
    assert count(lower, chart.COLOURS["equity"]) == 0
    # The drawdown goes down from 0: its shading is in the lower half of the lower panel's middle
    # columns, where the dip is deepest, and none of it near the top of its first columns.
    middle = lower[:, lower.shape[1] // 2 - 20 : lower.shape[1] // 2 + 20]
    assert count(middle[middle.shape[0] // 2 :], chart.COLOURS["drawdown"]) > 100
    assert count(lower[:, :20], chart.COLOURS["drawdown"]) == 0


def test_markers_are_drawn_in_their_colours_only_when_there_are_some():
    buckets, end = history()
    upper, _ = upper_and_lower(render(buckets, MARKERS, end=end))
    for kind in chart.MARKER_KINDS:
        assert count(upper, chart.COLOURS[kind]) > 15, kind
    whole = decode(render(buckets, end=end))
    for kind in chart.MARKER_KINDS:
        assert count(whole, chart.COLOURS[kind], tolerance=30) == 0, kind  # not even in a legend
    # One kind alone: only its colour.
    only_alerts = decode(render(buckets, [m for m in MARKERS if m.kind == "alert"], end=end))
    assert count(only_alerts, chart.COLOURS["alert"]) > 15
    assert count(only_alerts, chart.COLOURS["warning"], tolerance=30) == 0
    assert count(only_alerts, chart.COLOURS["close"], tolerance=30) == 0


def test_a_spike_reaches_the_bottom_of_the_equity_panel_after_downsampling():
    points = flat(100_000)
    points[50_000] = point(points[50_000].at, 2_000)
    end = points[-1].at + timedelta(seconds=10)
    upper, _ = upper_and_lower(render(chart.downsample(points, T0, end), end=end))
    bottom_rows = upper[-upper.shape[0] // 8 :]  # the flat line is at the top; only the spike gets here
    assert count(bottom_rows, chart.COLOURS["equity"]) > 10


def test_no_data_is_still_a_chart_saying_so():
    upper, lower = upper_and_lower(render([]))
    assert count(upper, chart.COLOURS["equity"]) == 0 and count(lower, chart.COLOURS["drawdown"]) == 0
    assert count(upper, "#777777", tolerance=4) > 100  # the grey "no data" text, across the middle
    svg = render([], image_format="svg").decode()
    assert chart.NO_DATA_TEXT in svg
    # Markers without snapshots are still shown.
    with_markers, _ = upper_and_lower(render([], MARKERS))
    assert count(with_markers, chart.COLOURS["alert"]) > 15


def test_the_svg_names_the_currency_in_the_title_and_on_the_axis():
    buckets, end = history(500)
    svg = render(buckets, MARKERS, "svg", currency="EUR", end=end).decode()
    assert svg.startswith("<?xml") and "<svg" in svg
    assert 'width="864pt" height="504pt"' in svg  # 12 x 7 inches: 1200 x 700 pixels at 100 dpi
    assert "Main account: equity and balance (EUR)" in svg and "Equity (EUR)" in svg
    assert "Guard warning (2)" in svg and "Position closed (2)" in svg


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError):
        render([], image_format="gif")


def test_rendering_from_several_threads_at_once_gives_the_same_image():
    """As the web server's four threads would, each drawing the same chart twice."""
    buckets, end = history()
    expected = render(buckets, MARKERS, end=end)
    results: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def draw() -> None:
        try:
            start.wait()
            for _ in range(2):
                results.append(render(buckets, MARKERS, end=end))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 8
    assert all(result == expected for result in results)
    assert Image.open(io.BytesIO(results[-1])).size == (1200, 700)
