"""Sign-in throttling (Flask-Limiter): failed logins per email and per client address, and
registrations per client address, refused with 429 before any argon2 work.

Why it is built this way:

- argon2 is the cost: about 130 ms of CPU per password checked or hashed. A flood of wrong passwords
  used to be answered 401 one argon2 after another and starved every other request (signal ingest
  went from 5 ms to 693 ms p50). So a limit is *tested* before the view runs and a request over it is
  refused 429 without reaching argon2; a request is *counted* afterwards, only when its answer shows
  argon2 ran for nothing: a login answered 401 (wrong password or unknown email, which cost the same),
  a registration answered 201, or 409 (an email already taken: no argon2, but it tells the client an
  account exists, so probing emails is bounded too; a 422 is refused before anything). Flask-Limiter's
  `deduct_when` does exactly this test-then-count.
- Successful logins are never counted: a user who signs in many times a day (or the test suite,
  from 127.0.0.1) never gets near a limit, and only failures can lock an email or an address.
- Per email: bounds the guesses against one account whatever addresses they come from. While an email
  is locked even its correct password is refused: checking it would cost the argon2 the lock is there
  to save, and answering 200 would let a guesser keep guessing at full speed. The price is that
  anyone can keep an email locked by failing on purpose; the window (15 minutes by default) bounds it.
- Per address: bounds the CPU one client can burn spraying many emails. Someone signing in from an
  address that is locked (a shared NAT) is refused until the window passes, whatever their email.
- Fixed windows: an email or address gets N failures from its first one; the N+1th request within the
  window is refused, and so is every one after it, until the window that began with the first failure
  ends. `Retry-After` says how many whole seconds that is.
- Test then count is not atomic: requests already in flight when the limit is reached are still
  checked, so a window can see up to (web processes x threads) failures beyond N. That bounds the
  extra argon2 work by the server's own concurrency.
- Storage: Redis (REDIS_URL), shared by every web process, so the limits are per deployment; on the
  embedded setup (no Redis) `memory://`, so each web process counts on its own (a client gets up to
  the limit times WEB_CONCURRENCY, 2 by default: still a bound).
- Redis down: fail open, onto per-process memory counters (Flask-Limiter's in-memory fallback, with
  errors swallowed and logged), never a 500. Failing closed would turn a Redis outage into nobody
  being able to sign in; the memory counters still cap each web process at the same limits, so the
  CPU stays protected. Flask-Limiter goes back to Redis when it answers again.
- Each web process remembers the lock-outs it has refused (`KnownLockOuts`) and refuses the rest of
  their windows itself, before the limiter: a flood then costs one dictionary lookup per request.
- The lock-out is audited once per window, by the first refused request: it claims a marker that
  expires with the window, and only the request that created it writes the row. A flood of refused
  requests therefore writes one row, not one per request.
- Client address: `request.remote_addr`, gunicorn's peer (for IPv6, its /64). Behind reverse proxies set
  TRADEGUARD_TRUSTED_PROXIES to their number, and X-Forwarded-For is believed for that many hops
  (werkzeug's ProxyFix); left at 0 when nothing stands in front, or a client could pick any address
  it likes by sending that header.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from flask import Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.audit import trail
from shared.core.config import Settings
from shared.core.db import db
from shared.core.errors import TradeGuardError
from shared.identity import users
from shared.identity.users import normalise_email
from web.errors import error_response
from web.json_body import json_body

LOGIN_ENDPOINT = "auth.login"
PAGE_LOGIN_ENDPOINT = "pages.login"
REGISTER_ENDPOINT = "auth.register"
_THROTTLED = frozenset((LOGIN_ENDPOINT, PAGE_LOGIN_ENDPOINT, REGISTER_ENDPOINT))
# Longest email an account can have (RegisterSchema): a longer one cannot be an account's.
_MAX_EMAIL = 254
# A Redis that stops answering must not hold a sign-in for long: after this, the request fails over
# to the per-process memory counters.
_REDIS_OPTIONS: dict[str, str | int] = {"socket_connect_timeout": 1, "socket_timeout": 1}
_TTL_ROUNDING = 0.5


@dataclass(frozen=True)
class Lock:
    """One throttle: what it counts, and how its lock-out is reported and audited."""

    scope: str  # also the Flask-Limiter scope, which keeps its counters apart from the others'
    action: str  # the audit action written once per lock-out window
    message: str
    field: str | None = None  # the body field the 429 names, if the lock-out is about one


EMAIL = Lock("login-email", "auth.locked_out", "too many failed sign-ins for this email", "email")
ADDRESS = Lock("login-address", "auth.locked_out", "too many failed sign-ins from your address")
REGISTRATION = Lock(
    "register-address", "auth.registration_locked_out", "too many registrations from your address"
)
_LOCKS = {lock.scope: lock for lock in (EMAIL, ADDRESS, REGISTRATION)}
_RETRY_AFTER = "tradeguard.retry_after"


# --- rules ---------------------------------------------------------------------------------------


def email_key(body: Any) -> str:
    """The email a login or registration body names, normalised as accounts store it, or "" when there
    is none: Flask-Limiter skips a limit whose key is empty, and such a body is refused (422) before
    any hashing anyway."""
    if isinstance(body, dict) and isinstance(body.get("email"), str):
        email = normalise_email(body["email"])
        if 0 < len(email) <= _MAX_EMAIL:
            return email
    return ""


def retry_after_seconds(reset_at: float, now: float) -> int:
    """Whole seconds until the window ends, rounded up so that a client retrying after them is let
    through, and at least 1. Redis reports a key's time to live rounded to the nearest second, so the
    window can end up to half a second after `reset_at`: that half second is added."""
    return max(1, math.ceil(reset_at - now + _TTL_ROUNDING))


def failed_login(response: Response) -> bool:
    """Only a 401 means argon2 ran for nothing; 4xx for a bad body and 503 never reached it."""
    return response.status_code == 401


def registered(response: Response) -> bool:
    """A new user (argon2 ran), or an email found already taken: that costs no argon2, but each one tells
    the client that an account exists, so asking email after email is bounded by the same limit."""
    return response.status_code in (201, 409)


# --- request edges -------------------------------------------------------------------------------


def client_address() -> str:
    """The client's address, or for IPv6 its /64 network: one subscriber usually holds a whole /64 and
    could otherwise take a fresh address for every few failures."""
    address = request.remote_addr or "unknown"
    if ":" in address:
        try:
            return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
        except ValueError:
            return address
    return address


def request_email() -> str:
    """The email of the current request's body. Never raises: an exception here would read to
    Flask-Limiter as a storage failure; the body parser answers an unreadable body itself."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return email_key(request.form.to_dict())  # the pages' sign-in form
    try:
        return email_key(json_body(request))
    except (TradeGuardError, HTTPException):  # 400 / 415, or 413 for an oversized body
        return ""


class KnownLockOuts:
    """The lock-outs this web process has seen, until their windows end, so that it refuses the rest of
    a flood itself: no Redis round trips, no limiter machinery, only the address (and, for an email,
    the body) to read. Measured under a 16-thread flood (bench/login_flood.py), a refused request
    cost the web process 1.13 ms of CPU before and 0.43 ms with this.

    Only ever refuses what the shared counters refused first, in this process, for the same window, so
    a lock-out never lasts longer here than the counters say. (Clearing the counters by hand therefore
    takes up to one window to reach the processes that already refused.) Bounded: past `max_entries`,
    ended windows are dropped, and if that is not enough, all of them (each is learnt again from one
    refusal by the counters)."""

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._until: dict[tuple[str, str], float] = {}
        self._guard = threading.Lock()

    def remember(self, scope: str, identity: str, until: float) -> None:
        with self._guard:
            if len(self._until) >= self.max_entries:
                now = time.time()
                self._until = {key: end for key, end in self._until.items() if end > now}
                if len(self._until) >= self.max_entries:
                    self._until.clear()
            self._until[scope, identity] = until

    def seconds_left(self, scope: str, identity: str, now: float) -> float:
        """How long the lock-out of `identity` lasts yet (0 when there is none)."""
        return max(0.0, self._until.get((scope, identity), 0.0) - now)


def _identity(lock: Lock) -> str:
    return request_email() if lock is EMAIL else client_address()


def _lock_out(lock: Lock, known: KnownLockOuts, breached: RequestLimit) -> None:
    """Flask-Limiter's on_breach: remember how long the lock lasts for the 429 (and for this process's
    next refusals), and audit the lock-out if this is the first refusal of its window."""
    storage = breached.limiter.storage
    # The counter's expiry is the window's end (one round trip; `breached.window` would add a GET).
    now = time.time()
    seconds = retry_after_seconds(storage.get_expiry(breached.key), now)
    # On the request, not on `g`: an app context (and its `g`) can outlive one request.
    request.environ[_RETRY_AFTER] = seconds
    identity = _identity(lock)
    if identity:
        known.remember(lock.scope, identity, now + seconds)
    # The marker lives as long as the window, in the same storage as the counters (Redis, or the
    # memory fallback), so that exactly one refused request per window and deployment sees 1 here.
    if storage.incr(f"audited/{breached.key}", seconds) != 1:
        return
    email = request_email()
    try:
        # An email lock-out is about the account, when there is one: listed with its other audit rows.
        target_id = users.user_id_of(db.session, email) if lock is EMAIL else None
        trail.record(
            db.session,
            actor_type=trail.SYSTEM,
            actor_id=None,
            action=lock.action,
            target_type="user" if lock is EMAIL else "address",
            target_id=target_id,
            meta={
                "throttle": lock.scope,
                "email": email,
                "address": client_address(),
                "limit": str(breached.limit),
                "retry_after_seconds": seconds,
            },
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise  # Flask-Limiter logs it and still refuses the request


def _too_many_requests(error: RateLimitExceeded) -> tuple[Response, int]:
    lock = _LOCKS.get(str(error.limit.scope))
    # on_breach measured the window; if the storage failed it there, the whole window is the bound.
    seconds = request.environ.get(_RETRY_AFTER) or error.limit.limit.get_expiry()
    return _refusal(lock.message if lock else str(error.description), lock, int(seconds))


def _refusal(description: str, lock: Lock | None, seconds: int) -> tuple[Response, int]:
    message = f"{description}; try again in {seconds} s"
    fields = {lock.field: [message]} if lock and lock.field else None
    response, status = error_response(429, message, "too_many_requests", fields)
    response.headers["Retry-After"] = str(seconds)
    return response, status


# What each throttled view is refused by, cheapest to check first (an address needs no body).
_LOCKS_OF_VIEW = {
    LOGIN_ENDPOINT: (ADDRESS, EMAIL),
    PAGE_LOGIN_ENDPOINT: (ADDRESS, EMAIL),
    REGISTER_ENDPOINT: (REGISTRATION,),
}


def _refuse_known_lock_outs(known: KnownLockOuts) -> tuple[Response, int] | None:
    """before_request: the 429 of a lock-out this process already knows, or None to let the view run
    (and the limiter decide)."""
    now = time.time()
    for lock in _LOCKS_OF_VIEW.get(request.endpoint or "", ()):
        identity = _identity(lock)
        left = known.seconds_left(lock.scope, identity, now) if identity else 0.0
        if left > 0:
            return _refusal(lock.message, lock, max(1, math.ceil(left)))
    return None


def install(app: Flask, settings: Settings) -> Limiter:
    """Throttle the sign-in and registration views of `app` (call once its blueprints are registered).

    One Limiter per app, not a module-level one: Flask-Limiter keeps its storage on the instance, and
    one process may build several apps (tests, benchmarks) on different storages."""
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    # Flask-Limiter logs every refused request at INFO: a flood would write a line per request. The
    # audit row records the lock-out once; storage failures still log as warnings and errors.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)
    limiter = Limiter(
        client_address,
        app=app,
        storage_uri=settings.redis_url or "memory://",
        storage_options=dict(_REDIS_OPTIONS) if settings.redis_url else {},
        strategy="fixed-window",
        key_prefix="tradeguard",
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        headers_enabled=False,  # Retry-After is set on the 429 only, by _too_many_requests
    )

    known = KnownLockOuts()
    app.before_request(partial(_refuse_known_lock_outs, known))

    def throttled(lock: Lock, limit: str, deduct_when: Any, key_func: Any = client_address) -> Any:
        # Shared: one counter per lock and key whichever view counts (a plain limit's is per view, and the
        # pages' sign-in would be a second set of guesses).
        return limiter.shared_limit(
            limit,
            key_func=key_func,
            scope=lock.scope,
            deduct_when=deduct_when,
            error_message=lock.message,
            on_breach=partial(_lock_out, lock, known),
        )

    # The API's sign-in and the pages' (a form; a failure is 401 there too) count against the same limits.
    for endpoint in (LOGIN_ENDPOINT, PAGE_LOGIN_ENDPOINT):
        if endpoint not in app.view_functions:
            continue
        login = app.view_functions[endpoint]
        login = throttled(EMAIL, settings.login_limit_per_email, failed_login, request_email)(login)
        login = throttled(ADDRESS, settings.login_limit_per_address, failed_login)(login)
        app.view_functions[endpoint] = login
    register = app.view_functions[REGISTER_ENDPOINT]
    app.view_functions[REGISTER_ENDPOINT] = throttled(
        REGISTRATION, settings.register_limit_per_address, registered
    )(register)
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
    _hook_throttled_views_only(app, limiter)
    app.extensions["tradeguard.limiter"] = limiter
    return limiter


def _hook_throttled_views_only(app: Flask, limiter: Limiter) -> None:
    """Flask-Limiter hooks every request of the app (a check before, a count after, a reset at
    teardown): some 60 us per request measured, signal ingest included, for nothing, since every limit
    here is on a view. The check before is dropped: the wrapped views make it themselves. The count
    after (where `deduct_when` counts a failure) and the teardown run for the throttled views only."""

    def take(hooks: list[Any], stage: str) -> Any:
        found = [
            hook
            for hook in hooks
            if getattr(hook, "__self__", None) is limiter
            or (isinstance(hook, partial) and bool(hook.args) and hook.args[0] is limiter)
        ]
        if len(found) != 1:  # Flask-Limiter 4.1 registers one of each; another version may not
            raise RuntimeError(f"Flask-Limiter's {stage} hook not found where web/throttle.py expects it")
        hooks.remove(found[0])
        return found[0]

    take(app.before_request_funcs[None], "before-request")
    count_after = take(app.after_request_funcs[None], "after-request")
    reset = take(app.teardown_request_funcs[None], "teardown")

    @app.after_request
    def _count(response: Response) -> Response:
        return cast(Response, count_after(response)) if request.endpoint in _THROTTLED else response

    @app.teardown_request
    def _reset(error: BaseException | None) -> None:
        if request.endpoint in _THROTTLED:
            reset(error)
