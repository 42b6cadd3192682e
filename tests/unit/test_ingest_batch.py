"""The Postgres group-commit ingest, with a stand-in cursor: which row answers which request, and
which failures are run again."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg2.errors
import pytest

from shared.models import Side, SignalStatus
from shared.signals import auth, batching

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _item(signature: str, key: str | None = None, client_id: int = 7) -> batching._BatchItem:
    client = auth.ClientIdentity(id=client_id, owner_id=1, account_id=2)
    values = {
        "instrument": "EURUSD",
        "side": Side.BUY,
        "volume": Decimal("0.10"),
        "price": Decimal("1.1000"),
        "sl": None,
        "tp": None,
        "comment": signature,
        "status": SignalStatus.PENDING,
        "ttl_seconds": 120,
        "expires_at": NOW,
        "idempotency_key": key,
        "signature": signature,
        "body_sha256": "b" * 64,
        "created_at": NOW,
    }
    return batching._batch_item(client, values, {"idempotency_key": key})


def _row(item: batching._BatchItem, signal_id: int) -> tuple[Any, ...]:
    values = {name: None for name in batching._SIGNAL_COLUMNS}
    values.update(
        id=signal_id,
        owner_id=1,
        account_id=2,
        client_id=item.client_id,
        side="buy",
        status="pending",
        signature=item.signature,
        idempotency_key=item.idempotency_key,
        expires_at=NOW,
        created_at=NOW,
    )
    return tuple(values[name] for name in batching._SIGNAL_COLUMNS)


class Cursor:
    """Answers EXECUTE with the rows given, or raises the errors given first."""

    def __init__(self, rows: list[tuple[Any, ...]], errors: list[Exception] | None = None):
        self.rows, self.errors, self.executed = rows, list(errors or []), []

    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append(sql.split()[0])
        if sql.startswith("EXECUTE") and self.errors:
            raise self.errors.pop(0)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def close(self) -> None:
        pass


def test_each_item_gets_the_row_made_from_it_and_duplicates_get_none():
    a, b, c = _item("sig-a"), _item("sig-b", key="k"), _item("sig-c")
    replay_of_a = _item("sig-a")  # the same signed request again, in the same batch
    other_key_for_b = _item("sig-b", key="other")  # b's signature resent under another key
    # The statement returns inserted rows in its own order, and c was not inserted (revoked, say).
    cursor = Cursor([_row(b, 11), _row(a, 10)])
    results = batching._ingest_batch(cursor, [a, other_key_for_b, b, replay_of_a, c])
    assert [r.id if r else None for r in results] == [10, None, 11, None, None]
    assert results[0].side is Side.BUY and results[2].idempotency_key == "k"


def test_a_signature_sent_under_two_keys_gets_the_row_for_the_key_that_was_inserted():
    # The first copy's key was already used for another body, so only the second was inserted.
    reused_key, fresh_key = _item("sig-x", key="used"), _item("sig-x", key="fresh")
    results = batching._ingest_batch(Cursor([_row(fresh_key, 12)]), [reused_key, fresh_key])
    assert [r.id if r else None for r in results] == [None, 12]


def test_the_batch_json_keeps_decimals_exact_and_timestamps_aware():
    item = _item("sig")
    assert '"volume": "0.10"' in item.json and '"price": "1.1000"' in item.json
    assert '"created_at": "2026-11-21T12:00:00+00:00"' in item.json
    assert '"side": "buy"' in item.json and '"status": "pending"' in item.json


class Pooled:
    def __init__(self, cursor: Cursor):
        self.info: dict[str, Any] = {}
        self.driver_connection = self
        self.autocommit = False
        self.closed = 0
        self._cursor = cursor
        self.returned = False

    def cursor(self) -> Cursor:
        return self._cursor

    def close(self) -> None:
        self.returned = True


class Engine:
    def __init__(self, pooled: Pooled):
        self.pooled = pooled

    def raw_connection(self) -> Pooled:
        return self.pooled


@pytest.mark.parametrize(
    "error",
    [psycopg2.errors.DeadlockDetected("deadlock detected"), psycopg2.errors.InvalidSqlStatementName("gone")],
)
def test_a_deadlock_or_a_lost_prepared_statement_is_run_once_more_then_given_up(error):
    item = _item("sig")
    once = Cursor([_row(item, 5)], errors=[error])
    pooled = Pooled(once)
    assert batching._ingest_autocommit(Engine(pooled), [item])[0].id == 5  # type: ignore[arg-type]
    assert pooled.returned and pooled.autocommit is False  # as it was handed out
    if isinstance(error, psycopg2.errors.InvalidSqlStatementName):
        assert once.executed == ["PREPARE", "EXECUTE", "PREPARE", "EXECUTE"]  # prepared anew
    else:
        assert once.executed == ["PREPARE", "EXECUTE", "EXECUTE"]

    twice = Cursor([_row(item, 5)], errors=[error, error])
    with pytest.raises(type(error)):
        batching._ingest_autocommit(Engine(Pooled(twice)), [item])  # type: ignore[arg-type]
    assert twice.executed.count("EXECUTE") == 2


def test_other_database_errors_are_not_run_again():
    item = _item("sig")
    cursor = Cursor([], errors=[psycopg2.errors.UniqueViolation("no")])
    with pytest.raises(psycopg2.errors.UniqueViolation):
        batching._ingest_autocommit(Engine(Pooled(cursor)), [item])  # type: ignore[arg-type]
    assert cursor.executed.count("EXECUTE") == 1


def test_an_engine_let_go_takes_its_group_commit_with_it():
    import gc

    import sqlalchemy as sa

    engine = sa.create_engine("sqlite://")
    before = len(batching._coalescers)
    assert batching._batches(engine) is batching._batches(engine)  # one per engine
    assert len(batching._coalescers) == before + 1
    del engine
    gc.collect()
    assert len(batching._coalescers) == before


class StatementCursor(Cursor):
    """Stands in for Postgres running the batch statement: every signal of the batch is inserted,
    unless one has the comment "refused", which fails the whole statement as a DataError would."""

    def __init__(self) -> None:
        super().__init__([])
        self.batches: list[list[str]] = []

    def execute(self, sql: str, params: Any = None) -> None:
        super().execute(sql, params)
        if sql.startswith("EXECUTE"):
            batch = json.loads(params[0])
            self.batches.append([signal["comment"] for signal in batch])
            if any(signal["comment"] == "refused" for signal in batch):
                raise psycopg2.errors.NumericValueOutOfRange("numeric field overflow")
            self.rows = [
                _row(_item(signal["signature"], key=signal["idempotency_key"]), 100 + n)
                for n, signal in enumerate(batch)
            ]


def test_a_signal_the_database_refuses_fails_only_its_own_request_not_its_batch_mates():
    cursor = StatementCursor()
    items = [_item("good-1"), _item("refused"), _item("good-2")]
    outcomes = batching._ingest_isolating_failures(Engine(Pooled(cursor)), items)  # type: ignore[arg-type]
    # The whole batch failed once (nothing stored), then each signal ran alone.
    assert cursor.batches == [["good-1", "refused", "good-2"], ["good-1"], ["refused"], ["good-2"]]
    assert isinstance(outcomes[1], psycopg2.errors.NumericValueOutOfRange)
    assert [o.signature for o in (outcomes[0], outcomes[2])] == ["good-1", "good-2"]  # type: ignore[union-attr]


def test_a_lone_signal_the_database_refuses_raises_without_a_second_try():
    cursor = StatementCursor()
    with pytest.raises(psycopg2.errors.NumericValueOutOfRange):
        batching._ingest_isolating_failures(Engine(Pooled(cursor)), [_item("refused")])  # type: ignore[arg-type]
    assert cursor.batches == [["refused"]]
