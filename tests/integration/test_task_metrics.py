"""Task durations on Postgres: exact under concurrent recorders, and never in the caller's way."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from shared.core.db import db
from shared.metrics import task_durations

THREADS = 8
EACH = 25
# Exact in binary floating point, so the sums can be compared exactly; one per bucket region.
DURATIONS = (0.03125, 0.5, 4.0, 200.0)


def test_concurrent_records_from_many_threads_count_and_sum_exactly(committed_db):
    engine = db.engine
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(EACH):
                seconds = DURATIONS[(n + i) % len(DURATIONS)]
                task_durations.record(engine, "tests.busy", seconds, "failure" if i % 5 == 0 else "success")
        except BaseException as exc:  # reported below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    observed = [DURATIONS[(n + i) % len(DURATIONS)] for n in range(THREADS) for i in range(EACH)]
    (busy,) = task_durations.read(committed_db)
    assert busy.task == "tests.busy"
    assert busy.count == THREADS * EACH == len(observed)
    assert busy.sum_seconds == sum(observed)
    assert busy.outcomes == {"failure": THREADS * 5, "success": THREADS * 20}
    buckets = dict(busy.buckets)
    assert buckets["0.05"] == observed.count(0.03125)
    assert buckets["0.5"] == buckets["2.5"] == observed.count(0.03125) + observed.count(0.5)
    assert buckets["5"] == buckets["120"] == len(observed) - observed.count(200.0)
    assert buckets["+Inf"] == len(observed)


def test_recording_twice_adds_up(committed_db):
    task_durations.record(db.engine, "tests.twice", 0.2, "success")
    task_durations.record(db.engine, "tests.twice", 0.3, "success")
    (twice,) = task_durations.read(committed_db)
    assert (twice.count, twice.sum_seconds, twice.outcomes) == (2, 0.5, {"success": 2})
    assert dict(twice.buckets)["0.1"] == 0 and dict(twice.buckets)["0.25"] == 1
    assert dict(twice.buckets)["0.5"] == 2


def test_a_failed_record_leaves_the_callers_transaction_usable(db_session):
    # Inside db_session the engine is the test's connection, in a transaction: record takes a
    # savepoint, so its failure (an outcome too long for the column) rolls back only itself.
    connection = db.engine
    connection.execute(sa.text("CREATE TEMPORARY TABLE caller_work (n int)"))
    connection.execute(sa.text("INSERT INTO caller_work VALUES (1)"))
    with pytest.raises(sa.exc.DataError):
        task_durations.record(connection, "tests.broken", 0.1, "x" * 17)
    task_durations.record(connection, "tests.fine", 0.1, "success")
    assert connection.scalar(sa.text("SELECT count(*) FROM caller_work")) == 1
    assert [t.task for t in task_durations.read(connection)] == ["tests.fine"]
