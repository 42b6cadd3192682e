"""One delivery attempt (`delivery.attempt`), in this process, against a real local receiver: the POST
goes to the address the host resolved to, under the host's name; an address that has turned private
since the webhook was made is never contacted; a delivered delivery is never sent again, and a claimed
attempt keeps a second copy out; redirects are not followed; the last failed attempt fails it."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from shared.core.extensions import secret_box, task_queue
from shared.models import DeliveryStatus, User, WebhookDelivery
from shared.notifications import delivery, rules, webhooks
from shared.notifications.delivery import DeliverySettings, Outcome
from tests.webhook_receiver import receiver

ALLOW_PRIVATE = DeliverySettings(allow_private=True, timeout_seconds=2)


@pytest.fixture
def dns(monkeypatch):
    """Names only this test's resolver knows (the machine resolves none of them)."""
    names: dict[str, list[str]] = {}

    def resolve(host, port):
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[host]

    monkeypatch.setattr(delivery, "resolve", resolve)
    return names


@pytest.fixture
def owner(api, db_session):
    return db_session.get(User, api.user()["id"])


def one_delivery(db_session, owner, url, *, allow_private=True, event="alert.pending", data=None):
    """A webhook of `owner` at `url` and one pending delivery to it; (secret, delivery row)."""
    _, secret = webhooks.create_webhook(
        db_session, secret_box(), owner, url=url, events=None, allow_private=allow_private
    )
    assert webhooks.notify(db_session, task_queue(), owner.id, event, data or {"account_id": 4}) == 1
    db_session.commit()
    row = db_session.scalars(sa.select(WebhookDelivery).where(WebhookDelivery.owner_id == owner.id)).one()
    return secret, row


def reloaded(db_session, row):
    db_session.expire_all()
    return db_session.get(WebhookDelivery, row.id)


def test_the_post_goes_to_the_resolved_address_under_the_hosts_name(db_session, owner, dns):
    with receiver() as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        url = f"http://hooks.example.test:{hook_receiver.port}/in?k=1"
        secret, row = one_delivery(db_session, owner, url)

        outcome = delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE)

        assert outcome == Outcome(DeliveryStatus.DELIVERED)
        (got,) = hook_receiver.received
        assert got.path == "/in?k=1"
        assert got.headers["Host"] == f"hooks.example.test:{hook_receiver.port}"
        assert got.headers["X-TradeGuard-Delivery"] == row.delivery_id
        assert got.headers["X-TradeGuard-Event"] == "alert.pending"
        assert got.headers["User-Agent"] == "TradeGuard-Webhook/1"
        assert got.headers["Content-Type"] == "application/json"
        assert got.signed_by(secret) and not got.signed_by(secret + "x")
        assert json.loads(got.body) == row.payload
        done = reloaded(db_session, row)
        assert (done.status, done.status_code, done.attempts, done.last_error) == (
            DeliveryStatus.DELIVERED,
            200,
            1,
            None,
        )
        assert done.delivered_at is not None and done.next_attempt_at is None

        # Run again (a duplicate message, the sweep): nothing is sent.
        assert delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE) == Outcome(None)
        assert hook_receiver.count() == 1


def test_a_host_that_turned_private_since_the_webhook_was_made_is_not_contacted(
    db_session, owner, dns, monkeypatch
):
    dns["hooks.example.com"] = ["93.184.216.34"]
    _, row = one_delivery(db_session, owner, "https://hooks.example.com/in", allow_private=False)
    dns["hooks.example.com"] = ["93.184.216.34", "10.0.0.7"]  # rebound, in part, to the inside
    posts = []
    monkeypatch.setattr(delivery, "post", lambda *args, **kwargs: posts.append(args))

    outcome = delivery.attempt(
        db_session, secret_box(), row.delivery_id, DeliverySettings(allow_private=False)
    )

    assert outcome == Outcome(DeliveryStatus.PENDING, retry_in=rules.retry_delay(1))
    assert posts == []
    failed = reloaded(db_session, row)
    assert failed.attempts == 1 and failed.status_code is None
    assert (
        "refused" in failed.last_error and "10.0.0.7" in failed.last_error and "private" in failed.last_error
    )


def test_a_claimed_attempt_keeps_a_second_copy_out(db_session, owner, dns):
    dns["hooks.example.test"] = ["127.0.0.1"]
    _, row = one_delivery(db_session, owner, "http://hooks.example.test:1/in")
    now = delivery.utcnow()

    first = delivery._claim(db_session, [row.delivery_id], now, ALLOW_PRIVATE.lease)
    second = delivery._claim(db_session, [row.delivery_id], now, ALLOW_PRIVATE.lease)

    assert first == {row.id: 1}
    assert second == {}
    # Once the claim's lease is over (its worker died mid-attempt), the next copy may take it.
    later = now + ALLOW_PRIVATE.lease
    assert delivery._claim(db_session, [row.delivery_id], later, ALLOW_PRIVATE.lease) == {row.id: 2}


def test_a_redirect_is_not_followed(db_session, owner, dns):
    with receiver(lambda _: 302) as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        _, row = one_delivery(db_session, owner, f"http://hooks.example.test:{hook_receiver.port}/in")

        outcome = delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE)

        assert outcome.status == DeliveryStatus.PENDING and outcome.retry_in == rules.retry_delay(1)
        assert hook_receiver.count() == 1
        after = reloaded(db_session, row)
        assert after.status_code == 302 and "redirects are not followed" in after.last_error


def test_the_last_failed_attempt_fails_the_delivery(db_session, owner, dns):
    with receiver(lambda _: 503) as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        _, row = one_delivery(db_session, owner, f"http://hooks.example.test:{hook_receiver.port}/in")
        row.attempts = rules.MAX_ATTEMPTS - 1  # every attempt but the last made
        db_session.commit()

        outcome = delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE)

        assert outcome == Outcome(DeliveryStatus.FAILED)
        after = reloaded(db_session, row)
        assert (after.status, after.attempts, after.status_code) == (
            DeliveryStatus.FAILED,
            rules.MAX_ATTEMPTS,
            503,
        )
        assert after.last_error == "HTTP 503: answer 503" and after.next_attempt_at is None


def test_a_commits_deliveries_are_attempted_together_each_recorded_on_its_own(db_session, owner, dns):
    """`attempt_many`: the deliveries of one commit POSTed on a thread pool, each to its own webhook
    signed with its own secret, each webhook's in the order they were made; a receiver's failure is
    that delivery's alone (retried), a delivery already delivered is not sent again, and an unknown id
    is nothing to do."""
    with receiver() as good, receiver(lambda _: 500) as bad:
        dns["good.example.test"] = ["127.0.0.1"]
        dns["bad.example.test"] = ["127.0.0.1"]
        box = secret_box()
        _, good_secret = webhooks.create_webhook(
            db_session,
            box,
            owner,
            url=f"http://good.example.test:{good.port}/in",
            events=None,
            allow_private=True,
        )
        _, bad_secret = webhooks.create_webhook(
            db_session,
            box,
            owner,
            url=f"http://bad.example.test:{bad.port}/in",
            events=None,
            allow_private=True,
        )
        for account_id in (1, 2):
            assert (
                webhooks.notify(
                    db_session, task_queue(), owner.id, "alert.pending", {"account_id": account_id}
                )
                == 2
            )
        db_session.commit()
        rows = db_session.scalars(
            sa.select(WebhookDelivery)
            .where(WebhookDelivery.owner_id == owner.id)
            .order_by(WebhookDelivery.id)
        ).all()
        ids = [row.delivery_id for row in rows]
        done_before = ids[0]
        assert (
            delivery.attempt(db_session, box, done_before, ALLOW_PRIVATE).status == DeliveryStatus.DELIVERED
        )

        with ThreadPoolExecutor(max_workers=4) as threads:
            outcomes = delivery.attempt_many(
                db_session, box, [*ids, "no-such-delivery"], ALLOW_PRIVATE, executor=threads
            )

        by_url = {row.delivery_id: row.webhook_id for row in rows}  # delivery id -> its webhook
        good_id = rows[0].webhook_id
        assert outcomes[done_before] == Outcome(None)
        assert outcomes["no-such-delivery"] == Outcome(None)
        for delivery_id in ids[1:]:
            if by_url[delivery_id] == good_id:
                assert outcomes[delivery_id] == Outcome(DeliveryStatus.DELIVERED)
            else:
                assert outcomes[delivery_id].status == DeliveryStatus.PENDING
                assert outcomes[delivery_id].retry_in == rules.retry_delay(1, ALLOW_PRIVATE.retry_scale)
        # The good receiver got both of its deliveries once each (one of them before), signed with its secret.
        assert sorted(json.loads(r.body)["id"] for r in good.received) == sorted(
            d for d in ids if by_url[d] == good_id
        )
        assert all(r.signed_by(good_secret) for r in good.received)
        assert bad.count() == 2 and all(r.signed_by(bad_secret) for r in bad.received)
        # In order: account 1's event before account 2's, at each receiver.
        assert [json.loads(r.body)["account_id"] for r in bad.received] == [1, 2]
        for row in rows:
            after = reloaded(db_session, row)
            if row.webhook_id == good_id:
                assert (after.status, after.status_code, after.attempts) == (DeliveryStatus.DELIVERED, 200, 1)
            else:
                assert (after.status, after.status_code, after.attempts) == (DeliveryStatus.PENDING, 500, 1)
                assert after.last_error.startswith("HTTP 500")
