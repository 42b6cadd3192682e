"""Users, tokens, accounts (credentials never returned) and strategy clients (secret shown once)."""

import os
import time

import jwt
import pytest
import sqlalchemy as sa

from shared.core import extensions
from shared.models import Account, AuditLog, StrategyClient, User


def audit_actions(db_session) -> list[str]:
    return list(db_session.scalars(sa.select(AuditLog.action).order_by(AuditLog.id)))


# --- registration and login ----------------------------------------------------------------------


def test_register_then_login_returns_a_bearer_token(api, db_session):
    response = api.http.post(
        "/api/v1/auth/register", json={"email": "Ann@Example.com ", "password": "long enough"}
    )
    assert response.status_code == 201
    assert response.json["email"] == "ann@example.com" and response.json["role"] == "user"
    assert "password" not in response.json
    stored = db_session.get(User, response.json["id"])
    assert stored.password_hash.startswith("$argon2id$") and "long enough" not in stored.password_hash

    login = api.http.post("/api/v1/auth/login", json={"email": "ann@example.com", "password": "long enough"})
    assert login.status_code == 200 and login.json["token_type"] == "Bearer"
    accounts = api.http.get(
        "/api/v1/accounts", headers={"Authorization": f"Bearer {login.json['access_token']}"}
    )
    assert accounts.status_code == 200 and accounts.json == []
    assert audit_actions(db_session) == ["user.registered"]


def test_registering_an_email_twice_is_409(api):
    api.register(email="bob@example.com")
    again = api.http.post(
        "/api/v1/auth/register", json={"email": "BOB@example.com", "password": "another one"}
    )
    assert again.status_code == 409 and again.json["error"]["fields"] == {"email": ["already registered"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": "long enough"}, "email"),
        ({"email": "a@example.com", "password": "short"}, "password"),
        ({"password": "long enough"}, "email"),
        ({"email": "a@example.com", "password": "long enough", "role": "admin"}, "role"),
    ],
)
def test_bad_registrations_are_422_naming_the_field(api, db_session, body, field):
    response = api.http.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422 and field in response.json["error"]["fields"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_wrong_password_and_unknown_email_get_the_same_401(api):
    user = api.register()
    wrong = api.http.post("/api/v1/auth/login", json={"email": user["email"], "password": "wrong password"})
    unknown = api.http.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever1"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json


def test_bad_expired_and_foreign_tokens_are_401(api, app):
    user = api.register()
    settings = extensions.settings(app)
    expired = jwt.encode(
        {"sub": str(user["id"]), "exp": int(time.time()) - 1}, settings.jwt_secret, algorithm="HS256"
    )
    forged = jwt.encode(
        {"sub": str(user["id"]), "exp": int(time.time()) + 60},
        "not-our-secret-but-just-as-long-as-ours-is",
        algorithm="HS256",
    )
    for header in ("Bearer nonsense", f"Bearer {expired}", f"Bearer {forged}", "Basic abc", ""):
        response = api.http.get("/api/v1/accounts", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.json["error"]["code"] == "unauthorized"


def test_create_admin_command_makes_an_admin_who_can_read_the_audit_log(app, api, db_session):
    result = app.test_cli_runner().invoke(
        args=["create-admin", "ops@example.com", "--password", "operator pass"]
    )
    assert result.exit_code == 0, result.output
    admin = db_session.scalars(sa.select(User).where(User.email == "ops@example.com")).one()
    assert admin.role.value == "admin"

    user = api.user()
    assert api.http.get("/api/v1/audit", headers=user["headers"]).status_code == 403
    headers = api.login("ops@example.com", "operator pass")
    audit = api.http.get("/api/v1/audit?action=user.registered", headers=headers)
    assert audit.status_code == 200
    assert {entry["target_id"] for entry in audit.json["items"]} == {admin.id, user["id"]}


# --- accounts ------------------------------------------------------------------------------------


def declared_port() -> int:
    """A port the test run declared as a terminal (tests/conftest.py)."""
    return int(os.environ["TRADEGUARD_TEST_TERMINAL_PORTS"].split(",")[0])


def test_an_account_is_created_with_its_password_encrypted_and_never_returned(api, app, db_session):
    user = api.user()
    port = declared_port()
    response = api.http.post(
        "/api/v1/accounts",
        json={
            "name": "Main",
            # Spelt differently from the declared mt5linux://127.0.0.1:<port>: stored canonically.
            "terminal_url": f"MT5LINUX://127.0.0.1:{port}/",
            "login": 5001234,
            "password": "broker-secret",
            "server": "Broker-Live",
            "currency": "GBP",
            "verify": False,  # no terminal runs there
        },
        headers=user["headers"],
    )
    assert response.status_code == 201
    body = response.json
    assert {k: body[k] for k in ("name", "terminal_url", "login", "server", "currency")} == {
        "name": "Main",
        "terminal_url": f"mt5linux://127.0.0.1:{port}",
        "login": 5001234,
        "server": "Broker-Live",
        "currency": "GBP",
    }
    assert "password" not in body and "credentials_encrypted" not in body
    stored = db_session.get(Account, body["id"])
    assert b"broker-secret" not in stored.credentials_encrypted
    assert extensions.secret_box(app).decrypt(stored.credentials_encrypted) == "broker-secret"

    listing = api.http.get("/api/v1/accounts", headers=user["headers"])
    assert [a["id"] for a in listing.json] == [body["id"]]
    assert "broker-secret" not in listing.get_data(as_text=True)
    audit = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "account.created")).one()
    assert "broker-secret" not in str(audit.meta)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"terminal_url": "http://broker.example"}, "terminal_url"),
        ({"terminal_url": "mt5linux://nohostport"}, "terminal_url"),
        ({"terminal_url": "sim://日本語テキスト:19012"}, "terminal_url"),
        ({"login": "1001"}, "login"),
        ({"login": 0}, "login"),
        ({"login": 2**64}, "login"),
        ({"currency": "usd"}, "currency"),
        ({"name": ""}, "name"),
        ({"password": ""}, "password"),
        ({"verify": "false"}, "verify"),  # true or false, not a word that reads as one
        ({"verify": 0}, "verify"),
    ],
)
def test_bad_accounts_are_422_naming_the_field(api, db_session, change, field):
    user = api.user()
    body = {"name": "x", "terminal_url": "sim://", "login": 1, "password": "p", "server": "s", **change}
    response = api.http.post("/api/v1/accounts", json=body, headers=user["headers"])
    assert response.status_code == 422 and field in response.json["error"]["fields"]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Account)) == 0


@pytest.mark.parametrize(
    "url",
    [
        "mt5linux://127.0.0.1:19013",  # the reproduction: a terminal of the user's choosing
        "sim://127.0.0.1:19013",
        "mt5linux://10.0.0.5:18812",
        "mt5://",  # not declared on this deployment either
    ],
)
def test_an_account_may_only_use_a_terminal_the_operator_declared(api, db_session, url):
    user = api.user()
    body = {"name": "evil", "terminal_url": url, "login": 666, "password": "x", "server": "x"}
    response = api.http.post("/api/v1/accounts", json=body, headers=user["headers"])
    assert response.status_code == 422
    problems = response.json["error"]["fields"]["terminal_url"]
    assert "not one of the terminals the operator declared (TRADEGUARD_TERMINALS)" in problems[0]
    assert set(response.json["error"]["fields"]) == {"terminal_url"}
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Account)) == 0


def test_account_names_are_unique_per_owner(api):
    user = api.user()
    api.account(user, name="dup")
    again = api.http.post(
        "/api/v1/accounts",
        json={"name": "dup", "terminal_url": "sim://", "login": 2, "password": "p", "server": "s"},
        headers=user["headers"],
    )
    assert again.status_code == 409
    api.account(api.user(), name="dup")  # another owner may use the same name


def test_another_users_account_is_404(api):
    owner, stranger = api.user(), api.user()
    account = api.account(owner)
    assert api.http.get(f"/api/v1/accounts/{account['id']}", headers=stranger["headers"]).status_code == 404
    assert (
        api.http.get(f"/api/v1/accounts/{account['id']}", headers=owner["headers"]).json["id"]
        == account["id"]
    )
    assert api.http.get("/api/v1/accounts", headers=stranger["headers"]).json == []
    assert api.http.get("/api/v1/accounts/99999999999", headers=owner["headers"]).status_code == 404


# --- strategy clients ----------------------------------------------------------------------------


def test_a_client_secret_is_shown_once_and_stored_encrypted(api, app, db_session):
    user = api.user()
    account = api.account(user)
    created = api.strategy_client(user, account["id"])
    assert len(created["secret"]) >= 40 and created["account_id"] == account["id"]
    stored = db_session.get(StrategyClient, created["id"])
    assert created["secret"].encode() not in stored.secret_encrypted
    assert extensions.secret_box(app).decrypt(stored.secret_encrypted) == created["secret"]

    listing = api.http.get("/api/v1/clients", headers=user["headers"])
    assert [c["id"] for c in listing.json] == [created["id"]]
    assert "secret" not in listing.json[0] and created["secret"] not in listing.get_data(as_text=True)


def test_a_client_cannot_be_made_for_someone_elses_account(api, db_session):
    owner, stranger = api.user(), api.user()
    account = api.account(owner)
    response = api.http.post(
        "/api/v1/clients", json={"name": "x", "account_id": account["id"]}, headers=stranger["headers"]
    )
    assert response.status_code == 404
    assert db_session.scalar(sa.select(sa.func.count()).select_from(StrategyClient)) == 0


def test_revoking_is_idempotent_audited_once_and_owner_only(api, db_session):
    world = api.setup()
    client_id = world["client"]["id"]
    stranger = api.user()
    assert api.http.delete(f"/api/v1/clients/{client_id}", headers=stranger["headers"]).status_code == 404
    assert (
        api.http.delete(f"/api/v1/clients/{client_id}", headers=world["user"]["headers"]).status_code == 204
    )
    assert (
        api.http.delete(f"/api/v1/clients/{client_id}", headers=world["user"]["headers"]).status_code == 204
    )
    listed = api.http.get("/api/v1/clients", headers=world["user"]["headers"]).json[0]
    assert listed["revoked"] is True and listed["revoked_at"] is not None
    assert audit_actions(db_session).count("client.revoked") == 1
