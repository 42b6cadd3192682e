"""Strategy clients: the programs that send signals, each bound to one account by an HMAC secret."""

from __future__ import annotations

import secrets

import sqlalchemy as sa

from shared.audit import trail
from shared.core.crypto import SecretBox
from shared.core.db import DbSession, utcnow
from shared.core.ownership import get_owned
from shared.identity.accounts import get_own_account
from shared.models import StrategyClient, User


def create_client(
    session: DbSession, box: SecretBox, owner: User, *, name: str, account_id: int
) -> tuple[StrategyClient, str]:
    """Returns the client and its secret. The secret is shown to the owner once and stored encrypted."""
    account = get_own_account(session, owner, account_id)
    secret = secrets.token_urlsafe(32)
    client = StrategyClient(
        owner_id=owner.id, account_id=account.id, name=name, secret_encrypted=box.encrypt(secret)
    )
    session.add(client)
    session.flush()
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=owner.id,
        action="client.created",
        target_type="strategy_client",
        target_id=client.id,
        meta={"name": name, "account_id": account.id},
    )
    return client, secret


def get_own_client(session: DbSession, owner: User, client_id: int) -> StrategyClient:
    return get_owned(session, StrategyClient, client_id, owner.id, name="client")


def list_own_clients(session: DbSession, owner: User) -> list[StrategyClient]:
    return list(
        session.scalars(
            sa.select(StrategyClient).where(StrategyClient.owner_id == owner.id).order_by(StrategyClient.id)
        )
    )


def revoke_client(session: DbSession, owner: User, client_id: int) -> StrategyClient:
    """Revoke a client. Revoking twice is harmless and writes the audit row only once."""
    client = get_own_client(session, owner, client_id)
    if not client.revoked:
        client.revoked = True
        client.revoked_at = utcnow()
        trail.record(
            session,
            actor_type=trail.USER,
            actor_id=owner.id,
            action="client.revoked",
            target_type="strategy_client",
            target_id=client.id,
            meta={"name": client.name},
        )
    return client
