"""Storing a signed signal as pending, exactly once: idempotent retries, replays refused, revoked clients
refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from shared.audit import trail
from shared.core.db import DbSession, bind_of, utcnow
from shared.core.errors import Conflict, NotAuthenticated
from shared.models import Side, Signal, SignalStatus, StrategyClient
from shared.signals.auth import ClientIdentity
from shared.signals.batching import RECEIVED_ACTION, StoredSignal, insert_postgres


@dataclass(frozen=True)
class IngestResult:
    signal: Signal | StoredSignal
    created: bool  # False when an idempotent retry returned the signal made the first time


def _existing_for(
    session: DbSession, client: ClientIdentity, idempotency_key: str | None, signature: str, body_sha256: str
) -> Signal | None:
    """The signal an idempotent retry refers to, None for a new signal, or Conflict for a replay."""
    if idempotency_key is not None:
        earlier = session.scalar(
            sa.select(Signal).where(Signal.client_id == client.id, Signal.idempotency_key == idempotency_key)
        )
        if earlier is not None:
            if earlier.body_sha256 != body_sha256:
                raise Conflict(
                    "this Idempotency-Key was already used for a different signal",
                    fields={"Idempotency-Key": ["already used with a different body"]},
                )
            return earlier
    if session.scalar(sa.select(Signal.id).where(Signal.signature == signature)) is not None:
        raise Conflict(
            "this signature was already used: a replayed request is refused; "
            "send an Idempotency-Key to retry safely",
            fields={"X-Signature": ["already used"]},
        )
    return None


def _received_meta(
    client: ClientIdentity, data: dict[str, Any], idempotency_key: str | None
) -> dict[str, Any]:
    return {
        "account_id": client.account_id,
        "instrument": data["instrument"],
        "side": data["side"],
        "volume": str(data["volume"]),
        "idempotency_key": idempotency_key,
    }


def _refuse_revoked(session: DbSession, client: ClientIdentity) -> None:
    revoked = session.scalar(sa.select(StrategyClient.revoked).where(StrategyClient.id == client.id))
    if revoked is not False:
        raise NotAuthenticated("unknown or revoked client")


def _insert_generic(
    session: DbSession, client: ClientIdentity, values: dict[str, Any], meta: dict[str, Any]
) -> Signal | None:
    """The same as `_PG_INGEST_PREPARE` for one signal, in plain statements, for SQLite (the embedded
    setup)."""
    _refuse_revoked(session, client)
    from sqlalchemy.dialects.sqlite import insert

    statement = insert(Signal).values(
        owner_id=client.owner_id, account_id=client.account_id, client_id=client.id, **values
    )
    signal = session.scalars(
        sa.select(Signal).from_statement(statement.on_conflict_do_nothing().returning(*Signal.__table__.c))
    ).one_or_none()
    if signal is not None:
        trail.record(
            session,
            actor_type=trail.CLIENT,
            actor_id=client.id,
            action=RECEIVED_ACTION,
            target_type="signal",
            target_id=signal.id,
            meta=meta,
        )
    return signal


def ingest_signal(
    session: DbSession,
    client: ClientIdentity,
    data: dict[str, Any],
    *,
    signature: str,
    body_sha256: str,
    idempotency_key: str | None,
    default_ttl_seconds: int,
) -> IngestResult:
    """Store a validated signal as pending with its audit row, or return the one an idempotent retry
    refers to.

    The insert comes first and lets the unique constraints decide, which is also what makes concurrent
    duplicates safe: Postgres makes the loser wait for the winner's commit, and the loser then reads
    what the winner stored. A client revoked since its secret was cached inserts nothing and gets 401.

    On Postgres, when the session has no transaction open, a new signal and its audit row are committed
    before this returns, by the statement of the batch it joined (autocommit); see `insert_postgres`.
    """
    signature = signature.strip().lower()
    now = utcnow()
    ttl = data.get("ttl_seconds") or default_ttl_seconds
    values = {
        "instrument": data["instrument"],
        "side": Side(data["side"]),
        "volume": data["volume"],
        "price": data.get("price"),
        "sl": data.get("sl"),
        "tp": data.get("tp"),
        "comment": data.get("comment"),
        "status": SignalStatus.PENDING,
        "ttl_seconds": ttl,
        "expires_at": now + timedelta(seconds=ttl),
        "idempotency_key": idempotency_key,
        "signature": signature,
        "body_sha256": body_sha256,
        "created_at": now,
    }
    meta = _received_meta(client, data, idempotency_key)
    signal: Signal | StoredSignal | None
    bind = bind_of(session)
    if bind.dialect.name == "postgresql":
        signal = insert_postgres(session, bind, client, values, meta)
    else:
        signal = _insert_generic(session, client, values, meta)
    if signal is not None:
        return IngestResult(signal, created=True)

    _refuse_revoked(session, client)  # nothing inserted: revoked since it was cached, or a duplicate
    earlier = _existing_for(session, client, idempotency_key, signature, body_sha256)
    if earlier is None:  # pragma: no cover - a conflict always has a row behind it
        raise RuntimeError("insert conflicted but no conflicting signal was found")
    return IngestResult(earlier, created=False)
