"""Task durations measured in the workers, kept in the database for /metrics.

Each finished task adds one observation with atomic upserts (no read-modify-write), so the counts
stay exact however many worker processes on however many machines record at once. The buckets are
stored cumulatively, as Prometheus exposes them: an observation counts toward every bound at or above
it. Changing `BUCKETS` later needs the tables emptied, or the old counts would not fit the new bounds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from shared.core.db import DbSession, dialect_insert
from shared.models import TaskDurationBucket, TaskDurationTotal

# Histogram bucket upper bounds, seconds; the last is +Inf, which every observation counts toward.
BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, math.inf)


def le_label(bound: float) -> str:
    """A bound as its `le` label value (and stored key): "0.05", "1", "+Inf"."""
    return "+Inf" if bound == math.inf else f"{bound:g}"


LABELS: tuple[str, ...] = tuple(le_label(bound) for bound in BUCKETS)


def buckets_for(seconds: float) -> tuple[float, ...]:
    """The bucket upper bounds a duration counts toward: every bound at or above it (`le` is
    inclusive), +Inf always included."""
    if math.isnan(seconds):
        raise ValueError("a duration cannot be NaN")
    return BUCKETS[bisect.bisect_left(BUCKETS, seconds) :]


_TOTALS = TaskDurationTotal.__table__
_BUCKETS = TaskDurationBucket.__table__


@contextmanager
def _own_transaction(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A transaction of its own: on an engine a fresh connection; on a connection already in a
    transaction a savepoint, so a failure here never rolls back the caller's work."""
    if isinstance(bind, sa.Connection):
        with bind.begin_nested() if bind.in_transaction() else bind.begin():
            yield bind
    else:
        with bind.begin() as connection:
            yield connection


def record(bind: sa.Engine | sa.Connection, task: str, seconds: float, outcome: str) -> None:
    """Add one observation of `task` taking `seconds` and ending in `outcome`, committed at once."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    insert = dialect_insert(bind)
    totals = insert(_TOTALS).values(task=task, outcome=outcome, count=1, sum_seconds=seconds)
    totals = totals.on_conflict_do_update(
        index_elements=[_TOTALS.c.task, _TOTALS.c.outcome],
        set_={
            "count": _TOTALS.c["count"] + 1,
            "sum_seconds": _TOTALS.c.sum_seconds + totals.excluded.sum_seconds,
        },
    )
    # One statement for all the bounds, always in ascending order: concurrent recorders lock the rows
    # in the same order and so never deadlock.
    buckets = insert(_BUCKETS).values(
        [{"task": task, "le": le_label(bound), "count": 1} for bound in buckets_for(seconds)]
    )
    buckets = buckets.on_conflict_do_update(
        index_elements=[_BUCKETS.c.task, _BUCKETS.c.le], set_={"count": _BUCKETS.c["count"] + 1}
    )
    with _own_transaction(bind) as connection:
        connection.execute(totals)
        connection.execute(buckets)


@dataclass(frozen=True)
class TaskDurations:
    """One task's histogram and its runs by outcome, as /metrics shows them."""

    task: str
    buckets: tuple[tuple[str, int], ...]  # (le, cumulative count) for every bound in BUCKETS
    count: int  # the +Inf bucket
    sum_seconds: float
    outcomes: dict[str, int]


def read(session: DbSession | sa.Connection) -> list[TaskDurations]:
    """Every task's durations, by task name.

    The buckets come from one statement, so they are one consistent snapshot: monotonic, and the
    count (the +Inf bucket) agrees with them. The sum and the outcomes are read by a second statement
    and may be a few observations apart from the buckets while workers record.
    """
    counts: dict[str, dict[str, int]] = {}
    for task, le, count in session.execute(sa.select(_BUCKETS.c.task, _BUCKETS.c.le, _BUCKETS.c["count"])):
        counts.setdefault(task, {})[le] = count
    sums: dict[str, float] = {}
    outcomes: dict[str, dict[str, int]] = {}
    for task, outcome, count, total in session.execute(
        sa.select(_TOTALS.c.task, _TOTALS.c.outcome, _TOTALS.c["count"], _TOTALS.c.sum_seconds)
    ):
        sums[task] = sums.get(task, 0.0) + total
        outcomes.setdefault(task, {})[outcome] = count
    return [
        TaskDurations(
            task=task,
            buckets=tuple((le, counts.get(task, {}).get(le, 0)) for le in LABELS),
            count=counts.get(task, {}).get(LABELS[-1], 0),
            sum_seconds=sums.get(task, 0.0),
            outcomes=dict(sorted(outcomes.get(task, {}).items())),
        )
        for task in sorted(counts.keys() | outcomes.keys())
    ]
