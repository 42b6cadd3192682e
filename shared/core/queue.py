"""The task-queue seam: the names of the workers' tasks, and a way to send one by name.

Whatever enqueues work (an approval in the web, a beat sweep in a worker) goes through here, never by
importing `workers`: the workers build the web's app, so the web importing the workers would make a
cycle. A `TaskQueue` is a Celery *client*, configured from `celeryconfig`; it runs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from celery import Celery

# The workers' tasks, by the name they are registered and routed under (workers/tasks.py, celeryconfig).
EXPIRE_SIGNALS = "tradeguard.expire_signals"
EXECUTE_SIGNAL = "tradeguard.execute_signal"
DISPATCH_APPROVED = "tradeguard.dispatch_approved"
RECONCILE_TICK = "tradeguard.reconcile_tick"
RECONCILE_ACCOUNTS = "tradeguard.reconcile_accounts"
CHECK_GUARDS = "tradeguard.check_guards"
EXECUTE_ALERT = "tradeguard.execute_alert"
GUARD_SWEEP = "tradeguard.guard_sweep"
GUARD_WATCH = "tradeguard.guard_watch"
DELIVER_WEBHOOK = "tradeguard.deliver_webhook"
DELIVER_WEBHOOKS = "tradeguard.deliver_webhooks"
SWEEP_WEBHOOKS = "tradeguard.sweep_webhooks"
ROLL_UP_SNAPSHOTS = "tradeguard.roll_up_snapshots"

# Queues. Orders (and the small periodic jobs) go on the default one; reconciliation batches on their
# own, so that an approved order never waits behind a batch of slow terminals.
DEFAULT_QUEUE = "celery"
RECONCILE_QUEUE = "reconcile"
# The guards' readings and closes: an alert's webhooks and close never wait behind reconciliation or
# another alert's work on the orders' queue (celeryconfig says why, with the figures).
GUARDS_QUEUE = "guards"


class Queue(Protocol):
    """What code that sends tasks needs: `TaskQueue`, or a recording stand-in in tests."""

    def send(self, task_name: str, args: Sequence[Any], **options: Any) -> None: ...

    def check_broker(self, timeout_seconds: float) -> None: ...


class TaskQueue:
    """Sends tasks by name. Given the worker's own Celery app it uses that one; otherwise it makes a
    client from `celeryconfig` on first use, so that building an app that never enqueues (a CLI
    command, most tests) never touches the broker's settings."""

    def __init__(self, celery: Celery | None = None):
        self._celery = celery
        self._lock = threading.Lock()

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            with self._lock:
                if self._celery is None:
                    # Not Celery's "current app": in a process that also has the worker's app (tests),
                    # that one stays current. Its settings are celeryconfig's, read from the process's
                    # environment (as the worker's are), whatever Settings the Flask app was built with.
                    client = Celery("tradeguard", set_as_current=False)
                    client.config_from_object("celeryconfig")
                    self._celery = client
        return self._celery

    def send(self, task_name: str, args: Sequence[Any], **options: Any) -> None:
        self.celery.send_task(task_name, args=list(args), **options)

    def check_broker(self, timeout_seconds: float) -> None:
        """Raises when the broker does not accept a connection within the timeout (readiness)."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_seconds)

    def warm(self, timeout_seconds: float) -> None:
        """Do now what the first send would do: build the client, load the result backend that every
        send consults, connect and declare the queues. A web process calls it as it starts, so that
        the first approval it takes is not the one that waits (measured: 150 ms on a quiet machine,
        400 ms on a busy one). Raises like `check_broker` when the broker is not there; the first send
        then tries again."""
        celery = self.celery
        celery.backend  # noqa: B018 - loaded (and its modules imported) on first access
        with celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1, timeout=timeout_seconds)
            for queue in celery.amqp.queues.values():
                producer.maybe_declare(queue)
