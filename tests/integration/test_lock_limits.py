"""The locks' edges (issue 17: mutants of shared/core/locks.py no test noticed).

- A lock's Postgres key is a *signed* 64-bit number: pg_try_advisory_lock takes a bigint, and half of
  the unsigned digests would not fit one.
- The flock of the embedded setup makes its lock folder, parents included, and finds it there the next
  time.
- A Redis lock's TTL is at least a millisecond: Redis refuses an expiry of 0, so a TTL under a
  millisecond is rounded up, not down.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from shared.core.locks import Busy, exclusive, lock_key, redis_exclusive_many


def is_busy(engine, name, lock_dir) -> bool:
    try:
        with exclusive(engine, name, lock_dir=lock_dir):
            return False
    except Busy:
        return True


def test_lock_keys_are_signed_64_bit_numbers_that_postgres_takes(tmp_path):
    keys = [lock_key(f"trade:{i}") for i in range(200)]
    assert all(-(2**63) <= key < 2**63 for key in keys)
    assert min(keys) < 0 < max(keys)  # the whole signed range is used
    engine = sa.create_engine(os.environ["DATABASE_URL"])
    try:
        negative = next(i for i, key in enumerate(keys) if key < 0)
        with exclusive(engine, f"trade:{negative}", lock_dir=tmp_path):
            assert is_busy(engine, f"trade:{negative}", tmp_path)
        assert not is_busy(engine, f"trade:{negative}", tmp_path)
    finally:
        engine.dispose()


def test_the_embedded_flock_makes_its_folder_with_its_parents_and_finds_it_again(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    lock_dir = tmp_path / "instance" / "locks"  # neither exists yet
    try:
        for _ in range(2):  # made the first time, there the second
            with exclusive(engine, "trade:1", lock_dir=lock_dir):
                assert is_busy(engine, "trade:1", lock_dir)
    finally:
        engine.dispose()


@pytest.fixture
def client() -> Iterator[Any]:
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield connection
    connection.close()


def test_a_redis_ttl_under_a_millisecond_is_rounded_up_to_one(client):
    names = [f"test-ttl:{uuid.uuid4().hex[:10]}"]
    try:
        with redis_exclusive_many(client, names, ttl_seconds=0.0001) as held:
            assert held == set(names)
    finally:
        client.delete(*(f"tradeguard:lock:{name}" for name in names))
