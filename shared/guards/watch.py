"""The guards' fast path: watch quotes between syncs, and read at once the accounts they may have pushed
over a limit.

A 10-s reconciliation cycle cannot warn within a second. Equity is balance plus the positions' profit at
current prices, so the watch, every `TRADEGUARD_GUARD_WATCH_SECONDS`:

1. quotes each symbol held on each trade server once (one terminal connection per server),
2. estimates every watched account's equity from its last sync (equity then, plus each position's
   move since: the price change in ticks x the tick value x the volume) — `estimate_equity`, pure,
3. sends the accounts whose estimate is at a warning, a maximum or the margin minimum to `check_guards`,
   which reads them on the terminal and lets `engine.record_reading` decide, as for any reading.

The estimate never acts by itself: it only chooses whom to read now rather than at the next sync. It
also refreshes what the market guard knows (`market_quotes`), so spreads and jumps are seen within the
watch interval too.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from shared.core.db import DbSession, utcnow
from shared.guards import rules
from shared.guards.readings import known_offsets, observe_market, quote_all
from shared.guards.settings import RiskSettings
from shared.models import LIVE_ALERT_STATUSES, Account, AccountRisk, AccountSync, DrawdownAlert, GuardState
from shared.mt5.errors import TerminalError
from shared.mt5.ports import OpenTerminal
from shared.mt5.types import Quote, SymbolSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchedPosition:
    symbol: str
    side: str
    volume: Decimal
    # The price its profit was last read at (the close side: bid for a buy), weighted by volume over the
    # account's positions on the same symbol and side (`_figures_of`).
    price_at_sync: Decimal


@dataclass(frozen=True)
class WatchedAccount:
    account_id: int
    equity_at_sync: Decimal
    margin: Decimal
    positions: tuple[WatchedPosition, ...]
    # Each drawdown limit's reference and thresholds, and whether it has warned already.
    limits: tuple[tuple[Decimal, Decimal | None, Decimal | None, Decimal | None, bool], ...]
    min_margin_level: Decimal | None


def estimate_equity(
    account: WatchedAccount, quotes: Mapping[str, Quote], specs: Mapping[str, SymbolSpec]
) -> Decimal:
    """The account's equity at these quotes: its equity at the sync plus each position's move since. A
    buy is valued at the bid, a sell at the ask; one tick of move is worth the symbol's tick value (in
    the account currency) per lot. A symbol without a quote is taken as unmoved."""
    equity = account.equity_at_sync
    for position in account.positions:
        quote, spec = quotes.get(position.symbol), specs.get(position.symbol)
        if quote is None or spec is None:
            continue
        move = (
            quote.bid - position.price_at_sync
            if position.side == "buy"
            else position.price_at_sync - quote.ask
        )
        equity += spec.value_of_move(move, position.volume)
    return equity


def breaches(account: WatchedAccount, equity: Decimal) -> bool:
    """Whether the estimate is at a limit's maximum (in percent or amount) or under the margin minimum.
    Such an estimate stands for one of the readings its confirmation needs (`engine.record_reading`)."""
    for reference, _, max_percent, max_amount, _ in account.limits:
        amount = reference - equity
        if max_percent is not None and _percent(amount, reference) >= max_percent:
            return True
        if max_amount is not None and amount >= max_amount:
            return True
    if account.min_margin_level is not None and account.margin > 0:
        return equity / account.margin * rules.HUNDRED < account.min_margin_level
    return False


def needs_reading(account: WatchedAccount, equity: Decimal) -> bool:
    """Whether the estimate breaches (`breaches`) or is at a limit's warning not yet sent: then the
    account is read now."""
    return breaches(account, equity) or _warns(account, equity)


def _warns(account: WatchedAccount, equity: Decimal) -> bool:
    """Whether the estimate is at a limit's warning not yet sent."""
    return any(
        warn_percent is not None and not warned and _percent(reference - equity, reference) >= warn_percent
        for reference, warn_percent, _, _, warned in account.limits
    )


def _percent(amount: Decimal, reference: Decimal) -> Decimal:
    return amount / reference * rules.HUNDRED if reference > 0 else Decimal(0)


@dataclass(frozen=True)
class _Group:
    """The watched accounts on one terminal and trade server, and one of them to open it with."""

    opener: int  # an account id
    accounts: list[WatchedAccount]
    symbols: set[str]


# What `_watched` built of each account, with the key it was built from: (key, WatchedAccount).
# Per process: the watch runs every half second and most accounts change only when a sync or a reading
# touches them, so their views are built again only then. Rebuilding every account's view on every tick
# took the orders worker 1-2.5 s per tick at 1,000 accounts (bench/guards.py), more than the interval.
_cache: dict[int, tuple[tuple[Any, ...], WatchedAccount]] = {}

# Each account's risk settings, with the key they were parsed from (the owner's last save). A sync or a
# reading rebuilds a view, but leaves the settings as they were: parsing the document again for every
# sync was a third of the watch's time (bench/guards.py, py-spy: a reconciliation burst touches every
# account within 2 s, and the ticks after it took 0.2-0.45 s, on the processes the checks need).
_settings: dict[int, tuple[str, RiskSettings]] = {}


# The groups the last tick built, with the keys they were built from: a tick whose keys are all as
# before (no sync, reading, halt, alert or settings change since) reuses them.
_last_groups: tuple[dict[int, Any], dict[tuple[str, str], _Group]] | None = None


def _as_text(column: Any) -> Any:
    return sa.func.coalesce(sa.cast(column, sa.String), "")


def _watched(session: DbSession) -> dict[tuple[str, str], _Group]:
    """Accounts with open positions, a sync to start from, not halted by a close (one a block halted
    still holds its positions) and with no alert counting down."""
    global _last_groups
    live = sa.select(DrawdownAlert.account_id).where(DrawdownAlert.status.in_(LIVE_ALERT_STATUSES))
    # The key: every write that changes what an account's view is built from moves one of these (a
    # sync, a reading, the owner's settings; a halt and a resume move the guard state's too). One text
    # per account: four timestamps each, parsed into datetimes for 1,000 accounts on every tick, were
    # a good part of the watch's time (bench/guards.py).
    key = (
        _as_text(AccountSync.last_synced_at)
        + "|"
        + _as_text(GuardState.updated_at)
        + "|"
        + _as_text(AccountRisk.updated_at)
    )
    rows = session.execute(
        sa.select(Account.id, Account.terminal_url, Account.server, key.label("key"))
        .join(AccountSync, AccountSync.account_id == Account.id)
        .outerjoin(GuardState, GuardState.account_id == Account.id)
        .outerjoin(AccountRisk, AccountRisk.account_id == Account.id)
        .where(
            AccountSync.equity.is_not(None),
            Account.id.not_in(live),
            sa.or_(GuardState.halted_at.is_(None), GuardState.halted_by_alert_id.is_(None)),
        )
    ).all()
    keys = {row.id: (row.key, row.terminal_url, row.server) for row in rows}
    if _last_groups is not None and _last_groups[0] == keys:
        return _last_groups[1]
    for account_id in set(_cache) - set(keys):
        del _cache[account_id]  # halted, alerted or gone: built afresh when it is watched again
    for account_id in set(_settings) - set(keys):
        del _settings[account_id]
    stale = [account_id for account_id, key in keys.items() if _cache.get(account_id, (None,))[0] != key]
    for chunk in range(0, len(stale), 1000):
        _rebuild(session, {account_id: keys[account_id] for account_id in stale[chunk : chunk + 1000]})
    groups: dict[tuple[str, str], _Group] = {}
    for account_id, (account_key, terminal_url, server) in keys.items():
        cached = _cache.get(account_id)
        if cached is None or cached[0] != (account_key, terminal_url, server) or not cached[1].positions:
            continue  # changed since it was loaded (next tick), or nothing open
        watched = cached[1]
        group = groups.setdefault((terminal_url, server), _Group(account_id, [], set()))
        group.accounts.append(watched)
        group.symbols.update(p.symbol for p in watched.positions)
    _last_groups = (keys, groups)
    return groups


def _rebuild(session: DbSession, keys: dict[int, tuple[Any, ...]]) -> None:
    """Build these accounts' views again, loading only the parts whose own key moved since their view
    was built: the sync's figures and positions, the limits' stored references (a reading), the risk
    settings (the owner). The parts that did not move are taken from the view before."""
    figures_due: list[int] = []
    limits_due: list[int] = []
    settings_due: list[int] = []
    parts: dict[int, list[str]] = {}  # the sync's, the guard state's and the settings' timestamps
    for account_id, (key, _, _) in keys.items():
        parts[account_id] = now = key.split("|")
        cached = _cache.get(account_id)
        before = cached[0][0].split("|") if cached is not None else [None, None, None]
        if now[0] != before[0]:
            figures_due.append(account_id)
        if now[1] != before[1] or now[2] != before[2]:
            limits_due.append(account_id)
        if _settings.get(account_id, (None,))[0] != now[2]:
            settings_due.append(account_id)
    figures = (
        {
            account_id: _figures_of(equity, margin, positions)
            for account_id, equity, margin, positions in session.execute(
                sa.select(
                    AccountSync.account_id, AccountSync.equity, AccountSync.margin, AccountSync.positions
                ).where(AccountSync.account_id.in_(figures_due))
            )
        }
        if figures_due
        else {}
    )
    if settings_due:
        documents: dict[int, dict[str, Any] | None] = dict(
            session.execute(
                sa.select(AccountRisk.account_id, AccountRisk.settings).where(
                    AccountRisk.account_id.in_(settings_due)
                )
            ).all()
        )
        for account_id in settings_due:  # no row: the defaults
            _settings[account_id] = (
                parts[account_id][2],
                RiskSettings.from_document(documents.get(account_id)),
            )
    stored: dict[int, dict[str, Any] | None] = (
        dict(
            session.execute(
                sa.select(GuardState.account_id, GuardState.limits).where(
                    GuardState.account_id.in_(limits_due)
                )
            ).all()
        )
        if limits_due
        else {}
    )
    for account_id, key in keys.items():
        cached = _cache.get(account_id)
        if account_id in figures_due:
            if account_id not in figures:
                continue  # its sync is gone since the key was read: not watched
            equity, margin, positions = figures[account_id]
        else:  # a view was built before (a new account's figures are due)
            assert cached is not None
            view = cached[1]
            equity, margin, positions = view.equity_at_sync, view.margin, view.positions
        if account_id in limits_due:
            limits, min_margin_level = _limits_of(_settings[account_id][1], stored.get(account_id))
        else:
            assert cached is not None
            limits, min_margin_level = cached[1].limits, cached[1].min_margin_level
        _cache[account_id] = (
            key,
            WatchedAccount(account_id, equity, margin, positions, limits, min_margin_level),
        )


def _figures_of(
    equity: Decimal, margin: Decimal | None, positions: list[dict[str, Any]] | None
) -> tuple[Decimal, Decimal, tuple[WatchedPosition, ...]]:
    """What the account's last sync recorded, as the estimate needs it: equity, margin (NULL: none in
    use), and its positions by symbol and side: their volume, and the volume-weighted price their profit
    was read at.

    One per symbol and side, not one per position: a move is worth the same on 20 positions of 0.01 lot
    as on one of 0.2 at their mean price (`estimate_equity` is linear in volume x price), and every tick
    estimates every watched account: 5,000 accounts of 20 positions took 67 ms of CPU per tick, in
    process, against 16 ms to rebuild the views of the 180 accounts a tick found synced since the last
    (bench/fanout.py --with-guards' rate). The guards worker's CPU beside that benchmark did not
    measurably change with it: the runs there vary more than that."""
    exposure: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    for p in positions or ():
        volume = Decimal(p["volume"])
        key = (p["symbol"], p["side"])
        total, weighted = exposure.get(key, (Decimal(0), Decimal(0)))
        exposure[key] = (total + volume, weighted + volume * Decimal(p["price_current"]))
    return (
        equity,
        margin or Decimal(0),
        tuple(
            WatchedPosition(symbol, side, total, weighted / total)
            for (symbol, side), (total, weighted) in exposure.items()
            if total  # no volume, no move to weigh
        ),
    )


def _limits_of(
    settings: RiskSettings, stored_limits: dict[str, Any] | None
) -> tuple[tuple[tuple[Decimal, Decimal | None, Decimal | None, Decimal | None, bool], ...], Decimal | None]:
    """Each drawdown limit's stored reference with the owner's thresholds and whether it has warned (a
    limit never read yet is left out: its first reading comes with the next sync), and the margin
    minimum."""
    stored = stored_limits or {}
    limits = []
    for limit in settings.drawdown_limits:
        row = stored.get(limit.name) or {}
        reference = row.get("reference")
        if reference is None:
            continue
        limits.append(
            (
                Decimal(reference),
                limit.warn_percent,
                limit.max_percent,
                limit.max_amount,
                bool(row.get("warned")),
            )
        )
    return tuple(limits), settings.min_margin_level_percent


@dataclass(frozen=True)
class WatchResult:
    to_read: list[int]  # the accounts to read now
    breached: list[int]  # those among them whose estimate breaches (`breaches`)
    counts: dict[str, Any]  # what was done, for the log
    terminals: list[str] = field(default_factory=list)  # the terminal URLs that answered


def watch(session: DbSession, *, open_terminal: OpenTerminal, now: datetime | None = None) -> WatchResult:
    """One look at every watched account."""
    at = now or utcnow()
    groups = _watched(session)
    to_read: list[int] = []
    breached: list[int] = []
    answered: set[str] = set()
    counts: dict[str, Any] = defaultdict(int)
    openers = {group.opener: session.get(Account, group.opener) for group in groups.values()}
    # Each server's clock offset as known, which dates its quotes when none tells it (a closed market,
    # quotes standing still): dated as UTC, a UTC+2 server's stale quote was 2 h in the future, never
    # stale, and this tick's write undid the guard check's every half second (a stale-quote block lifted).
    offsets = known_offsets(session, list(openers))
    session.rollback()  # nothing held open while terminals answer
    for (terminal_url, server), group in groups.items():
        opener = openers[group.opener]
        if opener is None:
            continue  # deleted since
        try:
            with open_terminal(opener) as terminal:
                quotes, specs = quote_all(terminal, sorted(group.symbols))
        except TerminalError as exc:
            counts["servers_failed"] += 1
            log.warning(
                "guard watch: %s on %s failed (%s: %s)", server, terminal_url, type(exc).__name__, exc
            )
            continue
        observe_market(session, server, quotes, specs, at, known_offset=offsets[group.opener])
        counts["servers"] += 1
        answered.add(terminal_url)
        for account in group.accounts:
            counts["accounts"] += 1
            equity = estimate_equity(account, quotes, specs)
            if breaches(account, equity):
                to_read.append(account.account_id)
                breached.append(account.account_id)
            elif _warns(account, equity):
                to_read.append(account.account_id)
    session.commit()
    counts["to_read"] = len(to_read)
    counts["breached"] = len(breached)
    return WatchResult(to_read, breached, dict(counts), sorted(answered))
