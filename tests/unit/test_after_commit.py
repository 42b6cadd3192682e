"""`shared.core.db.after_commit`: follow-up work runs once the transaction commits, never after a rollback."""

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.core.db import after_commit, after_commit_batched


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


def test_a_released_savepoint_runs_nothing_until_the_transaction_commits():
    """SQLAlchemy sends `after_commit` when a savepoint is released too: a task sent then would run
    before its rows are visible to any other connection."""
    engine = sa.create_engine("sqlite://")
    ran: list[str] = []
    with Session(engine) as session:
        session.execute(sa.text("SELECT 1"))
        after_commit(session, lambda: ran.append("before the savepoint"))
        with session.begin_nested():
            after_commit(session, lambda: ran.append("in the savepoint"))
        assert ran == []
        session.commit()
        assert ran == ["before the savepoint", "in the savepoint"]


def test_a_savepoint_rolled_back_drops_only_what_was_registered_inside_it():
    engine = sa.create_engine("sqlite://")
    ran: list[str] = []
    with Session(engine) as session:
        session.execute(sa.text("SELECT 1"))
        after_commit(session, lambda: ran.append("outside"))
        try:
            with session.begin_nested():
                after_commit(session, lambda: ran.append("failed account"))
                with session.begin_nested():  # a savepoint inside it goes with it
                    after_commit(session, lambda: ran.append("inner"))
                raise RuntimeError("this account's reading failed")
        except RuntimeError:
            pass
        with session.begin_nested():
            after_commit(session, lambda: ran.append("next account"))
        session.commit()
        assert ran == ["outside", "next account"]


def test_batched_items_go_to_one_flush_per_key_after_the_commit_without_a_rolled_back_savepoints():
    """`after_commit_batched`: one call per key with every item of the transaction, in order; items
    registered in a savepoint that rolled back are left out, and nothing runs on a rollback."""
    engine = sa.create_engine("sqlite://")
    flushed: list[tuple[str, list[int]]] = []

    def flush(key: str):
        return lambda items: flushed.append((key, items))

    with Session(engine) as session:
        session.execute(sa.text("SELECT 1"))
        after_commit_batched(session, "a", 1, flush("a"))
        after_commit_batched(session, "b", 10, flush("b"))
        try:
            with session.begin_nested():
                after_commit_batched(session, "a", 2, flush("a"))
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        after_commit_batched(session, "a", 3, flush("a"))
        assert flushed == []
        session.commit()
        assert flushed == [("a", [1, 3]), ("b", [10])]

        session.execute(sa.text("SELECT 1"))
        after_commit_batched(session, "a", 4, flush("a"))
        session.rollback()
        session.commit()
        assert flushed == [("a", [1, 3]), ("b", [10])]
