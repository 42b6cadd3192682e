"""The guards' decisions, pure: given an account's reading and where its guards stood, what each drawdown
limit, the margin guard and the market guard say now. No database, no terminal, no clock of its own.

A *reading* is the account's figures as the terminal reported them at one moment (a sync, or a guard
check). A reading that failed is not a reading: the caller never passes one, so a terminal that is down
neither confirms nor clears a breach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from shared.guards.settings import DrawdownLimit, MarketLimits

HUNDRED = Decimal(100)
OK, WARNING, BREACH = "ok", "warning", "breach"


@dataclass(frozen=True)
class Reading:
    at: datetime  # UTC
    equity: Decimal
    balance: Decimal
    margin_level: Decimal | None  # percent; None while no margin is in use


# --- periods, in broker time ---------------------------------------------------------------------------


def period_start(at: datetime, period: str, broker_offset_seconds: int) -> datetime | None:
    """When the period holding `at` began, as a UTC instant: broker midnight, the Monday, the 1st, as
    prop-trading rules count them on the trade server's clock. A lifetime has no start (None)."""
    if period == "lifetime":
        return None
    offset = timedelta(seconds=broker_offset_seconds)
    local = at + offset
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        start -= timedelta(days=start.weekday())
    elif period == "month":
        start = start.replace(day=1)
    elif period != "day":
        raise ValueError(f"unknown period {period!r}")
    return start - offset


def period_after(
    previous_start: datetime | None, at: datetime, period: str, broker_offset_seconds: int
) -> tuple[datetime | None, bool]:
    """The period a reading at `at` counts in, for a limit whose period began at `previous_start` (as
    `period_start` gave it): its start, as a UTC instant under the offset known now, and whether it is a
    new period.

    New only when the period on the server's clock moved on: a later broker-local date for a day, a later
    Monday for a week, a later 1st for a month. Not when its start moved as an instant: a change of the
    offset (learnt for the first time at noon, a DST hour) moves when broker midnight falls in UTC, and
    taken as a new period it started the day again from the figures of that moment, the day's loss so far
    forgotten. The period `previous_start` began is the broker-local date nearest to it under the offset
    now, so an offset that moved by less than 12 hours (a real one moves by an hour) names the same
    period; the start is then restated under the offset now, so the next change is measured from it. A
    reading of an earlier period than the stored one (the offset moved back across midnight, a sync's
    reading older than a check's) counts in the stored one: a period never starts again by going back."""
    start = period_start(at, period, broker_offset_seconds)
    if start is None or previous_start is None:
        return start, start != previous_start  # a lifetime; or a limit changed to or from one
    offset = timedelta(seconds=broker_offset_seconds)
    began = (previous_start + offset + timedelta(hours=12)).date()
    if not _starts_a(period, began):
        return start, True  # not a start of such a period: the owner changed the limit's period
    if (start + offset).date() > began:
        return start, True
    return datetime.combine(began, time(), tzinfo=start.tzinfo) - offset, False


def _starts_a(period: str, day: date) -> bool:
    """Whether a `period` begins on this broker-local date (every day begins one)."""
    if period == "week":
        return day.weekday() == 0
    if period == "month":
        return day.day == 1
    return True


# Every trade server's clock is within these of UTC (the world's time zones run from UTC-12 to UTC+14):
# an offset outside them is a misread quote, not a clock.
MIN_BROKER_OFFSET_SECONDS = -12 * 3600
MAX_BROKER_OFFSET_SECONDS = 14 * 3600
# How recently a symbol must have been looked at for a quote that moved since to date the server's clock:
# such a quote was priced between that look and now, so its time is now on the server's clock to within
# this (and the offset, a quarter-hour multiple, is read to within `broker_offset_seconds`' freshness).
LIVE_QUOTE_SECONDS = 60


def broker_offset_seconds(
    server_time: datetime, utc_now: datetime, *, freshness_seconds: int = 60
) -> int | None:
    """The trade server's clock minus UTC, from a quote's time (which MT5 reports in server time): rounded
    to the quarter hour every real offset is a multiple of, so latency and a quote a few seconds old do
    not shift it. None when the quote is not fresh enough to tell (more than `freshness_seconds` off a
    quarter hour), or when it gives no real offset (beyond UTC-12 or UTC+14): a closed market's last
    tick, hours old, would otherwise pass for an offset of hours.

    Its age alone does not tell a live quote from a stale one: a stale tick is within a minute of a
    quarter hour about one time in seven, 14 h old reads as UTC-12. Only a quote known to be live dates
    the clock (`live_offset_seconds`)."""
    seconds = (server_time - utc_now).total_seconds()
    offset = round(seconds / 900) * 900
    if abs(seconds - offset) > freshness_seconds:
        return None
    if not MIN_BROKER_OFFSET_SECONDS <= offset <= MAX_BROKER_OFFSET_SECONDS:
        return None
    return int(offset)


def live_offset_seconds(
    server_time: datetime,
    utc_now: datetime,
    *,
    moved: bool,
    last_seen: datetime | None,
    window_seconds: int = LIVE_QUOTE_SECONDS,
) -> int | None:
    """The trade server's clock minus UTC from a quote known to be live, else None (see
    `broker_offset_seconds`). Live: it `moved` since the symbol was last looked at (another price, a later
    time), `last_seen`, at most `window_seconds` ago. A quote that stood still, or was first seen now,
    tells nothing: a weekend's or a closed session's last tick looks exactly like it."""
    if not moved or last_seen is None:
        return None
    if not 0 < (utc_now - last_seen).total_seconds() <= window_seconds:
        return None
    return broker_offset_seconds(server_time, utc_now)


# --- drawdown limits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitState:
    """What a limit remembers between readings (stored as JSON in guard_states.limits)."""

    period_start: datetime | None
    anchor: (
        Decimal  # the fixed reference (period-start balance or equity, initial balance, or a resume's equity)
    )
    peak: Decimal  # the highest equity since the period started (or since a resume)
    streak: int = 0  # consecutive breached readings
    warned: bool = False  # a warning was sent since the limit was last ok

    def to_json(self, assessment: LimitAssessment | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "period_start": None if self.period_start is None else self.period_start.isoformat(),
            "anchor": str(self.anchor),
            "peak": str(self.peak),
            "streak": self.streak,
            "warned": self.warned,
        }
        if assessment is not None:
            row |= {
                "reference": str(assessment.reference),
                "drawdown_amount": str(assessment.drawdown_amount),
                "drawdown_percent": str(assessment.drawdown_percent),
                "level": assessment.level,
            }
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any] | None) -> LimitState | None:
        if not row or "anchor" not in row:
            return None
        start = row.get("period_start")
        return cls(
            period_start=None if start is None else datetime.fromisoformat(start),
            anchor=Decimal(row["anchor"]),
            peak=Decimal(row["peak"]),
            streak=int(row.get("streak", 0)),
            warned=bool(row.get("warned", False)),
        )


@dataclass(frozen=True)
class LimitAssessment:
    limit: DrawdownLimit
    state: LimitState  # to store
    reference: Decimal
    drawdown_amount: Decimal  # reference - equity, in the account currency (negative: above it)
    drawdown_percent: Decimal  # of the reference
    level: str  # ok | warning | breach (this reading)
    confirmed: bool  # breached on `confirmations` readings in a row: act
    warn_now: bool  # crossed into warning (or straight into breach) since it was last ok: tell the owner
    new_period: bool  # this reading began a new period (a `next_period` halt ends)


def _fresh_state(
    limit: DrawdownLimit, reading: Reading, start: datetime | None, initial: Decimal
) -> LimitState:
    anchors = {
        "period_start_balance": reading.balance,
        "period_start_equity": reading.equity,
        "initial_balance": initial,
        "peak_equity": reading.equity,
    }
    return LimitState(period_start=start, anchor=anchors[limit.reference], peak=reading.equity)


def assess_limit(
    limit: DrawdownLimit,
    previous: LimitState | None,
    reading: Reading,
    *,
    initial_balance: Decimal,
    broker_offset_seconds: int,
    confirmations: int,
    presumed: int = 0,
) -> LimitAssessment:
    """One drawdown limit against one reading.

    `presumed`: breached readings taken to have come just before this one (the guards' watch estimate,
    see `engine.record_reading`); they count towards the streak only when this reading breaches too.

    A new period (one the server's clock moved into, `period_after`; not a change of the offset alone)
    or the first reading starts the limit afresh: its anchor is the balance or equity of that first
    reading in the period (the nearest the guard saw to the period's start), its peak that equity.
    Drawdown = reference - equity; it breaches at `max_percent` or `max_amount`, whichever comes first,
    and warns at `warn_percent`."""
    if previous is None:
        new_period = False  # the first reading starts the limit, and no period rolled over
        state = _fresh_state(
            limit, reading, period_start(reading.at, limit.period, broker_offset_seconds), initial_balance
        )
    else:
        start, new_period = period_after(
            previous.period_start, reading.at, limit.period, broker_offset_seconds
        )
        state = (
            _fresh_state(limit, reading, start, initial_balance)
            if new_period
            else replace(previous, period_start=start)
        )
    state = replace(state, peak=max(state.peak, reading.equity))
    reference = state.peak if limit.reference == "peak_equity" else state.anchor

    amount = reference - reading.equity
    percent = (amount / reference * HUNDRED) if reference > 0 else Decimal(0)
    breached = (limit.max_percent is not None and percent >= limit.max_percent) or (
        limit.max_amount is not None and amount >= limit.max_amount
    )
    warning = limit.warn_percent is not None and percent >= limit.warn_percent
    level = BREACH if breached else WARNING if warning else OK

    streak = state.streak + presumed + 1 if breached else 0
    warn_now = level != OK and not state.warned
    state = replace(state, streak=streak, warned=level != OK)
    return LimitAssessment(
        limit=limit,
        state=state,
        reference=reference,
        drawdown_amount=amount,
        drawdown_percent=percent.quantize(Decimal("0.0001")),
        level=level,
        confirmed=breached and streak >= confirmations,
        warn_now=warn_now,
        new_period=new_period,
    )


def resumed_state(previous: LimitState | None, equity: Decimal) -> LimitState | None:
    """A limit after its account resumes: its reference is the equity now, so that the drawdown that
    halted the account does not halt it again at the next reading."""
    if previous is None:
        return None
    return replace(previous, anchor=equity, peak=equity, streak=0, warned=False)


# --- margin -----------------------------------------------------------------------------------------------


def margin_breached(margin_level: Decimal | None, minimum: Decimal | None) -> bool:
    """Under the minimum margin level. No margin in use (level None) is never a breach."""
    return minimum is not None and margin_level is not None and margin_level < minimum


# --- the market ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketView:
    """What the market guard last saw of one symbol on one trade server."""

    symbol: str
    spread_pips: Decimal
    gap_pips: Decimal  # the jump from the quote before
    quoted_at: datetime  # the quote's time, in UTC
    trading: bool  # the symbol's session is open


# The market guard's streaks (and warnings) live beside the drawdown limits' in `GuardState.limits`, under
# this prefix and the symbol.
MARKET_KEY = "market:"


def market_entries(limits: Mapping[str, Any] | None) -> dict[str, Any]:
    """The market guard's entry for each symbol in a guard state's limits, by symbol."""
    return {
        name.removeprefix(MARKET_KEY): entry
        for name, entry in (limits or {}).items()
        if name.startswith(MARKET_KEY)
    }


def market_warnings(limits: Mapping[str, Any] | None) -> dict[str, Any]:
    """The market guard's entries whose problem was confirmed and told (its action `warn`), by symbol."""
    return {
        symbol: entry
        for symbol, entry in market_entries(limits).items()
        if isinstance(entry, Mapping) and entry.get("warned")
    }


def standing_warning(
    previous: Mapping[str, Any], streak: int, kind: str, reason: str, at: datetime
) -> dict[str, Any]:
    """A symbol's entry once its market problem is confirmed and, the market guard set to warn, told:
    the streak, what is wrong now, and since the first reading that told it (kept while it stands)."""
    since = previous.get("since") if previous.get("warned") else at.isoformat()
    return {"streak": streak, "warned": True, "kind": kind, "reason": reason, "since": since}


def market_problem(view: MarketView, limits: MarketLimits, now: datetime) -> tuple[str, str] | None:
    """(kind, reason) when this symbol must not be traded now, else None: a spread too wide, a jump
    between consecutive quotes too wide, or a quote too old while the symbol trades (a closed market's
    quotes are old by nature)."""
    if limits.max_spread_pips is not None and view.spread_pips > limits.max_spread_pips:
        return "spread", f"spread {view.spread_pips} pips > {limits.max_spread_pips}"
    if limits.max_gap_pips is not None and view.gap_pips > limits.max_gap_pips:
        return "gap", f"price jumped {view.gap_pips} pips > {limits.max_gap_pips}"
    if limits.stale_quote_seconds is not None and view.trading:
        age = (now - view.quoted_at).total_seconds()
        if age > limits.stale_quote_seconds:
            return "stale", f"no quote for {int(age)} s > {limits.stale_quote_seconds} s"
    return None


def gap_pips(previous_bid: Decimal | None, bid: Decimal, pip: Decimal) -> Decimal:
    if previous_bid is None or pip <= 0:
        return Decimal(0)
    return (abs(bid - previous_bid) / pip).quantize(Decimal("0.01"))


# --- what an alert closes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenPosition:
    ticket: int
    key: str
    symbol: str
    side: str
    volume: Decimal
    profit: Decimal
    notional: Decimal  # volume x contract size x price: its share of the margin


def positions_to_close(
    alert_type: str,
    positions: Sequence[OpenPosition],
    *,
    symbol: str | None = None,
    equity: Decimal | None = None,
    margin: Decimal | None = None,
    min_margin_level: Decimal | None = None,
) -> list[OpenPosition]:
    """Which positions an alert closes, in the order it closes them.

    - drawdown: every position, the largest loser first;
    - market: that symbol's positions;
    - margin: the largest loser first, until the margin level is back at the minimum. Closing a position
      realises its profit (equity stays) and frees its margin, estimated as its share of the account's
      margin by notional value."""
    by_loss = sorted(positions, key=lambda p: (p.profit, p.ticket))
    if alert_type == "market":
        return [p for p in by_loss if p.symbol == symbol]
    if alert_type != "margin":
        return by_loss
    if equity is None or margin is None or min_margin_level is None:
        return by_loss
    total_notional = sum((p.notional for p in positions), Decimal(0))
    chosen: list[OpenPosition] = []
    remaining = margin
    for position in by_loss:
        # To the hundredth, as terminals report the margin level (and so that a third of a margin, in
        # decimals, does not fall short of a level it meets).
        if remaining <= 0 or (equity / remaining * HUNDRED).quantize(Decimal("0.01")) >= min_margin_level:
            break
        chosen.append(position)
        if total_notional > 0:
            remaining -= margin * position.notional / total_notional
        else:
            remaining -= margin / len(positions)
    return chosen
