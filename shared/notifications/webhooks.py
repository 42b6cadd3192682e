"""Webhooks: registering, listing and deleting them, and `notify`, which every feature calls to send an
event to the owner's webhooks. The POSTs themselves are the workers' (`delivery`)."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.audit import trail
from shared.core.crypto import SecretBox
from shared.core.db import DbSession, after_commit_batched, utcnow
from shared.core.errors import Conflict, InvalidInput, NotFound
from shared.core.ownership import get_owned
from shared.core.pagination import Page, paginate
from shared.core.queue import DELIVER_WEBHOOKS, Queue
from shared.models import DeliveryStatus, User, Webhook, WebhookDelivery
from shared.notifications import rules
from shared.notifications.delivery import RefusedDestination, Resolver, allowed_addresses
from shared.notifications.events import ALL_EVENTS

log = logging.getLogger(__name__)

# Each one is a POST per event: a bound keeps one owner from turning every fill into hundreds of them.
MAX_WEBHOOKS_PER_OWNER = 20


def create_webhook(
    session: DbSession,
    box: SecretBox,
    owner: User,
    *,
    url: str,
    events: Sequence[str] | None,
    allow_private: bool,
    resolver: Resolver | None = None,
) -> tuple[Webhook, str]:
    """Returns the webhook and its signing secret, shown to the owner once and stored encrypted.

    The URL must be http(s) and its host must resolve, to allowed addresses only (InvalidInput naming
    `url`); it is resolved and checked again at every delivery. `events` None: every event."""
    target = rules.parse_url(url)
    if isinstance(target, str):
        raise InvalidInput(f"url: {target}", fields={"url": [target]})
    try:
        allowed_addresses(target, allow_private=allow_private, resolver=resolver)
    except RefusedDestination as exc:
        raise InvalidInput(f"url: {exc}", fields={"url": [str(exc)]}) from exc
    if events is not None:
        unknown = {
            f"events.{i}": ["unknown event"] for i, name in enumerate(events) if name not in ALL_EVENTS
        }
        if unknown:
            raise InvalidInput("unknown event", fields=unknown)
        if not events:
            raise InvalidInput("events: name at least one", fields={"events": ["name at least one event"]})
        events = list(dict.fromkeys(events))  # each once, in the order given
    active = session.scalar(
        sa.select(sa.func.count())
        .select_from(Webhook)
        .where(Webhook.owner_id == owner.id, Webhook.deleted_at.is_(None))
    )
    if (active or 0) >= MAX_WEBHOOKS_PER_OWNER:
        raise Conflict(f"at most {MAX_WEBHOOKS_PER_OWNER} webhooks; delete one first")
    secret = secrets.token_urlsafe(32)
    webhook = Webhook(
        owner_id=owner.id,
        url=url,
        events=None if events is None else list(events),
        secret_encrypted=box.encrypt(secret),
    )
    session.add(webhook)
    session.flush()
    session.info.pop(_WEBHOOKS_KEY, None)  # notify reads the owner's webhooks again
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=owner.id,
        action="webhook.created",
        target_type="webhook",
        target_id=webhook.id,
        meta={"url": url, "events": webhook.events},
    )
    return webhook, secret


def get_own_webhook(session: DbSession, owner: User, webhook_id: int) -> Webhook:
    """The owner's webhook; NotFound for another's, an unknown one, or a deleted one."""
    webhook = get_owned(session, Webhook, webhook_id, owner.id, name="webhook")
    if webhook.deleted_at is not None:
        raise NotFound(f"webhook {webhook_id} not found")  # the words get_owned uses for a missing one
    return webhook


def list_own_webhooks(session: DbSession, owner: User) -> list[Webhook]:
    return list(
        session.scalars(
            sa.select(Webhook)
            .where(Webhook.owner_id == owner.id, Webhook.deleted_at.is_(None))
            .order_by(Webhook.id)
        )
    )


def delete_webhook(session: DbSession, owner: User, webhook_id: int) -> Webhook:
    """Delete softly: no new deliveries, and the pending ones stop now (failed, saying why); the history
    stays. A second delete is NotFound, as the webhook is gone for its owner."""
    webhook = get_own_webhook(session, owner, webhook_id)
    webhook.deleted_at = utcnow()
    session.info.pop(_WEBHOOKS_KEY, None)  # notify reads the owner's webhooks again
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook.id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.FAILED, last_error="the webhook was deleted", next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=owner.id,
        action="webhook.deleted",
        target_type="webhook",
        target_id=webhook.id,
        meta={"url": webhook.url},
    )
    return webhook


def list_deliveries(
    session: DbSession,
    owner: User,
    webhook_id: int,
    *,
    status: DeliveryStatus | None = None,
    page: int,
    per_page: int,
) -> Page[WebhookDelivery]:
    """The webhook's deliveries, newest first."""
    webhook = get_own_webhook(session, owner, webhook_id)
    statement = sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id)
    if status is not None:
        statement = statement.where(WebhookDelivery.status == status)
    statement = statement.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return paginate(session, statement, page=page, per_page=per_page)


def notifier(queue: Queue) -> Callable[[DbSession, int, str, Mapping[str, Any]], int]:
    """`notify` bound to a task queue: what the guards and the views that report to owners are given."""

    def notify_owner(session: DbSession, owner_id: int, event: str, data: Mapping[str, Any]) -> int:
        return notify(session, queue, owner_id, event, data)

    return notify_owner


def notify(session: DbSession, queue: Queue, owner_id: int, event: str, data: Mapping[str, Any]) -> int:
    """Send `event` with `data` to every active webhook of `owner_id` that receives it; how many.

    Writes one pending delivery per webhook in the caller's transaction; once that transaction commits,
    its deliveries go out together (`send_delivery_batches`; nothing is sent if it rolls back). A broker
    that refuses the message loses nothing: the sweep (`deliveries_due`) sends it again. `data` may hold
    decimals, datetimes and enums (sent as strings); an `account_id` in it is also put at the payload's
    top level.
    Raises ValueError for an event name not in `events.ALL_EVENTS`."""
    if event not in ALL_EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; add it to shared.notifications.events")
    receivers = [webhook for webhook in _active_webhooks(session, owner_id) if webhook.receives(event)]
    if not receivers:
        return 0
    at = utcnow()
    for webhook in receivers:
        delivery_id = str(uuid.uuid4())
        session.add(
            WebhookDelivery(
                webhook_id=webhook.id,
                owner_id=owner_id,
                delivery_id=delivery_id,
                event=event,
                payload=rules.payload(delivery_id, event, at, data),
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=at,
                created_at=at,
            )
        )
        after_commit_batched(
            session, DELIVERIES_KEY, delivery_id, lambda ids: send_delivery_batches(queue, ids)
        )
    return len(receivers)


_WEBHOOKS_KEY = "tradeguard_active_webhooks"


@dataclass(frozen=True)
class _Receiver:
    id: int
    events: list[str] | None

    def receives(self, event: str) -> bool:
        return self.events is None or event in self.events


def _active_webhooks(session: DbSession, owner_id: int) -> Sequence[_Receiver]:
    """The owner's active webhooks, read once per transaction: an alert tells its owner four or five
    things in one transaction, and a batch of readings or closes covers many owners' accounts. Read
    without flushing what the caller has pending (a webhooks row is written by its own flush)."""
    transaction = (session if isinstance(session, Session) else session()).get_transaction()
    cached = session.info.get(_WEBHOOKS_KEY)
    if cached is None or cached[0] is not transaction:
        cached = (transaction, {})
        session.info[_WEBHOOKS_KEY] = cached
    by_owner: dict[int, Sequence[_Receiver]] = cached[1]
    if owner_id not in by_owner:
        with session.no_autoflush:
            by_owner[owner_id] = [
                _Receiver(row.id, row.events)
                for row in session.execute(
                    sa.select(Webhook.id, Webhook.events)
                    .where(Webhook.owner_id == owner_id, Webhook.deleted_at.is_(None))
                    .order_by(Webhook.id)
                )
            ]
    return by_owner[owner_id]


DELIVERIES_KEY = "webhook-deliveries"
# Deliveries per task: a commit's events go out together, in tasks of at most this many POSTs.
DELIVERY_BATCH = 50


def send_delivery_batches(queue: Queue, delivery_ids: Sequence[str], **options: Any) -> None:
    """Send these deliveries' first attempts, DELIVERY_BATCH to a task (`tradeguard.deliver_webhooks`).
    Never raises: what the broker refuses, the sweep sends later."""
    for start in range(0, len(delivery_ids), DELIVERY_BATCH):
        batch = list(delivery_ids[start : start + DELIVERY_BATCH])
        try:
            queue.send(DELIVER_WEBHOOKS, [batch], **options)
        except Exception:
            log.exception("could not enqueue %d webhook deliveries; the sweep will retry", len(batch))


# The sweep's most per run; the rest wait for the next.
SWEEP_LIMIT = 500


def deliveries_due(session: DbSession, cutoff: datetime) -> list[str]:
    """Pending deliveries that should have been attempted by `cutoff`: their message was lost (a broker
    down at commit, a worker killed between its claim and its retry). Sending one again is harmless:
    an attempt that is not due, or claimed by another worker, does nothing."""
    return list(
        session.scalars(
            sa.select(WebhookDelivery.delivery_id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= cutoff
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(SWEEP_LIMIT)
        )
    )
