"""Users: registration, password checks (argon2) and admin creation."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.audit import trail
from shared.core.db import DbSession
from shared.core.errors import Conflict, NotAuthenticated
from shared.models import Role, User

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the email is unknown, so that a wrong email takes as long as a wrong password.

    Made on first use, not at import: argon2 takes 64 MiB to hash, and every worker process imports
    this module without ever checking a password."""
    return _hasher.hash("tradeguard-timing-equaliser")


def normalise_email(email: str) -> str:
    return email.strip().lower()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def register(session: DbSession, email: str, password: str, role: Role = Role.USER) -> User:
    email = normalise_email(email)
    if session.scalar(sa.select(User.id).where(User.email == email)) is not None:
        raise Conflict("that email is already registered", fields={"email": ["already registered"]})
    user = User(email=email, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    trail.record(
        session,
        actor_type=trail.USER,
        actor_id=user.id,
        action="user.registered",
        target_type="user",
        target_id=user.id,
        meta={"email": email, "role": role.value},
    )
    return user


def authenticate(session: DbSession, email: str, password: str) -> User:
    user = session.scalar(sa.select(User).where(User.email == normalise_email(email)))
    try:
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        raise NotAuthenticated("wrong email or password") from None
    if user is None:
        raise NotAuthenticated("wrong email or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


class AdminMade(NamedTuple):
    user: User
    # The audit actions written, in order: none when the user was an admin with this password already.
    audited: tuple[str, ...]


def create_or_promote_admin(session: DbSession, email: str, password: str, *, granted_by: str) -> AdminMade:
    """For the `flask create-admin` command: a new admin, or an existing user made admin (with this
    password). The audit log says what changed and what did it (`granted_by`): the role granted (with the
    role held before, None for a new user) and a password set on an existing user."""
    email = normalise_email(email)
    user = session.scalar(sa.select(User).where(User.email == email))
    audited: list[str] = []
    if user is None:
        user = register(session, email, password, role=Role.ADMIN)
        audited.append("user.registered")
        previous_role = None
        password_changes = False  # registered with it
    else:
        previous_role = user.role.value
        password_changes = not _is_password(user, password)
    if previous_role != Role.ADMIN.value:
        user.role = Role.ADMIN
        meta = {
            "email": email,
            "role": Role.ADMIN.value,
            "previous_role": previous_role,
            "granted_by": granted_by,
        }
        audited.append(_record_by_system(session, user, "user.role_granted", meta))
    if password_changes:
        user.password_hash = hash_password(password)
        audited.append(
            _record_by_system(session, user, "user.password_set", {"email": email, "set_by": granted_by})
        )
    return AdminMade(user, tuple(audited))


def _is_password(user: User, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _record_by_system(session: DbSession, user: User, action: str, meta: dict[str, Any]) -> str:
    trail.record(
        session,
        actor_type=trail.SYSTEM,
        actor_id=None,
        action=action,
        target_type="user",
        target_id=user.id,
        meta=meta,
    )
    return action


def get_user(session: DbSession, user_id: int) -> User | None:
    """The user a token names, or None: an id out of the column's range names nobody (and must not
    reach Postgres, which would refuse it as out of range)."""
    return session.get(User, user_id) if 0 < user_id < 2**31 else None


def user_id_of(session: DbSession, email: str) -> int | None:
    """The id of the user with this (normalised) email, or None."""
    return session.scalar(sa.select(User.id).where(User.email == normalise_email(email)))
