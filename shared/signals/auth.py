"""Authenticating a strategy client: the signed request, the client it names, and a short-lived cache of
decrypted client secrets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from shared.core.crypto import SecretBox, SecretUnreadable
from shared.core.db import DbSession
from shared.core.errors import NotAuthenticated
from shared.core.signing import parse_timestamp, signature_matches, timestamp_is_fresh
from shared.models import StrategyClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an HTTP request that the signature covers or identifies."""

    client_id: str | None
    timestamp: str | None
    signature: str | None
    body: bytes


@dataclass(frozen=True)
class ClientIdentity:
    """The authenticated strategy client: who sends, for which owner and account."""

    id: int
    owner_id: int
    account_id: int


@dataclass(frozen=True)
class _ClientKey:
    identity: ClientIdentity
    secret: str
    fetched_at: float


class ClientSecretUnreadable(NotAuthenticated):
    """A strategy client's stored secret cannot be decrypted, so its signatures cannot be checked. The
    client's requests are refused (401). The owner creates a new client, or the operator puts the key
    that encrypted it back into TRADEGUARD_ENCRYPTION_KEY."""

    code = "client_secret_unreadable"


class ClientKeyCache:
    """Decrypted client secrets, kept per process for a few seconds.

    Every signal would otherwise pay a query and a decryption before its signature can be checked.
    A secret never changes for a client id, so caching it is safe; revocation is not decided here:
    the insert itself refuses a revoked client (see `ingest_signal`), so a revoked client can never
    store a signal, however fresh the cache.
    """

    def __init__(self, ttl_seconds: float = 30.0):
        self.ttl_seconds = ttl_seconds
        self._keys: dict[int, _ClientKey] = {}

    def lookup(self, session: DbSession, box: SecretBox, client_id: int) -> _ClientKey | None:
        now = time.monotonic()
        cached = self._keys.get(client_id)
        if cached is not None and now - cached.fetched_at < self.ttl_seconds:
            return cached
        row = session.execute(_CLIENT_BY_ID, {"client_id": client_id}).one_or_none()
        if row is None or row.revoked:
            self._keys.pop(client_id, None)
            return None
        key = _ClientKey(
            ClientIdentity(id=row.id, owner_id=row.owner_id, account_id=row.account_id),
            box.decrypt(row.secret_encrypted),
            now,
        )
        self._keys[client_id] = key
        return key

    def forget(self, client_id: int) -> None:
        self._keys.pop(client_id, None)

    def clear(self) -> None:
        self._keys.clear()


_CLIENT_BY_ID = sa.select(
    StrategyClient.id,
    StrategyClient.owner_id,
    StrategyClient.account_id,
    StrategyClient.secret_encrypted,
    StrategyClient.revoked,
).where(StrategyClient.id == sa.bindparam("client_id"))


def authenticate_client(
    session: DbSession,
    box: SecretBox,
    request: SignedRequest,
    *,
    max_skew_seconds: int,
    keys: ClientKeyCache,
    now: float | None = None,
) -> ClientIdentity:
    """The client that signed `request`, or NotAuthenticated saying what is wrong."""
    if not request.client_id or not request.timestamp or not request.signature:
        raise NotAuthenticated("X-Client-Id, X-Timestamp and X-Signature headers are required")
    try:
        client_id = int(request.client_id)
    except ValueError:
        raise NotAuthenticated("unknown client") from None
    timestamp = parse_timestamp(request.timestamp)
    if timestamp is None:
        raise NotAuthenticated("X-Timestamp must be unix seconds")
    if not timestamp_is_fresh(timestamp, time.time() if now is None else now, max_skew_seconds):
        raise NotAuthenticated(f"X-Timestamp is more than {max_skew_seconds} s from server time")
    try:
        key = keys.lookup(session, box, client_id) if 0 < client_id < 2**31 else None
    except SecretUnreadable:
        # The key that encrypted this client's secret is gone from TRADEGUARD_ENCRYPTION_KEY (the key
        # check keeps a whole process from running with the wrong keys; this is one row). The client
        # cannot be authenticated: say so, and tell the operator which row.
        log.error(
            "strategy client %s: its stored secret cannot be decrypted with the configured keys", client_id
        )
        raise ClientSecretUnreadable(
            "this client's secret cannot be read by the server: the account owner must create a new client "
            "(the operator has the details in the log)"
        ) from None
    if key is None:
        raise NotAuthenticated("unknown or revoked client")
    if not signature_matches(key.secret, timestamp, request.body, request.signature):
        raise NotAuthenticated("bad signature")
    return key.identity
