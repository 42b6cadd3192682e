"""Task durations: the bucket rule, and recording through the Celery hooks on the embedded database."""

import logging
import math
from types import SimpleNamespace

import pytest
from flask_migrate import upgrade

from shared.core.config import load_settings
from shared.core.db import db
from shared.metrics import task_durations
from shared.metrics.task_durations import LABELS, buckets_for
from web import create_app


def test_a_duration_counts_toward_every_bound_at_or_above_it():
    assert buckets_for(0) == task_durations.BUCKETS
    assert buckets_for(0.05) == task_durations.BUCKETS  # le is inclusive
    assert buckets_for(0.0501) == (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, math.inf)
    assert buckets_for(3) == (5, 10, 30, 60, 120, math.inf)
    assert buckets_for(120) == (120, math.inf)
    assert buckets_for(120.001) == (math.inf,)
    assert buckets_for(1e12) == (math.inf,)
    with pytest.raises(ValueError):
        buckets_for(math.nan)


def test_bounds_are_labelled_as_prometheus_reads_them():
    assert LABELS == ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "+Inf")


@pytest.fixture
def sqlite_app(tmp_path):
    app = create_app(load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}))
    yield app
    with app.app_context():
        db.engine.dispose()


def _migrated(app):
    with app.app_context():
        upgrade()
    return app


def _read(app):
    with app.app_context():
        return {t.task: t for t in task_durations.read(db.session)}


def test_record_upserts_counts_and_sums_on_sqlite(sqlite_app):
    app = _migrated(sqlite_app)
    with app.app_context():
        task_durations.record(db.engine, "t", 0.5, "success")
        task_durations.record(db.engine, "t", 3.0, "success")
        task_durations.record(db.engine, "t", 0.25, "failure")
        with pytest.raises(ValueError):
            task_durations.record(db.engine, "t", -1.0, "success")
    t = _read(app)["t"]
    assert (t.count, t.sum_seconds, t.outcomes) == (3, 3.75, {"failure": 1, "success": 2})
    assert dict(t.buckets) == {
        **dict.fromkeys(("0.05", "0.1"), 0),
        **dict.fromkeys(("0.25",), 1),
        **dict.fromkeys(("0.5", "1", "2.5"), 2),
        **dict.fromkeys(("5", "10", "30", "60", "120", "+Inf"), 3),
    }


def test_the_worker_hooks_record_each_run_with_its_outcome(sqlite_app, monkeypatch):
    import workers.celery_app as hooks

    app = _migrated(sqlite_app)
    monkeypatch.setattr(hooks, "flask_app", lambda: app)
    task = SimpleNamespace(name="tradeguard.example")
    for task_id, state in (("a", "SUCCESS"), ("b", "FAILURE"), ("c", "RETRY"), ("d", "REVOKED")):
        hooks._start_clock(task_id=task_id)
        hooks._record_duration(task_id=task_id, task=task, state=state)
    # An eager retry runs again under the same id inside the first run: two runs, both recorded.
    hooks._start_clock(task_id="e")
    hooks._start_clock(task_id="e")
    hooks._record_duration(task_id="e", task=task, state="SUCCESS")
    hooks._record_duration(task_id="e", task=task, state="RETRY")
    # A postrun without a prerun (a handler connected mid-task) is not an observation.
    hooks._record_duration(task_id="f", task=task, state="SUCCESS")

    recorded = _read(app)["tradeguard.example"]
    assert recorded.outcomes == {"failure": 1, "retry": 2, "revoked": 1, "success": 2}
    assert recorded.count == 6 and 0 <= recorded.sum_seconds < 1
    assert hooks._started == {}


def test_a_failure_to_record_is_logged_and_never_raised(sqlite_app, monkeypatch, caplog):
    import workers.celery_app as hooks

    monkeypatch.setattr(hooks, "flask_app", lambda: sqlite_app)  # not migrated: no tables
    hooks._start_clock(task_id="x")
    with caplog.at_level(logging.WARNING, logger="workers.celery_app"):
        hooks._record_duration(task_id="x", task=SimpleNamespace(name="tradeguard.example"), state="SUCCESS")
    assert "tradeguard.example[x]: recording its duration failed" in caplog.text
    assert "no such table" in caplog.text
    assert hooks._started == {}
