"""Authentication: bearer JWTs for people, HMAC signatures for strategy clients."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import jwt
from flask import g, request

from shared.core.errors import Forbidden, NotAuthenticated
from shared.identity import users
from shared.models import User
from shared.signals.auth import ClientIdentity, SignedRequest, authenticate_client
from web.extensions import client_keys, db, secret_box, settings

F = TypeVar("F", bound=Callable[..., Any])

_ALGORITHM = "HS256"


def issue_token(user: User) -> tuple[str, int]:
    ttl = settings().jwt_ttl_seconds
    now = int(time.time())
    claims = {"sub": str(user.id), "role": user.role.value, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, settings().jwt_secret, algorithm=_ALGORITHM), ttl


def _verified_claims(token: str, secrets: tuple[str, ...]) -> dict[str, Any]:
    """The token's claims when one of `secrets` verifies it (all of them are tried, so that tokens
    signed before a rotation stay valid until they expire); NotAuthenticated otherwise."""
    for secret in secrets:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, secret, algorithms=[_ALGORITHM], options={"require": ["exp", "sub"]}
            )
            return claims
        except jwt.InvalidSignatureError:
            continue  # signed with another of the configured secrets, perhaps
        except jwt.PyJWTError:
            break
    raise NotAuthenticated("the bearer token is invalid or has expired")


def _user_from_bearer() -> User:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("an Authorization: Bearer token is required")
    claims = _verified_claims(token.strip(), settings().jwt_secrets)
    try:
        user_id = int(claims["sub"])
    except ValueError:
        raise NotAuthenticated("the bearer token is invalid or has expired") from None
    user = users.get_user(db.session, user_id)
    if user is None:
        raise NotAuthenticated("the bearer token's user no longer exists")
    return user


def current_user() -> User:
    return cast(User, g.current_user)


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.current_user = _user_from_bearer()
        return view(*args, **kwargs)

    return cast(F, wrapper)


def admin_required(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user = _user_from_bearer()
        if not user.is_admin:
            raise Forbidden("administrators only")
        g.current_user = user
        return view(*args, **kwargs)

    return cast(F, wrapper)


def current_client() -> ClientIdentity:
    return cast(ClientIdentity, g.current_client)


def signature_required(view: F) -> F:
    """Authenticate a strategy client by its HMAC signature before the body is even parsed."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signed = SignedRequest(
            client_id=request.headers.get("X-Client-Id"),
            timestamp=request.headers.get("X-Timestamp"),
            signature=request.headers.get("X-Signature"),
            # cache=True: the body parser reads the same bytes afterwards.
            body=request.get_data(cache=True),
        )
        g.current_client = authenticate_client(
            db.session,
            secret_box(),
            signed,
            max_skew_seconds=settings().signature_max_skew_seconds,
            keys=client_keys(),
        )
        return view(*args, **kwargs)

    return cast(F, wrapper)
