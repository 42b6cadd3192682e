"""Celery settings. Every value is chosen on purpose; the comment says why.

Broker: Redis when REDIS_URL is set, else kombu's filesystem transport under instance/broker (needs no
server, and supports the fan-out exchanges that remote control and Flower use).
"""

from __future__ import annotations

from datetime import timedelta

from shared.core.config import load_settings
from shared.core.queue import (
    CHECK_GUARDS,
    DEFAULT_QUEUE,
    DISPATCH_APPROVED,
    EXECUTE_ALERT,
    EXPIRE_SIGNALS,
    GUARD_SWEEP,
    GUARD_WATCH,
    GUARDS_QUEUE,
    RECONCILE_ACCOUNTS,
    RECONCILE_QUEUE,
    RECONCILE_TICK,
    ROLL_UP_SNAPSHOTS,
    SWEEP_WEBHOOKS,
)

_settings = load_settings()

broker_url = _settings.broker_url
if not _settings.redis_url:
    _folder = _settings.broker_dir
    for _sub in ("queue", "control", "processed"):
        (_folder / _sub).mkdir(parents=True, exist_ok=True)
    # Messages written whole before a consumer can see them (shared.core.broker); the workers extend it.
    broker_transport = "shared.core.broker:FilesystemTransport"
    broker_transport_options = {
        "data_folder_in": str(_folder / "queue"),
        "data_folder_out": str(_folder / "queue"),
        "control_folder": str(_folder / "control"),
        "processed_folder": str(_folder / "processed"),
        "store_processed": False,
        # How often an idle consumer looks for messages (kombu's default: every second). It is also how
        # long a stopping worker may go on waiting (workers.broker), and how soon an approved order is
        # picked up. Polling ten times a second costs an idle worker 0.4 % of a core (measured; 0.1 % at 1 s).
        "polling_interval": 0.1,
    }
else:
    broker_transport_options = {
        # A task not acknowledged within this time is handed to another worker. It must exceed the
        # longest task (task_time_limit below) or a slow task would run twice.
        "visibility_timeout": 3600,
    }

# Three queues: orders (the small periodic jobs and webhook deliveries too) on the default queue,
# reconciliation batches on their own, so that an approved order never waits behind a batch of slow
# terminals, and the guards' readings and closes on theirs. On the default queue, 100 accounts breaching
# at once put their 200 readings and then their closes in front of their own `alert.pending` webhooks (2
# processes, first in first out): owners heard of an alert 5-15 s after it was raised, often after its
# close (bench/guards.py); on a queue of their own, 0.06 s at p50. The Procfile runs one worker per
# queue; a worker started without -Q (tests, benchmarks) consumes all three.
task_default_queue = DEFAULT_QUEUE
task_queues = {DEFAULT_QUEUE: {}, RECONCILE_QUEUE: {}, GUARDS_QUEUE: {}}
task_routes = {
    RECONCILE_ACCOUNTS: {"queue": RECONCILE_QUEUE},
    CHECK_GUARDS: {"queue": GUARDS_QUEUE},
    EXECUTE_ALERT: {"queue": GUARDS_QUEUE},
    GUARD_WATCH: {"queue": GUARDS_QUEUE},
    GUARD_SWEEP: {"queue": GUARDS_QUEUE},
    # Bulk upkeep of the snapshot history: beside reconciliation (which writes it), niced like it.
    ROLL_UP_SNAPSHOTS: {"queue": RECONCILE_QUEUE},
}

# Results are ignored unless a task opts in: beat and the API never read them, and storing them
# would only fill Redis.
task_ignore_result = True
result_backend = _settings.redis_url or None

# JSON only: pickle would let anyone who can write to the broker run code in the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

timezone = "UTC"
enable_utc = True

# Acknowledge after the task ran, so a worker that dies mid-task leaves the message for another
# worker. Tasks are written to be safe to run twice (they reload rows by id and use conditional
# updates), which is what makes late acks safe.
task_acks_late = True
task_reject_on_worker_lost = True
# One message at a time per process: with late acks, prefetching would park work behind a slow task.
worker_prefetch_multiplier = 1

# Time limits well below the visibility timeout (3600 s): a task is killed before Redis would hand
# its message to a second worker.
task_soft_time_limit = 240
task_time_limit = 300

# Flower shows tasks from these events.
worker_send_task_events = True
task_send_sent_event = True

# A restarting broker should not kill the worker; retry the connection at start-up too.
broker_connection_retry_on_startup = True

worker_hijack_root_logger = False
# A worker without an event loop (the filesystem broker) runs its timers on a thread that sleeps up to this
# long between checks, and a stop waits for that sleep to end (celery's default: 1 s of a 5-s grace).
worker_timer_precision = 0.1

beat_schedule_filename = str(_settings.instance_dir / "celerybeat-schedule")
if _settings.redis_url:
    # RedBeat keeps the schedule in Redis behind a lock: a second beat process (a standby, or one
    # started by mistake) waits for the lock instead of sending every tick twice.
    beat_scheduler = "redbeat.RedBeatScheduler"
    redbeat_redis_url = _settings.redis_url
    redbeat_key_prefix = "tradeguard:redbeat"
    # Fail-over timing; RedBeat's lock is a redis-py Lock with a TTL:
    # - the holder renews the TTL to redbeat_lock_timeout at the start of every tick, and beat ticks at
    #   least every beat_max_loop_interval seconds (sooner when an entry falls due);
    # - a standby blocks in Lock.acquire, retrying every beat_max_loop_interval seconds (celery's default,
    #   300 s, is what left nothing scheduled for 5 minutes), and ticks, sending whatever is due, as soon as
    #   it has the lock;
    # - a graceful stop (SIGTERM/SIGINT) releases the lock (RedBeatScheduler.close), a SIGKILL leaves it to
    #   expire.
    # So a killed holder is replaced within lock timeout + loop interval = 23 s, a stopped one within 3 s.
    # The holder, renewing at least every 3 s, keeps its lock through a stall of up to 17 s (a slow publish,
    # a Redis hiccup); one stalled longer loses it, and its next renewal raises LockNotOwnedError, which
    # ends that beat process instead of letting it tick beside the new holder (at most the rest of the tick
    # it was in overlaps). A wake-up every 3 s costs one Redis round trip; the 5-s sweep wakes it anyway.
    redbeat_lock_timeout = 20  # whole seconds: RedBeat renews with int(lock_timeout)
    beat_max_loop_interval = 3
beat_schedule = {
    "expire-pending-signals": {
        "task": EXPIRE_SIGNALS,
        "schedule": timedelta(seconds=_settings.expiry_sweep_seconds),
        # A sweep not started within one interval is pointless: the next tick does the same work.
        "options": {"expires": _settings.expiry_sweep_seconds},
    },
    "reconcile-accounts": {
        "task": RECONCILE_TICK,
        "schedule": timedelta(seconds=_settings.reconcile_interval_seconds),
        "options": {"expires": _settings.reconcile_interval_seconds},
    },
    "guard-watch": {
        "task": GUARD_WATCH,
        "schedule": timedelta(seconds=_settings.guard_watch_seconds),
        "options": {"expires": _settings.guard_watch_seconds},
    },
    "guard-sweep": {
        "task": GUARD_SWEEP,
        "schedule": timedelta(seconds=_settings.guard_sweep_seconds),
        "options": {"expires": _settings.guard_sweep_seconds},
    },
    # The safety net of webhook deliveries whose message was lost (shared.notifications.webhooks).
    "sweep-webhook-deliveries": {
        "task": SWEEP_WEBHOOKS,
        "schedule": timedelta(seconds=60),
        "options": {"expires": 60},
    },
    # Snapshot retention (shared.insight.retention): a bounded batch a minute; each message expires
    # before the next, so a slow run is never queued behind another.
    "roll-up-snapshots": {
        "task": ROLL_UP_SNAPSHOTS,
        "schedule": timedelta(seconds=60),
        "options": {"expires": 60},
    },
    "dispatch-approved-signals": {
        "task": DISPATCH_APPROVED,
        "schedule": timedelta(seconds=15),
        "options": {"expires": 15},
    },
}
