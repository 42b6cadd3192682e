"""`flask` commands for operators."""

from __future__ import annotations

import click
from flask import Flask

from shared import users
from shared.db import db


def register_cli(app: Flask) -> None:
    @app.cli.command("create-admin")
    @click.argument("email")
    @click.password_option(help="the admin's password (prompted for when not given)")
    def create_admin(email: str, password: str) -> None:
        """Create an administrator, or make an existing user one."""
        if len(password) < 8:
            raise click.BadParameter("at least 8 characters", param_hint="password")
        user = users.create_or_promote_admin(db.session, email, password)
        db.session.commit()
        click.echo(f"admin {user.email} (id {user.id})")
