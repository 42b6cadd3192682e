"""Reconciling one account: the I/O edge around the pure rules of `shared.reconciliation`.

One sync reads the account's open trades, asks the terminal for the account figures and open
positions (and, for trades whose position vanished, that position's deals), lets `reconcile` decide,
and writes everything in one transaction: a snapshot, each new event, closed trades, the sync state.

It holds no database connection while it waits on the terminal, so thousands of syncs can wait on
slow terminals at once; and it runs under a per-account lock, so no account is synced by two workers
at once. An account whose terminal keeps failing is backed off (circuit breaker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from shared import audit
from shared.db import DbSession, utcnow
from shared.locks import Busy
from shared.models import Account, AccountSync, PositionSnapshot, ReconciliationLog, Trade, TradeState
from shared.mt5.errors import TerminalError
from shared.reconciliation import BookedTrade, ReconciliationResult, Tolerances, reconcile

log = logging.getLogger(__name__)

# Trades that may hold a position on the terminal.
_MAY_HOLD_POSITION = (TradeState.SENT, TradeState.FILLED, TradeState.PARTIAL)


@dataclass(frozen=True)
class BreakerSettings:
    failures_to_open: int = 3  # consecutive failed syncs before the account is backed off
    first_backoff_seconds: float = 30.0
    max_backoff_seconds: float = 600.0


def breaker_is_open(sync: AccountSync | None, now: datetime) -> bool:
    return bool(sync and sync.breaker_open_until and now < sync.breaker_open_until)


def backoff_seconds(consecutive_failures: int, settings: BreakerSettings) -> float:
    """How long the breaker stays open after this many failures in a row: the first backoff when it
    trips, doubling with every failed retry after that, capped. A success resets the count."""
    extra_failures = max(0, consecutive_failures - settings.failures_to_open)
    return float(min(settings.max_backoff_seconds, settings.first_backoff_seconds * 2**extra_failures))


@dataclass(frozen=True)
class SyncOutcome:
    account_id: int
    status: str  # ok | busy | breaker_open | failed | gone
    events: int = 0
    error: str | None = None


OpenTerminal = Callable[[Account], AbstractContextManager[Any]]
Lock = Callable[[str], AbstractContextManager[None]]
SymbolSpecs = Callable[[Account, Any, set[str]], Mapping[str, Any]]


def _booked(trades: list[Trade]) -> list[BookedTrade]:
    return [BookedTrade.from_row(t) for t in trades]


def sync_account(
    session_factory: Callable[[], DbSession],
    account_id: int,
    *,
    open_terminal: OpenTerminal,
    lock: Lock,
    symbol_specs: SymbolSpecs,
    tolerances: Tolerances,
    breaker: BreakerSettings,
    now: Callable[[], datetime] = utcnow,
) -> SyncOutcome:
    """Reconcile one account. Safe to run twice, and concurrently: a second run finds the lock taken."""
    try:
        with lock(f"account:{account_id}"):
            return _sync_locked(
                session_factory, account_id, open_terminal, symbol_specs, tolerances, breaker, now
            )
    except Busy:
        return SyncOutcome(account_id, "busy")


def _sync_locked(
    session_factory: Callable[[], DbSession],
    account_id: int,
    open_terminal: OpenTerminal,
    symbol_specs: SymbolSpecs,
    tolerances: Tolerances,
    breaker: BreakerSettings,
    now: Callable[[], datetime],
) -> SyncOutcome:
    # 1. Read what we believe, then let the connection go before talking to the terminal.
    session = session_factory()
    try:
        account = session.get(Account, account_id)
        if account is None:
            return SyncOutcome(account_id, "gone")
        sync = session.get(AccountSync, account_id)
        if breaker_is_open(sync, now()):
            return SyncOutcome(account_id, "breaker_open")
        trades = list(
            session.scalars(
                sa.select(Trade).where(Trade.account_id == account_id, Trade.state.in_(_MAY_HOLD_POSITION))
            )
        )
        booked = _booked(trades)
        previous_peak = sync.peak_equity if sync else None
        session.expunge(account)
    finally:
        session.close()

    # 2. Ask the terminal.
    started = now()
    try:
        with open_terminal(account) as terminal:
            figures = terminal.account()
            positions = terminal.positions()
            vanished = {t.position_ticket or t.order_ticket for t in booked} - {
                p.identifier for p in positions
            }
            deals = {
                position_id: terminal.deals_for_position(position_id)
                for position_id in vanished
                if position_id
            }
            symbols = symbol_specs(
                account, terminal, {p.symbol for p in positions} | {t.symbol for t in booked}
            )
    except TerminalError as exc:
        return _record_failure(session_factory, account, exc, breaker, now())

    result = reconcile(positions, booked, deals, previous_peak, figures, tolerances, symbols=symbols)

    # 3. Write it all in one transaction.
    session = session_factory()
    try:
        took_ms = int((now() - started).total_seconds() * 1000)
        events = _write(session, account, result, started, figures.currency, took_ms)
        session.commit()
    finally:
        session.close()
    return SyncOutcome(account_id, "ok", events=events)


def _insert_ignoring_duplicates(session: DbSession, rows: list[dict[str, Any]]) -> int:
    """Insert events; a matched, outside or closed event already recorded for the position (the
    partial unique index) is skipped. Divergences are deduplicated against the previous sync."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    statement = (
        insert(ReconciliationLog).values(rows).on_conflict_do_nothing().returning(ReconciliationLog.id)
    )
    return len(list(session.scalars(statement)))


def _position_row(position: Any, **attribution: Any) -> dict[str, Any]:
    return {
        "ticket": position.ticket,
        "identifier": position.identifier,
        "symbol": position.symbol,
        "side": position.side,
        "volume": str(position.volume),
        "price_open": str(position.price_open),
        "price_current": str(position.price_current),
        "sl": None if position.sl is None else str(position.sl),
        "tp": None if position.tp is None else str(position.tp),
        "profit": str(position.profit),
        "magic": position.magic,
        "comment": position.comment,
        "opened_at": position.opened_at.isoformat(),
        **attribution,
    }


def _write(
    session: DbSession,
    account: Account,
    result: ReconciliationResult,
    synced_at: datetime,
    currency: str,
    took_ms: int,
) -> int:
    base = {"account_id": account.id, "owner_id": account.owner_id, "created_at": synced_at}
    events: list[dict[str, Any]] = []
    shown: list[dict[str, Any]] = []
    sync = session.get(AccountSync, account.id) or AccountSync(account_id=account.id, positions=[])
    # What the previous sync already saw: its events are recorded, so they are not sent again (the
    # unique constraint would drop them anyway, but at the price of a row each per tick).
    previous = {row.get("identifier"): row for row in (sync.positions or [])}

    def event(kind: str, position: Any, *, trade_id: int | None, fingerprint: str = "", **extra: Any) -> None:
        events.append(
            {
                **base,
                "event_type": kind,
                "trade_id": trade_id,
                "position_ticket": position.identifier,
                "fingerprint": fingerprint,
                "symbol": position.symbol,
                "side": position.side,
                "volume": position.volume,
                "price_open": position.price_open,
                "sl": position.sl,
                "tp": position.tp,
                "opened_by": extra.pop("opened_by", None),
                "details": extra,
            }
        )

    for match in result.matches:
        if match.trade.state == TradeState.SENT.value and match.matched_by != "tolerance":
            _settle_sent_trade(session, match, synced_at)
        shown.append(
            _position_row(
                match.position,
                attribution="tradeguard",
                trade_id=match.trade.id,
                matched_by=match.matched_by,
                fingerprint=match.fingerprint,
                divergences=[d.kind for d in match.divergences],
            )
        )
        before = previous.get(match.position.identifier) or {}
        known = before.get("trade_id") == match.trade.id
        if not known:
            event("matched", match.position, trade_id=match.trade.id, matched_by=match.matched_by)
        # A divergence is recorded when it appears and again each time it changes, including when it
        # clears; an unchanged one is not recorded again.
        if known and before.get("fingerprint") == match.fingerprint:
            continue
        if match.divergences:
            event(
                "divergence",
                match.position,
                trade_id=match.trade.id,
                fingerprint=match.fingerprint,
                divergences=[
                    {
                        "kind": d.kind,
                        "change": d.change,
                        "expected": None if d.expected is None else str(d.expected),
                        "actual": None if d.actual is None else str(d.actual),
                        "difference": None if d.difference is None else str(d.difference),
                        "unit": d.unit,
                    }
                    for d in match.divergences
                ],
            )
        elif known and before.get("divergences"):
            event(
                "divergence",
                match.position,
                trade_id=match.trade.id,
                fingerprint=match.fingerprint,
                cleared=True,
            )
    for outside in result.outside_positions:
        shown.append(_position_row(outside.position, attribution="outside", opened_from=outside.opened_from))
        if (previous.get(outside.position.identifier) or {}).get("attribution") != "outside":
            event("outside_position", outside.position, trade_id=None, opened_by=outside.opened_from)

    for closed in result.closed_trades:
        if closed.reason is None:
            continue  # the terminal's history has no closing deal yet: look again next time
        trade = session.get(Trade, closed.trade.id)
        if trade is None or trade.state == TradeState.CLOSED:
            continue
        trade.state = TradeState.CLOSED
        trade.closed_at = closed.closed_at or synced_at
        trade.close_reason = closed.reason
        trade.close_price = closed.close_price
        trade.pnl = closed.profit
        events.append(
            {
                **base,
                "event_type": "closed_outside",
                "trade_id": trade.id,
                "position_ticket": closed.position_id or 0,
                "fingerprint": "",
                "symbol": trade.symbol,
                "side": trade.side.value,
                "volume": closed.closed_volume,
                "price_open": trade.filled_price,
                "sl": None,
                "tp": None,
                "opened_by": None,
                "close_reason": closed.reason,
                "close_price": closed.close_price,
                "pnl": closed.profit,
                "details": {"summary": closed.summary},
            }
        )
        audit.record(
            session,
            actor_type=audit.SYSTEM,
            actor_id=None,
            action="trade.closed_outside",
            target_type="trade",
            target_id=trade.id,
            meta={"reason": closed.reason, "close_price": str(closed.close_price), "pnl": str(closed.profit)},
        )

    # Event rows all carry the same keys, as a multi-row INSERT requires.
    keys = {key for row in events for key in row}
    events = [{key: row.get(key) for key in keys} for row in events]
    recorded = _insert_ignoring_duplicates(session, events)

    figures = result.snapshot
    session.add(
        PositionSnapshot(
            account_id=account.id,
            currency=currency,
            equity=figures.equity,
            balance=figures.balance,
            peak_equity=figures.peak_equity,
            drawdown_percent=figures.drawdown_percent.quantize(Decimal("0.0001")),
            margin_level=figures.margin_level,
            open_positions=figures.open_positions,
            total_lots=figures.total_lots,
            synced_at=synced_at,
        )
    )
    was_open = sync.breaker_open_until is not None
    sync.last_synced_at = synced_at
    sync.last_attempt_at = synced_at
    sync.last_error = None
    sync.consecutive_failures = 0
    sync.breaker_open_until = None
    sync.peak_equity = figures.peak_equity
    sync.positions = shown
    sync.last_sync_ms = took_ms
    session.add(sync)
    if was_open:
        audit.record(
            session,
            actor_type=audit.SYSTEM,
            actor_id=None,
            action="account.breaker_closed",
            target_type="account",
            target_id=account.id,
            meta={},
        )
    return recorded


def _settle_sent_trade(session: DbSession, match: Any, synced_at: datetime) -> None:
    """A trade left `sent` (its reply lost, its worker gone) whose position the terminal holds by
    identity: record the fill. Conditional on `sent`, so an execution attempt that settles it at the
    same moment is never overwritten."""
    position = match.position
    filled = Decimal(position.volume)
    state = TradeState.FILLED if filled >= match.trade.requested_volume else TradeState.PARTIAL
    changed = session.execute(
        sa.update(Trade)
        .where(Trade.id == match.trade.id, Trade.state == TradeState.SENT)
        .values(
            state=state,
            filled_volume=filled,
            filled_price=position.price_open,
            order_ticket=position.identifier,
            position_ticket=position.identifier,
            filled_at=synced_at,
            updated_at=synced_at,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if changed:
        audit.record(
            session,
            actor_type=audit.SYSTEM,
            actor_id=None,
            action="trade.filled_by_reconciliation",
            target_type="trade",
            target_id=match.trade.id,
            meta={"state": state.value, "volume": str(filled), "position": position.identifier},
        )


def _record_failure(
    session_factory: Callable[[], DbSession],
    account: Account,
    error: TerminalError,
    breaker: BreakerSettings,
    at: datetime,
) -> SyncOutcome:
    message = f"{type(error).__name__}: {error}"[:500]
    session = session_factory()
    try:
        sync = session.get(AccountSync, account.id, with_for_update=True) or AccountSync(
            account_id=account.id
        )
        sync.consecutive_failures = (sync.consecutive_failures or 0) + 1
        sync.last_attempt_at = at
        sync.last_error = message
        if sync.consecutive_failures >= breaker.failures_to_open:
            seconds = backoff_seconds(sync.consecutive_failures, breaker)
            sync.breaker_open_until = at + timedelta(seconds=seconds)
            sync.breaker_openings = (sync.breaker_openings or 0) + 1
            audit.record(
                session,
                actor_type=audit.SYSTEM,
                actor_id=None,
                action="account.breaker_opened",
                target_type="account",
                target_id=account.id,
                meta={"failures": sync.consecutive_failures, "seconds": seconds, "error": message},
            )
        session.add(sync)
        session.commit()
    finally:
        session.close()
    log.warning("account %s: sync failed (%s)", account.id, message)
    return SyncOutcome(account.id, "failed", error=message)
