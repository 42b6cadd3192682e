"""Drawing the equity chart (shared.insight.chart.render calls it): matplotlib's object API on the Agg
backend (a `Figure` and its own canvas, never pyplot and its global figure registry), under one lock:
matplotlib documents no thread safety beyond that, and the web server answers on several threads. The
lock costs little, as drawing holds the GIL anyway."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from shared.insight.chart import (
    _MARKER_STYLE,
    COLOURS,
    DPI,
    DRAWDOWN_PANEL,
    EQUITY_PANEL,
    FORMATS,
    HEIGHT_PX,
    MARKER_KINDS,
    NO_DATA_TEXT,
    WIDTH_PX,
    Bucket,
    ImageFormat,
    Marker,
    _utc,
)

_RENDER_LOCK = threading.Lock()


def _money(value: float, _: Any = None) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}"


def _percent(value: float, _: Any = None) -> str:
    return f"{value:.1f}%" if value else "0%"


def _days(moments: Sequence[datetime]) -> np.ndarray:
    """matplotlib's date numbers (days since its epoch) of `moments`: one date2num, the rest offsets from
    it (date2num on each of thousands of datetimes would take most of a render)."""
    if not moments:
        return np.array([], dtype=float)
    origin = _utc(moments[0])
    base = float(mdates.date2num(origin))
    return np.array([base + (_utc(moment) - origin).total_seconds() / 86_400 for moment in moments])


def _equity_path(buckets: Sequence[Bucket]) -> tuple[np.ndarray, list[float]]:
    """Through each bucket's extremes in the order they were seen: the line touches every low and high."""
    times: list[datetime] = []
    values: list[float] = []
    for bucket in buckets:
        first, second = (
            ((bucket.low_at, bucket.low), (bucket.high_at, bucket.high))
            if bucket.low_at <= bucket.high_at
            else ((bucket.high_at, bucket.high), (bucket.low_at, bucket.low))
        )
        times += [first[0], second[0]]
        values += [first[1], second[1]]
    return _days(times), values


def render(
    buckets: Sequence[Bucket],
    markers: Sequence[Marker],
    *,
    currency: str,
    title: str,
    start: datetime,
    end: datetime,
    image_format: ImageFormat = "png",
) -> bytes:
    """The chart, WIDTH_PX x HEIGHT_PX, as PNG or SVG bytes. No buckets: the axes and NO_DATA_TEXT."""
    if image_format not in FORMATS:
        raise ValueError(f"unknown image format {image_format!r}")
    with _RENDER_LOCK:
        figure = _draw(buckets, markers, currency=currency, title=title, start=start, end=end)
        out = io.BytesIO()
        # Titled in the file too (an SVG's <title>, a PNG's text chunk); no date: the same data gives the
        # same bytes.
        metadata: dict[str, str | None] = {"Title": f"{title}: equity ({currency})"}
        if image_format == "svg":
            metadata["Date"] = None
        figure.savefig(out, format=image_format, dpi=DPI, metadata=metadata)
    return out.getvalue()


def _draw(
    buckets: Sequence[Bucket],
    markers: Sequence[Marker],
    *,
    currency: str,
    title: str,
    start: datetime,
    end: datetime,
) -> Figure:
    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    upper = figure.add_axes(EQUITY_PANEL)
    lower = figure.add_axes(DRAWDOWN_PANEL, sharex=upper)
    start, end = _utc(start), _utc(end)
    # Times are drawn as matplotlib's date numbers (days since 1970, UTC) on axes that read them as dates.
    upper.xaxis_date(UTC)
    left, right = _days([start, end])
    upper.set_xlim(float(left), float(right))

    figure.suptitle(f"{title}: equity and balance ({currency})", x=0.08, y=0.975, ha="left", fontsize=15)
    figure.text(
        0.97,
        0.975,
        f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC",
        ha="right",
        va="top",
        fontsize=10,
        color="#555555",
    )

    handles: list[Any] = []
    if buckets:
        times, values = _equity_path(buckets)
        upper.plot(times, values, color=COLOURS["equity"], linewidth=1.6, zorder=3)
        last_times = _days([bucket.last_at for bucket in buckets])
        upper.step(
            last_times,
            [bucket.balance for bucket in buckets],
            where="post",
            color=COLOURS["balance"],
            linewidth=1.4,
            linestyle=(0, (5, 2)),
            zorder=2,
        )
        drawdown = np.array([-bucket.drawdown_percent for bucket in buckets])
        lower.fill_between(
            last_times, drawdown, 0, step="post", color=COLOURS["drawdown"], linewidth=0, zorder=2
        )
        lower.step(
            last_times, drawdown, where="post", color=COLOURS["drawdown_edge"], linewidth=1.0, zorder=3
        )
        deepest = float(max(bucket.drawdown_percent for bucket in buckets))
        lower.set_ylim(-max(deepest * 1.15, 1.0), max(deepest * 0.02, 0.05))
        handles += [
            Line2D([], [], color=COLOURS["equity"], linewidth=1.6, label=f"Equity ({currency})"),
            Line2D([], [], color=COLOURS["balance"], linewidth=1.4, linestyle=(0, (5, 2)), label="Balance"),
            Patch(facecolor=COLOURS["drawdown"], edgecolor=COLOURS["drawdown_edge"], label="Drawdown (%)"),
        ]
    else:
        upper.text(
            0.5,
            0.5,
            NO_DATA_TEXT,
            transform=upper.transAxes,
            ha="center",
            va="center",
            fontsize=18,
            color="#777777",
        )
        lower.set_ylim(-1.0, 0.05)

    _draw_markers(upper, lower, buckets, markers, handles)

    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=10)
    lower.xaxis.set_major_locator(locator)
    lower.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    upper.tick_params(axis="x", labelbottom=False)
    upper.set_ylabel(f"Equity ({currency})", fontsize=11)
    upper.yaxis.set_major_formatter(FuncFormatter(_money))
    upper.yaxis.set_major_locator(MaxNLocator(nbins=7))
    lower.set_ylabel("Drawdown (%)", fontsize=11)
    lower.yaxis.set_major_formatter(FuncFormatter(_percent))
    lower.yaxis.set_major_locator(MaxNLocator(nbins=4))
    lower.set_xlabel("Time (UTC)", fontsize=10)
    if not buckets:  # no figures to read off either axis
        upper.set_yticks([])
        lower.set_yticks([])
    for axes in (upper, lower):
        axes.grid(True, color="#e5e5e5", linewidth=0.8, zorder=0)
        axes.set_axisbelow(True)
        axes.tick_params(labelsize=9)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    if handles:
        figure.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(0.08, 0.935),
            ncols=len(handles),
            frameon=False,
            fontsize=10,
        )
    return figure


def _draw_markers(
    upper: Any, lower: Any, buckets: Sequence[Bucket], markers: Sequence[Marker], handles: list[Any]
) -> None:
    """Each marker on the equity line at its time (halfway up the panel without data), with a faint
    line down through the drawdown panel; a legend entry for each kind present."""
    if buckets:
        known = _days([bucket.last_at for bucket in buckets])
        equity = np.array([bucket.equity for bucket in buckets])
    for kind in MARKER_KINDS:
        times = [marker.at for marker in markers if marker.kind == kind]
        if not times:
            continue
        symbol, label = _MARKER_STYLE[kind]
        colour = COLOURS[kind]
        where = _days(times)
        for x in where:
            lower.axvline(float(x), color=colour, linewidth=0.8, alpha=0.45, zorder=1)
        style = {
            "marker": symbol,
            "s": 70,
            "color": colour,
            "edgecolors": "white",
            "linewidths": 0.8,
            "zorder": 5,
        }
        if buckets:
            upper.scatter(where, np.interp(where, known, equity), **style)
        else:
            transform = blended_transform_factory(upper.transData, upper.transAxes)
            upper.scatter(where, np.full(len(where), 0.3), transform=transform, **style)
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker=symbol,
                markersize=8,
                color=colour,
                markeredgecolor="white",
                label=f"{label} ({len(times)})",
            )
        )
