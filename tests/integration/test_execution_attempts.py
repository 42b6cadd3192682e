"""Work that must not loop for ever: errors nobody classified count as attempts on the trade row, up to
a limit, and a password no configured key decrypts fails the trade (and the sync) at once.

The task tests run the Celery task in this process (`apply`: its retries run here, at once) against the
simulated broker of the test, with committed rows; the last ones run a real worker process.
"""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import rpyc
import sqlalchemy as sa
from cryptography.fernet import Fernet

from shared.core.crypto import SecretBox
from shared.core.db import utcnow
from shared.execution import service as execution
from shared.models import Account, AccountSync, AuditLog, Trade, TradeState
from shared.mt5.errors import OrderOutcomeUnknown
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal
from tests.conftest import Api
from tests.processes import celery_worker, terminal_server, wait_for

BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}


class MisbehavingTerminal(SimTerminal):
    """The simulated terminal, except that the functions named in `garbled` answer with replies missing
    their fields: what a misbehaving terminal server might send."""

    def __init__(self, broker, garbled: set[str]):
        super().__init__(broker)
        self.garbled = garbled

    def symbol_info_tick(self, symbol):
        if "symbol_info_tick" in self.garbled:
            return {"time": 0}  # no prices
        return super().symbol_info_tick(symbol)

    def positions_get(self, *args, **kwargs):
        if "positions_get" in self.garbled:
            return [{"ticket": 1}]
        return super().positions_get(*args, **kwargs)


def fresh(session, model, **where):
    session.rollback()  # a fresh snapshot: the task commits on its own connection
    # The app's sessions keep loaded rows after a commit (expire_on_commit=False): reload them.
    return session.scalar(sa.select(model).filter_by(**where).execution_options(populate_existing=True))


def actions(session, trade_id) -> list[str]:
    return list(
        session.scalars(
            sa.select(AuditLog.action)
            .where(AuditLog.target_type == "trade", AuditLog.target_id == trade_id)
            .order_by(AuditLog.id)
        )
    )


def audited_errors(session, trade_id) -> list[str]:
    return [
        meta["error"]
        for meta in session.scalars(
            sa.select(AuditLog.meta)
            .where(AuditLog.target_id == trade_id, AuditLog.action == "trade.attempt_failed")
            .order_by(AuditLog.id)
        )
    ]


def lose_the_key_of(session, account_id: int) -> None:
    """Store the account's password encrypted with a key that is not (any longer) configured."""
    stranger = SecretBox([Fernet.generate_key().decode()])
    session.execute(
        sa.update(Account)
        .where(Account.id == account_id)
        .values(credentials_encrypted=stranger.encrypt("broker-pass"))
    )
    session.commit()


@pytest.fixture
def tasks(sent_tasks):
    """workers.tasks, with the messages the code enqueues (approvals' executions) kept from the broker
    (the tests run the task themselves; a message left in the queue would reach a later test's
    worker)."""
    import workers.tasks

    return workers.tasks


@pytest.fixture
def runtime():
    import workers.runtime

    return workers.runtime


@pytest.fixture
def limit(tasks) -> int:
    """Attempts a trade gets: the first and TRADEGUARD_EXECUTION_MAX_RETRIES more."""
    return int(tasks.runtime.settings().execution_max_retries) + 1


@pytest.fixture
def garbled() -> set[str]:
    """The terminal functions that answer garbage on the task's terminals (see MisbehavingTerminal)."""
    return set()


@pytest.fixture
def opened(runtime, monkeypatch, broker, garbled):
    """The task's terminals: the test's simulated broker, in this process, answering garbage from the
    functions in `garbled`. Lists each opening."""
    openings: list[int] = []

    @contextmanager
    def open_terminal(account, **_):
        openings.append(account.id)
        with Gateway.from_module(
            MisbehavingTerminal(broker, garbled),
            login=account.login,
            password="x",
            server=account.server,
            timeout=5,
        ) as gateway:
            yield gateway

    monkeypatch.setattr(runtime, "open_terminal", open_terminal)
    return openings


@pytest.fixture
def approved_signal(app, committed_db, tasks):
    """Makes an approved signal (committed); returns (signal id, account id)."""
    api = Api(app.test_client())

    def make(*, lost_key: bool = False) -> tuple[int, int]:
        user = api.user()
        account = api.account(user)
        if lost_key:
            lose_the_key_of(committed_db, account["id"])
        strategy = api.strategy_client(user, account["id"])
        signal_id = api.send_signal(strategy, {**BUY, "comment": uuid.uuid4().hex[:8]}).json["id"]
        api.decide(user, signal_id)
        return signal_id, account["id"]

    return make


def orders_sent(terminal, comment: str) -> int:
    orders = terminal.history_orders_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return sum(1 for o in orders or () if o.comment == comment)


# --- errors nobody classified ---------------------------------------------------------------------------


def test_an_unclassified_error_is_retried_up_to_the_limit_then_the_trade_fails_with_it(
    tasks, limit, opened, garbled, approved_signal, committed_db, terminal
):
    garbled.add("symbol_info_tick")
    signal_id, _ = approved_signal()

    result = tasks.execute_signal.apply(args=[signal_id])

    assert result.get() == "failed"
    assert len(opened) == limit  # the first attempt and the retries: exactly the limit
    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert trade.state == TradeState.FAILED and trade.attempts == limit
    errors = audited_errors(committed_db, trade.id)
    assert len(errors) == limit and len(set(errors)) == 1
    # The error's type and message, as the owner sees it in GET /trades/{id}.
    assert trade.failure_reason == f"gave up after {limit} attempts: {errors[0]}"
    assert re.fullmatch(r"\w+: .+", errors[0]), errors[0]
    assert actions(committed_db, trade.id) == ["trade.created"] + ["trade.attempt_failed"] * limit + [
        "trade.failed"
    ]
    assert orders_sent(terminal, trade.comment) == 0


def test_the_count_survives_a_fresh_message_from_the_safety_net(
    tasks, limit, opened, garbled, approved_signal, committed_db, tmp_path
):
    """The safety net's message starts Celery's retry count at 0; the trade's count does not."""
    garbled.add("symbol_info_tick")
    signal_id, _ = approved_signal()
    trade = execution._claim_trade(committed_db, signal_id, execution.ExecutionSettings(lock_dir=tmp_path))
    committed_db.execute(sa.update(Trade).where(Trade.id == trade.id).values(attempts=limit - 1))
    committed_db.commit()

    assert tasks.execute_signal.apply(args=[signal_id]).get() == "failed"

    assert len(opened) == 1  # one attempt was left, and only one was made
    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert trade.state == TradeState.FAILED and trade.attempts == limit
    assert trade.failure_reason.startswith(f"gave up after {limit} attempts: ")


def test_a_trade_whose_order_may_have_been_sent_is_never_failed_and_is_left_to_reconciliation(
    tasks, sent_tasks, limit, opened, garbled, approved_signal, committed_db, monkeypatch, terminal
):
    """The reply to order_send is lost, and every look for the order afterwards chokes on the
    terminal's reply: the attempts run out, but the order may exist, so the trade stays `sent` (no
    failure, no second order), the safety net stops sending it, and reconciliation settles it."""
    signal_id, account_id = approved_signal()
    terminal.sim_lose_next_reply()
    garbled.add("positions_get")

    assert tasks.execute_signal.apply(args=[signal_id]).get() == "sent"

    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert trade.state == TradeState.SENT and trade.failure_reason is None
    # One order sent, then one failed look per retry until the limit.
    assert trade.attempts == limit
    assert actions(committed_db, trade.id).count("trade.sent") == 1
    assert len(audited_errors(committed_db, trade.id)) == limit - 1
    assert orders_sent(terminal, trade.comment) == 1

    committed_db.execute(
        sa.update(Trade).where(Trade.id == trade.id).values(updated_at=utcnow() - timedelta(minutes=5))
    )
    committed_db.commit()
    sent_tasks.sent.clear()
    assert tasks.dispatch_approved.run() == 0 and sent_tasks.executions() == []

    garbled.discard("positions_get")  # the terminal answers properly again
    assert tasks.reconcile_accounts.run([account_id]) == {"ok": 1}
    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert trade.state == TradeState.FILLED and "trade.filled_by_reconciliation" in actions(
        committed_db, trade.id
    )


def test_the_safety_net_skips_sent_trades_out_of_attempts_but_not_pending_ones(
    tasks, sent_tasks, limit, approved_signal, committed_db, tmp_path
):
    settings = execution.ExecutionSettings(lock_dir=tmp_path)
    trades = {}
    for name, state, attempts in [
        ("sent, attempts left", TradeState.SENT, limit - 1),
        ("sent, out of attempts", TradeState.SENT, limit),
        ("pending, out of attempts", TradeState.PENDING, limit),
    ]:
        signal_id, _ = approved_signal()
        trade = execution._claim_trade(committed_db, signal_id, settings)
        committed_db.execute(
            sa.update(Trade)
            .where(Trade.id == trade.id)
            .values(state=state, attempts=attempts, updated_at=utcnow() - timedelta(minutes=5))
        )
        trades[name] = signal_id
    committed_db.commit()
    sent_tasks.sent.clear()

    assert tasks.dispatch_approved.run() == 2
    # A pending trade is still run: the run either executes it or, failing, gives it up for good.
    assert sorted(sent_tasks.executions()) == sorted(
        [trades["sent, attempts left"], trades["pending, out of attempts"]]
    )


def test_an_attempt_that_sent_its_order_is_counted_once(
    run, approved, terminal, db_session, engine, tmp_path
):
    settings = execution.ExecutionSettings(lock_dir=tmp_path)
    signal_id = approved()
    started_at = utcnow()
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        run(signal_id)  # sent (counted), then the reply is lost

    # Say the same attempt then failed with an unclassified error: its send already counted it.
    trade = execution.count_failed_attempt(
        db_session, signal_id, "KeyError: 'bid'", started_at=started_at, engine=engine, settings=settings
    )
    assert trade.state == TradeState.SENT and trade.attempts == 1
    # A later attempt that fails before sending is counted.
    trade = execution.count_failed_attempt(
        db_session, signal_id, "KeyError: 'ticket'", started_at=utcnow(), engine=engine, settings=settings
    )
    assert trade.attempts == 2
    assert audited_errors(db_session, trade.id) == ["KeyError: 'bid'", "KeyError: 'ticket'"]


def test_a_finished_trade_is_not_counted(run, approved, db_session, engine, tmp_path):
    signal_id = approved()
    trade = run(signal_id)
    assert trade.state == TradeState.FILLED
    trade = execution.count_failed_attempt(
        db_session,
        signal_id,
        "KeyError: 'bid'",
        started_at=utcnow(),
        engine=engine,
        settings=execution.ExecutionSettings(lock_dir=tmp_path),
    )
    assert trade.state == TradeState.FILLED and trade.attempts == 1
    assert audited_errors(db_session, trade.id) == []


# --- a password no configured key decrypts ------------------------------------------------------------


def test_a_password_no_key_decrypts_fails_the_trade_at_once_and_sends_nothing(
    tasks, runtime, approved_signal, committed_db, monkeypatch
):
    signal_id, account_id = approved_signal(lost_key=True)
    openings: list[int] = []
    real_open = runtime.open_terminal  # the real one: it decrypts the password

    def counting_open(account):
        openings.append(account.id)
        return real_open(account)

    monkeypatch.setattr(runtime, "open_terminal", counting_open)

    assert tasks.execute_signal.apply(args=[signal_id]).get() == "failed"

    assert openings == [account_id]  # no retry: retrying cannot help
    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert trade.state == TradeState.FAILED and trade.attempts == 0 and trade.order_ticket is None
    assert trade.failure_reason.startswith(f"CredentialsUnreadable: account {account_id}: ")
    assert "re-enter the account's password" in trade.failure_reason
    assert "TRADEGUARD_ENCRYPTION_KEY" in trade.failure_reason
    assert actions(committed_db, trade.id) == ["trade.created", "trade.failed"]


def test_a_sync_of_an_account_whose_password_no_key_decrypts_fails_with_the_reason_and_feeds_the_breaker(
    tasks, app, committed_db
):
    api = Api(app.test_client())
    user = api.user()
    unreadable = api.account(user, login=9101)["id"]
    readable = api.account(user, login=9102)["id"]
    lose_the_key_of(committed_db, unreadable)

    breaker_failures = tasks.runtime.settings().breaker_failures
    assert tasks.reconcile_accounts.run([unreadable, readable]) == {"failed": 1, "ok": 1}

    sync = fresh(committed_db, AccountSync, account_id=unreadable)
    assert sync.last_synced_at is None and sync.consecutive_failures == 1
    assert sync.last_error.startswith(f"CredentialsUnreadable: account {unreadable}: ")
    assert "re-enter the account's password" in sync.last_error
    assert fresh(committed_db, AccountSync, account_id=readable).last_synced_at is not None

    for _ in range(breaker_failures - 1):
        assert tasks.reconcile_accounts.run([unreadable]) == {"failed": 1}
    sync = fresh(committed_db, AccountSync, account_id=unreadable)
    assert sync.consecutive_failures == breaker_failures and sync.breaker_open_until is not None
    opened = committed_db.scalar(
        sa.select(AuditLog.meta).where(
            AuditLog.action == "account.breaker_opened", AuditLog.target_id == unreadable
        )
    )
    assert opened["error"] == sync.last_error


# --- through a real worker process ----------------------------------------------------------------------


def test_a_real_worker_fails_a_trade_whose_password_no_key_decrypts(app, committed_db):
    api = Api(app.test_client())
    with celery_worker() as worker:
        user = api.user()
        account = api.account(user)  # sim://: the worker's own simulated terminal
        lose_the_key_of(committed_db, account["id"])
        strategy = api.strategy_client(user, account["id"])
        signal_id = api.send_signal(strategy, {**BUY, "comment": uuid.uuid4().hex[:8]}).json["id"]
        api.decide(user, signal_id)  # the approval sends the execution message to the worker

        def failed():
            trade = fresh(committed_db, Trade, signal_id=signal_id)
            return trade is not None and trade.state == TradeState.FAILED

        assert wait_for(failed, timeout=30), worker.log()
    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert "CredentialsUnreadable" in trade.failure_reason and trade.attempts == 0
    assert actions(committed_db, trade.id) == ["trade.created", "trade.failed"]
    shown = api.http.get(f"/api/v1/trades/{trade.id}", headers=user["headers"]).json
    assert shown["state"] == "failed" and "re-enter the account's password" in shown["failure_reason"]


def test_a_real_worker_retries_a_misbehaving_terminal_then_fails_the_trade(app, committed_db):
    """The `terminal` process answers every tick request with a reply missing its prices. The worker
    retries with back-off (Celery retry messages), counting on the trade, and fails it at the limit."""
    api = Api(app.test_client())
    login = 9201
    with terminal_server() as port:
        url = f"sim://127.0.0.1:{port}"
        control = rpyc.classic.connect("127.0.0.1", port)
        control.execute(
            "from shared.mt5.sim.terminal import SimTerminal\n"
            "SimTerminal.symbol_info_tick = lambda self, symbol: {'time': 0}"
        )
        control.close()
        user = api.user()
        account = api.account(user, login=login)
        # Pointed at this test's terminal process behind the API's back, and declared to the worker
        # only: the test app's declared terminals were fixed when it was made.
        committed_db.execute(sa.update(Account).where(Account.id == account["id"]).values(terminal_url=url))
        committed_db.commit()
        env = {"TRADEGUARD_EXECUTION_MAX_RETRIES": "2", "TRADEGUARD_TERMINALS": f"sim://,{url}"}
        with celery_worker(env=env) as worker:
            strategy = api.strategy_client(user, account["id"])
            signal_id = api.send_signal(strategy, {**BUY, "comment": uuid.uuid4().hex[:8]}).json["id"]
            api.decide(user, signal_id)

            def failed():
                trade = fresh(committed_db, Trade, signal_id=signal_id)
                return trade is not None and trade.state == TradeState.FAILED

            assert wait_for(failed, timeout=40), worker.log()
            log = worker.log()
    trade = fresh(committed_db, Trade, signal_id=signal_id)
    assert trade.attempts == 3  # TRADEGUARD_EXECUTION_MAX_RETRIES=2: the first attempt and two retries
    errors = audited_errors(committed_db, trade.id)
    assert len(errors) == 3 and trade.failure_reason == f"gave up after 3 attempts: {errors[-1]}"
    assert len(re.findall(r"retry: Retry in [\d.]+s", log)) == 2, log
    assert "trade.sent" not in actions(committed_db, trade.id)
