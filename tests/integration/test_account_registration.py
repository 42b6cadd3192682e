"""POST /api/v1/accounts: one MT5 account (login and server) is registered once, and its terminal is
logged in to before the account is stored (unless `verify: false`).

A second copy of one MT5 account would report TradeGuard's own trades, made through the first copy, as
`outside` positions; an account whose terminal cannot be reached (or refuses the login) would only show
it later, as trades that sit `pending`.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import sqlalchemy as sa

from shared.core import extensions
from shared.core.db import db, utcnow
from shared.models import Account, AuditLog
from shared.mt5.sim import broker as sim_broker
from shared.mt5.sim.broker import SimBroker
from tests.conftest import Api
from tests.processes import wait_for


def account_body(**overrides):
    return {
        "name": "main",
        "terminal_url": "sim://",  # the simulated terminal in this process: any login opens a demo account
        "login": 7001,
        "password": "broker-pass",
        "server": "TradeGuard-Sim",
        **overrides,
    }


def accounts_with_login(session, login: int) -> list[Account]:
    return list(session.scalars(sa.select(Account).where(Account.login == login).order_by(Account.id)))


def created_audits(session) -> int:
    return session.scalar(
        sa.select(sa.func.count()).select_from(AuditLog).where(AuditLog.action == "account.created")
    )


# --- item 2: one MT5 account, registered once ------------------------------------------------------------


def test_the_same_mt5_account_cannot_be_added_twice_and_the_409_names_the_first(api, db_session):
    user = api.user()
    first = api.http.post("/api/v1/accounts", json=account_body(), headers=user["headers"])
    assert first.status_code == 201, first.json

    again = api.http.post("/api/v1/accounts", json=account_body(name="copy"), headers=user["headers"])

    assert again.status_code == 409
    error = again.json["error"]
    assert error["code"] == "conflict"
    assert f"account {first.json['id']} (main)" in error["message"]
    assert "login 7001 on server TradeGuard-Sim" in error["message"]
    assert set(error["fields"]) == {"login", "server"}
    assert [a.id for a in accounts_with_login(db_session, 7001)] == [first.json["id"]]
    assert created_audits(db_session) == 1


def test_another_user_cannot_add_an_mt5_account_someone_registered_and_learns_nothing_of_theirs(
    api, db_session
):
    owner, stranger = api.user(), api.user()
    first = api.http.post("/api/v1/accounts", json=account_body(name="secret name"), headers=owner["headers"])
    assert first.status_code == 201

    again = api.http.post("/api/v1/accounts", json=account_body(), headers=stranger["headers"])

    assert again.status_code == 409
    error = again.json["error"]
    assert "already registered by another user" in error["message"]
    # Other users' rows are never shown: neither the account's id nor its name.
    assert "secret name" not in again.get_data(as_text=True)
    assert f"account {first.json['id']}" not in error["message"]
    assert set(error["fields"]) == {"login", "server"}
    assert len(accounts_with_login(db_session, 7001)) == 1


def test_the_same_login_on_another_server_is_another_mt5_account(api, db_session):
    user = api.user()
    assert api.http.post("/api/v1/accounts", json=account_body(), headers=user["headers"]).status_code == 201
    other = account_body(name="live", server="Broker-Live")
    assert api.http.post("/api/v1/accounts", json=other, headers=user["headers"]).status_code == 201
    assert len(accounts_with_login(db_session, 7001)) == 2


def test_two_requests_for_one_mt5_account_cannot_both_succeed(app, committed_db):
    """The database decides: the second request's check runs while the first one's row is written but
    not committed (so the check cannot see it); its insert then waits on the unique index, and is
    refused once the first commits: 409, not 500, and nothing of it is stored."""
    api = Api(app.test_client())
    first, second = api.user(), api.user()
    answers: dict[str, object] = {}

    def post_second() -> None:
        answers["second"] = api.http.post(
            "/api/v1/accounts", json=account_body(login=8123), headers=second["headers"]
        )

    with db.engine.connect() as other:
        pending = other.begin()
        other.execute(
            sa.insert(Account).values(
                owner_id=first["id"],
                name="first",
                terminal_url="sim://",
                login=8123,
                server="TradeGuard-Sim",
                credentials_encrypted=extensions.secret_box(app).encrypt("x"),
                currency="USD",
                created_at=utcnow(),
            )
        )
        request = threading.Thread(target=post_second)
        request.start()

        def blocked_on_the_first() -> bool:
            with db.engine.connect() as probe:
                waiting = probe.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            return bool(waiting) or not request.is_alive()

        assert wait_for(blocked_on_the_first, timeout=15)
        pending.commit()
        request.join(timeout=15)
    response = answers["second"]
    assert response.status_code == 409, response.json
    assert "already registered by another user" in response.json["error"]["message"]
    committed_db.rollback()
    (only,) = accounts_with_login(committed_db, 8123)
    assert only.name == "first" and only.owner_id == first["id"]
    assert created_audits(committed_db) == 0  # the first was inserted by hand; the second left nothing


# --- item 6: the terminal is logged in to before the account is stored -----------------------------------


def test_an_account_on_an_unreachable_terminal_is_422_naming_terminal_url_and_not_stored(api, db_session):
    user = api.user()
    # Declared (tests/conftest.py), but nothing listens on port 1.
    body = account_body(terminal_url="sim://127.0.0.1:1")

    response = api.http.post("/api/v1/accounts", json=body, headers=user["headers"])

    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert set(error["fields"]) == {"terminal_url"}
    (problem,) = error["fields"]["terminal_url"]
    assert "cannot be reached" in problem and "verify" in problem
    assert accounts_with_login(db_session, 7001) == [] and created_audits(db_session) == 0


def test_verify_false_stores_an_account_without_asking_its_terminal(api, db_session):
    user = api.user()
    body = account_body(terminal_url="sim://127.0.0.1:1", verify=False)

    response = api.http.post("/api/v1/accounts", json=body, headers=user["headers"])

    assert response.status_code == 201, response.json
    assert response.json["terminal_url"] == "sim://127.0.0.1:1" and "verify" not in response.json
    (account,) = accounts_with_login(db_session, 7001)
    meta = db_session.scalar(sa.select(AuditLog.meta).where(AuditLog.action == "account.created"))
    assert meta["verified"] is False and account.id == response.json["id"]


@pytest.fixture
def broker_with_passwords(monkeypatch):
    """The simulated terminal of this process (`sim://`) with one account whose password is checked,
    instead of a demo broker that opens any."""
    broker = SimBroker(accounts={2001: {"password": "right", "server": "Sim-Live"}}, server="Sim-Live")
    monkeypatch.setattr(sim_broker, "_default_broker", broker)
    return broker


def test_credentials_the_terminal_refuses_are_422_naming_login_password_and_server(
    api, db_session, broker_with_passwords
):
    user = api.user()
    body = account_body(login=2001, password="wrong", server="Sim-Live")

    response = api.http.post("/api/v1/accounts", json=body, headers=user["headers"])

    assert response.status_code == 422, response.json
    fields = response.json["error"]["fields"]
    assert set(fields) == {"login", "password", "server"}
    assert all("refused the login" in problems[0] for problems in fields.values())
    assert accounts_with_login(db_session, 2001) == []

    right = api.http.post("/api/v1/accounts", json={**body, "password": "right"}, headers=user["headers"])
    assert right.status_code == 201, right.json
    assert db_session.scalar(sa.select(AuditLog.meta).where(AuditLog.action == "account.created"))["verified"]


def test_a_terminal_that_does_not_answer_in_time_is_422_naming_terminal_url(
    app, api, db_session, broker_with_passwords, monkeypatch
):
    settings = extensions.settings(app)
    monkeypatch.setitem(
        app.extensions,
        extensions.SETTINGS,
        dataclasses.replace(settings, account_check_timeout_seconds=0.2),
    )
    broker_with_passwords.set_latency(2000)  # every call takes 2 s
    user = api.user()

    response = api.http.post(
        "/api/v1/accounts",
        json=account_body(login=2001, password="right", server="Sim-Live"),
        headers=user["headers"],
    )

    assert response.status_code == 422, response.json
    (problem,) = response.json["error"]["fields"]["terminal_url"]
    assert "did not answer within 0.2 s" in problem
    assert accounts_with_login(db_session, 2001) == []
