"""Sign-in throttling on the embedded setup (SQLite, memory:// counters): failed logins per email and
per client address, registrations per address, 429 before argon2, the lock-out audited once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from shared.core.config import ConfigurationError, load_settings
from shared.core.db import db
from shared.identity import users
from shared.models import AuditLog, User
from web import create_app
from web.throttle import email_key, retry_after_seconds

OWNER, PASSWORD = "owner@example.com", "password one"
LOGIN = "/api/v1/auth/login"
REGISTER = "/api/v1/auth/register"


class CountingHasher:
    """users._hasher, counting the argon2 work the throttle is there to save."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.verified = 0
        self.hashed = 0

    def verify(self, hashed: str, password: str) -> bool:
        self.verified += 1
        return bool(self.real.verify(hashed, password))

    def hash(self, password: str) -> str:
        self.hashed += 1
        return str(self.real.hash(password))

    def check_needs_rehash(self, hashed: str) -> bool:
        return bool(self.real.check_needs_rehash(hashed))


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    users._dummy_hash()  # made once per process: not part of what a test counts
    counting = CountingHasher(users._hasher)
    monkeypatch.setattr(users, "_hasher", counting)
    return counting


@pytest.fixture
def make_app(tmp_path: Any) -> Any:
    apps: list[Any] = []

    def make(**env: str) -> Any:
        folder = tmp_path / f"app{len(apps)}"
        app = create_app(load_settings({"TRADEGUARD_INSTANCE_DIR": str(folder), **env}))
        with app.app_context():
            upgrade()
            users.register(db.session, OWNER, PASSWORD)
            db.session.commit()
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            db.engine.dispose()


def login(app: Any, email: str, password: str, address: str = "127.0.0.1", **headers: str) -> Any:
    return app.test_client().post(
        LOGIN,
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
        headers=headers,
    )


def lock_outs(app: Any) -> list[AuditLog]:
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditLog).where(AuditLog.action.like("auth.%locked_out"))).all()
        db.session.expunge_all()
        return list(rows)


def test_failed_logins_per_email_end_in_429_before_any_argon2_even_for_the_right_password(make_app, hasher):
    app = make_app(TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="3 per minute")
    for _ in range(3):
        wrong = login(app, OWNER, "wrong password")
        assert wrong.status_code == 401 and wrong.json["error"]["code"] == "unauthorized"
    assert hasher.verified == 3

    refused = login(app, " Owner@Example.com", "wrong password")  # the same account, written otherwise
    assert refused.status_code == 429
    error = refused.json["error"]
    assert error["code"] == "too_many_requests"
    assert error["message"].startswith("too many failed sign-ins for this email; try again in ")
    assert list(error["fields"]) == ["email"]
    assert (
        1 <= int(refused.headers["Retry-After"]) <= 61
    )  # the window, plus the half second allowed for Redis rounding
    assert f"try again in {refused.headers['Retry-After']} s" in error["message"]

    # Locked means locked: the right password is refused too, without being checked.
    right = login(app, OWNER, PASSWORD)
    assert right.status_code == 429 and right.json["error"]["code"] == "too_many_requests"
    assert hasher.verified == 3


def test_successful_logins_do_not_count_toward_the_limits(make_app, hasher):
    app = make_app(
        TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="2 per minute", TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS="2 per minute"
    )
    for _ in range(5):
        ok = login(app, OWNER, PASSWORD)
        assert ok.status_code == 200 and ok.json["token_type"] == "Bearer"
    # Both failures the limits allow are still there after five successes.
    assert [login(app, OWNER, "wrong password").status_code for _ in range(3)] == [401, 401, 429]


def test_the_address_limit_stops_a_spray_over_many_emails_and_only_that_address(make_app, hasher):
    app = make_app(
        TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="100 per minute", TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS="3 per minute"
    )
    sprayer = "198.51.100.7"
    statuses = [login(app, f"guess{i}@example.com", "whatever1", sprayer).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    refused = login(app, OWNER, PASSWORD, sprayer)
    assert refused.status_code == 429
    assert refused.json["error"]["message"].startswith("too many failed sign-ins from your address")
    assert "fields" not in refused.json["error"]  # about the address, not a field of the body
    assert hasher.verified == 3

    elsewhere = login(app, OWNER, PASSWORD, "203.0.113.9")
    assert elsewhere.status_code == 200 and elsewhere.json["access_token"]


def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(make_app, hasher):
    """With nothing in front of gunicorn a client must not pick its own address with a header."""
    direct = make_app(TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS="2 per minute")
    spoofed = [
        login(direct, f"g{i}@example.com", "whatever1", **{"X-Forwarded-For": f"192.0.2.{i}"}).status_code
        for i in range(3)
    ]
    assert spoofed == [401, 401, 429]

    proxied = make_app(TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS="2 per minute", TRADEGUARD_TRUSTED_PROXIES="1")
    behind = [
        login(
            proxied, f"g{i}@example.com", "whatever1", **{"X-Forwarded-For": f"192.0.2.{i % 2}"}
        ).status_code
        for i in range(5)
    ]
    assert behind == [401, 401, 401, 401, 429]  # two clients behind the proxy, two failures each
    audited = lock_outs(proxied)
    assert [row.meta["address"] for row in audited] == ["192.0.2.0"]


def test_a_lock_out_is_audited_once_per_window_without_the_password(make_app, hasher):
    app = make_app(TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="2 per minute")
    statuses = [login(app, OWNER, "secret guess 42").status_code for _ in range(7)]
    assert statuses == [401, 401, 429, 429, 429, 429, 429]

    [row] = lock_outs(app)
    with app.app_context():
        owner_id = db.session.scalar(sa.select(User.id).where(User.email == OWNER))
    assert (row.action, row.actor_type, row.target_type, row.target_id) == (
        "auth.locked_out",
        "system",
        "user",
        owner_id,
    )
    assert row.meta["throttle"] == "login-email" and row.meta["email"] == OWNER
    assert row.meta["address"] == "127.0.0.1" and row.meta["limit"] == "2 per 1 minute"
    assert (
        1 <= row.meta["retry_after_seconds"] <= 61
    )  # the window, plus the half second allowed for Redis rounding
    assert "secret guess 42" not in str(row.meta)


def test_registrations_are_throttled_per_address_and_only_created_users_count(make_app, hasher):
    app = make_app(TRADEGUARD_REGISTER_LIMIT_PER_ADDRESS="2 per minute")
    client = app.test_client()
    hashed_before = hasher.hashed  # the owner make_app registers

    def register(email: str, password: str = "long enough") -> Any:
        return client.post(REGISTER, json={"email": email, "password": password})

    assert register("not-an-email").status_code == 422  # refused before anything: does not count
    assert [register(f"new{i}@example.com").status_code for i in range(2)] == [201, 201]
    refused = register("third@example.com")
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "too_many_requests"
    assert refused.json["error"]["message"].startswith("too many registrations from your address")
    assert int(refused.headers["Retry-After"]) >= 1
    assert hasher.hashed - hashed_before == 2
    with app.app_context():
        assert db.session.scalar(sa.select(User.id).where(User.email == "third@example.com")) is None
    [row] = lock_outs(app)
    assert row.action == "auth.registration_locked_out" and row.meta["email"] == "third@example.com"


def test_with_redis_unreachable_logins_fail_open_onto_memory_counters_not_500(make_app, hasher):
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="2 per minute")
    ok = login(app, OWNER, PASSWORD)
    assert ok.status_code == 200 and ok.json["access_token"]
    assert [login(app, OWNER, "wrong password").status_code for _ in range(3)] == [401, 401, 429]
    assert len(lock_outs(app)) == 1


def test_unreadable_login_bodies_keep_their_own_4xx(make_app, hasher):
    app = make_app(TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="1 per minute")
    client = app.test_client()
    too_big = client.post(LOGIN, data=b"x" * (70 * 1024), content_type="application/json")
    assert too_big.status_code == 413 and too_big.json["error"]["code"] == "payload_too_large"
    nested = client.post(LOGIN, data=b"[" * 50_000, content_type="application/json")
    assert nested.status_code == 400 and "body" in nested.json["error"]["fields"]
    # ...and the limiter still runs on its real storage, not on a fallback a bad body tripped.
    assert app.extensions["tradeguard.limiter"]._storage_dead is False
    assert [login(app, OWNER, "wrong password").status_code for _ in range(2)] == [401, 429]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"email": "  Ann@Example.COM "}, "ann@example.com"),
        ({"email": ""}, ""),
        ({"email": 5}, ""),
        ({"email": "a" * 255}, ""),
        (["ann@example.com"], ""),
        (None, ""),
    ],
)
def test_email_key_is_the_stored_form_of_the_email_or_empty(body, key):
    assert email_key(body) == key


def test_retry_after_is_whole_seconds_rounded_up_past_redis_ttl_rounding_and_at_least_one():
    assert retry_after_seconds(100.2, 100.0) == 1
    assert retry_after_seconds(130.0, 100.0) == 31  # a TTL of "30" can be 30.49 s
    assert retry_after_seconds(130.4, 100.0) == 31
    assert retry_after_seconds(130.6, 100.0) == 32
    assert retry_after_seconds(99.0, 100.0) == 1


@pytest.mark.parametrize("raw", ["ten per minute", "5 per fortnight", "0 per minute"])
def test_malformed_limits_are_refused_with_the_variable_named(tmp_path, raw):
    with pytest.raises(ConfigurationError, match="TRADEGUARD_LOGIN_LIMIT_PER_EMAIL"):
        load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path), "TRADEGUARD_LOGIN_LIMIT_PER_EMAIL": raw})


def test_default_limits(tmp_path):
    settings = load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)})
    assert (settings.login_limit_per_email, settings.login_limit_per_address) == (
        "10 per 15 minutes",
        "50 per 15 minutes",
    )
    assert settings.register_limit_per_address == "20 per hour" and settings.trusted_proxies == 0


def test_a_process_refuses_the_rest_of_a_lock_out_it_has_seen_without_asking_the_counters(make_app, hasher):
    app = make_app(TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS="2 per minute")
    flooder, bystander = "203.0.113.9", "203.0.113.10"
    assert [login(app, f"g{i}@example.com", "x", flooder).status_code for i in range(3)] == [401, 401, 429]
    first = login(app, "g9@example.com", "x", flooder)
    storage = app.extensions["tradeguard.limiter"].storage

    def no_counters(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a known lock-out went to the counters")

    for name in ("incr", "get", "get_expiry", "get_moving_window", "clear"):
        setattr(storage, name, no_counters)
    again = login(app, "g10@example.com", "x", flooder)
    assert again.status_code == 429 and again.json["error"].keys() == first.json["error"].keys()
    assert again.json["error"]["message"].startswith(
        "too many failed sign-ins from your address; try again in "
    )
    assert 1 <= int(again.headers["Retry-After"]) <= int(first.headers["Retry-After"])
    assert hasher.verified == 2
    # Another address is not locked: it goes to the counters as usual (which now fail: fail open).
    assert login(app, OWNER, PASSWORD, bystander).status_code == 200


def test_known_lock_outs_end_with_their_window_and_stay_bounded():
    from web.throttle import KnownLockOuts

    known = KnownLockOuts(max_entries=3)
    known.remember("login-address", "a", until=100.0)
    assert known.seconds_left("login-address", "a", now=40.0) == 60.0
    assert known.seconds_left("login-address", "a", now=100.0) == 0.0  # the window is over
    assert known.seconds_left("login-email", "a", now=40.0) == 0.0  # per scope
    known.remember("login-address", "b", until=10.0)
    known.remember("login-address", "c", until=1e12)
    known.remember("login-address", "d", until=1e12)  # full: the ended windows (a, b) make room
    assert [known.seconds_left("login-address", k, now=50.0) > 0 for k in "abcd"] == [
        False,
        False,
        True,
        True,
    ]


def test_probing_which_emails_have_accounts_counts_toward_the_registration_limit(make_app, hasher):
    app = make_app(TRADEGUARD_REGISTER_LIMIT_PER_ADDRESS="2 per minute")
    client = app.test_client()
    probe = {"email": OWNER, "password": "long enough"}
    assert [client.post(REGISTER, json=probe).status_code for _ in range(3)] == [409, 409, 429]


def test_ipv6_clients_are_counted_per_64_network(make_app, hasher):
    app = make_app(
        TRADEGUARD_LOGIN_LIMIT_PER_ADDRESS="2 per minute", TRADEGUARD_LOGIN_LIMIT_PER_EMAIL="99 per minute"
    )
    hopping = [f"2001:db8:1:2::{i:x}" for i in range(1, 4)]  # one subscriber's /64, a new address each time
    statuses = [
        login(app, f"g{i}@example.com", "x", address).status_code for i, address in enumerate(hopping)
    ]
    assert statuses == [401, 401, 429]
    assert login(app, OWNER, PASSWORD, "2001:db8:1:3::1").status_code == 200  # the next /64 is another client
