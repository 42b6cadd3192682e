"""The official package's numpy answers: the fields of the structured arrays `copy_ticks_*` and
`copy_rates_*` return, and rebuilding such an array from its bytes.

Plain data here, so importing this module does not import numpy: only the simulated terminal, which
builds the arrays, and a script that asks for them (`shared.mt5.sim.client`) need numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy

__all__ = ["RATE_FIELDS", "TICK_FIELDS", "from_bytes", "rates_array", "ticks_array"]

# (name, numpy type) per column, in the official order. The names are those the documentation lists
# ("time, bid, ask, last, volume, time_msc, flags, volume_real"; "time, open, high, low, close, tick_volume,
# spread, real_volume"); the types those the package gives them (seconds and milliseconds as int64,
# prices as float64, volumes as uint64, flags as uint32, the spread in points as int32).
TICK_FIELDS: tuple[tuple[str, str], ...] = (
    ("time", "<i8"),
    ("bid", "<f8"),
    ("ask", "<f8"),
    ("last", "<f8"),
    ("volume", "<u8"),
    ("time_msc", "<i8"),
    ("flags", "<u4"),
    ("volume_real", "<f8"),
)
RATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("time", "<i8"),
    ("open", "<f8"),
    ("high", "<f8"),
    ("low", "<f8"),
    ("close", "<f8"),
    ("tick_volume", "<u8"),
    ("spread", "<i4"),
    ("real_volume", "<u8"),
)


def _dtype(fields: Sequence[tuple[str, str]]) -> numpy.dtype[Any]:
    import numpy

    return numpy.dtype(list(fields))


def ticks_array(rows: Sequence[tuple[Any, ...]] = ()) -> numpy.ndarray[Any, Any]:
    """Rows of (time, bid, ask, last, volume, time_msc, flags, volume_real) as the official array."""
    import numpy

    return numpy.array(list(rows), dtype=_dtype(TICK_FIELDS))


def rates_array(rows: Sequence[tuple[Any, ...]] = ()) -> numpy.ndarray[Any, Any]:
    """Rows of (time, open, high, low, close, tick_volume, spread, real_volume) as the official array."""
    import numpy

    return numpy.array(list(rows), dtype=_dtype(RATE_FIELDS))


def from_bytes(names: Sequence[str], formats: Sequence[str], data: bytes) -> numpy.ndarray[Any, Any]:
    """An array of one of the official shapes rebuilt from its raw bytes (`ndarray.tobytes()`), its
    column names and types: how an array crosses a connection without pickle. Only the two official
    layouts are accepted, so a peer cannot make us build objects of any other kind. ValueError otherwise,
    or when the bytes are not a whole number of rows."""
    import numpy

    layout = tuple(zip(names, formats, strict=True))
    if layout not in (TICK_FIELDS, RATE_FIELDS):
        raise ValueError(f"not an array of the MetaTrader5 package: {layout!r}"[:300])
    dtype = _dtype(layout)
    if type(data) is not bytes or len(data) % dtype.itemsize:
        raise ValueError("the array's bytes are not a whole number of rows")
    return numpy.frombuffer(data, dtype=dtype).copy()  # a copy: frombuffer's view would be read-only
