"""Exclusive locks that die with their holder.

Used so that no two workers act on the same thing at once (one signal's order, one account's
reconciliation). The lock must vanish if its holder is killed, or a crashed worker would block the
account for ever:
- on Postgres, a session-level advisory lock on a dedicated connection: the server drops it when the
  connection closes, which it does when the holding process dies;
- on SQLite (the embedded, single-machine setup), an `flock` on a file under instance/locks, which the
  kernel drops when the holding process dies;
- in Redis (reconciliation batches, where Redis is the broker), a key with a TTL, which expires when
  its holder no longer releases it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)


class Busy(Exception):
    """Another worker holds the lock right now. Retry later; nothing was done."""


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock from a readable name such as 'trade:42'."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def exclusive(engine: sa.Engine, name: str, *, lock_dir: Path) -> Iterator[None]:
    """Hold the lock called `name` for the duration of the block, or raise Busy at once."""
    if engine.dialect.name == "postgresql":
        key = lock_key(name)
        with engine.connect() as conn:
            # Autocommit: the lock belongs to the session, not to a transaction, so it survives the
            # commits the block makes on other connections.
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if not conn.scalar(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}):
                raise Busy(name)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / (hashlib.sha1(name.encode()).hexdigest() + ".lock")  # noqa: S324 - a file name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(name) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


Lock = Callable[[str], AbstractContextManager[None]]
# Locks for many names at once: yields the names it holds; the others are held elsewhere (busy).
Locks = Callable[[list[str]], AbstractContextManager[set[str]]]


def each(lock: Lock) -> Locks:
    """`Locks` from a one-name lock: takes them one by one, skipping the busy ones."""

    @contextmanager
    def locks(names: list[str]) -> Iterator[set[str]]:
        held: set[str] = set()
        with contextlib.ExitStack() as stack:
            for name in names:
                try:
                    stack.enter_context(lock(name))
                except Busy:
                    continue
                held.add(name)
            yield held

    return locks


@contextmanager
def exclusive_many(engine: sa.Engine, names: list[str], *, lock_dir: Path) -> Iterator[set[str]]:
    """Take as many of the locks `names` (the same locks as `exclusive`) as are free; yield the names
    held. On Postgres all of them on one connection, in one statement: a connection per lock would
    drain the pool for a batch of a hundred accounts."""
    if engine.dialect.name != "postgresql":
        with each(lambda name: exclusive(engine, name, lock_dir=lock_dir))(names) as held:
            yield held
        return
    keys = {lock_key(name): name for name in names}
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # session locks, as in `exclusive`
        taken = conn.execute(
            sa.text("SELECT k, pg_try_advisory_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": list(keys)},
        ).all()
        held_keys = [key for key, ok in taken if ok]
        try:
            yield {keys[key] for key in held_keys}
        finally:
            if held_keys:
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
                    {"keys": held_keys},
                )


# Deletes each of the locks KEYS that still holds our token (ARGV[1]) and says how many it deleted: a lock
# that expired and was taken by another worker in the meantime is not ours to release. One script for
# the whole batch: one command, where a script call per lock would be a hundred.
_RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
    if redis.call('get', key) == ARGV[1] then released = released + redis.call('del', key) end
end
return released
"""


@contextmanager
def redis_exclusive_many(client: Any, names: list[str], *, ttl_seconds: float) -> Iterator[set[str]]:
    """Take as many of the Redis locks `names` as are free; yield the names held.

    For work that must not hold a database connection while it waits on terminals (reconciling
    thousands of accounts, in batches). A holder that dies keeps its locks only until `ttl_seconds`
    pass, so the TTL is set just above the longest the work may take (the task's time limit). One
    round trip takes them all, and one releases them: a hundred locks one by one would cost two hundred.
    """
    if not names:
        yield set()
        return
    token = os.urandom(16).hex()
    ttl_ms = max(1, int(ttl_seconds * 1000))
    keys = [f"tradeguard:lock:{name}" for name in names]
    # Each lock is taken or not by itself (SET NX), so the batch need not be a MULTI/EXEC transaction.
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, token, nx=True, px=ttl_ms)
    held = {name for name, taken in zip(names, pipe.execute(), strict=True) if taken}
    try:
        yield held
    finally:
        if held:
            _release(client, [key for name, key in zip(names, keys, strict=True) if name in held], token)


def _release(client: Any, keys: list[str], token: str) -> None:
    try:
        released = client.register_script(_RELEASE)(keys=keys, args=[token])
    except Exception:
        log.exception("releasing %d lock(s) failed; they expire by their TTL", len(keys))
    else:
        if released < len(keys):
            log.warning("%d lock(s) expired before they were released", len(keys) - released)
