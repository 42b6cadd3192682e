"""Broker accounts: creation with encrypted credentials, and the terminal URL rules."""

from __future__ import annotations

import sqlalchemy as sa

from shared.audit import trail
from shared.core.crypto import SecretBox
from shared.core.db import DbSession
from shared.core.errors import Conflict, InvalidInput
from shared.core.ownership import get_owned
from shared.models import Account, User
from shared.mt5.errors import InvalidTerminalUrl, TerminalNotDeclared
from shared.mt5.terminals import require_declared


def create_account(
    session: DbSession,
    box: SecretBox,
    owner: User,
    *,
    declared_terminals: frozenset[str],
    name: str,
    terminal_url: str,
    login: int,
    password: str,
    server: str,
    currency: str = "USD",
) -> Account:
    """A new broker account of `owner`. Its terminal must be one the operator declared
    (`declared_terminals`, canonical URLs); it is stored in its canonical spelling."""
    try:
        terminal_url = require_declared(terminal_url, declared_terminals)
    except (InvalidTerminalUrl, TerminalNotDeclared) as exc:
        problem = str(exc)
        raise InvalidInput(
            f"invalid request: terminal_url: {problem}", fields={"terminal_url": [problem]}
        ) from None
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
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=owner.id,
        action="account.created",
        target_type="account",
        target_id=account.id,
        # Never the password, not even encrypted: the audit log is read by operators.
        meta={"name": name, "terminal_url": terminal_url, "login": login, "server": server},
    )
    return account


def get_own_account(session: DbSession, owner: User, account_id: int) -> Account:
    return get_owned(session, Account, account_id, owner.id, name="account")


def list_own_accounts(session: DbSession, owner: User) -> list[Account]:
    return list(session.scalars(sa.select(Account).where(Account.owner_id == owner.id).order_by(Account.id)))
