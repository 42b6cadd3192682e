"""Broker accounts: creation with encrypted credentials, and the terminal URL rules."""

from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa

from shared import audit
from shared.crypto import SecretBox
from shared.db import DbSession
from shared.errors import Conflict, NotFound
from shared.models import Account, User

TERMINAL_SCHEMES = ("mt5", "mt5linux", "sim")


def terminal_url_problem(url: str) -> str | None:
    """Why `url` is not a usable terminal URL, or None when it is.

    `mt5://` is the MetaTrader5 package on this machine; `mt5linux://host:port` the package in a
    remote Python over RPyC; `sim://` the simulated terminal (in-process, or `sim://host:port` for the
    `terminal` process).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in TERMINAL_SCHEMES:
        return "scheme must be one of " + ", ".join(f"{s}://" for s in TERMINAL_SCHEMES)
    if parts.scheme == "mt5linux" and (not parts.hostname or port is None):
        return "mt5linux:// needs a host and a port, e.g. mt5linux://127.0.0.1:18812"
    if parts.scheme == "mt5" and parts.hostname:
        return "mt5:// takes no host: it uses the MetaTrader5 package on the worker's own machine"
    return None


def create_account(
    session: DbSession,
    box: SecretBox,
    owner: User,
    *,
    name: str,
    terminal_url: str,
    login: int,
    password: str,
    server: str,
    currency: str = "USD",
) -> Account:
    exists = session.scalar(sa.select(Account.id).where(Account.owner_id == owner.id, Account.name == name))
    if exists is not None:
        raise Conflict("you already have an account with that name", fields={"name": ["already used"]})
    account = Account(
        owner_id=owner.id,
        name=name,
        terminal_url=terminal_url,
        login=login,
        server=server,
        credentials_encrypted=box.encrypt(password),
        currency=currency,
    )
    session.add(account)
    session.flush()
    audit.record(
        session,
        actor_type=audit.USER,
        actor_id=owner.id,
        action="account.created",
        target_type="account",
        target_id=account.id,
        # Never the password, not even encrypted: the audit log is read by operators.
        meta={"name": name, "terminal_url": terminal_url, "login": login, "server": server},
    )
    return account


def get_own_account(session: DbSession, owner: User, account_id: int) -> Account:
    account = session.get(Account, account_id)
    if account is None or account.owner_id != owner.id:
        raise NotFound(f"account {account_id} not found")
    return account


def list_own_accounts(session: DbSession, owner: User) -> list[Account]:
    return list(session.scalars(sa.select(Account).where(Account.owner_id == owner.id).order_by(Account.id)))
