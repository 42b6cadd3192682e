"""Sign-in throttling on the real Redis: failed logins lock an email for every web process until the
window passes, 429 with Retry-After and the JSON envelope, the lock-out audited once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from shared.core.config import load_settings
from shared.core.db import db
from shared.models import AuditLog
from tests.conftest import REDIS_URL
from web import create_app


@pytest.fixture
def throttled_app(committed_db: Any) -> Iterator[Any]:
    """Apps with the test's limits, on the test database and Redis: each one stands for a web process.
    Their commits are real (committed_db empties the tables afterwards)."""
    made: list[Any] = []

    def make(**limits: Any) -> Any:
        app = create_app(replace(load_settings(), **limits), TESTING=True)
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


def login(app: Any, email: str, password: str, address: str) -> Any:
    """A login from `address`: each test uses its own, so that no other test's failures from
    127.0.0.1 count against it, and its failures count against no other test."""
    return app.test_client().post(
        "/api/v1/auth/login",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def register(app: Any, email: str, password: str) -> None:
    response = app.test_client().post("/api/v1/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.json


def lock_outs_of(session: Any, email: str) -> list[AuditLog]:
    rows = session.scalars(sa.select(AuditLog).where(AuditLog.action == "auth.locked_out")).all()
    return [row for row in rows if row.meta.get("email") == email]


def test_failed_logins_lock_the_email_until_the_window_passes(throttled_app, committed_db):
    failing_address = "192.0.2.10"
    app = throttled_app(login_limit_per_email="3 per 4 seconds")
    tag = uuid.uuid4().hex[:8]
    victim, other = f"victim-{tag}@example.com", f"other-{tag}@example.com"
    register(app, victim, "victim's password")
    register(app, other, "other's password")

    for _ in range(3):
        wrong = login(app, victim, "a wrong guess", failing_address)
        assert wrong.status_code == 401
        assert wrong.json == {"error": {"code": "unauthorized", "message": "wrong email or password"}}
    refused = login(app, victim, "a wrong guess", failing_address)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 5
    message = f"too many failed sign-ins for this email; try again in {retry_after} s"
    assert refused.json == {
        "error": {"code": "too_many_requests", "message": message, "fields": {"email": [message]}}
    }

    # The right password is refused as well while the email is locked...
    right = login(app, victim, "victim's password", failing_address)
    assert right.status_code == 429 and right.json["error"]["code"] == "too_many_requests"
    # ...while another email signs in, from another address and from the same one.
    for address in ("203.0.113.20", failing_address):
        other_login = login(app, other, "other's password", address)
        assert other_login.status_code == 200 and other_login.json["token_type"] == "Bearer"

    # The counters are in Redis (shared by every web process), not in this process.
    assert redis.Redis.from_url(REDIS_URL).keys(f"*{victim}*")
    [row] = lock_outs_of(committed_db, victim)
    assert row.target_type == "user" and row.meta["address"] == failing_address
    assert row.meta["limit"] == "3 per 4 second" and "password" not in str(row.meta)

    time.sleep(retry_after)  # the header is honest: once it has passed, the window is over
    again = login(app, victim, "victim's password", failing_address)
    assert again.status_code == 200 and again.json["access_token"]


def test_web_processes_share_the_lock_out_and_audit_it_once(throttled_app, committed_db):
    first, second = (throttled_app(login_limit_per_email="2 per minute") for _ in range(2))
    email = f"shared-{uuid.uuid4().hex[:8]}@example.com"
    register(first, email, "the right one")

    assert [login(first, email, "guess", "192.0.2.11").status_code for _ in range(2)] == [401, 401]
    # Another process refuses at once: it reads the same counters.
    statuses = [
        login(app, email, guess, "192.0.2.11").status_code
        for app in (second, first)
        for guess in ("guess", "the right one")
    ]
    assert statuses == [429, 429, 429, 429]
    assert len(lock_outs_of(committed_db, email)) == 1


def test_the_pages_sign_in_form_counts_against_the_same_limits(throttled_app, committed_db):
    """Guessing through the pages' form is no way round the API's limits: the failures of both count
    against one email."""
    import re

    app = throttled_app(login_limit_per_email="3 per 30 seconds")
    tag = uuid.uuid4().hex[:8]
    victim = f"page-victim-{tag}@example.com"
    register(app, victim, "victim's password")
    browser = app.test_client()
    environ = {"REMOTE_ADDR": "192.0.2.77"}

    def page_login(password: str) -> Any:
        form = browser.get("/login", environ_base=environ).get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', form).group(1)
        return browser.post(
            "/login",
            data={"email": victim.upper(), "password": password, "csrf_token": token},
            environ_base=environ,
        )

    assert [page_login("a wrong guess").status_code for _ in range(2)] == [401, 401]
    assert login(app, victim, "a wrong guess", "192.0.2.78").status_code == 401  # the third, by the API
    locked = page_login("victim's password")  # locked, even with the right password
    assert (locked.status_code, locked.mimetype) == (429, "text/html")  # a page, as the form is
    assert int(locked.headers["Retry-After"]) >= 1 and "Too many attempts" in locked.get_data(as_text=True)
    assert login(app, victim, "victim's password", "192.0.2.79").status_code == 429
    assert len(lock_outs_of(committed_db, victim)) == 1
