"""Postgres: the signals of concurrent requests of one web process go in together, in one prepared statement,
one round trip and one commit.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import sqlalchemy as sa

from shared.audit import trail
from shared.core.coalesce import Coalescer, Stalled
from shared.core.db import DbSession, in_transaction
from shared.core.errors import Unavailable
from shared.models import Side, SignalStatus
from shared.signals.auth import ClientIdentity

# The audit action of a stored signal, written by the batch statement and by the SQLite path alike.
RECEIVED_ACTION = "signal.received"


@dataclass(frozen=True)
class StoredSignal:
    """A signal as the ingest statement returned it: the attributes of `Signal` that readers use,
    without an ORM object (and its identity-map bookkeeping) behind them. Its fields are, in order, the
    columns the statement returns."""

    id: int
    owner_id: int
    account_id: int
    client_id: int
    instrument: str
    side: Side
    volume: Decimal
    price: Decimal | None
    sl: Decimal | None
    tp: Decimal | None
    comment: str | None
    status: SignalStatus
    ttl_seconds: int
    expires_at: datetime
    idempotency_key: str | None
    signature: str
    body_sha256: str
    created_at: datetime
    decided_at: datetime | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredSignal:
        values = dict(zip(_SIGNAL_COLUMNS, row, strict=True))
        values["side"] = Side(values["side"])
        values["status"] = SignalStatus(values["status"])
        for name in ("expires_at", "created_at", "decided_at"):
            if values[name] is not None:
                values[name] = values[name].astimezone(UTC)
        return cls(**values)


_SIGNAL_COLUMNS = tuple(field.name for field in fields(StoredSignal))

# Postgres: a batch of signals, their audit rows and the revocation check in one statement, so the
# signals that concurrent requests of one web process send together cost one round trip and one
# commit (see `_ingest_batch`). The batch is a JSON array of objects, one per signal, read with
# jsonb_to_recordset. It is a server-side prepared statement, parsed and planned once per connection.
#
# - ON CONFLICT DO NOTHING covers both unique constraints, (client, idempotency key) and the
#   signature, also between signals of one batch: a signal that conflicts is simply not returned,
#   and its request is answered by `ingest_signal` as any duplicate is.
# - A signal's row is told from its batch-mates' by (signature, client, idempotency key), which is
#   what `_ingest_batch` matches on. Requests equal in all three are the same request sent twice
#   (the signature covers the body): DISTINCT ON keeps one of them, so its audit row is written once.
#   Anything less alike is left to ON CONFLICT, so that no signal waits on a batch-mate's fate.
# - Rows go in in signature order, so two batches wait on each other's rows in one order only.
# - The result is a fixed column list (not *): a column added by a later migration cannot change
#   the prepared plan's result type.
_PG_INGEST_NAME = "tradeguard_ingest_signals_v2"
# The fields of one signal in the batch, with their Postgres types. The first is the client; the next
# ones are the signal's own columns, inserted in this order; `meta` goes to its audit row.
_BATCH_FIELDS = (
    ("client_id", "integer"),
    ("instrument", "varchar"),
    ("side", "varchar"),
    ("volume", "numeric"),
    ("price", "numeric"),
    ("sl", "numeric"),
    ("tp", "numeric"),
    ("comment", "varchar"),
    ("status", "varchar"),
    ("ttl_seconds", "integer"),
    ("expires_at", "timestamptz"),
    ("idempotency_key", "varchar"),
    ("signature", "varchar"),
    ("body_sha256", "varchar"),
    ("created_at", "timestamptz"),
    ("meta", "jsonb"),
)
_SIGNAL_FIELDS = [name for name, _ in _BATCH_FIELDS[1:-1]]

# Built from the tuples above: fixed names only, no values (nothing here comes from a request).
_PG_INGEST_PREPARE = f"""
    PREPARE {_PG_INGEST_NAME} (jsonb, varchar, varchar) AS
    WITH incoming AS (
        SELECT DISTINCT ON (i.signature, i.client_id, i.idempotency_key) i.*
        FROM jsonb_to_recordset($1) AS i({", ".join(f"{n} {t}" for n, t in _BATCH_FIELDS)})
        ORDER BY i.signature, i.client_id, i.idempotency_key
    ), new_signal AS (
        INSERT INTO signals (owner_id, account_id, client_id, {", ".join(_SIGNAL_FIELDS)})
        SELECT c.owner_id, c.account_id, c.id, {", ".join(f"i.{n}" for n in _SIGNAL_FIELDS)}
        FROM incoming AS i JOIN strategy_clients AS c ON c.id = i.client_id AND NOT c.revoked
        ORDER BY i.signature
        ON CONFLICT DO NOTHING
        RETURNING {", ".join(_SIGNAL_COLUMNS)}
    ), received AS (
        INSERT INTO audit_log (actor_type, actor_id, action, target_type, target_id, meta, created_at)
        SELECT $2, n.client_id, $3, 'signal', n.id, i.meta, n.created_at
        FROM new_signal AS n JOIN incoming AS i
            ON i.signature = n.signature AND i.client_id = n.client_id
            AND i.idempotency_key IS NOT DISTINCT FROM n.idempotency_key
    )
    SELECT {", ".join(_SIGNAL_COLUMNS)} FROM new_signal
"""  # noqa: S608
_PG_INGEST_EXECUTE = f"EXECUTE {_PG_INGEST_NAME} (%s, %s, %s)"
_PREPARED_KEY = "tradeguard.ingest_prepared"


@dataclass(frozen=True)
class _BatchItem:
    """One signal of a batch: its JSON object, and what tells its row apart from the others'."""

    json: str
    client_id: int
    signature: str
    idempotency_key: str | None


def _batch_item(client: ClientIdentity, values: dict[str, Any], meta: dict[str, Any]) -> _BatchItem:
    named = {**values, "client_id": client.id, "meta": meta}
    row = {}
    for name, _ in _BATCH_FIELDS:
        value = named[name]
        if isinstance(value, Decimal):
            value = str(value)  # exact: Postgres reads the digits, no float in between
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Side | SignalStatus):
            value = value.value
        row[name] = value
    return _BatchItem(json.dumps(row), client.id, values["signature"], values["idempotency_key"])


def _ingest_batch(cursor: Any, items: Sequence[_BatchItem]) -> list[StoredSignal | None]:
    """Run the prepared statement on `items`: for each, in order, its stored signal, or None when it
    was not inserted (a duplicate, or a revoked client)."""
    batch = "[" + ",".join(item.json for item in items) + "]"
    cursor.execute(_PG_INGEST_EXECUTE, (batch, trail.CLIENT, RECEIVED_ACTION))
    inserted = {(row[_SIGNATURE_AT], row[_CLIENT_AT], row[_KEY_AT]): row for row in cursor.fetchall()}
    results: list[StoredSignal | None] = []
    for item in items:
        # pop: of the same request sent twice in one batch, the first gets the row, and the other
        # is answered as the duplicate it is.
        row = inserted.pop((item.signature, item.client_id, item.idempotency_key), None)
        results.append(None if row is None else StoredSignal.from_row(row))
    return results


_SIGNATURE_AT = _SIGNAL_COLUMNS.index("signature")
_CLIENT_AT = _SIGNAL_COLUMNS.index("client_id")
_KEY_AT = _SIGNAL_COLUMNS.index("idempotency_key")


def _ingest_prepared(
    cursor: Any, info: dict[str, Any], items: Sequence[_BatchItem]
) -> list[StoredSignal | None]:
    """`_ingest_batch` on the connection whose `info` this is, preparing the statement first if this
    connection has not. If the statement was deallocated behind our back (DISCARD ALL, say), the
    connection forgets it had one, so that the next run prepares it again."""
    if not info.get(_PREPARED_KEY):
        cursor.execute(_PG_INGEST_PREPARE)
        info[_PREPARED_KEY] = True
    try:
        return _ingest_batch(cursor, items)
    except psycopg2.errors.InvalidSqlStatementName:
        info.pop(_PREPARED_KEY, None)
        raise


def insert_postgres(
    session: DbSession,
    bind: sa.Engine | sa.Connection,
    client: ClientIdentity,
    values: dict[str, Any],
    meta: dict[str, Any],
) -> StoredSignal | None:
    """Insert one signal with its audit row; the stored signal, or None when nothing was inserted.

    When the session has no transaction open (the usual case: the client's secret came from the cache),
    the signal joins this process's current batch (`_batches`), which runs in autocommit on a pooled
    connection: one statement is one transaction, so the batch's signals and audit rows are committed
    together, durably, before this returns. Otherwise (the session already holds a transaction, or is
    bound to a Connection as in the tests) it is inserted alone in the session's transaction, and the
    caller commits.
    """
    item = _batch_item(client, values, meta)
    if isinstance(bind, sa.Engine) and not in_transaction(session):
        try:
            return _batches(bind).submit(item)
        except Stalled:
            raise Unavailable(
                "signals cannot be stored right now; nothing was stored, retry shortly with the same "
                "Idempotency-Key"
            ) from None
    connection = session.connection().connection
    cursor = connection.cursor()
    try:
        return _ingest_prepared(cursor, connection.info, [item])[0]
    finally:
        cursor.close()


_coalescers: weakref.WeakKeyDictionary[sa.Engine, Coalescer[_BatchItem, StoredSignal | None]] = (
    weakref.WeakKeyDictionary()
)
_coalescers_lock = threading.Lock()
# A signal queued behind a batch stuck for this long (a lock, a dead connection) gets 503 rather than
# wait with it: its request can be resent with its key. Under load a batch takes milliseconds.
_QUEUE_TIMEOUT_SECONDS = 10.0


def _batches(engine: sa.Engine) -> Coalescer[_BatchItem, StoredSignal | None]:
    """The engine's group commit for signals, in this process."""
    with _coalescers_lock:
        coalescer = _coalescers.get(engine)
        if coalescer is None:
            # A weak reference: the value must not keep its own key (the engine) alive.
            engine_ref = weakref.ref(engine)

            def run_batch(items: Sequence[_BatchItem]) -> Sequence[StoredSignal | Exception | None]:
                live_engine = engine_ref()
                assert live_engine is not None  # a batch runs only for a caller holding the engine
                return _ingest_isolating_failures(live_engine, items)

            coalescer = _coalescers[engine] = Coalescer(run_batch, queue_timeout=_QUEUE_TIMEOUT_SECONDS)
        return coalescer


def _ingest_isolating_failures(
    engine: sa.Engine, items: Sequence[_BatchItem]
) -> Sequence[StoredSignal | Exception | None]:
    """`_ingest_autocommit`, but a signal whose data the database refuses fails only its own request.

    The statement is all or nothing: one bad signal would fail its whole batch, other clients' signals
    with it. Then nothing of the batch was stored, and each signal is run again alone.
    """
    try:
        return _ingest_autocommit(engine, items)
    except (psycopg2.DataError, psycopg2.IntegrityError):
        if len(items) == 1:
            raise
    outcomes: list[StoredSignal | Exception | None] = []
    for item in items:
        try:
            outcomes.extend(_ingest_autocommit(engine, [item]))
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            outcomes.append(exc)
    return outcomes


def _ingest_autocommit(engine: sa.Engine, items: Sequence[_BatchItem]) -> list[StoredSignal | None]:
    pooled = engine.raw_connection()
    dbapi_connection: Any = pooled.driver_connection
    autocommit_before = dbapi_connection.autocommit
    try:
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        try:
            for attempt in (1, 2):
                try:
                    return _ingest_prepared(cursor, pooled.info, items)
                except psycopg2.errors.InvalidSqlStatementName:
                    # Deallocated behind our back: `_ingest_prepared` prepares it again, once.
                    if attempt == 2:
                        raise
                except psycopg2.errors.DeadlockDetected:
                    # Two batches each waiting for a row of the other (retries of one idempotency key
                    # sent to two processes at once): Postgres undid this one whole; run it once more.
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            cursor.close()
            if not dbapi_connection.closed:
                dbapi_connection.autocommit = autocommit_before
    except Exception as exc:
        if dbapi_connection.closed:  # the server went away: never hand this connection out again
            pooled.invalidate(exc)
        raise
    finally:
        pooled.close()
