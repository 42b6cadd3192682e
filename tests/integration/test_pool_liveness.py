"""Pooled connections the server has closed are replaced at checkout, by asking the socket."""

import psycopg2
import sqlalchemy as sa

from shared.core.db import check_connections_on_checkout, server_closed
from tests.integration.test_concurrent_ingest import terminate_other_connections


def _url(committed_db) -> sa.URL:
    return committed_db.get_bind().url


def test_server_closed_tells_an_ended_connection_from_an_idle_one(committed_db):
    url = _url(committed_db)
    connection = psycopg2.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, password=url.password
    )
    try:
        connection.cursor().execute("SELECT 1")
        connection.rollback()
        assert not server_closed(connection)  # idle, alive: nothing to read
        terminate_other_connections(url)
        assert server_closed(connection)
    finally:
        connection.close()
    assert server_closed(connection)  # closed on our side


def test_the_pool_hands_out_a_new_connection_for_one_the_server_ended(committed_db):
    engine = sa.create_engine(_url(committed_db), pool_size=1, max_overflow=0)
    check_connections_on_checkout(engine)
    try:
        with engine.connect() as conn:
            first_pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        with engine.connect() as conn:  # alive: the same connection again
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) == first_pid
        terminate_other_connections(_url(committed_db))
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) != first_pid
    finally:
        engine.dispose()
