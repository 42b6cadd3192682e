"""`redis_exclusive_many` against the real Redis: it takes the free names, skips held ones (by another batch,
or by any holder of the same keys), and releases only what it still holds.

Every test uses names of its own (a uuid) and deletes their keys afterwards.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared.core.locks import Busy, redis_exclusive_many
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


def test_names_held_elsewhere_are_skipped_and_left_held(client, names, caplog):
    a, b = names[:2]
    client.set(key(a), "another-worker", px=int(TTL * 1000))
    with caplog.at_level(logging.WARNING, logger="shared.core.locks"):
        with redis_exclusive_many(client, [a, b], ttl_seconds=TTL) as held:
            assert held == {b}
        # Only b was released; a is still the other holder's.
        assert client.get(key(a)) == b"another-worker" and not client.exists(key(b))
    assert "expired" not in caplog.text


def test_a_batch_that_holds_nothing_releases_nothing(client, names):
    a = names[0]
    client.set(key(a), "another-worker", px=int(TTL * 1000))
    calls: list[str] = []

    class Watched:  # the real client, with its script registrations counted
        def __getattr__(self, attribute):
            return getattr(client, attribute)

        def register_script(self, script):
            calls.append(script)
            return client.register_script(script)

    with redis_exclusive_many(Watched(), [a], ttl_seconds=TTL) as held:
        assert held == set()
    assert calls == [] and client.get(key(a)) == b"another-worker"


def test_a_release_that_fails_is_logged_and_the_locks_left_to_their_ttl(client, names, caplog):
    a, b = names[:2]

    class Failing:  # the real client, whose scripts fail (Redis went away before the release)
        def __getattr__(self, attribute):
            return getattr(client, attribute)

        def register_script(self, script):
            raise redis.ConnectionError("gone")

    with (
        caplog.at_level(logging.WARNING, logger="shared.core.locks"),
        redis_exclusive_many(Failing(), [a, b], ttl_seconds=TTL) as held,
    ):
        assert held == {a, b}
    # The block's work is not lost to the failed release: no error escapes; the locks expire by TTL.
    assert "releasing 2 lock(s) failed" in caplog.text
    assert 0 < client.pttl(key(a)) <= TTL * 1000 and 0 < client.pttl(key(b)) <= TTL * 1000


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
    with caplog.at_level(logging.WARNING, logger="shared.core.locks"):
        with redis_exclusive_many(client, [a, b], ttl_seconds=0.3) as held:
            assert held == {a, b}
            # The batch outlives its TTL (a worker stuck past its time limit) ...
            assert wait_for(lambda: client.exists(key(a), key(b)) == 0, timeout=5, interval=0.02)
            # ... and another worker takes a meanwhile.
            assert client.set(key(a), "another-worker", nx=True, px=int(TTL * 1000))
        # Releasing the batch did not delete the other worker's lock.
        assert client.get(key(a)) == b"another-worker"
        assert client.pttl(key(a)) > 1000  # the other holder's TTL, not ours
    assert "2 lock(s) expired before they were released" in caplog.text


def test_only_the_locks_still_held_are_released_and_the_others_counted(client, names, caplog):
    a, b, c = names[:3]
    with caplog.at_level(logging.WARNING, logger="shared.core.locks"):
        with redis_exclusive_many(client, [a, b, c], ttl_seconds=TTL) as held:
            assert held == {a, b, c}
            client.set(key(a), "another-worker", px=int(TTL * 1000))  # a expired and was taken again
            client.delete(key(b))  # b expired
        assert client.get(key(a)) == b"another-worker"
        assert not client.exists(key(c))  # c was still ours: released
    assert "2 lock(s) expired before they were released" in caplog.text


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
