"""An account's risk settings: one JSON document, validated as a whole, and the typed view the guards
and the pre-trade checks read.

The defaults are what a new account gets: guards that warn and never close, order limits off (`null`),
so that nothing that worked before the owner chose limits is refused by a default.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

from shared.core.errors import InvalidInput, dotted_field_errors

PERIODS = ("day", "week", "month", "lifetime")
REFERENCES = ("peak_equity", "period_start_balance", "period_start_equity", "initial_balance")
LIMIT_ACTIONS = ("warn", "block", "close")
RESUMES = ("manual", "next_period")
MARKET_ACTIONS = ("warn", "block", "close")

DEFAULT_SETTINGS: dict[str, Any] = {
    "grace_seconds": 10,
    "confirmations": 2,
    "drawdown_limits": [
        {
            "name": "daily loss",
            "period": "day",
            "reference": "period_start_balance",
            "warn_percent": 4,
            "max_percent": 5,
            "max_amount": None,
            "action": "warn",
            "resume": "next_period",
        },
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": 8,
            "max_percent": 10,
            "max_amount": None,
            "action": "warn",
            "resume": "manual",
        },
    ],
    "min_margin_level_percent": None,
    # A default spread limit is for a blow-out, not for a market's ordinary width: at 20 pips the
    # simulator's gold (2 digits, 30 points: a pip is a point there) had every holder of it warned for as
    # long as it quoted; at 50 it is quiet, and the simulator's forex majors (1-1.4 pips) must widen some
    # forty- to fifty-fold to warn.
    "market": {"max_spread_pips": 50, "max_gap_pips": 50, "stale_quote_seconds": 120, "action": "warn"},
    "orders": {
        "max_lots_per_order": None,
        "max_open_positions": None,
        "max_total_lots": None,
        "max_orders_per_minute": None,
        "max_risk_percent_per_trade": None,
        "symbols": None,
    },
}


def default_settings() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_SETTINGS)


# --- validation -----------------------------------------------------------------------------------------


# Upper bounds no real account reaches, there so that every figure stays an ordinary number: a decimal
# such as 1e999999999 is valid JSON, and turning it into the stored document's int would take the worker
# minutes.
MAX_AMOUNT = 10**12  # in the account currency
MAX_PIPS = 100_000
MAX_LOTS = 100_000  # as a signal's volume


def _stored_as_given(value: Decimal) -> None:
    # The document is stored as JSON numbers: a value a float cannot hold would be checked as given and
    # stored as another one (4.99999999999999999999 under a maximum of 5 stored as 5.0, equal to it; a
    # tiny positive maximum stored as 0.0, closing at any drawdown).
    if Decimal(str(float(value))) != value:
        raise ma.ValidationError("has more digits than can be stored: give at most 15 significant digits")


def _positive(maximum: int) -> fields.Decimal:
    # Decimals, never floats: 5.1 % must compare as 5.1, not 5.0999999.
    checks: list[Callable[[Any], Any]] = [
        validate.Range(min=0, min_inclusive=False, max=maximum),
        _stored_as_given,
    ]
    return fields.Decimal(allow_none=True, load_default=None, allow_nan=False, validate=checks)


def _storable(text: str) -> None:
    # Postgres' JSONB cannot hold a NUL character, nor the lone surrogate JSON can spell ("\ud800"): a
    # name with one would be a server error on saving instead of this field's 422.
    if "\x00" in text:
        raise ma.ValidationError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ma.ValidationError("must be valid Unicode text") from None


class _Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE


class DrawdownLimitSchema(_Strict):
    name = fields.String(required=True, validate=[validate.Length(min=1, max=100), _storable])
    period = fields.String(required=True, validate=validate.OneOf(PERIODS))
    reference = fields.String(required=True, validate=validate.OneOf(REFERENCES))
    warn_percent = _positive(100)
    max_percent = _positive(100)
    max_amount = _positive(MAX_AMOUNT)
    action = fields.String(load_default="warn", validate=validate.OneOf(LIMIT_ACTIONS))
    resume = fields.String(load_default="manual", validate=validate.OneOf(RESUMES))

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("max_percent") is None and data.get("max_amount") is None:
            raise ma.ValidationError("set max_percent, max_amount or both", "max_percent")
        warn, maximum = data.get("warn_percent"), data.get("max_percent")
        if warn is not None and maximum is not None and warn >= maximum:
            raise ma.ValidationError(f"must be below max_percent ({maximum})", "warn_percent")
        if data.get("period") == "lifetime" and data.get("resume") == "next_period":
            raise ma.ValidationError("a lifetime limit has no next period: use manual", "resume")


class MarketSchema(_Strict):
    max_spread_pips = _positive(MAX_PIPS)
    max_gap_pips = _positive(MAX_PIPS)
    stale_quote_seconds = fields.Integer(
        allow_none=True, load_default=None, strict=True, validate=validate.Range(min=1, max=86_400)
    )
    action = fields.String(load_default="warn", validate=validate.OneOf(MARKET_ACTIONS))


class OrderLimitsSchema(_Strict):
    max_lots_per_order = _positive(MAX_LOTS)
    max_open_positions = fields.Integer(
        allow_none=True, load_default=None, strict=True, validate=validate.Range(min=0, max=100_000)
    )
    max_total_lots = _positive(MAX_LOTS)
    max_orders_per_minute = fields.Integer(
        allow_none=True, load_default=None, strict=True, validate=validate.Range(min=0, max=100_000)
    )
    max_risk_percent_per_trade = _positive(100)
    symbols = fields.List(
        fields.String(validate=[validate.Length(min=1, max=32), _storable]),
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=500),
    )


class RiskSettingsSchema(_Strict):
    grace_seconds = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=3600))
    confirmations = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=20))
    drawdown_limits = fields.List(
        fields.Nested(DrawdownLimitSchema), required=True, validate=validate.Length(max=20)
    )
    min_margin_level_percent = _positive(1_000_000)
    market = fields.Nested(MarketSchema, required=True)
    orders = fields.Nested(OrderLimitsSchema, required=True)

    @validates_schema
    def _unique_names(self, data: dict[str, Any], **_: Any) -> None:
        seen: set[str] = set()
        for index, limit in enumerate(data.get("drawdown_limits") or []):
            if limit["name"] in seen:
                duplicate = {str(index): {"name": ["another limit has this name"]}}
                raise ma.ValidationError(duplicate, "drawdown_limits")
            seen.add(limit["name"])


def validate_settings(document: Any) -> dict[str, Any]:
    """The document, checked whole and with every omitted optional value filled in, as stored. Raises
    InvalidInput naming each bad field (`drawdown_limits.0.max_percent`)."""
    if not isinstance(document, Mapping):
        raise InvalidInput("the risk settings must be a JSON object", {"body": ["must be a JSON object"]})
    try:
        loaded = RiskSettingsSchema().load(document)
    except ma.ValidationError as error:
        problems = dotted_field_errors(error.normalized_messages())
        raise InvalidInput("invalid risk settings: " + ", ".join(sorted(problems)), problems) from None
    return _as_document(loaded)


def _as_document(value: Any) -> Any:
    """JSON-ready: decimals as numbers (ints when whole), as the owner wrote them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {key: _as_document(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_document(item) for item in value]
    return value


# --- the typed view ---------------------------------------------------------------------------------------


def _dec(value: Any) -> Decimal | None:
    # Through str: the stored float 5.1 is the decimal 5.1, not 5.0999999999999996447.
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True)
class DrawdownLimit:
    name: str
    period: str
    reference: str
    warn_percent: Decimal | None
    max_percent: Decimal | None
    max_amount: Decimal | None
    action: str
    resume: str


@dataclass(frozen=True)
class MarketLimits:
    max_spread_pips: Decimal | None
    max_gap_pips: Decimal | None
    stale_quote_seconds: int | None
    action: str


@dataclass(frozen=True)
class OrderLimits:
    max_lots_per_order: Decimal | None
    max_open_positions: int | None
    max_total_lots: Decimal | None
    max_orders_per_minute: int | None
    max_risk_percent_per_trade: Decimal | None
    symbols: tuple[str, ...] | None


@dataclass(frozen=True)
class RiskSettings:
    grace_seconds: int
    confirmations: int
    drawdown_limits: tuple[DrawdownLimit, ...]
    min_margin_level_percent: Decimal | None
    market: MarketLimits
    orders: OrderLimits

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> RiskSettings:
        """The stored document (already validated), or the defaults when there is none."""
        doc = document if document is not None else DEFAULT_SETTINGS
        market, orders = doc["market"], doc["orders"]
        return cls(
            grace_seconds=int(doc["grace_seconds"]),
            confirmations=int(doc["confirmations"]),
            drawdown_limits=tuple(
                DrawdownLimit(
                    name=item["name"],
                    period=item["period"],
                    reference=item["reference"],
                    warn_percent=_dec(item.get("warn_percent")),
                    max_percent=_dec(item.get("max_percent")),
                    max_amount=_dec(item.get("max_amount")),
                    action=item.get("action", "warn"),
                    resume=item.get("resume", "manual"),
                )
                for item in doc["drawdown_limits"]
            ),
            min_margin_level_percent=_dec(doc.get("min_margin_level_percent")),
            market=MarketLimits(
                max_spread_pips=_dec(market.get("max_spread_pips")),
                max_gap_pips=_dec(market.get("max_gap_pips")),
                stale_quote_seconds=market.get("stale_quote_seconds"),
                action=market.get("action", "warn"),
            ),
            orders=OrderLimits(
                max_lots_per_order=_dec(orders.get("max_lots_per_order")),
                max_open_positions=orders.get("max_open_positions"),
                max_total_lots=_dec(orders.get("max_total_lots")),
                max_orders_per_minute=orders.get("max_orders_per_minute"),
                max_risk_percent_per_trade=_dec(orders.get("max_risk_percent_per_trade")),
                symbols=None if orders.get("symbols") is None else tuple(orders["symbols"]),
            ),
        )

    def limit(self, name: str) -> DrawdownLimit | None:
        return next((item for item in self.drawdown_limits if item.name == name), None)
