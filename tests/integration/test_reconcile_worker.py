"""End to end: beat ticks, real workers reconcile accounts on the real `terminal` process; a second
beat does not double the work."""

from __future__ import annotations

import contextlib
import re
import time

import rpyc
import sqlalchemy as sa

from shared.models import AccountSync, ReconciliationLog
from shared.mt5 import constants as mt5c
from tests.conftest import Api
from tests.processes import celery_beat, celery_worker, terminal_server, wait_for


def test_beat_fans_out_and_workers_reconcile_every_account_once_per_tick(app, committed_db):
    api = Api(app.test_client())
    tick = {"TRADEGUARD_RECONCILE_INTERVAL_SECONDS": "1", "TRADEGUARD_EXPIRY_SWEEP_SECONDS": "60"}
    with terminal_server() as port:
        control = rpyc.classic.connect("127.0.0.1", port)
        control.execute("import MetaTrader5 as mt5")
        control.eval("mt5.initialize")(login=7001, password="x", server="TradeGuard-Sim")
        ticket = control.eval("mt5.sim_open_manual")(7001, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
        user = api.user()
        accounts = [
            api.account(user, terminal_url=f"sim://127.0.0.1:{port}", login=7001 + i)["id"] for i in range(3)
        ]

        def synced():
            committed_db.rollback()
            rows = committed_db.scalars(
                sa.select(AccountSync).where(AccountSync.last_synced_at.is_not(None))
            ).all()
            return len(rows) == len(accounts)

        with celery_worker(env=tick, concurrency=2) as worker, contextlib.ExitStack() as beats:
            beat = beats.enter_context(celery_beat(env=tick))
            # From the first beat's start: it sends while the standby is still starting (seconds, when busy).
            started = time.monotonic()
            standby = beats.enter_context(celery_beat(env=tick))
            assert wait_for(synced, timeout=30), worker.log() + beat.log()
            time.sleep(4)  # a few more ticks
            elapsed = time.monotonic() - started
            logs = {"beat": beat.log(), "standby": standby.log()}

        # Two beat processes, one lock: only one of them sends, about once per 1-s interval.
        senders = [name for name, log in logs.items() if "Sending due task reconcile-accounts" in log]
        assert len(senders) == 1, logs
        sent = len(re.findall(r"Sending due task reconcile-accounts", logs[senders[0]]))
        assert 0 < sent <= elapsed + 2
        outside = committed_db.scalars(
            sa.select(ReconciliationLog).where(ReconciliationLog.event_type == "outside_position")
        ).all()
        # The manual position on login 7001 is recorded once, however many ticks saw it.
        assert [(e.account_id, e.position_ticket) for e in outside] == [(accounts[0], ticket)]
        control.close()

        # The workers timed every task they ran, and /metrics shows it.
        text = api.http.get("/metrics").get_data(as_text=True)
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
        for task in ("tradeguard.reconcile_tick", "tradeguard.reconcile_accounts"):
            runs = int(samples[f'tradeguard_task_duration_seconds_count{{task="{task}"}}'])
            assert runs >= 1, text
            assert int(samples[f'tradeguard_task_duration_seconds_bucket{{task="{task}",le="+Inf"}}']) == runs
            outcomes = {
                outcome: int(samples.get(f'tradeguard_tasks_total{{task="{task}",outcome="{outcome}"}}', 0))
                for outcome in ("success", "failure", "retry")
            }
            assert outcomes["success"] >= 1 and sum(outcomes.values()) == runs, outcomes
            assert 0 < float(samples[f'tradeguard_task_duration_seconds_sum{{task="{task}"}}']) < 120 * runs
