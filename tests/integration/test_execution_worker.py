"""Execution through Celery: retry counts, a real worker against the real `terminal` process, and a
worker killed while its order is on the way."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime

import rpyc
import sqlalchemy as sa

from bench.procfs import descendants
from shared.models import AuditLog, Trade, TradeState
from tests.conftest import Api
from tests.processes import celery_worker, terminal_server, wait_for

BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}


def make_approved_signal(api: Api, terminal_url: str, login: int, **account: object) -> tuple[int, dict]:
    user = api.user()
    account = api.account(user, terminal_url=terminal_url, login=login, **account)
    strategy = api.strategy_client(user, account["id"])
    signal_id = api.send_signal(strategy, {**BUY, "comment": uuid.uuid4().hex[:8]}).json["id"]
    api.decide(user, signal_id)
    return signal_id, user


def trade_of(session, signal_id) -> Trade | None:
    session.rollback()  # a fresh snapshot: the worker commits in another process
    return session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))


def terminal_orders(port: int, login: int, comment: str) -> int:
    """How many orders carrying `comment` the terminal process holds for `login`."""
    conn = rpyc.classic.connect("127.0.0.1", port)
    try:
        conn.execute("import MetaTrader5 as mt5")
        mt5 = conn.eval("mt5")
        assert mt5.initialize(login=login, password="x", server="TradeGuard-Sim")
        orders = mt5.history_orders_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
        return sum(1 for o in orders or () if o.comment == comment)
    finally:
        conn.close()


def test_the_task_retries_an_unreachable_terminal_a_bounded_number_of_times_then_fails(
    app, committed_db, monkeypatch
):
    import workers.runtime
    import workers.tasks

    api = Api(app.test_client())
    # Port 1: nothing listens there, so every attempt fails to connect (retryable).
    signal_id, _ = make_approved_signal(api, "sim://127.0.0.1:1", 4001, verify=False)
    opened: list[int] = []
    real_open = workers.runtime.open_terminal

    def counting_open(account):
        opened.append(account.id)
        return real_open(account)

    monkeypatch.setattr(workers.runtime, "open_terminal", counting_open)
    max_retries = workers.runtime.settings().execution_max_retries
    result = workers.tasks.execute_signal.apply(args=[signal_id])  # eager: retries run in this process

    assert len(opened) == max_retries + 1
    assert result.get() == "failed"
    trade = trade_of(committed_db, signal_id)
    assert trade.state == TradeState.FAILED and trade.attempts == 0
    assert "terminal unreachable" in trade.failure_reason


def test_a_real_worker_executes_an_approved_signal_on_the_terminal_process(app, committed_db):
    api = Api(app.test_client())
    with terminal_server() as port, celery_worker() as worker:
        signal_id, user = make_approved_signal(api, f"sim://127.0.0.1:{port}", 5001)
        assert wait_for(lambda: (t := trade_of(committed_db, signal_id)) and t.state == TradeState.FILLED), (
            worker.log()
        )
        trade = trade_of(committed_db, signal_id)
        assert terminal_orders(port, 5001, trade.comment) == 1
        shown = api.http.get(f"/api/v1/trades/{trade.id}", headers=user["headers"]).json
        assert (shown["state"], shown["filled_volume"], shown["signal_id"]) == ("filled", "0.1", signal_id)


def test_a_worker_killed_while_its_order_is_in_flight_does_not_lead_to_a_second_order(app, committed_db):
    """The pool process is SIGKILLed while order_send waits on a slow terminal; the terminal still
    executes the order. The message is redelivered; the next attempt finds the order by magic and
    comment instead of sending another."""
    api = Api(app.test_client())
    env = {"TRADEGUARD_UNKNOWN_OUTCOME_GRACE_SECONDS": "2", "TRADEGUARD_TERMINAL_TIMEOUT_SECONDS": "5"}
    with terminal_server() as port, celery_worker(env=env) as worker:
        control = rpyc.classic.connect("127.0.0.1", port)
        control.execute("import MetaTrader5 as mt5")
        # Every terminal call of this login now takes 1.5 s: order_send is slow enough to kill into.
        control.eval("mt5.sim_set_latency")(1500, 6001)

        signal_id, _ = make_approved_signal(api, f"sim://127.0.0.1:{port}", 6001)
        assert wait_for(
            lambda: (t := trade_of(committed_db, signal_id)) and t.state == TradeState.SENT, timeout=30
        ), worker.log()
        time.sleep(0.3)  # order_send is now on its way to the terminal
        children = descendants(worker.proc.pid)[1:]  # the pool processes
        assert children, worker.log()
        for child in children:
            os.kill(child, signal.SIGKILL)

        assert wait_for(
            lambda: (t := trade_of(committed_db, signal_id)) and t.state == TradeState.FILLED, timeout=60
        ), worker.log()
        control.eval("mt5.sim_set_latency")(0, 6001)
        control.close()
        trade = trade_of(committed_db, signal_id)
        log = worker.log()
        assert "SIGKILL" in log, log
        assert trade.attempts == 1
        assert terminal_orders(port, 6001, trade.comment) == 1
        recovered = committed_db.scalars(
            sa.select(AuditLog.action).where(AuditLog.target_type == "trade", AuditLog.target_id == trade.id)
        ).all()
        assert "trade.found_after_lost_reply" in recovered, recovered
