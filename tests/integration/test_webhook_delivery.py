"""One delivery attempt (`delivery.attempt`), in this process, against a real local receiver: the POST
goes to the address the host resolved to, under the host's name; an address that has turned private
since the webhook was made is never contacted; a delivered delivery is never sent again, and a claimed
attempt keeps a second copy out; redirects are not followed; the last failed attempt fails it."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

from shared.core.extensions import secret_box, task_queue
from shared.models import DeliveryStatus, User, Webhook, WebhookDelivery
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


def two_alerts_to_both(db_session, owner):
    """`alert.pending` for two accounts, committed, to the owner's two webhooks: the four deliveries."""
    for account_id in (1, 2):
        sent = webhooks.notify(
            db_session, task_queue(), owner.id, "alert.pending", {"account_id": account_id}
        )
        assert sent == 2
    db_session.commit()
    return db_session.scalars(
        sa.select(WebhookDelivery).where(WebhookDelivery.owner_id == owner.id).order_by(WebhookDelivery.id)
    ).all()


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
        rows = two_alerts_to_both(db_session, owner)
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


def test_an_unexpected_error_in_one_delivery_fails_that_attempt_only(
    db_session, owner, dns, monkeypatch, caplog
):
    """A fault of ours in one delivery's attempt (here what http.client raised for a non-ASCII path) is
    that attempt's failure, logged with its traceback: the batch's other POSTs, which went out, are
    recorded (not left pending, to be sent again), and so is the failed attempt, retried on the
    schedule."""
    with receiver() as good:
        dns["good.example.test"] = ["127.0.0.1"]
        dns["broken.example.test"] = ["127.0.0.1"]
        box = secret_box()
        for host in ("good", "broken"):
            webhooks.create_webhook(
                db_session,
                box,
                owner,
                url=f"http://{host}.example.test:{good.port}/in",
                events=None,
                allow_private=True,
            )
        rows = two_alerts_to_both(db_session, owner)
        broken_hook = rows[1].webhook_id
        real_post = delivery.post

        def post(target, *args):
            if target.host == "broken.example.test":
                raise UnicodeEncodeError("ascii", "POST /é HTTP/1.1", 6, 7, "ordinal not in range(128)")
            return real_post(target, *args)

        monkeypatch.setattr(delivery, "post", post)

        with ThreadPoolExecutor(max_workers=4) as threads:
            outcomes = delivery.attempt_many(
                db_session, box, [row.delivery_id for row in rows], ALLOW_PRIVATE, executor=threads
            )

        assert good.count() == 2
        for row in rows:
            after = reloaded(db_session, row)
            if row.webhook_id == broken_hook:
                assert outcomes[row.delivery_id] == Outcome(
                    DeliveryStatus.PENDING, retry_in=rules.retry_delay(1)
                )
                assert (after.status, after.attempts, after.status_code) == (DeliveryStatus.PENDING, 1, None)
                assert after.last_error.startswith("failed unexpectedly: UnicodeEncodeError: 'ascii' codec")
            else:
                assert outcomes[row.delivery_id] == Outcome(DeliveryStatus.DELIVERED)
                assert (after.status, after.attempts, after.status_code) == (DeliveryStatus.DELIVERED, 1, 200)
        logged = [r for r in caplog.records if r.name == delivery.log.name and r.exc_info]
        broken_ids = {row.delivery_id for row in rows if row.webhook_id == broken_hook}
        assert {next(i for i in broken_ids if i in r.getMessage()) for r in logged} == broken_ids
        assert all(r.exc_info[0] is UnicodeEncodeError for r in logged)

        # Run again (the sweep): the delivered ones are not sent again.
        delivery.attempt_many(db_session, box, [row.delivery_id for row in rows], ALLOW_PRIVATE)
        assert good.count() == 2


def test_a_webhook_stored_with_a_non_ascii_url_fails_its_attempts_saying_why(db_session, owner, dns):
    """A URL registered before non-ASCII ones were refused is refused at its delivery, as a failed
    attempt (http.client raised on it, every time, taking its batch with it)."""
    with receiver() as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        _, row = one_delivery(db_session, owner, f"http://hooks.example.test:{hook_receiver.port}/in")
        db_session.get(Webhook, row.webhook_id).url = f"http://hooks.example.test:{hook_receiver.port}/é"
        db_session.commit()

        outcome = delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE)

        assert outcome == Outcome(DeliveryStatus.PENDING, retry_in=rules.retry_delay(1))
        assert hook_receiver.count() == 0
        after = reloaded(db_session, row)
        assert after.attempts == 1 and "the webhook's URL is refused" in after.last_error
        assert "non-ASCII" in after.last_error


def test_a_delivery_whose_attempts_keep_raising_fails_after_its_last(db_session, owner, dns, monkeypatch):
    """Each attempt that raises is counted and recorded: after the last the delivery is failed, and the
    sweep stops sending it (it was claimed for ever, with no error recorded)."""
    dns["hooks.example.test"] = ["127.0.0.1"]
    _, row = one_delivery(db_session, owner, "http://hooks.example.test:1/in")

    def post(*args):
        raise RuntimeError("a fault of ours")

    monkeypatch.setattr(delivery, "post", post)
    at = delivery.utcnow()
    for _ in range(rules.MAX_ATTEMPTS + 5):
        at += timedelta(hours=1)  # past any retry's delay and any claim's lease
        delivery.attempt(
            db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE, now=lambda moment=at: moment
        )

    after = reloaded(db_session, row)
    assert (after.status, after.attempts) == (DeliveryStatus.FAILED, rules.MAX_ATTEMPTS)
    assert after.last_error == "failed unexpectedly: RuntimeError: a fault of ours"
    assert webhooks.deliveries_due(db_session, at + timedelta(days=1)) == []


def test_a_delivery_is_never_claimed_past_its_last_attempt(db_session, owner, dns):
    """A delivery still pending after its last attempt (whose worker died before recording it) is
    failed, saying so, once that attempt's lease is over: never attempted an eleventh time."""
    with receiver() as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        _, row = one_delivery(db_session, owner, f"http://hooks.example.test:{hook_receiver.port}/in")
        now = delivery.utcnow()
        row.attempts = rules.MAX_ATTEMPTS
        row.next_attempt_at = now + timedelta(seconds=30)  # the last attempt's lease, still running
        db_session.commit()

        # While the last attempt may still record its result, it is left to it.
        assert delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE) == Outcome(None)
        assert reloaded(db_session, row).status == DeliveryStatus.PENDING

        later = now + timedelta(minutes=1)
        assert delivery._claim(db_session, [row.delivery_id], later, ALLOW_PRIVATE.lease) == {}
        assert delivery.attempt(
            db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE, now=lambda: later
        ) == Outcome(None)

        assert hook_receiver.count() == 0
        after = reloaded(db_session, row)
        assert (after.status, after.attempts, after.next_attempt_at) == (
            DeliveryStatus.FAILED,
            rules.MAX_ATTEMPTS,
            None,
        )
        assert after.last_error == rules.ATTEMPTS_USED_UP
        assert "10 attempts" in after.last_error and "never recorded" in after.last_error
        assert webhooks.deliveries_due(db_session, later + timedelta(days=1)) == []


@pytest.mark.parametrize(
    ("status", "answer", "recorded"),
    [
        (500, {"body": b"bad\x00thing"}, "HTTP 500: bad\ufffdthing"),
        (
            302,
            {"location": "http://127.0.0.1:1/\x00evil"},
            "HTTP 302: redirects are not followed (http://127.0.0.1:1/\ufffdevil)",
        ),
    ],
)
def test_a_nul_in_a_receivers_answer_is_recorded_as_a_replacement_character(
    db_session, owner, dns, status, answer, recorded
):
    """PostgreSQL refuses NUL in text: quoted as it came, a receiver's answer failed the write of its
    batch's results (every delivery of it sent again)."""
    assert db_session.get_bind().dialect.name == "postgresql"
    with receiver(lambda _: status, **answer) as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        _, row = one_delivery(db_session, owner, f"http://hooks.example.test:{hook_receiver.port}/in")

        outcome = delivery.attempt(db_session, secret_box(), row.delivery_id, ALLOW_PRIVATE)

        assert outcome == Outcome(DeliveryStatus.PENDING, retry_in=rules.retry_delay(1))
        after = reloaded(db_session, row)
        assert (after.status, after.attempts, after.status_code, after.last_error) == (
            DeliveryStatus.PENDING,
            1,
            status,
            recorded,
        )


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_attempts_deadline(db_session, owner, dns):
    """A byte every 0.3 s keeps each read inside the 1-s timeout: the attempt as a whole is bounded
    (3 s), well inside its lease, so no other worker claims the delivery and POSTs it while it runs
    (it took as long as the receiver dripped: 15 s here)."""
    settings = DeliverySettings(allow_private=True, timeout_seconds=1)
    deadline = 3.0
    with receiver(drip_seconds=15) as hook_receiver:
        dns["hooks.example.test"] = ["127.0.0.1"]
        _, row = one_delivery(db_session, owner, f"http://hooks.example.test:{hook_receiver.port}/in")

        started = time.monotonic()
        outcome = delivery.attempt(db_session, secret_box(), row.delivery_id, settings)
        took = time.monotonic() - started

        assert deadline <= took < deadline + 1.0, took
        assert outcome == Outcome(DeliveryStatus.PENDING, retry_in=rules.retry_delay(1))
        assert hook_receiver.count() == 1
        after = reloaded(db_session, row)
        assert (after.status, after.attempts, after.status_code, after.last_error) == (
            DeliveryStatus.PENDING,
            1,
            None,
            "no complete answer within 3 s",
        )
    assert settings.attempt_seconds == deadline
    assert deadline + 10 < settings.lease.total_seconds()
