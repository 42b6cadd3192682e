"""Performance analytics: what an owner judges a strategy by, over one of their accounts."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from shared.insight import analytics_queries
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.schemas import MAX_ID, DecimalText, StrictInteger, TimeRangeQuerySchema

blp = Blueprint(
    "analytics",
    __name__,
    url_prefix="/api/v1/analytics",
    description="Performance analytics of an account's trades and equity",
)


class AnalyticsQuerySchema(TimeRangeQuerySchema):
    account_id = StrictInteger(
        required=True, validate=validate.Range(min=1, max=MAX_ID), metadata={"description": "one of yours"}
    )
    symbol = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=32),
        metadata={"description": "only this symbol's trades and slippage (the equity is the account's)"},
    )


def _figure(kind: type[fields.Field], description: str, **kwargs: Any) -> fields.Field:
    return kind(
        allow_none=True, metadata={"description": f"{description}; null when it cannot be computed"}, **kwargs
    )


def _reason() -> fields.String:
    return fields.String(
        allow_none=True, metadata={"description": "why the figure before it is null; null when it is not"}
    )


class TradeStatsSchema(ma.Schema):
    count = fields.Integer(metadata={"description": "closed trades"})
    wins = fields.Integer(metadata={"description": "trades with a P&L above 0"})
    losses = fields.Integer(metadata={"description": "trades with a P&L below 0"})
    breakeven = fields.Integer(
        metadata={"description": "trades with a P&L of exactly 0 (counted in `count`)"}
    )
    net_profit = DecimalText(metadata={"description": "the sum of every P&L"})
    gross_profit = DecimalText(metadata={"description": "the sum of the wins"})
    gross_loss = DecimalText(metadata={"description": "the sum of the losses: 0 or negative"})
    win_rate = _figure(DecimalText, "wins / count, a fraction (0.5 is half)")
    win_rate_reason = _reason()
    profit_factor = _figure(DecimalText, "gross profit / -gross loss")
    profit_factor_reason = _reason()
    expectancy = _figure(DecimalText, "net profit / count: the average P&L of a trade")
    expectancy_reason = _reason()
    average_win = _figure(DecimalText, "gross profit / wins")
    average_win_reason = _reason()
    average_loss = _figure(DecimalText, "gross loss / losses: negative")
    average_loss_reason = _reason()
    largest_win = _figure(DecimalText, "the highest P&L above 0")
    largest_win_reason = _reason()
    largest_loss = _figure(DecimalText, "the lowest P&L below 0")
    largest_loss_reason = _reason()
    average_holding_seconds = _figure(
        DecimalText, "the average of close time - fill time (else send time, else creation), in seconds"
    )
    average_holding_seconds_reason = _reason()


class SymbolStatsSchema(TradeStatsSchema):
    symbol = fields.String()


class EquityStatsSchema(ma.Schema):
    points = fields.Integer(metadata={"description": "snapshots read (a rolled-up minute or hour is one)"})
    max_drawdown = _figure(
        DecimalText,
        "the largest fall of equity from a peak to a later trough, in the account currency; a rolled-up "
        "snapshot counts with its highest and lowest equity, as far as their order is known",
    )
    max_drawdown_reason = _reason()
    max_drawdown_percent = _figure(DecimalText, "that fall in percent of the peak it fell from")
    max_drawdown_percent_reason = _reason()
    daily_returns = fields.Integer(
        metadata={
            "description": "returns of each UTC day's last equity against the previous day's that has a "
            "snapshot"
        }
    )
    sharpe = _figure(
        DecimalText,
        "mean / sample standard deviation of the daily returns, annualised by √252 (risk-free rate 0)",
    )
    sharpe_reason = _reason()
    sortino = _figure(
        DecimalText,
        "mean / downside deviation (√ of the mean of min(return, 0)² over every day) of the daily "
        "returns, annualised by √252",
    )
    sortino_reason = _reason()


class SlippageStatsSchema(ma.Schema):
    unit = fields.String(metadata={"description": "what the figures are in: pips of the symbol"})
    count = fields.Integer(metadata={"description": "positions with a recorded slippage"})
    mean = _figure(DecimalText, "the mean slippage, positive when adverse for the trader")
    mean_reason = _reason()
    p95 = _figure(DecimalText, "the 95th percentile by nearest rank: the ⌈0.95 * count⌉-th smallest")
    p95_reason = _reason()


class AnalyticsSchema(ma.Schema):
    account_id = fields.Integer()
    currency = fields.String(allow_none=True, metadata={"description": "of every amount; null if unknown"})
    start = fields.DateTime(
        data_key="from", allow_none=True, metadata={"description": "as asked; null: open"}
    )
    end = fields.DateTime(data_key="to", allow_none=True, metadata={"description": "as asked; null: open"})
    symbol = fields.String(allow_none=True, metadata={"description": "as asked; null: every symbol"})
    trades = fields.Nested(TradeStatsSchema)
    by_symbol = fields.List(fields.Nested(SymbolStatsSchema), metadata={"description": "by symbol name"})
    equity = fields.Nested(EquityStatsSchema)
    slippage = fields.Nested(SlippageStatsSchema)


@blp.get("")
@login_required
@blp.arguments(AnalyticsQuerySchema, location="query")
@blp.response(200, AnalyticsSchema)
@blp.errors(401, 404, 503)
def get_analytics(query: dict[str, Any]) -> Any:
    """Performance of one of your accounts over [from, to)

    Trades: the account's TradeGuard trades closed, with their P&L (profit, swap and commission), in
    [from, to). Equity: its snapshots in [from, to), across their sync, minute and hour tiers. Slippage:
    the slippage of the divergence events reconciliation recorded in [from, to), one per position, in
    pips (signed: positive adverse, negative favourable); only slippage beyond the tolerance
    (TRADEGUARD_SLIPPAGE_PIPS) is recorded, so these are the outliers, not every fill. `symbol` narrows
    the trades, the breakdown by symbol and the slippage; the equity is always the whole account's.

    Ratios, percentages and averages are rounded half up to 4 places, holding times to the millisecond;
    sums and extremes are exact. Sharpe and Sortino are annualised by √252. A figure that cannot be
    computed (no trades, no losing trades for the profit factor, fewer than 2 daily returns, ...) is null
    and its `_reason` says why; it is never infinite.
    """
    return analytics_queries.own_report(
        db.session,
        current_user(),
        query["account_id"],
        start=query["start"],
        end=query["end"],
        symbol=query["symbol"],
    )
