"""marshmallow schemas: what the API accepts and returns. The OpenAPI document is generated from these."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import marshmallow as ma
from marshmallow import fields, pre_dump, pre_load, validate, validates, validates_schema

from shared.guards.settings import (
    LIMIT_ACTIONS,
    MARKET_ACTIONS,
    MAX_AMOUNT,
    MAX_LOTS,
    MAX_PIPS,
    PERIODS,
    REFERENCES,
    RESUMES,
)
from shared.models import ALERT_STATUSES, Decision, DeliveryStatus, Role, Side, SignalStatus, TradeState
from shared.mt5.terminals import SCHEMES as TERMINAL_SCHEMES
from shared.mt5.terminals import terminal_url_problem
from shared.notifications.events import ALL_EVENTS
from shared.notifications.rules import MAX_URL_LENGTH
from shared.signals.rules import price_level_errors
from web.extensions import declared_terminals

MAX_ID = 2**31 - 1
MAX_LOGIN = 2**63 - 1

# A decimal as text, the only spelling the API accepts in a string and the one it always sends: digits,
# an optional sign and fraction. Python's Decimal() would also take "1_000", "0.1e1", " 0.1", "NaN" and
# non-ASCII digits; a client that sends one of those has a bug we should tell it about, not guess at.
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# The decimals a client may send are all greater than 0: the same spelling, with no sign and some digit
# other than 0 (for the document; ExactDecimal checks the value itself).
POSITIVE_DECIMAL_PATTERN = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# terminal_url's schemes, in any letter case as canonical_terminal_url reads them (for the document).
TERMINAL_URL_PATTERN = "^(" + "|".join(_any_case(scheme) for scheme in TERMINAL_SCHEMES) + ")://"


def decimal_places(number: Decimal) -> int:
    """How many decimal places `number` needs, trailing zeros aside ("0.10" needs 1), counted without
    rounding: normalize() would round to the context's 28 digits first and hide a 29th."""
    _, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int) or not any(digits):  # NaN and Infinity; zero needs none
        return 0
    trailing_zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return max(0, -(exponent + trailing_zeros))


def decimal_text(value: Any, *, normalize: bool = True) -> str:
    """A decimal as DECIMAL_PATTERN spells it, never with an exponent (str() writes 1E+1 and 1E-7):
    without trailing zeros, or with the ones it has when `normalize` is false ("10000.0000")."""
    number = Decimal(value)
    return format(number.normalize() if normalize else number, "f")


class DecimalText(fields.Decimal):
    """A decimal the API sends, always as a string matching DECIMAL_PATTERN, so no precision is lost.

    `normalize=False` keeps the digits the value has (the column's scale), as the account figures,
    P&L and position fields have always been sent; the others drop trailing zeros ("0.1")."""

    def __init__(self, *, normalize: bool = True, **kwargs: Any):
        super().__init__(as_string=True, **kwargs)
        self.normalize = normalize

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else decimal_text(value, normalize=self.normalize)


class ExactDecimal(fields.Decimal):
    """A decimal the API accepts: a JSON number (read exactly: the body is parsed with Decimal for
    fractions, so 0.1 is 0.1, and 1e1 is 10) or a string matching DECIMAL_PATTERN. Greater than 0.

    Refuses more decimal places than the column keeps rather than rounding silently.
    """

    def __init__(self, *, max_places: int, max_value: Decimal, **kwargs: Any):
        super().__init__(as_string=True, allow_nan=False, **kwargs)
        self.max_places = max_places
        self.max_value = max_value

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        # Converted here, not by fields.Decimal: the pattern has checked the text already, and its str()
        # round trip would cost every signal's prices once more (bench/ingest.py).
        if isinstance(value, str):
            if not _DECIMAL_TEXT.fullmatch(value):
                raise ma.ValidationError(
                    'a number, or a string of digits with an optional sign and fraction such as "0.1" '
                    "(no exponent, spaces or underscores)"
                )
            number = Decimal(value)
        elif isinstance(value, int | Decimal) and not isinstance(value, bool):
            number = Decimal(value)
        elif isinstance(value, float):  # from Python callers only: the JSON reader makes Decimals
            number = Decimal(repr(value))
        else:
            raise self.make_error("invalid")
        if not number.is_finite():
            raise self.make_error("special")
        exponent = number.as_tuple().exponent
        # decimal_places() only when the exponent alone says too many: "0.10000" still fits 4 places.
        if (
            isinstance(exponent, int)
            and -exponent > self.max_places
            and decimal_places(number) > self.max_places
        ):
            raise ma.ValidationError(f"at most {self.max_places} decimal places")
        if number <= 0:
            raise ma.ValidationError("must be greater than 0")
        if number > self.max_value:
            raise ma.ValidationError(f"must be at most {self.max_value}")
        return number

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else decimal_text(value)


def decimal_properties(converter: Any, field: fields.Field, ret: dict[str, Any], **_: Any) -> dict[str, Any]:
    """How the OpenAPI document describes decimals (an apispec attribute function, added by
    TradeGuardApi): apispec knows only `type: number`, which is neither what the API sends nor all it
    accepts."""
    text = {"type": "string", "format": "decimal", "pattern": DECIMAL_PATTERN}
    if isinstance(field, ExactDecimal):
        # Accepted as either; "type: number" would rule the string out (ExactDecimal is mapped to no type).
        maximum = int(field.max_value) if field.max_value == int(field.max_value) else float(field.max_value)
        number = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": maximum}
        return {
            "oneOf": [number, {**text, "pattern": POSITIVE_DECIMAL_PATTERN}],
            "description": f"a number (1e1 is 10) or a decimal string; greater than 0, at most "
            f"{field.max_value}, with at most {field.max_places} decimal places",
        }
    if isinstance(field, fields.Decimal):
        return text
    return {}


def _named(enum: type[Enum], **kwargs: Any) -> fields.Enum:
    """An enum member sent as its value (a string), documented as one of them."""
    return fields.Enum(enum, by_value=True, metadata={"type": "string"}, **kwargs)


class StrictInteger(fields.Integer):
    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):  # True is an int in Python, never an id in TradeGuard
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """true or false, nothing else: marshmallow's Boolean would also take 1, "yes" and "on"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _id_field(**kwargs: Any) -> fields.Integer:
    return StrictInteger(strict=True, validate=validate.Range(min=1, max=MAX_ID), **kwargs)


def _text_problem(value: str) -> str | None:
    """Why Postgres could not store this string, if it could not."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800", which JSON can spell
            return "must be valid Unicode text"
    return None


class StrictSchema(ma.Schema):
    """Unknown fields are an error that names them, not silently dropped; and no string may be one
    Postgres cannot store (a NUL character, a lone surrogate), which would otherwise surface as a
    server error."""

    class Meta:
        unknown = ma.RAISE

    @pre_load
    def _refuse_unstorable_text(self, data: Any, **_: Any) -> Any:
        if isinstance(data, Mapping):
            bad = {
                str(name): [problem]
                for name, value in data.items()
                if isinstance(value, str) and (problem := _text_problem(value))
            }
            if bad:
                raise ma.ValidationError(bad)
        return data


# --- auth ---------------------------------------------------------------------------------------


class RegisterSchema(StrictSchema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=8, max=256))

    @pre_load
    def _strip_email(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("email"), str):
            return {**data, "email": data["email"].strip()}
        return data


class LoginSchema(StrictSchema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))


class UserSchema(ma.Schema):
    id = fields.Integer()
    email = fields.String()
    role = _named(Role)
    created_at = fields.DateTime()


class TokenSchema(ma.Schema):
    access_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()


# --- accounts -----------------------------------------------------------------------------------


class AccountCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    terminal_url = fields.String(
        required=True,
        validate=validate.Length(min=1, max=255),
        # Documents the schemes only: which terminals are allowed is the operator's list, checked below.
        metadata={"pattern": TERMINAL_URL_PATTERN},
    )
    login = StrictInteger(strict=True, required=True, validate=validate.Range(min=1, max=MAX_LOGIN))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))
    server = fields.String(required=True, validate=validate.Length(min=1, max=100))
    currency = fields.String(
        load_default="USD", validate=validate.Regexp(r"^[A-Z]{3}$", error="a 3-letter ISO code such as USD")
    )
    verify = StrictBoolean(
        load_default=True,
        metadata={
            "description": "log in to the terminal before storing the account (the default): a terminal "
            "that cannot be reached is 422 naming terminal_url, credentials it refuses are 422 naming "
            "login, password and server; false stores the account unchecked"
        },
    )

    @validates("terminal_url")
    def _check_terminal_url(self, value: str, **_: Any) -> None:
        # Only terminals the operator declared: a terminal is a process the workers send work to.
        problem = terminal_url_problem(value, declared_terminals())
        if problem:
            raise ma.ValidationError(problem)


class AccountSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    terminal_url = fields.String()
    login = fields.Integer()
    server = fields.String()
    currency = fields.String()
    created_at = fields.DateTime()


# --- strategy clients ---------------------------------------------------------------------------


class ClientCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    account_id = _id_field(required=True)


class ClientSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    account_id = fields.Integer()
    revoked = fields.Boolean()
    revoked_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class ClientCreatedSchema(ClientSchema):
    secret = fields.String(metadata={"description": "HMAC secret; shown once, store it now"})


# --- signals ------------------------------------------------------------------------------------


def _price(**kwargs: Any) -> ExactDecimal:
    """A price, stop or target: up to 10 decimal places, below the Numeric(20, 10) column's limit."""
    return ExactDecimal(max_places=10, max_value=Decimal("1000000000"), **kwargs)


class SignalCreateSchema(StrictSchema):
    instrument = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[A-Za-z0-9][A-Za-z0-9._#+-]{0,31}$",
            error="a symbol such as EURUSD (letters, digits, . _ # + -)",
        ),
    )
    side = fields.String(required=True, validate=validate.OneOf([s.value for s in Side]))
    volume = ExactDecimal(required=True, max_places=4, max_value=Decimal("100000"))
    price = _price(load_default=None, allow_none=True)
    sl = _price(load_default=None, allow_none=True)
    tp = _price(load_default=None, allow_none=True)
    ttl_seconds = StrictInteger(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=1)
    )
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))

    @validates_schema
    def _check_levels(self, data: dict[str, Any], **_: Any) -> None:
        errors = price_level_errors(data.get("side", ""), data.get("price"), data.get("sl"), data.get("tp"))
        if errors and data.get("side") in (Side.BUY.value, Side.SELL.value):
            raise ma.ValidationError(errors)
        max_ttl = self.context_max_ttl()
        ttl = data.get("ttl_seconds")
        if ttl is not None and ttl > max_ttl:
            raise ma.ValidationError({"ttl_seconds": [f"must be at most {max_ttl}"]})

    @staticmethod
    def context_max_ttl() -> int:
        from web.extensions import settings

        return settings().signal_max_ttl_seconds


class SignalSchema(ma.Schema):
    id = fields.Integer()
    status = _named(SignalStatus)
    account_id = fields.Integer()
    client_id = fields.Integer()
    instrument = fields.String()
    side = _named(Side)
    volume = DecimalText()
    price = DecimalText(allow_none=True)
    sl = DecimalText(allow_none=True)
    tp = DecimalText(allow_none=True)
    comment = fields.String(allow_none=True)
    ttl_seconds = fields.Integer()
    expires_at = fields.DateTime()
    idempotency_key = fields.String(allow_none=True)
    created_at = fields.DateTime()
    decided_at = fields.DateTime(allow_none=True)


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)  # as DecimalText


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def dump_signal(signal: Any) -> dict[str, Any]:
    """`SignalSchema().dump(signal)`, written out field by field.

    Every signal the API accepts is answered with this, and marshmallow's generic dump was about a
    tenth of that request's CPU (bench/ingest.py). The OpenAPI document still comes from
    SignalSchema, and a unit test keeps the two equal, field for field.
    """
    return {
        "id": signal.id,
        "status": signal.status.value,
        "account_id": signal.account_id,
        "client_id": signal.client_id,
        "instrument": signal.instrument,
        "side": signal.side.value,
        "volume": _decimal_text(signal.volume),
        "price": _decimal_text(signal.price),
        "sl": _decimal_text(signal.sl),
        "tp": _decimal_text(signal.tp),
        "comment": signal.comment,
        "ttl_seconds": signal.ttl_seconds,
        "expires_at": _iso(signal.expires_at),
        "idempotency_key": signal.idempotency_key,
        "created_at": _iso(signal.created_at),
        "decided_at": _iso(signal.decided_at),
    }


class PageQuerySchema(StrictSchema):
    page = StrictInteger(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = StrictInteger(load_default=20, validate=validate.Range(min=1, max=100))


class SignalQuerySchema(PageQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in SignalStatus]))


def page_of(item_schema: type[ma.Schema]) -> type[ma.Schema]:
    """A paging envelope {items, total, page, per_page} around `item_schema`."""
    return ma.Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item_schema)),
            "total": fields.Integer(),
            "page": fields.Integer(),
            "per_page": fields.Integer(),
        },
        name=item_schema.__name__.replace("Schema", "") + "Page",
    )


SignalPageSchema = page_of(SignalSchema)


# --- approvals ----------------------------------------------------------------------------------


class ApprovalCreateSchema(StrictSchema):
    signal_id = _id_field(required=True)
    decision = fields.String(required=True, validate=validate.OneOf([d.value for d in Decision]))
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class ApprovalSchema(ma.Schema):
    id = fields.Integer()
    signal_id = fields.Integer()
    user_id = fields.Integer()
    decision = _named(Decision)
    reason = fields.String(allow_none=True)
    signal_status = _named(SignalStatus, attribute="signal.status")
    created_at = fields.DateTime()


ApprovalPageSchema = page_of(ApprovalSchema)


# --- audit --------------------------------------------------------------------------------------


class AuditQuerySchema(PageQuerySchema):
    action = fields.String(load_default=None, validate=validate.Length(max=64))
    target_type = fields.String(load_default=None, validate=validate.Length(max=32))
    target_id = StrictInteger(load_default=None, validate=validate.Range(min=1, max=2**63 - 1))


class AuditEntrySchema(ma.Schema):
    id = fields.Integer()
    actor_type = fields.String()
    actor_id = fields.Integer(allow_none=True)
    action = fields.String()
    target_type = fields.String()
    target_id = fields.Integer(allow_none=True)
    meta = fields.Dict()
    created_at = fields.DateTime()


AuditPageSchema = page_of(AuditEntrySchema)


class HealthSchema(ma.Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())


# --- trades -------------------------------------------------------------------------------------


class TradeSchema(ma.Schema):
    id = fields.Integer()
    signal_id = fields.Integer()
    approval_id = fields.Integer()
    account_id = fields.Integer()
    symbol = fields.String()
    side = _named(Side)
    state = _named(TradeState)
    requested_volume = DecimalText()
    requested_price = DecimalText(allow_none=True)
    requested_sl = DecimalText(allow_none=True)
    requested_tp = DecimalText(allow_none=True)
    filled_volume = DecimalText(allow_none=True)
    filled_price = DecimalText(allow_none=True)
    magic = fields.Integer()
    comment = fields.String(allow_none=True)
    order_ticket = fields.Integer(allow_none=True)
    deal_ticket = fields.Integer(allow_none=True)
    position_ticket = fields.Integer(allow_none=True)
    attempts = fields.Integer(
        metadata={
            "description": "orders sent, plus attempts that ended in an error nobody classified (what the "
            "attempt limit counts); retries of an unreachable terminal show in last_error and next_retry_at"
        }
    )
    retcode = fields.Integer(allow_none=True)
    failure_reason = fields.String(allow_none=True, metadata={"description": "why it was rejected or failed"})
    last_error = fields.String(
        allow_none=True,
        metadata={
            "description": "the error that made the last attempt wait for another (terminal unreachable, "
            "order outcome unknown, ...); kept once the trade is finished"
        },
    )
    next_retry_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "when the next attempt is due while the trade waits for one, else null"},
    )
    created_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)
    filled_at = fields.DateTime(allow_none=True)
    # Written by reconciliation when it finds the position closed (its closing deals); null while open.
    closed_at = fields.DateTime(
        allow_none=True, metadata={"description": "when the position was closed (its last closing deal)"}
    )
    close_reason = fields.String(
        allow_none=True,
        metadata={"description": "why it was closed: sl, tp, stop_out, by_hand, expert or unknown"},
    )
    close_price = DecimalText(
        allow_none=True, metadata={"description": "the closing price, volume-weighted over the closing deals"}
    )
    pnl = DecimalText(
        normalize=False,
        allow_none=True,
        metadata={
            "description": "profit, swap and commission of all the position's deals, in the account currency"
        },
    )
    vanished_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "when reconciliation found the position gone from the terminal without a closing "
            "deal (the terminal lost it, or its history is incomplete): the trade stays open and is closed "
            "once a closing deal turns up; null otherwise"
        },
    )


class TradeQuerySchema(PageQuerySchema):
    state = fields.String(load_default=None, validate=validate.OneOf([s.value for s in TradeState]))
    account_id = StrictInteger(load_default=None, validate=validate.Range(min=1, max=MAX_ID))


TradePageSchema = page_of(TradeSchema)


# --- reconciliation, positions, status ------------------------------------------------------------


# One name for how a position was opened, in every answer (MT5's POSITION_REASON).
OPENED_FROM = "how the position was opened: desktop, mobile, web, expert (a program) or unknown"
POSITION_KEY = (
    "which position: a digest of the account's login and server, the position's identifier and its open "
    "time (a ticket alone can come back)"
)
RECONCILIATION_EVENT_TYPES = ["matched", "divergence", "closed_outside", "outside_position", "vanished"]


class PositionViewSchema(ma.Schema):
    """An open position as the last sync saw it, with its attribution."""

    account_id = fields.Integer()
    ticket = fields.Integer()
    identifier = fields.Integer()
    symbol = fields.String()
    side = fields.String()
    # Stored as str(Decimal) by the sync, which may read "1E+1": sent without the exponent.
    volume = DecimalText(normalize=False)
    price_open = DecimalText(normalize=False)
    price_current = DecimalText(normalize=False)
    sl = DecimalText(normalize=False, allow_none=True)
    tp = DecimalText(normalize=False, allow_none=True)
    profit = DecimalText(normalize=False)
    magic = fields.Integer()
    comment = fields.String()
    opened_at = fields.String()
    attribution = fields.String(metadata={"description": "tradeguard or outside"})
    trade_id = fields.Integer(allow_none=True)
    matched_by = fields.String(allow_none=True)
    divergences = fields.List(fields.String())
    opened_from = fields.String(allow_none=True, metadata={"description": OPENED_FROM})
    position_key = fields.String(metadata={"description": POSITION_KEY})
    synced_at = fields.DateTime(allow_none=True)


def _sane_year(value: Any) -> None:
    # Checked on the year as given: converting year 1 or 9999 with an offset to UTC overflows.
    if not 1970 <= value.year <= 9000:
        raise ma.ValidationError("must be a date between 1970 and 9000")


class TimeRangeQuerySchema(StrictSchema):
    """`from` and `to` of a query over time (exports, charts, analytics): ISO-8601 date-times, UTC when
    they carry no offset; `from` inclusive, `to` exclusive. A reversed or empty range is refused, naming
    `to`, rather than answered with nothing."""

    start = fields.AwareDateTime(
        data_key="from",
        load_default=None,
        default_timezone=UTC,
        validate=_sane_year,
        metadata={"description": "from this date-time on (ISO-8601; UTC without an offset)"},
    )
    end = fields.AwareDateTime(
        data_key="to",
        load_default=None,
        default_timezone=UTC,
        validate=_sane_year,
        metadata={"description": "before this date-time (ISO-8601; UTC without an offset)"},
    )

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        start, end = data.get("start"), data.get("end")
        if start is not None and end is not None and end <= start:
            raise ma.ValidationError("must be later than `from`", field_name="to")


class AccountRangeQuerySchema(TimeRangeQuerySchema):
    account_id = StrictInteger(load_default=None, validate=validate.Range(min=1, max=MAX_ID))


class ReconciliationQuerySchema(PageQuerySchema):
    event_type = fields.String(
        load_default=None,
        validate=validate.OneOf(RECONCILIATION_EVENT_TYPES),
    )
    trade_id = StrictInteger(load_default=None, validate=validate.Range(min=1, max=MAX_ID))
    since = fields.AwareDateTime(
        load_default=None,
        default_timezone=None,
        validate=_sane_year,
        metadata={"description": "a date-time with its UTC offset, in the years 1970 to 9000"},
    )


class ReconciliationEventSchema(ma.Schema):
    id = fields.Integer()
    account_id = fields.Integer()
    trade_id = fields.Integer(allow_none=True)
    event_type = fields.String(metadata={"description": ", ".join(RECONCILIATION_EVENT_TYPES)})
    position_ticket = fields.Integer()
    position_key = fields.String(metadata={"description": POSITION_KEY})
    symbol = fields.String()
    side = fields.String(allow_none=True)
    volume = DecimalText(allow_none=True)
    price_open = DecimalText(allow_none=True)
    sl = DecimalText(allow_none=True)
    tp = DecimalText(allow_none=True)
    opened_from = fields.String(allow_none=True, metadata={"description": OPENED_FROM})
    close_reason = fields.String(allow_none=True)
    close_price = DecimalText(allow_none=True)
    pnl = DecimalText(normalize=False, allow_none=True)
    details = fields.Dict()
    created_at = fields.DateTime()


ReconciliationPageSchema = page_of(ReconciliationEventSchema)


class GuardResumeSchema(ma.Schema):
    account_id = fields.Integer(required=True)
    state = fields.String(required=True, metadata={"description": "the guards' state now: ok | warning"})
    equity = DecimalText(
        allow_none=True,
        metadata={
            "description": "the equity last read: the new reference of the limit that halted the account"
        },
    )


class AccountStatusSchema(ma.Schema):
    account_id = fields.Integer()
    currency = fields.String()
    last_synced_at = fields.DateTime(allow_none=True)
    sync_lag_seconds = fields.Float(allow_none=True)
    last_sync_ms = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    breaker = fields.String(metadata={"description": "closed, or open until breaker_open_until"})
    breaker_open_until = fields.DateTime(allow_none=True)
    consecutive_failures = fields.Integer()
    equity = DecimalText(normalize=False, allow_none=True)
    balance = DecimalText(normalize=False, allow_none=True)
    peak_equity = DecimalText(normalize=False, allow_none=True)
    drawdown_percent = DecimalText(normalize=False, allow_none=True)
    margin_level = DecimalText(normalize=False, allow_none=True)
    open_positions = fields.Integer(allow_none=True)
    vanished_trades = fields.Integer(
        metadata={
            "description": "open trades whose position vanished from the terminal (see a trade's vanished_at)"
        }
    )


# --- webhooks -------------------------------------------------------------------------------------


class WebhookCreateSchema(StrictSchema):
    url = fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_URL_LENGTH),
        metadata={
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            "description": "an http(s) URL whose host resolves to public addresses only (checked again at "
            "every delivery); 422 naming url otherwise",
        },
    )
    # Each unknown event is named by position (`events.0`: dotted_field_errors flattens the List's errors);
    # the URL's own checks (http(s), a host that resolves to allowed addresses) are the domain's, in
    # shared.notifications.webhooks.create_webhook, which every caller goes through.
    events = fields.List(
        fields.String(
            validate=validate.OneOf(ALL_EVENTS, error=f"unknown event; one of: {', '.join(ALL_EVENTS)}")
        ),
        load_default=None,
        validate=validate.Length(min=1, error="name at least one event, or leave it out for all"),
        metadata={"description": "the events it receives; omitted: every event, including ones added later"},
    )


def webhook_fields(webhook: Any) -> dict[str, Any]:
    """What WebhookSchema shows of a webhook: its events spelled out when it receives them all."""
    return {
        "id": webhook.id,
        "url": webhook.url,
        "events": list(ALL_EVENTS) if webhook.events is None else list(webhook.events),
        "all_events": webhook.events is None,
        "created_at": webhook.created_at,
    }


class WebhookSchema(ma.Schema):
    id = fields.Integer()
    url = fields.String()
    events = fields.List(fields.String(), metadata={"description": "the events it receives"})
    all_events = fields.Boolean(
        metadata={"description": "true when it receives every event, including ones added later"}
    )
    created_at = fields.DateTime()

    @pre_dump
    def _expand_events(self, webhook: Any, **_: Any) -> Any:
        if isinstance(webhook, Mapping):  # already expanded (with its secret, just created)
            return webhook
        return webhook_fields(webhook)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(
        metadata={"description": "the HMAC-SHA256 signing secret; shown once, store it now"}
    )


class DeliveryQuerySchema(PageQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in DeliveryStatus]))


class DeliverySchema(ma.Schema):
    id = fields.Integer()
    delivery_id = fields.String(
        metadata={"description": "the payload's id and X-TradeGuard-Delivery: the same on every attempt"}
    )
    event = fields.String()
    status = _named(DeliveryStatus)
    status_code = fields.Integer(allow_none=True, metadata={"description": "the receiver's last answer"})
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    next_attempt_at = fields.DateTime(
        allow_none=True, metadata={"description": "when a pending delivery is tried next"}
    )
    payload = fields.Dict(metadata={"description": "the JSON body sent"})
    created_at = fields.DateTime()
    delivered_at = fields.DateTime(allow_none=True)


DeliveryPageSchema = page_of(DeliverySchema)


# --- risk settings --------------------------------------------------------------------------------
#
# The document is validated as a whole by shared.guards.settings.validate_settings (the view calls it, so
# that errors name nested fields the way it does: `drawdown_limits.0.max_percent`). These schemas
# describe it for the OpenAPI document and send it back as stored: numbers stay the numbers the owner
# wrote (Raw, not Decimal: a percent is a JSON number here, unlike money).


def _number(
    *, maximum: int | None = None, integer: bool = False, minimum: int | None = None, **kwargs: Any
) -> fields.Raw:
    bounds: dict[str, Any] = (
        {"minimum": minimum} if minimum is not None else {"minimum": 0, "exclusiveMinimum": True}
    )
    if maximum is not None:
        bounds["maximum"] = maximum
    kind = "integer" if integer else "number"
    return fields.Raw(metadata={"type": kind, **bounds, **kwargs.pop("metadata", {})}, **kwargs)


class DrawdownLimitDocSchema(StrictSchema):
    name = fields.String(
        required=True,
        validate=validate.Length(min=1, max=100),
        metadata={"description": "unique among the account's limits"},
    )
    period = fields.String(required=True, validate=validate.OneOf(PERIODS))
    reference = fields.String(
        required=True,
        validate=validate.OneOf(REFERENCES),
        metadata={"description": "what the drawdown is measured from"},
    )
    warn_percent = _number(maximum=100, allow_none=True, metadata={"description": "below max_percent"})
    max_percent = _number(
        maximum=100, allow_none=True, metadata={"description": "max_percent, max_amount or both are set"}
    )
    max_amount = _number(
        maximum=MAX_AMOUNT, allow_none=True, metadata={"description": "in the account currency"}
    )
    action = fields.String(validate=validate.OneOf(LIMIT_ACTIONS), metadata={"description": "default warn"})
    resume = fields.String(
        validate=validate.OneOf(RESUMES),
        metadata={"description": "default manual; a lifetime limit resumes manually"},
    )


class MarketLimitsDocSchema(StrictSchema):
    max_spread_pips = _number(maximum=MAX_PIPS, allow_none=True)
    max_gap_pips = _number(maximum=MAX_PIPS, allow_none=True)
    stale_quote_seconds = _number(integer=True, minimum=1, maximum=86_400, allow_none=True)
    action = fields.String(validate=validate.OneOf(MARKET_ACTIONS), metadata={"description": "default warn"})


class OrderLimitsDocSchema(StrictSchema):
    """Checked before every order is sent; null turns a limit off (the default)."""

    max_lots_per_order = _number(maximum=MAX_LOTS, allow_none=True)
    max_open_positions = _number(
        integer=True,
        minimum=0,
        maximum=100_000,
        allow_none=True,
        metadata={"description": "open positions after the order, those opened outside TradeGuard included"},
    )
    max_total_lots = _number(
        maximum=MAX_LOTS, allow_none=True, metadata={"description": "open lots after the order"}
    )
    max_orders_per_minute = _number(
        integer=True,
        minimum=0,
        maximum=100_000,
        allow_none=True,
        metadata={"description": "orders sent in the last 60 s, this one included"},
    )
    max_risk_percent_per_trade = _number(
        maximum=100,
        allow_none=True,
        metadata={
            "description": "the loss at the SL, in percent of equity; an order without an SL is refused"
        },
    )
    symbols = fields.List(
        fields.String(validate=validate.Length(min=1, max=32)),
        allow_none=True,
        validate=validate.Length(max=500),
        metadata={"description": "the only symbols orders may be sent for"},
    )


class RiskSettingsDocSchema(StrictSchema):
    """An account's risk settings. A new account has the defaults: drawdown guards that warn and never
    close, order limits off."""

    grace_seconds = _number(integer=True, minimum=0, maximum=3600, required=True)
    confirmations = _number(integer=True, minimum=1, maximum=20, required=True)
    drawdown_limits = fields.List(
        fields.Nested(DrawdownLimitDocSchema), required=True, validate=validate.Length(max=20)
    )
    min_margin_level_percent = _number(maximum=1_000_000, allow_none=True)
    market = fields.Nested(MarketLimitsDocSchema, required=True)
    orders = fields.Nested(OrderLimitsDocSchema, required=True)


# --- guards and alerts ------------------------------------------------------------------------------

GUARD_STATES = ["ok", "warning", "alert", "halted"]
ALERT_TYPES = ["drawdown", "margin", "market"]


class AlertCloseSchema(ma.Schema):
    id = fields.Integer()
    position_ticket = fields.Integer()
    symbol = fields.String()
    side = fields.String(metadata={"description": "buy or sell: the position's side"})
    volume = DecimalText()
    state = fields.String(
        metadata={
            "description": "pending (nothing sent yet), sent (outcome not known yet), closed, gone (closed "
            "by something else first) or failed"
        }
    )
    attempts = fields.Integer()
    close_price = DecimalText(allow_none=True)
    pnl = DecimalText(normalize=False, allow_none=True, metadata={"description": "in the account currency"})
    error = fields.String(allow_none=True)
    trade_id = fields.Integer(allow_none=True)
    deal_ticket = fields.Integer(allow_none=True)
    sent_at = fields.DateTime(allow_none=True)
    closed_at = fields.DateTime(allow_none=True)


class AlertSchema(ma.Schema):
    id = fields.Integer()
    account_id = fields.Integer()
    alert_type = fields.String(validate=validate.OneOf(ALERT_TYPES))
    limit_name = fields.String(allow_none=True, metadata={"description": "the drawdown limit's name"})
    symbol = fields.String(allow_none=True, metadata={"description": "the market guard's symbol"})
    reason = fields.String()
    status = fields.String(
        validate=validate.OneOf(ALERT_STATUSES),
        metadata={
            "description": "pending while its grace period runs (until close_at), closing, then executed, "
            "cancelled (the breach cleared) or failed"
        },
    )
    currency = fields.String()
    drawdown_percent = DecimalText(allow_none=True)
    drawdown_amount = DecimalText(normalize=False, allow_none=True)
    equity = DecimalText(normalize=False)
    threshold_percent = DecimalText(allow_none=True)
    margin_level = DecimalText(allow_none=True)
    positions_closed_count = fields.Integer()
    total_loss = DecimalText(normalize=False)
    action_taken = fields.String(allow_none=True)
    close_at = fields.DateTime(
        metadata={"description": "when its positions are closed unless it clears first"}
    )
    created_at = fields.DateTime()
    executed_at = fields.DateTime(allow_none=True)
    details = fields.Dict()


class AlertDetailSchema(AlertSchema):
    closes = fields.List(fields.Nested(AlertCloseSchema), metadata={"description": "each position it closes"})


AlertPageSchema = page_of(AlertSchema)


class AlertQuerySchema(PageQuerySchema):
    account_id = StrictInteger(load_default=None, validate=validate.Range(min=1, max=MAX_ID))
    status = fields.String(load_default=None, validate=validate.OneOf(ALERT_STATUSES))
    since = fields.AwareDateTime(
        load_default=None,
        default_timezone=None,
        validate=_sane_year,
        metadata={
            "description": "raised at or after: a date-time with its UTC offset, in the years 1970 to 9000"
        },
    )


class LimitStandingSchema(ma.Schema):
    name = fields.String()
    period = fields.String(validate=validate.OneOf(PERIODS))
    reference = fields.String(
        validate=validate.OneOf(REFERENCES), metadata={"description": "what the drawdown is measured from"}
    )
    reference_value = DecimalText(
        allow_none=True, metadata={"description": "the reference's value in this period; null until read"}
    )
    period_start = fields.DateTime(allow_none=True, metadata={"description": "null for a lifetime limit"})
    drawdown_percent = DecimalText(allow_none=True)
    drawdown_amount = DecimalText(allow_none=True)
    warn_percent = DecimalText(allow_none=True)
    max_percent = DecimalText(allow_none=True)
    max_amount = DecimalText(allow_none=True)
    action = fields.String(validate=validate.OneOf(LIMIT_ACTIONS))
    resume = fields.String(validate=validate.OneOf(RESUMES))
    level = fields.String(metadata={"description": "ok, warning or breach, at the last reading"})


class BlockedSymbolSchema(ma.Schema):
    symbol = fields.String()
    reason = fields.String(allow_none=True)
    kind = fields.String(allow_none=True, metadata={"description": "spread, gap or stale"})
    since = fields.DateTime(allow_none=True)


class AccountGuardsSchema(ma.Schema):
    account_id = fields.Integer()
    account_name = fields.String()
    state = fields.String(validate=validate.OneOf(GUARD_STATES))
    currency = fields.String()
    equity = DecimalText(normalize=False, allow_none=True, metadata={"description": "at the last reading"})
    balance = DecimalText(normalize=False, allow_none=True)
    margin_level = DecimalText(
        allow_none=True, metadata={"description": "percent; null when no margin is used"}
    )
    min_margin_level_percent = DecimalText(allow_none=True)
    read_at = fields.DateTime(
        allow_none=True, metadata={"description": "the last reading; null before the first"}
    )
    halted_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "set while every new order is refused until the account resumes"},
    )
    halted_reason = fields.String(allow_none=True)
    halted_limit = fields.String(allow_none=True)
    halted_resume = fields.String(allow_none=True, metadata={"description": "manual or next_period"})
    limits = fields.List(fields.Nested(LimitStandingSchema))
    blocked_symbols = fields.List(fields.Nested(BlockedSymbolSchema))
    market_warnings = fields.List(
        fields.Nested(BlockedSymbolSchema),
        metadata={
            "description": "symbols with a confirmed market problem that the market guard, its action "
            "being warn, only tells of; `since`: its first warning"
        },
    )
    active_alert = fields.Nested(AlertDetailSchema, allow_none=True)
