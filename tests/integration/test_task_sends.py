"""What the tasks and the approval view send through the task-queue seam (shared.core.queue), run as a
worker runs them (`.apply()`: the worker's app and its transaction), and what becomes of an approval when
the broker is down."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

import pytest
import sqlalchemy as sa
from celery import Celery

from shared.core.db import utcnow
from shared.core.extensions import SETTINGS, TASK_QUEUE
from shared.core.queue import EXECUTE_SIGNAL, RECONCILE_ACCOUNTS, TaskQueue
from shared.models import AccountSync, Signal, SignalStatus
from tests.conftest import Api


def test_the_tick_sends_due_accounts_in_batches_stalest_first_each_expiring_at_the_next_tick(
    app, committed_db, sent_tasks, monkeypatch
):
    import workers.tasks
    from workers.celery_app import flask_app

    api = Api(app.test_client())
    user = api.user()
    ids = [api.account(user, login=7000 + n)["id"] for n in range(5)]
    now = utcnow()
    committed_db.add_all(
        [
            AccountSync(account_id=ids[0], last_synced_at=now - timedelta(seconds=5)),  # synced: last
            AccountSync(account_id=ids[1], breaker_open_until=now + timedelta(minutes=5)),  # backed off
        ]
    )
    committed_db.commit()
    worker_app = flask_app()
    settings = dataclasses.replace(
        worker_app.extensions[SETTINGS], reconcile_batch_size=2, reconcile_interval_seconds=7.0
    )
    monkeypatch.setitem(worker_app.extensions, SETTINGS, settings)

    assert workers.tasks.reconcile_tick.apply().get() == 4

    never_synced = [ids[2], ids[3], ids[4]]
    assert [(task.name, task.args, task.options) for task in sent_tasks.sent] == [
        (RECONCILE_ACCOUNTS, [never_synced[:2]], {"expires": 7.0}),
        (RECONCILE_ACCOUNTS, [[never_synced[2], ids[0]]], {"expires": 7.0}),
    ]


def test_the_safety_net_run_by_a_worker_sends_through_the_worker_apps_queue(app, committed_db, sent_tasks):
    import workers.tasks

    api = Api(app.test_client())
    world = api.setup()
    signal_id = api.send_signal(world["client"], {"instrument": "EURUSD", "side": "buy", "volume": "0.1"})
    signal_id = signal_id.json["id"]
    api.decide(world["user"], signal_id)
    assert sent_tasks.executions() == [signal_id]  # the approval's own message, recorded
    committed_db.execute(
        sa.update(Signal).where(Signal.id == signal_id).values(decided_at=utcnow() - timedelta(minutes=5))
    )
    committed_db.commit()
    sent_tasks.sent.clear()

    assert workers.tasks.dispatch_approved.apply().get() == 1
    assert [(task.name, task.args) for task in sent_tasks.sent] == [(EXECUTE_SIGNAL, [signal_id])]


def test_an_approval_stands_when_the_broker_is_down_and_says_the_sweep_will_send_it(
    app, api, db_session, monkeypatch, caplog
):
    nowhere = Celery("tradeguard-test", set_as_current=False)
    nowhere.config_from_object("celeryconfig")
    nowhere.conf.broker_url = "redis://127.0.0.1:1/0"
    monkeypatch.setitem(app.extensions, TASK_QUEUE, TaskQueue(nowhere))
    world = api.setup()
    signal_id = api.send_signal(world["client"], {"instrument": "EURUSD", "side": "buy", "volume": "0.1"})
    signal_id = signal_id.json["id"]

    with caplog.at_level(logging.ERROR, logger="shared.execution.dispatch"):
        approval = api.decide(world["user"], signal_id)  # 201 asserted

    assert approval["decision"] == "approve"
    assert db_session.scalar(sa.select(Signal.status).where(Signal.id == signal_id)) == SignalStatus.APPROVED
    assert any(
        f"could not enqueue execution of signal {signal_id}; the dispatch sweep will retry" in r.getMessage()
        for r in caplog.records
    )


@pytest.fixture
def watch_finds(monkeypatch):
    """`watch_finds(to_read, breached, terminals)`: what the guards' watch tick finds (its terminals not
    asked); returns the list of ticks run. The terminals' warming is recorded in `.warmed`."""
    import workers.tasks
    from shared.guards.watch import WatchResult
    from workers import runtime

    ticks: list[int] = []
    warmed: list[tuple[list[str], int]] = []
    monkeypatch.setattr(runtime, "warm_terminals", lambda urls, count: warmed.append((list(urls), count)))

    def finds(to_read, breached=(), terminals=()):
        def watch(session, open_terminal):
            ticks.append(1)
            return WatchResult(list(to_read), list(breached), {"servers": 1}, list(terminals))

        monkeypatch.setattr(workers.tasks.guard_watch_feature, "watch", watch)
        return ticks

    finds.warmed = warmed
    return finds


def test_the_guards_watch_keeps_a_checks_worth_of_connections_to_the_terminals_that_answered(
    app, committed_db, sent_tasks, watch_finds
):
    """The wiring of `guard_watch`: whatever the tick found, the terminals that answered it get
    `WATCH_BATCH` idle connections in this process (`runtime.warm_terminals`, tested on a real terminal
    in test_terminal_pool), so that the next crowd's checks do not wait for theirs."""
    import workers.tasks

    answered = ["sim://127.0.0.1:18001", "sim://127.0.0.1:18002"]
    watch_finds([], terminals=answered)

    assert workers.tasks.guard_watch.apply().get() == 0
    assert watch_finds.warmed == [(answered, workers.tasks.WATCH_BATCH)]
    assert sent_tasks.sent == []  # nobody to read


def fresh_ids(count: int) -> list[int]:
    """Account ids no other test has claimed for a read (the claims live a few seconds in Redis)."""
    import uuid

    base = uuid.uuid4().int % 10**9 * 100
    return list(range(base, base + count))


def test_the_watch_sends_each_account_it_flags_to_be_read_once_in_checks_of_watch_batch(
    app, committed_db, sent_tasks, watch_finds
):
    """25 accounts flagged: checks of WATCH_BATCH (20) and 5, each naming which of its accounts the
    estimate put over a maximum; the next tick, which flags them again while their checks still read
    them, sends none of them again (WATCH_CLAIM_SECONDS)."""
    import workers.tasks
    from shared.core.queue import CHECK_GUARDS

    flagged = fresh_ids(25)
    breached = flagged[::2]
    watch_finds(flagged, breached)

    assert workers.tasks.guard_watch.apply().get() == 25
    assert [(task.name, task.args) for task in sent_tasks.sent] == [
        (CHECK_GUARDS, [flagged[:20], [a for a in flagged[:20] if a in breached]]),
        (CHECK_GUARDS, [flagged[20:], [a for a in flagged[20:] if a in breached]]),
    ]
    assert workers.tasks.guard_watch.apply().get() == 0
    assert len(sent_tasks.sent) == 2


def test_a_watch_tick_that_finds_the_last_one_still_running_skips_its_turn(
    app, committed_db, sent_tasks, watch_finds
):
    import workers.tasks
    from workers import runtime

    ticks = watch_finds(fresh_ids(3))
    with runtime.exclusive_locks([workers.tasks.WATCH_TURN], ttl_seconds=5) as held:
        assert held == {workers.tasks.WATCH_TURN}
        assert workers.tasks.guard_watch.apply().get() == 0
    assert (ticks, sent_tasks.sent) == ([], [])
    assert workers.tasks.guard_watch.apply().get() == 3  # its turn is free again
    assert ticks == [1]


def test_a_sync_records_no_reading_of_what_the_watch_is_reading_and_sends_its_breaches_to_be_read(
    app, committed_db, sent_tasks, monkeypatch
):
    """An account the watch sent to be read meanwhile is left to that check: no reading of the sync's,
    no check of its own. The sync's other breaches are confirmed by a check `guard_confirm_seconds`
    later. Nothing is claimed: the watch, which reads at once rather than after that countdown, may
    still send the others."""
    import workers.tasks
    from shared.core.queue import CHECK_GUARDS
    from shared.reconciliation.sync import SyncOutcome

    synced = fresh_ids(4)
    watched, unconfirmed = synced[1], synced[:3]
    assert workers.tasks._claim_reads([watched], workers.tasks.WATCH_CLAIM_SECONDS) == [watched]
    monkeypatch.setattr(
        workers.tasks,
        "sync_accounts",
        lambda make_session, account_ids, **options: [SyncOutcome(a, "ok") for a in account_ids],
    )
    recorded = []

    def record_synced(session, account_ids, **options):
        recorded.append(list(account_ids))
        reading = dataclasses.make_dataclass("Reading", ["account_id", "unconfirmed"])
        return [reading(a, a in unconfirmed) for a in account_ids]

    monkeypatch.setattr(workers.tasks.guard_readings, "record_synced", record_synced)

    assert workers.tasks.reconcile_accounts.apply(args=[synced]).get() == {"ok": 4}
    assert recorded == [[synced[0], synced[2], synced[3]]]
    confirm = app.extensions[SETTINGS].guard_confirm_seconds
    assert [(task.name, task.args, task.options) for task in sent_tasks.sent] == [
        (CHECK_GUARDS, [[synced[0], synced[2]]], {"countdown": confirm})
    ]
    assert workers.tasks._claim_reads(synced, workers.tasks.WATCH_CLAIM_SECONDS) == [
        synced[0],
        synced[2],
        synced[3],
    ]


def test_without_redis_the_watchs_claims_are_kept_in_the_process(app, monkeypatch):
    """The embedded setup (no Redis): claims live in this process, for the claim's seconds."""
    import workers.tasks
    from workers import runtime

    without_redis = dataclasses.replace(runtime.settings(), redis_url=None)
    monkeypatch.setattr(runtime, "settings", lambda: without_redis)
    monkeypatch.setattr(workers.tasks, "_claimed_here", {})
    assert workers.tasks._claim_reads([1, 2], 60) == [1, 2]
    assert workers.tasks._claim_reads([2, 3], 60) == [3]
    assert workers.tasks._reads_claimed([1, 3, 4]) == {1, 3}
    assert workers.tasks._claim_reads([5], 0) == [5]  # a claim of no time has lapsed at once
    assert workers.tasks._reads_claimed([5]) == set()
    assert workers.tasks._reads_claimed([]) == set()
