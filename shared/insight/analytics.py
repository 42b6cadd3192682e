"""The rules of performance analytics: an account's closed trades, equity history and recorded slippage
turned into the figures an owner judges a strategy by. Pure: no database, no clock, no Flask; the loading
is shared.insight.analytics_queries.

Every figure that cannot be computed (a ratio over nothing, a deviation of zero) is None with a reason
next to it (`<figure>_reason`), never infinity, NaN or an error. Ratios are rounded half up to 4 places,
money averages to 4 (the Money columns' scale), holding times to the millisecond; sums are exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Protocol

PLACES = Decimal("0.0001")  # ratios, percentages and money averages
MILLISECOND = Decimal("0.001")  # holding times, in seconds
TRADING_DAYS = 252  # Sharpe and Sortino are annualised by its square root
PERCENTILE = 95  # of the slippage, nearest-rank
SLIPPAGE_UNIT = "pips"  # what shared.reconciliation.rules.divergences measures slippage in

NO_TRADES = "no closed trades"
NO_WINS = "no winning trades"
NO_LOSSES = "no losing trades"
NO_POINTS = "no equity snapshots in the range"
NO_POSITIVE_PEAK = "the peak equity is not positive"
FEW_RETURNS = "fewer than 2 daily returns"
FLAT_RETURNS = "the daily returns do not vary"
NO_DOWNSIDE = "no negative daily returns"
NO_SLIPPAGE = "no slippage recorded"

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_MICROSECOND = timedelta(microseconds=1)
_MICROSECONDS_PER_SECOND = Decimal(1_000_000)
# Wide enough that quantizing never fails (a profit factor of 10^16 / 0.0001 has 21 integer digits).
_WIDE = Context(prec=60)


def _rounded(value: Decimal, places: Decimal = PLACES) -> Decimal:
    return value.quantize(places, rounding=ROUND_HALF_UP, context=_WIDE)


# --- inputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedTrade:
    """A closed trade: its P&L (profit, swap and commission) and when it was opened and closed."""

    symbol: str
    pnl: Decimal
    opened_at: datetime  # filled, else sent, else created
    closed_at: datetime


class EquityPoint(Protocol):
    """A point of the equity history (shared.insight.snapshots.SeriesPoint is one): `equity` is the
    last of its bucket, `equity_low` and `equity_high` the bucket's extremes (all three the same on a
    sync row)."""

    @property
    def at(self) -> datetime: ...
    @property
    def equity(self) -> Decimal: ...
    @property
    def equity_low(self) -> Decimal: ...
    @property
    def equity_high(self) -> Decimal: ...


@dataclass(frozen=True)
class Slippage:
    """The slippage of one position as a divergence event recorded it: `pips` is signed, positive when
    adverse (for the trader), negative when favourable."""

    position_key: str
    pips: Decimal


# --- outputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TradeStats:
    """Figures over a set of closed trades. A trade with a P&L of exactly 0 is neither a win nor a loss
    but counts in `count`, so in the win rate's and the expectancy's denominators. `gross_loss`,
    `average_loss` and `largest_loss` are negative (as MT5 reports them)."""

    count: int
    wins: int
    losses: int
    breakeven: int
    net_profit: Decimal
    gross_profit: Decimal
    gross_loss: Decimal
    win_rate: Decimal | None  # wins / count, a fraction
    win_rate_reason: str | None
    profit_factor: Decimal | None  # gross_profit / -gross_loss
    profit_factor_reason: str | None
    expectancy: Decimal | None  # net_profit / count
    expectancy_reason: str | None
    average_win: Decimal | None
    average_win_reason: str | None
    average_loss: Decimal | None
    average_loss_reason: str | None
    largest_win: Decimal | None
    largest_win_reason: str | None
    largest_loss: Decimal | None
    largest_loss_reason: str | None
    average_holding_seconds: Decimal | None
    average_holding_seconds_reason: str | None


@dataclass(frozen=True)
class SymbolStats(TradeStats):
    symbol: str


@dataclass(frozen=True)
class EquityStats:
    """The equity history's figures: the deepest fall and the risk-adjusted daily returns."""

    points: int
    max_drawdown: Decimal | None  # peak - trough, in the account currency
    max_drawdown_reason: str | None
    max_drawdown_percent: Decimal | None  # of the peak that fall started from
    max_drawdown_percent_reason: str | None
    daily_returns: int
    sharpe: Decimal | None
    sharpe_reason: str | None
    sortino: Decimal | None
    sortino_reason: str | None


@dataclass(frozen=True)
class SlippageStats:
    count: int  # positions
    mean: Decimal | None
    mean_reason: str | None
    p95: Decimal | None
    p95_reason: str | None
    unit: str = SLIPPAGE_UNIT


@dataclass(frozen=True)
class Drawdown:
    amount: Decimal
    peak: Decimal


# --- trades ------------------------------------------------------------------------------------------


def _reasoned(value: Decimal | None, reason: str) -> tuple[Decimal | None, str | None]:
    return (value, None) if value is not None else (None, reason)


def trade_stats(trades: Sequence[ClosedTrade]) -> TradeStats:
    """Counts, sums, ratios and averages over `trades`."""
    wins = [t.pnl for t in trades if t.pnl > 0]
    losses = [t.pnl for t in trades if t.pnl < 0]
    count = len(trades)
    gross_profit = sum(wins, _ZERO)
    gross_loss = sum(losses, _ZERO)
    net_profit = gross_profit + gross_loss
    held = sum(((t.closed_at - t.opened_at) // _MICROSECOND for t in trades), 0)

    if not count:
        profit_factor, profit_factor_reason = None, NO_TRADES
    elif not losses:
        profit_factor, profit_factor_reason = None, NO_LOSSES
    else:
        profit_factor, profit_factor_reason = _rounded(gross_profit / -gross_loss), None
    win_rate = _reasoned(_rounded(Decimal(len(wins)) / count) if count else None, NO_TRADES)
    expectancy = _reasoned(_rounded(net_profit / count) if count else None, NO_TRADES)
    holding = _reasoned(
        _rounded(Decimal(held) / _MICROSECONDS_PER_SECOND / count, MILLISECOND) if count else None,
        NO_TRADES,
    )
    average_win = _reasoned(_rounded(gross_profit / len(wins)) if wins else None, NO_WINS)
    average_loss = _reasoned(_rounded(gross_loss / len(losses)) if losses else None, NO_LOSSES)
    largest_win = _reasoned(max(wins) if wins else None, NO_WINS)
    largest_loss = _reasoned(min(losses) if losses else None, NO_LOSSES)
    return TradeStats(
        count=count,
        wins=len(wins),
        losses=len(losses),
        breakeven=count - len(wins) - len(losses),
        net_profit=net_profit,
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        win_rate=win_rate[0],
        win_rate_reason=win_rate[1],
        profit_factor=profit_factor,
        profit_factor_reason=profit_factor_reason,
        expectancy=expectancy[0],
        expectancy_reason=expectancy[1],
        average_win=average_win[0],
        average_win_reason=average_win[1],
        average_loss=average_loss[0],
        average_loss_reason=average_loss[1],
        largest_win=largest_win[0],
        largest_win_reason=largest_win[1],
        largest_loss=largest_loss[0],
        largest_loss_reason=largest_loss[1],
        average_holding_seconds=holding[0],
        average_holding_seconds_reason=holding[1],
    )


def by_symbol(trades: Sequence[ClosedTrade]) -> list[SymbolStats]:
    """`trade_stats` of each symbol's trades, by symbol name."""
    symbols: dict[str, list[ClosedTrade]] = {}
    for trade in trades:
        symbols.setdefault(trade.symbol, []).append(trade)
    return [SymbolStats(symbol=symbol, **vars(trade_stats(own))) for symbol, own in sorted(symbols.items())]


# --- equity ------------------------------------------------------------------------------------------


class DeepestFall:
    """The largest fall of equity from a peak to a later trough, fed points oldest first (`add`).

    A rolled-up point carries its bucket's highest and lowest equity but not their order, so only falls
    that certainly happened are counted: from the highest equity of the points before it to its lowest,
    and from its own highest (or an earlier, higher peak) to its last equity, which comes after both.
    On sync points (low = high = equity) this is the plain peak-to-trough fall. Ties: the first."""

    def __init__(self) -> None:
        self.peak: Decimal | None = None
        self.deepest: Drawdown | None = None  # None until a point is added

    def add(self, point: EquityPoint) -> None:
        falls = [] if self.peak is None else [(self.peak, point.equity_low)]
        self.peak = point.equity_high if self.peak is None else max(self.peak, point.equity_high)
        falls.append((self.peak, point.equity))
        for top, bottom in falls:
            if self.deepest is None or top - bottom > self.deepest.amount:
                self.deepest = Drawdown(top - bottom, top)


def max_drawdown(points: Iterable[EquityPoint]) -> Drawdown | None:
    """DeepestFall over `points`, oldest first; None without points."""
    fall = DeepestFall()
    for point in points:
        fall.add(point)
    return fall.deepest


def daily_returns(closes: Sequence[Decimal]) -> list[Decimal]:
    """Each day's close against the previous close (a day without points is skipped: the return runs
    from the last day that had one). A previous close of 0 or less gives no return."""
    return [(today - before) / before for before, today in itertools.pairwise(closes) if before > 0]


def sharpe(returns: Sequence[Decimal]) -> tuple[Decimal | None, str | None]:
    """mean / sample standard deviation (ddof=1) of the daily returns, * √252; risk-free rate 0."""
    if len(returns) < 2:
        return None, FEW_RETURNS
    mean = sum(returns, _ZERO) / len(returns)
    variance = sum(((r - mean) ** 2 for r in returns), _ZERO) / (len(returns) - 1)
    if variance == 0:
        return None, FLAT_RETURNS
    return _rounded(mean / variance.sqrt() * Decimal(TRADING_DAYS).sqrt()), None


def sortino(returns: Sequence[Decimal]) -> tuple[Decimal | None, str | None]:
    """mean / downside deviation of the daily returns, * √252: the downside deviation is the square root
    of the mean of min(r, 0)² over every day (target 0)."""
    if len(returns) < 2:
        return None, FEW_RETURNS
    mean = sum(returns, _ZERO) / len(returns)
    downside = sum((min(r, _ZERO) ** 2 for r in returns), _ZERO) / len(returns)
    if downside == 0:
        return None, NO_DOWNSIDE
    return _rounded(mean / downside.sqrt() * Decimal(TRADING_DAYS).sqrt()), None


def equity_stats(points: Iterable[EquityPoint]) -> EquityStats:
    """Max drawdown, Sharpe and Sortino over the equity history, oldest point first. Read once, so a
    streamed series is never held in memory: only each UTC day's close (its last point's equity) is."""
    fall = DeepestFall()
    closes: dict[date, Decimal] = {}
    count = 0
    for point in points:
        count += 1
        fall.add(point)
        closes[point.at.astimezone(UTC).date()] = point.equity
    returns = daily_returns([closes[day] for day in sorted(closes)])
    deepest = fall.deepest
    amount, amount_reason = _reasoned(deepest.amount if deepest else None, NO_POINTS)
    if deepest is None:
        percent, percent_reason = None, NO_POINTS
    elif deepest.peak <= 0:
        percent, percent_reason = None, NO_POSITIVE_PEAK
    else:
        percent, percent_reason = _rounded(deepest.amount / deepest.peak * _HUNDRED), None
    sharpe_value, sharpe_reason = sharpe(returns)
    sortino_value, sortino_reason = sortino(returns)
    return EquityStats(
        points=count,
        max_drawdown=amount,
        max_drawdown_reason=amount_reason,
        max_drawdown_percent=percent,
        max_drawdown_percent_reason=percent_reason,
        daily_returns=len(returns),
        sharpe=sharpe_value,
        sharpe_reason=sharpe_reason,
        sortino=sortino_value,
        sortino_reason=sortino_reason,
    )


# --- slippage ----------------------------------------------------------------------------------------


def nearest_rank(values: Sequence[Decimal], percent: int) -> Decimal:
    """The nearest-rank percentile: the ⌈percent/100 * n⌉-th smallest value (n ≥ 1)."""
    ordered = sorted(values)
    rank = -(-percent * len(ordered) // 100)  # ceiling, in integers
    return ordered[max(rank, 1) - 1]


def slippage_stats(recorded: Iterable[Slippage]) -> SlippageStats:
    """Mean and 95th percentile (nearest-rank) of the slippage, one figure per position: a divergence
    is recorded again each time it changes (an SL moved), carrying the same slippage; the first counts."""
    per_position: dict[str, Decimal] = {}
    for slippage in recorded:
        per_position.setdefault(slippage.position_key, slippage.pips)
    values = list(per_position.values())
    if not values:
        return SlippageStats(0, None, NO_SLIPPAGE, None, NO_SLIPPAGE)
    mean = _rounded(sum(values, _ZERO) / len(values))
    return SlippageStats(len(values), mean, None, nearest_rank(values, PERCENTILE), None)
