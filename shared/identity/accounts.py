"""Broker accounts: creation with encrypted credentials, the terminal URL rules, one registration per MT5
account, and the check that the account's terminal takes its credentials."""

from __future__ import annotations

from typing import NoReturn

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shared.audit import trail
from shared.core.crypto import SecretBox
from shared.core.db import DbSession
from shared.core.errors import Conflict, InvalidInput
from shared.core.ownership import get_owned
from shared.models import Account, User
from shared.mt5.errors import (
    InvalidTerminalUrl,
    RetryableTerminalError,
    TerminalError,
    TerminalLoginFailed,
    TerminalNotDeclared,
    TerminalTimeout,
)
from shared.mt5.gateway import Gateway
from shared.mt5.terminals import require_declared

# The fields that together name what a terminal refused: which one was wrong, it does not say.
CREDENTIAL_FIELDS = ("login", "password", "server")


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
    verify: bool = True,
    check_timeout: float = 5.0,
) -> Account:
    """A new broker account of `owner`. Its terminal must be one the operator declared
    (`declared_terminals`, canonical URLs); it is stored in its canonical spelling. One MT5 account
    (`login` on `server`) is registered once, whoever owns it (Conflict naming it otherwise). With
    `verify`, the terminal is logged in to first (`check_terminal_login`, each call within
    `check_timeout` seconds), so that an account whose terminal is down or refuses the credentials is
    refused now rather than found out by its first trade."""
    try:
        terminal_url = require_declared(terminal_url, declared_terminals)
    except (InvalidTerminalUrl, TerminalNotDeclared) as exc:
        problem = str(exc)
        raise InvalidInput(
            f"invalid request: terminal_url: {problem}", fields={"terminal_url": [problem]}
        ) from None
    # The database's own checks first: they answer at once, the terminal may take seconds.
    _refuse_a_second_copy(session, owner, name=name, login=login, server=server)
    if verify:
        check_terminal_login(
            terminal_url,
            declared=declared_terminals,
            login=login,
            password=password,
            server=server,
            timeout=check_timeout,
        )
    account = Account(
        owner_id=owner.id,
        name=name,
        terminal_url=terminal_url,
        login=login,
        server=server,
        credentials_encrypted=box.encrypt(password),
        currency=currency,
    )
    try:
        with session.begin_nested():
            session.add(account)
            session.flush()
    except IntegrityError:
        # Another request stored the same name or MT5 account after the check above (the unique
        # constraints decide between two at once): name it, as the check would have.
        _refuse_a_second_copy(session, owner, name=name, login=login, server=server)
        raise
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=owner.id,
        action="account.created",
        target_type="account",
        target_id=account.id,
        # Never the password, not even encrypted: the audit log is read by operators.
        meta={
            "name": name,
            "terminal_url": terminal_url,
            "login": login,
            "server": server,
            "verified": verify,
        },
    )
    return account


def _refuse_a_second_copy(session: DbSession, owner: User, *, name: str, login: int, server: str) -> None:
    """Conflict when `owner` already has an account called `name`, or when the MT5 account (`login` on
    `server`) is registered already. Someone else's account is not shown, not even its id or name:
    only that this MT5 account is taken."""
    named = sa.select(Account.id).where(Account.owner_id == owner.id, Account.name == name)
    if session.scalar(named) is not None:
        raise Conflict("you already have an account with that name", fields={"name": ["already used"]})
    existing = session.execute(
        sa.select(Account.id, Account.owner_id, Account.name).where(
            Account.login == login, Account.server == server
        )
    ).first()
    if existing is None:
        return
    mt5_account = f"login {login} on server {server}"
    if existing.owner_id == owner.id:
        problem = f"already registered as your account {existing.id} ({existing.name})"
    else:
        problem = "already registered by another user"
    raise Conflict(
        f"{mt5_account} is {problem}: an MT5 account can be added once, or each copy would see the "
        "other's trades as positions opened outside TradeGuard",
        fields={"login": [problem], "server": [problem]},
    )


def check_terminal_login(
    terminal_url: str, *, declared: frozenset[str], login: int, password: str, server: str, timeout: float
) -> None:
    """Log in to the account's terminal as a worker will, and ask it which account it is on. InvalidInput
    naming `terminal_url` when the terminal cannot be reached, does not answer within `timeout` (per
    call) or cannot be asked from here; naming login, password and server when it refuses them."""
    skip = 'or send "verify": false to add the account without this check'
    try:
        with Gateway.open(
            terminal_url, declared=declared, login=login, password=password, server=server, timeout=timeout
        ) as terminal:
            logged_in_to = terminal.account().login
    except TerminalLoginFailed as exc:
        _refuse(CREDENTIAL_FIELDS, f"the terminal refused the login ({exc})")
    except TerminalTimeout as exc:
        _refuse(("terminal_url",), f"the terminal did not answer within {timeout:g} s ({exc}); {skip}")
    except RetryableTerminalError as exc:
        _refuse(("terminal_url",), f"the terminal cannot be reached ({exc}); check that it runs, {skip}")
    except TerminalError as exc:
        # Not supported here (mt5:// on a machine without the package), or not answering as a terminal.
        _refuse(("terminal_url",), f"the account could not be checked on this terminal ({exc}); {skip}")
    if logged_in_to != login:
        _refuse(("login",), f"the terminal logged in to account {logged_in_to}, not {login}")


def _refuse(fields: tuple[str, ...], problem: str) -> NoReturn:
    raise InvalidInput(
        f"invalid request: {', '.join(fields)}: {problem}", fields={field: [problem] for field in fields}
    )


def get_own_account(session: DbSession, owner: User, account_id: int) -> Account:
    return get_owned(session, Account, account_id, owner.id, name="account")


def list_own_accounts(session: DbSession, owner: User) -> list[Account]:
    return list(session.scalars(sa.select(Account).where(Account.owner_id == owner.id).order_by(Account.id)))
