"""`Gateway`: the only code that calls an MT5 terminal.

It drives any object that behaves like the official `MetaTrader5` module — the package itself
(`mt5://`), the package in a remote Python over RPyC classic (`mt5linux://host:port`, the mt5linux
approach), or TradeGuard's simulated terminal (`sim://` in-process, `sim://host:port` for the `terminal`
process, which speaks the same RPyC protocol) — and hands the rest of the code frozen dataclasses:
Decimal for prices, volumes and money, UTC-aware datetimes, sides as "buy"/"sell".

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

import functools
import hashlib
import importlib
import json
import logging
import os
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from rpyc.core import consts as rpyc_consts
from rpyc.core.channel import Channel
from rpyc.core.protocol import Connection as RpycConnection
from rpyc.core.service import VoidService
from rpyc.core.stream import SocketStream
from rpyc.utils.factory import connect_channel

from shared.mt5 import constants as mt5c
from shared.mt5.errors import (
    ORDER_CALLS,
    OrderOutcomeUnknown,
    PermanentTerminalError,
    TerminalError,
    TerminalLoginFailed,
    TerminalNotSupported,
    TerminalProtocolError,
    TerminalTimeout,
    TerminalUnavailable,
    classify,
)
from shared.mt5.terminals import canonical_terminal_url, require_declared

log = logging.getLogger(__name__)

MAX_COMMENT_LENGTH = 31  # MT5 silently truncates longer comments, which would break matching by comment

T = TypeVar("T")


# --- the dataclasses handed to the rest of the code -----------------------------------------------


@dataclass(frozen=True)
class AccountSnapshot:
    login: int
    server: str
    currency: str
    balance: Decimal
    equity: Decimal
    margin: Decimal
    margin_free: Decimal
    margin_level: Decimal | None  # percent; None when no margin is used (MT5 reports 0, not infinity)
    leverage: int
    profit: Decimal


@dataclass(frozen=True)
class SymbolSpec:
    name: str
    digits: int
    point: Decimal
    contract_size: Decimal
    tick_value: Decimal
    volume_min: Decimal
    volume_max: Decimal
    volume_step: Decimal
    stops_level_points: int
    trade_allowed: bool  # new positions may be opened (in at least one direction)

    @property
    def pip(self) -> Decimal:
        """10 points on 3- and 5-digit quotes (EURUSD 0.0001, USDJPY 0.01), else 1 point (a 2-digit
        XAUUSD quote: 0.01; a 4-digit EURUSD quote: 0.0001)."""
        return self.point * 10 if self.digits in (3, 5) else self.point


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    time: datetime

    @property
    def spread(self) -> Decimal:
        return self.ask - self.bid


@dataclass(frozen=True)
class Position:
    ticket: int
    identifier: int
    symbol: str
    side: str  # "buy" | "sell"
    volume: Decimal
    price_open: Decimal
    sl: Decimal | None
    tp: Decimal | None
    price_current: Decimal
    profit: Decimal
    swap: Decimal
    magic: int
    comment: str
    reason: int  # POSITION_REASON_*: 0 client (by hand), 1 mobile, 2 web, 3 expert (an API like ours)
    opened_at: datetime


@dataclass(frozen=True)
class Deal:
    ticket: int
    order: int
    position_id: int
    symbol: str
    side: str  # "buy" | "sell" for trades; "balance", "credit", ... for the account's other deals
    entry: int  # DEAL_ENTRY_*: 0 in, 1 out, 2 in/out (reversal), 3 out by
    volume: Decimal
    price: Decimal
    profit: Decimal
    commission: Decimal
    swap: Decimal
    magic: int
    comment: str
    reason: int  # DEAL_REASON_*: 0 client, 3 expert, 4 SL, 5 TP, 6 stop-out, ...
    time: datetime


@dataclass(frozen=True)
class AccountState:
    """One read of an account: its figures, open positions, and recent deals (`Gateway.read_account`)."""

    account: AccountSnapshot
    positions: list[Position]
    deals: list[Deal]


@dataclass(frozen=True)
class OrderResult:
    retcode: int
    deal: int
    order: int
    volume: Decimal
    price: Decimal
    bid: Decimal
    ask: Decimal
    comment: str
    request_id: int

    @property
    def done(self) -> bool:
        return self.retcode in (mt5c.TRADE_RETCODE_DONE, mt5c.TRADE_RETCODE_DONE_PARTIAL)


_DEAL_SIDES = {
    0: "buy",
    1: "sell",
    2: "balance",
    3: "credit",
    4: "charge",
    5: "correction",
    6: "bonus",
    7: "commission",
}


# Longer number text than any price, volume or amount has is not a number of the terminal's: refused
# before it is parsed or cached (the cache would keep it for the life of the worker).
_MAX_NUMBER_TEXT = 40


@functools.lru_cache(maxsize=65536, typed=True)
def _decimal_of(value: float | int | str) -> Decimal:
    # str() of a float is its shortest round-trip form, so 1.085 becomes Decimal("1.085") rather than
    # 1.08499999999999996447286321199499070644378662109375.
    number = Decimal(str(value))
    if not number.is_finite():
        # NaN or infinity is no price, volume or amount: a terminal bug, never something to book.
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _dec(value: Any) -> Decimal:
    # Cached: a sync converts ~150 numbers, most of them repeats (volumes, zero SL/TP and swap, one
    # current price per symbol), and a Decimal is immutable, so sharing one is safe. `value` is a float
    # (a terminal in this process) or the text of one (an RPyC terminal's JSON: see decode_answers).
    # ValueError / TypeError for anything else (Gateway._reply_of makes it a TerminalProtocolError).
    if value is None:
        return Decimal(0)
    kind = type(value)
    if kind is str:
        if len(value) > _MAX_NUMBER_TEXT:
            raise ValueError(f"a number of {len(value)} characters")
    elif kind is int:
        if not -(10**_MAX_NUMBER_TEXT) < value < 10**_MAX_NUMBER_TEXT:
            raise ValueError("an integer out of range")
    elif kind is not float:
        raise TypeError(f"a {kind.__name__} where a number belongs")
    return _decimal_of(value)


def _price_or_none(value: Any) -> Decimal | None:
    # MT5 uses 0.0 for "no SL/TP" (a float here, or its text from an RPyC terminal's JSON).
    price = _dec(value)
    return price if price else None


def _time(seconds: Any, msc: Any = None) -> datetime:
    if msc:
        return datetime.fromtimestamp(int(msc) / 1000, tz=UTC)
    return datetime.fromtimestamp(int(seconds or 0), tz=UTC)


def _side(order_type: int) -> str:
    return "buy" if order_type == mt5c.ORDER_TYPE_BUY else "sell"


def account_from(d: Mapping[str, Any]) -> AccountSnapshot:
    margin = _dec(d["margin"])
    return AccountSnapshot(
        login=int(d["login"]),
        server=str(d["server"]),
        currency=str(d["currency"]),
        balance=_dec(d["balance"]),
        equity=_dec(d["equity"]),
        margin=margin,
        margin_free=_dec(d["margin_free"]),
        margin_level=_dec(d["margin_level"]) if margin else None,
        leverage=int(d["leverage"]),
        profit=_dec(d["profit"]),
    )


def symbol_from(d: Mapping[str, Any]) -> SymbolSpec:
    trade_mode = d.get("trade_mode", mt5c.SYMBOL_TRADE_MODE_FULL)
    return SymbolSpec(
        name=str(d["name"]),
        digits=int(d["digits"]),
        point=_dec(d["point"]),
        contract_size=_dec(d["trade_contract_size"]),
        tick_value=_dec(d["trade_tick_value"]),
        volume_min=_dec(d["volume_min"]),
        volume_max=_dec(d["volume_max"]),
        volume_step=_dec(d["volume_step"]),
        stops_level_points=int(d.get("trade_stops_level", 0)),
        trade_allowed=trade_mode
        in (mt5c.SYMBOL_TRADE_MODE_FULL, mt5c.SYMBOL_TRADE_MODE_LONGONLY, mt5c.SYMBOL_TRADE_MODE_SHORTONLY),
    )


def quote_from(symbol: str, d: Mapping[str, Any]) -> Quote:
    return Quote(
        symbol=symbol, bid=_dec(d["bid"]), ask=_dec(d["ask"]), time=_time(d["time"], d.get("time_msc"))
    )


def position_from(d: Mapping[str, Any]) -> Position:
    return Position(
        ticket=int(d["ticket"]),
        identifier=int(d["identifier"]),
        symbol=str(d["symbol"]),
        side=_side(int(d["type"])),
        volume=_dec(d["volume"]),
        price_open=_dec(d["price_open"]),
        sl=_price_or_none(d["sl"]),
        tp=_price_or_none(d["tp"]),
        price_current=_dec(d["price_current"]),
        profit=_dec(d["profit"]),
        swap=_dec(d["swap"]),
        magic=int(d["magic"]),
        comment=str(d["comment"]),
        reason=int(d["reason"]),
        opened_at=_time(d["time"], d.get("time_msc")),
    )


def deal_from(d: Mapping[str, Any]) -> Deal:
    deal_type = int(d["type"])
    return Deal(
        ticket=int(d["ticket"]),
        order=int(d["order"]),
        position_id=int(d["position_id"]),
        symbol=str(d["symbol"]),
        side=_DEAL_SIDES.get(deal_type, f"type_{deal_type}"),
        entry=int(d["entry"]),
        volume=_dec(d["volume"]),
        price=_dec(d["price"]),
        profit=_dec(d["profit"]),
        commission=_dec(d["commission"]),
        swap=_dec(d["swap"]),
        magic=int(d["magic"]),
        comment=str(d["comment"]),
        reason=int(d["reason"]),
        time=_time(d["time"], d.get("time_msc")),
    )


def order_result_from(d: Mapping[str, Any]) -> OrderResult:
    return OrderResult(
        retcode=int(d["retcode"]),
        deal=int(d["deal"]),
        order=int(d["order"]),
        volume=_dec(d["volume"]),
        price=_dec(d["price"]),
        bid=_dec(d["bid"]),
        ask=_dec(d["ask"]),
        comment=str(d["comment"]),
        request_id=int(d["request_id"]),
    )


# --- backends: how a call reaches the module --------------------------------------------------------


# The one definition of "plain data": named tuples -> dicts, tuples -> lists, numpy scalars -> Python
# numbers, recursively. It runs in two places, so it lives as source: exec'd below to define `to_plain`
# here (for _LocalBackend), and sent ahead of _REMOTE_HELPER so the remote Python converts there too.
# Kept to Python 3.8 syntax: the remote Python is whatever runs under Wine.
_PLAIN_SOURCE = """
_TRADEGUARD_SCALARS = frozenset([int, float, str, bool, bytes, type(None)])


def _tradeguard_plain(value):
    if type(value) in _TRADEGUARD_SCALARS:
        return value
    if hasattr(value, "_fields"):
        # The common case, a struct of numbers and strings, without a call per field.
        return dict(
            (k, v if type(v) in _TRADEGUARD_SCALARS else _tradeguard_plain(v))
            for k, v in zip(value._fields, value)
        )
    if isinstance(value, (tuple, list)):
        return [_tradeguard_plain(v) for v in value]
    if isinstance(value, dict):
        return dict((k, _tradeguard_plain(v)) for k, v in value.items())
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    return value
"""
# One call with the session's bookkeeping, run here (_LocalBackend) and in the terminal's Python
# (_REMOTE_HELPER) alike. On a terminal whose one session all its clients share, each run of calls starts
# with _tradeguard_ensure_login, under the terminal's lock, so the run is made on its gateway's account,
# logging in again only when the session was opened with other credentials. Kept to Python 3.8 syntax,
# like the above.
_SESSION_SOURCE = """
_TRADEGUARD_LOGIN_CALLS = ("initialize", "login", "_tradeguard_ensure_login")


def _tradeguard_session_key(credentials):
    import hashlib

    text = repr((credentials.get("login"), credentials.get("server"), credentials.get("password")))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tradeguard_ensure_login(mt5, credentials):
    # Log in unless the session is on this account already, logged in with these very credentials. The
    # login and server alone are not enough: another account row naming the same login (with any
    # password) must never ride on a session its owner opened.
    info = mt5.account_info()
    if (
        info is not None
        and info.login == credentials["login"]
        and info.server == credentials["server"]
        and getattr(mt5, "_tradeguard_session", None) == _tradeguard_session_key(credentials)
    ):
        return True
    return mt5.login(**credentials)


def _tradeguard_call(mt5, name, args, kwargs):
    if name == "_tradeguard_ensure_login":
        result = _tradeguard_ensure_login(mt5, kwargs)
    else:
        result = getattr(mt5, name)(*args, **kwargs)
    # last_error() is asked right away, before anything else can overwrite it.
    error = tuple(mt5.last_error()) if result is None or result is False else None
    if name in _TRADEGUARD_LOGIN_CALLS and kwargs:
        # What the session is now logged in with: nothing known after a failed login.
        mt5._tradeguard_session = _tradeguard_session_key(kwargs) if error is None else None
    return result, error


def _tradeguard_stops(name, error):
    # A run ends at the first call that failed: with an error code other than "success", and a login
    # whatever its code, so that no call of the run is ever made on whatever account the session is on.
    return error is not None and (error[0] != 1 or name in _TRADEGUARD_LOGIN_CALLS)
"""
ENSURE_LOGIN = "_tradeguard_ensure_login"

_plain_namespace: dict[str, Any] = {}
exec(_PLAIN_SOURCE + _SESSION_SOURCE, _plain_namespace)  # noqa: S102 - our own constant source
to_plain: Callable[[Any], Any] = _plain_namespace["_tradeguard_plain"]
_session_call: Callable[[Any, str, tuple[Any, ...], dict[str, Any]], tuple[Any, Any]] = _plain_namespace[
    "_tradeguard_call"
]
_stops_run: Callable[[str, Any], bool] = _plain_namespace["_tradeguard_stops"]


Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # (function name, args, kwargs)


class _Backend(Protocol):
    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """(plain result, last_error() when the result is None or False, else None)."""

    def call_many(self, calls: list[Call]) -> list[tuple[Any, Any]]:
        """The answers of `calls` made in order, up to and including the first that failed."""

    def close(self) -> None: ...


class _LocalBackend:
    """A module-like object in this process: the MetaTrader5 package, or a SimTerminal."""

    def __init__(self, module: Any):
        self.module = module

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        result, error = _session_call(self.module, name, args, kwargs)
        return to_plain(result), error

    def call_many(self, calls: list[Call]) -> list[tuple[Any, Any]]:
        answers = []
        with _module_lock(self.module):  # as _tradeguard_calls does remotely
            for name, args, kwargs in calls:
                answers.append(self.call(name, args, kwargs))
                if _stops_run(name, answers[-1][1]):
                    break
        return answers

    def close(self) -> None:
        pass


_module_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_module_locks_guard = threading.Lock()


def _module_lock(module: Any) -> threading.Lock:
    """One lock per module-like object: the MetaTrader5 package (one session per process) gets one lock
    for the process; each in-process SimTerminal, whose session is its own, gets its own."""
    with _module_locks_guard:
        lock = _module_locks.get(module)
        if lock is None:
            lock = _module_locks[module] = threading.Lock()
        return lock


# Defined in the remote Python's namespace once per connection, so that a run of terminal calls is one
# round trip which also converts the results to plain data *there* and sends them back as JSON text.
# Converting remotely matters for the real package under Wine: its named tuples are classes of the
# MetaTrader5 module, which do not exist on a Linux worker, and its numbers may be numpy scalars.
#
# JSON, in both directions, and never pickle: the terminal is another process, possibly another machine,
# and what it sends is data to check, not code to run. Unpickling its answer would let whoever runs
# (or impersonates) the terminal execute anything in the worker, which holds every account's broker
# password. A string travels by value over RPyC, so the answer needs no second round trip either.
#
# The run stops at the first call that fails (_tradeguard_stops: any failed login), so a failed login is
# never followed by calls on whatever account the terminal was on; and it runs under a lock of the
# terminal process, so a login and the calls after it are never split by another client's login. Kept
# to Python 3.8 syntax, like _PLAIN_SOURCE.
_DATETIME_KEY = "$tradeguard_datetime"  # a datetime argument, as seconds since the epoch (UTC)
_REMOTE_HELPER = (
    _PLAIN_SOURCE
    + _SESSION_SOURCE
    + """
def _tradeguard_compact(value):
    # A list of structs (positions, deals) as its field names once and a row of values per struct:
    # half the text of a dict per struct, and under half the time to write it.
    if isinstance(value, (tuple, list)) and value and hasattr(value[0], "_fields"):
        scalars = _TRADEGUARD_SCALARS
        rows = [[v if type(v) in scalars else _tradeguard_plain(v) for v in row] for row in value]
        return {"$columns": list(value[0]._fields), "$rows": rows}
    return _tradeguard_plain(value)


def _tradeguard_calls(payload):
    import datetime as _datetime
    import json as _json
    import threading as _threading

    def decode(obj):
        if len(obj) == 1 and "$tradeguard_datetime" in obj:
            return _datetime.datetime.fromtimestamp(obj["$tradeguard_datetime"], _datetime.timezone.utc)
        return obj

    # One run at a time per terminal process: the real package has one session per process, so another
    # connection's login between our login and our calls would switch the account under us. A terminal
    # whose sessions are per thread (TradeGuard's simulated one says so) needs no such lock.
    if mt5.__dict__.get("SESSION_PER_THREAD"):
        import contextlib as _contextlib

        lock = _contextlib.nullcontext()
    else:
        lock = mt5.__dict__.setdefault("_tradeguard_lock", _threading.Lock())
    answers = []
    with lock:
        for name, args, kwargs in _json.loads(payload, object_hook=decode):
            result, error = _tradeguard_call(mt5, name, args, kwargs)
            answers.append((_tradeguard_compact(result), error))
            if _tradeguard_stops(name, error):
                break
    return _json.dumps(answers)
"""
)


def _json_argument(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_DATETIME_KEY: _utc(value).timestamp()}
    raise TypeError(f"a terminal call argument of type {type(value).__name__} cannot be sent")


def encode_calls(calls: list[Call]) -> str:
    """A run of calls as the JSON text `_tradeguard_calls` reads."""
    return json.dumps([[name, list(args), kwargs] for name, args, kwargs in calls], default=_json_argument)


# Fractions are kept as their text: every one becomes a Decimal of that text (`_dec`), which is what
# Decimal(str(float)) made of it before, without parsing it into a float first (a third of the decoding
# time of an account's positions and deals, measured).
# NaN and Infinity (which Python's json writes) are kept as text too, and refused by _dec where a number
# is needed: other fields may carry them harmlessly.
_ANSWER_DECODER = json.JSONDecoder(parse_float=str, parse_constant=str)


def decode_answers(reply: Any, calls: int) -> list[tuple[Any, Any]]:
    """The answers of a run of `calls` calls, from the terminal's reply: JSON text holding, per call made,
    `[result, error]` where error is null or `[code, message]`; fractions come back as their text.
    Anything else raises
    TerminalProtocolError. Only str is accepted (`type(...) is`, not isinstance: an RPyC proxy of a
    remote object would pass isinstance checks and run remote code when used)."""
    if type(reply) is not str:
        raise TerminalProtocolError(
            f"the terminal answered with a {type(reply).__name__[:60]} instead of JSON text"
        )
    try:
        answers = _ANSWER_DECODER.decode(reply)
    except (ValueError, RecursionError) as exc:
        raise TerminalProtocolError(f"the terminal's answer is not JSON: {str(exc)[:200]}") from None
    if type(answers) is not list or len(answers) > calls:
        raise TerminalProtocolError("the terminal's answer is not a list of one answer per call")
    decoded: list[tuple[Any, Any]] = []
    for answer in answers:
        if type(answer) is not list or len(answer) != 2:
            raise TerminalProtocolError("an answer of the terminal is not a [result, error] pair")
        result, error = answer
        if type(result) is dict and "$rows" in result:
            result = _expand_rows(result)
        if error is not None:
            if (
                type(error) is not list
                or len(error) < 2
                or type(error[0]) is not int
                or type(error[1]) is not str
            ):
                raise TerminalProtocolError("an error of the terminal is not a [code, message] pair")
            error = (error[0], error[1])
        decoded.append((result, error))
    return decoded


def _expand_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """A list of structs sent as `{"$columns": [...], "$rows": [[...], ...]}` (_tradeguard_compact), as
    the list of dicts the converters read."""
    columns, rows = table.get("$columns"), table.get("$rows")
    if (
        len(table) != 2
        or type(columns) is not list
        or type(rows) is not list
        or not all(type(name) is str for name in columns)
    ):
        raise TerminalProtocolError("a list of the terminal is not {$columns: [names], $rows: [rows]}")
    width = len(columns)
    if not all(type(row) is list and len(row) == width for row in rows):
        raise TerminalProtocolError(f"a row of the terminal's list does not have its {width} columns")
    return [dict(zip(columns, row, strict=True)) for row in rows]


class RemoteError(Exception):
    """An exception raised in the terminal's Python, reduced to text.

    RPyC would rebuild a remote exception as an instance of whatever class the remote names, with the
    remote's attributes set on it; here it is only ever this class, holding the remote type's name and
    message as strings."""

    def __init__(self, remote_type: str, message: str):
        super().__init__(f"{remote_type}: {message}" if message else remote_type)
        self.remote_type = remote_type

    @classmethod
    def from_rpyc(cls, raw: Any) -> RemoteError:
        try:
            (module, name), args, _attributes, _traceback = raw
            remote_type = f"{module}.{name}" if type(module) is str and type(name) is str else "?"
            message = " ".join(str(a) for a in args if type(a) in (str, int, float))
        except (TypeError, ValueError):
            return cls("?", "an exception the terminal could not describe")
        return cls(remote_type[:200], message[:500])


_IMPORT_ERRORS = frozenset({"builtins.ImportError", "builtins.ModuleNotFoundError"})


class _ServesNothing(RpycConnection):
    """Our end of an RPyC connection to a terminal.

    The terminal's side evaluates our fixed calls (it is an RPyC classic server, as mt5linux's is); our
    side answers none of its requests but ping and close. RPyC is symmetric: with the classic service on
    our side too (what `rpyc.classic.connect` does), the terminal could import modules, read attributes
    and call functions in the worker during any of our calls. Here every other request is refused before
    its arguments are even decoded, and exceptions the terminal sends are reduced to text
    (`RemoteError`) instead of being rebuilt as the classes it names."""

    _ALLOWED_REQUESTS = frozenset({rpyc_consts.HANDLE_PING, rpyc_consts.HANDLE_CLOSE})

    def _dispatch_request(self, seq: int, raw_args: Any) -> None:
        handler = raw_args[0] if type(raw_args) is tuple and raw_args else None
        if handler not in self._ALLOWED_REQUESTS:
            refusal = PermissionError("this TradeGuard worker serves no requests over a terminal connection")
            self._send(rpyc_consts.MSG_EXCEPTION, seq, self._box_exc(PermissionError, refusal, None))
            return
        super()._dispatch_request(seq, raw_args)

    def _unbox_exc(self, raw: Any) -> RemoteError:
        return RemoteError.from_rpyc(raw)


class _NoService(VoidService):
    """Exposes nothing (and `_ServesNothing` would refuse to look anyway)."""

    _protocol = _ServesNothing


# The most one message from a terminal may be, compressed or not: a year of an account's deals is a few
# MB. Anything longer is refused before it is read, so a terminal cannot make a worker allocate
# gigabytes (RPyC's own framing takes up to 4 GiB, and decompresses without a limit).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _BoundedChannel(Channel):
    """RPyC's framing, with what one message may cost bounded: its length (MAX_MESSAGE_BYTES, also once
    decompressed) and the time to receive it once it has begun (`read_seconds`). RPyC's socket read
    retries a timed-out recv for ever, so a terminal that sent a frame header and then stopped, or
    trickled a byte now and then, would hold the reading thread (a sync thread, an order task) for good.
    Either way the connection is closed (EOFError: the terminal is unavailable)."""

    __slots__ = ["read_seconds"]

    def __init__(self, stream: SocketStream, read_seconds: float):
        # Nothing we send is big enough to be worth compressing.
        super().__init__(stream, compress=False)
        self.read_seconds = read_seconds

    def recv(self) -> bytes:
        deadline = time.monotonic() + self.read_seconds
        length, compressed = self.FRAME_HEADER.unpack(self._read(self.FRAME_HEADER.size, deadline))
        if length > MAX_MESSAGE_BYTES:
            self.stream.close()
            raise EOFError(f"the terminal announced {length} bytes, more than a message may be")
        data = self._read(length + len(self.FLUSHER), deadline)[: -len(self.FLUSHER)]
        if compressed:
            inflate = zlib.decompressobj()
            data = inflate.decompress(data, MAX_MESSAGE_BYTES)
            if inflate.unconsumed_tail:
                self.stream.close()
                raise EOFError(f"the terminal's message expands past {MAX_MESSAGE_BYTES} bytes")
        return data

    def _read(self, count: int, deadline: float) -> bytes:
        stream = self.stream
        chunks = []
        while count > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not stream.poll(left):
                stream.close()
                raise EOFError(f"the terminal did not finish its message within {self.read_seconds:g} s")
            try:
                chunk = stream.sock.recv(min(stream.MAX_IO_CHUNK, count))
            except OSError as exc:
                stream.close()
                raise EOFError(exc) from exc
            if not chunk:
                stream.close()
                raise EOFError("connection closed by the terminal")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)


# Our side's settings: nothing of ours is reachable, pickled or rebuilt from the remote's names; and a
# close the terminal answers with an error still closes (it must never raise out of Gateway.close).
_CLIENT_CONFIG = {
    "close_catchall": True,
    "allow_safe_attrs": False,
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_getattr": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "include_local_version": False,
}


class _RpycBackend:
    """The module in another Python, reached over RPyC: an RPyC classic server runs our fixed calls
    there (exactly as mt5linux reaches the package under Wine), and nothing can run here."""

    def __init__(self, host: str, port: int, timeout: float):
        self.key = (host, port)
        # What the terminal session behind this connection is logged in to, for a pooled connection's
        # next user: it logs in again only when it needs another account.
        self.initialized = False
        self.logged_in_as: SessionKey | None = None
        # sync_request_timeout bounds every request's wait for an answer to begin, on this connection,
        # not just ours: an RPyC request that never gets an answer then frees the worker thread too. The
        # channel bounds the rest (see _BoundedChannel).
        stream = SocketStream.connect(host, port, ipv6=":" in host, timeout=timeout)
        self.conn = connect_channel(
            _BoundedChannel(stream, read_seconds=timeout),
            service=_NoService,
            config={**_CLIENT_CONFIG, "sync_request_timeout": timeout},
        )
        try:
            slave = self.conn.root
            try:
                slave.execute("import MetaTrader5 as mt5")
            except RemoteError as exc:
                if exc.remote_type not in _IMPORT_ERRORS:
                    raise
                raise TerminalNotSupported(
                    f"the Python at {host}:{port} has no MetaTrader5 package: install it there "
                    "(the mt5linux server must run the Windows Python that has it)",
                    call="import MetaTrader5",
                ) from exc
            slave.execute(_REMOTE_HELPER)
            self._helper = slave.eval("_tradeguard_calls")
        except BaseException:
            self.conn.close()
            raise

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return self.call_many([(name, args, kwargs)])[0]

    def call_many(self, calls: list[Call]) -> list[tuple[Any, Any]]:
        return decode_answers(self._helper(encode_calls(calls)), len(calls))

    def close(self) -> None:
        self.conn.close()


def _pool_after_fork(pool_ref: weakref.ref[ConnectionPool]) -> None:
    pool = pool_ref()
    if pool is not None:
        pool._after_fork()


class ConnectionPool:
    """Idle RPyC terminal connections of this process, per (host, port), for reuse.

    Connecting costs a TCP handshake, an RPyC handshake and defining the helper remotely: several round
    trips and, on a busy worker, most of a sync's CPU. A pooled connection keeps its terminal session;
    its next user logs in again only when it needs another account (`Gateway.open(pool=...)`).

    A pool belongs to one process. After a fork the child starts empty and never touches the parent's
    connections: not even to close them, which would send RPyC's close message down a shared socket.
    """

    def __init__(self, max_idle_per_terminal: int = 256):
        self.max_idle_per_terminal = max_idle_per_terminal
        self._idle: dict[tuple[str, int], list[_RpycBackend]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inherited: list[_RpycBackend] = []  # the parent's, kept referenced so they are never closed
        # A fork while another thread holds the lock would leave the child's copy locked for ever.
        os.register_at_fork(after_in_child=functools.partial(_pool_after_fork, weakref.ref(self)))

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._own()

    def _own(self) -> None:
        if self._pid != os.getpid():
            self._inherited.extend(c for idle in self._idle.values() for c in idle)
            self._idle = {}
            self._pid = os.getpid()

    def take(self, key: tuple[str, int]) -> _RpycBackend | None:
        with self._lock:
            self._own()
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, backend: _RpycBackend) -> None:
        with self._lock:
            self._own()
            idle = self._idle.setdefault(backend.key, [])
            if len(idle) < self.max_idle_per_terminal:
                idle.append(backend)
                return
        backend.close()

    def discard(self, key: tuple[str, int]) -> None:
        """Close the idle connections to one terminal (it was found dead)."""
        with self._lock:
            self._own()
            idle = self._idle.pop(key, [])
        for backend in idle:
            try:
                backend.close()
            except Exception as exc:  # closing a dead connection may fail; it is gone either way
                log.debug("closing a pooled terminal connection failed: %s", exc)

    def idle(self) -> int:
        with self._lock:
            self._own()
            return sum(len(idle) for idle in self._idle.values())

    def clear(self) -> None:
        """Close every idle connection (shutting a worker down, or in tests)."""
        with self._lock:
            self._own()
            idle, self._idle = self._idle, {}
        for backend in (c for connections in idle.values() for c in connections):
            try:
                backend.close()
            except Exception as exc:  # closing a dead connection may fail; it is gone either way
                log.debug("closing a pooled terminal connection failed: %s", exc)


# --- the gateway ---------------------------------------------------------------------------------


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
        backend: _Backend,
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
        key, connect, shared = _connector(require_declared(terminal_url, declared), timeout)
        if pool is not None and key is not None:
            credentials = _credentials(login, password, server, timeout)
            backend = pool.take(key) or _connect_within(connect, timeout)
            assert isinstance(backend, _RpycBackend)
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
        module: Any,
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
            _LocalBackend(module),
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
        backend: _Backend,
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
        if not isinstance(self._backend, _LocalBackend):
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
        if self._pool is not None and not self._broken and isinstance(self._backend, _RpycBackend):
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

    def positions(self, symbol: str | None = None) -> list[Position]:
        rows = self._call("positions_get", symbol=symbol) if symbol else self._call("positions_get")
        with self._reply_of("positions_get"):
            return [position_from(r) for r in rows]

    def position(self, ticket: int) -> Position | None:
        rows = self._call("positions_get", ticket=int(ticket))
        with self._reply_of("positions_get"):
            return position_from(rows[0]) if rows else None

    def deals(self, date_from: datetime, date_to: datetime) -> list[Deal]:
        rows = self._call("history_deals_get", _utc(date_from), _utc(date_to))
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
                ("history_deals_get", (_utc(deals_from), _utc(deals_to)), {}),
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
        if isinstance(self._backend, _RpycBackend):
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
        if isinstance(backend, _RpycBackend):
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
                assert isinstance(backend, _RpycBackend)
                self._pool.discard(backend.key)
            raise
        if login is not None:
            self._pending_login = None
            results.pop(0)
            if isinstance(backend, _RpycBackend):
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


SessionKey = tuple[int, str, str]  # (login, server, digest of the password)


def session_key(login: int, server: str, password: str) -> SessionKey:
    """What a pooled session is logged in to: the same login on another server, or with a changed
    password, is another session."""
    digest = hashlib.blake2b(str(password).encode(), digest_size=16).hexdigest()
    return (int(login), str(server), digest)


def _connect_within(connect: Callable[[], _Backend], timeout: float) -> _Backend:
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


def _connector(
    terminal_url: str, timeout: float
) -> tuple[tuple[str, int] | None, Callable[[], _Backend], bool]:
    """What connecting to `terminal_url` means, as a function to run under the connect timeout; the
    (host, port) that a pool keys the connection by (None: an in-process terminal, nothing to pool); and
    whether the terminal's session is shared by all its connections (the real package: one per
    process) rather than one per connection (TradeGuard's simulated terminal)."""
    parts = urlsplit(canonical_terminal_url(terminal_url))
    scheme, host, port = parts.scheme, parts.hostname, parts.port

    if scheme == "mt5":
        try:
            module = importlib.import_module("MetaTrader5")
        except ImportError as exc:
            raise TerminalNotSupported(
                "mt5:// needs the MetaTrader5 package, which is Windows-only and not installed here; "
                "use an mt5linux://host:port bridge instead",
                call="import MetaTrader5",
            ) from exc
        return None, lambda: _LocalBackend(module), True

    if scheme == "sim" and not host:

        def in_process() -> _Backend:
            from shared.mt5.sim import SimTerminal, default_broker

            return _LocalBackend(SimTerminal(default_broker()))

        return None, in_process, False

    # mt5linux://host:port or sim://host:port (the canonical form always has both).
    assert host is not None and port is not None
    return (host, port), lambda: _RpycBackend(host, port, timeout), scheme == "mt5linux"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    return moment.astimezone(UTC)


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


__all__ = [
    "AccountSnapshot",
    "AccountState",
    "ConnectionPool",
    "Deal",
    "Gateway",
    "OrderResult",
    "Position",
    "Quote",
    "SymbolSpec",
]
