"""Signals: the sanity rules, authenticating the strategy client, ingest with idempotency and replay
protection, listing, and the expiry sweep."""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import sqlalchemy as sa

from shared import audit
from shared.coalesce import Coalescer, Stalled
from shared.crypto import SecretBox, SecretUnreadable
from shared.db import DbSession, bind_of, in_transaction, utcnow
from shared.errors import Conflict, NotAuthenticated, NotFound, Unavailable
from shared.models import Side, Signal, SignalStatus, StrategyClient, User
from shared.signing import parse_timestamp, signature_matches, timestamp_is_fresh

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Pure rules
# ---------------------------------------------------------------------------------------------


def price_level_errors(
    side: str, price: Decimal | None, sl: Decimal | None, tp: Decimal | None
) -> dict[str, list[str]]:
    """Where stop-loss and take-profit sit relative to the entry price, by field name.

    For a buy the stop is below and the target above (sl < price < tp); for a sell the reverse. Each
    comparison is made only when both of its sides are given.
    """
    errors: dict[str, list[str]] = {}

    def add(field_name: str, message: str) -> None:
        errors.setdefault(field_name, []).append(message)

    buy = side == Side.BUY.value
    if price is not None and sl is not None:
        if buy and not sl < price:
            add("sl", "for a buy, sl must be below price")
        if not buy and not sl > price:
            add("sl", "for a sell, sl must be above price")
    if price is not None and tp is not None:
        if buy and not tp > price:
            add("tp", "for a buy, tp must be above price")
        if not buy and not tp < price:
            add("tp", "for a sell, tp must be below price")
    if price is None and sl is not None and tp is not None:
        if buy and not sl < tp:
            add("sl", "for a buy, sl must be below tp")
        if not buy and not sl > tp:
            add("sl", "for a sell, sl must be above tp")
    return errors


# ---------------------------------------------------------------------------------------------
# Authenticating the strategy client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an HTTP request that the signature covers or identifies."""

    client_id: str | None
    timestamp: str | None
    signature: str | None
    body: bytes


@dataclass(frozen=True)
class ClientIdentity:
    """The authenticated strategy client: who sends, for which owner and account."""

    id: int
    owner_id: int
    account_id: int


@dataclass(frozen=True)
class _ClientKey:
    identity: ClientIdentity
    secret: str
    fetched_at: float


class ClientSecretUnreadable(NotAuthenticated):
    """A strategy client's stored secret cannot be decrypted, so its signatures cannot be checked. The
    client's requests are refused (401). The owner creates a new client, or the operator puts the key
    that encrypted it back into TRADEGUARD_ENCRYPTION_KEY."""

    code = "client_secret_unreadable"


class ClientKeyCache:
    """Decrypted client secrets, kept per process for a few seconds.

    Every signal would otherwise pay a query and a decryption before its signature can be checked.
    A secret never changes for a client id, so caching it is safe; revocation is not decided here:
    the insert itself refuses a revoked client (see `ingest_signal`), so a revoked client can never
    store a signal, however fresh the cache.
    """

    def __init__(self, ttl_seconds: float = 30.0):
        self.ttl_seconds = ttl_seconds
        self._keys: dict[int, _ClientKey] = {}

    def lookup(self, session: DbSession, box: SecretBox, client_id: int) -> _ClientKey | None:
        now = time.monotonic()
        cached = self._keys.get(client_id)
        if cached is not None and now - cached.fetched_at < self.ttl_seconds:
            return cached
        row = session.execute(_CLIENT_BY_ID, {"client_id": client_id}).one_or_none()
        if row is None or row.revoked:
            self._keys.pop(client_id, None)
            return None
        key = _ClientKey(
            ClientIdentity(id=row.id, owner_id=row.owner_id, account_id=row.account_id),
            box.decrypt(row.secret_encrypted),
            now,
        )
        self._keys[client_id] = key
        return key

    def forget(self, client_id: int) -> None:
        self._keys.pop(client_id, None)

    def clear(self) -> None:
        self._keys.clear()


_CLIENT_BY_ID = sa.select(
    StrategyClient.id,
    StrategyClient.owner_id,
    StrategyClient.account_id,
    StrategyClient.secret_encrypted,
    StrategyClient.revoked,
).where(StrategyClient.id == sa.bindparam("client_id"))


def authenticate_client(
    session: DbSession,
    box: SecretBox,
    request: SignedRequest,
    *,
    max_skew_seconds: int,
    keys: ClientKeyCache,
    now: float | None = None,
) -> ClientIdentity:
    """The client that signed `request`, or NotAuthenticated saying what is wrong."""
    if not request.client_id or not request.timestamp or not request.signature:
        raise NotAuthenticated("X-Client-Id, X-Timestamp and X-Signature headers are required")
    try:
        client_id = int(request.client_id)
    except ValueError:
        raise NotAuthenticated("unknown client") from None
    timestamp = parse_timestamp(request.timestamp)
    if timestamp is None:
        raise NotAuthenticated("X-Timestamp must be unix seconds")
    if not timestamp_is_fresh(timestamp, time.time() if now is None else now, max_skew_seconds):
        raise NotAuthenticated(f"X-Timestamp is more than {max_skew_seconds} s from server time")
    try:
        key = keys.lookup(session, box, client_id) if 0 < client_id < 2**31 else None
    except SecretUnreadable:
        # The key that encrypted this client's secret is gone from TRADEGUARD_ENCRYPTION_KEY (the key
        # check keeps a whole process from running with the wrong keys; this is one row). The client
        # cannot be authenticated: say so, and tell the operator which row.
        log.error(
            "strategy client %s: its stored secret cannot be decrypted with the configured keys", client_id
        )
        raise ClientSecretUnreadable(
            "this client's secret cannot be read by the server: the account owner must create a new client "
            "(the operator has the details in the log)"
        ) from None
    if key is None:
        raise NotAuthenticated("unknown or revoked client")
    if not signature_matches(key.secret, timestamp, request.body, request.signature):
        raise NotAuthenticated("bad signature")
    return key.identity


# ---------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    signal: Signal | StoredSignal
    created: bool  # False when an idempotent retry returned the signal made the first time


def _existing_for(
    session: DbSession, client: ClientIdentity, idempotency_key: str | None, signature: str, body_sha256: str
) -> Signal | None:
    """The signal an idempotent retry refers to, None for a new signal, or Conflict for a replay."""
    if idempotency_key is not None:
        earlier = session.scalar(
            sa.select(Signal).where(Signal.client_id == client.id, Signal.idempotency_key == idempotency_key)
        )
        if earlier is not None:
            if earlier.body_sha256 != body_sha256:
                raise Conflict(
                    "this Idempotency-Key was already used for a different signal",
                    fields={"Idempotency-Key": ["already used with a different body"]},
                )
            return earlier
    if session.scalar(sa.select(Signal.id).where(Signal.signature == signature)) is not None:
        raise Conflict(
            "this signature was already used: a replayed request is refused; "
            "send an Idempotency-Key to retry safely",
            fields={"X-Signature": ["already used"]},
        )
    return None


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


_RECEIVED = "signal.received"


def _received_meta(
    client: ClientIdentity, data: dict[str, Any], idempotency_key: str | None
) -> dict[str, Any]:
    return {
        "account_id": client.account_id,
        "instrument": data["instrument"],
        "side": data["side"],
        "volume": str(data["volume"]),
        "idempotency_key": idempotency_key,
    }


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
    cursor.execute(_PG_INGEST_EXECUTE, (batch, audit.CLIENT, _RECEIVED))
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


def _insert_postgres(
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


def _refuse_revoked(session: DbSession, client: ClientIdentity) -> None:
    revoked = session.scalar(sa.select(StrategyClient.revoked).where(StrategyClient.id == client.id))
    if revoked is not False:
        raise NotAuthenticated("unknown or revoked client")


def _insert_generic(
    session: DbSession, client: ClientIdentity, values: dict[str, Any], meta: dict[str, Any]
) -> Signal | None:
    """The same as `_PG_INGEST_PREPARE` for one signal, in plain statements, for SQLite (the embedded
    setup)."""
    _refuse_revoked(session, client)
    from sqlalchemy.dialects.sqlite import insert

    statement = insert(Signal).values(
        owner_id=client.owner_id, account_id=client.account_id, client_id=client.id, **values
    )
    signal = session.scalars(
        sa.select(Signal).from_statement(statement.on_conflict_do_nothing().returning(*Signal.__table__.c))
    ).one_or_none()
    if signal is not None:
        audit.record(
            session,
            actor_type=audit.CLIENT,
            actor_id=client.id,
            action=_RECEIVED,
            target_type="signal",
            target_id=signal.id,
            meta=meta,
        )
    return signal


def ingest_signal(
    session: DbSession,
    client: ClientIdentity,
    data: dict[str, Any],
    *,
    signature: str,
    body_sha256: str,
    idempotency_key: str | None,
    default_ttl_seconds: int,
) -> IngestResult:
    """Store a validated signal as pending with its audit row, or return the one an idempotent retry
    refers to.

    The insert comes first and lets the unique constraints decide, which is also what makes concurrent
    duplicates safe: Postgres makes the loser wait for the winner's commit, and the loser then reads
    what the winner stored. A client revoked since its secret was cached inserts nothing and gets 401.

    On Postgres, when the session has no transaction open, a new signal and its audit row are committed
    before this returns, by the statement of the batch it joined (autocommit); see `_insert_postgres`.
    """
    signature = signature.strip().lower()
    now = utcnow()
    ttl = data.get("ttl_seconds") or default_ttl_seconds
    values = {
        "instrument": data["instrument"],
        "side": Side(data["side"]),
        "volume": data["volume"],
        "price": data.get("price"),
        "sl": data.get("sl"),
        "tp": data.get("tp"),
        "comment": data.get("comment"),
        "status": SignalStatus.PENDING,
        "ttl_seconds": ttl,
        "expires_at": now + timedelta(seconds=ttl),
        "idempotency_key": idempotency_key,
        "signature": signature,
        "body_sha256": body_sha256,
        "created_at": now,
    }
    meta = _received_meta(client, data, idempotency_key)
    signal: Signal | StoredSignal | None
    bind = bind_of(session)
    if bind.dialect.name == "postgresql":
        signal = _insert_postgres(session, bind, client, values, meta)
    else:
        signal = _insert_generic(session, client, values, meta)
    if signal is not None:
        return IngestResult(signal, created=True)

    _refuse_revoked(session, client)  # nothing inserted: revoked since it was cached, or a duplicate
    earlier = _existing_for(session, client, idempotency_key, signature, body_sha256)
    if earlier is None:  # pragma: no cover - a conflict always has a row behind it
        raise RuntimeError("insert conflicted but no conflicting signal was found")
    return IngestResult(earlier, created=False)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def get_own_signal(session: DbSession, owner: User, signal_id: int) -> Signal:
    signal = session.get(Signal, signal_id)
    if signal is None or signal.owner_id != owner.id:
        raise NotFound(f"signal {signal_id} not found")
    return signal


def list_own_signals(
    session: DbSession, owner: User, *, status: SignalStatus | None, page: int, per_page: int
) -> tuple[list[Signal], int]:
    where = [Signal.owner_id == owner.id]
    if status is not None:
        where.append(Signal.status == status)
    total = session.scalar(sa.select(sa.func.count()).select_from(Signal).where(*where)) or 0
    items = session.scalars(
        sa.select(Signal)
        .where(*where)
        .order_by(Signal.created_at.desc(), Signal.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return list(items), total


# ---------------------------------------------------------------------------------------------
# Expiry
# ---------------------------------------------------------------------------------------------


def is_expired(signal: Signal, now: datetime) -> bool:
    return signal.status == SignalStatus.EXPIRED or (
        signal.status == SignalStatus.PENDING and signal.expires_at <= now
    )


def expire_due_signals(
    session: DbSession, *, now: datetime | None = None, batch_size: int = 500
) -> list[int]:
    """Mark pending signals past their time-to-live as expired, each with an audit row.

    Safe with several sweeps at once: rows are claimed with SKIP LOCKED on Postgres, and the UPDATE
    re-checks `status = 'pending'`, so a signal approved a moment ago is never expired and no signal is
    expired (or audited) twice.
    """
    now = now or utcnow()
    expired_ids: list[int] = []
    while True:
        due_ids = list(
            session.scalars(
                sa.select(Signal.id)
                .where(Signal.status == SignalStatus.PENDING, Signal.expires_at <= now)
                .order_by(Signal.expires_at)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        )
        if not due_ids:
            break
        claimed = list(
            session.scalars(
                sa.update(Signal)
                .where(Signal.id.in_(due_ids), Signal.status == SignalStatus.PENDING)
                .values(status=SignalStatus.EXPIRED, decided_at=now)
                .returning(Signal.id)
                .execution_options(synchronize_session=False)
            )
        )
        for signal_id in claimed:
            audit.record(
                session,
                actor_type=audit.SYSTEM,
                actor_id=None,
                action="signal.expired",
                target_type="signal",
                target_id=signal_id,
                meta={"expired_at": now.isoformat()},
            )
        expired_ids.extend(claimed)
        if len(due_ids) < batch_size:
            break
    # Objects already loaded in this session must not show the old status.
    session.expire_all()
    return expired_ids
