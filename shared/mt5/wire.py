"""What travels between a worker and a terminal: the Python source defined in the terminal's interpreter
(plain data, the session's bookkeeping, a run of calls), and the JSON both sides write. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.mt5.errors import TerminalProtocolError

# The one definition of "plain data": named tuples -> dicts, tuples -> lists, numpy scalars -> Python
# numbers, numpy structured arrays (copy_ticks_*, copy_rates_*) -> a dict per row, recursively. An array
# cannot cross as itself: RPyC would send a proxy (every read a round trip), or pickle, which we never
# read (see below); its rows are plain numbers, read as any struct (the gateway asks for none today).
# It runs in two places, so it lives as source: exec'd below to define `to_plain`
# here (for LocalBackend), and sent ahead of _REMOTE_HELPER so the remote Python converts there too.
# Kept to Python 3.8 syntax: the remote Python is whatever runs under Wine.
_PLAIN_SOURCE = """
_TRADEGUARD_SCALARS = frozenset([int, float, str, bool, bytes, type(None)])


def _tradeguard_array_columns(value):
    # The column names of a numpy structured array (one dimension), else None; numpy is not imported.
    if type(value).__module__ != "numpy" or getattr(value, "ndim", None) != 1:
        return None
    return getattr(getattr(value, "dtype", None), "names", None)


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
    names = _tradeguard_array_columns(value)
    if names:
        return [dict(zip(names, row)) for row in value.tolist()]
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    return value
"""
# One call with the session's bookkeeping, run here (LocalBackend) and in the terminal's Python
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
    names = _tradeguard_array_columns(value)
    if names:  # a structured array: its rows as lists of Python numbers (tolist() converts them)
        return {"$columns": list(names), "$rows": value.tolist()}
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
        return {_DATETIME_KEY: as_utc(value).timestamp()}
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


SessionKey = tuple[int, str, str]  # (login, server, digest of the password)


def session_key(login: int, server: str, password: str) -> SessionKey:
    """What a pooled session is logged in to: the same login on another server, or with a changed
    password, is another session."""
    digest = hashlib.blake2b(str(password).encode(), digest_size=16).hexdigest()
    return (int(login), str(server), digest)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware (UTC) datetime")
    return moment.astimezone(UTC)
