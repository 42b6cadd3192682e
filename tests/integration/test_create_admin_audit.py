"""`flask create-admin` grants the admin role, and the audit log says so: which role, to whom, from which
role, and what granted it, for a new user as for a promoted one. A run that changes nothing writes
nothing. Before, a new admin was audited only as `user.registered`."""

from __future__ import annotations

import getpass

import sqlalchemy as sa

from shared.models import AuditLog, User


def _create_admin(app, email: str, password: str):
    result = app.test_cli_runner().invoke(args=["create-admin", email, "--password", password])
    assert result.exit_code == 0, result.output
    return result


def _audit_of(db_session, user_id: int) -> list[AuditLog]:
    return list(
        db_session.scalars(
            sa.select(AuditLog)
            .where(AuditLog.target_type == "user", AuditLog.target_id == user_id)
            .order_by(AuditLog.id)
        )
    )


def _done_by_this_command(entry: AuditLog, key: str = "granted_by") -> bool:
    return "create-admin" in entry.meta[key] and getpass.getuser() in entry.meta[key]


def test_a_new_admin_is_audited_as_registered_and_granted_the_admin_role(app, db_session):
    _create_admin(app, "new-admin@example.com", "operator pass")
    admin = db_session.scalars(sa.select(User).where(User.email == "new-admin@example.com")).one()

    entries = _audit_of(db_session, admin.id)
    assert [entry.action for entry in entries] == ["user.registered", "user.role_granted"]
    granted = entries[1]
    assert (granted.actor_type, granted.actor_id) == ("system", None)
    assert granted.meta["role"] == "admin" and granted.meta["previous_role"] is None
    assert granted.meta["email"] == "new-admin@example.com"
    assert _done_by_this_command(granted), granted.meta


def test_a_promoted_user_is_audited_as_granted_the_admin_role_and_a_new_password(app, api, db_session):
    user = api.register("promoted@example.com", "user password")
    _create_admin(app, "promoted@example.com", "operator pass")

    entries = _audit_of(db_session, user["id"])
    assert [entry.action for entry in entries] == [
        "user.registered",
        "user.role_granted",
        "user.password_set",
    ]
    granted, password_set = entries[1], entries[2]
    assert granted.meta["role"] == "admin" and granted.meta["previous_role"] == "user"
    assert _done_by_this_command(granted), granted.meta
    assert password_set.actor_type == "system" and _done_by_this_command(password_set, "set_by"), (
        password_set.meta
    )
    assert api.login("promoted@example.com", "operator pass")


def test_making_an_admin_of_an_admin_changes_and_audits_nothing_unless_the_password_changes(
    app, api, db_session
):
    _create_admin(app, "already@example.com", "operator pass")
    admin = db_session.scalars(sa.select(User).where(User.email == "already@example.com")).one()
    audited = len(_audit_of(db_session, admin.id))

    result = _create_admin(app, "already@example.com", "operator pass")
    assert "nothing changed" in result.output
    assert len(_audit_of(db_session, admin.id)) == audited

    _create_admin(app, "already@example.com", "a new operator pass")
    entries = _audit_of(db_session, admin.id)
    assert [entry.action for entry in entries[audited:]] == ["user.password_set"]
    assert api.login("already@example.com", "a new operator pass")
