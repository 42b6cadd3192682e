"""The rules of per-account reconciliation: what the broker really holds against what TradeGuard placed.

Pure functions over frozen dataclasses — no database, no terminal, no clock — so that every rule can be
unit-tested on its own and the Celery task that runs reconciliation stays a thin edge: it loads the
account's open trades (as `BookedTrade`), asks the terminal for positions, deals, symbol specs and the
account snapshot, calls `reconcile`, and writes what comes back.

What `reconcile` decides:

- **Matching**: each open MT5 position is attributed to at most one TradeGuard trade, first by identity
  (the ticket, or TradeGuard's magic number plus the trade's comment, which the order carried), then by
  tolerance (same symbol and side, volume within 5 %, open price within 2 pips). Identity is certain and
  so always wins; tolerance is a guess, used only for what identity could not explain (an order whose
  reply was lost, a broker that drops comments).
- **Divergence**: a matched position is compared with what was *requested* — slippage, volume, SL, TP —
  and the set of divergences gets a fingerprint, so the caller records a divergence once and again only
  when it changes, not on every pass.
- **Outside positions**: positions matching no trade were opened outside TradeGuard; `position.reason`
  says from where.
- **Closed trades**: a trade open in our books whose position is gone was closed outside TradeGuard (by
  the broker's SL/TP or stop-out, or by hand); the position's deals say why, at what price and for what
  P&L. Gone without a closing deal (the terminal lost it, or its history is incomplete), it has
  **vanished**: the caller records that and keeps looking for the closing deal.
- **Position keys**: a position is identified by its account's login and server, its identifier and its
  open time (`position_key`), not by its ticket alone, which a terminal may give again.
- **Snapshot figures**: equity, balance, peak equity (which never falls), exposure and drawdown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from shared.mt5.constants import (
    DEAL_ENTRY_IN,
    DEAL_ENTRY_INOUT,
    DEAL_ENTRY_OUT,
    DEAL_ENTRY_OUT_BY,
    DEAL_REASON_CLIENT,
    DEAL_REASON_EXPERT,
    DEAL_REASON_MOBILE,
    DEAL_REASON_SL,
    DEAL_REASON_SO,
    DEAL_REASON_TP,
    DEAL_REASON_WEB,
    POSITION_REASON_CLIENT,
    POSITION_REASON_EXPERT,
    POSITION_REASON_MOBILE,
    POSITION_REASON_WEB,
)
from shared.mt5.types import AccountSnapshot, Deal, Position, SymbolSpec

OpenedFrom = Literal["desktop", "mobile", "web", "expert", "unknown"]
CloseReason = Literal["sl", "tp", "stop_out", "by_hand", "expert", "unknown"]
MatchedBy = Literal["ticket", "magic_comment", "tolerance"]
DivergenceKind = Literal["slippage", "volume", "sl", "tp"]

_OPENED_FROM: dict[int, OpenedFrom] = {
    POSITION_REASON_CLIENT: "desktop",
    POSITION_REASON_MOBILE: "mobile",
    POSITION_REASON_WEB: "web",
    POSITION_REASON_EXPERT: "expert",
}
_CLOSE_REASON: dict[int, CloseReason] = {
    DEAL_REASON_SL: "sl",
    DEAL_REASON_TP: "tp",
    DEAL_REASON_SO: "stop_out",
    DEAL_REASON_CLIENT: "by_hand",
    DEAL_REASON_MOBILE: "by_hand",
    DEAL_REASON_WEB: "by_hand",
    DEAL_REASON_EXPERT: "expert",
}
_CLOSING_ENTRIES = (DEAL_ENTRY_OUT, DEAL_ENTRY_OUT_BY)
# Trade states in which TradeGuard believes a position is open; only these can be "closed outside".
_OPEN_STATES = frozenset({"filled", "partial"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_HUNDRED = Decimal(100)
_REPORTED = Decimal("0.01")  # reported pips and percentages; decisions use the exact figures


# --- inputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """How far apart two figures may be before they count as different. Settings, not constants."""

    match_volume_percent: Decimal = Decimal(5)  # tolerance matching: volume within this of the trade's
    match_price_pips: Decimal = Decimal(2)  # tolerance matching: open price within this many pips
    slippage_pips: Decimal = Decimal(5)  # divergence when the fill is further than this from requested
    volume_percent: Decimal = Decimal(10)  # divergence when the volume is further than this off requested
    stop_pips: Decimal = Decimal(10)  # divergence when SL or TP is further than this off requested

    def __post_init__(self) -> None:
        for name in (
            "match_volume_percent",
            "match_price_pips",
            "slippage_pips",
            "volume_percent",
            "stop_pips",
        ):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or value < 0:
                raise ValueError(f"tolerance {name} must be a non-negative Decimal, not {value!r}")


@dataclass(frozen=True)
class BookedTrade:
    """What reconciliation needs of a `shared.models.Trade` row, detached from the database session."""

    id: int
    symbol: str
    side: str  # "buy" | "sell"
    state: str  # a TradeState value: "sent", "filled", "partial", ...
    magic: int
    comment: str | None
    requested_volume: Decimal
    requested_price: Decimal | None = None
    requested_sl: Decimal | None = None
    requested_tp: Decimal | None = None
    filled_volume: Decimal | None = None
    filled_price: Decimal | None = None
    order_ticket: int | None = None
    position_ticket: int | None = None
    position_key: str | None = None  # of its position, once reconciliation has found it (position_key)
    vanished_at: datetime | None = None  # when its position was found gone without a closing deal

    @classmethod
    def from_row(cls, row: Any) -> BookedTrade:
        """Copy the fields from a Trade row (or anything with the same attributes). Enums become their
        string values, so the rules never depend on the ORM."""
        return cls(
            id=row.id,
            symbol=row.symbol,
            side=str(row.side),
            state=str(row.state),
            magic=row.magic,
            comment=row.comment,
            requested_volume=row.requested_volume,
            requested_price=row.requested_price,
            requested_sl=row.requested_sl,
            requested_tp=row.requested_tp,
            filled_volume=row.filled_volume,
            filled_price=row.filled_price,
            order_ticket=row.order_ticket,
            position_ticket=row.position_ticket,
            position_key=row.position_key,
            vanished_at=row.vanished_at,
        )

    @property
    def expected_volume(self) -> Decimal:
        """The volume the position should have: what was filled, or what was asked for if not known."""
        return self.filled_volume if self.filled_volume is not None else self.requested_volume

    @property
    def expected_price(self) -> Decimal | None:
        """The price the position should have opened at: the fill, else the requested price (None for a
        market order whose fill TradeGuard never learnt)."""
        return self.filled_price if self.filled_price is not None else self.requested_price


# --- outputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """One way a position differs from what was requested.

    `change` says how: "adverse" / "favourable" slippage (for the trader), "more" / "less" volume, and for
    SL and TP "moved", "removed" (requested, absent on the position) or "added" (not requested). `difference`
    is in `unit` ("pips" or "percent"); None when there is nothing to measure (a stop added or removed).
    """

    kind: DivergenceKind
    change: str
    expected: Decimal | None
    actual: Decimal | None
    difference: Decimal | None
    unit: Literal["pips", "percent"] | None


@dataclass(frozen=True)
class Match:
    """A position attributed to a trade, how, and how it diverges from what was requested."""

    trade: BookedTrade
    position: Position
    matched_by: MatchedBy
    divergences: tuple[Divergence, ...]
    fingerprint: str  # of `divergences`; changes exactly when the divergence set does
    position_key: str  # the position's (position_key)


@dataclass(frozen=True)
class OutsidePosition:
    """A position no TradeGuard trade accounts for: opened by hand or by another program."""

    position: Position
    opened_from: OpenedFrom
    position_key: str  # the position's (position_key)


@dataclass(frozen=True)
class ClosedTrade:
    """A trade open in our books whose position is gone from the terminal.

    `reason` is None while the terminal's history has no (complete) closing deal for the position: it
    is not guessed. Such a trade has `vanished` when its position was not open at the previous sync
    either (history can lag the position list by a sync; longer, the terminal lost the position or its
    history): the caller records that and looks again at every sync, closing the trade once the closing
    deal turns up.
    """

    trade: BookedTrade
    position_id: int | None  # the position's identifier, when it could be found
    reason: CloseReason | None
    close_price: Decimal | None  # volume-weighted over the closing deals
    closed_volume: Decimal | None
    profit: Decimal | None  # profit + swap + commission of all the position's deals
    closed_at: datetime | None  # time of the last closing deal
    position_key: str = ""  # the position's (position_key): the trade's, else from its opening deal
    vanished: bool = False

    @property
    def summary(self) -> str:
        if self.vanished:
            return "gone from the terminal without a closing deal in its history; still looked for"
        if self.reason is None:
            return "closed, reason unknown yet"
        return f"closed ({self.reason}) at {self.close_price}, P&L {self.profit}"


@dataclass(frozen=True)
class SnapshotFigures:
    """The account figures stored with every reconciliation and read by the drawdown guard."""

    equity: Decimal
    balance: Decimal
    peak_equity: Decimal
    open_positions: int
    total_lots: Decimal
    margin_level: Decimal | None  # percent; None when no margin is used
    drawdown_percent: Decimal  # from peak equity
    margin: Decimal = Decimal(0)  # in use, in the account currency


@dataclass(frozen=True)
class ReconciliationResult:
    matches: tuple[Match, ...]
    outside_positions: tuple[OutsidePosition, ...]
    closed_trades: tuple[ClosedTrade, ...]
    # Trades neither matched nor open in our books (e.g. "sent", outcome unknown): no conclusion yet.
    unmatched_trades: tuple[BookedTrade, ...]
    snapshot: SnapshotFigures


# --- pips --------------------------------------------------------------------------------------------


def _pips(distance: Decimal, pip: Decimal) -> Decimal:
    return abs(distance) / pip


def _reported(value: Decimal) -> Decimal:
    return value.quantize(_REPORTED, rounding=ROUND_HALF_UP)


# --- which position ----------------------------------------------------------------------------------


def position_key(
    login: int, server: str, identifier: int, opened_at: datetime | None, *, trade_id: int | None = None
) -> str:
    """Which position this is, for good: a digest of the account's login and server (as its terminal
    reports them), the position's identifier and its open time in milliseconds.

    A ticket alone does not say: a terminal restarted without its state gives its tickets again, and
    another login or server behind the same TradeGuard account has tickets of its own; keyed by ticket,
    the new position's events would be taken for the old one's (and dropped as already recorded). Without
    an open time (a trade whose position was never seen open and whose opening deal the history lacks),
    the TradeGuard trade it belongs to stands in for it: one trade, one position.
    """
    when = f"trade:{trade_id}" if opened_at is None else str(round((opened_at - _EPOCH) / _MILLISECOND))
    payload = json.dumps([login, server, identifier, when], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def open_position_key(account: AccountSnapshot, position: Position) -> str:
    """`position_key` of an open position of `account`."""
    return position_key(account.login, account.server, position.identifier, position.opened_at)


# --- matching ----------------------------------------------------------------------------------------


def _identity(trade: BookedTrade, position: Position, key: str | None) -> MatchedBy | None:
    """How certainly `position` is `trade`'s own position, from what the order carried.

    The position's identifier is the ticket of the order that opened it; TradeGuard records that order
    ticket (and the position ticket once known). Failing tickets — the reply to order_send was lost — the
    magic number and the trade's unique comment identify it. An empty comment identifies nothing. A trade
    whose position was found before knows its key (`key`: this position's): a position with another key
    is another one, whatever its ticket says (a ticket given again).
    """
    if trade.position_key is not None and key is not None and trade.position_key != key:
        return None
    if trade.order_ticket and trade.order_ticket == position.identifier:
        return "ticket"
    if trade.position_ticket and trade.position_ticket in (position.ticket, position.identifier):
        return "ticket"
    if trade.comment and position.magic == trade.magic and position.comment == trade.comment:
        return "magic_comment"
    return None


def _within_tolerance(
    trade: BookedTrade, position: Position, pip: Decimal, tolerances: Tolerances
) -> tuple[Decimal, Decimal] | None:
    """(price distance, volume distance) when the position could be the trade's, else None."""
    expected_price = trade.expected_price
    expected_volume = trade.expected_volume
    if position.symbol != trade.symbol or position.side != trade.side:
        return None
    if expected_price is None or expected_volume <= 0:
        return None  # nothing to compare with: tolerance cannot vouch for it
    volume_distance = abs(position.volume - expected_volume)
    price_distance = abs(position.price_open - expected_price)
    if volume_distance * _HUNDRED > tolerances.match_volume_percent * expected_volume:
        return None
    if price_distance > tolerances.match_price_pips * pip:
        return None
    return price_distance, volume_distance


# (sort key, trade, position, how): the key orders candidates best first.
_Candidate = tuple[tuple[Any, ...], BookedTrade, Position, MatchedBy]


def match_positions(
    positions: Sequence[Position],
    trades: Sequence[BookedTrade],
    pips: Mapping[str, Decimal],
    tolerances: Tolerances,
    keys: Mapping[int, str] | None = None,
) -> tuple[list[tuple[BookedTrade, Position, MatchedBy]], list[Position], list[BookedTrade]]:
    """Pair positions with trades one to one: (matches, unmatched positions, unmatched trades). `keys`
    gives each position's key by ticket (see `_identity`).

    Identity pairs are all taken before any tolerance pair, ticket before magic+comment, so a guess never
    steals a position that provably belongs to another trade; and only trades without a known ticket
    (a lost reply, a broker that drops comments) are matched by tolerance at all. Among tolerance
    candidates the closest open price wins (then the closest volume). Ties fall to the lower ticket / id
    so that the outcome does not depend on the order the terminal or the database listed things in.
    """
    taken_positions: set[int] = set()
    taken_trades: set[int] = set()
    matches: list[tuple[BookedTrade, Position, MatchedBy]] = []

    def take(candidates: Iterable[_Candidate]) -> None:
        for _key, trade, position, how in sorted(candidates, key=lambda c: c[0]):
            if position.ticket in taken_positions or trade.id in taken_trades:
                continue
            taken_positions.add(position.ticket)
            taken_trades.add(trade.id)
            matches.append((trade, position, how))

    rank = {"ticket": 0, "magic_comment": 1}
    identity: list[_Candidate] = []
    for position in positions:
        for trade in trades:
            how = _identity(trade, position, keys.get(position.ticket) if keys else None)
            if how is not None:
                identity.append(((rank[how], position.ticket, trade.id), trade, position, how))
    take(identity)

    tolerance: list[_Candidate] = []
    for position in positions:
        if position.ticket in taken_positions:
            continue
        for trade in trades:
            # A trade whose ticket is known is identified by it or not at all: its position gone and a
            # similar one opened by hand must not be taken for it (the trade would never be closed and
            # the manual position would be treated as TradeGuard's).
            if trade.id in taken_trades or trade.order_ticket or trade.position_ticket:
                continue
            distances = _within_tolerance(trade, position, pips[position.symbol], tolerances)
            if distances is not None:
                key = (*distances, position.ticket, trade.id)
                tolerance.append((key, trade, position, "tolerance"))
    take(tolerance)

    unmatched_positions = [p for p in positions if p.ticket not in taken_positions]
    unmatched_trades = [t for t in trades if t.id not in taken_trades]
    return matches, unmatched_positions, unmatched_trades


def opened_from(position: Position) -> OpenedFrom:
    """Where a position was opened, from MT5's POSITION_REASON: desktop, mobile, web terminal or a program
    (an Expert Advisor, a script, or an API client like TradeGuard itself)."""
    return _OPENED_FROM.get(position.reason, "unknown")


# --- divergence --------------------------------------------------------------------------------------


def _present(price: Decimal | None) -> Decimal | None:
    """MT5 reports 'no SL/TP' as 0; TradeGuard stores None. Both mean absent."""
    return price if price else None


def _stop_divergence(
    kind: DivergenceKind, requested: Decimal | None, actual: Decimal | None, pip: Decimal, limit: Decimal
) -> Divergence | None:
    requested, actual = _present(requested), _present(actual)
    if requested is None and actual is None:
        return None
    if requested is None:
        return Divergence(kind, "added", None, actual, None, None)
    if actual is None:
        return Divergence(kind, "removed", requested, None, None, None)
    off = _pips(actual - requested, pip)
    if off > limit:
        return Divergence(kind, "moved", requested, actual, _reported(off), "pips")
    return None


def divergences(
    trade: BookedTrade, position: Position, pip: Decimal, tolerances: Tolerances
) -> tuple[Divergence, ...]:
    """How `position` differs from what `trade` requested, beyond the tolerances, in a fixed order.

    Measured against the request (not the fill) because the question is whether the owner got what they
    approved. Slippage needs a requested price, so a market order without one has none.
    """
    found: list[Divergence] = []
    requested_price = trade.requested_price
    if requested_price is not None:
        slipped = _pips(position.price_open - requested_price, pip)
        if slipped > tolerances.slippage_pips:
            worse = (
                position.price_open > requested_price
                if position.side == "buy"
                else (position.price_open < requested_price)
            )
            found.append(
                Divergence(
                    "slippage",
                    "adverse" if worse else "favourable",
                    requested_price,
                    position.price_open,
                    _reported(slipped),
                    "pips",
                )
            )
    requested_volume = trade.requested_volume
    if requested_volume > 0:
        off_percent = abs(position.volume - requested_volume) / requested_volume * _HUNDRED
        if off_percent > tolerances.volume_percent:
            change = "more" if position.volume > requested_volume else "less"
            found.append(
                Divergence(
                    "volume", change, requested_volume, position.volume, _reported(off_percent), "percent"
                )
            )
    for stop in (
        _stop_divergence("sl", trade.requested_sl, position.sl, pip, tolerances.stop_pips),
        _stop_divergence("tp", trade.requested_tp, position.tp, pip, tolerances.stop_pips),
    ):
        if stop is not None:
            found.append(stop)
    return tuple(found)


def _canonical(value: Decimal | None) -> str | None:
    # 1.1 and 1.10000 are the same price: normalise so the fingerprint depends on values, not on how many
    # trailing zeros a terminal or a database column happened to produce. Fixed-point, never "1E+1".
    return None if value is None else format(value.normalize(), "f")


def fingerprint(found: Iterable[Divergence]) -> str:
    """A stable digest of a position's divergence set (order-independent).

    Built from what diverged and the figures involved (kind, change, expected, actual), not from the
    derived difference, so equal inputs always give the same digest and any changed figure a new one. The
    empty set has a digest too: when it replaces a previous one, the divergence has cleared.
    """
    items = sorted((d.kind, d.change, _canonical(d.expected), _canonical(d.actual)) for d in found)
    payload = json.dumps(items, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


# --- positions closed outside TradeGuard -------------------------------------------------------------


def _position_id_of(
    trade: BookedTrade, deals_by_position: Mapping[int, Sequence[Deal]], open_ids: set[int]
) -> int | None:
    """Which position history belongs to `trade`: its recorded position or order ticket (a position's
    identifier is the ticket of the order that opened it), else the position whose opening deal carried
    the trade's magic number and comment (the reply to order_send may have been lost). Positions still open
    are never the closed trade's."""
    for ticket in (trade.position_ticket, trade.order_ticket):
        if ticket and ticket not in open_ids and ticket in deals_by_position:
            return ticket
    if trade.comment:
        for position_id in sorted(deals_by_position):
            if position_id in open_ids:
                continue
            if any(
                d.entry == DEAL_ENTRY_IN and d.magic == trade.magic and d.comment == trade.comment
                for d in deals_by_position[position_id]
            ):
                return position_id
    return trade.position_ticket or trade.order_ticket or None


def _closed_position_key(
    account: AccountSnapshot, trade: BookedTrade, position_id: int | None, deals: Sequence[Deal]
) -> str:
    """The key of a closed or vanished trade's position: the one found while it was open, else from its
    opening deal's time (the position's open time), else standing in for it, the trade."""
    if trade.position_key:
        return trade.position_key
    identifier = position_id or trade.position_ticket or trade.order_ticket or 0
    opened_at = min(
        (d.time for d in deals if d.position_id == identifier and d.entry == DEAL_ENTRY_IN), default=None
    )
    return position_key(account.login, account.server, identifier, opened_at, trade_id=trade.id)


def close_reason(deal: Deal) -> CloseReason:
    """Why a closing deal happened, from MT5's DEAL_REASON: the broker's SL, TP or stop-out, a person
    (desktop, mobile or web), or a program."""
    return _CLOSE_REASON.get(deal.reason, "unknown")


def closed_trade(trade: BookedTrade, position_id: int | None, deals: Sequence[Deal]) -> ClosedTrade:
    """What the terminal's history says about how the position of `trade` was closed.

    The reason is that of the last closing deal (the one that took the position to zero, after any
    partial closes); the price is volume-weighted over all closing deals; P&L covers every deal of the
    position, opening commission included. Without a closing deal, or with closing deals for less than
    the opened volume (the rest not reported yet), nothing is guessed.
    """
    own = [d for d in deals if position_id is not None and d.position_id == position_id]
    closing = sorted((d for d in own if d.entry in _CLOSING_ENTRIES), key=lambda d: (d.time, d.ticket))
    if not closing:
        return ClosedTrade(trade, position_id, None, None, None, None, None)
    closed_volume = sum((d.volume for d in closing), Decimal(0))
    opened_volume = sum((d.volume for d in own if d.entry == DEAL_ENTRY_IN), Decimal(0))
    reversed_ = any(d.entry == DEAL_ENTRY_INOUT for d in own)  # a reversal muddles the volumes: skip
    if opened_volume > 0 and not reversed_ and closed_volume < opened_volume:
        # Only part of the close is in the history so far (the final deal not reported yet): decide
        # next time rather than close the trade at a partial price and P&L.
        return ClosedTrade(trade, position_id, None, None, None, None, None)
    if closed_volume > 0:
        close_price = sum((d.price * d.volume for d in closing), Decimal(0)) / closed_volume
    else:
        close_price = closing[-1].price
    profit = sum((d.profit + d.swap + d.commission for d in own), Decimal(0))
    last = closing[-1]
    return ClosedTrade(trade, position_id, close_reason(last), close_price, closed_volume, profit, last.time)


# --- snapshot ----------------------------------------------------------------------------------------


def peak_equity(previous_peak: Decimal | None, equity: Decimal) -> Decimal:
    """The highest equity seen: never lower than before. The first snapshot's peak is its equity."""
    return equity if previous_peak is None else max(previous_peak, equity)


def drawdown_percent(peak: Decimal, equity: Decimal) -> Decimal:
    """How far equity is below its peak, in percent of the peak (0 while there is no positive peak)."""
    if peak <= 0:
        return Decimal(0)
    return (peak - equity) / peak * _HUNDRED


def snapshot_figures(
    account: AccountSnapshot, positions: Sequence[Position], previous_peak: Decimal | None
) -> SnapshotFigures:
    peak = peak_equity(previous_peak, account.equity)
    return SnapshotFigures(
        equity=account.equity,
        balance=account.balance,
        peak_equity=peak,
        open_positions=len(positions),
        total_lots=sum((p.volume for p in positions), Decimal(0)),
        margin_level=account.margin_level,
        drawdown_percent=drawdown_percent(peak, account.equity),
        margin=account.margin,
    )


# --- the entry point ---------------------------------------------------------------------------------


def reconcile(
    account_positions: Sequence[Position],
    open_trades: Sequence[BookedTrade],
    deals_by_position: Mapping[int, Sequence[Deal]],
    previous_peak: Decimal | None,
    account: AccountSnapshot,
    tolerances: Tolerances | None = None,
    *,
    symbols: Mapping[str, SymbolSpec],
    open_at_last_sync: Collection[int] = (),
) -> ReconciliationResult:
    """Reconcile one account: everything the caller needs to write, decided in one pure call.

    `open_trades` are the trades that may hold a position (normally states sent, filled and partial);
    only filled or partial ones are concluded closed when no position accounts for them. `deals_by_position`
    is the terminal's deal history keyed by position identifier. `symbols` must hold the spec of every
    symbol among the positions and trades, because a pip depends on the symbol's digits; a missing one is
    an error rather than a silent guess at the pip. `open_at_last_sync` holds the ids of the trades whose
    positions the previous sync found open: gone without a closing deal, those have not vanished yet
    (the history may be a sync behind), the others have. Positions are keyed with `account`'s login and
    server (`position_key`).
    """
    tolerances = tolerances or Tolerances()
    needed = {p.symbol for p in account_positions} | {t.symbol for t in open_trades}
    missing = sorted(needed - set(symbols))
    if missing:
        raise ValueError(f"no symbol spec for {', '.join(missing)}: cannot measure pips")
    pips = {name: spec.pip for name, spec in symbols.items()}

    keys = {p.ticket: open_position_key(account, p) for p in account_positions}
    paired, outside, unmatched = match_positions(account_positions, open_trades, pips, tolerances, keys)

    matches = []
    for trade, position, how in paired:
        found = divergences(trade, position, pips[position.symbol], tolerances)
        matches.append(Match(trade, position, how, found, fingerprint(found), keys[position.ticket]))

    open_ids = {p.ticket for p in account_positions} | {p.identifier for p in account_positions}
    closed: list[ClosedTrade] = []
    undecided: list[BookedTrade] = []
    for trade in unmatched:
        if trade.state not in _OPEN_STATES:
            undecided.append(trade)
            continue
        position_id = _position_id_of(trade, deals_by_position, open_ids)
        deals = deals_by_position.get(position_id, ()) if position_id is not None else ()
        found_close = closed_trade(trade, position_id, deals)
        closed.append(
            replace(
                found_close,
                position_key=_closed_position_key(account, trade, position_id, deals),
                vanished=found_close.reason is None and trade.id not in open_at_last_sync,
            )
        )

    return ReconciliationResult(
        matches=tuple(matches),
        outside_positions=tuple(OutsidePosition(p, opened_from(p), keys[p.ticket]) for p in outside),
        closed_trades=tuple(closed),
        unmatched_trades=tuple(undecided),
        snapshot=snapshot_figures(account, account_positions, previous_peak),
    )
