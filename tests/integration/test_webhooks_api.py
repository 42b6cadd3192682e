"""/api/v1/webhooks: registering (the secret shown once), the URL and event checks, listing, deleting,
deliveries; and `notify`, which writes deliveries and sends their tasks only once its transaction
commits."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.core.queue import DELIVER_WEBHOOKS
from shared.models import AuditLog, DeliveryStatus, User, Webhook, WebhookDelivery
from shared.notifications import webhooks
from shared.notifications.events import ALL_EVENTS


def create(api, user, **body):
    return api.http.post("/api/v1/webhooks", json=body, headers=user["headers"])


def test_a_webhook_is_created_with_its_secret_shown_once(api, dns, db_session):
    user = api.user()
    response = create(api, user, url="https://hooks.example.com/tg", events=["trade.filled", "alert.pending"])

    assert response.status_code == 201, response.json
    created = response.json
    assert created["url"] == "https://hooks.example.com/tg"
    assert created["events"] == ["trade.filled", "alert.pending"] and created["all_events"] is False
    assert len(created["secret"]) >= 32

    listed = api.http.get("/api/v1/webhooks", headers=user["headers"]).json
    assert [hook["id"] for hook in listed] == [created["id"]]
    assert "secret" not in listed[0]
    stored = db_session.get(Webhook, created["id"])
    assert created["secret"].encode() not in stored.secret_encrypted  # encrypted at rest
    audit = db_session.scalars(
        sa.select(AuditLog).where(AuditLog.action == "webhook.created", AuditLog.target_id == created["id"])
    ).one()
    assert audit.actor_id == user["id"] and audit.meta["url"] == created["url"]


def test_without_events_a_webhook_receives_every_event(api, dns):
    user = api.user()
    created = create(api, user, url="https://hooks.example.com/all").json
    assert created["all_events"] is True and created["events"] == list(ALL_EVENTS)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"url": "ftp://hooks.example.com/"}, "url", "http"),
        ({"url": "hooks.example.com/x"}, "url", "http"),
        ({"url": "https://u:p@hooks.example.com/"}, "url", "user name"),
        ({"url": "http://127.0.0.1:8080/hook"}, "url", "loopback"),
        ({"url": "http://[::1]/hook"}, "url", "loopback"),
        ({"url": "http://10.0.0.8/hook"}, "url", "private"),
        ({"url": "http://169.254.169.254/latest"}, "url", "metadata"),
        ({"url": "http://internal.example.com/hook"}, "url", "10.1.2.3"),
        ({"url": "https://no-such-host.invalid/hook"}, "url", "does not resolve"),
        # Every delivery to these failed in http.client, and took its batch down with it.
        ({"url": "https://hooks.example.com/é"}, "url", "non-ASCII"),
        ({"url": "https://hooks.example.com/\u202egnp.exe"}, "url", "non-ASCII"),
        # Port 0 was delivered to port 443.
        ({"url": "https://hooks.example.com:0/hook"}, "url", "port 0"),
        ({"url": "https://hooks.example.com/", "events": ["trade.filled", "trade.exploded"]}, "events.1", ""),
        ({"url": "https://hooks.example.com/", "events": [7]}, "events.0", ""),
        ({"url": "https://hooks.example.com/", "events": []}, "events", "at least one"),
        ({"url": "https://hooks.example.com/", "secret": "mine"}, "secret", ""),
        ({}, "url", ""),
    ],
)
def test_a_bad_webhook_is_refused_naming_the_field(api, dns, body, field, words):
    user = api.user()
    response = create(api, user, **body)
    assert response.status_code == 422, response.json
    problems = response.json["error"]["fields"]
    assert field in problems, problems
    assert words in " ".join(problems[field]), problems


def test_private_addresses_are_accepted_when_the_deployment_allows_them(app, api, dns, monkeypatch):
    import dataclasses

    from shared.core.extensions import SETTINGS

    monkeypatch.setitem(
        app.extensions, SETTINGS, dataclasses.replace(app.extensions[SETTINGS], webhook_allow_private=True)
    )
    user = api.user()
    assert create(api, user, url="http://127.0.0.1:8080/hook").status_code == 201
    # Still never the metadata service.
    refused = create(api, user, url="http://169.254.169.254/latest")
    assert refused.status_code == 422 and "url" in refused.json["error"]["fields"]


def test_another_users_webhook_is_not_found(api, dns):
    owner, other = api.user(), api.user()
    hook = create(api, owner, url="https://hooks.example.com/").json

    deleted = api.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=other["headers"])
    deliveries = api.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=other["headers"])
    missing = api.http.delete("/api/v1/webhooks/999999", headers=other["headers"])
    # Someone else's webhook reads word for word as one that does not exist.
    as_missing = {
        "error": {
            **missing.json["error"],
            "message": missing.json["error"]["message"].replace("999999", str(hook["id"])),
        }
    }
    assert (deleted.status_code, deliveries.status_code, missing.status_code) == (404, 404, 404)
    assert deleted.json == deliveries.json == as_missing
    assert api.http.get("/api/v1/webhooks", headers=other["headers"]).json == []
    # Still the owner's.
    assert (
        api.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=owner["headers"]).status_code == 200
    )


def test_deleting_a_webhook_stops_its_deliveries_and_keeps_their_history(api, dns, db_session):
    from shared.core.extensions import task_queue

    user = api.user()
    hook = create(api, user, url="https://hooks.example.com/").json
    assert webhooks.notify(db_session, task_queue(), user["id"], "alert.pending", {"account_id": 1}) == 1
    db_session.commit()

    assert api.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=user["headers"]).status_code == 204

    assert api.http.get("/api/v1/webhooks", headers=user["headers"]).json == []
    assert api.http.delete(f"/api/v1/webhooks/{hook['id']}", headers=user["headers"]).status_code == 404
    row = db_session.scalars(sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook["id"])).one()
    assert (row.status, row.last_error) == (DeliveryStatus.FAILED, "the webhook was deleted")
    # Deleted: no new deliveries.
    assert webhooks.notify(db_session, task_queue(), user["id"], "alert.pending", {}) == 0
    assert db_session.scalars(
        sa.select(AuditLog.action).where(AuditLog.target_type == "webhook", AuditLog.target_id == hook["id"])
    ).all() == ["webhook.created", "webhook.deleted"]


def test_deliveries_are_listed_newest_first_a_page_at_a_time(api, dns, db_session):
    from shared.core.extensions import task_queue

    user = api.user()
    hook = create(api, user, url="https://hooks.example.com/", events=["trade.filled", "trade.closed"]).json
    for event in ("trade.filled", "trade.closed", "alert.pending"):  # the last one it does not receive
        webhooks.notify(db_session, task_queue(), user["id"], event, {"account_id": 5, "trade_id": 9})
        db_session.commit()

    url = f"/api/v1/webhooks/{hook['id']}/deliveries"
    page = api.http.get(url, headers=user["headers"]).json
    assert page["total"] == 2
    assert [item["event"] for item in page["items"]] == ["trade.closed", "trade.filled"]
    item = page["items"][0]
    assert (item["status"], item["attempts"], item["status_code"], item["last_error"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert item["payload"]["id"] == item["delivery_id"] and item["payload"]["account_id"] == 5
    assert item["payload"]["data"] == {"account_id": 5, "trade_id": 9}

    second = api.http.get(url, query_string={"per_page": 1, "page": 2}, headers=user["headers"]).json
    assert [i["event"] for i in second["items"]] == ["trade.filled"] and second["total"] == 2
    delivered = api.http.get(url, query_string={"status": "delivered"}, headers=user["headers"]).json
    assert delivered["total"] == 0


def test_notify_sends_its_tasks_only_after_the_commit_and_nothing_after_a_rollback(api, dns, db_session):
    from shared.core.extensions import task_queue

    user = api.user()
    create(api, user, url="https://hooks.example.com/a")
    create(api, user, url="https://hooks.example.com/b", events=["trade.closed"])
    queue = task_queue()  # the test's recording queue (db_session)
    queue.sent.clear()

    assert webhooks.notify(db_session, queue, user["id"], "trade.filled", {"trade_id": 1}) == 1
    assert queue.sent == []  # not before the commit
    db_session.rollback()
    assert queue.sent == []
    assert db_session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0

    assert webhooks.notify(db_session, queue, user["id"], "trade.closed", {"trade_id": 1}) == 2
    db_session.commit()
    rows = db_session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    # One commit, one task for both.
    assert [(task.name, task.args) for task in queue.sent] == [
        (DELIVER_WEBHOOKS, [[row.delivery_id for row in rows]])
    ]
    assert len({row.delivery_id for row in rows}) == 2


def test_notify_sees_a_webhook_made_or_deleted_in_the_same_transaction(api, dns, db_session):
    """notify reads an owner's webhooks once per transaction; making or deleting one reads them again."""
    from shared.core.extensions import secret_box, task_queue

    user = api.user()
    owner = db_session.get(User, user["id"])
    queue = task_queue()
    assert webhooks.notify(db_session, queue, owner.id, "trade.filled", {"trade_id": 1}) == 0
    hook, _ = webhooks.create_webhook(
        db_session, secret_box(), owner, url="https://hooks.example.com/a", events=None, allow_private=False
    )
    assert webhooks.notify(db_session, queue, owner.id, "trade.filled", {"trade_id": 2}) == 1
    webhooks.delete_webhook(db_session, owner, hook.id)
    assert webhooks.notify(db_session, queue, owner.id, "trade.filled", {"trade_id": 3}) == 0
    db_session.rollback()


def test_notify_refuses_an_event_nobody_declared(api, db_session):
    from shared.core.extensions import task_queue

    with pytest.raises(ValueError, match="unknown webhook event"):
        webhooks.notify(db_session, task_queue(), 1, "trade.exploded", {})


def test_the_sweep_finds_deliveries_whose_message_is_overdue(api, dns, db_session):
    from shared.core.extensions import task_queue

    user = api.user()
    create(api, user, url="https://hooks.example.com/")
    webhooks.notify(db_session, task_queue(), user["id"], "guard.warning", {})
    db_session.commit()
    row = db_session.scalars(sa.select(WebhookDelivery)).one()

    assert webhooks.deliveries_due(db_session, utcnow() - timedelta(seconds=30)) == []
    assert webhooks.deliveries_due(db_session, utcnow() + timedelta(seconds=1)) == [row.delivery_id]
    row.status = DeliveryStatus.DELIVERED
    db_session.commit()
    assert webhooks.deliveries_due(db_session, utcnow() + timedelta(seconds=1)) == []
