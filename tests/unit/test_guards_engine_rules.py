"""The guards' alert engine on the embedded setup (SQLite, which has no sequences): an alert raised by a
reading is written at once to take its id, and everything that names it (the schedule of its close, its
audit entry, the outcome) names that id (issue 17, mutation testing of `shared/guards/engine.py`)."""

from decimal import Decimal

import sqlalchemy as sa

from shared.core import extensions
from shared.core.db import db, utcnow
from shared.guards import engine as guards
from shared.guards import rules
from shared.guards.settings import default_settings, validate_settings
from shared.identity import accounts, users
from shared.models import AccountRisk, AuditLog, DrawdownAlert

LIMIT = {
    "name": "max drawdown",
    "period": "lifetime",
    "reference": "peak_equity",
    "max_percent": 2,
    "action": "close",
}


def test_an_alert_raised_on_sqlite_is_scheduled_audited_and_told_under_its_own_id(sqlite_app):
    with sqlite_app.app_context():
        user = users.register(db.session, "owner@example.com", "password one")
        account = accounts.create_account(
            db.session,
            extensions.secret_box(sqlite_app),
            user,
            declared_terminals=extensions.declared_terminals(sqlite_app),
            name="a1001",
            terminal_url="sim://",
            login=1001,
            password="p",
            server="TradeGuard-Sim",
        )
        db.session.flush()
        document = {**default_settings(), "grace_seconds": 0, "confirmations": 1, "drawdown_limits": [LIMIT]}
        db.session.add(AccountRisk(account_id=account.id, settings=validate_settings(document)))
        db.session.commit()
        scheduled = []

        def schedule(session, task, args, at):
            scheduled.append((task, args, at))

        for equity in ("10000", "9700"):  # 3 %: past the 2 % maximum
            reading = rules.Reading(utcnow(), Decimal(equity), Decimal(10000), None)
            outcome = guards.record_reading(
                db.session, account.id, reading, currency="USD", schedule=schedule
            )
            db.session.commit()

        alert = db.session.scalars(sa.select(DrawdownAlert)).one()
        assert alert.id is not None and outcome.alert_id == alert.id
        assert scheduled == [("tradeguard.execute_alert", [alert.id], alert.close_at)]
        pending = db.session.scalars(sa.select(AuditLog).where(AuditLog.action == "alert.pending")).one()
        assert pending.target_id == alert.id
