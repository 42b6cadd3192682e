"""The Celery app and the task base class.

Workers build the Flask app inside the worker process (one per process, after the fork), run every
task in its app context and one database transaction, and remove the session afterwards. Every task's
duration is recorded in the database for /metrics (see `shared.metrics.task_durations`).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import click
from celery import Celery, Task
from celery.signals import (
    after_setup_logger,
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)
from flask import Flask

from shared.core.config import load_settings, start_line
from shared.core.logs import configure_logging

log = logging.getLogger(__name__)

celery_app = Celery("tradeguard", include=["workers.tasks"])
celery_app.config_from_object("celeryconfig")
if celery_app.conf.broker_url.startswith("filesystem:"):
    # kombu's filesystem transport, which lets a stopping worker stop waiting (see workers.broker).
    from workers.broker import TRANSPORT

    celery_app.conf.broker_transport = TRANSPORT

_flask_app: Flask | None = None
_flask_app_lock = threading.Lock()


def flask_app() -> Flask:
    """This process's Flask app, created on first use (after any fork).

    Locked: the reconciliation threads of a fresh pool process all ask at once, and each building its
    own app would mean its own engine and connection pool (and, measured, running out of connections).
    """
    global _flask_app
    if _flask_app is None:
        with _flask_app_lock:
            if _flask_app is None:
                from shared.core.extensions import TASK_QUEUE
                from shared.core.queue import TaskQueue
                from web import create_app

                app = create_app()
                # Follow-up tasks go out through this process's own Celery app and its connections.
                app.extensions[TASK_QUEUE] = TaskQueue(celery_app)
                _flask_app = app
    return _flask_app


@celeryd_init.connect
def _say_which_worker_and_what_it_uses(sender: str, options: dict[str, Any], **_: Any) -> None:
    """A worker's first log line: which worker it is (its name and queues), and which database and broker
    it uses. Sent before Celery's own start-up output, so logging is set up here (the same as the app
    would set it up)."""
    configure_logging()
    queues = options.get("queues") or sorted(celery_app.conf.task_queues)
    log.info(start_line(f"worker {sender} (queues: {', '.join(queues)})", load_settings()))


@celeryd_init.connect
def _name_the_database_sessions(sender: str, **_: Any) -> None:
    """Each worker's Postgres sessions carry its name (`application_name`, which libpq takes from
    PGAPPNAME), so that pg_stat_activity and a lock wait in the server's log say which worker holds or
    waits: "tradeguard guards", "tradeguard reconcile". Set before this process or its pool connects;
    an operator's own PGAPPNAME stands."""
    os.environ.setdefault("PGAPPNAME", f"tradeguard {sender.partition('@')[0]}")


@after_setup_logger.connect
def _say_that_beat_starts_and_what_it_uses(**_: Any) -> None:
    """Beat's first log line (right after its banner): Celery has just set up its logging. beat_init would
    come after RedBeat's lock, which a standby beat waits for, maybe for ever."""
    command = click.get_current_context(silent=True)
    if command is not None and command.info_name == "beat":
        log.info(start_line("beat", load_settings()))


@worker_init.connect
def _refuse_to_start_with_the_wrong_keys(**_: Any) -> None:
    """Build the app in the main process, before any task: its start-up runs the key check
    (shared.identity.key_check), so a worker configured with other keys than the stored secrets were
    written with stops here, saying why, instead of failing every task that needs a secret; so does one
    that cannot build its app at all. (Celery logs and ignores an Exception from a signal handler;
    SystemExit stops the worker.)"""
    try:
        flask_app()
    except Exception as exc:
        # Wrong keys (KeysDoNotMatch), a bad setting, or code it cannot import: every task would fail.
        log.critical("refusing to start: %s", exc)
        raise SystemExit(f"TradeGuard worker refuses to start: {type(exc).__name__}: {exc}") from None


@worker_init.connect
def _freeze_the_start_up_heap(**_: Any) -> None:
    """Keep what start-up built (the app, every module) out of the garbage collector's sight, as the gc
    docs advise before forking: the pool processes share those pages instead of copying them when a
    collection walks them, and the collection at interpreter exit, which walked them all, no longer
    does (measured: up to 1.6 s of a stop, of honcho's 5-s grace, down to 0.3 s)."""
    gc.freeze()


# A reconciliation batch keeps a hundred threads waiting on terminals, each waking briefly when its reply
# arrives. CPython's default 5 ms switch interval makes every such wake-up force a GIL handoff; 50 ms
# measured a quarter less CPU per account (bench/fanout.py), and no thread here holds the GIL for long.
SWITCH_INTERVAL_SECONDS = 0.05


@worker_process_init.connect
def _tune_thread_switching(**_: Any) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


@worker_process_init.connect
def _leave_the_workers_process_group(**_: Any) -> None:
    """A pool process stops when its worker tells it to, not when the worker's process group is signalled.

    honcho stops a process by signalling its whole group (as `kill -- -PGID` and supervisord's stopasgroup
    do). Celery sets SIGTERM back to its default in pool processes, so they died at once, mid-task
    (ERROR `Process 'ForkPoolWorker-1' ... exited with 'signal 15 (SIGTERM)'`); the pool started new ones
    and the worker's warm shutdown then waited for those, past honcho's grace period. In a group of its
    own a pool process gets only what its worker sends it: the pool's stop at a warm shutdown, SIGTERM
    or SIGKILL at a cold one or a hard time limit. It still never outlives the worker: celery has the
    kernel SIGKILL a pool process when its parent dies (PR_SET_PDEATHSIG, celery.concurrency.prefork)."""
    os.setpgid(0, 0)
    # Out of the terminal's foreground group, a write to it would stop the process under `stty tostop`.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)


@worker_process_init.connect
def _dispose_inherited_engine(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections: two processes writing to one
    # socket corrupts both. Dispose the inherited pool (without closing the parent's sockets).
    if _flask_app is not None:
        from shared.core.db import db

        with _flask_app.app_context():
            db.engine.dispose(close=False)


@worker_process_init.connect
def _warm_the_task_queue(**_: Any) -> None:
    """A forked pool process starts without the parent's broker connection: made now, not on its first
    send (`extensions.warm_task_queue`)."""
    if _flask_app is not None:
        from shared.core.extensions import warm_task_queue

        warm_task_queue(_flask_app)


class DatabaseTask(Task):
    """Runs the task in the Flask app context and one transaction: commit on success, roll back on
    error. Follow-up tasks registered with `shared.core.db.after_commit` are sent only after the commit."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from shared.core.db import db

        with flask_app().app_context():
            try:
                result = super().__call__(*args, **kwargs)
                db.session.commit()
                return result
            except BaseException:
                db.session.rollback()
                raise
            finally:
                db.session.remove()


# Start times by task id (a list: an eager retry runs again under the same id inside the first run).
# Entries of a process killed mid-task die with it.
_started: dict[str, list[float]] = {}
_OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}


@task_prerun.connect
def _start_clock(task_id: str, **_: Any) -> None:
    _started.setdefault(task_id, []).append(time.perf_counter())


@task_postrun.connect
def _record_duration(task_id: str, task: Task, state: str | None = None, **_: Any) -> None:
    """One observation per run, in its own transaction on its own connection. Never raises: a task's
    outcome must not depend on its metrics (a database down, the table not migrated yet)."""
    try:
        starts = _started.get(task_id)
        if not starts:
            return
        seconds = time.perf_counter() - starts.pop()
        if not starts:
            _started.pop(task_id, None)
        outcome = _OUTCOMES.get(state or "", (state or "unknown").lower()[:16])

        from shared.core.db import db
        from shared.metrics import task_durations

        with flask_app().app_context():
            task_durations.record(db.engine, task.name, seconds, outcome)
    except Exception:
        log.warning("task %s[%s]: recording its duration failed", task.name, task_id, exc_info=True)
