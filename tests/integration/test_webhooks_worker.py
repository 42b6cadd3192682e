"""Webhook deliveries through a real Celery worker process and a real local HTTP receiver: retries until
the receiver answers 200 (one delivery, one id, every POST signed), the retry count when it never
does, a receiver that does not answer in time, and a trade.filled sent by a real execution.

The worker runs with TRADEGUARD_WEBHOOK_RETRY_SCALE=0.001 (the hour of back-off in about 4 s), private
addresses allowed (the receiver is on 127.0.0.1), and a 1-s timeout."""

from __future__ import annotations

import dataclasses
import json
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.extensions import SETTINGS, task_queue
from shared.models import DeliveryStatus, Trade, WebhookDelivery
from shared.notifications import rules, webhooks
from tests.conftest import Api
from tests.processes import celery_worker, terminal_server, wait_for
from tests.webhook_receiver import receiver

WORKER_ENV = {
    "TRADEGUARD_WEBHOOK_ALLOW_PRIVATE": "true",
    "TRADEGUARD_WEBHOOK_RETRY_SCALE": "0.001",
    "TRADEGUARD_WEBHOOK_TIMEOUT_SECONDS": "1",
}


@pytest.fixture(scope="module")
def worker():
    with celery_worker(env=WORKER_ENV, name="webhooks") as process:
        yield process


@pytest.fixture
def private_allowed(app, monkeypatch):
    """The test's web app accepts webhooks on 127.0.0.1 (as the worker delivers to them)."""
    settings = dataclasses.replace(app.extensions[SETTINGS], webhook_allow_private=True)
    monkeypatch.setitem(app.extensions, SETTINGS, settings)


def deliveries(session) -> list[WebhookDelivery]:
    session.rollback()  # a fresh snapshot: the worker commits in another process
    # Rows loaded before a commit of this session (the API's requests share it) are not expired by it.
    session.expire_all()
    return list(session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.id)))


def create_webhook(api: Api, user, url: str, **body) -> dict:
    response = api.http.post("/api/v1/webhooks", json={"url": url, **body}, headers=user["headers"])
    assert response.status_code == 201, response.json
    return dict(response.json)


def test_a_receiver_that_fails_twice_gets_one_delivery_three_times_signed_then_it_is_delivered(
    app, committed_db, worker, private_allowed
):
    api = Api(app.test_client())
    user = api.user()
    with receiver(lambda n: 500 if n < 2 else 200) as hook_receiver:
        hook = create_webhook(api, user, hook_receiver.url)
        assert (
            webhooks.notify(committed_db, task_queue(app), user["id"], "alert.pending", {"account_id": 3})
            == 1
        )
        committed_db.commit()

        assert wait_for(lambda: deliveries(committed_db)[0].status == DeliveryStatus.DELIVERED, timeout=30), (
            worker.log()
        )
        time.sleep(1.0)  # nothing more arrives after the 200
        (row,) = deliveries(committed_db)
        assert (row.attempts, row.status_code, row.last_error) == (3, 200, None)
        received = hook_receiver.received
        assert len(received) == 3
        assert {got.headers["X-TradeGuard-Delivery"] for got in received} == {row.delivery_id}
        for got in received:
            assert got.signed_by(hook["secret"]), got.headers
            body = json.loads(got.body)
            assert (body["id"], body["event"], body["account_id"]) == (row.delivery_id, "alert.pending", 3)
            assert got.headers["X-TradeGuard-Event"] == "alert.pending"
        listed = api.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=user["headers"]).json
        shown = listed["items"][0]
        assert (shown["status"], shown["attempts"], shown["status_code"]) == ("delivered", 3, 200)


def test_a_receiver_that_never_succeeds_gets_every_attempt_then_the_delivery_fails(
    app, committed_db, worker, private_allowed
):
    api = Api(app.test_client())
    user = api.user()
    with receiver(lambda _: 500) as hook_receiver:
        create_webhook(api, user, hook_receiver.url, events=["breaker.opened"])
        webhooks.notify(committed_db, task_queue(app), user["id"], "breaker.opened", {"account_id": 1})
        committed_db.commit()

        assert wait_for(lambda: deliveries(committed_db)[0].status == DeliveryStatus.FAILED, timeout=60), (
            worker.log()
        )
        time.sleep(1.0)
        (row,) = deliveries(committed_db)
        assert row.attempts == rules.MAX_ATTEMPTS == hook_receiver.count()
        assert (row.status_code, row.last_error) == (500, "HTTP 500: answer 500")


def test_a_receiver_that_does_not_answer_in_time_is_retried_until_its_webhook_is_deleted(
    app, committed_db, worker, private_allowed
):
    api = Api(app.test_client())
    user = api.user()
    with receiver(lambda _: (2.5, 200)) as hook_receiver:
        hook = create_webhook(api, user, hook_receiver.url)
        webhooks.notify(committed_db, task_queue(app), user["id"], "market.blocked", {"symbol": "EURUSD"})
        committed_db.commit()

        # A third attempt claimed: the second's result is recorded.
        assert wait_for(lambda: deliveries(committed_db)[0].attempts >= 3, timeout=30), worker.log()
        (row,) = deliveries(committed_db)
        assert row.status == DeliveryStatus.PENDING
        assert row.last_error == "no answer within 1 s"

        deleted = api.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=user["headers"])
        assert deleted.status_code == 204
        sent_by_then = hook_receiver.count()
        time.sleep(2.0)  # longer than the back-off of several more attempts
        # At most the attempt that was already on its way when the delete committed.
        assert hook_receiver.count() <= sent_by_then + 1
        (row,) = deliveries(committed_db)
        assert (row.status, row.last_error) == (DeliveryStatus.FAILED, "the webhook was deleted")


def test_a_real_execution_sends_trade_filled_to_the_owners_webhook(
    app, committed_db, worker, private_allowed
):
    api = Api(app.test_client())
    with receiver() as hook_receiver, terminal_server() as port:
        user = api.user()
        hook = create_webhook(api, user, hook_receiver.url, events=["trade.filled", "trade.rejected"])
        account = api.account(user, terminal_url=f"sim://127.0.0.1:{port}", login=7101)
        strategy = api.strategy_client(user, account["id"])
        signal = api.send_signal(strategy, {"instrument": "EURUSD", "side": "buy", "volume": "0.10"}).json
        api.decide(user, signal["id"])

        assert wait_for(lambda: hook_receiver.count() >= 1, timeout=40), worker.log()
        (got,) = hook_receiver.received
        assert got.signed_by(hook["secret"])
        body = json.loads(got.body)
        committed_db.rollback()
        trade = committed_db.scalar(sa.select(Trade).where(Trade.signal_id == signal["id"]))
        assert (body["event"], body["account_id"]) == ("trade.filled", account["id"])
        data = body["data"]
        assert (data["trade_id"], data["signal_id"], data["state"], data["side"]) == (
            trade.id,
            signal["id"],
            "filled",
            "buy",
        )
        assert (
            Decimal(data["filled_volume"]) == Decimal("0.1")
            and data["position_ticket"] == trade.position_ticket
        )
