"""`shared.core.db.after_commit`: follow-up work runs once the transaction commits, never after a rollback."""

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.core.db import after_commit


def test_callbacks_run_after_commit_and_are_dropped_on_rollback():
    engine = sa.create_engine("sqlite://")
    ran: list[str] = []
    with Session(engine) as session:
        session.execute(sa.text("SELECT 1"))
        after_commit(session, lambda: ran.append("kept"))
        assert ran == []  # nothing before the commit
        session.commit()
        assert ran == ["kept"]

        session.execute(sa.text("SELECT 1"))
        after_commit(session, lambda: ran.append("dropped"))
        session.rollback()
        session.commit()  # a later commit must not run what the rollback discarded
        assert ran == ["kept"]
