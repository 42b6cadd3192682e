"""A web process connects its task queue to the broker as it starts (gunicorn's post_worker_init), so that
the first approval it takes does not build the Celery client on its way out; a broker that is down does
not stop it from starting."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
from celery import Celery
from flask import Flask

from shared.core.extensions import TASK_QUEUE, warm_task_queue
from shared.core.queue import TaskQueue


def connected(client: Celery) -> bool:
    with client.producer_or_acquire() as producer:
        return bool(producer.connection.connected)


def test_a_warmed_queue_has_connected_and_sends_as_before():
    client = Celery("warm-test", broker="memory://")
    queue = TaskQueue(client)
    assert not connected(client)
    queue.warm(timeout_seconds=1.0)
    assert connected(client)  # the producer pool's connection, which the first send will use
    queue.send("tradeguard.example", [1])
    with client.connection_for_read() as connection:
        message = connection.SimpleQueue("celery").get(timeout=1)
        assert message.headers["task"] == "tradeguard.example"


def test_warming_against_a_broker_that_is_down_raises_at_once():
    queue = TaskQueue(Celery("warm-test", broker="redis://127.0.0.1:1/0"))
    began = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - whatever the transport raises
        queue.warm(timeout_seconds=1.0)
    assert time.monotonic() - began < 10


def app_with(queue: object) -> Flask:
    app = Flask("warm-test")
    app.extensions[TASK_QUEUE] = queue
    return app


def test_the_web_process_starts_whether_or_not_the_broker_is_there(caplog):
    down = TaskQueue(Celery("warm-test", broker="redis://127.0.0.1:1/0"))
    with caplog.at_level(logging.WARNING, logger="shared.core.extensions"):
        warm_task_queue(app_with(down))  # does not raise
    assert "task queue not warmed" in caplog.text

    up = TaskQueue(Celery("warm-test", broker="memory://"))
    warm_task_queue(app_with(up))
    assert connected(up.celery)


def test_a_queue_that_is_not_a_broker_client_is_left_alone():
    recorded = SimpleNamespace(sent=[])  # a stand-in such as the tests' RecordingQueue
    warm_task_queue(app_with(recorded))
    assert recorded.sent == []


def test_each_worker_pool_process_warms_its_queue_as_it_starts(caplog, monkeypatch):
    """The same for a Celery pool process (worker_process_init): a fork starts without the parent's
    broker connection, and its first send would be a guard check's or an alert's."""
    from celery.signals import worker_process_init

    import workers.celery_app as celery_app_module

    assert celery_app_module._warm_the_task_queue in [r[1]() for r in worker_process_init.receivers]
    up = TaskQueue(Celery("warm-test", broker="memory://"))
    monkeypatch.setattr(celery_app_module, "_flask_app", app_with(up))
    celery_app_module._warm_the_task_queue()
    assert connected(up.celery)

    down = TaskQueue(Celery("warm-test", broker="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(celery_app_module, "_flask_app", app_with(down))
    with caplog.at_level(logging.WARNING, logger="shared.core.extensions"):
        celery_app_module._warm_the_task_queue()  # does not raise
    assert "task queue not warmed" in caplog.text

    monkeypatch.setattr(celery_app_module, "_flask_app", None)
    celery_app_module._warm_the_task_queue()  # no app built in this process: nothing to warm
