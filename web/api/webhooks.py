from __future__ import annotations

from typing import Any

from shared.models import DeliveryStatus
from shared.notifications import webhooks
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_user, login_required
from web.extensions import db, secret_box, settings
from web.schemas import (
    DeliveryPageSchema,
    DeliveryQuerySchema,
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookSchema,
    webhook_fields,
)

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/api/v1/webhooks",
    description="Signed webhooks: your events POSTed to your URL",
)


@blp.post("")
@login_required
@blp.arguments(WebhookCreateSchema)
@blp.response(201, WebhookCreatedSchema)
@blp.errors(*BODY_ERRORS, 401, (409, f"you have {webhooks.MAX_WEBHOOKS_PER_OWNER} webhooks already"), 503)
def create_webhook(body: dict[str, Any]) -> Any:
    """Register a webhook

    Each event is POSTed as JSON `{id, event, created_at, account_id?, data}`, signed like a signal:
    `X-Signature` is the hex HMAC-SHA256 of `"{X-Timestamp}.{raw body}"` with the secret returned here
    (once). `X-TradeGuard-Delivery` (the body's `id`) is the same on every retry: use it to drop
    duplicates. A delivery is retried with back-off for about an hour until the receiver answers 2xx
    within the timeout; redirects are not followed. The URL must be http(s) and resolve to public
    addresses (422 naming `url`), unless the deployment allows private ones."""
    webhook, secret = webhooks.create_webhook(
        db.session,
        secret_box(),
        current_user(),
        url=body["url"],
        events=body["events"],
        allow_private=settings().webhook_allow_private,
    )
    db.session.commit()
    return {**webhook_fields(webhook), "secret": secret}


@blp.get("")
@login_required
@blp.response(200, WebhookSchema(many=True))
@blp.errors(401, 503)
def list_webhooks() -> Any:
    return webhooks.list_own_webhooks(db.session, current_user())


@blp.delete("/<id:webhook_id>")
@login_required
@blp.response(204)
@blp.errors(401, 404, 503)
def delete_webhook(webhook_id: int) -> Any:
    """Delete a webhook: it receives nothing more, and its pending deliveries stop (failed)."""
    webhooks.delete_webhook(db.session, current_user(), webhook_id)
    db.session.commit()
    return None


@blp.get("/<id:webhook_id>/deliveries")
@login_required
@blp.arguments(DeliveryQuerySchema, location="query")
@blp.response(200, DeliveryPageSchema)
@blp.errors(401, 404, 503)
def list_deliveries(query: dict[str, Any], webhook_id: int) -> Any:
    """A webhook's deliveries, newest first: event, status, the receiver's status code, attempts and the
    last error."""
    return webhooks.list_deliveries(
        db.session,
        current_user(),
        webhook_id,
        status=DeliveryStatus(query["status"]) if query["status"] else None,
        page=query["page"],
        per_page=query["per_page"],
    )
