"""Reconciling accounts: the I/O edge around the pure rules of `shared.reconciliation`.

A batch of accounts is synced in three steps, so that thousands of accounts can wait on slow terminals
at once without holding a database connection each:

1. **Load** (one short transaction for the batch): the accounts, their sync state and their open trades.
2. **Read and decide** (concurrently, one account per thread, no database): ask each terminal for the
   account figures, open positions and the deals since the last sync in one round trip, let `reconcile`
   decide, and plan every row to write (`_success_plan` or `_failure_plan`, pure).
3. **Write** (one transaction for the batch): events, snapshots, trade updates (settled, closed,
   vanished, their positions' keys) and the sync state. Each
   account's rows are all-or-nothing: if the batch's transaction fails, it is rolled back and every
   account is written again in its own transaction, so one bad account never loses the others' results.

The batch runs under per-account locks (an account held by another worker is reported `busy` and left
alone), and an account whose terminal keeps failing is backed off (circuit breaker).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from shared.audit import trail
from shared.core.db import DbSession, dialect_insert, utcnow
from shared.core.executors import Inline
from shared.core.locks import Lock, Locks, each
from shared.core.queue import Queue
from shared.models import (
    Account,
    AccountSync,
    AuditLog,
    PositionSnapshot,
    ReconciliationLog,
    Trade,
    TradeState,
)
from shared.mt5.constants import DEAL_ENTRY_IN
from shared.mt5.errors import TerminalError
from shared.mt5.ports import OpenTerminal
from shared.notifications import events as webhook_events
from shared.notifications import webhooks
from shared.reconciliation.breaker import BreakerSettings, backoff_seconds, breaker_is_open
from shared.reconciliation.rules import (
    BookedTrade,
    ClosedTrade,
    ReconciliationResult,
    Tolerances,
    reconcile,
)

log = logging.getLogger(__name__)

# Trades that may hold a position on the terminal.
_MAY_HOLD_POSITION = (TradeState.SENT, TradeState.FILLED, TradeState.PARTIAL)
# Trades known to have held one: only these are concluded closed, or vanished (as the rules do).
_CONCLUDED_OPEN = (TradeState.FILLED, TradeState.PARTIAL)

# Core tables, not ORM entities: an ORM bulk insert inspects every row again on the way.
_EVENTS = ReconciliationLog.__table__
_SNAPSHOTS = PositionSnapshot.__table__
_SYNC = AccountSync.__table__
_AUDIT = AuditLog.__table__

# The deal history is read from the second after the newest deal already seen (MT5 deal times are whole
# seconds). A deal reported late, older than one already seen, is missed by that window; that costs
# nothing, because a vanished position's full history is always read on its own (see _read_and_plan).
# Without any deal seen yet, the window opens FIRST_DEALS_WINDOW back. MT5 reports deal times in the
# trade server's clock, which may run hours ahead of UTC, hence also the generous end of the window.
FIRST_DEALS_WINDOW = timedelta(days=1)
DEALS_WINDOW_AHEAD = timedelta(days=1)


@dataclass(frozen=True)
class SyncOutcome:
    account_id: int
    status: str  # ok | busy | breaker_open | failed | gone | crashed
    events: int = 0
    error: str | None = None


@dataclass(frozen=True)
class AccountToSync:
    """What a sync needs of an `accounts` row: enough to open its terminal (a TerminalAccount), detached
    from any session."""

    id: int
    owner_id: int
    terminal_url: str
    login: int
    server: str
    credentials_encrypted: bytes

    # The `accounts` columns it is made from (select them, then `from_row`).
    COLUMNS = (
        Account.id,
        Account.owner_id,
        Account.terminal_url,
        Account.login,
        Account.server,
        Account.credentials_encrypted,
    )

    @classmethod
    def from_row(cls, row: Any) -> AccountToSync:
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            terminal_url=row.terminal_url,
            login=row.login,
            server=row.server,
            credentials_encrypted=bytes(row.credentials_encrypted),
        )


SymbolSpecs = Callable[[AccountToSync, Any, set[str]], Mapping[str, Any]]


def lock_name(account_id: int) -> str:
    return f"account:{account_id}"


# --- the batch --------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    """One account's inputs, read under its lock."""

    account: AccountToSync
    sync: Mapping[str, Any] | None  # its account_sync row as it was, None before the first sync
    booked: list[BookedTrade]


@dataclass(frozen=True)
class _Notice:
    """An event for the owner's webhooks. One about a trade is sent only when this sync's update of
    that trade took (as its reconciliation event is)."""

    event: str
    data: dict[str, Any]
    trade_id: int | None = None


@dataclass
class _Plan:
    """Everything one account's sync writes (decided without the database)."""

    account_id: int
    status: str  # ok | failed
    owner_id: int | None = None
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    sync: dict[str, Any] = field(default_factory=dict)  # the account_sync row's new values
    settle: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (trade id, fill values)
    close: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (trade id, close values)
    identify: list[tuple[int, str]] = field(default_factory=list)  # (trade id, its position's key)
    vanish: list[tuple[int, datetime]] = field(default_factory=list)  # (trade id, when found vanished)
    reappear: list[int] = field(default_factory=list)  # vanished trades whose position is back
    audit: list[dict[str, Any]] = field(default_factory=list)
    notices: list[_Notice] = field(default_factory=list)
    due: list[_Notice] = field(default_factory=list)  # the notices the last write of this plan made due


def sync_accounts(
    session_factory: Callable[[], DbSession],
    account_ids: Sequence[int],
    *,
    open_terminal: OpenTerminal,
    locks: Locks,
    symbol_specs: SymbolSpecs,
    tolerances: Tolerances,
    breaker: BreakerSettings,
    executor: Executor | None = None,
    write_after_seconds: float = 2.0,
    give_up_after_seconds: float | None = None,
    now: Callable[[], datetime] = utcnow,
    queue: Queue | None = None,
) -> list[SyncOutcome]:
    """Reconcile a batch of accounts; one outcome per id. Safe to run twice, and concurrently: accounts
    whose lock another run holds come back `busy`, untouched.

    The terminal work of each account runs on `executor` (a thread pool in the workers; by default one
    account after the other, here). What has finished after `write_after_seconds` is written then, the
    rest when it finishes: a terminal that hangs until its timeout must not hold back the figures of the
    accounts whose terminals answered. An account still not done `give_up_after_seconds` after the start
    is recorded as a failed sync (it counts towards its breaker) rather than left to the task's time
    limit, which would lose every result not yet written. With a `queue`, trades closed and breakers
    opened are sent to the owners' webhooks (trade.closed, breaker.opened; and trade.filled for a sent
    trade settled from its position)."""
    started = time.monotonic()
    account_ids = list(dict.fromkeys(account_ids))  # each account once, whatever the caller sent
    names = {account_id: lock_name(account_id) for account_id in account_ids}
    with locks(list(names.values())) as held:
        outcomes = {i: SyncOutcome(i, "busy") for i in account_ids if names[i] not in held}
        mine = [i for i in account_ids if names[i] in held]
        loaded, skipped = _load(session_factory, mine, now())
        outcomes.update({o.account_id: o for o in skipped})

        def read(work: _Loaded) -> _Plan:
            try:
                return _read_and_plan(work, open_terminal, symbol_specs, tolerances, breaker, now)
            except Exception as exc:
                # One account's bug must not stop the batch; it is logged with its traceback and counts
                # as a failed sync, so a persistent crash opens the breaker instead of looping for ever.
                log.exception("account %s: reconciliation crashed", work.account.id)
                return _failure_plan(work, f"crashed: {type(exc).__name__}: {exc}", breaker, now())

        runner = executor or Inline()
        order = {work.account.id: index for index, work in enumerate(loaded)}
        futures = {runner.submit(read, work): work for work in loaded}

        def write(plans: list[_Plan]) -> None:
            plans.sort(key=lambda plan: order[plan.account_id])
            outcomes.update({o.account_id: o for o in _write(session_factory, plans, queue)})

        # First wave: whatever has answered after `write_after_seconds`.
        done, pending = wait(futures, timeout=write_after_seconds)
        write([future.result() for future in done])
        if pending:
            # Second wave: the stragglers, until the deadline; those still out are failed syncs.
            deadline = None
            if give_up_after_seconds is not None:
                deadline = max(0.0, started + give_up_after_seconds - time.monotonic())
            done, late = wait(pending, timeout=deadline)
            for future in late:
                future.cancel()  # not started yet: never will be; running: its result is ignored
            given_up = [
                _failure_plan(futures[f], "no answer before the batch's deadline", breaker, now())
                for f in late
            ]
            write([future.result() for future in done] + given_up)
    return [outcomes[i] for i in account_ids]


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
    queue: Queue | None = None,
) -> SyncOutcome:
    """Reconcile one account (a batch of one)."""
    (outcome,) = sync_accounts(
        session_factory,
        [account_id],
        open_terminal=open_terminal,
        locks=each(lock),
        symbol_specs=symbol_specs,
        tolerances=tolerances,
        breaker=breaker,
        now=now,
        queue=queue,
    )
    return outcome


# --- 1. load ----------------------------------------------------------------------------------------


# What reconciliation reads of a trade: the fields of BookedTrade, and the account to group them by.
_TRADE_COLUMNS = [Trade.account_id, *(Trade.__table__.c[f.name] for f in fields(BookedTrade))]


def _load(
    session_factory: Callable[[], DbSession], account_ids: list[int], at: datetime
) -> tuple[list[_Loaded], list[SyncOutcome]]:
    """The batch's accounts, sync states and open trades in three queries; accounts gone or backed off
    come back as outcomes instead. The session is closed before any terminal is asked."""
    if not account_ids:
        return [], []
    session = session_factory()
    try:
        accounts = session.execute(sa.select(*AccountToSync.COLUMNS).where(Account.id.in_(account_ids))).all()
        syncs: dict[int, Mapping[str, Any]] = {
            row.account_id: dict(row._mapping)
            for row in session.execute(sa.select(_SYNC).where(_SYNC.c.account_id.in_(account_ids))).all()
        }
        trades: dict[int, list[BookedTrade]] = defaultdict(list)
        for row in session.execute(
            sa.select(*_TRADE_COLUMNS)
            .where(Trade.account_id.in_(account_ids), Trade.state.in_(_MAY_HOLD_POSITION))
            .order_by(Trade.id)
        ):
            trades[row.account_id].append(BookedTrade.from_row(row))
    finally:
        session.close()

    found = {row.id: row for row in accounts}
    loaded, skipped = [], []
    for account_id in account_ids:
        account_row = found.get(account_id)
        if account_row is None:
            skipped.append(SyncOutcome(account_id, "gone"))
            continue
        sync = syncs.get(account_id)
        if breaker_is_open(sync["breaker_open_until"] if sync else None, at):
            skipped.append(SyncOutcome(account_id, "breaker_open"))
            continue
        account = AccountToSync.from_row(account_row)
        loaded.append(_Loaded(account, sync, trades.get(account_id, [])))
    return loaded, skipped


# --- 2. read the terminal and decide ------------------------------------------------------------------


def _read_and_plan(
    work: _Loaded,
    open_terminal: OpenTerminal,
    symbol_specs: SymbolSpecs,
    tolerances: Tolerances,
    breaker: BreakerSettings,
    now: Callable[[], datetime],
) -> _Plan:
    previous = work.sync or {}
    started = now()
    cursor: datetime | None = previous.get("deals_synced_to")
    deals_from = _after(cursor) if cursor else started - FIRST_DEALS_WINDOW
    try:
        with open_terminal(work.account) as terminal:
            state = terminal.read_account(deals_from, started + DEALS_WINDOW_AHEAD)
            deals = _deals_by_position(state.deals)
            # A position of ours that is gone needs its whole history (the opening deal's commission,
            # the closing deals), which the window since the last sync rarely holds entirely; so does
            # one that vanished, at every sync, until its closing deal turns up.
            open_ids = {p.identifier for p in state.positions}
            booked_ids = {t.position_ticket or t.order_ticket for t in work.booked}
            gone = {i for i in booked_ids if i} - open_ids
            incomplete = [
                position_id
                for position_id in sorted(gone)
                if not any(d.entry == DEAL_ENTRY_IN for d in deals.get(position_id, ()))
            ]
            deals.update(terminal.deals_for_positions(incomplete))
            symbols = symbol_specs(
                work.account, terminal, {p.symbol for p in state.positions} | {t.symbol for t in work.booked}
            )
    except TerminalError as exc:
        log.warning("account %s: sync failed (%s: %s)", work.account.id, type(exc).__name__, exc)
        return _failure_plan(work, f"{type(exc).__name__}: {exc}", breaker, now())

    result = reconcile(
        state.positions,
        work.booked,
        deals,
        previous.get("peak_equity"),
        state.account,
        tolerances,
        symbols=symbols,
        open_at_last_sync={row["trade_id"] for row in previous.get("positions") or [] if row.get("trade_id")},
    )
    newest_deal = max((d.time for d in state.deals), default=None)
    plan = _success_plan(work, result, started, state.account.currency)
    plan.sync["last_sync_ms"] = int((now() - started).total_seconds() * 1000)
    plan.sync["deals_synced_to"] = max(filter(None, (cursor, newest_deal)), default=None)
    return plan


def _after(cursor: datetime) -> datetime:
    """The start of the second after `cursor` (deal times may carry milliseconds; the terminal's history
    is asked in whole seconds)."""
    return cursor.replace(microsecond=0) + timedelta(seconds=1)


def _deals_by_position(deals: Iterable[Any]) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = defaultdict(list)
    for deal in deals:
        if deal.position_id:
            grouped[deal.position_id].append(deal)
    return dict(grouped)


def _position_row(position: Any, position_key: str, **attribution: Any) -> dict[str, Any]:
    return {
        "ticket": position.ticket,
        "identifier": position.identifier,
        "position_key": position_key,
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


def _audit(action: str, target_type: str, target_id: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor_type": trail.SYSTEM,
        "actor_id": None,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "meta": meta,
    }


def _success_plan(work: _Loaded, result: ReconciliationResult, synced_at: datetime, currency: str) -> _Plan:
    """The rows one successful sync writes. Pure: decided from the loaded state and the result."""
    account = work.account
    plan = _Plan(account.id, "ok", owner_id=account.owner_id)
    base = {"account_id": account.id, "owner_id": account.owner_id, "created_at": synced_at}
    shown: list[dict[str, Any]] = []
    # What the previous sync already saw, by position key: its events are recorded, so they are not
    # sent again (the unique index would drop them anyway, but at the price of a row each per tick).
    previous_rows = (work.sync or {}).get("positions") or []
    previous = {row["position_key"]: row for row in previous_rows if row.get("position_key")}
    # A snapshot stored before positions had keys: its rows are found by identifier, once (the upgrade
    # must not record every open position's matched or outside event again).
    unkeyed = {row.get("identifier"): row for row in previous_rows if not row.get("position_key")}

    def seen_before(key: str, position: Any) -> dict[str, Any]:
        return previous.get(key) or unkeyed.get(position.identifier) or {}

    def event(
        kind: str, position: Any, key: str, *, trade_id: int | None, fingerprint: str = "", **extra: Any
    ) -> None:
        plan.events.append(
            {
                **base,
                "event_type": kind,
                "trade_id": trade_id,
                "position_ticket": position.identifier,
                "position_key": key,
                "fingerprint": fingerprint,
                "symbol": position.symbol,
                "side": position.side,
                "volume": position.volume,
                "price_open": position.price_open,
                "sl": position.sl,
                "tp": position.tp,
                "opened_from": extra.pop("opened_from", None),
                "details": extra,
            }
        )

    for match in result.matches:
        trade, key = match.trade, match.position_key
        if match.matched_by != "tolerance":
            if trade.state == TradeState.SENT.value:
                settled = _settled_values(match, synced_at)
                plan.settle.append((trade.id, settled))
                plan.notices.append(
                    _Notice(
                        webhook_events.TRADE_FILLED,
                        {
                            "trade_id": trade.id,
                            "account_id": account.id,
                            "symbol": trade.symbol,
                            "side": trade.side,
                            "state": settled["state"],
                            "filled_volume": settled["filled_volume"],
                            "filled_price": settled["filled_price"],
                            "position_ticket": settled["position_ticket"],
                            "found_by": "reconciliation",
                        },
                        trade_id=trade.id,
                    )
                )
            if trade.position_key is None:
                plan.identify.append((trade.id, key))  # from now on this position, whatever its ticket
        if trade.vanished_at is not None:
            plan.reappear.append(trade.id)
        shown.append(
            _position_row(
                match.position,
                key,
                attribution="tradeguard",
                trade_id=match.trade.id,
                matched_by=match.matched_by,
                fingerprint=match.fingerprint,
                divergences=[d.kind for d in match.divergences],
            )
        )
        before = seen_before(key, match.position)
        known = before.get("trade_id") == trade.id
        if not known:
            event("matched", match.position, key, trade_id=trade.id, matched_by=match.matched_by)
        # A divergence is recorded when it appears and again each time it changes, including when it
        # clears; an unchanged one is not recorded again.
        if known and before.get("fingerprint") == match.fingerprint:
            continue
        if match.divergences:
            event(
                "divergence",
                match.position,
                key,
                trade_id=trade.id,
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
                key,
                trade_id=trade.id,
                fingerprint=match.fingerprint,
                cleared=True,
            )
    for outside in result.outside_positions:
        key = outside.position_key
        shown.append(
            _position_row(outside.position, key, attribution="outside", opened_from=outside.opened_from)
        )
        if seen_before(key, outside.position).get("attribution") != "outside":
            event("outside_position", outside.position, key, trade_id=None, opened_from=outside.opened_from)

    for closed in result.closed_trades:
        if closed.reason is None:
            # No closing deal in the terminal's history (yet): look again next time. Gone for longer
            # than a sync, the position has vanished: the owner is told once, and the trade stays open
            # until a closing deal turns up.
            if closed.vanished and closed.trade.vanished_at is None:
                plan.vanish.append((closed.trade.id, synced_at))
                plan.events.append(_trade_event("vanished", closed, base))
            continue
        trade = closed.trade
        plan.close.append(
            (
                trade.id,
                {
                    "state": TradeState.CLOSED,
                    "closed_at": closed.closed_at or synced_at,
                    "close_reason": closed.reason,
                    "close_price": closed.close_price,
                    "pnl": closed.profit,
                    "updated_at": synced_at,
                },
            )
        )
        plan.notices.append(
            _Notice(
                webhook_events.TRADE_CLOSED,
                {
                    "trade_id": trade.id,
                    "account_id": account.id,
                    "symbol": trade.symbol,
                    "side": trade.side,
                    "close_reason": closed.reason,
                    "close_price": closed.close_price,
                    "closed_volume": closed.closed_volume,
                    "pnl": closed.profit,
                    "closed_at": closed.closed_at or synced_at,
                },
                trade_id=trade.id,
            )
        )
        plan.events.append(
            {
                **_trade_event("closed_outside", closed, base),
                "volume": closed.closed_volume,
                "close_reason": closed.reason,
                "close_price": closed.close_price,
                "pnl": closed.profit,
            }
        )

    figures = result.snapshot
    plan.snapshot = {
        "account_id": account.id,
        "currency": currency,
        "equity": figures.equity,
        "balance": figures.balance,
        "peak_equity": figures.peak_equity,
        "drawdown_percent": figures.drawdown_percent.quantize(Decimal("0.0001")),
        "margin_level": figures.margin_level,
        "open_positions": figures.open_positions,
        "total_lots": figures.total_lots,
        "synced_at": synced_at,
    }
    plan.sync = {
        "account_id": account.id,
        "last_synced_at": synced_at,
        "last_attempt_at": synced_at,
        "last_error": None,
        "consecutive_failures": 0,
        "breaker_open_until": None,
        "peak_equity": figures.peak_equity,
        "positions": shown,
        # The figures the positions were read with: the guards' watch estimates equity from them as
        # prices move between syncs (shared.guards.watch).
        "equity": figures.equity,
        "balance": figures.balance,
        "margin": figures.margin,
    }
    if (work.sync or {}).get("breaker_open_until") is not None:
        plan.audit.append(_audit("account.breaker_closed", "account", account.id, {}))
    return plan


def _trade_event(kind: str, closed: ClosedTrade, base: dict[str, Any]) -> dict[str, Any]:
    """The event of a trade whose position is gone (closed outside, or vanished): the trade's figures,
    as the position itself is no longer there to read."""
    trade = closed.trade
    return {
        **base,
        "event_type": kind,
        "trade_id": trade.id,
        "position_ticket": closed.position_id or 0,
        "position_key": closed.position_key,
        "fingerprint": "",
        "symbol": trade.symbol,
        "side": trade.side,
        "volume": trade.expected_volume,
        "price_open": trade.filled_price,
        "sl": None,
        "tp": None,
        "opened_from": None,
        "details": {"summary": closed.summary},
    }


def _settled_values(match: Any, synced_at: datetime) -> dict[str, Any]:
    """A trade left `sent` (its reply lost, its worker gone) whose position the terminal holds by
    identity: the fill it evidently got."""
    position = match.position
    filled = Decimal(position.volume)
    return {
        "state": TradeState.FILLED if filled >= match.trade.requested_volume else TradeState.PARTIAL,
        "filled_volume": filled,
        "filled_price": position.price_open,
        "order_ticket": position.identifier,
        "position_ticket": position.identifier,
        "filled_at": synced_at,
        "updated_at": synced_at,
    }


def _failure_plan(work: _Loaded, message: str, breaker: BreakerSettings, at: datetime) -> _Plan:
    """A failed sync: count it, and open the breaker when there have been enough in a row."""
    message = message[:500]
    previous = work.sync or {}
    failures = (previous.get("consecutive_failures") or 0) + 1
    plan = _Plan(work.account.id, "failed", error=message, owner_id=work.account.owner_id)
    plan.sync = {
        "account_id": work.account.id,
        "consecutive_failures": failures,
        "last_attempt_at": at,
        "last_error": message,
        "breaker_open_until": previous.get("breaker_open_until"),
        "breaker_openings": previous.get("breaker_openings") or 0,
    }
    if failures >= breaker.failures_to_open:
        seconds = backoff_seconds(failures, breaker)
        plan.sync["breaker_open_until"] = at + timedelta(seconds=seconds)
        plan.sync["breaker_openings"] += 1
        plan.audit.append(
            _audit(
                "account.breaker_opened",
                "account",
                work.account.id,
                {"failures": failures, "seconds": seconds, "error": message},
            )
        )
        plan.notices.append(
            _Notice(
                webhook_events.BREAKER_OPENED,
                {
                    "account_id": work.account.id,
                    "consecutive_failures": failures,
                    "open_until": plan.sync["breaker_open_until"],
                    "error": message,
                },
            )
        )
    return plan


# --- 3. write -----------------------------------------------------------------------------------------


def _write(
    session_factory: Callable[[], DbSession], plans: list[_Plan], queue: Queue | None = None
) -> list[SyncOutcome]:
    """Write every plan in one transaction; if that fails, each in its own (see the module docstring)."""
    if not plans:
        return []
    session = session_factory()
    try:
        try:
            recorded = _write_plans(session, plans)
            _notify(session, plans, queue)
            session.commit()
            return [_outcome(plan, recorded) for plan in plans]
        except sa.exc.SQLAlchemyError as exc:
            session.rollback()
            if len(plans) == 1:
                log.exception("account %s: writing its sync failed", plans[0].account_id)
                return [SyncOutcome(plans[0].account_id, "crashed", error=type(exc).__name__)]
            log.exception("writing a batch of %d syncs failed; writing them one by one", len(plans))
        outcomes = []
        for plan in plans:
            try:
                recorded = _write_plans(session, [plan])
                _notify(session, [plan], queue)
                session.commit()
                outcomes.append(_outcome(plan, recorded))
            except sa.exc.SQLAlchemyError as exc:
                session.rollback()
                log.exception("account %s: writing its sync failed", plan.account_id)
                outcomes.append(SyncOutcome(plan.account_id, "crashed", error=f"{type(exc).__name__}"))
        return outcomes
    finally:
        session.close()


def _outcome(plan: _Plan, recorded: Counter[int]) -> SyncOutcome:
    return SyncOutcome(plan.account_id, plan.status, events=recorded[plan.account_id], error=plan.error)


def _notify(session: DbSession, plans: list[_Plan], queue: Queue | None) -> None:
    """Send the owners' webhooks what the plans' write made due, in its transaction (the deliveries'
    tasks go out once it commits)."""
    if queue is None:
        return
    for plan in plans:
        if plan.owner_id is None:
            continue
        for notice in plan.due:
            webhooks.notify(session, queue, plan.owner_id, notice.event, notice.data)


def _write_plans(session: DbSession, plans: list[_Plan]) -> Counter[int]:
    """The plans' rows, in a handful of statements for the whole batch; returns events recorded per
    account. Trade updates are conditional (a sent trade settled elsewhere meanwhile, a trade closed
    already), and their events and audit rows are written only when the update took."""
    insert = dialect_insert(session.get_bind())
    audit_rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for plan in plans:
        audit_rows.extend(plan.audit)
        settled_now = set()
        for trade_id, values in plan.settle:
            if _update_trade(session, trade_id, values, Trade.state == TradeState.SENT):
                settled_now.add(trade_id)
                audit_rows.append(
                    _audit(
                        "trade.filled_by_reconciliation",
                        "trade",
                        trade_id,
                        {
                            "state": values["state"].value,
                            "volume": str(values["filled_volume"]),
                            "position": values["position_ticket"],
                        },
                    )
                )
        for trade_id, key in plan.identify:
            _update_trade(session, trade_id, {"position_key": key}, Trade.position_key.is_(None))
        for trade_id in plan.reappear:
            if _update_trade(session, trade_id, {"vanished_at": None}, Trade.vanished_at.is_not(None)):
                audit_rows.append(_audit("trade.reappeared", "trade", trade_id, {}))
        vanished_now = set()
        for trade_id, found_at in plan.vanish:
            still_open = (Trade.vanished_at.is_(None), Trade.state.in_(_CONCLUDED_OPEN))
            if _update_trade(session, trade_id, {"vanished_at": found_at}, *still_open):
                vanished_now.add(trade_id)
                audit_rows.append(_audit("trade.vanished", "trade", trade_id, {}))
        closed_now = set()
        for trade_id, values in plan.close:
            if _update_trade(session, trade_id, values, Trade.state != TradeState.CLOSED):
                closed_now.add(trade_id)
                audit_rows.append(
                    _audit(
                        "trade.closed_outside",
                        "trade",
                        trade_id,
                        {
                            "reason": values["close_reason"],
                            "close_price": str(values["close_price"]),
                            "pnl": str(values["pnl"]),
                        },
                    )
                )
        # A trade's closed or vanished event only when this sync's update of the trade took (another
        # worker's sync of the same trade, say, got there first).
        written = {"closed_outside": closed_now, "vanished": vanished_now}
        events.extend(
            e
            for e in plan.events
            if e["event_type"] not in written or e["trade_id"] in written[e["event_type"]]
        )
        took = {webhook_events.TRADE_FILLED: settled_now, webhook_events.TRADE_CLOSED: closed_now}
        plan.due = [
            notice
            for notice in plan.notices
            if notice.trade_id is None or notice.trade_id in took.get(notice.event, ())
        ]

    # Each statement below is compiled once per process and sent as an executemany (SQLAlchemy batches
    # the rows into multi-row INSERTs itself): building a fresh multi-row statement per batch cost more
    # CPU than everything else in the write.
    recorded: Counter[int] = Counter()
    if events:
        # Event rows all carry the same keys, as a batched INSERT requires.
        keys = sorted({key for row in events for key in row})
        events = [{key: row.get(key) for key in keys} for row in events]
        # A matched, outside or closed event already recorded for the position (the partial unique
        # index) is skipped; divergences were deduplicated against the previous sync.
        statement = insert(_EVENTS).on_conflict_do_nothing().returning(_EVENTS.c.account_id)
        recorded.update(session.scalars(statement, events))

    snapshots = [plan.snapshot for plan in plans if plan.snapshot is not None]
    if snapshots:
        session.execute(sa.insert(_SNAPSHOTS), snapshots)

    # Successes and failures set different columns of account_sync; each kind is one upsert.
    for kind in ("ok", "failed"):
        rows = [plan.sync for plan in plans if plan.status == kind]
        if not rows:
            continue
        keys = sorted({key for row in rows for key in row})
        rows = [{key: row.get(key) for key in keys} for row in rows]
        statement = insert(_SYNC)
        statement = statement.on_conflict_do_update(
            index_elements=[_SYNC.c.account_id],
            set_={key: statement.excluded[key] for key in keys if key != "account_id"},
        )
        session.execute(statement, rows)

    if audit_rows:
        session.execute(sa.insert(_AUDIT), audit_rows)
    return recorded


def _update_trade(
    session: DbSession, trade_id: int, values: dict[str, Any], *conditions: sa.ColumnElement[bool]
) -> bool:
    """Update one trade if it still meets `conditions`; whether it did."""
    statement = sa.update(Trade).where(Trade.id == trade_id, *conditions).values(**values)
    changed: int = session.execute(statement.execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    return changed > 0
