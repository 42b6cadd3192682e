"""Which queue each task goes to: orders must never wait behind reconciliation batches; and which worker
each database session belongs to."""

from __future__ import annotations

import os

import pytest

from workers.celery_app import celery_app


def queue_of(task_name: str) -> str:
    return str(celery_app.amqp.router.route({}, task_name)["queue"].name)


def test_reconciliation_batches_have_their_own_queue():
    assert queue_of("tradeguard.reconcile_accounts") == "reconcile"


@pytest.mark.parametrize(
    "task_name",
    [
        "tradeguard.execute_signal",
        "tradeguard.expire_signals",
        "tradeguard.dispatch_approved",
        "tradeguard.reconcile_tick",
    ],
)
def test_orders_and_periodic_jobs_stay_on_the_default_queue(task_name):
    assert queue_of(task_name) == "celery"


@pytest.mark.parametrize(
    "task_name",
    [
        "tradeguard.check_guards",
        "tradeguard.execute_alert",
        "tradeguard.guard_watch",
        "tradeguard.guard_sweep",
    ],
)
def test_the_guards_readings_and_closes_have_their_own_queue(task_name):
    # Not behind the orders worker's webhook deliveries (alert.pending among them), nor they behind these.
    assert queue_of(task_name) == "guards"


def test_webhook_deliveries_stay_on_the_default_queue():
    assert queue_of("tradeguard.deliver_webhook") == "celery"
    assert queue_of("tradeguard.deliver_webhooks") == "celery"


def test_a_worker_started_without_a_queue_list_consumes_all_three():
    assert set(celery_app.amqp.queues) == {"celery", "reconcile", "guards"}


def test_each_workers_database_sessions_carry_its_name_unless_the_operator_named_them(monkeypatch):
    from workers.celery_app import _name_the_database_sessions

    monkeypatch.setenv("PGAPPNAME", "")  # so that monkeypatch puts back what was there, if anything
    monkeypatch.delenv("PGAPPNAME")
    _name_the_database_sessions(sender="guards@box-1")
    assert os.environ["PGAPPNAME"] == "tradeguard guards"

    monkeypatch.setenv("PGAPPNAME", "ops-chosen")
    _name_the_database_sessions(sender="reconcile@box-1")
    assert os.environ["PGAPPNAME"] == "ops-chosen"
