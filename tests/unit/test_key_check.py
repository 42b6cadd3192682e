"""Keys that can no longer be lost without anyone noticing (issue 10, item 3), on the embedded setup.

A process refuses to start when its keys cannot read the key check in the database; keys rotate
(several keys, the first encrypts, all decrypt) with `flask rotate-keys`; a server database refuses
generated secrets altogether.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.fernet import Fernet
from flask_migrate import upgrade

from shared.core import extensions
from shared.core.config import ConfigurationError, load_settings
from shared.core.crypto import SecretBox, SecretUnreadable
from shared.core.db import db
from shared.identity import accounts, clients, key_check, users
from shared.identity.key_check import KeysDoNotMatch
from shared.models import Account, KeyCheck, StrategyClient, User
from web import create_app

LOGIN = "/api/v1/auth/login"


def new_key() -> str:
    return Fernet.generate_key().decode()


def start(instance: Path, **secrets: str):
    """A process of the embedded setup in `instance`, with TRADEGUARD_<NAME> secrets where given (the
    rest from instance/secrets.json, generated when missing)."""
    env = {"TRADEGUARD_INSTANCE_DIR": str(instance)}
    env.update({f"TRADEGUARD_{name.upper()}": value for name, value in secrets.items()})
    return create_app(load_settings(env))


def start_while_the_database_is_unreachable(instance: Path, monkeypatch: pytest.MonkeyPatch, **secrets: str):
    """`start`, with the database unreachable during the start-up (and back right after)."""
    import sqlalchemy

    def unreachable(*args: object, **kwargs: object) -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    with monkeypatch.context() as patched:
        patched.setattr(sqlalchemy, "inspect", unreachable)
        return start(instance, **secrets)


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """An embedded instance whose database is migrated and holds an account and a strategy client, as
    a first `./bin/run` leaves it."""
    app = start(tmp_path)
    with app.app_context():
        upgrade()
        db.session.remove()
    app = start(tmp_path)  # the first process on the migrated database writes the check
    with app.app_context():
        owner = users.register(db.session, "owner@example.com", "a long password")
        account = accounts.create_account(
            db.session,
            extensions.secret_box(app),
            owner,
            declared_terminals=extensions.declared_terminals(app),
            name="main",
            terminal_url="sim://",
            login=1001,
            password="broker password",
            server="TradeGuard-Sim",
            verify=False,  # the keys are under test here, not the terminal
        )
        clients.create_client(db.session, extensions.secret_box(app), owner, name="s", account_id=account.id)
        db.session.commit()
        assert {row.name for row in db.session.scalars(db.select(KeyCheck))} == {"encryption", "jwt"}
        db.session.remove()
    return tmp_path


def test_the_same_keys_start_again(instance: Path) -> None:
    app = start(instance)
    with app.app_context():
        stored = extensions.secret_box(app).decrypt(
            db.session.scalars(db.select(Account)).one().credentials_encrypted
        )
        assert stored == "broker password"


def test_losing_secrets_json_stops_the_next_process_naming_the_problem(instance: Path) -> None:
    (instance / "secrets.json").unlink()  # lost: the next start would generate new keys
    with pytest.raises(KeysDoNotMatch) as refused:
        start(instance)
    message = str(refused.value)
    assert "TRADEGUARD_ENCRYPTION_KEY cannot decrypt the key check" in message
    assert "restore instance/secrets.json" in message


def test_a_process_with_another_jwt_secret_is_refused(instance: Path) -> None:
    with pytest.raises(KeysDoNotMatch, match="TRADEGUARD_JWT_SECRET does not match"):
        start(instance, jwt_secret="another machine's secret")


def test_a_database_from_before_the_check_accepts_only_the_keys_its_secrets_were_written_with(
    instance: Path,
) -> None:
    app = start(instance)
    with app.app_context():
        db.session.execute(db.delete(KeyCheck))  # as a database migrated from before the key check
        db.session.commit()
        db.session.remove()
    with pytest.raises(KeysDoNotMatch, match="cannot decrypt the broker passwords and client secrets"):
        start(instance, encryption_key=new_key())
    with start(instance).app_context():  # the right keys: the check is written again
        assert db.session.scalar(db.select(db.func.count()).select_from(KeyCheck)) == 2


def test_keys_rotate_without_losing_a_secret(instance: Path) -> None:
    import json

    old = json.loads((instance / "secrets.json").read_text())
    new_encryption, new_jwt = new_key(), "the-new-signing-secret-long-enough-for-hs256"
    both = {
        "encryption_key": f"{new_encryption},{old['ENCRYPTION_KEY']}",
        "jwt_secret": f"{new_jwt},{old['JWT_SECRET']}",
        "secret_key": old["SECRET_KEY"],
    }
    app = start(instance, **both)  # step 1: the new keys first, the old ones kept: starts
    with app.app_context():
        report = key_check.rotate(
            db.session,
            extensions.secret_box(app),
            extensions.settings(app).jwt_secrets,
        )
        assert (report.accounts, report.clients) == (1, 1)
        db.session.remove()

    # Step 3: the old keys removed. Every secret reads with the new key alone...
    only_new = {"encryption_key": new_encryption, "jwt_secret": new_jwt, "secret_key": old["SECRET_KEY"]}
    app = start(instance, **only_new)
    with app.app_context():
        box = SecretBox([new_encryption])
        assert (
            box.decrypt(db.session.scalars(db.select(Account)).one().credentials_encrypted)
            == "broker password"
        )
        assert len(box.decrypt(db.session.scalars(db.select(StrategyClient)).one().secret_encrypted)) > 20
    # ...and a machine left on the old keys is refused, instead of writing what nobody else can read.
    with pytest.raises(KeysDoNotMatch):
        start(instance)


def test_rotation_changes_nothing_when_a_secret_is_unreadable(instance: Path) -> None:
    app = start(instance)
    with app.app_context():
        client = db.session.scalars(db.select(StrategyClient)).one()
        client.secret_encrypted = SecretBox([new_key()]).encrypt("from a key nobody has")
        db.session.commit()
        before = bytes(db.session.scalars(db.select(Account)).one().credentials_encrypted)
        with pytest.raises(SecretUnreadable, match=f"strategy client {client.id}"):
            key_check.rotate(
                db.session,
                extensions.secret_box(app),
                extensions.settings(app).jwt_secrets,
            )
        assert bytes(db.session.scalars(db.select(Account)).one().credentials_encrypted) == before


def test_tokens_signed_before_a_jwt_rotation_stay_valid_until_they_expire(instance: Path) -> None:
    import json

    old = json.loads((instance / "secrets.json").read_text())
    app = start(instance, jwt_secret=f"the-new-signing-secret-long-enough-for-hs256,{old['JWT_SECRET']}")
    http = app.test_client()
    with app.app_context():
        user_id = db.session.scalars(db.select(User)).one().id
    claims = {"sub": str(user_id), "role": "user", "exp": int(time.time()) + 60}
    for secret in ("the-new-signing-secret-long-enough-for-hs256", old["JWT_SECRET"]):
        token = jwt.encode(claims, secret, algorithm="HS256")
        listing = http.get("/api/v1/accounts", headers={"Authorization": f"Bearer {token}"})
        assert listing.status_code == 200 and [a["name"] for a in listing.json] == ["main"]
    forged = jwt.encode(claims, "a-secret-nobody-configured-as-long-as-the-others", algorithm="HS256")
    refused = http.get("/api/v1/accounts", headers={"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 401 and refused.json["error"]["code"] == "unauthorized"
    # New tokens are signed with the first secret.
    login = http.post(
        "/api/v1/auth/login", json={"email": "owner@example.com", "password": "a long password"}
    )
    jwt.decode(
        login.json["access_token"], "the-new-signing-secret-long-enough-for-hs256", algorithms=["HS256"]
    )


def test_a_server_database_refuses_generated_secrets(tmp_path: Path) -> None:
    env = {"TRADEGUARD_INSTANCE_DIR": str(tmp_path), "DATABASE_URL": "postgresql://db.internal/tradeguard"}
    with pytest.raises(ConfigurationError) as refused:
        load_settings({**env, "TRADEGUARD_SECRET_KEY": "set"})
    assert "TRADEGUARD_JWT_SECRET, TRADEGUARD_ENCRYPTION_KEY must be set" in str(refused.value)
    assert not (tmp_path / "secrets.json").exists()
    given = {
        "TRADEGUARD_SECRET_KEY": "a",
        "TRADEGUARD_JWT_SECRET": "b",
        "TRADEGUARD_ENCRYPTION_KEY": new_key(),
    }
    assert load_settings({**env, **given}).jwt_secrets == ("b",)


def test_a_process_that_could_not_check_at_start_checks_before_its_first_secret(
    instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database was unreachable while a web process with the wrong keys started: it started (and
    answers /readyz 503 meanwhile), but the first request that needs a secret is refused, 503 JSON, and
    nothing is written with the wrong key."""
    app = start_while_the_database_is_unreachable(instance, monkeypatch, encryption_key=new_key())

    http = app.test_client()
    token = http.post(LOGIN, json={"email": "owner@example.com", "password": "a long password"})
    headers = {"Authorization": f"Bearer {token.json['access_token']}"}
    body = {"name": "second", "terminal_url": "sim://", "login": 1002, "password": "p", "server": "S"}
    refused = http.post("/api/v1/accounts", json=body, headers=headers)
    assert refused.status_code == 503 and refused.json["error"]["code"] == "keys_do_not_match"
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Account)) == 1
    with pytest.raises(KeysDoNotMatch):
        extensions.secret_box(app).decrypt(b"anything")


def test_the_right_keys_started_without_a_check_check_at_first_use_and_go_on(
    instance: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = start_while_the_database_is_unreachable(instance, monkeypatch)
    box = extensions.secret_box(app)
    assert box.decrypt(box.encrypt("still readable")) == "still readable"
    assert box.check_now()  # passed at first use: no further checks
