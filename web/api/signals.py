from __future__ import annotations

from typing import Any

from flask import jsonify, request

from shared.core.config import Settings
from shared.core.db import in_transaction
from shared.core.errors import InvalidInput
from shared.core.signing import canonical_body_hash
from shared.models import SignalStatus
from shared.signals import ingest, queries
from web.api import BODY_ERRORS, Blueprint
from web.auth import current_client, current_user, login_required, signature_required
from web.extensions import db, settings
from web.json_body import json_body, load
from web.schemas import (
    SignalCreateSchema,
    SignalPageSchema,
    SignalQuerySchema,
    SignalSchema,
    dump_signal,
)

blp = Blueprint("signals", __name__, url_prefix="/api/v1/signals", description="Trading signals")


def _signed_headers(settings: Settings) -> dict[str, Any]:
    """The signature headers, with the timestamp window this deployment enforces
    (TRADEGUARD_SIGNATURE_MAX_SKEW_SECONDS, checked by shared.signals.auth.authenticate_client)."""
    # Header parameters rather than a security scheme: the signature is computed per request, over its body.
    return {
        "parameters": [
            {
                "in": "header",
                "name": "X-Client-Id",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                "description": "the strategy client's id",
            },
            {
                "in": "header",
                "name": "X-Timestamp",
                "required": True,
                "schema": {"type": "integer"},
                "description": "unix seconds; refused when more than "
                f"{settings.signature_max_skew_seconds} s from server time",
            },
            {
                "in": "header",
                "name": "X-Signature",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                "description": 'hex HMAC-SHA256 of "{X-Timestamp}.{raw body}" with the client\'s secret; '
                "each signature is accepted once",
            },
            {
                "in": "header",
                "name": "Idempotency-Key",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]+$"},
                "description": "1 to 128 printable ASCII characters; a resent signal with the same key "
                "returns the first one (200), not a new one",
            },
        ]
    }


_CREATE_SCHEMA = SignalCreateSchema()
# The body is parsed by the view (below), so flask-smorest is told about it here, for the document.
_CREATE_BODY = {"required": True, "content": {"application/json": {"schema": SignalCreateSchema}}}


@blp.post("")
@signature_required
@blp.doc(requestBody=_CREATE_BODY)
@blp.response(201, SignalSchema)
@blp.alt_response(
    200, schema=SignalSchema, description="an idempotent retry: the signal stored the first time"
)
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
@blp.errors(
    *BODY_ERRORS,
    (401, "the signature headers are missing, stale or wrong, or the client is unknown or revoked"),
    (409, "a replayed signature, or an Idempotency-Key already used for another signal"),
    503,
)
# No bearer token: a strategy client signs each request (the headers above) instead.
@blp.doc(security=[])
@blp.settings_doc(_signed_headers)
def create_signal() -> Any:
    # Parsed here rather than by @blp.arguments: the signature check already read these bytes, the
    # body hash needs the parsed JSON, and webargs would parse it a second time. Every signal comes
    # this way, so the endpoint costs what it must and no more (bench/ingest.py).
    payload = json_body(request)
    body = load(_CREATE_SCHEMA, payload)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = key.strip()
        if not 1 <= len(key) <= 128 or not key.isascii() or not key.isprintable():
            raise InvalidInput(
                "Idempotency-Key must be 1 to 128 printable ASCII characters",
                fields={"Idempotency-Key": ["1 to 128 printable ASCII characters"]},
            )
    result = ingest.ingest_signal(
        db.session,
        current_client(),
        body,
        signature=request.headers["X-Signature"],
        body_sha256=canonical_body_hash(payload),
        idempotency_key=key,
        default_ttl_seconds=settings().signal_default_ttl_seconds,
    )
    # On Postgres a new signal is already committed (see `ingest_signal`); the session holds a
    # transaction only when it read or wrote something that still needs committing.
    if in_transaction(db.session):
        db.session.commit()
    return jsonify(dump_signal(result.signal)), (201 if result.created else 200)


@blp.get("")
@login_required
@blp.arguments(SignalQuerySchema, location="query")
@blp.response(200, SignalPageSchema)
@blp.errors(401, 503)
def list_signals(query: dict[str, Any]) -> Any:
    status = SignalStatus(query["status"]) if query["status"] else None
    return queries.list_own_signals(
        db.session, current_user(), status=status, page=query["page"], per_page=query["per_page"]
    )


@blp.get("/<id:signal_id>")
@login_required
@blp.response(200, SignalSchema)
@blp.errors(401, 404, 503)
def get_signal(signal_id: int) -> Any:
    return queries.get_own_signal(db.session, current_user(), signal_id)
