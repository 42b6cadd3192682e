"""The one Flask-SQLAlchemy handle, column types shared by the models, and after-commit hooks."""

from __future__ import annotations

import select
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session

# Stable constraint names, so Alembic can find and alter them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Domain functions take either a plain Session (tests, scripts) or Flask-SQLAlchemy's scoped one.
DbSession = Session | scoped_session[Any]


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


# expire_on_commit=False: a request or task commits once at its end and then only serialises what it
# wrote; reloading every attribute after the commit would cost a query per row for nothing.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    Postgres stores `timestamptz`; SQLite has no time zones and hands back naive values, which this
    type marks as UTC so that comparisons never mix naive and aware datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; TradeGuard stores UTC-aware timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on Postgres (indexable, compact), plain JSON elsewhere.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Money, prices and volumes are exact decimals, never floats.
Price = sa.Numeric(20, 10)
Money = sa.Numeric(20, 4)
Volume = sa.Numeric(14, 4)


_AFTER_COMMIT_KEY = "tradeguard_after_commit"


def after_commit(session: DbSession, callback: Callable[[], Any]) -> None:
    """Run `callback` once the session's current transaction has committed; drop it on rollback,
    also when only the savepoint it was registered in rolls back (`begin_nested`).

    Used to enqueue Celery tasks only for rows that really exist: a task sent before the commit could
    run before the row is visible, and one sent for a rolled-back transaction would act on nothing.
    """
    # The savepoint it belongs to, if any (a scoped session is asked for the session it stands for).
    savepoint = (session if isinstance(session, Session) else session()).get_nested_transaction()
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append((savepoint, callback))


@dataclass(frozen=True)
class _Batched:
    key: str
    item: Any
    flush: Callable[[list[Any]], Any]


def after_commit_batched(session: DbSession, key: str, item: Any, flush: Callable[[list[Any]], Any]) -> None:
    """As `after_commit`, for many small things sent together: once the transaction commits, `flush`
    is called once with every item registered under `key` in it (in order; those of a savepoint that
    rolled back left out). One task for a commit's hundred webhook deliveries, not a hundred tasks."""
    after_commit(session, _Batched(key, item, flush))  # type: ignore[arg-type]


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    # SQLAlchemy sends this event when a savepoint is released too; only the outermost commit counts
    # (a task sent then would run before its rows are visible: it happened, bench/guards.py).
    if session.get_nested_transaction() is not None:
        return
    callbacks = session.info.pop(_AFTER_COMMIT_KEY, [])
    batches: dict[str, tuple[Callable[[list[Any]], Any], list[Any]]] = {}
    for _, callback in callbacks:
        if isinstance(callback, _Batched):
            batches.setdefault(callback.key, (callback.flush, []))[1].append(callback.item)
        else:
            callback()
    for flush, items in batches.values():
        flush(items)


def _within(transaction: Any, ancestor: Any) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction: everything goes
        session.info.pop(_AFTER_COMMIT_KEY, None)
        return
    if previous_transaction.nested:  # a savepoint: what was registered inside it goes
        kept = [
            (transaction, callback)
            for transaction, callback in session.info.get(_AFTER_COMMIT_KEY, [])
            if not _within(transaction, previous_transaction)
        ]
        session.info[_AFTER_COMMIT_KEY] = kept


def dialect_insert(bind: sa.Engine | sa.Connection) -> Any:
    """The `insert` construct of the bind's dialect, for ON CONFLICT (upserts, skipped duplicates):
    Postgres in production, SQLite on the embedded setup; both spell it the same way."""
    if bind.dialect.name == "postgresql":
        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


def server_closed(dbapi_connection: Any) -> bool:
    """Whether the server has ended this idle client connection, asked of the socket without a round
    trip.

    A connection resting in the pool has nothing to read: the server sends nothing unasked, except
    when it ends the session (a restart, `pg_terminate_backend`, an idle timeout), when it sends a
    FATAL message and closes the socket. So a readable socket means the connection is dead.
    """
    if getattr(dbapi_connection, "closed", False):
        return True
    fileno = dbapi_connection.fileno()
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fileno, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fileno], [], [], 0)  # Windows: no poll(); sockets work here
    return bool(readable)


def check_connections_on_checkout(engine: sa.Engine) -> None:
    """Replace connections the server has closed as the pool hands them out.

    This stands in for `pool_pre_ping`, which costs a `SELECT 1` round trip on every checkout: on the
    signal ingest path that was a tenth of the web process's CPU and a sixth of Postgres's per request
    (bench/ingest.py). The socket check sees every way a server ends a connection; what it cannot see
    is a peer gone silently (a network cut): TCP keepalives (`TCP_KEEPALIVES`) find those within a
    minute or so, and until then a statement on such a connection fails (503), and the pool drops it.
    """

    @event.listens_for(engine, "checkout")
    def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        try:
            closed = server_closed(dbapi_connection)
        except (OSError, ValueError):  # no usable socket left to ask: as good as closed
            closed = True
        if closed:
            # The pool drops this connection and connects its slot anew before handing it out.
            raise sa.exc.DisconnectionError("the server closed this pooled connection")


# libpq connection options: probe an idle connection after 30 s, every 10 s, give up after 3 misses.
TCP_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


# The ingest path asks these of Flask-SQLAlchemy's scoped session on every signal; when the request has
# not used the session yet, the answers are known without building a Session object (and closing it at
# teardown), which is a few percent of that request's CPU.


def in_transaction(session: DbSession) -> bool:
    """Whether `session` holds an open transaction."""
    if isinstance(session, scoped_session):
        return session.registry.has() and session().in_transaction()
    return session.in_transaction()


def bind_of(session: DbSession) -> sa.Engine | sa.Connection:
    """`session.get_bind()`: the app's engine (or the connection a test put in its place)."""
    if session is db.session and not session.registry.has():
        return db.engine
    return session.get_bind()
