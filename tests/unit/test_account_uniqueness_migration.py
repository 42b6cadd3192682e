"""The migration that makes an MT5 account (login and server) unique refuses to run over duplicates,
naming them, rather than choosing which copy to delete: each copy may have its own trades, strategy
clients and history. Run on SQLite (the embedded setup); tests/integration/test_migrations.py builds
Postgres and SQLite to the head."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from flask import current_app

from shared.core.config import load_settings
from shared.core.db import db, utcnow
from web import create_app

BEFORE = "0008_reconciliation_identity"


def alembic_config():
    return current_app.extensions["migrate"].migrate.get_config()


@pytest.fixture
def sqlite_app(tmp_path):
    app = create_app(load_settings({"TRADEGUARD_INSTANCE_DIR": str(tmp_path)}))
    with app.app_context():
        command.upgrade(alembic_config(), BEFORE)
        yield app


def add_accounts(*rows: tuple[str, int, str]) -> None:
    now = utcnow()
    with db.engine.begin() as conn:
        users = [
            conn.execute(
                sa.text(
                    "INSERT INTO users (email, password_hash, role, created_at) VALUES (:e, 'x', 'user', :t)"
                ),
                {"e": f"{uuid.uuid4().hex}@example.com", "t": now},
            ).lastrowid
            for _ in rows
        ]
        for owner, (name, login, server) in zip(users, rows, strict=True):
            conn.execute(
                sa.text(
                    "INSERT INTO accounts (owner_id, name, terminal_url, login, server,"
                    " credentials_encrypted, currency, created_at)"
                    " VALUES (:o, :n, 'sim://', :l, :s, x'00', 'USD', :t)"
                ),
                {"o": owner, "n": name, "l": login, "s": server, "t": now},
            )


def account_names() -> list[str]:
    with db.engine.connect() as conn:
        return list(conn.scalars(sa.text("SELECT name FROM accounts ORDER BY id")))


def test_duplicate_mt5_accounts_stop_the_migration_naming_them(sqlite_app):
    add_accounts(("first", 1001, "Sim"), ("copy", 1001, "Sim"), ("other", 1001, "Live"))

    with pytest.raises(RuntimeError) as refused:
        command.upgrade(alembic_config(), "head")

    message = str(refused.value)
    assert "login 1001 on server 'Sim': accounts 1, 2" in message
    assert "Live" not in message  # the same login on another server is another MT5 account
    assert account_names() == ["first", "copy", "other"]  # nothing deleted


def test_without_duplicates_the_migration_runs_and_the_database_refuses_a_second_copy(sqlite_app):
    add_accounts(("first", 1001, "Sim"), ("other", 1001, "Live"))

    command.upgrade(alembic_config(), "head")

    with pytest.raises(sa.exc.IntegrityError):
        add_accounts(("copy", 1001, "Sim"))
    assert account_names() == ["first", "other"]
