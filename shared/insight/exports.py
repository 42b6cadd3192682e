"""CSV exports of an owner's trades and reconciliation events, streamed.

A year of history at 5,000 accounts is far more than a web process may hold: the rows come from a
server-side cursor (Postgres; SQLite's cursor steps through the file anyway) a chunk at a time, and each
chunk is written out as CSV text before the next is read. Nothing but the chunk in hand is kept.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared.insight.csv_rules import CONVERTERS, FORMULA_STARTS
from shared.models import ReconciliationLog, Trade, User

# Rows fetched (and written) per round trip: big enough that the per-chunk cost vanishes, small enough
# that a chunk stays a few MB.
CHUNK_ROWS = 2000


@dataclass(frozen=True)
class Column:
    header: str
    expression: Any  # a column of the exported table
    kind: str  # a key of csv_rules.CONVERTERS


@dataclass(frozen=True)
class Export:
    """One export: its file name, its table (`model`: rows with an owner_id, an account_id and a
    created_at, which `from` and `to` filter on) and the columns in file order."""

    filename: str
    model: Any
    columns: Sequence[Column]


def _columns(model: Any, spec: Sequence[tuple[str, str]]) -> list[Column]:
    return [Column(name, getattr(model, name), kind) for name, kind in spec]


TRADES = Export(
    filename="trades.csv",
    model=Trade,
    columns=_columns(
        Trade,
        [
            ("id", "int"),
            ("account_id", "int"),
            ("signal_id", "int"),
            ("approval_id", "int"),
            ("symbol", "text"),
            ("side", "enum"),
            ("state", "enum"),
            ("requested_volume", "decimal"),
            ("requested_price", "decimal"),
            ("requested_sl", "decimal"),
            ("requested_tp", "decimal"),
            ("filled_volume", "decimal"),
            ("filled_price", "decimal"),
            ("magic", "int"),
            ("comment", "text"),
            ("order_ticket", "int"),
            ("deal_ticket", "int"),
            ("position_ticket", "int"),
            ("attempts", "int"),
            ("retcode", "int"),
            ("failure_reason", "text"),
            ("created_at", "time"),
            ("sent_at", "time"),
            ("filled_at", "time"),
            ("closed_at", "time"),
            ("close_reason", "text"),
            ("close_price", "decimal"),
            ("pnl", "decimal"),
        ],
    ),
)

RECONCILIATION = Export(
    filename="reconciliation.csv",
    model=ReconciliationLog,
    columns=_columns(
        ReconciliationLog,
        [
            ("id", "int"),
            ("account_id", "int"),
            ("trade_id", "int"),
            ("event_type", "text"),
            ("position_ticket", "int"),
            ("position_key", "text"),
            ("symbol", "text"),
            ("side", "text"),
            ("volume", "decimal"),
            ("price_open", "decimal"),
            ("sl", "decimal"),
            ("tp", "decimal"),
            ("opened_from", "text"),
            ("close_reason", "text"),
            ("close_price", "decimal"),
            ("pnl", "decimal"),
            ("details", "json"),
            ("created_at", "time"),
        ],
    ),
)


def statement(
    export: Export,
    owner: User,
    *,
    account_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> sa.Select[Any]:
    """The owner's rows of `export`, oldest first: of one account when given, created in [start, end)."""
    query = sa.select(*(column.expression for column in export.columns)).where(
        export.model.owner_id == owner.id
    )
    if account_id is not None:
        query = query.where(export.model.account_id == account_id)
    if start is not None:
        query = query.where(export.model.created_at >= start)
    if end is not None:
        query = query.where(export.model.created_at < end)
    return query.order_by(export.model.created_at, export.model.id)


def _postgres_cell(column: Column) -> Any:
    """The column as its cell's text, formatted by Postgres itself, by the rules of csv_rules: a million
    rows formatted in C, where Python would spend most of the export's time on it."""
    expression = column.expression
    if column.kind == "decimal":
        return sa.cast(expression, sa.Text)  # numeric's text is the stored digits, in plain notation
    if column.kind == "time":
        return sa.func.to_char(sa.func.timezone("UTC", expression), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    if column.kind in ("text", "enum", "json"):
        text = sa.cast(expression, sa.Text)
        return sa.case(
            (sa.func.left(text, 1).in_(FORMULA_STARTS), sa.literal("'", sa.Text) + text),
            else_=text,
        )
    return expression  # an integer, written by the csv module


def stream(bind: sa.Engine | sa.Connection, export: Export, query: sa.Select[Any]) -> Iterator[str]:
    """The CSV text of `query`'s rows (a `statement`), header first, a chunk of CHUNK_ROWS rows at a time.

    Read on a connection of its own (from `bind`, an engine; a connection is used as it is): the rows
    are still being read after the view has returned, when the request's session has been removed and
    its connection, with any server-side cursor on it, given back. The query runs before the header is
    handed over, so a caller that takes the first chunk before it answers (the view does) still answers
    a database failure with an error status rather than a cut-off file."""
    with contextlib.ExitStack() as stack:
        connection = bind if isinstance(bind, sa.Connection) else stack.enter_context(bind.connect())
        if connection.dialect.name == "postgresql":
            chunks = _postgres_chunks(connection, export, query)
        else:
            converters = {index: CONVERTERS[column.kind] for index, column in enumerate(export.columns)}
            result = connection.execute(query.execution_options(yield_per=CHUNK_ROWS))
            chunks = (list(_converted(chunk, converters)) for chunk in result.partitions())
        buffer = _Lines()
        writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180's line ends
        writer.writerow([column.header for column in export.columns])
        first = next(chunks, [])  # the query has run: what fails here fails before the header is out
        yield _take(buffer)
        for chunk in itertools.chain([first], chunks):
            writer.writerows(chunk)
            yield _take(buffer)


def _postgres_chunks(
    connection: sa.Connection, export: Export, query: sa.Select[Any]
) -> Iterator[Sequence[Any]]:
    """The rows as Postgres formatted them (every cell final text, or an integer, or None), from a named
    (server-side) cursor of the driver itself: nothing is left for SQLAlchemy to convert, and its row
    objects would cost a third of the export's time."""
    compiled = query.with_only_columns(*(_postgres_cell(column) for column in export.columns)).compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    cursor = connection.connection.driver_connection.cursor(name=f"export_{uuid.uuid4().hex}")  # type: ignore[union-attr]
    try:
        cursor.execute(str(compiled), compiled.params)
        yield from _read_ahead(lambda: cursor.fetchmany(CHUNK_ROWS))
    finally:
        cursor.close()


# Chunks fetched ahead of the one being written: enough for Postgres to work while Python writes.
READ_AHEAD = 2


def _read_ahead(fetch: Callable[[], Sequence[Any]]) -> Iterator[Sequence[Any]]:
    """The chunks `fetch` returns until an empty one, fetched by a thread of their own while the caller
    writes the previous ones: a server-side cursor only works when asked (FETCH), so without this
    Postgres would sit idle while each chunk is written, and Python while each is fetched. The
    driver lets go of the GIL while it waits. At most READ_AHEAD chunks wait in memory; a caller that
    stops early (a client gone) stops the thread before the cursor is closed."""
    chunks: queue.Queue[Sequence[Any] | BaseException | None] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def put(item: Sequence[Any] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while rows := fetch():
                if not put(rows):
                    return
            put(None)
        except BaseException as exc:  # handed to the caller, raised there
            put(exc)

    thread = threading.Thread(target=reader, name="export-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _converted(rows: Sequence[Any], converters: dict[int, Callable[[Any], str]]) -> Iterator[list[Any]]:
    for row in rows:
        cells = list(row)
        for index, convert in converters.items():
            value = cells[index]
            cells[index] = "" if value is None else convert(value)
        yield cells


class _Lines(list[str]):
    """Where the writer puts each line: kept as they come and joined once per chunk (a StringIO's writes
    and resets cost a microsecond a row more)."""

    write = list.append


def _take(lines: _Lines) -> str:
    text = "".join(lines)
    lines.clear()
    return text
