"""The key check: proof, kept in the database, that a process runs with the keys the data was written with.

TradeGuard encrypts broker passwords and strategy-client secrets with TRADEGUARD_ENCRYPTION_KEY and signs
bearer tokens with TRADEGUARD_JWT_SECRET. A process started with other keys (the embedded
`instance/secrets.json` lost and regenerated, a machine configured by mistake) would otherwise run as if
nothing were wrong: every stored password unreadable, every client's signals refused, tokens of the other
machines rejected. So the first process to run writes a check (a value encrypted with its encryption key,
and a fingerprint of its signing secret), and every later process must be able to read it, or it refuses
to start, saying which key is wrong.

Rotation keeps working: the check passes when *any* configured key reads it (the first key encrypts, all
decrypt; the first JWT secret signs, all verify), and `rotate` re-encrypts every stored secret and the
check with the first key, after which the old keys can be removed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from shared.core.config import ConfigurationError
from shared.core.crypto import SecretBox, SecretUnreadable
from shared.core.db import DbSession, utcnow
from shared.models import Account, KeyCheck, StrategyClient

log = logging.getLogger(__name__)

ENCRYPTION = "encryption"
JWT = "jwt"
_PLAINTEXT = "TradeGuard key check"


class KeysDoNotMatch(ConfigurationError):
    """This process's keys are not the ones the database's secrets were written with. Start it with the
    keys the other processes use (TRADEGUARD_ENCRYPTION_KEY, TRADEGUARD_JWT_SECRET; on the embedded
    setup, the instance/secrets.json the database was created with). Never "fix" this by deleting the
    check: the stored broker passwords and client secrets would stay unreadable."""


def jwt_fingerprint(secret: str) -> bytes:
    """What the check stores of a JWT secret: an HMAC that tells secrets apart but does not reveal them."""
    return hmac.new(secret.encode(), _PLAINTEXT.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class CheckOutcome:
    created: bool  # this process wrote the check (a new database)
    verified: bool = True  # False: there is no check to read yet (and `write` was off)


def verify(
    session: DbSession, box: SecretBox, jwt_secrets: Sequence[str], *, write: bool = True
) -> CheckOutcome:
    """Raise KeysDoNotMatch unless this process's keys read the stored check; write the check when there
    is none yet (committing it), unless `write` is off (a check made in the middle of other work, which
    must not take the database's write lock: SQLite's is one for the whole file). The caller makes sure
    the key_checks table exists."""
    stored = {row.name: row.token for row in session.scalars(sa.select(KeyCheck))}
    if ENCRYPTION in stored:
        try:
            readable = box.decrypt(stored[ENCRYPTION]) == _PLAINTEXT
        except SecretUnreadable:
            readable = False
        if not readable:
            raise KeysDoNotMatch(
                "TRADEGUARD_ENCRYPTION_KEY cannot decrypt the key check stored in the database: this "
                "process has other encryption keys than the ones the stored broker passwords and client "
                "secrets were encrypted with. Start it with those keys (on the embedded setup, restore "
                "instance/secrets.json; after a rotation, keep the old key in the list)."
            )
    if JWT in stored and not any(
        hmac.compare_digest(jwt_fingerprint(secret), bytes(stored[JWT])) for secret in jwt_secrets
    ):
        raise KeysDoNotMatch(
            "TRADEGUARD_JWT_SECRET does not match the key check stored in the database: this process would "
            "sign tokens the others reject and reject theirs. Start it with the secret the other processes "
            "use (on the embedded setup, restore instance/secrets.json)."
        )
    if ENCRYPTION in stored and JWT in stored:
        return CheckOutcome(created=False)
    if not write:
        return CheckOutcome(created=False, verified=False)
    _refuse_if_existing_secrets_are_unreadable(session, box)
    try:
        if ENCRYPTION not in stored:
            session.add(KeyCheck(name=ENCRYPTION, token=box.encrypt(_PLAINTEXT)))
        if JWT not in stored:
            session.add(KeyCheck(name=JWT, token=jwt_fingerprint(jwt_secrets[0])))
        session.commit()
    except sa.exc.IntegrityError:
        # Another process started at the same moment and wrote its check first: read that one.
        session.rollback()
        return verify(session, box, jwt_secrets)
    log.info("key check written: later processes must start with these keys")
    return CheckOutcome(created=True)


def _refuse_if_existing_secrets_are_unreadable(session: DbSession, box: SecretBox) -> None:
    """A database from before the key check holds secrets but no check: write one only if these keys
    read what is already there, so a check is never written for the wrong keys."""
    samples = [
        session.scalar(sa.select(Account.credentials_encrypted).order_by(Account.id).limit(1)),
        session.scalar(sa.select(StrategyClient.secret_encrypted).order_by(StrategyClient.id).limit(1)),
    ]
    for token in samples:
        if token is None:
            continue
        try:
            box.decrypt(bytes(token))
        except SecretUnreadable:
            raise KeysDoNotMatch(
                "TRADEGUARD_ENCRYPTION_KEY cannot decrypt the broker passwords and client secrets already "
                "stored in the database. Start this process with the keys they were encrypted with."
            ) from None


def _rotate_column(session: DbSession, box: SecretBox, model: Any, column: str, what: str) -> int:
    """Re-encrypt `column` of every `model` row with the first key; how many. SecretUnreadable naming the
    first row no key decrypts (`what`, formatted with its id), with the session rolled back."""
    count = 0
    for row in session.scalars(sa.select(model).order_by(model.id)):
        try:
            setattr(row, column, box.rotate(bytes(getattr(row, column))))
        except SecretUnreadable:
            session.rollback()
            raise SecretUnreadable(f"{what.format(row.id)}: no configured key decrypts it") from None
        count += 1
    return count


@dataclass(frozen=True)
class RotationReport:
    accounts: int
    clients: int


def rotate(session: DbSession, box: SecretBox, jwt_secrets: Sequence[str]) -> RotationReport:
    """Re-encrypt every stored secret and the check with the first encryption key, and point the JWT check
    at the first JWT secret, in one transaction. Afterwards the other keys can be removed from the
    configuration (once every process runs with the new first key). Raises KeysDoNotMatch first if the
    configured keys cannot read the current check, and SecretUnreadable naming the row none of them
    decrypts (nothing is changed then)."""
    verify(session, box, jwt_secrets)
    accounts = _rotate_column(session, box, Account, "credentials_encrypted", "account {} (its password)")
    clients = _rotate_column(
        session, box, StrategyClient, "secret_encrypted", "strategy client {} (its secret)"
    )
    checks = {row.name: row for row in session.scalars(sa.select(KeyCheck))}
    checks[ENCRYPTION].token = box.encrypt(_PLAINTEXT)
    checks[JWT].token = jwt_fingerprint(jwt_secrets[0])
    for row in checks.values():
        row.updated_at = utcnow()
    session.commit()
    return RotationReport(accounts=accounts, clients=clients)
