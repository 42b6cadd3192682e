"""`redis_exclusive_many`, the batch form of `redis_exclusive`, against the real Redis: it takes the free
names, skips held ones (held by either form: the keys are the same), and releases only what it still
holds.

Every test uses names of its own (a uuid) and deletes their keys afterwards.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis

from shared.core.locks import Busy, redis_exclusive, redis_exclusive_many
from tests.processes import wait_for

TTL = 30.0


@pytest.fixture
def client() -> Iterator[Any]:
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield connection
    connection.close()


@pytest.fixture
def names(client: Any) -> Iterator[list[str]]:
    """Five lock names no other test uses; their keys are deleted afterwards, whatever happened."""
    run = uuid.uuid4().hex[:10]
    made = [f"test-many:{run}:{i}" for i in range(5)]
    yield made
    client.delete(*(key(name) for name in made))


def key(name: str) -> str:
    """The Redis key of the lock `name` (both lock forms' scheme)."""
    return f"tradeguard:lock:{name}"


def test_takes_every_free_name_with_the_ttl_and_releases_them_all(client, names):
    with redis_exclusive_many(client, names[:3], ttl_seconds=TTL) as held:
        assert held == set(names[:3])
        for name in names[:3]:
            assert 0 < client.pttl(key(name)) <= TTL * 1000
        assert not client.exists(key(names[3]))  # only the names asked for
    assert client.exists(*(key(name) for name in names)) == 0


def test_no_names_takes_nothing(client):
    with redis_exclusive_many(client, [], ttl_seconds=TTL) as held:
        assert held == set()


def test_names_held_by_redis_exclusive_are_skipped_and_left_held(client, names, caplog):
    a, b = names[:2]
    with caplog.at_level(logging.WARNING, logger="shared.core.locks"):
        with redis_exclusive(client, a, ttl_seconds=TTL):
            token = client.get(key(a))
            with redis_exclusive_many(client, [a, b], ttl_seconds=TTL) as held:
                assert held == {b}
            # Only b was released; a is still the one-name lock's, with its own token.
            assert client.get(key(a)) == token and not client.exists(key(b))
        assert not client.exists(key(a))  # released by its holder, so it was still its own
    assert "expired" not in caplog.text


def test_redis_exclusive_is_busy_on_names_the_batch_holds(client, names):
    a, b = names[:2]
    with redis_exclusive_many(client, [a, b], ttl_seconds=TTL) as held:
        assert held == {a, b}
        with pytest.raises(Busy), redis_exclusive(client, a, ttl_seconds=TTL):
            pass
    with redis_exclusive(client, a, ttl_seconds=TTL):  # free again once the batch is done
        assert client.exists(key(a))


def test_two_batches_split_their_names_between_them(client, names):
    a, b, c = names[:3]
    with redis_exclusive_many(client, [a, b], ttl_seconds=TTL) as first:
        with redis_exclusive_many(client, [b, c], ttl_seconds=TTL) as second:
            assert (first, second) == ({a, b}, {c})
        # The second batch released c only: b is still the first batch's.
        assert client.exists(key(a), key(b)) == 2 and not client.exists(key(c))
    assert client.exists(key(a), key(b), key(c)) == 0


def test_a_lock_that_expired_and_was_taken_again_is_not_deleted_on_release(client, names, caplog):
    a, b = names[:2]
    with caplog.at_level(logging.WARNING, logger="shared.core.locks"), ExitStack() as other_holder:
        with redis_exclusive_many(client, [a, b], ttl_seconds=0.3) as held:
            assert held == {a, b}
            # The batch outlives its TTL (a worker stuck past its time limit) ...
            assert wait_for(lambda: client.exists(key(a), key(b)) == 0, timeout=5, interval=0.02)
            # ... and another worker takes a meanwhile.
            other_holder.enter_context(redis_exclusive(client, a, ttl_seconds=TTL))
            taken_again = client.get(key(a))
        # Releasing the batch did not delete the other worker's lock.
        assert client.get(key(a)) == taken_again
        assert client.pttl(key(a)) > 1000  # the other holder's TTL, not ours
        assert "2 lock(s) expired before they were released" in caplog.text
    # The other worker's release found its own token there (no "expired" warning from it).
    assert not client.exists(key(a))
    assert "lock " + a + " expired" not in caplog.text


# --- exclusive_many: Postgres advisory locks (no Redis), flocks on SQLite -------------------------------


@pytest.fixture(scope="module")
def pg_engine():
    import sqlalchemy as sa

    engine = sa.create_engine(os.environ["DATABASE_URL"])
    yield engine
    engine.dispose()


def advisory_holders(engine: Any) -> set[int]:
    """The backend pids holding advisory locks, seen from a connection of its own."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return set(conn.scalars(sa.text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")))


def test_exclusive_many_takes_the_free_advisory_locks_on_one_connection_and_skips_held_ones(
    pg_engine, tmp_path
):
    from shared.core.locks import exclusive, exclusive_many

    run = uuid.uuid4().hex[:10]
    names = [f"test-pg:{run}:{i}" for i in range(100)]
    before = advisory_holders(pg_engine)
    with (
        exclusive(pg_engine, names[3], lock_dir=tmp_path),
        exclusive_many(pg_engine, names, lock_dir=tmp_path) as held,
    ):
        assert held == set(names) - {names[3]}
        # A hundred locks, one connection for them (and one for the single lock held above).
        assert len(advisory_holders(pg_engine) - before) == 2
        with pytest.raises(Busy), exclusive(pg_engine, names[50], lock_dir=tmp_path):
            pass
        with exclusive_many(pg_engine, names[:5], lock_dir=tmp_path) as second:
            assert second == set()  # a concurrent batch gets none of them
    # All released: every name can be taken again.
    with exclusive_many(pg_engine, names, lock_dir=tmp_path) as again:
        assert again == set(names)
    assert advisory_holders(pg_engine) == before


def test_exclusive_many_uses_flocks_on_sqlite(tmp_path):
    import sqlalchemy as sa

    from shared.core.locks import exclusive, exclusive_many

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    names = ["account:1", "account:2", "account:3"]
    with (
        exclusive(engine, "account:2", lock_dir=tmp_path),
        exclusive_many(engine, names, lock_dir=tmp_path) as held,
    ):
        assert held == {"account:1", "account:3"}
    with exclusive_many(engine, names, lock_dir=tmp_path) as again:
        assert again == set(names)
    engine.dispose()
