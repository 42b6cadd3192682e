"""The guards' I/O edge: record a reading, act on what the rules decide, and carry out an alert.

- `record_reading`: one reading of one account (from a reconciliation sync, or a guard check that asked
  the terminal) against its risk settings. It updates the account's guard state, warns, blocks symbols,
  halts, and raises an alert; under the account's guard-state row lock, so two readings of one account
  are applied one after the other.
- `execute_alert`: when an alert's grace period ends, read the account again; cancel the alert if the
  breach cleared, else close the affected positions, each exactly once, and halt the account.
- `resume`: the owner's `POST /accounts/{id}/resume`.

Exactly once, as order execution does it (shared.execution.service): the intent (an `alert_closes` row
with the closing order's comment) is committed before the order is sent, the row says `sent` while the
outcome is not known, and a `sent` row is looked for on the terminal (a deal carrying its comment)
before anything is sent again. Every step is audited; the owner hears of it through `notify` (the
webhooks), which sends nothing until the transaction commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from shared.audit import trail
from shared.core.db import DbSession, dialect_insert, utcnow
from shared.core.errors import Conflict, NotFound
from shared.core.queue import EXECUTE_ALERT
from shared.guards import rules
from shared.guards.risk_settings import risk_settings_of
from shared.guards.settings import RiskSettings
from shared.models import (
    LIVE_ALERT_STATUSES,
    Account,
    AlertClose,
    DrawdownAlert,
    GuardState,
    MarketQuote,
    Trade,
    TradeState,
)
from shared.mt5 import constants as mt5c
from shared.mt5.errors import OrderOutcomeUnknown, PermanentTerminalError, RetryableTerminalError
from shared.mt5.ports import OpenTerminal, TerminalPort
from shared.mt5.types import Deal, Position
from shared.reconciliation.rules import position_key

log = logging.getLogger(__name__)

LIVE = LIVE_ALERT_STATUSES
FINAL_CLOSE_STATES = ("closed", "gone", "failed")
# Requotes and moved prices: nothing was done, so the close is sent again at a fresh price.
_NEW_PRICE = (mt5c.TRADE_RETCODE_REQUOTE, mt5c.TRADE_RETCODE_PRICE_CHANGED, mt5c.TRADE_RETCODE_PRICE_OFF)
_DONE = (mt5c.TRADE_RETCODE_DONE, mt5c.TRADE_RETCODE_DONE_PARTIAL)


# Tells the owner (shared.notifications.webhooks.notifier: a signed webhook per subscriber), once the
# transaction commits: (session, owner id, event, data).
Notify = Callable[[DbSession, int, str, dict[str, Any]], Any]


class Schedule(Protocol):
    """Sends a guard task after the transaction commits, to run at `at` (task name, args, when)."""

    def __call__(self, session: DbSession, task: str, args: list[Any], at: datetime) -> None: ...


def no_notify(session: DbSession, owner_id: int, event: str, data: dict[str, Any]) -> None:
    """Where no webhooks are wired (unit tests of the rules around the engine): the audit log suffices."""


@dataclass(frozen=True)
class GuardSettings:
    deviation_points: int = 20
    max_price_retries: int = 3
    # How long a `sent` close may still be executing on the terminal (its order_send outlives a dead
    # worker): absence of its deal proves nothing before this.
    in_flight_seconds: float = 10.0
    magic: int = 770077
    # How long after claiming a close a batch (`closing`) may still send its order: a send that starts
    # by then ends (the terminal's timeout) inside the in-flight window, before any look could take the
    # close for lost and send it again. The in-flight window less the terminal's timeout.
    send_after_claim_seconds: float = 3.0


DEFAULT_GUARD_SETTINGS = GuardSettings()


@dataclass
class ReadingOutcome:
    account_id: int
    state: str
    alert_id: int | None = None
    events: list[str] = field(default_factory=list)


def _audit(session: DbSession, action: str, target_type: str, target_id: int, **meta: Any) -> None:
    trail.record(
        session,
        actor_type=trail.SYSTEM,
        actor_id=None,
        action=action,
        target_type=target_type,
        target_id=target_id,
        meta=_plain(meta),
    )


def _plain(value: Any) -> Any:
    """JSON-ready: decimals and datetimes as text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _locked_state(session: DbSession, account_id: int, at: datetime) -> GuardState:
    """The account's guard state, made if missing, locked for this transaction (FOR UPDATE on Postgres;
    SQLite has one writer anyway)."""
    insert = dialect_insert(session.get_bind())
    session.execute(
        insert(GuardState.__table__)
        .values(
            account_id=account_id,
            state="ok",
            limits={},
            margin_streak=0,
            blocked_symbols={},
            broker_offset_seconds=0,
            updated_at=at,
        )
        .on_conflict_do_nothing()
    )
    state = session.scalars(
        sa.select(GuardState)
        .where(GuardState.account_id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return state


def live_alert(session: DbSession, account_id: int) -> DrawdownAlert | None:
    return session.scalars(
        sa.select(DrawdownAlert).where(DrawdownAlert.account_id == account_id, DrawdownAlert.status.in_(LIVE))
    ).first()


# --- a reading ---------------------------------------------------------------------------------------------


def record_reading(
    session: DbSession,
    account_id: int,
    reading: rules.Reading,
    *,
    currency: str,
    held_symbols: Sequence[str] = (),
    broker_offset_seconds: int | None = None,
    notify: Notify = no_notify,
    schedule: Schedule | None = None,
    presumed: int = 0,
    preloaded: Preloaded | None = None,
) -> ReadingOutcome:
    """Apply one reading of one account; the caller commits. See the module docstring.

    `presumed`: breached readings the guards' watch saw just before this one: it estimated the account's
    equity from live quotes at a drawdown maximum or under the margin minimum, and sent it to be read
    (`shared.guards.watch`). When this reading breaches too, the estimate counts as one reading of the
    run `confirmations` asks for (`rules.assess_limit`); it never stands for this one, so an account is
    always read before anything is done, and a read that does not breach ends the run as ever.

    `preloaded`: what a batch of readings read for all its accounts at once (`readings.check_accounts`):
    their settings, guard states (locked), live alerts and the market as last quoted."""
    account = preloaded.accounts.get(account_id) if preloaded else session.get(Account, account_id)
    if account is None:
        return ReadingOutcome(account_id, "gone")
    settings = preloaded.settings[account_id] if preloaded else risk_settings_of(session, account_id)
    # Made here when missing (an account's first reading), inside the caller's savepoint.
    state = (preloaded.states.get(account_id) if preloaded else None) or _locked_state(
        session, account_id, reading.at
    )
    if broker_offset_seconds is not None:
        state.broker_offset_seconds = broker_offset_seconds
    if state.initial_balance is None:
        state.initial_balance = reading.balance
    outcome = ReadingOutcome(account_id, state.state)
    owner = account.owner_id

    def tell(event: str, **data: Any) -> None:
        outcome.events.append(event)
        notify(session, owner, event, _plain({"account_id": account_id, **data}))

    stored_limits = dict(state.limits or {})
    new_limits: dict[str, Any] = {k: v for k, v in stored_limits.items() if k.startswith(rules.MARKET_KEY)}
    confirmed: list[rules.LimitAssessment] = []
    warnings: list[dict[str, Any]] = []  # told once the reading's alert, if any, is known
    any_warning = False
    for limit in settings.drawdown_limits:
        assessment = rules.assess_limit(
            limit,
            rules.LimitState.from_json(stored_limits.get(limit.name)),
            reading,
            initial_balance=state.initial_balance,
            broker_offset_seconds=state.broker_offset_seconds,
            confirmations=settings.confirmations,
            presumed=presumed,
        )
        new_limits[limit.name] = assessment.state.to_json(assessment)
        any_warning = any_warning or assessment.level != rules.OK
        figures = {
            "limit": limit.name,
            "level": assessment.level,
            "drawdown_percent": assessment.drawdown_percent,
            "drawdown_amount": assessment.drawdown_amount,
            "reference": assessment.reference,
            "equity": reading.equity,
            "warn_percent": limit.warn_percent,
            "max_percent": limit.max_percent,
            "max_amount": limit.max_amount,
            "currency": currency,
        }
        if assessment.warn_now:
            _audit(session, "guard.warning", "account", account_id, **figures)
            warnings.append(figures)
        if (
            assessment.new_period
            and state.halted_at is not None
            and state.halted_limit == limit.name
            and state.halted_resume == "next_period"
        ):
            _resume(session, state, reading.equity, "next_period", None, tell)
        if assessment.confirmed:
            confirmed.append(assessment)
    state.limits = new_limits

    # Margin.
    margin_low = rules.margin_breached(reading.margin_level, settings.min_margin_level_percent)
    state.margin_streak = state.margin_streak + presumed + 1 if margin_low else 0
    margin_confirmed = state.margin_streak >= settings.confirmations  # the streak is 0 unless low

    # The market, for the symbols the account holds and those it has blocked.
    market_close = _assess_market(
        session,
        state,
        account,
        settings,
        held_symbols,
        reading.at,
        tell,
        None if preloaded is None else preloaded.market.get(account.server, {}),
    )

    # Act. A live alert is already counting down. An account halted by a close is past acting: its
    # positions were closed and its orders are refused. One halted by a block still holds its positions,
    # so the guards that close keep watching them: a block must not switch off the close behind it.
    if preloaded is not None:
        alert = preloaded.live_alerts.get(account_id)
    else:
        alert = live_alert(session, account_id)
    raised: DrawdownAlert | None = None
    if alert is None:
        blocking = next((a for a in confirmed if a.limit.action == "block"), None)
        if blocking is not None and state.halted_at is None:
            reason = f"{blocking.limit.name}: drawdown {blocking.drawdown_percent}%"
            _halt(session, state, reason, blocking.limit, None, tell)
        if not closed_by_guard(state):
            # The first confirmed limit that closes acts; a drawdown before the margin before the
            # market, as the alert closes everything the later ones would.
            closing = next((a for a in confirmed if a.limit.action == "close"), None)
            breach = _breach(closing, margin_confirmed, market_close, settings, reading, currency)
            if breach is not None:
                alert = raised = _raise_alert(
                    session, account, settings, reading, currency, breach, tell, schedule, preloaded
                )
    # A limit that went past its warning straight to the alert this reading raised is not also sent as
    # a warning: `alert.pending` carries the same figures (and was sent first), and in a crowd breaching
    # at once the second webhook doubled the deliveries queued before the alerts' (bench/guards.py).
    for figures in warnings:
        if raised is None or raised.limit_name != figures["limit"]:
            tell("guard.warning", **figures)

    state.equity, state.balance, state.margin_level = reading.equity, reading.balance, reading.margin_level
    state.currency, state.read_at = currency, reading.at
    market_warning = bool(rules.market_warnings(state.limits))
    state.state = _summary(
        state, alert, any_warning or margin_low or market_warning or bool(state.blocked_symbols)
    )
    state.updated_at = reading.at
    outcome.state = state.state
    outcome.alert_id = alert.id if alert is not None else None
    return outcome


def _summary(state: GuardState, alert: DrawdownAlert | None, warning: bool) -> str:
    if state.halted_at is not None:
        return "halted"
    if alert is not None:
        return "alert"
    return "warning" if warning else "ok"


def _assess_market(
    session: DbSession,
    state: GuardState,
    account: Account,
    settings: RiskSettings,
    held_symbols: Sequence[str],
    at: datetime,
    tell: Callable[..., None],
    server_views: Mapping[str, rules.MarketView] | None = None,
) -> tuple[str, str] | None:
    """Update the account's blocked symbols from what the market guard last saw on its server (read
    here, unless `server_views` has it by symbol); the (symbol, reason) whose positions the market guard
    closes, if its action says so and it is confirmed."""
    blocked = dict(state.blocked_symbols or {})
    symbols = sorted(set(held_symbols) | set(blocked))
    # A symbol neither held nor blocked any more has nothing left to watch: its streak would keep the
    # account "building up" a breach (`readings._unconfirmed`: read again after every sync) and its
    # warning would keep it in `warning`.
    limits = {
        key: value
        for key, value in (state.limits or {}).items()
        if not key.startswith(rules.MARKET_KEY) or key.removeprefix(rules.MARKET_KEY) in symbols
    }
    if not symbols:
        state.limits = limits
        return None
    if server_views is not None:
        views = {symbol: server_views[symbol] for symbol in symbols if symbol in server_views}
    else:
        views = market_views(session, account.server, symbols)
    to_close: tuple[str, str] | None = None
    for symbol in symbols:
        view = views.get(symbol)
        if view is None:
            continue  # never quoted here yet: nothing to say
        problem = rules.market_problem(view, settings.market, at)
        key = f"{rules.MARKET_KEY}{symbol}"
        previous = limits.get(key) or {}
        streak = previous.get("streak", 0) + 1 if problem else 0
        limits[key] = {"streak": streak}
        if problem is None:
            if symbol in blocked:
                del blocked[symbol]
                _audit(session, "market.unblocked", "account", account.id, symbol=symbol)
                tell("market.unblocked", symbol=symbol)
            limits.pop(key)
            continue
        kind, reason = problem
        if streak < settings.confirmations:
            continue
        if settings.market.action == "warn":
            # Notify only, once while the problem lasts: the owner chose to trade through it. What is
            # wrong now and since when stay beside the streak, for the owner's view of the guards.
            limits[key] = rules.standing_warning(previous, streak, kind, reason, at)
            if not previous.get("warned"):
                figures = {"guard": "market", "symbol": symbol, "kind": kind, "reason": reason}
                _audit(session, "guard.warning", "account", account.id, **figures)
                tell("guard.warning", **figures)
            continue
        if symbol not in blocked:
            blocked[symbol] = {"reason": reason, "since": at.isoformat(), "kind": kind}
            _audit(session, "market.blocked", "account", account.id, symbol=symbol, kind=kind, reason=reason)
            tell("market.blocked", symbol=symbol, kind=kind, reason=reason)
        if settings.market.action == "close" and symbol in held_symbols and to_close is None:
            to_close = (symbol, reason)
    state.blocked_symbols = blocked
    state.limits = limits
    return to_close


@dataclass(frozen=True)
class Breach:
    """What an alert is raised for."""

    alert_type: str  # drawdown | margin | market
    reason: str
    limit_name: str | None = None
    symbol: str | None = None
    drawdown_percent: Decimal | None = None
    drawdown_amount: Decimal | None = None
    threshold_percent: Decimal | None = None


def _breach(
    acting: rules.LimitAssessment | None,
    margin_confirmed: bool,
    market_close: tuple[str, str] | None,
    settings: RiskSettings,
    reading: rules.Reading,
    currency: str,
) -> Breach | None:
    if acting is not None:
        limit = acting.limit
        return Breach(
            "drawdown",
            f"{limit.name}: drawdown {acting.drawdown_percent}% ({acting.drawdown_amount} {currency}) "
            f"of {acting.reference}",
            limit_name=limit.name,
            drawdown_percent=acting.drawdown_percent,
            drawdown_amount=acting.drawdown_amount,
            threshold_percent=limit.max_percent,
        )
    if margin_confirmed:
        minimum = settings.min_margin_level_percent
        return Breach(
            "margin", f"margin level {reading.margin_level}% < {minimum}%", threshold_percent=minimum
        )
    if market_close is not None:
        symbol, reason = market_close
        return Breach("market", f"{symbol}: {reason}", symbol=symbol)
    return None


def _raise_alert(
    session: DbSession,
    account: Account,
    settings: RiskSettings,
    reading: rules.Reading,
    currency: str,
    breach: Breach,
    tell: Callable[..., None],
    schedule: Schedule | None,
    preloaded: Preloaded | None = None,
) -> DrawdownAlert:
    """A pending alert: the owner is told at once when the close will happen, and the close is scheduled
    for then (after the commit)."""
    close_at = reading.at + timedelta(seconds=settings.grace_seconds)
    alert = DrawdownAlert(
        account_id=account.id,
        owner_id=account.owner_id,
        alert_type=breach.alert_type,
        limit_name=breach.limit_name,
        symbol=breach.symbol,
        reason=breach.reason[:300],
        currency=currency,
        drawdown_percent=breach.drawdown_percent,
        drawdown_amount=breach.drawdown_amount,
        equity=reading.equity,
        threshold_percent=breach.threshold_percent,
        margin_level=reading.margin_level,
        positions_closed_count=0,
        total_loss=Decimal(0),
        status="pending",
        close_at=close_at,
        created_at=reading.at,
        details={},
    )
    # Its id now, without a flush (which would write each of a batch's readings on its own): taken from
    # the table's sequence on Postgres; SQLite has none, and flushes.
    next_id = _next_alert_id(session, preloaded)
    if next_id is not None:
        alert.id = next_id
    session.add(alert)
    if next_id is None:
        session.flush()
    figures = {
        "alert_id": alert.id,
        "type": breach.alert_type,
        "reason": alert.reason,
        "limit": breach.limit_name,
        "symbol": breach.symbol,
        "equity": reading.equity,
        "drawdown_percent": breach.drawdown_percent,
        "threshold_percent": breach.threshold_percent,
        "close_at": close_at,
        "currency": currency,
    }
    _audit(session, "alert.pending", "alert", alert.id, account_id=account.id, **figures)
    tell("alert.pending", **figures)
    if schedule is not None:
        # At the time the owner was told, not `grace_seconds` after the commit: a batch of readings
        # commits a few hundred ms after its first reading (bench/guards.py: closes that late).
        schedule(session, EXECUTE_ALERT, [alert.id], close_at)
    return alert


# `count` ids at once: one statement, compiled once, whatever the count.
_NEXT_ALERT_IDS = sa.select(
    sa.func.nextval(sa.func.pg_get_serial_sequence(DrawdownAlert.__tablename__, "id"))
).select_from(sa.func.generate_series(1, sa.bindparam("count", type_=sa.Integer)))


def _next_alert_id(session: DbSession, preloaded: Preloaded | None = None) -> int | None:
    """The next `drawdown_alerts` id from its sequence, on Postgres (None elsewhere). Asked on the
    session's connection, without flushing what the session holds. A batch of readings (`preloaded`)
    takes an id for each of its accounts in one round trip when it raises its first alert, and the rest
    of its alerts use those: one round trip per alert was half of a crowd's statements, and a sixth of its
    check's time (bench/guards.py). Ids a batch took and did not use are gaps, as a rolled-back insert
    leaves."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return None
    if preloaded is not None and preloaded.alert_ids:
        return preloaded.alert_ids.pop(0)
    # As many as the batch has accounts: each raises one alert at most.
    count = len(preloaded.accounts) if preloaded is not None and preloaded.accounts else 1
    ids = sorted(connection.execute(_NEXT_ALERT_IDS, {"count": count}).scalars())
    if preloaded is not None:
        preloaded.alert_ids.extend(ids[1:])
    return int(ids[0])


def closed_by_guard(state: GuardState) -> bool:
    """Halted by an alert's close (not by a block): nothing is left for the guards to close until the
    account resumes."""
    return state.halted_at is not None and state.halted_by_alert_id is not None


def _halt(
    session: DbSession,
    state: GuardState,
    reason: str,
    limit: Any | None,
    alert: DrawdownAlert | None,
    tell: Callable[..., None],
) -> None:
    at = utcnow()
    state.halted_at = at
    state.halted_reason = reason[:200]
    state.halted_by_alert_id = alert.id if alert is not None else None
    state.halted_limit = limit.name if limit is not None else None
    state.halted_resume = limit.resume if limit is not None else "manual"
    state.state = "halted"
    meta = {
        "reason": state.halted_reason,
        "alert_id": state.halted_by_alert_id,
        "resume": state.halted_resume,
    }
    _audit(session, "account.halted", "account", state.account_id, **meta)
    tell("account.halted", **meta)


def _resume(
    session: DbSession,
    state: GuardState,
    equity: Decimal | None,
    how: str,
    user_id: int | None,
    tell: Callable[..., None],
) -> None:
    """End a halt. The limit that halted the account takes the equity now as its reference
    (rules.resumed_state), so the drawdown that halted it does not halt it again at the next reading;
    the other limits keep theirs (a drawdown they measure is still real)."""
    halting = state.halted_limit
    if equity is not None and halting is not None:
        limits = dict(state.limits or {})
        resumed = rules.resumed_state(rules.LimitState.from_json(limits.get(halting)), equity)
        if resumed is not None:
            limits[halting] = resumed.to_json()
        state.limits = limits
    previous = {"reason": state.halted_reason, "halted_at": state.halted_at}
    state.halted_at = None
    state.halted_reason = None
    state.halted_by_alert_id = None
    state.halted_limit = None
    state.halted_resume = None
    state.margin_streak = 0
    state.state = "ok"
    trail.record(
        session,
        actor_type=trail.USER if user_id is not None else trail.SYSTEM,
        actor_id=user_id,
        action="account.resumed",
        target_type="account",
        target_id=state.account_id,
        meta=_plain({"how": how, "equity": equity, **previous}),
    )
    tell("account.resumed", how=how, equity=equity)


def resume(session: DbSession, user_id: int, account_id: int, *, notify: Notify = no_notify) -> GuardState:
    """The owner resumes a halted account (`resume: manual`, or at once for any halt). The limit that
    halted it starts again from the equity last read. NotFound for an account not theirs; a 409 for one
    not halted."""
    account = session.get(Account, account_id)
    if account is None or account.owner_id != user_id:
        raise NotFound("no such account")
    state = _locked_state(session, account_id, utcnow())
    if state.halted_at is None:
        raise Conflict("the account is not halted")
    if live_alert(session, account_id) is not None:
        raise Conflict("an alert is closing this account's positions; resume once it has finished")

    def tell(event: str, **data: Any) -> None:
        notify(session, account.owner_id, event, _plain({"account_id": account_id, **data}))

    _resume(session, state, state.equity, "manual", user_id, tell)
    return state


def is_halted(session: DbSession, account_id: int) -> bool:
    return (
        session.scalar(sa.select(GuardState.halted_at).where(GuardState.account_id == account_id)) is not None
    )


# --- the close -----------------------------------------------------------------------------------------


class AlertNotDue(RetryableTerminalError):
    """The alert's grace period has not ended (a task delivered early): try again at `close_at`."""


class CloseInFlight(RetryableTerminalError):
    """A close order was sent and its outcome is not known yet; it may still be executing. Look again
    shortly: nothing will be sent until its deal is found or the in-flight window has passed."""


@dataclass(frozen=True)
class AlertResult:
    alert_id: int
    status: str
    closed: int = 0


def execute_alert(
    session: DbSession,
    alert_id: int,
    *,
    open_terminal: OpenTerminal,
    settings: GuardSettings = GuardSettings(),
    notify: Notify = no_notify,
    now: Callable[[], datetime] = utcnow,
) -> AlertResult:
    """Carry out one alert after its grace period; safe to run again at any point, also concurrently
    (the alert row is locked while it is decided, and each close goes through its own row)."""
    alert = session.get(DrawdownAlert, alert_id)
    if alert is None or alert.status not in LIVE:
        return AlertResult(alert_id, alert.status if alert else "gone")
    account = session.get(Account, alert.account_id)
    assert account is not None
    if alert.status == "pending" and now() < alert.close_at:
        raise AlertNotDue(f"alert {alert_id} closes at {alert.close_at.isoformat()}")

    tell = teller(session, notify, account.owner_id, account.id, alert_id)

    with open_terminal(account) as terminal:
        # The positions as this run's decision read them, a moment ago: the closes it committed start
        # from them (one terminal call less each); a run that finds the alert closing already reads
        # each close afresh.
        decided_now: Mapping[int, Position] = {}
        if alert.status == "pending":
            decided = _decide(session, alert, account, terminal, now(), tell)
            if isinstance(decided, AlertResult):
                return decided
            decided_now = decided
        # closing: each row to its end.
        rows = session.scalars(
            sa.select(AlertClose).where(AlertClose.alert_id == alert.id).order_by(AlertClose.id)
        ).all()
        for row in rows:
            if row.state not in FINAL_CLOSE_STATES:
                position = decided_now.get(row.position_ticket)
                _close_one(session, row, account, terminal, settings, tell, now, position)
        return _finish(session, alert, rows, tell)


def teller(
    session: DbSession, notify: Notify, owner_id: int, account_id: int, alert_id: int
) -> Callable[..., None]:
    """How an alert's run tells its owner an event: `tell(event, **data)`, the account and alert named."""

    def tell(event: str, **data: Any) -> None:
        notify(session, owner_id, event, _plain({"account_id": account_id, "alert_id": alert_id, **data}))

    return tell


def _decide(
    session: DbSession,
    alert: DrawdownAlert,
    account: Account,
    terminal: TerminalPort,
    at: datetime,
    tell: Callable[..., None],
) -> AlertResult | dict[int, Position]:
    """At the end of the grace period: read the account again; cancel when the breach cleared, else commit
    the closes to make (status `closing`). When there are closes to make: the positions read, by ticket
    (none when another run had decided already)."""
    return decide_on(session, alert, account, terminal.account(), terminal.positions(), at, tell)


def decide_on(
    session: DbSession,
    alert: DrawdownAlert,
    account: Account,
    snapshot: Any,
    positions: Sequence[Position],
    at: datetime,
    tell: Callable[..., None],
    *,
    commit: bool = True,
    preloaded: Preloaded | None = None,
) -> AlertResult | dict[int, Position]:
    """`_decide` on a reading already taken (`snapshot`: the account's figures, `positions`: its open
    positions). Commits, unless `commit` is False (a batch of decisions commits once: `closing`).
    `preloaded`: what a batch read for all its alerts at once (`closing`); the alert is then locked
    already, and its closes are written by the batch (`Preloaded.closes`)."""
    reading = rules.Reading(at, snapshot.equity, snapshot.balance, snapshot.margin_level)
    settings = preloaded.settings[account.id] if preloaded else risk_settings_of(session, account.id)
    if preloaded is None:
        # Locked as a reading would be: the alert's decision and a concurrent reading do not interleave.
        session.refresh(alert, with_for_update=True)
    if alert.status != "pending":
        if commit:
            session.commit()
        return {} if alert.status == "closing" else AlertResult(alert.id, alert.status)
    state = preloaded.states[account.id] if preloaded else _locked_state(session, account.id, at)
    still = _still_breached(alert, settings, state, reading, session, account, at)
    if still is None:
        alert.status = "cancelled"
        alert.action_taken = "cancelled"
        alert.executed_at = at
        alert.details = {**(alert.details or {}), "cleared_at_equity": str(snapshot.equity)}
        _audit(session, "alert.cancelled", "alert", alert.id, account_id=account.id, equity=snapshot.equity)
        tell("alert.cancelled", equity=snapshot.equity)
        state.state = "ok" if state.halted_at is None else "halted"
        if commit:
            session.commit()
        return AlertResult(alert.id, "cancelled")

    chosen = rules.positions_to_close(
        alert.alert_type,
        [_open_position(p, snapshot) for p in positions],
        symbol=alert.symbol,
        equity=snapshot.equity,
        margin=snapshot.margin,
        min_margin_level=settings.min_margin_level_percent,
    )
    if preloaded is not None:
        trades = {t: trade_id for (a, t), trade_id in preloaded.trades.items() if a == account.id}
    else:
        trades = _trades_by_position(session, account.id, [p.ticket for p in chosen])
    by_ticket = {p.ticket: p for p in positions}
    rows = [
        {
            "alert_id": alert.id,
            "account_id": account.id,
            "trade_id": trades.get(position.ticket),
            "position_ticket": position.ticket,
            "position_key": position.key,
            "symbol": position.symbol,
            "side": position.side,
            "volume": by_ticket[position.ticket].volume,
            "state": "pending",
            "attempts": 0,
            "created_at": at,
        }
        for position in chosen
    ]
    if preloaded is not None:
        preloaded.closes.extend(rows)  # written by the batch, with every other alert's
    elif rows:
        write_closes(session, rows, [alert.id])
    alert.status = "closing"
    alert.details = {
        **(alert.details or {}),
        "breach_at_close": still,
        "equity_at_close": str(snapshot.equity),
    }
    _audit(
        session, "alert.closing", "alert", alert.id, account_id=account.id, positions=len(chosen), why=still
    )
    if commit:
        session.commit()  # the intent, before any order is sent
    return by_ticket


def write_closes(session: DbSession, rows: list[dict[str, Any]], alert_ids: list[int]) -> None:
    """Write the closes decided (`alert_closes` rows as dicts) and name each by its own id."""
    # A position this alert already took (a second copy of its task deciding) is skipped by the unique
    # key: one close per alert and position.
    # The rows as parameters of one cached statement (executemany: batched VALUES on Postgres), not
    # written into the statement: compiling a new INSERT of every row for every batch was a fifth of a
    # close run's time (py-spy, bench/guards.py).
    session.execute(dialect_insert(session.get_bind())(AlertClose.__table__).on_conflict_do_nothing(), rows)
    # Each close named by its own id (close_comment), in the same statement for all of them.
    session.execute(
        sa.update(AlertClose)
        .where(AlertClose.alert_id.in_(alert_ids), AlertClose.comment.is_(None))
        .values(comment=sa.literal(CLOSE_COMMENT_PREFIX) + sa.cast(AlertClose.id, sa.String))
        .execution_options(synchronize_session=False)
    )


@dataclass
class Preloaded:
    """What a batch of alert decisions or ends reads at once rather than per alert (`closing`): the
    accounts' risk settings and guard states (locked), the TradeGuard trades of their positions by
    (account, position ticket), and the closes the decisions chose (written together)."""

    settings: dict[int, RiskSettings]
    states: dict[int, GuardState]
    trades: dict[tuple[int, int], int] = field(default_factory=dict)
    closes: list[dict[str, Any]] = field(default_factory=list)
    # For readings: the accounts (held here: a session keeps only weak references to what it loaded),
    # each one's live alert, and what the market guard last saw, by server and symbol.
    accounts: dict[int, Account] = field(default_factory=dict)
    live_alerts: dict[int, DrawdownAlert] = field(default_factory=dict)
    market: dict[str, dict[str, rules.MarketView]] = field(default_factory=dict)
    # Alert ids taken from the sequence ahead of use, one per account (`_next_alert_id`).
    alert_ids: list[int] = field(default_factory=list)


def market_views(session: DbSession, server: str, symbols: Collection[str]) -> dict[str, rules.MarketView]:
    """What the market guard last saw of these symbols on this trade server, by symbol."""
    return {
        row.symbol: rules.MarketView(row.symbol, row.spread_pips, row.gap_pips, row.quoted_at, row.trading)
        for row in session.scalars(
            sa.select(MarketQuote).where(MarketQuote.server == server, MarketQuote.symbol.in_(symbols))
        )
    }


def live_alerts(session: DbSession, account_ids: Collection[int]) -> dict[int, DrawdownAlert]:
    """`live_alert` for many accounts in one query."""
    return {
        alert.account_id: alert
        for alert in session.scalars(
            sa.select(DrawdownAlert)
            .where(DrawdownAlert.account_id.in_(account_ids), DrawdownAlert.status.in_(LIVE))
            .order_by(DrawdownAlert.id.desc())
        )
    }


def locked_states(
    session: DbSession, account_ids: Sequence[int], at: datetime, *, create: bool = True
) -> dict[int, GuardState]:
    """`_locked_state` for many accounts in two statements, locked in account id order (as every batch
    that locks guard states does, so that two batches never wait on each other in a circle). `create`
    False: the states that exist only (the rest are made one by one, where a failure undoes them)."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    if create:
        session.execute(
            dialect_insert(session.get_bind())(GuardState.__table__)
            .values(
                [
                    {
                        "account_id": account_id,
                        "state": "ok",
                        "limits": {},
                        "margin_streak": 0,
                        "blocked_symbols": {},
                        "broker_offset_seconds": 0,
                        "updated_at": at,
                    }
                    for account_id in ids
                ]
            )
            .on_conflict_do_nothing()
        )
    return {
        state.account_id: state
        for state in session.scalars(
            sa.select(GuardState)
            .where(GuardState.account_id.in_(ids))
            .order_by(GuardState.account_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }


def trades_by_positions(
    session: DbSession, positions: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    """The open TradeGuard trade of each (account id, position ticket), where there is one."""
    if not positions:
        return {}
    wanted = set(positions)
    rows = session.execute(
        sa.select(Trade.account_id, Trade.position_ticket, Trade.id).where(
            Trade.account_id.in_({a for a, _ in wanted}),
            Trade.position_ticket.in_({t for _, t in wanted}),
            Trade.state.in_((TradeState.FILLED, TradeState.PARTIAL)),
        )
    ).all()
    return {
        (r.account_id, r.position_ticket): r.id for r in rows if (r.account_id, r.position_ticket) in wanted
    }


CLOSE_COMMENT_PREFIX = "TG-X"


def close_comment(close_id: int) -> str:
    """Names the close in its order's comment, so that it is found again after a lost reply."""
    return f"{CLOSE_COMMENT_PREFIX}{close_id}"


def _still_breached(
    alert: DrawdownAlert,
    settings: RiskSettings,
    state: GuardState,
    reading: rules.Reading,
    session: DbSession,
    account: Account,
    at: datetime,
) -> str | None:
    """Why the alert's breach still holds on this reading, or None when it has cleared."""
    if alert.alert_type == "drawdown":
        limit = settings.limit(alert.limit_name or "")
        if limit is None:
            return None  # the owner removed the limit during the grace period
        previous = rules.LimitState.from_json((state.limits or {}).get(limit.name))
        assessment = rules.assess_limit(
            limit,
            previous,
            reading,
            initial_balance=state.initial_balance or reading.balance,
            broker_offset_seconds=state.broker_offset_seconds,
            confirmations=1,
        )
        if assessment.level != rules.BREACH:
            return None
        return f"drawdown {assessment.drawdown_percent}% ({assessment.drawdown_amount})"
    if alert.alert_type == "margin":
        if rules.margin_breached(reading.margin_level, settings.min_margin_level_percent):
            return f"margin level {reading.margin_level}%"
        return None
    view = session.get(MarketQuote, (account.server, alert.symbol))
    if view is None:
        return None
    problem = rules.market_problem(
        rules.MarketView(view.symbol, view.spread_pips, view.gap_pips, view.quoted_at, view.trading),
        settings.market,
        at,
    )
    return None if problem is None else problem[1]


def _open_position(position: Position, snapshot: Any) -> rules.OpenPosition:
    return rules.OpenPosition(
        ticket=position.ticket,
        key=position_key(snapshot.login, snapshot.server, position.identifier, position.opened_at),
        symbol=position.symbol,
        side=position.side,
        volume=position.volume,
        profit=position.profit,
        notional=position.volume * position.price_current,
    )


def _trades_by_position(session: DbSession, account_id: int, tickets: list[int]) -> dict[int, int]:
    if not tickets:
        return {}
    rows = session.execute(
        sa.select(Trade.position_ticket, Trade.id).where(
            Trade.account_id == account_id,
            Trade.position_ticket.in_(tickets),
            Trade.state.in_((TradeState.FILLED, TradeState.PARTIAL)),
        )
    ).all()
    return {row.position_ticket: row.id for row in rows}


def _find_close(terminal: TerminalPort, row: AlertClose) -> Deal | None:
    """The deal our close order made, if it exists: found by its comment among the position's deals,
    past the deal of a partial fill already recorded."""
    deals = terminal.deals_for_positions([row.position_ticket]).get(row.position_ticket, [])
    return next(iter(_ours_after(deals, row.comment, row.deal_ticket)), None)


def _ours_after(deals: Sequence[Deal], comment: str | None, recorded: int | None) -> list[Deal]:
    """The closing deals carrying a close's comment (every order of the close carries it), past the deal
    `recorded` for its last part (a broker numbers deals in order), oldest first."""
    return [
        d
        for d in deals
        if d.comment == comment and d.entry != mt5c.DEAL_ENTRY_IN and d.ticket > (recorded or 0)
    ]


def deal_made(
    deals: Sequence[Deal], deal_ticket: int | None, comment: str | None, *, after: int | None = None
) -> Deal | None:
    """The deal a close's order made, among its position's deals: the one the reply named; when the reply
    named none (0: some brokers' exchange execution), the newest carrying the close's comment past the
    parts already recorded (`after`), so that a part is never taken for the next one."""
    if deal_ticket:
        return next((d for d in deals if d.ticket == deal_ticket), None)
    return max(_ours_after(deals, comment, after), key=lambda d: d.ticket, default=None)


def _closing_deal(terminal: TerminalPort, position_ticket: int) -> Deal | None:
    deals = terminal.deals_for_positions([position_ticket]).get(position_ticket, [])
    outs = [d for d in deals if d.entry != mt5c.DEAL_ENTRY_IN]
    return outs[-1] if outs else None


def _close_one(
    session: DbSession,
    row: AlertClose,
    account: Account,
    terminal: TerminalPort,
    settings: GuardSettings,
    tell: Callable[..., None],
    now: Callable[[], datetime],
    decided: Position | None = None,
) -> None:
    """Close one position, exactly once. Commits after each step. `decided`: the position as the
    decision that made this close read it, in this run (the row is then as that decision committed it;
    the claim below still guards against another copy of the task)."""
    if decided is None:
        # As it is now, not as this session first read it (sessions keep what they read across
        # commits, and another worker may have moved the row on since).
        session.refresh(row)
    if row.state in FINAL_CLOSE_STATES:
        return
    if row.state == "sent":
        found = _find_close(terminal, row)
        open_now = {p.ticket for p in terminal.positions(row.symbol)}
    else:
        found = None
    if found is not None:
        found_pnl = found.profit + found.commission + found.swap
        if row.position_ticket not in open_now:
            _closed(session, row, found.price, with_earlier_parts(row, found_pnl), found.ticket, tell, now)
            return
        # Its order filled in part, the rest is still open: recorded, and the rest sent below.
        if not closed_in_part(session, row, found.price, found_pnl, found.ticket, found.volume):
            session.commit()
            raise CloseInFlight(f"close {row.id}: another worker recorded its part and went on")
        session.commit()
    if row.state == "sent":
        in_flight = row.sent_at is not None and now() < row.sent_at + timedelta(
            seconds=settings.in_flight_seconds
        )
        if row.position_ticket in open_now and in_flight:
            # Absence of its deal proves nothing yet: the order may still be executing.
            session.commit()
            raise CloseInFlight(f"close {row.id}: its order may still be executing")
        if row.position_ticket not in open_now:
            _gone(session, row, terminal, tell, now)
            return
        # Never reached the broker: sending is safe, unless another worker has sent it since we looked
        # (then its attempt, not ours, moved sent_at).
        reopened = session.execute(
            sa.update(AlertClose)
            .where(AlertClose.id == row.id, AlertClose.state == "sent", AlertClose.sent_at == row.sent_at)
            .values(state="pending")
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not reopened:
            session.commit()
            raise CloseInFlight(f"close {row.id}: another worker has sent it since")
        _audit(session, "position.close_not_found", "alert", row.alert_id, close_id=row.id)
        session.commit()
        session.refresh(row)

    # Each requote is sent again at a fresh price, up to `max_price_retries` times; each partial fill,
    # for the rest of the position, up to MAX_PARTIAL_FILLS parts.
    requotes = partial_fills = 0
    first = True
    while True:
        if first and decided is not None and row.state == "pending":
            position: Position | None = decided
        else:
            symbol_positions = terminal.positions(row.symbol)
            position = next((p for p in symbol_positions if p.ticket == row.position_ticket), None)
        first = False
        if position is None:
            _gone(session, row, terminal, tell, now)
            return
        quote = terminal.quote(row.symbol)
        closing_side = "sell" if row.side == "buy" else "buy"
        price = quote.bid if row.side == "buy" else quote.ask
        request = terminal.market_order_request(
            symbol=row.symbol,
            side=closing_side,
            volume=position.volume,
            price=price,
            sl=None,
            tp=None,
            deviation_points=settings.deviation_points,
            magic=settings.magic,
            comment=row.comment or close_comment(row.id),
            position=row.position_ticket,
        )
        # Claimed, not just written: two copies of the task (a redelivery racing the first) may both
        # have read this row as pending; only the one whose update finds it still pending sends.
        claimed = session.execute(
            sa.update(AlertClose)
            .where(AlertClose.id == row.id, AlertClose.state == "pending")
            .values(state="sent", attempts=AlertClose.attempts + 1, sent_at=now())
            # With the parts recorded so far (another copy of the task may have recorded one since this
            # session read the row): `closed_in_part` and `with_earlier_parts` add up from them.
            .returning(AlertClose.attempts, AlertClose.sent_at, AlertClose.pnl, AlertClose.deal_ticket)
            .execution_options(synchronize_session=False)
        ).first()
        if claimed is None:
            session.commit()
            session.refresh(row)
            if row.state in FINAL_CLOSE_STATES:
                return
            raise CloseInFlight(f"close {row.id}: another worker is sending it")
        _audit(session, "position.close_sent", "alert", row.alert_id, close_id=row.id, price=price)
        session.commit()  # the intent is on record before the order leaves
        _as_stored(
            row,
            state="sent",
            attempts=claimed.attempts,
            sent_at=claimed.sent_at,
            pnl=claimed.pnl,
            deal_ticket=claimed.deal_ticket,
        )
        try:
            result = terminal.send_order(request)
        except OrderOutcomeUnknown:
            log.warning("close %s: order_send outcome unknown; will look for it before resending", row.id)
            raise
        except PermanentTerminalError as exc:
            # Refused before anything was sent (mt5.errors.classify: algo trading off, parameters refused,
            # no login): sending again will not cure it. Left `sent`, the close would be looked for and
            # sent again for ever, and the owner never told; it fails, and so does the alert.
            close_failed(session, row, f"the terminal refused the close: {exc}")
            session.commit()
            return
        row.retcode = result.retcode
        if result.retcode in _DONE:
            deals = terminal.deals_for_positions([row.position_ticket]).get(row.position_ticket, [])
            deal = deal_made(deals, result.deal, row.comment, after=row.deal_ticket)
            pnl = deal.profit + deal.commission + deal.swap if deal is not None else None
            deal_ticket = deal.ticket if deal is not None else result.deal
            if result.retcode == mt5c.TRADE_RETCODE_DONE_PARTIAL:
                # Part of the position closed, the rest still open: recorded, and the rest sent next.
                partial_fills += 1
                if not closed_in_part(session, row, result.price, pnl, deal_ticket, result.volume):
                    session.commit()
                    raise CloseInFlight(f"close {row.id}: another worker recorded it and went on")
                session.commit()
                if partial_fills >= MAX_PARTIAL_FILLS:
                    close_failed(session, row, f"still open after {partial_fills} partial fills")
                    session.commit()
                    return
                continue
            _closed(session, row, result.price, with_earlier_parts(row, pnl), deal_ticket, tell, now)
            return
        if result.retcode in _NEW_PRICE:
            requotes += 1
            row.state = "pending"
            _audit(
                session,
                "position.close_requoted",
                "alert",
                row.alert_id,
                close_id=row.id,
                retcode=result.retcode,
            )
            session.commit()
            if requotes > settings.max_price_retries:
                close_failed(session, row, f"price moved on each of {requotes} attempts")
                session.commit()
                return
            continue
        if result.retcode == mt5c.TRADE_RETCODE_POSITION_CLOSED:
            _gone(session, row, terminal, tell, now)
            return
        close_failed(session, row, f"broker refused the close: retcode {result.retcode} {result.comment}")
        session.commit()
        return


def close_failed(session: DbSession, row: AlertClose, error: str) -> None:
    """The close ends failed (its alert will too, the owner told why); audited. The caller commits."""
    row.state = "failed"
    row.error = error[:300]
    _audit(session, "position.close_failed", "alert", row.alert_id, close_id=row.id, error=row.error)


# A close that fills in part is sent again for the rest; past this many parts in one run it fails (a
# broker filling a sliver at a time).
MAX_PARTIAL_FILLS = 10


def closed_in_part(
    session: DbSession,
    row: AlertClose,
    price: Decimal,
    pnl: Decimal | None,
    deal_ticket: int | None,
    volume: Decimal,
) -> bool:
    """A close order that filled part of its position (TRADE_RETCODE_DONE_PARTIAL): its deal recorded on
    the close (the P&L added up over the parts, `with_earlier_parts`; the latest deal kept: `_find_close`
    looks past it), the close back to `pending` to send the rest. The caller commits.

    `row` is the close as this attempt claimed it (or, after a lost reply, read it `sent`), and only that
    close is written (`sent` at its `sent_at`): another copy of the task may have found the same part,
    recorded it and claimed the rest since; writing over that claim would send the rest twice. False
    when it had moved on (nothing written)."""
    total = with_earlier_parts(row, pnl)
    took = session.execute(
        sa.update(AlertClose)
        .where(AlertClose.id == row.id, AlertClose.state == "sent", AlertClose.sent_at == row.sent_at)
        .values(state="pending", close_price=price, pnl=total, deal_ticket=deal_ticket)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not took:
        return False
    _as_stored(row, state="pending", close_price=price, pnl=total, deal_ticket=deal_ticket)
    _audit(
        session,
        "position.closed_in_part",
        "alert",
        row.alert_id,
        close_id=row.id,
        volume=volume,
        price=price,
        deal=deal_ticket,
    )
    return True


def with_earlier_parts(row: AlertClose, pnl: Decimal | None) -> Decimal | None:
    """This deal's P&L plus that of the close's earlier partial fills, if any (None when a deal's is not
    known)."""
    if row.deal_ticket is None:
        return pnl
    if pnl is None or row.pnl is None:
        return None
    return row.pnl + pnl


def _closed(
    session: DbSession,
    row: AlertClose,
    price: Decimal,
    pnl: Decimal | None,
    deal_ticket: int | None,
    tell: Callable[..., None],
    now: Callable[[], datetime],
) -> None:
    """Record the close's deal (once), the trade it closed, and tell the owner (`closed_many` for one);
    commits. A close another run recorded first is read back as that run wrote it."""
    recorded = closed_many(session, [Filled(row, price, pnl, deal_ticket)], lambda _: tell, now)
    session.commit()
    if not recorded:
        session.refresh(row)


@dataclass(frozen=True)
class Filled:
    """A close whose order filled: at what price, for what P&L (None: its deal not found), by which deal."""

    row: AlertClose
    price: Decimal
    pnl: Decimal | None
    deal_ticket: int | None


def closed_many(
    session: DbSession,
    filled: Sequence[Filled],
    tell_for: Callable[[AlertClose], Callable[..., None]],
    now: Callable[[], datetime],
) -> set[int]:
    """Record closes whose orders filled, in a statement for the closes and one for their trades rather
    than two per close: each close still open is recorded (those another run recorded first stay as it
    wrote them), and only for those the trade is closed, audited and its owner told. Returns the ids of
    the closes recorded; the caller commits."""
    if not filled:
        return set()
    at = now()
    by_id = {item.row.id: item for item in filled}

    recorded = set(
        session.scalars(
            sa.update(AlertClose)
            .where(AlertClose.id.in_(by_id), AlertClose.state.in_(("pending", "sent")))
            .values(state="closed", closed_at=at)
            .returning(AlertClose.id)
            .execution_options(synchronize_session=False)
        )
    )
    _set_each(
        session,
        AlertClose.__table__,
        {
            i: {"close_price": by_id[i].price, "pnl": by_id[i].pnl, "deal_ticket": by_id[i].deal_ticket}
            for i in recorded
        },
    )
    by_trade = {by_id[i].row.trade_id: by_id[i] for i in recorded if by_id[i].row.trade_id is not None}
    closed_trades: set[int] = set()
    if by_trade:
        closed_trades = set(
            session.scalars(
                sa.update(Trade)
                .where(Trade.id.in_(by_trade), Trade.state != TradeState.CLOSED)
                .values(state=TradeState.CLOSED, closed_at=at, close_reason="guard")
                .returning(Trade.id)
                .execution_options(synchronize_session=False)
            )
        )
        _set_each(
            session,
            Trade.__table__,
            {i: {"close_price": by_trade[i].price, "pnl": by_trade[i].pnl} for i in closed_trades},
        )
    for close_id in sorted(recorded):
        item = by_id[close_id]
        row = item.row
        _audit(
            session,
            "position.closed_by_guard",
            "alert",
            row.alert_id,
            close_id=row.id,
            position=row.position_ticket,
            symbol=row.symbol,
            price=item.price,
            pnl=item.pnl,
        )
        if row.trade_id in closed_trades:
            _audit(
                session,
                "trade.closed_by_guard",
                "trade",
                row.trade_id,
                alert_id=row.alert_id,
                price=item.price,
                pnl=item.pnl,
            )
            tell_for(row)(
                "trade.closed", trade_id=row.trade_id, reason="guard", close_price=item.price, pnl=item.pnl
            )
        _as_stored(
            row,
            state="closed",
            close_price=item.price,
            pnl=item.pnl,
            deal_ticket=item.deal_ticket,
            closed_at=at,
        )
    return recorded


def _set_each(session: DbSession, table: sa.Table, values_by_id: Mapping[int, Mapping[str, Any]]) -> None:
    """Give each row (by id) its own values, in the caller's transaction: one UPDATE by id, run for
    every row (executemany). Its compiled form is cached, where a CASE with one literal per row, one
    statement for all, was compiled anew for every batch: with the INSERT of the closes, two fifths of
    a close run's time (py-spy, bench/guards.py)."""
    if not values_by_id:
        return
    columns = list(next(iter(values_by_id.values())))
    statement = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("row_id"))
        .values({column: sa.bindparam(f"new_{column}") for column in columns})
    )
    session.execute(
        statement,
        [
            {"row_id": row_id, **{f"new_{column}": values[column] for column in columns}}
            for row_id, values in values_by_id.items()
        ],
    )


def _as_stored(row: AlertClose, **values: Any) -> None:
    """Tell the session what a conditional UPDATE of ours just committed to the row, without reading
    it back (the UPDATE took, so these are its values)."""
    for name, value in values.items():
        set_committed_value(row, name, value)


def _gone(
    session: DbSession,
    row: AlertClose,
    terminal: TerminalPort,
    tell: Callable[..., None],
    now: Callable[[], datetime],
) -> None:
    """The position closed by something else meanwhile (its SL, by hand, a stop-out): nothing to send;
    its closing deal, if the history has it, says at what price. Reconciliation records the trade's close."""
    deal = _closing_deal(terminal, row.position_ticket)
    values: dict[str, Any] = {"state": "gone", "closed_at": now()}
    if row.deal_ticket is not None:
        # Parts of it were closed by this close's own orders (recorded on the row, their P&L added up):
        # it counts as closed by the guard, at its parts' figures; the rest went some other way (its SL,
        # or a fill the broker called partial that took it all).
        values["state"] = "closed"
    elif deal is not None:
        values |= {
            "close_price": deal.price,
            "pnl": deal.profit + deal.commission + deal.swap,
            "deal_ticket": deal.ticket,
        }
    # Only a close still open: one another worker finished meanwhile (its own deal closed the position)
    # stays as that worker recorded it.
    changed = session.execute(
        sa.update(AlertClose)
        .where(AlertClose.id == row.id, AlertClose.state.in_(("pending", "sent")))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if changed:
        _audit(
            session,
            "position.close_gone",
            "alert",
            row.alert_id,
            close_id=row.id,
            position=row.position_ticket,
        )
    session.commit()
    session.refresh(row)


def _finish(
    session: DbSession,
    alert: DrawdownAlert,
    rows: Sequence[AlertClose],
    tell: Callable[..., None],
    *,
    commit: bool = True,
    preloaded: Preloaded | None = None,
) -> AlertResult:
    """The alert's end once each of its closes has ended: its figures, the owner told, the account
    halted. Commits unless `commit` is False. `preloaded`: a batch's (`closing`), which has locked the
    alert and read its closes (`rows`) as they are now."""
    if preloaded is None:
        session.refresh(alert, with_for_update=True)
    if alert.status != "closing":
        if commit:
            session.commit()
        return AlertResult(alert.id, alert.status)
    if preloaded is None:
        # Each close as it ended, whoever ended it.
        rows = session.scalars(
            sa.select(AlertClose)
            .where(AlertClose.alert_id == alert.id)
            .order_by(AlertClose.id)
            .execution_options(populate_existing=True)
        ).all()
    closed = [row for row in rows if row.state == "closed"]
    failed = [row for row in rows if row.state == "failed"]
    alert.positions_closed_count = len(closed)
    alert.total_loss = -sum((row.pnl for row in closed if row.pnl is not None), Decimal(0))
    alert.status = "failed" if failed else "executed"
    alert.action_taken = "closed"
    alert.executed_at = utcnow()
    figures = {
        "positions_closed": len(closed),
        "failed": len(failed),
        "total_loss": alert.total_loss,
        "closes": [
            {
                "position": r.position_ticket,
                "symbol": r.symbol,
                "state": r.state,
                "price": r.close_price,
                "pnl": r.pnl,
            }
            for r in rows
        ],
    }
    _audit(session, f"alert.{alert.status}", "alert", alert.id, account_id=alert.account_id, **figures)
    tell(f"alert.{alert.status}", **figures)
    if preloaded is not None:
        state = preloaded.states[alert.account_id]
    else:
        state = _locked_state(session, alert.account_id, utcnow())
    if not closed_by_guard(state):
        # Halted now, or halted by a block before: the close's halt takes over (its reason, its resume).
        if preloaded is not None:
            settings = preloaded.settings[alert.account_id]
        else:
            settings = risk_settings_of(session, alert.account_id)
        limit = settings.limit(alert.limit_name) if alert.limit_name else None
        _halt(session, state, alert.reason, limit, alert, tell)
    if commit:
        session.commit()
    return AlertResult(alert.id, alert.status, len(closed))


def seconds_until_due(session: DbSession, alert_id: int) -> float:
    close_at = session.scalar(sa.select(DrawdownAlert.close_at).where(DrawdownAlert.id == alert_id))
    if close_at is None:
        return 0.0
    return max(0.0, (close_at - utcnow()).total_seconds())


def overdue_alerts(session: DbSession, at: datetime, *, grace_seconds: float) -> list[int]:
    """Alerts still pending or closing `grace_seconds` after their close time: their task was lost."""
    cutoff = at - timedelta(seconds=grace_seconds)
    return list(
        session.scalars(
            sa.select(DrawdownAlert.id)
            .where(DrawdownAlert.status.in_(LIVE), DrawdownAlert.close_at <= cutoff)
            .order_by(DrawdownAlert.id)
            .limit(1000)
        )
    )
