"""`Gateway`: the only code that calls an MT5 terminal.

It drives any object that behaves like the official `MetaTrader5` module (the terminal protocol,
`protocol.MetaTrader5Module`) — the package itself (`mt5://`), the package in a remote Python over RPyC
classic (`mt5linux://host:port`, the mt5linux approach), or TradeGuard's simulated terminal (`sim://`
in-process, `sim://host:port` for the `terminal` process, which speaks the same RPyC protocol) — and
hands the rest of the code frozen dataclasses: Decimal for prices, volumes and money, UTC-aware
datetimes, sides as "buy"/"sell".

Every terminal call goes through `Gateway._call`, which

- runs it on the gateway's own worker thread and waits at most `timeout` seconds (a hung terminal
  must not hang a Celery task), and for RPyC also bounds the connection's own wait;
- turns the package's `None`/`False` + `last_error()` convention into the exceptions of
  `shared.mt5.errors`, and transport failures into `TerminalUnavailable`;
- for `order_send`, turns "no answer" of any kind into `OrderOutcomeUnknown`: the order may exist.

Times: MT5 reports times as seconds (and `*_msc` milliseconds) since the epoch in the trade server's
clock. TradeGuard treats them as UTC, which holds for the simulated terminal and for brokers whose
server runs on UTC; others are off by their server's fixed offset, consistently so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

from shared.mt5 import constants as mt5c
from shared.mt5.backends import Backend, LocalBackend, RemoteError, RpycBackend, connector
from shared.mt5.convert import (
    account_from,
    deal_from,
    order_result_from,
    position_from,
    quote_from,
    symbol_from,
)
from shared.mt5.errors import (
    ORDER_CALLS,
    OrderOutcomeUnknown,
    PermanentTerminalError,
    TerminalError,
    TerminalLoginFailed,
    TerminalProtocolError,
    TerminalTimeout,
    TerminalUnavailable,
    classify,
)
from shared.mt5.pool import ConnectionPool
from shared.mt5.protocol import MetaTrader5Module
from shared.mt5.terminals import require_declared
from shared.mt5.types import AccountSnapshot, AccountState, Deal, OrderResult, Position, Quote, SymbolSpec
from shared.mt5.wire import ENSURE_LOGIN, Call, SessionKey, as_utc, session_key

log = logging.getLogger(__name__)

MAX_COMMENT_LENGTH = 31  # MT5 silently truncates longer comments, which would break matching by comment

T = TypeVar("T")


_LIST_CALLS = frozenset({"positions_get", "orders_get", "history_deals_get", "history_orders_get"})
_VOID_CALLS = frozenset({"shutdown"})  # returns None when it worked


class Gateway:
    """One logged-in session with one terminal account. Not shared between threads. With an executor,
    every call is serialised onto the gateway's own worker thread, as the MetaTrader5 package requires;
    pooled gateways (built with executor=None) run calls on the caller's thread.

    Open with `Gateway.open(terminal_url, login=..., password=..., server=...)`, preferably as a context
    manager, which closes the session (and the RPyC connection) at the end.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        timeout: float,
        executor: ThreadPoolExecutor | None,
        login: int | None = None,
        pool: ConnectionPool | None = None,
        shared_session: bool = False,
    ):
        self._backend = backend
        self.timeout = timeout
        self._executor = executor
        self._closed = False
        self._lock = threading.Lock()
        self._login = login
        self._pool = pool
        # The real MetaTrader5 package has one session per process, shared by every connection to its
        # terminal: each run of calls starts by making sure it is on our account (ENSURE_LOGIN).
        self._shared_session = shared_session
        self._pending_login: Call | None = None  # sent ahead of the next calls only
        self._relogin: Call | None = None  # sent ahead of every run of calls (shared sessions)
        self._session_key: SessionKey | None = None
        self._broken = False  # the connection failed or timed out: never give it back to the pool

    # -- opening and closing

    @classmethod
    def open(
        cls,
        terminal_url: str,
        *,
        declared: frozenset[str],
        login: int,
        password: str,
        server: str,
        timeout: float = 10.0,
        pool: ConnectionPool | None = None,
    ) -> Gateway:
        """Connect to the terminal named by `terminal_url` and log into the account. `declared` holds
        the canonical URLs of the terminals the operator declared (`terminals.declared_terminals`):
        any other is refused with TerminalNotDeclared before anything is sent, whatever the account row
        says.

        With a `pool` (RPyC terminals only), an idle connection of this process is reused and given back
        on close, without shutting its terminal session down; the login travels with the first calls in
        one round trip, and is skipped when the session is already logged in to this account. Reading
        code then checks that the terminal reports this login (`read_account`).

        Raises InvalidTerminalUrl, TerminalNotDeclared, TerminalNotSupported, TerminalLoginFailed
        (permanent) or TerminalUnavailable / TerminalTimeout (retry later).
        """
        key, connect, shared = connector(require_declared(terminal_url, declared), timeout)
        if pool is not None and key is not None:
            credentials = _credentials(login, password, server, timeout)
            backend = pool.take(key) or _connect_within(connect, timeout)
            assert isinstance(backend, RpycBackend)
            gateway = cls(
                backend, timeout=timeout, executor=None, login=int(login), pool=pool, shared_session=shared
            )
            gateway._session_key = session_key(login, server, password)
            if not backend.initialized:
                # A new connection's session (or one that failed) starts with initialize().
                gateway._pending_login = ("initialize", (), credentials)
            elif not shared and backend.logged_in_as != gateway._session_key:
                gateway._pending_login = ("login", (), credentials)
            if shared:
                gateway._relogin = (ENSURE_LOGIN, (), credentials)
            return gateway
        executor = _executor()
        try:
            backend = _guarded("connect", connect, executor, timeout)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        return cls._logged_in(
            backend,
            executor,
            login=login,
            password=password,
            server=server,
            timeout=timeout,
            shared_session=shared,
        )

    @classmethod
    def from_module(
        cls,
        module: MetaTrader5Module,
        *,
        login: int,
        password: str,
        server: str,
        timeout: float = 10.0,
        shared_session: bool = False,
    ) -> Gateway:
        """A gateway over a module-like object already in this process (e.g. a `SimTerminal`; with
        `shared_session`, one whose session is the whole process's, as the real package's is)."""
        return cls._logged_in(
            LocalBackend(module),
            _executor(),
            login=login,
            password=password,
            server=server,
            timeout=timeout,
            shared_session=shared_session,
        )

    @classmethod
    def _logged_in(
        cls,
        backend: Backend,
        executor: ThreadPoolExecutor,
        *,
        login: int,
        password: str,
        server: str,
        timeout: float,
        shared_session: bool = False,
    ) -> Gateway:
        """A gateway over `backend`, logged in; closed again (without shutdown) if logging in fails."""
        gateway = cls(
            backend, timeout=timeout, executor=executor, login=int(login), shared_session=shared_session
        )
        credentials = _credentials(login, password, server, timeout)
        try:
            # initialize() with credentials connects *and* logs in.
            gateway._call("initialize", **credentials)
        except BaseException:
            gateway.close(shutdown=False)
            raise
        if shared_session:
            gateway._relogin = (ENSURE_LOGIN, (), credentials)
        return gateway

    @property
    def module(self) -> Any:
        """The module-like object in this process (the MetaTrader5 package, a SimTerminal), for the
        simulator's sim_* controls and diagnostics; trading code uses the methods. An RPyC terminal's
        module is not reachable from here (its objects never come over): use `control`."""
        if not isinstance(self._backend, LocalBackend):
            raise AttributeError("an RPyC terminal's module stays on the terminal: use Gateway.control()")
        return self._backend.module

    def control(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call `name` on the terminal's module outside the trading API (the simulator's sim_* controls,
        diagnostics), on this gateway's session like any other call, and return its plain result as it
        is: None and False are returned, not raised. Never an order: those go through `send_order`."""
        if name in ORDER_CALLS:
            raise ValueError(f"{name} is sent with Gateway.send_order, which knows a lost answer")
        return self._call_many([(name, args, kwargs)], checked=False)[0]

    def close(self, *, shutdown: bool = True) -> None:
        """Shut the terminal session down and close the connection (a pooled connection goes back to its
        pool, its session kept). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            # A pooled session is kept for the connection's next user; a shared one (the real
            # package's, one per process) belongs to every connection to the terminal.
            if shutdown and self._pool is None and not self._shared_session:
                try:
                    self._call("shutdown")
                except TerminalError as exc:
                    # The session is being abandoned anyway; a dead terminal has nothing to shut down.
                    log.info("terminal shutdown failed while closing: %s", exc)
            self._closed = True
        if self._pool is not None and not self._broken and isinstance(self._backend, RpycBackend):
            self._pool.give(self._backend)
            return
        try:
            self._backend.close()
        except Exception as exc:
            log.info("closing the terminal connection failed: %s", exc)
        if self._executor is not None:
            # Do not wait for a call that is still hung in the terminal: it has already timed out.
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading

    def account(self) -> AccountSnapshot:
        reply = self._call("account_info")
        with self._reply_of("account_info"):
            return account_from(reply)

    def symbol(self, name: str) -> SymbolSpec:
        info = self._call("symbol_info", name)
        with self._reply_of("symbol_info"):
            visible = info.get("visible", True)
        if not visible:
            # A symbol hidden from Market Watch gets no fresh ticks; showing it makes the terminal
            # subscribe to its quotes.
            self._call("symbol_select", name, True)
            info = self._call("symbol_info", name)
        with self._reply_of("symbol_info"):
            return symbol_from(info)

    def quote(self, name: str) -> Quote:
        try:
            tick = self._call("symbol_info_tick", name)
        except PermanentTerminalError:
            # No tick usually means the symbol is not in Market Watch yet; select it and ask again
            # (symbol_select raises SymbolNotFound when the broker has no such symbol).
            self._call("symbol_select", name, True)
            tick = self._call("symbol_info_tick", name)
        with self._reply_of("symbol_info_tick"):
            return quote_from(name, tick)

    def symbol_and_quote(self, name: str) -> tuple[SymbolSpec, Quote]:
        """`symbol(name)` and `quote(name)` asked in one round trip: what the pre-trade checks read
        before an order. A symbol hidden from Market Watch, or without a tick yet, is asked again the
        way `symbol` and `quote` ask it (showing it first); an unknown one raises SymbolNotFound."""
        try:
            info, tick = self._call_many([("symbol_info", (name,), {}), ("symbol_info_tick", (name,), {})])
        except PermanentTerminalError as exc:
            if exc.call != "symbol_info_tick":
                raise
            return self.symbol(name), self.quote(name)
        with self._reply_of("symbol_info"):
            visible = info.get("visible", True)
        if not visible:
            return self.symbol(name), self.quote(name)
        with self._reply_of("symbol_info"):
            spec = symbol_from(info)
        with self._reply_of("symbol_info_tick"):
            return spec, quote_from(name, tick)

    def positions(self, symbol: str | None = None) -> list[Position]:
        rows = self._call("positions_get", symbol=symbol) if symbol else self._call("positions_get")
        with self._reply_of("positions_get"):
            return [position_from(r) for r in rows]

    def position(self, ticket: int) -> Position | None:
        rows = self._call("positions_get", ticket=int(ticket))
        with self._reply_of("positions_get"):
            return position_from(rows[0]) if rows else None

    def deals(self, date_from: datetime, date_to: datetime) -> list[Deal]:
        rows = self._call("history_deals_get", as_utc(date_from), as_utc(date_to))
        with self._reply_of("history_deals_get"):
            return [deal_from(r) for r in rows]

    def deals_for_position(self, position_id: int) -> list[Deal]:
        rows = self._call("history_deals_get", position=int(position_id))
        with self._reply_of("history_deals_get"):
            return [deal_from(r) for r in rows]

    def deals_for_positions(self, position_ids: list[int]) -> dict[int, list[Deal]]:
        """Each position's deals, in one round trip."""
        ids = [int(i) for i in position_ids]
        if not ids:
            return {}
        answers = self._call_many([("history_deals_get", (), {"position": i}) for i in ids])
        with self._reply_of("history_deals_get"):
            return {i: [deal_from(r) for r in rows] for i, rows in zip(ids, answers, strict=True)}

    def read_account(self, deals_from: datetime, deals_to: datetime) -> AccountState:
        """The account's figures, its open positions and its deals done within [deals_from, deals_to],
        in one round trip (with the login, for a pooled session that needs one).

        Raises TerminalLoginFailed when the terminal answers for another account than the gateway's: a
        session logged in elsewhere behind our back must not have its figures booked to this account.
        """
        account, positions, deals = self._call_many(
            [
                ("account_info", (), {}),
                ("positions_get", (), {}),
                ("history_deals_get", (as_utc(deals_from), as_utc(deals_to)), {}),
            ]
        )
        with self._reply_of("account_info"):
            figures = account_from(account)
        if self._login is not None and figures.login != self._login:
            self._broken = True
            self._forget_session()
            raise TerminalLoginFailed(
                f"the terminal is logged in to account {figures.login}, not {self._login}",
                call="account_info",
            )
        with self._reply_of("positions_get"):
            open_positions = [position_from(r) for r in positions]
        with self._reply_of("history_deals_get"):
            recent_deals = [deal_from(r) for r in deals]
        return AccountState(account=figures, positions=open_positions, deals=recent_deals)

    # -- trading

    def check_order(self, request: Mapping[str, Any]) -> tuple[int, str]:
        """order_check: (retcode, comment). retcode 0 means the check passed (unlike order_send)."""
        result = self._call("order_check", _plain_request(request))
        with self._reply_of("order_check"):
            return int(result["retcode"]), str(result["comment"])

    def send_order(self, request: Mapping[str, Any]) -> OrderResult:
        """order_send. Every retcode is returned (requote, reject, ...: the caller decides). Raises
        OrderOutcomeUnknown when there was no answer: look for the order before sending it again."""
        reply = self._call("order_send", _plain_request(request))
        with self._reply_of("order_send"):
            return order_result_from(reply)

    @staticmethod
    def market_order_request(
        *,
        symbol: str,
        side: str,
        volume: Decimal | float | str,
        price: Decimal | float | str,
        sl: Decimal | float | str | None,
        tp: Decimal | float | str | None,
        deviation_points: int,
        magic: int,
        comment: str,
        position: int | None = None,
        filling: int | None = None,
    ) -> dict[str, Any]:
        """The official request dict for a market order (TRADE_ACTION_DEAL), plain floats and ints only.

        `position` closes (part of) that position: give the opposite side. `filling` defaults to
        ORDER_FILLING_IOC, which every market-execution symbol accepts (FOK is not universal); a partial
        fill then comes back as TRADE_RETCODE_DONE_PARTIAL with the filled volume.
        """
        if side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', not {side!r}")
        if len(comment) > MAX_COMMENT_LENGTH:
            raise ValueError(f"comment longer than {MAX_COMMENT_LENGTH} characters would be truncated by MT5")
        request: dict[str, Any] = {
            "action": mt5c.TRADE_ACTION_DEAL,
            "symbol": str(symbol),
            "volume": float(volume),
            "type": mt5c.ORDER_TYPE_BUY if side == "buy" else mt5c.ORDER_TYPE_SELL,
            "price": float(price),
            "sl": float(sl) if sl is not None else 0.0,
            "tp": float(tp) if tp is not None else 0.0,
            "deviation": int(deviation_points),
            "magic": int(magic),
            "comment": str(comment),
            "type_time": mt5c.ORDER_TIME_GTC,
            "type_filling": int(filling) if filling is not None else mt5c.ORDER_FILLING_IOC,
        }
        if position is not None:
            request["position"] = int(position)
        return request

    # -- the one way to the terminal

    @contextmanager
    def _reply_of(self, call: str) -> Iterator[None]:
        """Turn what converting `call`'s reply can raise (a field missing, of the wrong type, a number or
        time out of range) into TerminalProtocolError, or OrderOutcomeUnknown for an order call: a reply
        to order_send that cannot be read may still stand for a placed order. Either way the connection
        is not trusted again (never given back to a pool)."""
        try:
            yield
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError, OSError) as exc:
            self._broken = True
            self._forget_session()
            message = f"{call}: the terminal's reply is malformed ({type(exc).__name__}: {str(exc)[:200]})"
            if call in ORDER_CALLS:
                raise OrderOutcomeUnknown(message, call=call) from exc
            raise TerminalProtocolError(message, call=call) from exc

    def _forget_session(self) -> None:
        if isinstance(self._backend, RpycBackend):
            self._backend.initialized = False
            self._backend.logged_in_as = None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call `name` on the module with the per-call timeout; return plain data or raise."""
        return self._call_many([(name, args, kwargs)])[0]

    def _call_many(self, calls: list[Call], *, checked: bool = True) -> list[Any]:
        """Make `calls` in order, in one round trip to an RPyC terminal; return their plain results, or
        raise for the first that failed (nothing after it was called). Unchecked (`control`), results
        are returned as they are, None and False included."""
        if self._closed:
            raise TerminalUnavailable(f"{calls[0][0]}: the gateway is closed", call=calls[0][0])
        login = self._pending_login or self._relogin
        if login is not None:
            calls = [login, *calls]
        names = [name for name, _, _ in calls]
        # After an order call, any failure to get an answer may hide an order that was in fact placed.
        name = next((n for n in names if n in ORDER_CALLS), names[-1])
        backend = self._backend
        # The timeout is per call: a run of n calls may take n times as long.
        timeout = self.timeout * len(calls)
        if isinstance(backend, RpycBackend):
            backend.conn._config["sync_request_timeout"] = timeout
        answered = False
        try:
            answers = _guarded(name, lambda: backend.call_many(calls), self._executor, timeout)
            answered = True
            results = _checked_run(calls, answers) if checked else _unchecked_run(calls, answers)
        except TerminalError as exc:
            # Whatever failed (the connection, the login, the terminal's own session), the next user of
            # this connection starts its session afresh with initialize().
            self._forget_session()
            if not answered or isinstance(
                exc, TerminalTimeout | TerminalUnavailable | OrderOutcomeUnknown | TerminalProtocolError
            ):
                # No well-formed answer: nobody may trust what this connection (or its session) is in,
                # so it is never given back to the pool.
                self._broken = True
            if isinstance(exc, TerminalUnavailable) and self._pool is not None:
                # The terminal went away: its other idle connections are most likely dead too, and each
                # would cost one failed sync to find out.
                assert isinstance(backend, RpycBackend)
                self._pool.discard(backend.key)
            raise
        if login is not None:
            self._pending_login = None
            results.pop(0)
            if isinstance(backend, RpycBackend):
                backend.initialized = True
                backend.logged_in_as = self._session_key
        return results


def _skipped(calls: list[Call], answers: list[tuple[Any, Any]]) -> TerminalError | None:
    """The error for a run the terminal answered short without a failed call to explain it (a bridge bug,
    or a terminal not to be trusted): OrderOutcomeUnknown if an order call is among the skipped calls,
    since it may have run all the same."""
    if len(answers) >= len(calls):
        return None
    skipped = [name for name, _, _ in calls[len(answers) :]]
    order = next((n for n in skipped if n in ORDER_CALLS), None)
    error = OrderOutcomeUnknown if order else TerminalProtocolError
    return error(f"{skipped[0]}: the terminal skipped this call", call=order or skipped[0])


def _checked_run(calls: list[Call], answers: list[tuple[Any, Any]]) -> list[Any]:
    """Each call's plain result, or the exception of the first that failed. Should an order call have
    run after a call that failed (the terminal's side of the run stops at a failure; one that does not
    is misbehaving), the order's fate is OrderOutcomeUnknown, whatever the first failure was."""
    results = []
    for index, ((call_name, _, _), (result, error)) in enumerate(zip(calls, answers, strict=False)):
        try:
            results.append(_checked(call_name, result, error))
        except TerminalError as exc:
            ran = [n for n, _, _ in calls[index + 1 : len(answers)] if n in ORDER_CALLS]
            if ran:
                raise OrderOutcomeUnknown(
                    f"{ran[0]} ran after {call_name} failed ({exc}): look for the order", call=ran[0]
                ) from exc
            raise
    skipped = _skipped(calls, answers)
    if skipped is not None:
        raise skipped
    return results


def _unchecked_run(calls: list[Call], answers: list[tuple[Any, Any]]) -> list[Any]:
    skipped = _skipped(calls, answers)
    if skipped is not None:
        raise skipped
    return [result for result, _ in answers]


def _checked(name: str, result: Any, error: Any) -> Any:
    """One call's plain result, or the exception its None/False + last_error() stands for."""
    if result is None and name in _VOID_CALLS:
        return None
    if result is None or result is False:
        code, message = (error or (None, None))[:2]
        if code == mt5c.RES_S_OK and name in _LIST_CALLS:
            # Some builds answer "nothing found" with None and last_error (1, "Success").
            return []
        raise classify(name, code, message)
    return result


def _guarded(name: str, fn: Callable[[], T], executor: ThreadPoolExecutor | None, timeout: float) -> T:
    """Run `fn`, waiting at most `timeout` seconds: on the executor's thread when there is one (the
    package's blocking C calls), else right here (RPyC bounds its own waits). Maps what can go wrong on
    the way to the terminal onto TerminalTimeout / TerminalUnavailable (OrderOutcomeUnknown for order
    calls, where a lost answer may hide a placed order)."""

    def fail(error: type[TerminalError], message: str) -> TerminalError:
        return (OrderOutcomeUnknown if name in ORDER_CALLS else error)(message, call=name)

    try:
        if executor is None:
            return fn()
        try:
            future = executor.submit(fn)
        except RuntimeError as exc:  # the executor was shut down: the gateway is closed
            raise TerminalUnavailable(f"{name}: the gateway is closed", call=name) from exc
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            # A call still running keeps the worker thread busy; the calls queued behind it time out too.
            future.cancel()
            raise
    except TimeoutError as exc:
        # Our wait or RPyC's sync_request_timeout (both are the builtin TimeoutError).
        raise fail(TerminalTimeout, f"{name}: no answer from the terminal within {timeout:g} s") from exc
    except (EOFError, OSError) as exc:
        # EOFError: RPyC's "connection closed"; OSError covers ConnectionError and socket errors.
        raise fail(TerminalUnavailable, f"{name}: connection to the terminal failed: {exc!r}") from exc
    except TerminalProtocolError as exc:
        # A malformed answer to an order call is no answer: the order may still have been placed.
        if name in ORDER_CALLS:
            raise OrderOutcomeUnknown(f"{name}: {exc}", call=name) from exc
        exc.call = exc.call or name
        raise
    except TerminalError:
        raise
    except RemoteError as exc:
        raise fail(TerminalProtocolError, f"{name}: the terminal's Python raised {exc}") from exc
    except Exception as exc:
        # The module raised instead of returning None (a bug in the terminal bridge, a refused argument).
        raise fail(TerminalError, f"{name} raised {exc!r}") from exc


def _credentials(login: int, password: str, server: str, timeout: float) -> dict[str, Any]:
    """The keyword arguments of initialize() and login(), whose timeout is in milliseconds."""
    return {
        "login": int(login),
        "password": str(password),
        "server": str(server),
        "timeout": int(timeout * 1000),
    }


def fill_pool(
    pool: ConnectionPool, terminal_url: str, *, declared: frozenset[str], count: int, timeout: float = 10.0
) -> int:
    """Have `count` idle connections to the terminal `terminal_url` ready in `pool` (`ConnectionPool.fill`);
    how many were made. Only a declared terminal (TerminalNotDeclared otherwise, before anything is
    sent); an in-process terminal has nothing to pool (0). Each connect waits at most `timeout`
    (TerminalUnavailable / TerminalTimeout)."""
    key, connect, _ = connector(require_declared(terminal_url, declared), timeout)
    if key is None:
        return 0

    def rpyc_connect() -> RpycBackend:
        backend = _connect_within(connect, timeout)
        assert isinstance(backend, RpycBackend)
        return backend

    return pool.fill(key, count, rpyc_connect)


def _connect_within(connect: Callable[[], Backend], timeout: float) -> Backend:
    """Connect on a thread of its own, waiting at most `timeout`: RPyC's handshake runs under its own
    30-second default before a connection can be given a shorter one."""
    executor = _executor()
    try:
        return _guarded("connect", connect, executor, timeout)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _executor() -> ThreadPoolExecutor:
    # One thread: the MetaTrader5 package is not thread-safe, and the simulator's MetaTrader5 stand-in
    # keeps one terminal per thread, so a session must always be driven from the same thread.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt5-gateway")


def _plain_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `request` with only plain Python values: Decimals and numpy numbers would be refused
    by the real package (or reach it as proxies over RPyC)."""
    plain: dict[str, Any] = {}
    for key, value in request.items():
        if isinstance(value, bool) or value is None or isinstance(value, str | int | float):
            plain[str(key)] = value
        elif isinstance(value, Decimal):
            plain[str(key)] = float(value)
        elif hasattr(value, "item"):
            plain[str(key)] = value.item()
        else:
            raise TypeError(f"request field {key!r} has unsupported type {type(value).__name__}")
    return plain
