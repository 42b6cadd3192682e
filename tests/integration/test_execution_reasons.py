"""What a trade says about itself: a symbol the terminal does not know is a rejection with its reason
(not a failure), and a trade waiting to be retried shows the error and when the next attempt is due.

The task tests run the Celery task in this process (`apply`: its retries run here, at once) with
committed rows, as tests/integration/test_execution_attempts.py does.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.models import Account, AuditLog, Trade, TradeState
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal
from tests.conftest import Api

BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}


def orders_with(terminal, comment: str) -> int:
    orders = terminal.history_orders_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return sum(1 for o in orders or () if o.comment == comment)


def trade_actions(session, trade_id: int) -> list[str]:
    return list(
        session.scalars(
            sa.select(AuditLog.action)
            .where(AuditLog.target_type == "trade", AuditLog.target_id == trade_id)
            .order_by(AuditLog.id)
        )
    )


def the_trade(api: Api, user: dict) -> dict:
    """The user's one trade, as GET /api/v1/trades shows it. Read through the API, in a request of its own,
    also from inside the task: the test's session is the task's there (one scoped session per context)."""
    (trade,) = api.http.get("/api/v1/trades", headers=user["headers"]).json["items"]
    return dict(trade)


def fresh_trade(session, signal_id: int) -> Trade:
    session.rollback()  # a fresh snapshot: the task commits on its own connection
    return session.scalar(
        sa.select(Trade).where(Trade.signal_id == signal_id).execution_options(populate_existing=True)
    )


# --- item 5: a symbol the terminal does not know ---------------------------------------------------------


def test_an_unknown_symbol_rejects_the_trade_with_the_reason_and_sends_nothing(
    run, approved, terminal, db_session
):
    signal_id = approved({"instrument": "FOOBAR"})

    trade = run(signal_id)

    assert trade.state == TradeState.REJECTED
    assert trade.attempts == 0 and trade.sent_at is None and trade.order_ticket is None
    assert trade.failure_reason.startswith("unknown symbol FOOBAR: ")
    assert "symbol_info" in trade.failure_reason  # what the terminal said, for the owner to read
    assert orders_with(terminal, trade.comment) == 0
    assert trade_actions(db_session, trade.id) == ["trade.created", "trade.rejected_pre_trade"]
    problems = db_session.scalar(
        sa.select(AuditLog.meta["problems"]).where(
            AuditLog.target_id == trade.id, AuditLog.action == "trade.rejected_pre_trade"
        )
    )
    assert problems == [trade.failure_reason]

    assert run(signal_id).state == TradeState.REJECTED  # a second message changes nothing
    assert trade_actions(db_session, trade.id) == ["trade.created", "trade.rejected_pre_trade"]


@pytest.fixture
def tasks(sent_tasks):
    """workers.tasks, with the messages the code enqueues kept from the broker (the tests run the task
    themselves)."""
    import workers.tasks

    return workers.tasks


@pytest.fixture
def in_process_terminal(tasks, monkeypatch, broker):
    """The task's terminals: the test's simulated broker, in this process."""

    @contextmanager
    def open_terminal(account, **_):
        with Gateway.from_module(
            SimTerminal(broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    monkeypatch.setattr(tasks.runtime, "open_terminal", open_terminal)


def approve(api: Api, payload: dict, **account) -> tuple[int, dict, dict]:
    """A committed, approved signal on a new account; (signal id, user, account)."""
    user = api.user()
    made = api.account(user, **account)
    strategy = api.strategy_client(user, made["id"])
    signal_id = api.send_signal(strategy, {**payload, "comment": uuid.uuid4().hex[:8]}).json["id"]
    api.decide(user, signal_id)
    return signal_id, user, made


def test_the_task_rejects_a_trade_on_an_unknown_symbol_at_once(
    app, tasks, in_process_terminal, committed_db, terminal
):
    """The reproduction: FOOBAR was accepted, then the trade was `failed` with attempts 0."""
    api = Api(app.test_client())
    signal_id, user, _ = approve(api, {**BUY, "instrument": "FOOBAR"})

    assert tasks.execute_signal.apply(args=[signal_id]).get() == "rejected"

    trade = fresh_trade(committed_db, signal_id)
    shown = api.http.get(f"/api/v1/trades/{trade.id}", headers=user["headers"]).json
    assert (shown["state"], shown["attempts"], shown["next_retry_at"]) == ("rejected", 0, None)
    assert shown["failure_reason"].startswith("unknown symbol FOOBAR: ")
    assert orders_with(terminal, trade.comment) == 0


# --- item 6: a trade waiting for its next attempt says why and when -------------------------------------


def test_a_trade_waiting_on_an_unreachable_terminal_shows_the_error_and_the_next_retry(
    app, tasks, committed_db, monkeypatch
):
    api = Api(app.test_client())
    signal_id, user, account = approve(api, BUY)
    # The terminal went away after the account was added: nothing listens on port 1 (declared).
    committed_db.execute(
        sa.update(Account).where(Account.id == account["id"]).values(terminal_url="sim://127.0.0.1:1")
    )
    committed_db.commit()
    seen: list[tuple[datetime, dict]] = []
    real_open = tasks.runtime.open_terminal

    def watching_open(account_row, **kwargs):
        # What the owner reads while the task waits for its next attempt (eager retries run at once, so
        # each opening after the first is "the next attempt", and the trade shows what led to it).
        seen.append((utcnow(), the_trade(api, user)))
        return real_open(account_row, **kwargs)

    monkeypatch.setattr(tasks.runtime, "open_terminal", watching_open)
    max_retries = tasks.runtime.settings().execution_max_retries
    assert max_retries >= 2

    assert tasks.execute_signal.apply(args=[signal_id]).get() == "failed"

    assert len(seen) == max_retries + 1
    first_seen = seen[0][1]
    assert (first_seen["last_error"], first_seen["next_retry_at"]) == (None, None)
    for retry, (when, shown) in enumerate(seen[1:]):
        assert (shown["state"], shown["attempts"]) == ("pending", 0)
        assert shown["last_error"].startswith("TerminalUnavailable: ")
        assert "connection to the terminal failed" in shown["last_error"]
        # Due after the back-off of that retry (1, 2, 4, ... s) from the failure just before it.
        due = datetime.fromisoformat(shown["next_retry_at"])
        back_off = tasks.retry_countdown(retry)
        assert timedelta(seconds=back_off - 1) < due - when <= timedelta(seconds=back_off)

    trade = fresh_trade(committed_db, signal_id)
    shown = api.http.get(f"/api/v1/trades/{trade.id}", headers=user["headers"]).json
    assert shown["state"] == "failed" and shown["failure_reason"].startswith("terminal unreachable: ")
    # Nothing is due any more; the last error stays, with the reason it failed.
    assert shown["next_retry_at"] is None and shown["last_error"].startswith("TerminalUnavailable: ")


class GarbledTicks(SimTerminal):
    """Answers every tick request with a reply missing its prices: an error nobody classified."""

    def symbol_info_tick(self, symbol):
        return {"time": 0}


def test_a_trade_retried_after_an_unclassified_error_shows_it_and_a_fill_clears_the_retry(
    app, tasks, committed_db, monkeypatch, broker, terminal
):
    api = Api(app.test_client())
    signal_id, user, _ = approve(api, BUY)
    seen: list[dict] = []

    @contextmanager
    def first_garbled_then_fine(account, **_):
        if seen:  # the retry: a sound terminal, and a look at what the owner sees first
            seen.append(the_trade(api, user))
            kind = SimTerminal
        else:
            seen.append({})
            kind = GarbledTicks
        with Gateway.from_module(
            kind(broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    monkeypatch.setattr(tasks.runtime, "open_terminal", first_garbled_then_fine)

    assert tasks.execute_signal.apply(args=[signal_id]).get() == "filled"

    retrying = seen[1]
    assert (retrying["state"], retrying["attempts"]) == ("pending", 1)
    assert retrying["last_error"].startswith("TerminalProtocolError: symbol_info_tick")
    assert retrying["next_retry_at"] is not None
    trade = fresh_trade(committed_db, signal_id)
    shown = api.http.get(f"/api/v1/trades/{trade.id}", headers=user["headers"]).json
    assert shown["state"] == "filled" and shown["next_retry_at"] is None
    assert shown["last_error"] == retrying["last_error"]  # what happened on the way, kept
    assert orders_with(terminal, trade.comment) == 1
