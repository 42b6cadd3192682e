"""The embedded setup (SQLite) writes the quiet sync readings too: one UPDATE each there (Postgres takes
them in one statement, tests/integration/test_guards_readings.py), each only if its row is still the one
the batch read."""

from datetime import timedelta
from decimal import Decimal

from shared.core import extensions
from shared.core.db import db, utcnow
from shared.guards import readings
from shared.identity import accounts, users
from shared.models import GuardState


def test_quiet_readings_are_written_one_by_one_and_only_over_the_row_the_batch_read(sqlite_app):
    with sqlite_app.app_context():
        user = users.register(db.session, "owner@example.com", "password one")
        ids = []
        for login in (1001, 1002):
            account = accounts.create_account(
                db.session,
                extensions.secret_box(sqlite_app),
                user,
                declared_terminals=extensions.declared_terminals(sqlite_app),
                name=f"a{login}",
                terminal_url="sim://",
                login=login,
                password="p",
                server="TradeGuard-Sim",
            )
            db.session.flush()
            ids.append(account.id)
        read_at = utcnow() - timedelta(seconds=10)
        for account_id in ids:
            db.session.add(GuardState(account_id=account_id, state="ok", updated_at=read_at))
        db.session.commit()
        now = utcnow()
        rows = [
            {
                "b_account_id": account_id,
                # The second one changed since the batch read it.
                "b_was_updated_at": read_at if account_id == ids[0] else read_at - timedelta(seconds=1),
                "b_limits": {"dd": {"peak": "10010"}},
                "b_equity": Decimal("10010"),
                "b_balance": Decimal(10000),
                "b_margin_level": None,
                "b_currency": "USD",
                "b_at": now,
            }
            for account_id in ids
        ]
        assert readings._write_quiet(db.session, rows) == {ids[0]}
        db.session.commit()
        db.session.expire_all()
        written, untouched = (db.session.get(GuardState, account_id) for account_id in ids)
        assert (written.equity, written.limits, written.read_at, written.updated_at) == (
            Decimal("10010"),
            {"dd": {"peak": "10010"}},
            now,
            now,
        )
        assert (untouched.equity, untouched.read_at, untouched.updated_at) == (None, None, read_at)
