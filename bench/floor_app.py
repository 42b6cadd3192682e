"""A floor for bench/ingest.py (--floor): the least any signal endpoint on TradeGuard's stack must do.

It is not a product endpoint. It answers one question: how close to bare Flask can an endpoint get
on this box once it does the work no signal can skip, with the same parts as TradeGuard (Flask,
SQLAlchemy's pool, psycopg2, Postgres)? That work is:

- authenticate the strategy client: look up its secret (cached, as TradeGuard does) and check the
  HMAC signature and timestamp;
- parse the JSON body;
- store the signal and its audit row durably, through the same group-committed statement
  (`shared.signals.ingest.ingest_signal`), before answering.

Everything else TradeGuard does is left out: the marshmallow validation and sanity rules (the body
is trusted), the canonical body hash (the raw body's hash stands in), Flask-SQLAlchemy, flask-smorest
and the full response. So TradeGuard's ratio can approach the floor's, never pass it.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Flask, jsonify, request
from sqlalchemy.orm import Session, scoped_session

from shared.core.config import load_settings
from shared.core.crypto import SecretBox
from shared.core.db import TCP_KEEPALIVES, check_connections_on_checkout
from shared.signals import auth, ingest

settings = load_settings()
engine = sa.create_engine(
    settings.database_url, pool_size=5, max_overflow=10, connect_args=dict(TCP_KEEPALIVES)
)
check_connections_on_checkout(engine)
# A session is only used on a cache miss (the secret lookup) or a conflict; one per thread.
sessions = scoped_session(lambda: Session(engine))
box = SecretBox(settings.encryption_keys)
keys = auth.ClientKeyCache(settings.client_key_cache_seconds)

app = Flask(__name__)


@app.post("/api/v1/signals")
def accept() -> Any:
    body = request.get_data()
    session = sessions()
    client = auth.authenticate_client(
        session,
        box,
        auth.SignedRequest(
            client_id=request.headers.get("X-Client-Id"),
            timestamp=request.headers.get("X-Timestamp"),
            signature=request.headers.get("X-Signature"),
            body=body,
        ),
        max_skew_seconds=settings.signature_max_skew_seconds,
        keys=keys,
    )
    data = json.loads(body)
    for name in ("volume", "price", "sl", "tp"):
        if data.get(name) is not None:
            data[name] = Decimal(data[name])
    result = ingest.ingest_signal(
        session,
        client,
        data,
        signature=request.headers["X-Signature"],
        body_sha256=hashlib.sha256(body).hexdigest(),
        idempotency_key=request.headers.get("Idempotency-Key"),
        default_ttl_seconds=settings.signal_default_ttl_seconds,
    )
    # A cache miss opened a transaction for the lookup, and then the signal was inserted in it rather
    # than batched (see `ingest_signal`): commit, as TradeGuard's view does.
    session.commit()
    status = 201 if result.created else 200
    return jsonify({"id": result.signal.id, "status": result.signal.status.value}), status
