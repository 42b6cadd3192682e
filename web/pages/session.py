"""The pages' sign-in: a cookie for the browser pages only (the JSON API keeps its bearer tokens).

The cookie holds a signed token (HS256 with the JWT secrets, audience `tradeguard-pages`, so an API
bearer token is never taken for one nor the other way round) naming the user and a random nonce;
`HttpOnly`, `SameSite=Lax`, and `Secure` when the request came over TLS. Every form carries a CSRF token,
an HMAC of that nonce under the app's secret key: a page of another site cannot read it, so it cannot
post a form as the user. The sign-in form itself is protected the same way with a nonce of its own in a
short-lived cookie (double submit).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote

import jwt
from flask import abort, redirect, request
from werkzeug.wrappers import Response

from shared.identity import users
from shared.models import User
from web.extensions import db, settings

F = TypeVar("F", bound=Callable[..., Any])

SESSION_COOKIE = "tg_session"
SIGN_IN_COOKIE = "tg_sign_in"
AUDIENCE = "tradeguard-pages"
SESSION_SECONDS = 12 * 3600
SIGN_IN_SECONDS = 3600
_ALGORITHM = "HS256"


def _cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="Lax", secure=request.is_secure, path="/"
    )


def start(response: Response, user: User) -> None:
    """Sign `user` in on this browser."""
    now = int(time.time())
    claims = {
        "sub": str(user.id),
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + SESSION_SECONDS,
        "nonce": secrets.token_urlsafe(16),
    }
    _cookie(
        response,
        SESSION_COOKIE,
        jwt.encode(claims, settings().jwt_secret, algorithm=_ALGORITHM),
        SESSION_SECONDS,
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/")


def end(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def _claims() -> dict[str, Any] | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    for secret in settings().jwt_secrets:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[_ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["exp", "sub", "aud", "nonce"]},
            )
            return claims
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            return None
    return None


_USER = "tradeguard.page_user"
_NONCE = "tradeguard.page_nonce"


def signed_in_user() -> User | None:
    """The user this browser signed in as, if the cookie is valid and the user still exists. Read once
    per request (kept in the request's environ: `g` may outlive a request, as in tests)."""
    if _USER in request.environ:
        return cast(User | None, request.environ[_USER])
    claims = _claims()
    user = None
    if claims is not None:
        try:
            user = users.get_user(db.session, int(claims["sub"]))
        except ValueError:
            user = None
    request.environ[_USER] = user
    request.environ[_NONCE] = claims["nonce"] if user is not None and claims is not None else None
    return user


def current_user() -> User:
    return cast(User, request.environ[_USER])


def sign_in_nonce(response: Response | None = None) -> str:
    """The nonce the sign-in form's CSRF token is made from: the cookie's, or a new one set on
    `response`."""
    nonce = request.cookies.get(SIGN_IN_COOKIE)
    if not nonce:
        nonce = request.environ.get("tradeguard.sign_in_nonce") or secrets.token_urlsafe(16)
        request.environ["tradeguard.sign_in_nonce"] = nonce
    if response is not None and request.cookies.get(SIGN_IN_COOKIE) != nonce:
        _cookie(response, SIGN_IN_COOKIE, nonce, SIGN_IN_SECONDS)
    return nonce


def csrf_token() -> str:
    """The token the current page's forms carry (signed in: from the session; else the sign-in form's)."""
    nonce = request.environ.get(_NONCE) if signed_in_user() is not None else None
    return _token(nonce or sign_in_nonce())


def _token(nonce: str) -> str:
    return hmac.new(settings().secret_key.encode(), f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def check_csrf() -> None:
    """Refuse (403) a form posted without this browser's CSRF token."""
    sent = request.form.get("csrf_token", "")
    if not sent or not hmac.compare_digest(sent, csrf_token()):
        abort(403, description="the form's security token is missing or stale: reload the page and try again")


def page_login_required(view: F) -> F:
    """The view for signed-in users; others go to the sign-in page (and come back). A POST must carry
    the CSRF token."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if signed_in_user() is None:
            return redirect(f"/login?next={quote(request.full_path.rstrip('?'), safe='/')}")
        if request.method == "POST":
            check_csrf()
        return view(*args, **kwargs)

    return cast(F, wrapper)
