"""`flask` commands for operators."""

from __future__ import annotations

import getpass
import os

import click
from flask import Flask

from shared.core import extensions
from shared.core.db import db
from shared.identity import users


def _who_runs_this() -> str:
    """The operating-system user running the command, for the audit log."""
    try:
        return f"OS user {getpass.getuser()}"
    except (OSError, KeyError):  # no login name in the environment and no passwd entry (a bare container uid)
        return f"OS uid {os.getuid()}"


def register_cli(app: Flask) -> None:
    @app.cli.command("create-admin")
    @click.argument("email")
    @click.password_option(help="the admin's password (prompted for when not given)")
    def create_admin(email: str, password: str) -> None:
        """Create an administrator, or make an existing user one."""
        if len(password) < 8:
            raise click.BadParameter("at least 8 characters", param_hint="password")
        made = users.create_or_promote_admin(
            db.session, email, password, granted_by=f"flask create-admin, run by {_who_runs_this()}"
        )
        db.session.commit()
        changed = ", ".join(made.audited) or "nothing changed (already an admin, with that password)"
        click.echo(f"admin {made.user.email} (id {made.user.id}): {changed}")

    @app.cli.command("rotate-keys")
    def rotate_keys() -> None:
        """Re-encrypt every stored secret with the first TRADEGUARD_ENCRYPTION_KEY (and point the key check
        at the first key and the first TRADEGUARD_JWT_SECRET), so that the other keys can be removed."""
        from shared.core.crypto import SecretUnreadable
        from shared.identity import key_check

        try:
            report = key_check.rotate(
                db.session, extensions.secret_box(app), extensions.settings(app).jwt_secrets
            )
        except SecretUnreadable as exc:
            raise click.ClickException(f"nothing changed: {exc}") from None
        click.echo(
            f"re-encrypted {report.accounts} account password(s) and {report.clients} client secret(s) "
            "with the first encryption key. Once every process runs with the new first key (and JWT secret), "
            "remove the old ones from TRADEGUARD_ENCRYPTION_KEY and TRADEGUARD_JWT_SECRET."
        )
