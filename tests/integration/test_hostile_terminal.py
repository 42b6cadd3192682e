"""A hostile terminal cannot run code in TradeGuard's workers (issue 10, item 1).

The hostile server (tests/hostile_terminal.py) is an RPyC classic server on a port the operator
declared, so TradeGuard does connect to it: through the gateway in this process, and through a real
Celery worker reconciling an account whose terminal it is. It tries to create a marker file on the
connecting side by calling back into it (`callback`) and by answering with a malicious pickle
(`pickle`); the marker must stay absent, the attempts must have been made and refused, and the sync
must fail with a reason that says what happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.models import AccountSync
from shared.mt5.errors import TerminalProtocolError
from shared.mt5.gateway import Gateway
from shared.mt5.pool import ConnectionPool
from shared.mt5.terminals import declared_terminals
from tests.conftest import Api
from tests.processes import ROOT, celery_worker, declared_terminal_port, listening, wait_for

# The classic service's ways back into the client, each of which the hostile server tries.
CALLBACKS = ("getmodule", "modules", "eval", "execute", "teleport", "root_class", "inspect_root")


@dataclass
class Hostile:
    url: str
    marker: Path
    log_path: Path

    def attempts(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []


@pytest.fixture(params=["callback", "pickle"])
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    folder = Path(tempfile.mkdtemp(prefix="tg-hostile-"))
    port = declared_terminal_port()
    marker, log_path = folder / "pwned", folder / "attempts.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.hostile_terminal",
            *("--port", str(port), "--marker", str(marker), "--log", str(log_path)),
            *("--variant", request.param),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: listening(port), timeout=20), "the hostile server did not start"
        yield Hostile(f"mt5linux://127.0.0.1:{port}", marker, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def assert_nothing_ran_here(hostile: Hostile, variant: str) -> None:
    time.sleep(0.3)  # a shell the attacker started would have touched the file by now
    assert not hostile.marker.exists(), "the hostile terminal ran code on our side"
    attempts = hostile.attempts()
    assert "helper called" in attempts  # it got as far as answering a run of calls
    if variant == "callback":
        tried = {line.split(":")[0] for line in attempts if ": refused: " in line}
        assert tried == set(CALLBACKS), attempts
        assert not [line for line in attempts if line.endswith("went through")], attempts


def test_a_hostile_terminal_runs_nothing_in_the_gateways_process(hostile: Hostile, request) -> None:
    variant = request.node.callspec.params["hostile"]
    with (
        pytest.raises(TerminalProtocolError, match="instead of JSON text") as raised,
        Gateway.open(
            hostile.url, declared=declared_terminals([hostile.url]), login=666, password="x", server="x"
        ) as gateway,
    ):
        gateway.account()
    assert raised.value.call == "initialize"  # the very first run of calls was refused
    assert_nothing_ran_here(hostile, variant)


def test_a_pooled_connection_to_a_hostile_terminal_runs_nothing(hostile: Hostile, request) -> None:
    variant = request.node.callspec.params["hostile"]
    pool = ConnectionPool()
    gateway = Gateway.open(
        hostile.url, declared=declared_terminals([hostile.url]), login=1, password="x", server="x", pool=pool
    )
    with pytest.raises(TerminalProtocolError):
        gateway.read_account(*_window())
    gateway.close()
    assert pool.idle() == 0  # a connection that misbehaved is never reused
    assert_nothing_ran_here(hostile, variant)


def owner_of_an_account_on(api: Api, hostile: Hostile) -> tuple[dict, int]:
    """A user and their account on the hostile terminal. The operator declared it (tests/conftest.py
    declares the port), so the account is accepted and the workers connect; unchecked (`verify: false`),
    since the hostile terminal would not let the API's check log in."""
    user = api.user()
    return user, api.account(user, terminal_url=hostile.url, login=666, verify=False)["id"]


def _window():
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return now - timedelta(days=1), now


def test_a_real_worker_reconciling_a_hostile_terminal_runs_nothing_and_records_why(
    app, committed_db, hostile: Hostile, request
) -> None:
    from shared.core.queue import RECONCILE_ACCOUNTS
    from workers.celery_app import celery_app

    variant = request.node.callspec.params["hostile"]
    api = Api(app.test_client())
    user, account_id = owner_of_an_account_on(api, hostile)

    def failed_sync() -> AccountSync | None:
        committed_db.rollback()
        row = committed_db.scalar(sa.select(AccountSync).where(AccountSync.account_id == account_id))
        return row if row is not None and row.consecutive_failures >= 1 else None

    with celery_worker() as worker:
        celery_app.send_task(RECONCILE_ACCOUNTS, args=[[account_id]])
        assert wait_for(failed_sync, timeout=30), worker.log()
        sync = failed_sync()
        assert sync is not None and sync.last_synced_at is None
        assert sync.last_error is not None and sync.last_error.startswith("TerminalProtocolError: ")
        assert "instead of JSON text" in sync.last_error
        assert_nothing_ran_here(hostile, variant)
        # The worker is alive and well: the attack did not take it down either.
        assert worker.proc.poll() is None

    status = api.http.get(f"/api/v1/accounts/{account_id}/status", headers=user["headers"]).json
    assert status["last_error"].startswith("TerminalProtocolError: ") and status["last_synced_at"] is None


def test_a_real_orders_worker_executing_on_a_hostile_terminal_runs_nothing_and_fails_the_trade(
    app, committed_db, hostile: Hostile, request
) -> None:
    from shared.models import Trade, TradeState

    variant = request.node.callspec.params["hostile"]
    api = Api(app.test_client())
    user, account_id = owner_of_an_account_on(api, hostile)
    strategy = api.strategy_client(user, account_id)
    signal = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}
    signal_id = api.send_signal(strategy, signal).json["id"]

    def failed_trade() -> Trade | None:
        committed_db.rollback()
        trade = committed_db.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
        return trade if trade is not None and trade.state == TradeState.FAILED else None

    # One attempt, no retry: the outcome of that one attempt is what this test is about.
    with celery_worker(env={"TRADEGUARD_EXECUTION_MAX_RETRIES": "0"}) as worker:
        api.decide(user, signal_id)
        assert wait_for(failed_trade, timeout=30), worker.log()
        trade = failed_trade()
        assert trade is not None and trade.order_ticket is None
        assert "TerminalProtocolError" in (trade.failure_reason or "")
        assert_nothing_ran_here(hostile, variant)
        assert worker.proc.poll() is None
