"""Where the guards' readings come from: a guard check that asks the account's terminal, or the figures a
reconciliation sync has just stored. Both end in `engine.record_reading`.

A check also refreshes what the market guard knows of the symbols the account holds (`market_quotes`,
shared by every account on the trade server) and learns the server's clock offset from their quotes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from shared.core.db import DbSession, dialect_insert, utcnow
from shared.guards import engine, rules
from shared.models import Account, AccountSync, GuardState, MarketQuote, PositionSnapshot
from shared.mt5.errors import SymbolNotFound, TerminalError
from shared.mt5.ports import OpenTerminal, TerminalPort
from shared.mt5.types import Quote, SymbolSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOutcome:
    account_id: int
    status: str  # ok | failed | gone
    state: str | None = None
    # A breach (or a market problem) seen but not yet confirmed: the caller reads again soon.
    unconfirmed: bool = False
    alert_id: int | None = None
    error: str | None = None


def check_account(
    session: DbSession,
    account_id: int,
    *,
    open_terminal: OpenTerminal,
    notify: engine.Notify,
    schedule: engine.Schedule | None,
    now: datetime | None = None,
) -> CheckOutcome:
    """Read the account on its terminal and record the reading; commits. A terminal that fails gives no
    reading (nothing is recorded, nothing confirmed or cleared)."""
    account = session.get(Account, account_id)
    if account is None:
        return CheckOutcome(account_id, "gone")
    try:
        with open_terminal(account) as terminal:
            snapshot = terminal.account()
            positions = terminal.positions()
            at = now or utcnow()
            held = sorted({p.symbol for p in positions})
            quotes, specs = _quote_all(terminal, held)
    except TerminalError as exc:
        session.rollback()
        log.warning("account %s: guard check failed (%s: %s)", account_id, type(exc).__name__, exc)
        return CheckOutcome(account_id, "failed", error=f"{type(exc).__name__}: {exc}")
    known = session.scalar(
        sa.select(GuardState.broker_offset_seconds).where(GuardState.account_id == account_id)
    )
    offset = observe_market(session, account.server, quotes, specs, at, known_offset=known or 0)
    reading = rules.Reading(at, snapshot.equity, snapshot.balance, snapshot.margin_level)
    outcome = engine.record_reading(
        session,
        account_id,
        reading,
        currency=snapshot.currency,
        held_symbols=held,
        broker_offset_seconds=offset,
        notify=notify,
        schedule=schedule,
    )
    unconfirmed = _unconfirmed(session, account_id)
    session.commit()
    return CheckOutcome(account_id, "ok", outcome.state, unconfirmed, outcome.alert_id)


def _quote_all(
    terminal: TerminalPort, symbols: Sequence[str]
) -> tuple[dict[str, Quote], dict[str, SymbolSpec]]:
    quotes, specs = {}, {}
    for symbol in symbols:
        try:
            specs[symbol], quotes[symbol] = terminal.symbol_and_quote(symbol)
        except SymbolNotFound:
            continue
    return quotes, specs


def observe_market(
    session: DbSession,
    server: str,
    quotes: Mapping[str, Quote],
    specs: Mapping[str, SymbolSpec],
    at: datetime,
    known_offset: int = 0,
) -> int | None:
    """Store, per symbol, the spread, the jump from the last quote seen, and when the server last priced
        it. Returns the server's clock offset learnt from the quotes (None when none was fresh enough to tell;
    `known_offset` then dates them)."""
    # Learnt from the freshest quote of a symbol that trades; else what was known before.
    learnt = [
        rules.broker_offset_seconds(quote.time, at)
        for symbol, quote in sorted(quotes.items(), key=lambda item: item[1].time, reverse=True)
        if specs[symbol].trade_allowed
    ]
    offset = next((o for o in learnt if o is not None), None)
    clock = timedelta(seconds=offset if offset is not None else known_offset)
    insert = dialect_insert(session.get_bind())
    for symbol, quote in sorted(quotes.items()):
        spec = specs[symbol]
        quoted_at = quote.time - clock
        previous = session.get(MarketQuote, (server, symbol))
        gap = rules.gap_pips(previous.bid if previous is not None else None, quote.bid, spec.pip)
        if previous is not None and previous.quoted_at == quoted_at and previous.bid == quote.bid:
            gap = previous.gap_pips  # the same quote again: no new jump, the old one stands
        values = {
            "bid": quote.bid,
            "ask": quote.ask,
            "spread_pips": ((quote.ask - quote.bid) / spec.pip).quantize(Decimal("0.01")),
            "gap_pips": gap,
            "quoted_at": quoted_at,
            "trading": spec.trade_allowed,
            "seen_at": at,
        }
        statement = insert(MarketQuote.__table__).values(server=server, symbol=symbol, **values)
        session.execute(statement.on_conflict_do_update(index_elements=["server", "symbol"], set_=values))
    session.expire_all()
    return offset


def _unconfirmed(session: DbSession, account_id: int) -> bool:
    """Whether a breach is building up: a run of breached readings short of its confirmations, on an
    account with no alert counting down and not halted. Such an account is read again soon."""
    state = session.get(GuardState, account_id)
    if state is None or state.halted_at is not None or engine.live_alert(session, account_id) is not None:
        return False
    needed = engine.risk_settings(session, account_id).confirmations
    streaks = [
        state.margin_streak,
        *(int((row or {}).get("streak", 0)) for row in (state.limits or {}).values()),
    ]
    return any(0 < streak < needed for streak in streaks)


def record_synced(
    session: DbSession,
    account_ids: Sequence[int],
    *,
    notify: engine.Notify,
    schedule: engine.Schedule | None,
) -> list[CheckOutcome]:
    """A reading for each account from the snapshot its reconciliation sync just stored; commits each
    account on its own, so one account's failure never loses the others'."""
    if not account_ids:
        return []
    latest = (
        sa.select(PositionSnapshot.account_id, sa.func.max(PositionSnapshot.id).label("id"))
        .where(PositionSnapshot.account_id.in_(list(account_ids)))
        .group_by(PositionSnapshot.account_id)
        .subquery()
    )
    snapshots = {
        row.account_id: row
        for row in session.scalars(
            sa.select(PositionSnapshot).join(latest, PositionSnapshot.id == latest.c.id)
        )
    }
    held = {
        row.account_id: sorted({p["symbol"] for p in row.positions or []})
        for row in session.scalars(
            sa.select(AccountSync).where(AccountSync.account_id.in_(list(account_ids)))
        )
    }
    outcomes = []
    for account_id in account_ids:
        snapshot = snapshots.get(account_id)
        if snapshot is None:
            continue
        reading = rules.Reading(snapshot.synced_at, snapshot.equity, snapshot.balance, snapshot.margin_level)
        try:
            outcome = engine.record_reading(
                session,
                account_id,
                reading,
                currency=snapshot.currency,
                held_symbols=held.get(account_id, []),
                notify=notify,
                schedule=schedule,
            )
            unconfirmed = _unconfirmed(session, account_id)
            session.commit()
            outcomes.append(CheckOutcome(account_id, "ok", outcome.state, unconfirmed, outcome.alert_id))
        except sa.exc.SQLAlchemyError as exc:
            session.rollback()
            log.exception("account %s: recording its guard reading failed", account_id)
            outcomes.append(CheckOutcome(account_id, "failed", error=type(exc).__name__))
    return outcomes
