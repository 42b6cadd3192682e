"""How a value becomes a CSV cell: pure, so every export writes the same text.

- Decimals as stored: the column's digits, in plain notation (never `1E+1` or `0E-8`).
- Timestamps in UTC, ISO-8601 with a `Z`.
- Text that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage
  return) is escaped with a leading apostrophe, as OWASP's CSV-injection advice and the spreadsheet
  programs require. Only text is escaped: a number we wrote ourselves (a negative P&L, "-12.50") is
  data, and escaping it would turn it into text in every spreadsheet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: str) -> str:
    """Text as a spreadsheet shows it and never evaluates it."""
    if value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def decimal_cell(value: Decimal) -> str:
    return format(value, "f")


def time_cell(value: datetime) -> str:
    """Always with microseconds: one width for every timestamp, as Postgres writes them (exports.py)."""
    if value.tzinfo is None:  # stored as UTC (SQLite hands back naive values)
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_cell(value: Any) -> str:
    """JSON as Postgres writes a jsonb value (exports.py lets it, for speed): keys shortest first, then
    by their bytes, `", "` and `": "` between items, text unescaped."""
    return text_cell(
        json.dumps(_jsonb_ordered(value), separators=(", ", ": "), ensure_ascii=False, default=str)
    )


def _jsonb_ordered(value: Any) -> Any:
    if isinstance(value, dict):
        ordered = sorted(value.items(), key=lambda item: (len(item[0].encode()), item[0].encode()))
        return {key: _jsonb_ordered(inner) for key, inner in ordered}
    if isinstance(value, list):
        return [_jsonb_ordered(inner) for inner in value]
    return value


def cell(value: Any) -> str:
    """Any value a row holds, as its cell (None is the empty cell)."""
    if value is None:
        return ""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return text_cell(value)
    if isinstance(value, Decimal):
        return decimal_cell(value)
    if isinstance(value, datetime):
        return time_cell(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (dict, list)):
        return json_cell(value)
    return text_cell(str(value))


def _int_cell(value: Any) -> str:
    return "" if value is None else str(value)


def _maybe(convert: Callable[[Any], str]) -> Callable[[Any], str]:
    def converted(value: Any) -> str:
        return "" if value is None else convert(value)

    return converted


# Per column kind, the converter the exports use: chosen once per column rather than by isinstance on
# every cell (a million-row export calls these tens of millions of times).
CONVERTERS: dict[str, Callable[[Any], str]] = {
    "int": _int_cell,
    "text": _maybe(text_cell),
    "decimal": _maybe(decimal_cell),
    "time": _maybe(time_cell),
    "json": _maybe(json_cell),
    "enum": cell,
}
