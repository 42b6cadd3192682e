"""`connect`: the `terminal` process's MetaTrader5 module as a script sees the official one, numpy arrays
included, without pickle.

Over RPyC classic (`conn.modules.MetaTrader5`, see the README) every result is a proxy of an object in the
terminal's Python. For named tuples that is enough; for the numpy arrays of copy_ticks_* and copy_rates_*
it is not: pandas, numpy and most code cannot read a proxy as an array. mt5linux's client copies them
with `rpyc.classic.obtain`, which unpickles what the terminal sends: whoever runs (or impersonates) the
terminal could then run code in the script. Here the terminal sends the array's column names and types
and its raw bytes (all plain values RPyC copies as they are), and the array is rebuilt from them, in one
of the two official layouts only (`shared.mt5.arrays.from_bytes`).
"""

from __future__ import annotations

from typing import Any

import rpyc

from shared.mt5.arrays import from_bytes

__all__ = ["ARRAY_FUNCTIONS", "RemoteMetaTrader5", "connect"]

ARRAY_FUNCTIONS = frozenset(
    {"copy_ticks_from", "copy_ticks_range", "copy_rates_from", "copy_rates_from_pos", "copy_rates_range"}
)

# Run in the terminal's Python (any version mt5linux runs, so plain 3.8 syntax): the call, and its array as
# (names, types, bytes), or None as the package answers a failure.
_REMOTE_SOURCE = """
import MetaTrader5 as mt5


def _tradeguard_array_call(name, args, kwargs):
    result = getattr(mt5, name)(*args, **dict(kwargs))
    if result is None:
        return None
    names = tuple(result.dtype.names)
    return names, tuple(result.dtype[n].str for n in names), result.tobytes()
"""


class RemoteMetaTrader5:
    """The terminal's MetaTrader5 module: attributes and functions are the remote module's, except the
    copy_* functions, whose arrays arrive as local numpy arrays."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        conn.execute(_REMOTE_SOURCE)
        self._module = conn.modules.MetaTrader5
        self._array_call = conn.namespace["_tradeguard_array_call"]

    def __getattr__(self, name: str) -> Any:
        if name in ARRAY_FUNCTIONS:

            def call(*args: Any, **kwargs: Any) -> Any:
                answer = self._array_call(name, args, tuple(kwargs.items()))
                return None if answer is None else from_bytes(*answer)

            return call
        return getattr(self._module, name)

    def close(self) -> None:
        self._conn.close()


def connect(host: str = "127.0.0.1", port: int = 18812) -> RemoteMetaTrader5:
    """The MetaTrader5 module of the terminal process at host:port (an RPyC classic server: the
    `terminal` process, or an mt5linux server in front of the real package)."""
    return RemoteMetaTrader5(rpyc.classic.connect(host, port))
