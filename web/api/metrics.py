"""Prometheus metrics, computed from the database at scrape time.

Reading them from the rows the workers write (rather than from counters inside each worker process)
keeps them right however many workers run on however many machines.
"""

from __future__ import annotations

from flask import Blueprint, Response

from shared.core.db import utcnow
from shared.metrics import queries, task_durations
from web.extensions import db

blp = Blueprint("metrics", __name__)

_LAG_BUCKETS = (5, 10, 15, 30, 60, 120, 300, 600)
_DURATION_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000)


def _label(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _task_durations(tasks: list[task_durations.TaskDurations]) -> list[str]:
    name = "tradeguard_task_duration_seconds"
    lines = [
        f"# HELP {name} How long Celery tasks took, measured in the workers.",
        f"# TYPE {name} histogram",
    ]
    for task in tasks:
        label = _label(task.task)
        lines.extend(f'{name}_bucket{{task="{label}",le="{le}"}} {count}' for le, count in task.buckets)
        lines.append(f'{name}_sum{{task="{label}"}} {task.sum_seconds}')
        lines.append(f'{name}_count{{task="{label}"}} {task.count}')
    lines += [
        "# HELP tradeguard_tasks_total Celery task runs, by task and outcome (success, failure, retry).",
        "# TYPE tradeguard_tasks_total counter",
    ]
    for task in tasks:
        lines.extend(
            f'tradeguard_tasks_total{{task="{_label(task.task)}",outcome="{_label(outcome)}"}} {count}'
            for outcome, count in task.outcomes.items()
        )
    return lines


def _histogram(name: str, help_text: str, values: list[float], buckets: tuple[float, ...]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for bound in buckets:
        lines.append(f'{name}_bucket{{le="{bound}"}} {sum(1 for v in values if v <= bound)}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {len(values)}')
    lines.append(f"{name}_sum {sum(values)}")
    lines.append(f"{name}_count {len(values)}")
    return lines


@blp.get("/metrics")
def metrics() -> Response:
    figures = queries.sync_figures(db.session, utcnow())
    lags = figures.lags_seconds

    lines = [
        "# HELP tradeguard_accounts Broker accounts known to TradeGuard.",
        "# TYPE tradeguard_accounts gauge",
        f"tradeguard_accounts {figures.accounts}",
        "# HELP tradeguard_accounts_never_synced Accounts without a successful reconciliation yet.",
        "# TYPE tradeguard_accounts_never_synced gauge",
        f"tradeguard_accounts_never_synced {figures.accounts - len(lags)}",
        "# HELP tradeguard_sync_lag_max_seconds Age of the stalest successful reconciliation.",
        "# TYPE tradeguard_sync_lag_max_seconds gauge",
        f"tradeguard_sync_lag_max_seconds {max(lags) if lags else 0}",
        *_histogram(
            "tradeguard_sync_lag_seconds", "Age of each account's last reconciliation.", lags, _LAG_BUCKETS
        ),
        *_histogram(
            "tradeguard_sync_duration_milliseconds",
            "How long each account's last reconciliation took.",
            figures.durations_ms,
            _DURATION_BUCKETS_MS,
        ),
        "# HELP tradeguard_reconciliation_events_total Reconciliation events recorded, by type.",
        "# TYPE tradeguard_reconciliation_events_total counter",
        *[
            f'tradeguard_reconciliation_events_total{{type="{_label(kind)}"}} {count}'
            for kind, count in figures.events_by_type
        ],
        "# HELP tradeguard_breakers_open Accounts backed off by their circuit breaker right now.",
        "# TYPE tradeguard_breakers_open gauge",
        f"tradeguard_breakers_open {figures.open_breakers}",
        "# HELP tradeguard_breaker_openings_total Times any account's circuit breaker opened.",
        "# TYPE tradeguard_breaker_openings_total counter",
        f"tradeguard_breaker_openings_total {figures.breaker_openings}",
        *_task_durations(task_durations.read(db.session)),
    ]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
