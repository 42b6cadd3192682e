"""The simulated trade server (`SimBroker`): accounts, symbols with a seeded price feed, positions, the order
and deal history, and the server-side events; and the process-wide broker (`default_broker`).

Price feed: each symbol's bid follows a geometric random walk whose step depends on the clock time
elapsed since the last query (so the feed moves with time and stands still under a frozen test clock);
the ask is bid + spread. `sim_set_quote` pins a symbol at the given bid/ask: the walk stops for it until
`sim_release_quote`, which resumes the walk from the pinned price. `sim_gap` and `sim_set_spread` move the
price without changing whether it is pinned.

Server-side checks run at the start of every broker operation (reads included), at the current prices:
- a buy position's stop loss triggers when bid <= sl, its take profit when bid >= tp (sells: ask >= sl,
  ask <= tp). A stop loss becomes a market order and fills at the current price: the SL price when the
  price reached it exactly, worse after a gap. A take profit fills at the TP price (a limit is never
  filled worse). The closing deal has reason DEAL_REASON_SL / DEAL_REASON_TP and a "[sl ...]" / "[tp ...]"
  comment, as on real servers.
- stop-out: while an account's margin level is below its `margin_so_so` (50 % by default), its most
  losing position is closed at market with reason DEAL_REASON_SO.

These checks cost what changed, not the size of the book, so one broker can serve thousands of accounts:
open positions are indexed by login and by symbol, each symbol keeps its SL and TP levels in heaps (a check
looks at the nearest levels only), and each account with positions gets a price window per symbol its
figures depend on, computed when its figures were last checked exactly, within which it provably stays
above its stop-out level; only accounts whose window a price left (or whose positions, balance or a
spread changed) are checked again. The results are those of checking every position and account at
every call. `SimBroker.position_visits` counts the positions the broker examined (a diagnostic).

Tick history: every change of a symbol's bid or ask is a tick, kept in the symbol's `TickHistory` (the
last `tick_capacity` ticks); `copy_ticks_*` read it and `copy_rates_*` build bars from it. While a
symbol's market is closed (`set_market_closed`) it has no ticks and none of its stops fire; a price set
meanwhile shows as one tick when it opens. A price path (`price_path`) pins the price and moves it to
each point in turn, one per interval of the broker's clock, each point a tick with its own time, and
checks stops and stop-outs at each.

Server time: real trade servers stamp ticks, bars, positions, orders and deals in their own time zone
(epoch seconds shifted by the server's UTC offset). `set_server_offset` sets this broker's (0, UTC, by
default); everything is kept in UTC and shifted as it is read, and the date bounds of history calls are
read in the server's time too, as the real terminal reads them.

Money is in the account currency, rounded to 2 digits per figure; cross rates come from the symbols' mid
prices. Accounts are hedging accounts (several positions per symbol). Pending orders, TRADE_ACTION_MODIFY,
REMOVE and CLOSE_BY are not simulated: order_send answers them TRADE_RETCODE_INVALID.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy

from shared.mt5 import arrays
from shared.mt5 import constants as C
from shared.mt5.sim.history import DEFAULT_TICK_CAPACITY, TickHistory, bars
from shared.mt5.sim.latency import owe
from shared.mt5.sim.symbols import DEFAULT_SYMBOLS, SimSymbol
from shared.mt5.structs import (
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)

__all__ = ["SimBroker", "SimError", "default_broker"]

DEFAULT_SERVER = "TradeGuard-Sim"
DEFAULT_SEED = 20240601
SEED_ENV = "TRADEGUARD_SIM_SEED"
COMPANY = "TradeGuard Simulated Broker"
# MT5 keeps 31 characters of an order comment (32 bytes with the terminating zero).
COMMENT_LIMIT = 31
DEMO_BALANCE = 10_000.0
DEMO_CURRENCY = "USD"
DEMO_LEVERAGE = 100
# The lowest ticket a broker gives. Its tickets start at the clock's microseconds when it is created
# (see SimBroker.first_ticket): higher than any ticket a broker created earlier can have given, so a
# restarted terminal never reuses one, even without its state file (shared.mt5.sim.state).
FIRST_TICKET = 1_000_000
_TICKETS_PER_SECOND = 1_000_000
_EPSILON = 1e-9
# A stop-out window uses this share of the price move its account can provably take (float headroom).
_WINDOW_SAFETY = 0.5
_MAX_WINDOW_LOG = 20.0

# The trade server's words for its return codes (OrderSendResult.comment).
_RETCODE_COMMENTS: dict[int, str] = {
    0: "Done",
    C.TRADE_RETCODE_REQUOTE: "Requote",
    C.TRADE_RETCODE_REJECT: "Request rejected",
    C.TRADE_RETCODE_CANCEL: "Request canceled by trader",
    C.TRADE_RETCODE_DONE: "Request executed",
    C.TRADE_RETCODE_DONE_PARTIAL: "Request executed partially",
    C.TRADE_RETCODE_ERROR: "Request processing error",
    C.TRADE_RETCODE_TIMEOUT: "Request canceled by timeout",
    C.TRADE_RETCODE_INVALID: "Invalid request",
    C.TRADE_RETCODE_INVALID_VOLUME: "Invalid volume in the request",
    C.TRADE_RETCODE_INVALID_PRICE: "Invalid price in the request",
    C.TRADE_RETCODE_INVALID_STOPS: "Invalid stops in the request",
    C.TRADE_RETCODE_TRADE_DISABLED: "Trade is disabled",
    C.TRADE_RETCODE_MARKET_CLOSED: "Market is closed",
    C.TRADE_RETCODE_NO_MONEY: "There is not enough money to complete the request",
    C.TRADE_RETCODE_PRICE_CHANGED: "Prices changed",
    C.TRADE_RETCODE_PRICE_OFF: "There are no quotes to process the request",
    C.TRADE_RETCODE_TOO_MANY_REQUESTS: "Too frequent requests",
    C.TRADE_RETCODE_NO_CHANGES: "No changes in request",
    C.TRADE_RETCODE_CONNECTION: "No connection with the trade server",
    C.TRADE_RETCODE_POSITION_CLOSED: "Position with the specified identifier has already been closed",
    C.TRADE_RETCODE_INVALID_CLOSE_VOLUME: "A close volume exceeds the current position volume",
    C.TRADE_RETCODE_LONG_ONLY: "Only long positions are allowed",
    C.TRADE_RETCODE_SHORT_ONLY: "Only short positions are allowed",
    C.TRADE_RETCODE_CLOSE_ONLY: "Only position closing is allowed",
}


class SimError(ValueError):
    """A control-surface call (sim_*) that cannot be done: unknown symbol, login or ticket, bad value."""


@dataclass
class _Quote:
    spec: SimSymbol
    rng: random.Random
    bid: float  # unrounded: the walk runs on it, ticks show it rounded to the symbol's digits
    spread: int
    updated: float  # clock time the walk last advanced to
    time_msc: int  # when the price last changed
    session_open: float
    pinned: bool = False
    trade_mode: int = C.SYMBOL_TRADE_MODE_FULL
    history: TickHistory = dataclass_field(default_factory=TickHistory)
    closed: bool = False  # the market is closed: no ticks, no trading, no stops
    path: deque[float] = dataclass_field(default_factory=deque)  # bids still to come (price_path)
    path_interval: float = 0.0
    path_next: float = 0.0  # clock time of the next point

    def shown(self) -> tuple[float, float]:
        """The prices a terminal shows: the last tick's while the market is closed (a price set meanwhile
        is not quoted before the open), else the current ones."""
        last = self.history.last() if self.closed else None
        return (last[1], last[2]) if last else self.prices()

    def prices(self) -> tuple[float, float]:
        digits = self.spec.digits
        bid = round(self.bid, digits)
        return bid, round(bid + self.spread * self.spec.point, digits)


@dataclass
class _Account:
    login: int
    password: str | None  # None: a demo account, any password opens it
    server: str
    name: str
    currency: str
    leverage: int
    balance: float
    margin_so_call: float = 100.0
    margin_so_so: float = 50.0


@dataclass
class _Position:
    ticket: int  # also its identifier: the ticket of the order that opened it
    login: int
    symbol: str
    type: int
    volume: float
    price_open: float
    sl: float
    tp: float
    magic: int
    comment: str
    reason: int
    time_msc: int
    time_update_msc: int


@dataclass(frozen=True)
class _Figures:
    profit: float
    equity: float
    margin: float
    margin_free: float
    margin_level: float


def _round_volume(volume: float) -> float:
    return round(volume, 8)


def _opposite(order_type: int) -> int:
    return C.ORDER_TYPE_SELL if order_type == C.ORDER_TYPE_BUY else C.ORDER_TYPE_BUY


def _stop_sign(position_type: int, field: str) -> int:
    """+1 or -1 such that the SL ("sl") or TP ("tp") of a position of this type triggers when
    sign * market price >= sign * level (a buy closes at the bid: SL when bid <= sl, TP when bid >= tp)."""
    buy = position_type == C.ORDER_TYPE_BUY
    return (-1 if buy else 1) if field == "sl" else (1 if buy else -1)


def _reasons(magic: int) -> tuple[int, int, int]:
    """(order, deal, position) reasons for a trade sent through the API: an Expert Advisor's when it
    carries a magic number, a desktop client's otherwise."""
    if magic:
        return C.ORDER_REASON_EXPERT, C.DEAL_REASON_EXPERT, C.POSITION_REASON_EXPERT
    return C.ORDER_REASON_CLIENT, C.DEAL_REASON_CLIENT, C.POSITION_REASON_CLIENT


class SimBroker:
    """The simulated trade server, shared by every `SimTerminal` bound to it. Thread-safe.

    `accounts`: {login: {"password", "balance", "currency", "leverage", and optionally "name", "server",
    "margin_so_so", "margin_so_call"}}. With accounts configured only those log in; without, any login
    and password open a demo account (created on first use: 10000 USD, leverage 1:100).
    `clock`: seconds since the epoch, `time.time` by default; tests inject a controllable one.
    `first_ticket`: the first ticket it gives; by default the clock's microseconds at creation, so that
    tickets never repeat across restarts (a broker would have to give more than a ticket per microsecond
    to reach the next one's start). A test may give one to play a server that reuses tickets.
    """

    def __init__(
        self,
        *,
        seed: int = DEFAULT_SEED,
        clock: Callable[[], float] = time.time,
        accounts: Mapping[int, Mapping[str, Any]] | None = None,
        symbols: Iterable[SimSymbol] | None = None,
        server: str = DEFAULT_SERVER,
        first_ticket: int | None = None,
        tick_capacity: int = DEFAULT_TICK_CAPACITY,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self.seed = seed
        self.server = server
        now = clock()
        self._quotes: dict[str, _Quote] = {}
        for spec in DEFAULT_SYMBOLS if symbols is None else symbols:
            self._quotes[spec.name] = _Quote(
                spec=spec,
                # Seeded per symbol, so adding a symbol does not change the others' walks. Simulation,
                # not cryptography.
                rng=random.Random(f"{seed}:{spec.name}"),  # noqa: S311
                bid=spec.start_bid,
                spread=spec.spread,
                updated=now,
                time_msc=int(now * 1000),
                session_open=spec.start_bid,
                history=TickHistory(tick_capacity),
            )
            bid, ask = self._quotes[spec.name].prices()
            self._quotes[spec.name].history.append(
                int(now * 1000), bid, ask, C.TICK_FLAG_BID | C.TICK_FLAG_ASK
            )
        self._server_offset = 0  # seconds east of UTC of the trade server's clock (set_server_offset)
        self._fill_rng = random.Random(f"{seed}:fills")  # noqa: S311
        self._open_demo = accounts is None
        self._accounts: dict[int, _Account] = {}
        self._positions: dict[int, _Position] = {}
        # The same open positions by login and by symbol, both in ticket order, kept in step by _open/_close.
        self._by_login: dict[int, dict[int, _Position]] = {}
        self._by_symbol: dict[str, dict[int, _Position]] = {}
        self._closed_positions: set[int] = set()
        # SL/TP heaps: {symbol: {(position type, "sl" | "tp"): [(sign * level, ticket)]}}, where sign makes
        # the level that triggers first the smallest key: a level triggers when sign * market >= key.
        # Entries of closed positions and of changed levels are dropped when met (and by compaction).
        self._stop_heaps: dict[str, dict[tuple[int, str], list[tuple[float, int]]]] = {}
        # Stop-out windows (see _set_window): {(symbol, sign): [(sign * bid bound, login, version)]}, sign -1
        # for the lower and +1 for the upper bound of each account's window; a bid leaves the window when
        # key < sign * bid. Only entries with the login's current version (self._so_windows) count.
        self._so_bounds: dict[tuple[str, int], list[tuple[float, int, int]]] = {}
        self._so_windows: dict[int, int] = {}  # login -> version of its current window
        self._so_next_version = 0
        self._so_dirty: set[int] = set()  # logins to check exactly at the next refresh
        self._rate_paths: dict[tuple[str, str], tuple[tuple[str, bool], ...]] = {}
        self.position_visits = 0  # positions examined by the broker, a diagnostic (tests, benchmarks)
        # History by login, each list in ticket order.
        self._orders: dict[int, list[TradeOrder]] = {}
        self._deals: dict[int, list[TradeDeal]] = {}
        self.record_visits = 0  # history records examined by the broker, a diagnostic (tests, benchmarks)
        if first_ticket is None:
            first_ticket = max(FIRST_TICKET, int(now * _TICKETS_PER_SECOND))
        if first_ticket < 1:
            raise SimError("first_ticket must be at least 1: ticket 0 means none in MT5")
        self.first_ticket = int(first_ticket)
        self._next_ticket = self.first_ticket
        self._next_request_id = 1
        # Bumped by every change a state file must keep (tickets given, accounts, stops, quotes set by
        # hand; not the price walk): the state keeper saves when it moved (shared.mt5.sim.state).
        self._changes = 0
        # Fill behaviour and faults (see the sim_* methods of SimTerminal).
        self._slippage = 0
        self._requotes = 0
        self._requote_probability = 0.0
        self._partial_fraction: float | None = None
        self._reject: int | None = None
        self._lost_replies = 0
        self._latency_ms: dict[int | None, float] = {}
        # "call": every call sleeps its latency before it runs. "reply": calls run at once and their
        # latencies add up, to be slept once by whoever sends the reply (`pay_latency`, the terminal
        # server). Either way a client waits the same; "reply" spares the terminal process a thread
        # wake-up per call, which on a loaded box costs more CPU than the call itself.
        self.latency_mode = "call"
        self._disconnected_until: dict[int | None, float] = {}
        for login, settings in (accounts or {}).items():
            self._add_account(int(login), settings, server=server)

    # ----- time, tickets, accounts -----------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def _ticket(self) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._changes += 1
        return ticket

    @property
    def changes(self) -> int:
        """How many changes a state file keeps have happened (a counter, compared between saves)."""
        return self._changes

    def _add_account(self, login: int, settings: Mapping[str, Any], *, server: str) -> _Account:
        account = _Account(
            login=login,
            password=settings.get("password"),
            server=str(settings.get("server", server)),
            name=str(settings.get("name", f"Simulated account {login}")),
            currency=str(settings.get("currency", DEMO_CURRENCY)),
            leverage=int(settings.get("leverage", DEMO_LEVERAGE)),
            balance=round(float(settings.get("balance", DEMO_BALANCE)), 2),
            margin_so_call=float(settings.get("margin_so_call", 100.0)),
            margin_so_so=float(settings.get("margin_so_so", 50.0)),
        )
        for quote in self._quotes.values():  # refuse a currency the symbols cannot be converted into
            self._rate(quote.spec.currency_profit, account.currency)
        self._accounts[login] = account
        self._changes += 1
        self._orders.setdefault(login, [])
        deals = self._deals.setdefault(login, [])
        if account.balance:
            # Real accounts start with a balance deal in their history; reconciliation must cope with it.
            now_msc = int(self.now() * 1000)
            deals.append(
                TradeDeal(
                    ticket=self._ticket(), order=0, time=now_msc // 1000, time_msc=now_msc,
                    type=C.DEAL_TYPE_BALANCE, entry=C.DEAL_ENTRY_IN, magic=0, position_id=0,
                    reason=C.DEAL_REASON_CLIENT, volume=0.0, price=0.0, commission=0.0, swap=0.0,
                    profit=account.balance, fee=0.0, symbol="", comment="Initial deposit", external_id="",
                )
            )  # fmt: skip
        return account

    def authenticate(self, login: int, password: str | None, server: str | None) -> bool:
        """Whether these credentials open the account; a demo broker opens (creates) any account."""
        with self._lock:
            account = self._accounts.get(login)
            if account is None:
                if not self._open_demo:
                    return False
                self._add_account(login, {"server": server or self.server}, server=self.server)
                return True
            if account.password is None:
                return True
            if server is not None and server != account.server:
                return False
            return password == account.password

    def _account(self, login: int) -> _Account:
        account = self._accounts.get(login)
        if account is None:
            if not self._open_demo:
                raise SimError(f"no account {login} on this broker")
            account = self._add_account(login, {}, server=self.server)
        return account

    # ----- prices ----------------------------------------------------------------------------------

    def _quote(self, symbol: str) -> _Quote:
        quote = self._quotes.get(symbol)
        if quote is None:
            raise SimError(f"unknown symbol {symbol!r}")
        return quote

    def _touch(self, quote: _Quote, before: tuple[float, float], time_msc: int) -> None:
        """The quote's price was `before` and may have changed at `time_msc`: stamp the quote and record the
        tick. Nothing while its market is closed: the change shows as a tick when it opens."""
        if quote.closed:
            return
        quote.time_msc = time_msc
        bid, ask = quote.prices()
        flags = (C.TICK_FLAG_BID if bid != before[0] else 0) | (C.TICK_FLAG_ASK if ask != before[1] else 0)
        if flags:
            quote.history.append(time_msc, bid, ask, flags)

    def _advance(self, now: float) -> None:
        for quote in self._quotes.values():
            elapsed = now - quote.updated
            if elapsed <= 0:
                continue
            quote.updated = now
            if quote.pinned or quote.closed:
                continue
            before = quote.prices()
            step = quote.spec.volatility * math.sqrt(elapsed) * quote.rng.gauss(0.0, 1.0)
            quote.bid *= math.exp(step)
            self._touch(quote, before, int(now * 1000))

    def _run_paths(self, now: float) -> None:
        """Apply the price paths' points that are due, in time order, each at its own time: a tick, then
        the stops and stop-outs at that price (a path through a stop fires it even if it comes back)."""
        while True:
            due = [q for q in self._quotes.values() if q.path and not q.closed and q.path_next <= now]
            if not due:
                return
            quote = min(due, key=lambda q: q.path_next)
            at = quote.path_next
            before = quote.prices()
            quote.bid = quote.path.popleft()
            quote.path_next = at + quote.path_interval
            self._changes += 1
            self._touch(quote, before, int(at * 1000))
            self._run_stops(at)
            self._run_stop_outs(at)

    def _refresh(self) -> None:
        """Bring the server up to the clock: move the prices, then fire stops and stop-outs."""
        now = self.now()
        self._run_paths(now)
        self._advance(now)
        self._run_stops(now)
        self._run_stop_outs(now)

    def _mid(self, symbol: str) -> float:
        bid, ask = self._quotes[symbol].prices()
        return (bid + ask) / 2

    def _rate_path(self, from_ccy: str, to_ccy: str) -> tuple[tuple[str, bool], ...]:
        """The symbols converting `from_ccy` into `to_ccy` (directly, else via USD), each with whether
        its price is inverted; cached. SimError when no symbols convert them."""
        key = (from_ccy, to_ccy)
        path = self._rate_paths.get(key)
        if path is None:
            if from_ccy == to_ccy:
                path = ()
            else:
                for name, quote in self._quotes.items():
                    if quote.spec.currency_base == from_ccy and quote.spec.currency_profit == to_ccy:
                        path = ((name, False),)
                        break
                    if quote.spec.currency_base == to_ccy and quote.spec.currency_profit == from_ccy:
                        path = ((name, True),)
                        break
                else:
                    if "USD" in (from_ccy, to_ccy):
                        raise SimError(f"no symbol converts {from_ccy} into {to_ccy}")
                    path = self._rate_path(from_ccy, "USD") + self._rate_path("USD", to_ccy)
            self._rate_paths[key] = path
        return path

    def _rate(self, from_ccy: str, to_ccy: str) -> float:
        """How many `to_ccy` one `from_ccy` is worth, from the symbols' mid prices (via USD if needed)."""
        rate = 1.0
        for name, inverted in self._rate_path(from_ccy, to_ccy):
            rate *= 1.0 / self._mid(name) if inverted else self._mid(name)
        return rate

    def _profit(
        self,
        symbol: str,
        order_type: int,
        price_open: float,
        price_close: float,
        volume: float,
        currency: str,
    ) -> float:
        spec = self._quotes[symbol].spec
        move = price_close - price_open if order_type == C.ORDER_TYPE_BUY else price_open - price_close
        return round(move * volume * spec.contract_size * self._rate(spec.currency_profit, currency), 2)

    def _margin_for(self, account: _Account, symbol: str, volume: float, price: float | None = None) -> float:
        """volume * contract size * price / leverage in the account currency: for a currency pair, the
        usual lots * contract / leverage in the base currency, converted. At the mid price unless a price
        is given (order_calc_margin's)."""
        spec = self._quotes[symbol].spec
        notional = volume * spec.contract_size * (self._mid(symbol) if price is None else price)
        return round(notional * self._rate(spec.currency_profit, account.currency) / account.leverage, 2)

    def _close_price(self, position: _Position) -> float:
        bid, ask = self._quotes[position.symbol].prices()
        return bid if position.type == C.ORDER_TYPE_BUY else ask

    def _position_profit(self, account: _Account, position: _Position) -> float:
        return self._profit(
            position.symbol,
            position.type,
            position.price_open,
            self._close_price(position),
            position.volume,
            account.currency,
        )

    def _account_positions(self, login: int) -> list[_Position]:
        positions = list(self._by_login.get(login, {}).values())
        self.position_visits += len(positions)
        return positions

    def _figures(self, account: _Account, extra_margin: float = 0.0) -> _Figures:
        positions = self._account_positions(account.login)
        profit = round(sum((self._position_profit(account, p) for p in positions), 0.0), 2)
        margin = round(
            sum((self._margin_for(account, p.symbol, p.volume) for p in positions), 0.0) + extra_margin, 2
        )
        equity = round(account.balance + profit, 2)
        level = round(equity / margin * 100.0, 2) if margin > 0 else 0.0
        return _Figures(profit, equity, margin, round(equity - margin, 2), level)

    # ----- server-side events ------------------------------------------------------------------------

    def _push_stops(self, position: _Position) -> None:
        """Put the position's SL and TP levels into its symbol's heaps (after opening or a change)."""
        books = self._stop_heaps.setdefault(position.symbol, {})
        live = len(self._by_symbol.get(position.symbol, ()))
        for field in ("sl", "tp"):
            level = getattr(position, field)
            if level <= 0:
                continue
            sign = _stop_sign(position.type, field)
            heap = books.setdefault((position.type, field), [])
            heapq.heappush(heap, (sign * level, position.ticket))
            if len(heap) > 2 * live + 32:  # mostly stale entries: rebuild from the open positions
                positions = self._by_symbol.get(position.symbol, {}).values()
                self.position_visits += live
                heap[:] = [
                    (sign * getattr(p, field), p.ticket)
                    for p in positions
                    if p.type == position.type and getattr(p, field) > 0
                ]
                heapq.heapify(heap)

    def _run_stops(self, now: float) -> None:
        # Only the heap entries at or beyond the market are looked at; those of closed positions and changed
        # levels are dropped on the way. Closing does not move prices, so the positions hit are those of one
        # pass over the whole book, closed in ticket order as such a pass would.
        hit: dict[int, _Position] = {}
        for symbol, books in self._stop_heaps.items():
            if self._quotes[symbol].closed:
                continue  # nothing executes in a closed market: its stops wait for the open
            bid, ask = self._quotes[symbol].prices()
            for (position_type, field), heap in books.items():
                sign = _stop_sign(position_type, field)
                bound = sign * (bid if position_type == C.ORDER_TYPE_BUY else ask)
                while heap and heap[0][0] <= bound:
                    key, ticket = heapq.heappop(heap)
                    self.position_visits += 1
                    position = self._positions.get(ticket)
                    if position is not None and sign * getattr(position, field) == key:
                        hit[ticket] = position
        for ticket in sorted(hit):
            position = hit[ticket]
            spec = self._quotes[position.symbol].spec
            market = self._close_price(position)
            if position.type == C.ORDER_TYPE_BUY:
                sl_hit = position.sl > 0 and market <= position.sl
                tp_hit = position.tp > 0 and market >= position.tp
            else:
                sl_hit = position.sl > 0 and market >= position.sl
                tp_hit = position.tp > 0 and market <= position.tp
            if sl_hit:
                # A stop becomes a market order: filled at the market, which after a gap is beyond the SL.
                self._close(
                    position,
                    position.volume,
                    market,
                    C.ORDER_REASON_SL,
                    C.DEAL_REASON_SL,
                    position.magic,
                    f"[sl {position.sl:.{spec.digits}f}]",
                    now,
                )
            elif tp_hit:
                self._close(
                    position,
                    position.volume,
                    position.tp,
                    C.ORDER_REASON_TP,
                    C.DEAL_REASON_TP,
                    position.magic,
                    f"[tp {position.tp:.{spec.digits}f}]",
                    now,
                )

    def _run_stop_outs(self, now: float) -> None:
        # Exactly checked: the accounts whose positions or balance changed, and those whose window a price
        # left. The others provably are above their stop-out level, so checking them would change nothing.
        for (symbol, sign), heap in self._so_bounds.items():
            bound = sign * self._quotes[symbol].prices()[0]
            while heap and heap[0][0] < bound:
                _, login, version = heapq.heappop(heap)
                if self._so_windows.get(login) == version:
                    self._so_dirty.add(login)
        for login in sorted(self._so_dirty):
            self._check_stop_out(login, now)
        self._so_dirty.clear()

    def _check_stop_out(self, login: int, now: float) -> None:
        account = self._accounts[login]
        while True:
            figures = self._figures(account)
            if figures.margin <= 0 or figures.margin_level >= account.margin_so_so:
                break
            worst = min(
                self._account_positions(login),
                key=lambda p: (self._position_profit(account, p), p.ticket),
            )
            comment = f"[so {figures.margin_level:.2f}%/{figures.equity:.2f}/{figures.margin:.2f}]"
            self._close(
                worst,
                worst.volume,
                self._close_price(worst),
                C.ORDER_REASON_SO,
                C.DEAL_REASON_SO,
                worst.magic,
                comment,
                now,
            )
        self._set_window(account, figures)

    def _set_window(self, account: _Account, figures: _Figures) -> None:
        """Give the account (just checked: `figures` are its current ones) a window of bids, one per
        symbol its figures read, within which its margin level stays at or above its stop-out level.

        With every such bid within a factor e^(+-w) of today's (spreads unchanged), a close price or mid
        moves by at most that factor too and a conversion rate (one or two symbols) by e^(+-2w), so each
        position's profit moves by at most volume * contract * rate * (close + open) * (e^3w - 1) and its
        margin by volume * contract * mid * rate / leverage * (e^3w - 1), plus 0.01 of rounding each (and
        0.01 per rounded sum). The level, round(equity / margin * 100, 2), stays >= margin_so_so while
        equity - k * margin > 0 with k = (margin_so_so + 0.01) / 100, which gives the largest safe w; a
        share of it is used. An account at the edge gets w = 0: any move of those bids checks it again.
        """
        login = account.login
        self._so_windows.pop(login, None)
        positions = self._account_positions(login)
        if not positions:
            return
        k = (account.margin_so_so + 0.01) / 100.0
        exposure = 0.0
        symbols: set[str] = set()
        for p in positions:
            spec = self._quotes[p.symbol].spec
            rate = abs(self._rate(spec.currency_profit, account.currency))
            units = p.volume * spec.contract_size * rate
            exposure += units * (abs(self._close_price(p)) + abs(p.price_open))
            exposure += abs(k) * units * abs(self._mid(p.symbol)) / account.leverage
            symbols.add(p.symbol)
            symbols.update(name for name, _ in self._rate_path(spec.currency_profit, account.currency))
        rounding = (0.01 * len(positions) + 0.03) * (1.0 + abs(k))
        headroom = figures.equity - k * figures.margin - rounding
        width = 0.0
        if headroom > 0 and exposure > 0:
            width = min(_MAX_WINDOW_LOG, math.log1p(headroom / exposure) / 3.0 * _WINDOW_SAFETY)
        version = self._so_next_version
        self._so_next_version += 1
        self._so_windows[login] = version
        for symbol in sorted(symbols):
            bid = self._quotes[symbol].prices()[0]
            for sign, bound in ((-1, bid * math.exp(-width)), (1, bid * math.exp(width))):
                heap = self._so_bounds.setdefault((symbol, sign), [])
                heapq.heappush(heap, (sign * bound, login, version))
                if len(heap) > 2 * len(self._so_windows) + 32:  # drop the entries of old windows
                    heap[:] = [e for e in heap if self._so_windows.get(e[1]) == e[2]]
                    heapq.heapify(heap)

    # ----- executing ---------------------------------------------------------------------------------

    def _record_order(
        self,
        login: int,
        *,
        order_type: int,
        symbol: str,
        volume_initial: float,
        volume_filled: float,
        price: float,
        magic: int,
        position_id: int,
        reason: int,
        comment: str,
        now: float,
        type_filling: int = C.ORDER_FILLING_FOK,
        type_time: int = C.ORDER_TIME_GTC,
        sl: float = 0.0,
        tp: float = 0.0,
        ticket: int | None = None,
    ) -> int:
        ticket = self._ticket() if ticket is None else ticket
        now_msc = int(now * 1000)
        remaining = _round_volume(volume_initial - volume_filled)
        self._orders.setdefault(login, []).append(
            TradeOrder(
                ticket=ticket, time_setup=now_msc // 1000, time_setup_msc=now_msc,
                time_done=now_msc // 1000, time_done_msc=now_msc, time_expiration=0, type=order_type,
                type_time=type_time, type_filling=type_filling,
                state=C.ORDER_STATE_PARTIAL if remaining > 0 else C.ORDER_STATE_FILLED,
                magic=magic, position_id=position_id, position_by_id=0, reason=reason,
                volume_initial=float(volume_initial), volume_current=float(remaining), price_open=price,
                sl=sl, tp=tp, price_current=price, price_stoplimit=0.0, symbol=symbol,
                comment=comment[:COMMENT_LIMIT], external_id="",
            )
        )  # fmt: skip
        return ticket

    def _record_deal(
        self,
        login: int,
        *,
        order: int,
        deal_type: int,
        entry: int,
        symbol: str,
        volume: float,
        price: float,
        magic: int,
        position_id: int,
        reason: int,
        profit: float,
        comment: str,
        now: float,
    ) -> int:
        ticket = self._ticket()
        now_msc = int(now * 1000)
        self._deals.setdefault(login, []).append(
            TradeDeal(
                ticket=ticket, order=order, time=now_msc // 1000, time_msc=now_msc, type=deal_type,
                entry=entry, magic=magic, position_id=position_id, reason=reason, volume=float(volume),
                price=price, commission=0.0, swap=0.0, profit=profit, fee=0.0, symbol=symbol,
                comment=comment[:COMMENT_LIMIT], external_id="",
            )
        )  # fmt: skip
        return ticket

    def _open(
        self,
        account: _Account,
        symbol: str,
        order_type: int,
        volume_requested: float,
        volume: float,
        price: float,
        *,
        sl: float,
        tp: float,
        magic: int,
        comment: str,
        reasons: tuple[int, int, int],
        now: float,
        type_filling: int = C.ORDER_FILLING_FOK,
        type_time: int = C.ORDER_TIME_GTC,
    ) -> tuple[int, int]:
        """Open a position; returns (order ticket, deal ticket). The position's ticket and identifier are
        the opening order's ticket, as in MT5."""
        order_reason, deal_reason, position_reason = reasons
        ticket = self._ticket()
        self._record_order(
            account.login,
            order_type=order_type,
            symbol=symbol,
            volume_initial=volume_requested,
            volume_filled=volume,
            price=price,
            magic=magic,
            position_id=ticket,
            reason=order_reason,
            comment=comment,
            now=now,
            type_filling=type_filling,
            type_time=type_time,
            sl=sl,
            tp=tp,
            ticket=ticket,
        )
        deal = self._record_deal(
            account.login,
            order=ticket,
            deal_type=order_type,
            entry=C.DEAL_ENTRY_IN,
            symbol=symbol,
            volume=volume,
            price=price,
            magic=magic,
            position_id=ticket,
            reason=deal_reason,
            profit=0.0,
            comment=comment,
            now=now,
        )
        now_msc = int(now * 1000)
        position = _Position(
            ticket=ticket, login=account.login, symbol=symbol, type=order_type, volume=_round_volume(volume),
            price_open=price, sl=sl, tp=tp, magic=magic, comment=comment[:COMMENT_LIMIT],
            reason=position_reason, time_msc=now_msc, time_update_msc=now_msc,
        )  # fmt: skip
        self._positions[ticket] = position
        self._by_login.setdefault(account.login, {})[ticket] = position
        self._by_symbol.setdefault(symbol, {})[ticket] = position
        self._push_stops(position)
        self._so_dirty.add(account.login)
        return ticket, deal

    def _close(
        self,
        position: _Position,
        volume: float,
        price: float,
        order_reason: int,
        deal_reason: int,
        magic: int,
        comment: str,
        now: float,
        *,
        volume_requested: float | None = None,
        type_filling: int = C.ORDER_FILLING_FOK,
    ) -> tuple[int, int]:
        """Close `volume` of a position at `price`, book the profit; returns (order, deal) tickets."""
        account = self._accounts[position.login]
        closing_type = _opposite(position.type)
        order = self._record_order(
            position.login,
            order_type=closing_type,
            symbol=position.symbol,
            volume_initial=volume if volume_requested is None else volume_requested,
            volume_filled=volume,
            price=price,
            magic=magic,
            position_id=position.ticket,
            reason=order_reason,
            comment=comment,
            now=now,
            type_filling=type_filling,
        )
        profit = self._profit(
            position.symbol, position.type, position.price_open, price, volume, account.currency
        )
        deal = self._record_deal(
            position.login,
            order=order,
            deal_type=closing_type,
            entry=C.DEAL_ENTRY_OUT,
            symbol=position.symbol,
            volume=volume,
            price=price,
            magic=magic,
            position_id=position.ticket,
            reason=deal_reason,
            profit=profit,
            comment=comment,
            now=now,
        )
        account.balance = round(account.balance + profit, 2)
        position.volume = _round_volume(position.volume - volume)
        position.time_update_msc = int(now * 1000)
        if position.volume <= _EPSILON:
            del self._positions[position.ticket]
            del self._by_login[position.login][position.ticket]
            if not self._by_login[position.login]:
                del self._by_login[position.login]
            del self._by_symbol[position.symbol][position.ticket]
            if not self._by_symbol[position.symbol]:
                del self._by_symbol[position.symbol]
            self._closed_positions.add(position.ticket)
        self._so_dirty.add(position.login)
        return order, deal

    # ----- what terminals read -----------------------------------------------------------------------

    def symbol_names(self) -> list[str]:
        with self._lock:
            return list(self._quotes)

    def has_symbol(self, symbol: str) -> bool:
        with self._lock:
            return symbol in self._quotes

    def tick(self, symbol: str) -> Tick | None:
        with self._lock:
            self._refresh()
            quote = self._quotes.get(symbol)
            if quote is None:
                return None
            bid, ask = quote.shown()
            time_msc = quote.time_msc + self._server_offset * 1000
            return Tick(
                time=time_msc // 1000,
                bid=bid,
                ask=ask,
                last=0.0,
                volume=0,
                time_msc=time_msc,
                flags=C.TICK_FLAG_BID | C.TICK_FLAG_ASK,
                volume_real=0.0,
            )

    def symbol_info(
        self, symbol: str, *, currency: str = DEMO_CURRENCY, selected: bool = True
    ) -> SymbolInfo | None:
        with self._lock:
            self._refresh()
            quote = self._quotes.get(symbol)
            if quote is None:
                return None
            spec = quote.spec
            bid, ask = quote.shown()
            # Tick value in the deposit currency: what one point on one lot is worth (USDJPY's depends on
            # the price, EURUSD's is a constant 1.0 USD).
            tick_value = spec.point * spec.contract_size * self._rate(spec.currency_profit, currency)
            return SymbolInfo(
                custom=False, chart_mode=C.SYMBOL_CHART_MODE_BID, select=selected, visible=selected,
                session_deals=0, session_buy_orders=0, session_sell_orders=0, volume=0, volumehigh=0,
                volumelow=0, time=quote.time_msc // 1000 + self._server_offset, digits=spec.digits,
                spread=quote.spread, spread_float=not quote.pinned, ticks_bookdepth=0,
                trade_calc_mode=spec.calc_mode,
                trade_mode=C.SYMBOL_TRADE_MODE_DISABLED if quote.closed else quote.trade_mode, start_time=0,
                expiration_time=0,
                trade_stops_level=spec.stops_level, trade_freeze_level=spec.freeze_level,
                trade_exemode=C.SYMBOL_TRADE_EXECUTION_INSTANT, swap_mode=C.SYMBOL_SWAP_MODE_DISABLED,
                swap_rollover3days=C.DAY_OF_WEEK_WEDNESDAY, margin_hedged_use_leg=False,
                expiration_mode=15, filling_mode=3, order_mode=127, order_gtc_mode=C.SYMBOL_ORDERS_GTC,
                option_mode=0, option_right=0, bid=bid, bidhigh=bid, bidlow=bid, ask=ask, askhigh=ask,
                asklow=ask, last=0.0, lasthigh=0.0, lastlow=0.0, volume_real=0.0, volumehigh_real=0.0,
                volumelow_real=0.0, option_strike=0.0, point=spec.point, trade_tick_value=tick_value,
                trade_tick_value_profit=tick_value, trade_tick_value_loss=tick_value,
                trade_tick_size=spec.point, trade_contract_size=spec.contract_size,
                trade_accrued_interest=0.0, trade_face_value=0.0, trade_liquidity_rate=0.0,
                volume_min=spec.volume_min, volume_max=spec.volume_max, volume_step=spec.volume_step,
                volume_limit=0.0, swap_long=0.0, swap_short=0.0, margin_initial=0.0,
                margin_maintenance=0.0, session_volume=0.0, session_turnover=0.0, session_interest=0.0,
                session_buy_orders_volume=0.0, session_sell_orders_volume=0.0,
                session_open=quote.session_open, session_close=quote.session_open, session_aw=0.0,
                session_price_settlement=0.0, session_price_limit_min=0.0, session_price_limit_max=0.0,
                margin_hedged=spec.contract_size / 2,
                price_change=round((bid - quote.session_open) / quote.session_open * 100.0, 4),
                price_volatility=0.0, price_theoretical=0.0, price_greeks_delta=0.0,
                price_greeks_theta=0.0, price_greeks_gamma=0.0, price_greeks_vega=0.0,
                price_greeks_rho=0.0, price_greeks_omega=0.0, price_sensitivity=0.0, basis="",
                category="", currency_base=spec.currency_base, currency_profit=spec.currency_profit,
                currency_margin=spec.currency_margin, bank="", description=spec.description, exchange="",
                formula="", isin="", name=spec.name, page="", path=spec.path or spec.name,
            )  # fmt: skip

    def account_currency(self, login: int) -> str:
        with self._lock:
            return self._account(login).currency

    def account_info(self, login: int) -> AccountInfo:
        with self._lock:
            self._refresh()
            account = self._account(login)
            figures = self._figures(account)
            return AccountInfo(
                login=account.login, trade_mode=C.ACCOUNT_TRADE_MODE_DEMO, leverage=account.leverage,
                limit_orders=200, margin_so_mode=C.ACCOUNT_STOPOUT_MODE_PERCENT, trade_allowed=True,
                trade_expert=True, margin_mode=C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING, currency_digits=2,
                fifo_close=False, balance=account.balance, credit=0.0, profit=figures.profit,
                equity=figures.equity, margin=figures.margin, margin_free=figures.margin_free,
                margin_level=figures.margin_level, margin_so_call=account.margin_so_call,
                margin_so_so=account.margin_so_so, margin_initial=0.0, margin_maintenance=0.0, assets=0.0,
                liabilities=0.0, commission_blocked=0.0, name=account.name, server=account.server,
                currency=account.currency, company=COMPANY,
            )  # fmt: skip

    def positions(self, login: int) -> list[TradePosition]:
        with self._lock:
            self._refresh()
            account = self._account(login)
            result = []
            shift = self._server_offset * 1000
            for p in sorted(self._account_positions(login), key=lambda p: p.ticket):
                current = self._close_price(p)
                opened, updated = p.time_msc + shift, p.time_update_msc + shift
                result.append(
                    TradePosition(
                        ticket=p.ticket, time=opened // 1000, time_msc=opened,
                        time_update=updated // 1000, time_update_msc=updated,
                        type=p.type, magic=p.magic, identifier=p.ticket, reason=p.reason, volume=p.volume,
                        price_open=p.price_open, sl=p.sl, tp=p.tp, price_current=current, swap=0.0,
                        profit=self._position_profit(account, p), symbol=p.symbol, comment=p.comment,
                        external_id="",
                    )
                )  # fmt: skip
            return result

    def history_orders(self, login: int) -> list[TradeOrder]:
        with self._lock:
            self._refresh()
            orders = self._orders.get(login, [])
            self.record_visits += len(orders)
            if self._server_offset:
                return [_shift_order(o, self._server_offset) for o in orders]
            return list(orders)

    def history_deals(self, login: int) -> list[TradeDeal]:
        with self._lock:
            self._refresh()
            deals = self._deals.get(login, [])
            self.record_visits += len(deals)
            if self._server_offset:
                return [_shift_deal(d, self._server_offset) for d in deals]
            return list(deals)

    @property
    def server_offset_seconds(self) -> int:
        """How far the trade server's clock is ahead of UTC (set_server_offset)."""
        return self._server_offset

    def calc_profit(
        self, login: int, order_type: int, symbol: str, volume: float, price_open: float, price_close: float
    ) -> float:
        """order_calc_profit: what a position would make between the two prices, in the account currency,
        by the very function that values open positions and closing deals."""
        with self._lock:
            self._refresh()
            account = self._account(login)
            self._quote(symbol)
            return self._profit(symbol, order_type, price_open, price_close, volume, account.currency)

    def calc_margin(self, login: int, symbol: str, volume: float, price: float) -> float:
        """order_calc_margin: the margin a position would take at `price`, in the account currency."""
        with self._lock:
            self._refresh()
            account = self._account(login)
            self._quote(symbol)
            return self._margin_for(account, symbol, volume, price)

    def ticks(
        self, symbol: str, from_msc: int, *, to_msc: int | None = None, count: int | None = None, flags: int
    ) -> numpy.ndarray[Any, Any] | None:
        """The symbol's ticks stamped from `from_msc` (to `to_msc`, or the first `count`) in the server's
        time, of the COPY_TICKS_* kind `flags`, as the official array; None for an unknown symbol."""
        with self._lock:
            self._refresh()
            quote = self._quotes.get(symbol)
            if quote is None:
                return None
            time_msc, bid, ask, tick_flags = quote.history.columns()
            shift = self._server_offset * 1000
        server_msc = time_msc + shift
        first = int(numpy.searchsorted(server_msc, from_msc, side="left"))
        end = len(server_msc) if to_msc is None else int(numpy.searchsorted(server_msc, to_msc, side="right"))
        chosen = numpy.arange(first, max(first, end))
        if flags == C.COPY_TICKS_INFO:
            chosen = chosen[(tick_flags[chosen] & (C.TICK_FLAG_BID | C.TICK_FLAG_ASK)) != 0]
        elif flags == C.COPY_TICKS_TRADE:
            chosen = chosen[(tick_flags[chosen] & (C.TICK_FLAG_LAST | C.TICK_FLAG_VOLUME)) != 0]
        if count is not None:
            chosen = chosen[:count]
        result = numpy.zeros(len(chosen), dtype=arrays.ticks_array().dtype)
        result["time"] = server_msc[chosen] // 1000
        result["bid"], result["ask"] = bid[chosen], ask[chosen]
        result["time_msc"], result["flags"] = server_msc[chosen], tick_flags[chosen]
        return result

    def rates(self, symbol: str, timeframe: int) -> numpy.ndarray[Any, Any] | None:
        """Every bar of `timeframe` the symbol's tick history makes, oldest first, as the official array
        (times in the server's time); None for an unknown symbol."""
        with self._lock:
            self._refresh()
            quote = self._quotes.get(symbol)
            if quote is None:
                return None
            time_msc, bid, ask, _ = quote.history.columns()
            point, shift = quote.spec.point, self._server_offset
        return arrays.rates_array(
            bars(time_msc, bid, ask, timeframe=timeframe, point=point, offset_seconds=shift)
        )

    # ----- trade requests ----------------------------------------------------------------------------

    def _result(
        self,
        request: TradeRequest,
        request_id: int,
        retcode: int,
        *,
        deal: int = 0,
        order: int = 0,
        volume: float = 0.0,
        price: float = 0.0,
        comment: str | None = None,
    ) -> OrderSendResult:
        quote = self._quotes.get(request.symbol)
        bid, ask = quote.prices() if quote else (0.0, 0.0)
        return OrderSendResult(
            retcode=retcode, deal=deal, order=order, volume=float(volume), price=float(price), bid=bid,
            ask=ask, comment=comment if comment is not None else _RETCODE_COMMENTS.get(retcode, str(retcode)),
            request_id=request_id, retcode_external=0, request=request,
        )  # fmt: skip

    def _volume_valid(self, spec: SimSymbol, volume: float) -> bool:
        if not (spec.volume_min - _EPSILON <= volume <= spec.volume_max + _EPSILON):
            return False
        steps = volume / spec.volume_step
        return abs(steps - round(steps)) < 1e-6

    def _stops_valid(
        self, spec: SimSymbol, order_type: int, sl: float, tp: float, bid: float, ask: float
    ) -> bool:
        """SL and TP on the right side of the price they close at, at least the stops level away."""
        if sl < 0 or tp < 0:
            return False
        minimum = spec.stops_level * spec.point - _EPSILON
        if order_type == C.ORDER_TYPE_BUY:  # closes at the bid
            return (not sl or (bid - sl > 0 and bid - sl >= minimum)) and (
                not tp or (tp - bid > 0 and tp - bid >= minimum)
            )
        return (not sl or (sl - ask > 0 and sl - ask >= minimum)) and (
            not tp or (ask - tp > 0 and ask - tp >= minimum)
        )

    def _own_position(self, login: int, ticket: int) -> tuple[int, _Position | None]:
        """The account's open position `ticket`, or the retcode refusing it: POSITION_CLOSED once it is
        closed, INVALID when unknown or another account's."""
        position = self._positions.get(ticket)
        if position is None or position.login != login:
            closed = ticket in self._closed_positions
            return (C.TRADE_RETCODE_POSITION_CLOSED if closed else C.TRADE_RETCODE_INVALID), None
        return 0, position

    def _validate_deal(
        self, account: _Account, request: TradeRequest, given: frozenset[str]
    ) -> tuple[int, _Position | None]:
        """The retcode refusing a TRADE_ACTION_DEAL request (0 when acceptable) and the position it
        closes, if any. Shared by order_check and order_send."""
        if not {"symbol", "volume", "type"} <= given:
            return C.TRADE_RETCODE_INVALID, None
        if request.type not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):  # pending types are not simulated
            return C.TRADE_RETCODE_INVALID, None
        quote = self._quotes.get(request.symbol)
        if quote is None:
            return C.TRADE_RETCODE_INVALID, None
        spec = quote.spec
        position = None
        if request.position:
            retcode, position = self._own_position(account.login, request.position)
            if position is None:
                return retcode, None
            if position.symbol != request.symbol or request.type == position.type:
                return C.TRADE_RETCODE_INVALID, position
        if quote.closed or quote.trade_mode == C.SYMBOL_TRADE_MODE_DISABLED:
            return C.TRADE_RETCODE_MARKET_CLOSED, position
        if position is None:
            if quote.trade_mode == C.SYMBOL_TRADE_MODE_CLOSEONLY:
                return C.TRADE_RETCODE_CLOSE_ONLY, None
            if quote.trade_mode == C.SYMBOL_TRADE_MODE_LONGONLY and request.type == C.ORDER_TYPE_SELL:
                return C.TRADE_RETCODE_LONG_ONLY, None
            if quote.trade_mode == C.SYMBOL_TRADE_MODE_SHORTONLY and request.type == C.ORDER_TYPE_BUY:
                return C.TRADE_RETCODE_SHORT_ONLY, None
        if not self._volume_valid(spec, request.volume):
            return C.TRADE_RETCODE_INVALID_VOLUME, position
        if position is not None and request.volume > position.volume + _EPSILON:
            return C.TRADE_RETCODE_INVALID_CLOSE_VOLUME, position
        if position is None:
            bid, ask = quote.prices()
            if not self._stops_valid(spec, request.type, request.sl, request.tp, bid, ask):
                return C.TRADE_RETCODE_INVALID_STOPS, None
        return 0, position

    def check(self, login: int, request: TradeRequest, given: frozenset[str]) -> OrderCheckResult:
        """order_check: would the request pass, and the account's figures after it. `margin` is what the
        operation needs, `margin_free` and `margin_level` are the account's after it (as MT5 documents)."""
        with self._lock:
            self._refresh()
            account = self._account(login)
            figures = self._figures(account)

            def result(retcode: int, margin: float = 0.0, after: _Figures = figures) -> OrderCheckResult:
                return OrderCheckResult(
                    retcode=retcode, balance=account.balance, equity=after.equity, profit=after.profit,
                    margin=margin, margin_free=after.margin_free, margin_level=after.margin_level,
                    comment=_RETCODE_COMMENTS.get(retcode, str(retcode)), request=request,
                )  # fmt: skip

            if request.action == C.TRADE_ACTION_SLTP:
                retcode = self._validate_sltp(account, request, given)[0]
                return result(retcode)
            if request.action != C.TRADE_ACTION_DEAL:
                return result(C.TRADE_RETCODE_INVALID)
            retcode, position = self._validate_deal(account, request, given)
            if retcode or position is not None:
                return result(retcode)
            margin = self._margin_for(account, request.symbol, request.volume)
            after = self._figures(account, extra_margin=margin)
            if after.margin_free < 0:
                return result(C.TRADE_RETCODE_NO_MONEY, margin, after)
            return result(0, margin, after)

    def send(self, login: int, request: TradeRequest, given: frozenset[str]) -> tuple[OrderSendResult, bool]:
        """order_send. Returns the result and whether the reply is lost on its way back (the caller then
        sees None although the server processed the request)."""
        with self._lock:
            self._refresh()
            account = self._account(login)
            request_id = self._next_request_id
            self._next_request_id += 1
            if request.action == C.TRADE_ACTION_DEAL:
                result = self._send_deal(account, request, given, request_id)
            elif request.action == C.TRADE_ACTION_SLTP:
                result = self._send_sltp(account, request, given, request_id)
            else:
                result = self._result(
                    request,
                    request_id,
                    C.TRADE_RETCODE_INVALID,
                    comment="Invalid request: only DEAL and SLTP are simulated",
                )
            lost = self._lost_replies > 0
            if lost:
                self._lost_replies -= 1
            return result, lost

    def _send_deal(
        self, account: _Account, request: TradeRequest, given: frozenset[str], request_id: int
    ) -> OrderSendResult:
        retcode, position = self._validate_deal(account, request, given)
        if retcode:
            return self._result(request, request_id, retcode)
        if self._reject is not None:
            return self._result(request, request_id, self._reject)
        quote = self._quotes[request.symbol]
        spec = quote.spec
        if self._requotes > 0 or (
            self._requote_probability > 0 and self._fill_rng.random() < self._requote_probability
        ):
            self._requotes = max(0, self._requotes - 1)
            return self._result(request, request_id, C.TRADE_RETCODE_REQUOTE)
        bid, ask = quote.prices()
        # Slippage is configured against the trader: a buy fills higher, a sell lower.
        if request.type == C.ORDER_TYPE_BUY:
            price = round(ask + self._slippage * spec.point, spec.digits)
        else:
            price = round(bid - self._slippage * spec.point, spec.digits)
        if request.price and abs(price - request.price) > request.deviation * spec.point + _EPSILON:
            # Instant execution: the price moved further than the trader accepts; quote the new one.
            return self._result(request, request_id, C.TRADE_RETCODE_REQUOTE)
        volume = request.volume
        if self._partial_fraction is not None:
            steps = math.floor(request.volume * self._partial_fraction / spec.volume_step + _EPSILON)
            volume = _round_volume(max(spec.volume_min, steps * spec.volume_step))
            volume = min(volume, request.volume)
        retcode = (
            C.TRADE_RETCODE_DONE if volume >= request.volume - _EPSILON else C.TRADE_RETCODE_DONE_PARTIAL
        )
        now = self.now()
        reasons = _reasons(request.magic)
        if position is not None:
            order, deal = self._close(
                position,
                volume,
                price,
                reasons[0],
                reasons[1],
                request.magic,
                request.comment,
                now,
                volume_requested=request.volume,
                type_filling=request.type_filling,
            )
            return self._result(
                request, request_id, retcode, deal=deal, order=order, volume=volume, price=price
            )
        margin = self._margin_for(account, request.symbol, volume)
        if self._figures(account, extra_margin=margin).margin_free < 0:
            return self._result(request, request_id, C.TRADE_RETCODE_NO_MONEY)
        order, deal = self._open(
            account,
            request.symbol,
            request.type,
            request.volume,
            volume,
            price,
            sl=request.sl,
            tp=request.tp,
            magic=request.magic,
            comment=request.comment,
            reasons=reasons,
            now=now,
            type_filling=request.type_filling,
            type_time=request.type_time,
        )
        return self._result(request, request_id, retcode, deal=deal, order=order, volume=volume, price=price)

    def _validate_sltp(
        self, account: _Account, request: TradeRequest, given: frozenset[str]
    ) -> tuple[int, _Position | None]:
        if "position" not in given or not request.position:
            return C.TRADE_RETCODE_INVALID, None
        retcode, position = self._own_position(account.login, request.position)
        if position is None:
            return retcode, None
        if request.symbol and request.symbol != position.symbol:
            return C.TRADE_RETCODE_INVALID, position
        if request.sl == position.sl and request.tp == position.tp:
            return C.TRADE_RETCODE_NO_CHANGES, position
        quote = self._quotes[position.symbol]
        bid, ask = quote.prices()
        if not self._stops_valid(quote.spec, position.type, request.sl, request.tp, bid, ask):
            return C.TRADE_RETCODE_INVALID_STOPS, position
        return 0, position

    def _send_sltp(
        self, account: _Account, request: TradeRequest, given: frozenset[str], request_id: int
    ) -> OrderSendResult:
        retcode, position = self._validate_sltp(account, request, given)
        if retcode or position is None:
            return self._result(request, request_id, retcode or C.TRADE_RETCODE_INVALID)
        if self._reject is not None:
            return self._result(request, request_id, self._reject)
        # As in MT5, a missing or zero sl/tp removes that level.
        position.sl, position.tp = float(request.sl), float(request.tp)
        position.time_update_msc = int(self.now() * 1000)
        self._changes += 1
        self._push_stops(position)
        return self._result(request._replace(symbol=position.symbol), request_id, C.TRADE_RETCODE_DONE)

    # ----- state kept across restarts (shared.mt5.sim.state writes and reads it) -------------------------

    def state(self) -> dict[str, Any]:
        """What a restarted terminal needs to go on where this one stopped, as JSON-ready values: the
        accounts, open positions, order and deal history, closed positions, ticket and request counters,
        and each symbol's price (with its walk's random state). Not kept: the faults and fill behaviour
        set through the control surface (latency, disconnects, slippage, requotes, partial fills,
        rejects, lost replies), which are a test's or a demo's, not the server's."""
        with self._lock:
            self._refresh()
            return {
                "seed": self.seed,
                "next_ticket": self._next_ticket,
                "next_request_id": self._next_request_id,
                "server_offset_seconds": self._server_offset,
                "accounts": [asdict(account) for account in self._accounts.values()],
                "positions": [asdict(self._positions[ticket]) for ticket in sorted(self._positions)],
                "closed_positions": sorted(self._closed_positions),
                "orders": {str(login): [o._asdict() for o in rows] for login, rows in self._orders.items()},
                "deals": {str(login): [d._asdict() for d in rows] for login, rows in self._deals.items()},
                "quotes": {
                    name: {
                        "bid": quote.bid,
                        "spread": quote.spread,
                        "pinned": quote.pinned,
                        "trade_mode": quote.trade_mode,
                        "closed": quote.closed,
                        "session_open": quote.session_open,
                        "time_msc": quote.time_msc,
                        "rng": _rng_state_json(quote.rng.getstate()),
                    }
                    for name, quote in self._quotes.items()
                },
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take over `state` (from `state()`, possibly of an earlier process). Meant for a broker nobody
        has used yet; its tickets go on after both its own start and the saved counter, whichever is
        higher, so none is given twice. Prices resume where they were, their walk from now on.
        ValueError (nothing changed) when the state names a symbol this broker does not have for a
        position, or is malformed."""
        try:
            accounts = [_Account(**row) for row in state["accounts"]]
            positions = sorted((_Position(**row) for row in state["positions"]), key=lambda p: p.ticket)
            orders = {int(k): [TradeOrder(**row) for row in rows] for k, rows in state["orders"].items()}
            deals = {int(k): [TradeDeal(**row) for row in rows] for k, rows in state["deals"].items()}
            closed = {int(ticket) for ticket in state["closed_positions"]}
            next_ticket = int(state["next_ticket"])
            next_request_id = int(state["next_request_id"])
            server_offset = int(state.get("server_offset_seconds", 0))  # files of before the setting: UTC
            quotes = {
                name: (
                    float(saved["bid"]),
                    int(saved["spread"]),
                    bool(saved["pinned"]),
                    int(saved["trade_mode"]),
                    float(saved["session_open"]),
                    int(saved["time_msc"]),
                    _rng_state_tuple(saved["rng"]),
                    bool(saved.get("closed", False)),
                )
                for name, saved in state["quotes"].items()
                if name in self._quotes  # a symbol no longer simulated (no position on it: checked below)
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a simulator state: {type(exc).__name__}: {exc}") from exc
        unknown = sorted({p.symbol for p in positions} - set(self._quotes))
        if unknown:
            raise ValueError(f"positions on symbols this simulator does not have: {', '.join(unknown)}")
        with self._lock:
            now = self.now()
            self._server_offset = server_offset
            for name, (bid, spread, pinned, trade_mode, session_open, time_msc, rng, shut) in quotes.items():
                quote = self._quotes[name]
                quote.bid, quote.spread, quote.pinned, quote.trade_mode = bid, spread, pinned, trade_mode
                quote.closed = shut
                before = quote.history.last()
                if before is not None and not shut:  # the restored price is the symbol's latest tick
                    self._touch(quote, (before[1], before[2]), max(time_msc, before[0]))
                quote.session_open, quote.time_msc, quote.updated = session_open, time_msc, now
                quote.rng.setstate(rng)
            self._accounts = {account.login: account for account in accounts}
            self._orders, self._deals = orders, deals
            self._closed_positions = closed
            self._positions, self._by_login, self._by_symbol, self._stop_heaps = {}, {}, {}, {}
            self._so_bounds, self._so_windows = {}, {}
            for position in positions:  # in ticket order, as _open keeps the indexes
                self._positions[position.ticket] = position
                self._by_login.setdefault(position.login, {})[position.ticket] = position
                self._by_symbol.setdefault(position.symbol, {})[position.ticket] = position
            for position in positions:
                self._push_stops(position)
            self._so_dirty = set(self._by_login)
            self._next_ticket = max(self._next_ticket, next_ticket)
            self._next_request_id = max(self._next_request_id, next_request_id)
            self._changes += 1

    # ----- control surface (SimTerminal.sim_* delegate here) -----------------------------------------

    def _set_quote_spread(self, quote: _Quote, spread: int) -> None:
        """Change a symbol's spread. A stop-out window assumes the spreads it was computed with, so the
        accounts whose window reads this symbol are checked again at the next refresh."""
        if spread == quote.spread:
            return
        quote.spread = spread
        self._changes += 1
        for sign in (-1, 1):
            for _, login, version in self._so_bounds.get((quote.spec.name, sign), ()):
                if self._so_windows.get(login) == version:
                    self._so_dirty.add(login)

    def set_quote(self, symbol: str, bid: float, ask: float) -> None:
        with self._lock:
            self._refresh()
            quote = self._quote(symbol)
            if ask < bid or bid <= 0:
                raise SimError(f"need 0 < bid <= ask, got bid={bid} ask={ask}")
            before = quote.prices()
            quote.bid = float(bid)
            self._set_quote_spread(quote, round((ask - bid) / quote.spec.point))
            quote.pinned = True
            quote.path.clear()
            self._changes += 1
            self._touch(quote, before, int(self.now() * 1000))
            self._refresh()

    def release_quote(self, symbol: str) -> None:
        with self._lock:
            self._refresh()
            quote = self._quote(symbol)
            quote.pinned = False
            quote.path.clear()
            quote.updated = self.now()  # the walk resumes from the pinned price, from now on
            self._changes += 1

    def gap(self, symbol: str, percent: float) -> None:
        with self._lock:
            self._refresh()
            quote = self._quote(symbol)
            before = quote.prices()
            quote.bid *= 1.0 + percent / 100.0
            self._touch(quote, before, int(self.now() * 1000))
            self._changes += 1
            self._refresh()

    def set_spread(self, symbol: str, points: int) -> None:
        with self._lock:
            self._refresh()
            if points < 0:
                raise SimError("spread must be >= 0 points")
            quote = self._quote(symbol)
            before = quote.prices()
            self._set_quote_spread(quote, int(points))  # the bid stays, the ask moves
            self._touch(quote, before, int(self.now() * 1000))
            self._refresh()

    def set_trade_mode(self, symbol: str, mode: int) -> None:
        with self._lock:
            self._quote(symbol).trade_mode = int(mode)
            self._changes += 1

    def price_path(self, symbol: str, points: Iterable[float], interval_seconds: float) -> None:
        with self._lock:
            self._refresh()
            quote = self._quote(symbol)
            bids = [float(point) for point in points]
            if not bids or not all(math.isfinite(b) and b > 0 for b in bids):
                raise SimError("points must be one or more bid prices above 0")
            if not (math.isfinite(interval_seconds) and interval_seconds > 0):
                raise SimError("interval_seconds must be above 0")
            quote.pinned = True  # the walk stops; the last point stays until sim_release_quote
            quote.path = deque(bids)
            quote.path_interval = float(interval_seconds)
            quote.path_next = self.now()
            self._changes += 1
            self._refresh()  # the first point at once

    def set_market_closed(self, symbol: str, closed: bool) -> None:
        with self._lock:
            self._refresh()
            quote = self._quote(symbol)
            if bool(closed) == quote.closed:
                return
            self._changes += 1
            if closed:
                quote.closed = True
                return
            quote.closed = False
            now = self.now()
            quote.updated = now  # the walk goes on from here, without the closed hours' move
            quote.path_next = max(quote.path_next, now)
            last = quote.history.last()
            # A price set while it was closed (a weekend gap) is the opening tick.
            self._touch(quote, (last[1], last[2]) if last else (0.0, 0.0), int(now * 1000))
            self._refresh()

    def stop_quotes(self, symbol: str, stopped: bool = True) -> None:
        if not stopped:
            self.release_quote(symbol)
            return
        with self._lock:
            self._refresh()
            quote = self._quote(symbol)
            quote.pinned = True  # the price stays where it is, and so does its time
            quote.path.clear()
            self._changes += 1

    def set_server_offset(self, hours: float) -> None:
        seconds = round(float(hours) * 3600)
        if not -14 * 3600 <= seconds <= 14 * 3600:
            raise SimError("a server's UTC offset is within -14 and +14 hours")
        with self._lock:
            self._server_offset = seconds
            self._changes += 1

    def open_manual(self, login: int, symbol: str, order_type: int, volume: float) -> int:
        with self._lock:
            self._refresh()
            account = self._account(login)
            quote = self._quote(symbol)
            if order_type not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
                raise SimError("order_type must be ORDER_TYPE_BUY or ORDER_TYPE_SELL")
            if not self._volume_valid(quote.spec, volume):
                raise SimError(f"invalid volume {volume} for {symbol}")
            if self._figures(account, extra_margin=self._margin_for(account, symbol, volume)).margin_free < 0:
                raise SimError(f"not enough money on {login} for {volume} {symbol}")
            bid, ask = quote.prices()
            price = ask if order_type == C.ORDER_TYPE_BUY else bid
            reasons = _reasons(0)
            ticket, _ = self._open(
                account,
                symbol,
                order_type,
                volume,
                volume,
                price,
                sl=0.0,
                tp=0.0,
                magic=0,
                comment="",
                reasons=reasons,
                now=self.now(),
            )
            return ticket

    def close_manual(self, login: int, ticket: int) -> int:
        with self._lock:
            self._refresh()
            position = self._own_position(login, ticket)[1]
            if position is None:
                raise SimError(f"no open position {ticket} on account {login}")
            _, deal = self._close(
                position,
                position.volume,
                self._close_price(position),
                C.ORDER_REASON_CLIENT,
                C.DEAL_REASON_CLIENT,
                0,
                "",
                self.now(),
            )
            return deal

    def set_latency(self, ms: float, login: int | None = None) -> None:
        with self._lock:
            self._latency_ms[login] = max(0.0, float(ms))

    def latency_seconds(self, login: int | None) -> float:
        with self._lock:
            ms = max(self._latency_ms.get(None, 0.0), self._latency_ms.get(login, 0.0) if login else 0.0)
            return ms / 1000.0

    def wait(self, seconds: float) -> None:
        """A call's latency: slept now, or owed until the reply (see `latency_mode`)."""
        if seconds <= 0:
            return
        if self.latency_mode == "reply":
            owe(seconds)
        else:
            time.sleep(seconds)

    def disconnect(self, seconds: float, login: int | None = None) -> None:
        with self._lock:
            self._disconnected_until[login] = self.now() + float(seconds)

    def is_disconnected(self, login: int | None) -> bool:
        with self._lock:
            now = self.now()
            if now < self._disconnected_until.get(None, 0.0):
                return True
            return login is not None and now < self._disconnected_until.get(login, 0.0)

    def set_slippage(self, points: int) -> None:
        with self._lock:
            self._slippage = int(points)

    def set_requotes(self, count: int = 0, *, probability: float = 0.0) -> None:
        with self._lock:
            if count < 0 or not 0.0 <= probability <= 1.0:
                raise SimError("count must be >= 0 and probability within [0, 1]")
            self._requotes = int(count)
            self._requote_probability = float(probability)

    def set_partial_fill(self, fraction: float | None) -> None:
        with self._lock:
            if fraction is not None and not 0.0 < fraction <= 1.0:
                raise SimError("fraction must be within (0, 1], or None")
            self._partial_fraction = None if fraction is None or fraction >= 1.0 else float(fraction)

    def set_reject(self, retcode: int | None) -> None:
        with self._lock:
            self._reject = retcode

    def lose_next_reply(self, count: int = 1) -> None:
        with self._lock:
            self._lost_replies += int(count)


def _shift_order(order: TradeOrder, seconds: int) -> TradeOrder:
    msc = seconds * 1000
    return order._replace(
        time_setup=(order.time_setup_msc + msc) // 1000,
        time_setup_msc=order.time_setup_msc + msc,
        time_done=(order.time_done_msc + msc) // 1000 if order.time_done_msc else order.time_done,
        time_done_msc=order.time_done_msc + msc if order.time_done_msc else order.time_done_msc,
    )


def _shift_deal(deal: TradeDeal, seconds: int) -> TradeDeal:
    return deal._replace(
        time=(deal.time_msc + seconds * 1000) // 1000, time_msc=deal.time_msc + seconds * 1000
    )


def _rng_state_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _rng_state_tuple(saved: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss_next = saved
    state = (int(version), tuple(int(i) for i in internal), gauss_next)
    random.Random().setstate(state)  # noqa: S311 - refuses a malformed state before anything changes
    return state


_default_broker: SimBroker | None = None
_default_broker_lock = threading.Lock()


def default_broker() -> SimBroker:
    """The process-wide broker, seeded from TRADEGUARD_SIM_SEED (default DEFAULT_SEED)."""
    global _default_broker
    with _default_broker_lock:
        if _default_broker is None:
            raw = os.environ.get(SEED_ENV, "").strip()
            try:
                seed = int(raw) if raw else DEFAULT_SEED
            except ValueError:
                raise ValueError(f"{SEED_ENV} must be an integer, got {raw!r}") from None
            _default_broker = SimBroker(seed=seed)
        return _default_broker
