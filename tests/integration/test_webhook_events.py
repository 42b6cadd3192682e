"""Events today's code sends to webhooks: a trade closed and a breaker opened, from reconciliation's
write step, once each. (trade.filled from a real execution: test_webhooks_worker.py.)"""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

from shared.core.extensions import secret_box, task_queue
from shared.core.queue import DELIVER_WEBHOOKS
from shared.models import Trade, User, WebhookDelivery
from shared.notifications import webhooks


def delivered_events(db_session):
    return [
        (row.event, row.payload["data"])
        for row in db_session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.id))
    ]


def test_a_stop_out_and_an_opened_breaker_are_sent_once_each(sync, run, approved, db_session, terminal):
    trade = run(approved({"volume": "9"}))
    owner = db_session.get(User, trade.owner_id)
    # An address literal: resolved without DNS, and public.
    webhooks.create_webhook(
        db_session, secret_box(), owner, url="http://93.184.216.34/hook", events=None, allow_private=False
    )
    db_session.commit()
    queue = task_queue()
    queue.sent.clear()

    assert sync(trade.account_id, queue=queue).status == "ok"
    assert delivered_events(db_session) == []  # matched: nothing the owner is told of
    terminal.sim_gap("EURUSD", -5)
    terminal.positions_get()
    sync(trade.account_id, queue=queue)
    sync(trade.account_id, queue=queue)  # already closed: not again

    trade = db_session.get(Trade, trade.id)
    ((event, data),) = delivered_events(db_session)
    assert event == "trade.closed"
    assert (data["trade_id"], data["account_id"], data["close_reason"]) == (
        trade.id,
        trade.account_id,
        "stop_out",
    )
    assert Decimal(data["pnl"]) == trade.pnl

    sync.unreachable.add(trade.account_id)
    for _ in range(4):  # trips at the third failure; the fourth finds it open
        sync(trade.account_id, queue=queue)
    events = delivered_events(db_session)
    assert [event for event, _ in events] == ["trade.closed", "breaker.opened"]
    breaker = events[1][1]
    assert breaker["account_id"] == trade.account_id and breaker["consecutive_failures"] == 3
    assert "TerminalUnavailable" in breaker["error"]
    # Each sent after its commit (two commits: two tasks of one delivery each).
    rows = db_session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    assert [(task.name, task.args) for task in queue.sent] == [
        (DELIVER_WEBHOOKS, [[row.delivery_id]]) for row in rows
    ]


def test_without_a_queue_reconciliation_sends_nothing(sync, run, approved, db_session, terminal):
    trade = run(approved({"volume": "9"}))
    owner = db_session.get(User, trade.owner_id)
    webhooks.create_webhook(
        db_session, secret_box(), owner, url="http://93.184.216.34/hook", events=None, allow_private=False
    )
    db_session.commit()
    sync(trade.account_id)
    terminal.sim_gap("EURUSD", -5)
    terminal.positions_get()
    sync(trade.account_id)
    assert db_session.get(Trade, trade.id).state.value == "closed"
    assert delivered_events(db_session) == []
