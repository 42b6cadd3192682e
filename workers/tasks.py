"""Celery tasks. Each is a thin wrapper: it takes ids (or nothing), reloads rows and calls a feature of
`shared`. What a worker process keeps between tasks (terminal connections, threads, caches) is in
`workers.runtime`."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from celery import Task
from celery.exceptions import Retry
from sqlalchemy.exc import SQLAlchemyError

from shared.core import extensions
from shared.core.db import after_commit, after_commit_batched, db, utcnow
from shared.core.queue import (
    CHECK_GUARDS,
    DELIVER_WEBHOOK,
    DELIVER_WEBHOOKS,
    DISPATCH_APPROVED,
    EXECUTE_ALERT,
    EXECUTE_SIGNAL,
    EXPIRE_SIGNALS,
    GUARD_SWEEP,
    GUARD_WATCH,
    RECONCILE_ACCOUNTS,
    RECONCILE_TICK,
    ROLL_UP_SNAPSHOTS,
    SWEEP_WEBHOOKS,
    Queue,
)
from shared.execution import dispatch
from shared.execution import service as execution
from shared.execution.timing import PUBLISHED_AT, OrderClock
from shared.guards import closing as guard_closing
from shared.guards import engine as guard_engine
from shared.guards import readings as guard_readings
from shared.guards import watch as guard_watch_feature
from shared.insight import retention
from shared.models import Trade, TradeState
from shared.mt5.errors import PermanentTerminalError, RetryableTerminalError
from shared.notifications import delivery, webhooks
from shared.reconciliation import schedule
from shared.reconciliation.sync import sync_accounts
from shared.signals.expiry import expire_due_signals
from workers import runtime
from workers.celery_app import DatabaseTask, celery_app, flask_app

log = logging.getLogger(__name__)


@celery_app.task(name=EXPIRE_SIGNALS, base=DatabaseTask)
def expire_signals() -> int:
    """Beat's sweep: pending signals past their time-to-live become `expired`. Safe to run twice."""
    expired = expire_due_signals(db.session)
    if expired:
        log.info("expired %d pending signal(s): %s", len(expired), expired[:20])
    return len(expired)


def retry_countdown(retries: int) -> float:
    """Exponential back-off between attempts on an unreachable terminal: 1, 2, 4, ... up to 30 s."""
    return float(min(30, 2**retries))


@celery_app.task(name=EXECUTE_SIGNAL, base=DatabaseTask, bind=True, max_retries=None)
def execute_signal(self: Task, signal_id: int) -> str | None:
    """Send the approved signal's order, at most once. Retries only what is retryable (terminal
    unreachable, timed out, outcome unknown, trade busy in another worker) and, a bounded number of
    times counted on the trade, errors nobody classified."""
    max_retries = runtime.settings().execution_max_retries
    started_at = utcnow()
    clock = OrderClock(self.request.get(PUBLISHED_AT))  # where the order's time goes, logged once done
    try:
        trade = execution.execute_signal(
            db.session,
            signal_id,
            engine=db.engine,
            open_terminal=clock.opener(runtime.open_terminal),
            settings=runtime.execution_settings(),
            queue=extensions.task_queue(),
        )
        clock.log(signal_id, trade.id if trade else None)
    except PermanentTerminalError as exc:
        # Wrong or unreadable credentials, unknown symbol, no MetaTrader5 package here: retrying cannot
        # help.
        db.session.rollback()
        trade = give_up(signal_id, f"{type(exc).__name__}: {exc}")
    except RetryableTerminalError as exc:  # TerminalRetryLater included: trade busy, order in flight
        db.session.rollback()
        if self.request.retries < max_retries:
            raise retry_later(self, signal_id, exc, retry_countdown(self.request.retries)) from exc
        log.error("signal %s: giving up after %d retries: %s", signal_id, self.request.retries, exc)
        trade = give_up(signal_id, f"terminal unreachable: {exc}")
    except Exception as exc:
        # Unclassified (a terminal reply of the wrong shape, a bug): left to escape, it would leave the
        # trade pending with no reason, and the safety net would run it again every 15 s for ever.
        db.session.rollback()
        log.exception("signal %s: execution failed with an unclassified error", signal_id)
        error = f"{type(exc).__name__}: {exc}"
        trade = execution.count_failed_attempt(
            db.session,
            signal_id,
            error,
            started_at=started_at,
            engine=db.engine,
            settings=runtime.execution_settings(),
        )
        if trade is None:
            raise  # no trade to count on: the error came before it was made
        if trade.state not in UNFINISHED:
            return trade.state.value
        if trade.attempts < runtime.attempt_limit():
            raise retry_later(self, signal_id, exc, retry_countdown(max(0, trade.attempts - 1))) from exc
        trade = give_up(signal_id, f"gave up after {trade.attempts} attempts: {error}")
        if trade is not None and trade.state == TradeState.SENT:
            log.error(
                "trade %s: gave up after %d attempts, but its order may have been sent: it stays `sent` "
                "for reconciliation to settle (compare the broker's history with the trade)",
                trade.id,
                trade.attempts,
            )
    return trade.state.value if trade else None


UNFINISHED = (TradeState.PENDING, TradeState.SENT)


def retry_later(task: Task, signal_id: int, exc: Exception, countdown: float) -> Retry:
    """Schedule the task's next attempt in `countdown` seconds, showing on the trade why and when
    (`execution.record_retry`). Returns Celery's Retry for the caller to raise. Showing it is not worth
    losing the retry over: a database that refuses the write is logged and the retry goes ahead."""
    try:
        execution.record_retry(
            db.session,
            signal_id,
            f"{type(exc).__name__}: {exc}",
            retry_at=utcnow() + timedelta(seconds=countdown),
            engine=db.engine,
            settings=runtime.execution_settings(),
        )
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("signal %s: could not record the retry on its trade", signal_id, exc_info=True)
    return task.retry(exc=exc, countdown=countdown)


def give_up(signal_id: int, reason: str) -> Trade | None:
    """Mark the signal's trade failed, unless it may have been sent (see `execution.give_up`)."""
    return execution.give_up(
        db.session, signal_id, reason, engine=db.engine, settings=runtime.execution_settings()
    )


@celery_app.task(name=DISPATCH_APPROVED, base=DatabaseTask)
def dispatch_approved(older_than_seconds: float = 30.0) -> int:
    """Beat's safety net: an approved signal whose execution message was lost (broker down at the
    moment of approval, a purged queue) is enqueued again; which ones, see
    `dispatch.signals_to_dispatch`. Harmless when the first message is still on its way: execution is
    idempotent."""
    signal_ids = dispatch.signals_to_dispatch(
        db.session,
        cutoff=utcnow() - timedelta(seconds=older_than_seconds),
        attempt_limit=runtime.attempt_limit(),
    )
    queue = extensions.task_queue()
    for signal_id in signal_ids:
        dispatch.enqueue_execution(queue, signal_id)
    return len(signal_ids)


# A batch waits on terminals (each call bounded by the terminal timeout), so it finishes well within
# these; the hard limit stays below the account lock's TTL (TRADEGUARD_RECONCILE_LOCK_SECONDS, 150 s)
# so that no lock expires while its holder is still working.
@celery_app.task(name=RECONCILE_ACCOUNTS, soft_time_limit=100, time_limit=120)
def reconcile_accounts(account_ids: list[int]) -> dict[str, int]:
    """Reconcile a batch of accounts: loaded and written in one transaction each, the terminals asked
    concurrently (the work is waiting on terminals, not CPU), so one slow or failing account does not
    delay the others. Returns how many accounts ended in each status."""
    app = flask_app()
    settings = extensions.settings(app)
    with app.app_context():
        try:
            outcomes = sync_accounts(
                lambda: db.session(),
                account_ids,
                open_terminal=runtime.open_pooled_terminal,
                locks=runtime.account_locks,
                symbol_specs=runtime.symbol_specs,
                tolerances=runtime.reconcile_tolerances(settings),
                breaker=runtime.breaker_settings(settings),
                # The threads only talk to terminals: loading and writing stay on this one.
                executor=runtime.sync_threads(),
                # Well inside the soft time limit (100 s), so that stragglers are recorded as failed
                # syncs instead of the limit throwing away every result not yet written.
                give_up_after_seconds=80.0,
                queue=extensions.task_queue(app),
            )
            # Each sync's figures are a reading for the account's guards; not for those the watch sent
            # to be read meanwhile (within WATCH_CLAIM_SECONDS). Their check's reading is as fresh and
            # takes the confirmations: in a crowd that met a reconciliation burst, the sync's readings of
            # the same accounts went through the engine one by one, locking the guard states the checks
            # were writing (the reconciler's lock waits, bench/guards.py), and their own checks doubled
            # the reads of accounts already being read. The next sync reads them again.
            synced = [outcome.account_id for outcome in outcomes if outcome.status == "ok"]
            being_read = _reads_claimed(synced)
            queue = extensions.task_queue(app)
            readings = guard_readings.record_synced(
                db.session,
                [account_id for account_id in synced if account_id not in being_read],
                notify=_guard_notify(queue),
                schedule=_guard_schedule(queue),
            )
        finally:
            db.session.remove()
    # A breach seen on a sync is confirmed by guard checks, not by waiting for the next syncs. Nothing is
    # claimed here: this check waits `guard_confirm_seconds`, the watch's reads at once. One the watch's
    # check found clear just before this sync saw it breached waits for the claim to lapse
    # (WATCH_CLAIM_SECONDS); the watch sends it then, or the next sync does.
    unconfirmed = [reading.account_id for reading in readings if reading.unconfirmed]
    if unconfirmed:
        queue.send(CHECK_GUARDS, [unconfirmed], countdown=settings.guard_confirm_seconds)
    return dict(Counter(outcome.status for outcome in outcomes))


@celery_app.task(name=RECONCILE_TICK, base=DatabaseTask)
def reconcile_tick() -> int:
    """Beat's clock: enqueue every account whose breaker is not open, in batches. Each message
    expires at the next tick, so a backlog is dropped rather than piled up behind a slow account."""
    settings = runtime.settings()
    account_ids = schedule.accounts_due(db.session, utcnow())
    queue = extensions.task_queue()
    for batch in schedule.batches(account_ids, settings.reconcile_batch_size):
        queue.send(RECONCILE_ACCOUNTS, [batch], expires=settings.reconcile_interval_seconds)
    return len(account_ids)


# --- guards -------------------------------------------------------------------------------------------


def _guard_notify(queue: Queue | None = None) -> guard_engine.Notify:
    """How the guards tell owners: a signed webhook to each subscriber, sent after the commit."""
    return webhooks.notifier(queue or extensions.task_queue())


# Alerts raised in one transaction whose close times lie this close together share one task: it runs
# at the latest of them and carries them all out together (guards.closing takes every alert due).
ALERT_TASK_SPREAD = timedelta(milliseconds=100)


def _guard_schedule(queue: Queue) -> guard_engine.Schedule:
    """Sends the guards' timed tasks once the transaction commits. A crowd of alerts raised together
    (one reading batch) gets one `execute_alert` task per ALERT_TASK_SPREAD of close times, not one
    each: a hundred tasks due in the same second cost the guards workers most of a second between them,
    even when all but one found their alert carried out already (bench/guards.py)."""

    def send_alerts(items: list[tuple[list[Any], datetime]]) -> None:
        for args, at in coalesce_alert_tasks(items, ALERT_TASK_SPREAD):
            queue.send(EXECUTE_ALERT, args, eta=at)

    def schedule(session: Any, task: str, args: list[Any], at: datetime) -> None:
        if task == EXECUTE_ALERT:
            after_commit_batched(session, EXECUTE_ALERT, (args, at), send_alerts)
        else:
            after_commit(session, lambda: queue.send(task, args, eta=at))

    return schedule


def coalesce_alert_tasks(
    items: list[tuple[list[Any], datetime]], spread: timedelta
) -> list[tuple[list[Any], datetime]]:
    """One (args, at) per group of close times within `spread` of the group's earliest: the args of its
    latest alert, at that alert's time, so that every alert of the group is due when the task runs."""
    groups: list[list[tuple[list[Any], datetime]]] = []
    for item in sorted(items, key=lambda item: item[1]):
        if groups and item[1] - groups[-1][0][1] <= spread:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [group[-1] for group in groups]


# How many further readings a check_guards task takes itself of the accounts whose breach is not yet
# confirmed, before it leaves the rest to a task sent with a countdown (confirmations go up to 20).
CONFIRM_IN_TASK = 4


@celery_app.task(name=CHECK_GUARDS, soft_time_limit=100, time_limit=120)
def check_guards(account_ids: list[int], presumed: list[int] | None = None) -> dict[str, int]:
    """Read these accounts on their terminals and let their guards decide (`check_accounts`: the
    terminals asked concurrently, the readings recorded in one transaction). The accounts whose breach
    is not yet confirmed are read again `TRADEGUARD_GUARD_CONFIRM_SECONDS` after the round before, by
    this task itself (a few times at most, then by a task sent with that countdown), so `confirmations`
    readings take a second or so, not a reconciliation cycle each. `presumed`: the accounts the watch
    estimated at a breach, for the first round (see `engine.record_reading`).

    In the task rather than in a new one: a task sent with a countdown waits for its ETA, then for a free
    pool process behind everything queued meanwhile (the alerts' webhooks among them). With 100 accounts
    breaching at once that wait made most of the 20 s from breach to `alert.pending` (bench/guards.py)."""
    app = flask_app()
    queue = extensions.task_queue(app)
    confirm_seconds = runtime.settings().guard_confirm_seconds
    statuses: Counter[str] = Counter()
    todo = list(dict.fromkeys(account_ids))
    notify, schedule = _guard_notify(queue), _guard_schedule(queue)
    started = time.monotonic()
    with app.app_context():
        try:
            for round_ in range(1 + CONFIRM_IN_TASK):
                if round_:
                    time.sleep(max(0.0, started + confirm_seconds - time.monotonic()))
                    started = time.monotonic()
                outcomes = guard_readings.check_accounts(
                    db.session,
                    todo,
                    open_terminal=runtime.open_pooled_terminal,
                    notify=notify,
                    schedule=schedule,
                    presumed=set(presumed or ()) if round_ == 0 else (),
                    executor=runtime.sync_threads(),
                )
                if round_ == 0:
                    statuses.update(outcome.status for outcome in outcomes)
                todo = [outcome.account_id for outcome in outcomes if outcome.unconfirmed]
                if not todo:
                    break
        finally:
            db.session.remove()
    if todo:
        queue.send(CHECK_GUARDS, [todo], countdown=confirm_seconds)
    return dict(statuses)


def alert_countdown(retries: int) -> float:
    """Between attempts at a close the terminal could not finish: 1, 2, 4, ... up to 10 s (a breached
    account is not left waiting long)."""
    return float(min(10, 2**retries))


# Enough to outlast a terminal restart (about 10 minutes at 10 s apart); the sweep picks up the rest.
ALERT_MAX_RETRIES = 60


@celery_app.task(name=EXECUTE_ALERT, base=DatabaseTask, bind=True, max_retries=ALERT_MAX_RETRIES)
def execute_alert(self: Task, alert_id: int) -> str:
    """When an alert's grace period ends: cancel it if the breach cleared, else close its positions,
    each exactly once, and halt the account. Safe to run twice, and after a worker died mid-close."""
    queue = extensions.task_queue()
    try:
        # With the other alerts already due: a crowd breaching at once closes together (guards.closing).
        done = guard_closing.execute_due_alerts(
            db.session,
            alert_id,
            open_terminal=runtime.open_pooled_terminal,
            settings=runtime.guard_settings(),
            notify=_guard_notify(queue),
            executor=runtime.sync_threads(),
        )
        # Those it decided but could not end (a requote, an outcome not known) go the one-alert path:
        # the first here, the others in tasks of their own.
        for other in done.left:
            if other != alert_id:
                queue.send(EXECUTE_ALERT, [other])
        if done.unread is not None:
            raise guard_engine.CloseInFlight(f"alert {alert_id}: its account was not read: {done.unread}")
        result = done.first
        if alert_id in done.left:
            result = guard_engine.execute_alert(
                db.session,
                alert_id,
                open_terminal=runtime.open_pooled_terminal,
                settings=runtime.guard_settings(),
                notify=_guard_notify(queue),
            )
    except guard_engine.AlertNotDue as exc:
        db.session.rollback()
        raise self.retry(exc=exc, countdown=guard_engine.seconds_until_due(db.session, alert_id)) from exc
    except RetryableTerminalError as exc:  # CloseInFlight included
        db.session.rollback()
        raise self.retry(exc=exc, countdown=alert_countdown(self.request.retries)) from exc
    return result.status


@celery_app.task(name=GUARD_SWEEP, base=DatabaseTask)
def guard_sweep() -> int:
    """Beat's safety net for the close: an alert past its close time that is still pending or closing
    (its task message lost, its worker killed mid-close) is sent again. Harmless when the first is still
    on its way: the close is idempotent."""
    alert_ids = guard_engine.overdue_alerts(
        db.session, utcnow(), grace_seconds=runtime.settings().guard_sweep_seconds
    )
    queue = extensions.task_queue()
    for alert_id in alert_ids:
        queue.send(EXECUTE_ALERT, [alert_id])
    return len(alert_ids)


# How long an account the watch sent to be read is not sent again: its check_guards task takes the
# readings its confirmations need (see check_guards), so a watch tick that finds it still breached
# meanwhile must not send it again. Without this, each tick sent the same 100 breached accounts while
# their first reading was still queued, doubling the work in front of their alerts (bench/guards.py).
WATCH_CLAIM_SECONDS = 5.0


_claimed_here: dict[int, float] = {}  # without Redis (the embedded setup: one worker process or few)


def _claim_key(account_id: int) -> str:
    return f"tradeguard:guard-read:{account_id}"


def _claim_reads(account_ids: list[int], seconds: float) -> list[int]:
    """The accounts among these not claimed within `seconds`, claimed now: in Redis where it is the
    broker (every orders worker process runs the watch), else in this process."""
    if not account_ids:
        return []
    if runtime.settings().redis_url:
        client = runtime._redis()
        pipe = client.pipeline(transaction=False)
        for account_id in account_ids:
            pipe.set(_claim_key(account_id), 1, nx=True, px=int(seconds * 1000))
        return [a for a, claimed in zip(account_ids, pipe.execute(), strict=True) if claimed]
    now = time.monotonic()
    for account_id, until in list(_claimed_here.items()):
        if until <= now:
            del _claimed_here[account_id]
    fresh = [a for a in account_ids if a not in _claimed_here]
    _claimed_here.update((a, now + seconds) for a in fresh)
    return fresh


def _reads_claimed(account_ids: list[int]) -> set[int]:
    """The accounts among these that the watch sent to be read within its claim (`_claim_reads`)."""
    if not account_ids:
        return set()
    if runtime.settings().redis_url:
        values = runtime._redis().mget([_claim_key(account_id) for account_id in account_ids])
        return {a for a, value in zip(account_ids, values, strict=True) if value is not None}
    now = time.monotonic()
    return {a for a in account_ids if _claimed_here.get(a, 0.0) > now}


# Accounts per check_guards task sent by the watch: enough tasks for every guards process to take a
# share of a crowd breaching at once (their terminals are asked concurrently within a task), and small
# enough that the first alerts' webhooks go out while the rest are still being read (two tasks of 50
# took the owners half a second longer to hear of their alerts), but not so small that each task's own
# cost (its quotes, its preload, its commit) is paid ten times over: 100 accounts were read and alerted
# in 0.28-0.75 s (median 0.37) in tasks of 20 or 25, in 0.44-0.82 s (median 0.59) in tasks of 10
# (bench/guards.py, 3 rounds each). Alerts raised closer together also fall due closer together, and
# their closes then wait on each other (README, Benchmarks).
WATCH_BATCH = 20


# One watch tick at a time: beat sends one every TRADEGUARD_GUARD_WATCH_SECONDS whether the last has
# ended or not, and a tick slowed by a crowd (its checks and closes on the same guards processes) was
# joined by the next, the two then holding both processes the checks were waiting for (bench/guards.py).
# A tick that finds another running skips its turn. The lock outlives the slowest tick seen (1.7 s), and
# a worker killed mid-tick stops the watch no longer than this.
WATCH_TURN = "guard-watch"
WATCH_TURN_SECONDS = 5.0


@celery_app.task(name=GUARD_WATCH, base=DatabaseTask)
def guard_watch() -> int:
    """Beat's fast path for the guards (shared.guards.watch): quote the held symbols, estimate every
    account's equity from its last sync, and read at once those the estimate puts at a limit (those not
    sent by an earlier tick within WATCH_CLAIM_SECONDS). Returns how many it sent to be read; none
    when another tick is still running."""
    with runtime.exclusive_locks([WATCH_TURN], ttl_seconds=WATCH_TURN_SECONDS) as held:
        if not held:
            log.info("guard watch: the last tick is still running; this one skips its turn")
            return 0
        return _watch_tick()


def _watch_tick() -> int:
    result = guard_watch_feature.watch(db.session, open_terminal=runtime.open_pooled_terminal)
    account_ids = _claim_reads(result.to_read, WATCH_CLAIM_SECONDS)
    if account_ids:
        queue = extensions.task_queue()
        breached = set(result.breached)
        for batch in schedule.batches(account_ids, WATCH_BATCH):
            queue.send(CHECK_GUARDS, [batch, [a for a in batch if a in breached]])
        log.info("guard watch: reading %d account(s) now (%s)", len(account_ids), result.counts)
    # A check reads its batch's accounts at once, a connection each: made now, while all is quiet, not
    # in front of the next crowd's alerts (the first check of a crowd in each process read its ten
    # accounts in 0.09 s, the next ones in 0.015 s, bench/guards.py). Once per process: later ticks
    # find the connections idle in the pool.
    runtime.warm_terminals(result.terminals, WATCH_BATCH)
    return len(account_ids)


# --- webhooks -----------------------------------------------------------------------------------------


@celery_app.task(name=DELIVER_WEBHOOK, base=DatabaseTask, bind=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: str) -> str | None:
    """POST one webhook delivery (by its delivery id), and schedule its next attempt when it fails:
    the attempts are counted on the row (`delivery.attempt`), so Celery's own retry count plays no
    part. Safe to run twice: a second copy finds the attempt claimed, or the delivery finished."""
    outcome = delivery.attempt(db.session, extensions.secret_box(), delivery_id, runtime.delivery_settings())
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status.value if outcome.status else None


@celery_app.task(name=DELIVER_WEBHOOKS, base=DatabaseTask)
def deliver_webhooks(delivery_ids: list[str]) -> dict[str, int]:
    """The first attempts of one commit's deliveries, POSTed together (`delivery.attempt_many`); each
    that fails gets its next attempt as a `deliver_webhook` task of its own, when it is due. Safe to run
    twice, as `deliver_webhook` is."""
    outcomes = delivery.attempt_many(
        db.session,
        extensions.secret_box(),
        delivery_ids,
        runtime.delivery_settings(),
        executor=runtime.delivery_threads(),
    )
    queue = extensions.task_queue()
    for delivery_id, outcome in outcomes.items():
        if outcome.retry_in is not None:
            queue.send(DELIVER_WEBHOOK, [delivery_id], countdown=outcome.retry_in)
    return dict(Counter(o.status.value if o.status else "skipped" for o in outcomes.values()))


# A delivery whose message is this late is taken for lost (the worker sends its retry at the due time).
WEBHOOK_SWEEP_GRACE = timedelta(seconds=30)


@celery_app.task(name=SWEEP_WEBHOOKS, base=DatabaseTask)
def sweep_webhooks() -> int:
    """Beat's safety net: pending deliveries overdue by WEBHOOK_SWEEP_GRACE are sent again (their
    message was lost). Each message expires before the next sweep, so a backlog is not doubled."""
    delivery_ids = webhooks.deliveries_due(db.session, utcnow() - WEBHOOK_SWEEP_GRACE)
    webhooks.send_delivery_batches(extensions.task_queue(), delivery_ids, expires=60)
    return len(delivery_ids)


# --- insight ------------------------------------------------------------------------------------------


@celery_app.task(name=ROLL_UP_SNAPSHOTS, base=DatabaseTask)
def roll_up_snapshots() -> dict[str, Any]:
    """Beat's retention run (shared.insight.retention): one bounded batch of accounts, each rolled up
    from where the last run left it. Safe to run twice, also at once."""
    figures = retention.roll_up_snapshots(db.session, runtime.retention_settings())
    if figures.rows_read:
        log.info(
            "snapshot retention: %d account(s), %d row(s) rolled into %d",
            figures.accounts,
            figures.rows_read,
            figures.rows_written,
        )
    return {
        "accounts": figures.accounts,
        "rows_read": figures.rows_read,
        "rows_written": figures.rows_written,
    }
