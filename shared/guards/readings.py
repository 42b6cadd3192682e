"""Where the guards' readings come from: a guard check that asks the account's terminal, or the figures a
reconciliation sync has just stored. Both end in `engine.record_reading`.

A check also refreshes what the market guard knows of the symbols the account holds (`market_quotes`,
shared by every account on the trade server) and learns the server's clock offset from those of their
quotes known to be live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from shared.core.db import DbSession, dialect_insert, utcnow
from shared.core.executors import Inline
from shared.guards import engine, rules
from shared.guards.risk_settings import risk_settings_many, risk_settings_of
from shared.guards.settings import RiskSettings
from shared.models import (
    Account,
    AccountRisk,
    AccountSync,
    DrawdownAlert,
    GuardState,
    MarketQuote,
    PositionSnapshot,
)
from shared.mt5.errors import SymbolNotFound, TerminalError
from shared.mt5.ports import OpenTerminal, TerminalPort
from shared.mt5.types import Quote, SymbolSpec
from shared.reconciliation.sync import AccountToSync

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
    """Read one account on its terminal and record the reading; commits (see `check_accounts`)."""
    return check_accounts(
        session, [account_id], open_terminal=open_terminal, notify=notify, schedule=schedule, now=now
    )[0]


@dataclass(frozen=True)
class _TerminalRead:
    account: AccountToSync  # detached: the terminals are read on other threads
    reading: rules.Reading | None = None  # None: the terminal gave none (see `error`)
    currency: str = ""
    held: tuple[str, ...] = ()
    error: str | None = None


def check_accounts(
    session: DbSession,
    account_ids: Sequence[int],
    *,
    open_terminal: OpenTerminal,
    notify: engine.Notify,
    schedule: engine.Schedule | None,
    presumed: Collection[int] = (),
    executor: Executor | None = None,
    now: datetime | None = None,
) -> list[CheckOutcome]:
    """Read these accounts on their terminals and record the readings; one outcome per id, in order.

    The terminals are asked on `executor` (the worker's thread pool; by default one after the other):
    the work is waiting on terminals. Then, per trade server, the symbols its accounts hold are quoted
    once (the market guard's view and the server's clock offset, shared by its accounts), and every
    reading is recorded in one transaction: all together, or, when that fails, a savepoint each, so
    one account's failure loses no other's reading; the batch pays for one commit, not one per
    account. Accounts are recorded in id order, as every batch that locks guard states does, so that
    two batches never wait on each other in a circle. A terminal that fails gives no reading (nothing
    is recorded, nothing confirmed or cleared).

    `presumed`: the accounts the guards' watch estimated at a breach (`engine.record_reading`)."""
    ids = list(dict.fromkeys(account_ids))
    started = time.monotonic()
    openers = {
        row.id: AccountToSync.from_row(row)
        for row in session.execute(sa.select(*AccountToSync.COLUMNS).where(Account.id.in_(ids)))
    }
    session.rollback()  # nothing held open while terminals answer

    def read(account: AccountToSync) -> _TerminalRead:
        try:
            with open_terminal(account) as terminal:
                snapshot = terminal.account()
                held = tuple(sorted({p.symbol for p in terminal.positions()}))
                at = now or utcnow()
        except TerminalError as exc:
            log.warning("account %s: guard check failed (%s: %s)", account.id, type(exc).__name__, exc)
            return _TerminalRead(account, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # One account's bug must not cost the batch its readings: logged with its traceback, and
            # no reading, as a terminal that fails gives none.
            log.exception("account %s: guard check crashed", account.id)
            return _TerminalRead(account, error=f"crashed: {type(exc).__name__}: {exc}")
        reading = rules.Reading(at, snapshot.equity, snapshot.balance, snapshot.margin_level)
        return _TerminalRead(account, reading, snapshot.currency, held)

    runner = executor or Inline()
    futures = [runner.submit(read, openers[i]) for i in ids if i in openers]
    reads = {future.result().account.id: future.result() for future in futures}
    read_at = time.monotonic()
    offsets = _observe_servers(session, reads, open_terminal, now)
    session.commit()  # the quotes are every account's: the watch never waits on this batch's readings
    quoted_at = time.monotonic()

    def record_all(one_by_one: bool) -> dict[int, CheckOutcome]:
        preloaded = _preload(session, reads, now)
        outcomes: dict[int, CheckOutcome] = {}
        for account_id in sorted(reads):
            done = reads[account_id]
            if done.reading is None:
                outcomes[account_id] = CheckOutcome(account_id, "failed", error=done.error)
                continue
            try:
                with session.begin_nested() if one_by_one else contextlib.nullcontext():
                    outcome = engine.record_reading(
                        session,
                        account_id,
                        done.reading,
                        currency=done.currency,
                        held_symbols=done.held,
                        broker_offset_seconds=offsets.get(done.account.server),
                        notify=notify,
                        schedule=schedule,
                        presumed=1 if account_id in presumed else 0,
                        preloaded=preloaded,
                    )
                    unconfirmed = _unconfirmed(session, account_id, outcome, preloaded.settings[account_id])
            except sa.exc.SQLAlchemyError as exc:
                if not one_by_one:
                    raise
                log.exception("account %s: recording its guard reading failed", account_id)
                outcomes[account_id] = CheckOutcome(account_id, "failed", error=type(exc).__name__)
                continue
            outcomes[account_id] = CheckOutcome(
                account_id, "ok", outcome.state, unconfirmed, outcome.alert_id
            )
        session.commit()
        return outcomes

    # All together first: one flush for the batch's rows. Should any account's recording fail, all of
    # it is undone (with the webhooks and tasks it asked for) and recorded again account by account, a
    # savepoint each, so that the failure costs no other account its reading. A savepoint and a flush
    # per account were half the time from a crowd's breach to its alerts (bench/guards.py).
    try:
        outcomes = record_all(one_by_one=False)
    except sa.exc.SQLAlchemyError:
        session.rollback()
        log.warning("guard check: recording the batch failed; recording its accounts one by one")
        outcomes = record_all(one_by_one=True)
    log.info(
        "guard check of %d account(s): read %.0f ms, quoted %.0f ms, recorded %.0f ms",
        len(ids),
        (read_at - started) * 1000,
        (quoted_at - read_at) * 1000,
        (time.monotonic() - quoted_at) * 1000,
    )
    return [outcomes.get(i) or CheckOutcome(i, "gone") for i in ids]


def _preload(
    session: DbSession, reads: Mapping[int, _TerminalRead], now: datetime | None
) -> engine.Preloaded:
    """What every reading of the batch needs, read for all of them at once: their accounts, settings,
    guard states (locked, in account id order), live alerts, and the market as last quoted on their
    servers. Ten-odd statements per account were most of the time from
    a crowd's breach to its alerts (bench/guards.py)."""
    ids = sorted(account_id for account_id, done in reads.items() if done.reading is not None)
    accounts = {
        account.id: account for account in session.scalars(sa.select(Account).where(Account.id.in_(ids)))
    }
    held: dict[str, set[str]] = defaultdict(set)
    for account_id in ids:
        held[reads[account_id].account.server].update(reads[account_id].held)
    states = engine.locked_states(session, ids, now or utcnow(), create=False)
    for state in states.values():  # and the symbols each has blocked
        held[reads[state.account_id].account.server].update(state.blocked_symbols or {})
    return engine.Preloaded(
        settings=risk_settings_many(session, ids),
        states=states,
        accounts=accounts,
        live_alerts=engine.live_alerts(session, ids),
        market={server: engine.market_views(session, server, symbols) for server, symbols in held.items()},
    )


def _observe_servers(
    session: DbSession,
    reads: Mapping[int, _TerminalRead],
    open_terminal: OpenTerminal,
    now: datetime | None,
) -> dict[str, int | None]:
    """Quote, once per terminal and trade server, every symbol the accounts read there hold
    (`observe_market`); returns each server's clock offset as learnt from the quotes (None: not
    learnt, the one known stands)."""
    groups: dict[tuple[str, str], list[_TerminalRead]] = defaultdict(list)
    for done in reads.values():
        if done.reading is not None:
            groups[(done.account.terminal_url, done.account.server)].append(done)
    offsets: dict[str, int | None] = {}
    # What each server's opener knows, read once for them all.
    known = known_offsets(session, [group[0].account.id for group in groups.values()])
    for (_, server), group in sorted(groups.items()):
        symbols = sorted({symbol for done in group for symbol in done.held})
        if not symbols:
            continue
        try:
            with open_terminal(group[0].account) as terminal:
                quotes, specs = quote_all(terminal, symbols)
        except TerminalError as exc:
            log.warning("guard check: quoting %s failed (%s: %s)", server, type(exc).__name__, exc)
            continue
        at = now or utcnow()
        offsets[server] = observe_market(
            session, server, quotes, specs, at, known_offset=known[group[0].account.id]
        )
    return offsets


def known_offsets(session: DbSession, account_ids: Collection[int]) -> dict[int, int]:
    """The server clock offset each account's guard state knows (0 without one, as a new guard state
    starts): what dates its server's quotes while none of them tells the offset (`observe_market`)."""
    if not account_ids:
        return {}
    known = dict(
        session.execute(
            sa.select(GuardState.account_id, GuardState.broker_offset_seconds).where(
                GuardState.account_id.in_(list(account_ids))
            )
        ).all()
    )
    return {account_id: known.get(account_id) or 0 for account_id in account_ids}


def quote_all(
    terminal: TerminalPort, symbols: Sequence[str]
) -> tuple[dict[str, Quote], dict[str, SymbolSpec]]:
    """Each symbol's specification and quote; a symbol the broker no longer has is left out."""
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
    it. Returns the server's clock offset learnt from the quotes (None when none was known to be live;
    `known_offset`, the server's offset as known before, then dates them)."""
    insert = dialect_insert(session.get_bind())
    seen = {
        row.symbol: row
        for row in session.execute(
            sa.select(
                MarketQuote.symbol,
                MarketQuote.bid,
                MarketQuote.ask,
                MarketQuote.quoted_at,
                MarketQuote.gap_pips,
                MarketQuote.seen_at,
            ).where(MarketQuote.server == server, MarketQuote.symbol.in_(list(quotes)))
        )
    }
    # Learnt from the freshest quote known to be live: a symbol that trades, whose quote moved since the
    # last look at it, moments ago (`rules.live_offset_seconds`); else what was known before. Any quote
    # whose age looked like an offset taught one: a weekend's last tick, 14 h old, taught UTC-12.
    known = timedelta(seconds=known_offset)
    learnt = [
        rules.live_offset_seconds(
            quote.time,
            at,
            moved=_moved(quote, seen.get(symbol), known),
            last_seen=seen[symbol].seen_at if symbol in seen else None,
        )
        for symbol, quote in sorted(quotes.items(), key=lambda item: item[1].time, reverse=True)
        if specs[symbol].trade_allowed
    ]
    offset = next((o for o in learnt if o is not None), None)
    clock = timedelta(seconds=offset) if offset is not None else known
    for symbol, quote in sorted(quotes.items()):
        spec = specs[symbol]
        quoted_at = quote.time - clock
        previous = seen.get(symbol)
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


def _moved(quote: Quote, previous: Any, known: timedelta) -> bool:
    """Whether the quote is another tick than the one the last look saw: another price, and later (its
    server time dated by the offset known, as that look's was). The price tells a new tick whatever the
    offset; the time, that it is not an older tick a lagging terminal of the same server still shows."""
    if previous is None or (quote.bid, quote.ask) == (previous.bid, previous.ask):
        return False
    return bool(quote.time - known > previous.quoted_at)


def _unconfirmed(
    session: DbSession,
    account_id: int,
    outcome: engine.ReadingOutcome,
    settings: RiskSettings | None = None,
) -> bool:
    """Whether a breach is building up: a run of breached readings short of its confirmations, on an
    account with no alert counting down and not halted by a close. Such an account is read again soon.

    From the reading's outcome and the state it left in the session, without asking again: the outcome
    names the account's live alert, if any (`record_reading` looks it up), and most readings have no
    streak at all, so the settings are read only when one has begun.

    A market streak counts only when the market guard does more than warn: a spread or a stale quote is
    one per server and symbol, so one wide gold spread had every gold holder's sync send its account to
    be read again at once (5,000 reads, bench/fanout.py --with-guards) for a notification that the next
    sync confirms as well."""
    if outcome.alert_id is not None:
        return False
    state = session.get(GuardState, account_id)
    if state is None or engine.closed_by_guard(state):
        return False
    streaks = {name: int((row or {}).get("streak", 0)) for name, row in (state.limits or {}).items()}
    if not state.margin_streak and not any(streaks.values()):
        return False
    settings = settings or risk_settings_of(session, account_id)
    counted = [
        streak
        for name, streak in streaks.items()
        if not (name.startswith(rules.MARKET_KEY) and settings.market.action == "warn")
    ]
    return any(0 < streak < settings.confirmations for streak in [state.margin_streak, *counted])


def record_synced(
    session: DbSession,
    account_ids: Sequence[int],
    *,
    notify: engine.Notify,
    schedule: engine.Schedule | None,
) -> list[CheckOutcome]:
    """A reading for each account from the snapshot its reconciliation sync just stored; commits each
    account on its own, so one account's failure never loses the others'.

    Most readings change nothing but the figures: no limit warns, breaches or starts a period, no margin
    or market problem, no alert, no halt. Those are written together (`_record_quiet`: the same columns
    `engine.record_reading` would write, decided by the same pure rules, one UPDATE each and one commit
    for the batch) instead of through the engine's ten-odd statements and a commit per account, which
    cost reconciliation most of its throughput (bench/guards.py). Everything else, and any account whose
    guard state changed meanwhile, goes through `engine.record_reading` as before."""
    if not account_ids:
        return []
    latest = (
        sa.select(PositionSnapshot.account_id, sa.func.max(PositionSnapshot.id).label("id"))
        .where(PositionSnapshot.account_id.in_(list(account_ids)))
        .group_by(PositionSnapshot.account_id)
        .subquery()
    )
    # The figures only: a snapshot's positions (JSON, all of them) are not needed here.
    snapshots = {
        row.account_id: row
        for row in session.execute(
            sa.select(
                PositionSnapshot.account_id,
                PositionSnapshot.synced_at,
                PositionSnapshot.equity,
                PositionSnapshot.balance,
                PositionSnapshot.margin_level,
                PositionSnapshot.currency,
            ).join(latest, PositionSnapshot.id == latest.c.id)
        )
    }
    readings = {
        account_id: rules.Reading(
            snapshot.synced_at, snapshot.equity, snapshot.balance, snapshot.margin_level
        )
        for account_id, snapshot in snapshots.items()
    }
    try:
        quiet = _record_quiet(session, readings, snapshots)
    except sa.exc.SQLAlchemyError:
        session.rollback()
        log.exception("recording the quiet guard readings together failed; recording each on its own")
        quiet = {}
    held = _held_symbols(session, [a for a in account_ids if a in snapshots and a not in quiet])
    outcomes = []
    for account_id in account_ids:
        snapshot = snapshots.get(account_id)
        if snapshot is None:
            continue
        if account_id in quiet:
            outcomes.append(CheckOutcome(account_id, "ok", quiet[account_id]))
            continue
        try:
            outcome = engine.record_reading(
                session,
                account_id,
                readings[account_id],
                currency=snapshot.currency,
                held_symbols=held.get(account_id, []),
                notify=notify,
                schedule=schedule,
            )
            unconfirmed = _unconfirmed(session, account_id, outcome)
            session.commit()
            outcomes.append(CheckOutcome(account_id, "ok", outcome.state, unconfirmed, outcome.alert_id))
        except sa.exc.SQLAlchemyError as exc:
            session.rollback()
            log.exception("account %s: recording its guard reading failed", account_id)
            outcomes.append(CheckOutcome(account_id, "failed", error=type(exc).__name__))
    return outcomes


_guard_states = GuardState.__table__
# `warning` only while market warnings stand (`_quiet_limits`): a quiet reading leaves the state as it is.
QUIET_STATES = ("ok", "warning")
# One statement for every quiet reading (Core, built once: no ORM bulk-update machinery per account).
_QUIET_UPDATE = (
    _guard_states.update()
    .where(
        _guard_states.c.account_id == sa.bindparam("b_account_id"),
        _guard_states.c.updated_at == sa.bindparam("b_was_updated_at"),
        _guard_states.c.state.in_(QUIET_STATES),
        _guard_states.c.halted_at.is_(None),
    )
    .values(
        limits=sa.bindparam("b_limits"),
        margin_streak=0,
        equity=sa.bindparam("b_equity"),
        balance=sa.bindparam("b_balance"),
        margin_level=sa.bindparam("b_margin_level"),
        currency=sa.bindparam("b_currency"),
        read_at=sa.bindparam("b_at"),
        updated_at=sa.bindparam("b_at"),
    )
)


def _held_symbols(session: DbSession, account_ids: Sequence[int]) -> dict[int, list[str]]:
    """The symbols each account held at its last sync. Costly (each sync's positions, as JSON): decoding
    them for every synced account was half of what the guards' reading added to a reconciliation batch
    (bench/fanout.py, py-spy), so only the accounts that need them are asked."""
    if not account_ids:
        return {}
    return {
        row.account_id: sorted({p["symbol"] for p in row.positions or []})
        for row in session.execute(
            sa.select(AccountSync.account_id, AccountSync.positions).where(
                AccountSync.account_id.in_(list(account_ids))
            )
        )
    }


def _record_quiet(
    session: DbSession,
    readings: Mapping[int, rules.Reading],
    snapshots: Mapping[int, Any],
) -> dict[int, str]:
    """Write, in one transaction, the readings that change nothing but figures; returns their accounts
    and the state each stays in.

    Quiet means, on the state as stored: a guard state with an initial balance, not halted, no live
    alert, no blocked symbol, margin streak 0, and no market streak but warnings already told (the market
    guard set to `warn`; the state is `warning` with them, else `ok`); and on this reading: every drawdown
    limit `ok` in the same period (`rules.assess_limit`), the margin level not under its minimum, and the
    market problems on held symbols (`rules.market_problem`) exactly the ones warned of. Then
    `engine.record_reading` would only store the limits' new JSON (peak, reference, drawdown; each
    standing warning's streak and reason) and the figures; this stores exactly those. A gold spread over
    the default maximum sent every holder's sync reading through the engine (bench/fanout.py
    --with-guards: 1,742 accounts per 10-s cycle with the guards running against 4,151 without).
    Each UPDATE applies only if the row is still the one read (`updated_at`, which every reading sets): a
    reading that got there first sends this one through the engine instead. No lock is taken to decide,
    so nothing waits on this batch but the rows it writes, until its commit."""
    ids = list(readings)
    if not ids:
        return {}
    states = {
        row.account_id: row
        for row in session.execute(
            sa.select(
                GuardState.account_id,
                GuardState.state,
                GuardState.limits,
                GuardState.margin_streak,
                GuardState.blocked_symbols,
                GuardState.initial_balance,
                GuardState.broker_offset_seconds,
                GuardState.halted_at,
                GuardState.updated_at,
                Account.server,
            )
            .join(Account, Account.id == GuardState.account_id)
            .where(GuardState.account_id.in_(ids))
        )
    }
    live = set(
        session.scalars(
            sa.select(DrawdownAlert.account_id).where(
                DrawdownAlert.account_id.in_(ids), DrawdownAlert.status.in_(engine.LIVE)
            )
        )
    )
    documents: dict[int, Any] = dict(
        session.execute(
            sa.select(AccountRisk.account_id, AccountRisk.settings).where(AccountRisk.account_id.in_(ids))
        ).all()
    )
    servers = {row.server for row in states.values()}
    views: dict[str, list[rules.MarketView]] = defaultdict(list)
    for quote in session.scalars(sa.select(MarketQuote).where(MarketQuote.server.in_(servers))):
        views[quote.server].append(
            rules.MarketView(quote.symbol, quote.spread_pips, quote.gap_pips, quote.quoted_at, quote.trading)
        )
    candidates = []
    for account_id, reading in readings.items():
        row = states.get(account_id)
        if row is None or account_id in live:
            continue
        settings = RiskSettings.from_document(documents.get(account_id))
        limits = _quiet_limits(row, settings, reading)
        if limits is None:
            continue
        # What the market guard finds wrong on the account's server, by symbol: a reading is quiet only
        # if the problems on the symbols the account holds are exactly those it was warned of already
        # (whether it holds them is asked only when there are some).
        problems = {}
        for view in views.get(row.server, ()):
            problem = rules.market_problem(view, settings.market, reading.at)
            if problem is not None:
                problems[view.symbol] = problem
        candidates.append((account_id, row, reading, limits, problems))
    held = _held_symbols(session, [c[0] for c in candidates if c[4]])
    quiet = []
    # In account order, as every batch that writes guard states goes (check_accounts): two batches
    # then never each hold a row the other waits for.
    for account_id, row, reading, limits, problems in sorted(candidates, key=lambda c: c[0]):
        warned = rules.market_warnings(row.limits)  # every market entry (`_quiet_limits`)
        if set(problems).intersection(held.get(account_id, ())) != set(warned):
            continue  # a problem begins or ends on a held symbol: the engine's to decide
        for symbol, entry in warned.items():
            # As the engine writes a warning that still stands: one more reading, what is wrong now.
            kind, reason = problems[symbol]
            limits[f"{rules.MARKET_KEY}{symbol}"] = rules.standing_warning(
                entry, entry["streak"] + 1, kind, reason, reading.at
            )
        quiet.append(
            {
                "b_account_id": account_id,
                "b_was_updated_at": row.updated_at,
                "b_limits": limits,
                "b_equity": reading.equity,
                "b_balance": reading.balance,
                "b_margin_level": reading.margin_level,
                "b_currency": snapshots[account_id].currency,
                "b_at": reading.at,
            }
        )
    written = _write_quiet(session, quiet)
    session.commit()
    return {account_id: states[account_id].state for account_id in written}


# The same UPDATE on Postgres for a whole batch, its readings in one JSON parameter: a fixed text that
# SQLAlchemy compiles once. Built with `sa.values(...).data(rows)` instead, the statement was compiled
# anew for every batch, its hundreds of bound values with it: 15 % of the reconciliation worker's CPU
# (bench/fanout.py --profile, py-spy), more than the write itself. Decimals travel as JSON strings and
# timestamps as ISO text with their offset, both read back exactly (`numeric`, `timestamptz`).
_QUIET_UPDATE_MANY = sa.text(
    "UPDATE guard_states AS g"
    " SET limits = r.limits, margin_streak = 0, equity = r.equity, balance = r.balance,"
    " margin_level = r.margin_level, currency = r.currency, read_at = r.at, updated_at = r.at"
    " FROM jsonb_to_recordset(CAST(:readings AS jsonb)) AS r("
    "account_id bigint, was_updated_at timestamptz, limits jsonb, equity numeric, balance numeric,"
    " margin_level numeric, currency text, at timestamptz)"
    " WHERE g.account_id = r.account_id AND g.updated_at = r.was_updated_at"
    " AND g.state = ANY(:quiet_states) AND g.halted_at IS NULL"
    " RETURNING g.account_id"
)


def _json_text(value: Any) -> Any:
    """A value as `_QUIET_UPDATE_MANY`'s JSON carries it: decimals and timestamps as exact text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):  # naive: UTC, as UTCDateTime reads it
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


def _write_quiet(session: DbSession, quiet: list[dict[str, Any]]) -> set[int]:
    """Write the quiet readings (each only if its row is still the one read); the accounts written.

    On Postgres in one statement for the batch (`_QUIET_UPDATE_MANY`): one UPDATE per account was a
    third of what the guards added to a reconciliation batch (bench/fanout.py, py-spy). Elsewhere
    (SQLite, the embedded setup: one writer, few accounts) one UPDATE each."""
    if not quiet:
        return set()
    if session.get_bind().dialect.name != "postgresql":
        return {
            row["b_account_id"]
            for row in quiet
            if session.execute(_QUIET_UPDATE, row).rowcount  # type: ignore[attr-defined]
        }
    # The same values as `_QUIET_UPDATE`'s parameters, named as the statement's record columns.
    readings = [{name.removeprefix("b_"): _json_text(value) for name, value in row.items()} for row in quiet]
    written = session.execute(
        _QUIET_UPDATE_MANY, {"readings": json.dumps(readings), "quiet_states": list(QUIET_STATES)}
    )
    return set(written.scalars())


def _quiet_limits(row: Any, settings: RiskSettings, reading: rules.Reading) -> dict[str, Any] | None:
    """The limits' JSON after this reading when, but for the market guard, it is quiet (see
    `_record_quiet`), else None."""
    stored = row.limits or {}
    market = rules.market_entries(stored)
    # A market warning told already, with the market guard still set to warn, changes nothing while it
    # stands (`_record_quiet` checks that it does); a streak still building up is the engine's to count.
    # The engine keeps an account with a warning in `warning`: with the guard set to block or close
    # since, such a state is not the `ok` expected here, and the engine takes the reading.
    warned = bool(market) and settings.market.action == "warn"
    if (
        row.state != ("warning" if warned else "ok")
        or row.halted_at is not None
        or row.initial_balance is None
        or row.margin_streak
        or row.blocked_symbols
        or rules.market_warnings(stored).keys() != market.keys()
    ):
        return None
    if rules.margin_breached(reading.margin_level, settings.min_margin_level_percent):
        return None
    limits: dict[str, Any] = {}
    for limit in settings.drawdown_limits:
        previous = rules.LimitState.from_json(stored.get(limit.name))
        if previous is None:
            return None  # a limit's first reading: the engine starts it
        assessment = rules.assess_limit(
            limit,
            previous,
            reading,
            initial_balance=row.initial_balance,
            broker_offset_seconds=row.broker_offset_seconds,
            confirmations=settings.confirmations,
        )
        if assessment.level != rules.OK or assessment.new_period or assessment.warn_now:
            return None
        limits[limit.name] = assessment.state.to_json(assessment)
    return limits
