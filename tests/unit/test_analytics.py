"""Performance analytics' pure rules, each figure against a small case computed by hand (the arithmetic
is in the comments), the edge cases included: no trades, no losses, no snapshots, flat returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from shared.insight import analytics
from shared.insight.analytics import ClosedTrade, Slippage

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def trade(pnl, held_seconds=60.0, symbol="EURUSD"):
    return ClosedTrade(symbol, D(pnl), T0, T0 + timedelta(seconds=held_seconds))


@dataclass(frozen=True)
class Point:
    at: datetime
    equity: D
    equity_low: D
    equity_high: D


def sync_point(equity, at=T0):
    return Point(at, D(equity), D(equity), D(equity))


def bucket(low, high, last, at=T0):
    return Point(at, D(last), D(low), D(high))


def day(n, hour=23):
    return datetime(2024, 3, n, hour, tzinfo=UTC)


# --- trades ------------------------------------------------------------------------------------------


def test_a_mixed_set_of_trades():
    stats = analytics.trade_stats(
        [
            trade("30", 60),
            trade("-10", 120),
            trade("20", 3600),
            trade("-5", 30),
            trade("0", 1.5),  # breakeven: neither a win nor a loss, but a trade
        ]
    )
    assert (stats.count, stats.wins, stats.losses, stats.breakeven) == (5, 2, 2, 1)
    assert stats.gross_profit == D("50")  # 30 + 20
    assert stats.gross_loss == D("-15")  # -10 + -5
    assert stats.net_profit == D("35")  # 50 - 15
    assert stats.win_rate == D("0.4000")  # 2 wins / 5 trades
    assert stats.profit_factor == D("3.3333")  # 50 / 15 = 3.33333...
    assert stats.expectancy == D("7.0000")  # 35 / 5
    assert stats.average_win == D("25.0000")  # 50 / 2
    assert stats.average_loss == D("-7.5000")  # -15 / 2
    assert (stats.largest_win, stats.largest_loss) == (D("30"), D("-10"))
    assert stats.average_holding_seconds == D("762.300")  # (60 + 120 + 3600 + 30 + 1.5) / 5 = 3811.5 / 5
    reasons = [getattr(stats, name) for name in vars(stats) if name.endswith("_reason")]
    assert reasons == [None] * 8


def test_no_trades_gives_null_ratios_with_reasons_not_errors():
    stats = analytics.trade_stats([])
    assert (stats.count, stats.wins, stats.losses, stats.breakeven) == (0, 0, 0, 0)
    assert (stats.net_profit, stats.gross_profit, stats.gross_loss) == (D(0), D(0), D(0))
    for name in ("win_rate", "profit_factor", "expectancy", "average_holding_seconds"):
        assert (getattr(stats, name), getattr(stats, f"{name}_reason")) == (None, "no closed trades"), name
    for name in ("average_win", "largest_win"):
        assert (getattr(stats, name), getattr(stats, f"{name}_reason")) == (None, "no winning trades"), name
    for name in ("average_loss", "largest_loss"):
        assert (getattr(stats, name), getattr(stats, f"{name}_reason")) == (None, "no losing trades"), name


def test_no_losses_leaves_the_profit_factor_null_with_a_reason_not_infinite():
    stats = analytics.trade_stats([trade("12.5"), trade("7.5")])
    assert (stats.profit_factor, stats.profit_factor_reason) == (None, "no losing trades")
    assert (stats.average_loss, stats.average_loss_reason) == (None, "no losing trades")
    assert (stats.largest_loss, stats.largest_loss_reason) == (None, "no losing trades")
    assert stats.win_rate == D("1.0000")  # 2 / 2
    assert stats.average_win == D("10.0000")  # (12.5 + 7.5) / 2
    assert stats.largest_win == D("12.5")
    assert stats.gross_loss == D(0)


def test_only_losses_give_a_profit_factor_of_zero():
    stats = analytics.trade_stats([trade("-20"), trade("-10"), trade("-0.01")])
    assert (stats.profit_factor, stats.profit_factor_reason) == (D("0.0000"), None)  # 0 / 30.01
    assert (stats.win_rate, stats.win_rate_reason) == (D("0.0000"), None)  # 0 / 3
    assert (stats.average_win, stats.average_win_reason) == (None, "no winning trades")
    assert stats.largest_loss == D("-20")  # the lowest, not the nearest to 0
    assert stats.average_loss == D("-10.0033")  # -30.01 / 3 = -10.00333...
    assert stats.expectancy == D("-10.0033")  # net -30.01 / 3


def test_ratios_are_rounded_half_up_to_four_places():
    # 1 / 32 = 0.03125: half up 0.0313 (half even would say 0.0312)
    stats = analytics.trade_stats([trade("1"), trade("-32")])
    assert stats.profit_factor == D("0.0313")
    stats = analytics.trade_stats([trade("20"), trade("-30"), trade("-0.5")])
    assert stats.profit_factor == D("0.6557")  # 20 / 30.5 = 0.655737...
    assert stats.win_rate == D("0.3333")  # 1 / 3
    assert stats.expectancy == D("-3.5000")  # (20 - 30.5) / 3 = -10.5 / 3


def test_holding_time_keeps_milliseconds_rounded_half_up():
    # (0.0004 + 0.0006) / 2 = 0.0005 s: half up to 0.001 (half even would say 0.000)
    stats = analytics.trade_stats([trade("1", 0.0004), trade("1", 0.0006)])
    assert stats.average_holding_seconds == D("0.001")
    # (1.2345 + 2) / 2 = 1.61725 s -> 1.617
    stats = analytics.trade_stats([trade("1", 1.2345), trade("1", 2)])
    assert stats.average_holding_seconds == D("1.617")


def test_the_breakdown_by_symbol():
    eurusd, gbpusd = analytics.by_symbol(
        [trade("-4", 10, "GBPUSD"), trade("6", 20, "EURUSD"), trade("10", 50, "GBPUSD")]
    )
    assert (eurusd.symbol, eurusd.count, eurusd.wins, eurusd.losses) == ("EURUSD", 1, 1, 0)
    assert (eurusd.net_profit, eurusd.profit_factor_reason) == (D("6"), "no losing trades")
    assert (gbpusd.symbol, gbpusd.count, gbpusd.wins, gbpusd.losses) == ("GBPUSD", 2, 1, 1)
    assert gbpusd.profit_factor == D("2.5000")  # 10 / 4
    assert gbpusd.expectancy == D("3.0000")  # (10 - 4) / 2
    assert gbpusd.average_holding_seconds == D("30.000")  # (10 + 50) / 2
    assert analytics.by_symbol([]) == []


# --- drawdown ----------------------------------------------------------------------------------------


def test_max_drawdown_over_sync_points_keeps_the_first_of_equal_falls():
    # 100, 120, 90, 130, 100: 120 -> 90 and 130 -> 100 both fall 30; the first, from 120, is 25 %
    points = [sync_point(e) for e in ("100", "120", "90", "130", "100")]
    assert analytics.max_drawdown(points) == analytics.Drawdown(D("30"), D("120"))
    stats = analytics.equity_stats(points)
    assert (stats.max_drawdown, stats.max_drawdown_percent) == (D("30"), D("25.0000"))  # 30 / 120


def test_max_drawdown_takes_a_later_deeper_fall():
    # 100, 80 (fall 20), 150, 100 (fall 50 from 150: 33.33 %)
    stats = analytics.equity_stats([sync_point(e) for e in ("100", "80", "150", "100")])
    assert (stats.max_drawdown, stats.max_drawdown_percent) == (D("50"), D("33.3333"))  # 50 / 150


def test_a_rolled_up_bucket_counts_only_the_falls_that_certainly_happened():
    # One bucket, low 90, high 110, last 100: its high came before its last equity, so 110 -> 100 is a
    # fall; whether 90 came before or after 110 is not known, so 110 -> 90 is not counted.
    assert analytics.max_drawdown([bucket("90", "110", "100")]) == analytics.Drawdown(D("10"), D("110"))
    # 100 before the bucket: 100 -> its low 95 is certain (5); then 110 -> 105 (5, a tie: the first
    # stays); then 110 -> 101 after it (9, from the bucket's high: 9 / 110 = 8.1818 %)
    points = [sync_point("100"), bucket("95", "110", "105"), sync_point("101")]
    stats = analytics.equity_stats(points)
    assert (stats.max_drawdown, stats.max_drawdown_percent) == (D("9"), D("8.1818"))
    # the bucket's low against the peak before it: 120 -> 70 = 50 of 120 = 41.6667 %
    points = [sync_point("120"), bucket("70", "100", "100")]
    stats = analytics.equity_stats(points)
    assert (stats.max_drawdown, stats.max_drawdown_percent) == (D("50"), D("41.6667"))


def test_rising_equity_has_a_drawdown_of_zero():
    stats = analytics.equity_stats([sync_point("100"), sync_point("110")])
    assert (stats.max_drawdown, stats.max_drawdown_percent) == (D("0"), D("0.0000"))
    assert (stats.max_drawdown_reason, stats.max_drawdown_percent_reason) == (None, None)


def test_no_snapshots_give_null_drawdown_and_ratios_with_reasons():
    stats = analytics.equity_stats([])
    assert (stats.points, stats.daily_returns) == (0, 0)
    assert (stats.max_drawdown, stats.max_drawdown_reason) == (None, "no equity snapshots in the range")
    assert (stats.max_drawdown_percent, stats.max_drawdown_percent_reason) == (
        None,
        "no equity snapshots in the range",
    )
    assert (stats.sharpe, stats.sharpe_reason) == (None, "fewer than 2 daily returns")
    assert (stats.sortino, stats.sortino_reason) == (None, "fewer than 2 daily returns")


def test_a_drawdown_from_a_peak_of_zero_has_no_percentage():
    stats = analytics.equity_stats([sync_point("0"), sync_point("-5")])
    assert stats.max_drawdown == D("5")
    assert (stats.max_drawdown_percent, stats.max_drawdown_percent_reason) == (
        None,
        "the peak equity is not positive",
    )


# --- daily returns, Sharpe and Sortino ---------------------------------------------------------------


def test_sharpe_and_sortino_of_daily_closes():
    points = [
        sync_point("100", day(1, 10)),
        sync_point("90", day(1, 12)),
        # 00:30 at UTC+1 is 23:30 UTC on 1 March: that day's close (100), not 2 March's
        sync_point("100", datetime(2024, 3, 2, 0, 30, tzinfo=timezone(timedelta(hours=1)))),
        sync_point("99", day(2)),  # r1 = (99 - 100) / 100 = -0.01
        sync_point("101.97", day(3)),  # r2 = (101.97 - 99) / 99 = 0.03
    ]
    stats = analytics.equity_stats(points)
    assert (stats.points, stats.daily_returns) == (5, 2)
    # mean = (-0.01 + 0.03) / 2 = 0.01
    # sample sd = sqrt(((-0.01 - 0.01)^2 + (0.03 - 0.01)^2) / (2 - 1)) = sqrt(0.0008) = 0.0282843
    # 0.01 / 0.0282843 = 1/sqrt(8); * sqrt(252) = sqrt(31.5) = 5.612486...
    assert (stats.sharpe, stats.sharpe_reason) == (D("5.6125"), None)
    # downside deviation = sqrt((min(-0.01, 0)^2 + min(0.03, 0)^2) / 2) = sqrt(0.00005) = 0.00707107
    # 0.01 / 0.00707107 = sqrt(2); * sqrt(252) = sqrt(504) = 22.449944...
    assert (stats.sortino, stats.sortino_reason) == (D("22.4499"), None)
    # the drawdown: 100 -> 90 on 1 March, 10 % (the later 100 -> 99 is smaller)
    assert (stats.max_drawdown, stats.max_drawdown_percent) == (D("10"), D("10.0000"))


def test_only_gains_have_a_sharpe_but_no_sortino():
    # closes 100, 101, 104.03: returns 0.01, 0.03; mean 0.02, sample sd sqrt(0.0002) = 0.0141421
    # 0.02 / 0.0141421 = sqrt(2); * sqrt(252) = sqrt(504) = 22.449944...
    stats = analytics.equity_stats(
        [sync_point(e, day(n)) for n, e in ((1, "100"), (2, "101"), (3, "104.03"))]
    )
    assert (stats.sharpe, stats.sharpe_reason) == (D("22.4499"), None)
    assert (stats.sortino, stats.sortino_reason) == (None, "no negative daily returns")


def test_flat_returns_and_too_few_returns_have_no_ratios():
    # 100, 101, 102.01: both returns 0.01 exactly, so the deviation is 0
    flat = analytics.equity_stats([sync_point(e, day(n)) for n, e in ((1, "100"), (2, "101"), (3, "102.01"))])
    assert (flat.daily_returns, flat.sharpe, flat.sharpe_reason) == (2, None, "the daily returns do not vary")
    # one day apart: a single return
    one = analytics.equity_stats([sync_point("100", day(1)), sync_point("90", day(2))])
    assert (one.daily_returns, one.sharpe_reason, one.sortino_reason) == (
        1,
        "fewer than 2 daily returns",
        "fewer than 2 daily returns",
    )


def test_daily_returns_skip_days_without_snapshots_and_non_positive_closes():
    # 1 March 100, (no 2 March), 3 March 110: one return of 0.1 over the gap
    closes = [sync_point("100", day(1)), sync_point("110", day(3))]
    assert analytics.daily_returns([p.equity for p in closes]) == [D("0.1")]
    # a close of 0 cannot be the base of a return: 0 -> 10 is skipped, 10 -> 15 is 0.5
    assert analytics.daily_returns([D("0"), D("10"), D("15")]) == [D("0.5")]
    assert analytics.daily_returns([D("-5"), D("10")]) == []


# --- slippage ----------------------------------------------------------------------------------------


def test_slippage_mean_and_nearest_rank_p95_one_per_position():
    recorded = [
        Slippage("a", D("7")),
        Slippage("b", D("-6")),  # favourable
        Slippage("a", D("7")),  # the same position's divergence recorded again (its SL moved)
        Slippage("c", D("10")),
        Slippage("d", D("5.5")),
    ]
    stats = analytics.slippage_stats(recorded)
    assert (stats.count, stats.unit) == (4, "pips")
    assert stats.mean == D("4.1250")  # (7 - 6 + 10 + 5.5) / 4 = 16.5 / 4
    assert stats.p95 == D("10")  # rank ceil(0.95 * 4) = ceil(3.8) = 4: the largest of -6, 5.5, 7, 10
    assert (stats.mean_reason, stats.p95_reason) == (None, None)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 1), (2, 2), (19, 19), (20, 19), (21, 20), (40, 38), (100, 95)],
    # ceil(0.95 n): 0.95 -> 1, 1.9 -> 2, 18.05 -> 19, 19 -> 19, 19.95 -> 20, 38 -> 38, 95 -> 95
)
def test_nearest_rank(n, expected):
    values = [D(v) for v in range(n, 0, -1)]  # n..1, unsorted on purpose
    assert analytics.nearest_rank(values, 95) == D(expected)


def test_no_slippage_recorded():
    stats = analytics.slippage_stats([])
    assert (stats.count, stats.mean, stats.p95) == (0, None, None)
    assert (stats.mean_reason, stats.p95_reason) == ("no slippage recorded", "no slippage recorded")
