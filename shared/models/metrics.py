"""Task duration metrics, written by every worker and read by /metrics."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from shared.core.db import db


class TaskDurationTotal(db.Model):  # type: ignore[name-defined]
    """How many times a Celery task ran to each outcome, and the seconds those runs took in all.

    Written by every worker with an atomic upsert (`shared.metrics.task_durations.record`),
    read by /metrics."""

    __tablename__ = "task_duration_totals"

    task: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    outcome: Mapped[str] = mapped_column(sa.String(16), primary_key=True)  # success, failure, retry, ...
    count: Mapped[int] = mapped_column(sa.BigInteger)
    sum_seconds: Mapped[float] = mapped_column(sa.Float)


class TaskDurationBucket(db.Model):  # type: ignore[name-defined]
    """A task's duration histogram, cumulative as Prometheus shows it: `count` runs took at most `le`
    seconds ("0.05" ... "+Inf"). Written like `TaskDurationTotal`, in the same transaction."""

    __tablename__ = "task_duration_buckets"

    task: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    le: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger)
