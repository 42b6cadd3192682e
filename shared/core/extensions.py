"""What a process keeps on its Flask app, one key per fact, with a typed accessor for each: the views
and the workers read them alike. (The app is built by `web.create_app`, in the web and in each worker
process.)"""

from __future__ import annotations

import logging
from typing import cast

from flask import Flask, current_app

from shared.core.config import Settings
from shared.core.crypto import SecretBox
from shared.core.queue import Queue, TaskQueue

log = logging.getLogger(__name__)

SETTINGS = "tradeguard.settings"
SECRET_BOX = "tradeguard.secret_box"  # noqa: S105 - the key it is kept under, not a secret
TERMINALS = "tradeguard.terminals"
TASK_QUEUE = "tradeguard.task_queue"


def _app(app: Flask | None) -> Flask:
    return app if app is not None else current_app


def settings(app: Flask | None = None) -> Settings:
    return cast(Settings, _app(app).extensions[SETTINGS])


def secret_box(app: Flask | None = None) -> SecretBox:
    return cast(SecretBox, _app(app).extensions[SECRET_BOX])


def declared_terminals(app: Flask | None = None) -> frozenset[str]:
    """The canonical URLs of the terminals the operator declared (TRADEGUARD_TERMINALS)."""
    return cast(frozenset[str], _app(app).extensions[TERMINALS])


def task_queue(app: Flask | None = None) -> Queue:
    return cast(Queue, _app(app).extensions[TASK_QUEUE])


def warm_task_queue(app: Flask) -> None:
    """Connect this process's task queue to the broker now, not on its first send: a web worker's first
    approval, or a forked Celery pool process's first send (the watch tick that saw a breach, the first
    alert's webhooks), would otherwise build the client and connect on its way out (bench/approval.py;
    70 ms of CPU in a forked worker process on a quiet box). A broker that is down stops nothing: the
    first send tries again. A queue that is not a broker client (a test's recording one) is left alone."""
    queue = task_queue(app)
    if isinstance(queue, TaskQueue):
        try:
            queue.warm(timeout_seconds=2.0)
        except Exception as exc:
            log.warning("task queue not warmed (broker unreachable?): %s", exc)
