"""Beat fail-over, end to end: two real beat processes on Redis, one holding RedBeat's lock. When the holder
is killed, the standby must be scheduling work within 30 s; when it is stopped gracefully, within seconds.

The lock timing (lock TTL, retry and renewal interval) is the production configuration from
`celeryconfig`; only the expiry sweep runs every second, so that something is due whenever the standby
takes over and the measurement is the take-over, not the wait for the schedule's next entry.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest
import redis

from tests.processes import CeleryProcess, celery_beat, wait_for

SENT = "Scheduler: Sending due task"
ACQUIRED = "beat: Acquired lock"
# Something falls due every second, whoever holds the lock.
SCHEDULE = {"TRADEGUARD_EXPIRY_SWEEP_SECONDS": "1"}


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A client of the beats' Redis. Afterwards the task messages the beats sent (no worker consumed
    them) are purged, so that a later test's worker does not run them."""
    from workers.celery_app import celery_app

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    yield client
    celery_app.control.purge()
    client.close()


def lock_settings(beat: CeleryProcess) -> tuple[str, int, int]:
    """RedBeat's lock key, the lock's TTL and beat's longest sleep (seconds): what the beat process
    runs with, read from the banner it prints at start-up."""
    banner = beat.log()
    lock = re.search(r"\. lock -> `([^`]+)` .*\((\d+)s\)", banner)
    loop = re.search(r"\. maxinterval -> .*\((\d+)s\)", banner)
    assert lock and loop, banner
    return lock[1], int(lock[2]), int(loop[1])


def holder_and_standby(
    first: CeleryProcess, second: CeleryProcess, within: float
) -> tuple[CeleryProcess, CeleryProcess]:
    """Which of the two beats holds the lock (it says so in its log), and which waits for it."""
    assert wait_for(lambda: ACQUIRED in first.log() or ACQUIRED in second.log(), timeout=within), (
        first.log() + second.log()
    )
    holders = [beat for beat in (first, second) if ACQUIRED in beat.log()]
    assert len(holders) == 1, first.log() + second.log()
    holder = holders[0]
    return holder, second if holder is first else first


def wait_for_renewal(client: redis.Redis, key: str, lock_timeout: int, loop_interval: int) -> float:
    """Wait until the holder has just renewed the lock (its TTL is almost the full timeout) and return
    the seconds it has left: killing the holder then is the worst case, the whole TTL still to run."""
    full = (lock_timeout - 0.5) * 1000
    assert wait_for(lambda: client.pttl(key) > full, timeout=loop_interval + 5, interval=0.01), client.pttl(
        key
    )
    return int(client.pttl(key)) / 1000


def seconds_until_first_send(standby: CeleryProcess, since: float, timeout: float = 60) -> float:
    """Seconds from `since` (a `time.monotonic()`) until the standby sent its first task, polled every
    20 ms; about `timeout` if it never did."""
    wait_for(lambda: SENT in standby.log(), timeout=timeout, interval=0.02)
    return time.monotonic() - since


def test_the_standby_beat_schedules_work_within_30_s_of_the_lock_holder_being_killed(client):
    with celery_beat(env=SCHEDULE) as first, celery_beat(env=SCHEDULE) as second:
        key, lock_timeout, loop_interval = lock_settings(first)
        # A lock left by an earlier test's killed beat expires within one TTL.
        holder, standby = holder_and_standby(first, second, within=lock_timeout + loop_interval + 10)
        holder.wait_for_log(SENT)
        ttl_left = wait_for_renewal(client, key, lock_timeout, loop_interval)
        assert SENT not in standby.log(), standby.log()  # one beat sends while both run

        killed_at = time.monotonic()
        holder.kill()
        took = seconds_until_first_send(standby, since=killed_at)
        print(f"\nbeat take-over after SIGKILL: {took:.1f} s (the lock had {ttl_left:.1f} s left)")

        standby_log = standby.log()
        assert took < 30, standby_log
        # It sent because it took the lock, not alongside the dead holder.
        assert standby_log.index(ACQUIRED) < standby_log.index(SENT), standby_log
        assert client.pttl(key) > 0


def test_the_standby_beat_takes_over_at_once_when_the_lock_holder_stops_gracefully(client):
    with celery_beat(env=SCHEDULE) as first, celery_beat(env=SCHEDULE) as second:
        key, lock_timeout, loop_interval = lock_settings(first)
        holder, standby = holder_and_standby(first, second, within=lock_timeout + loop_interval + 10)
        holder.wait_for_log(SENT)
        ttl_left = wait_for_renewal(client, key, lock_timeout, loop_interval)
        assert SENT not in standby.log(), standby.log()

        stopped_at = time.monotonic()
        holder.stop()  # SIGTERM, as a supervisor or a deploy stops it
        took = seconds_until_first_send(standby, since=stopped_at)
        print(f"\nbeat take-over after SIGTERM: {took:.1f} s (the lock had {ttl_left:.1f} s left)")

        assert "beat: Releasing lock" in holder.log(), holder.log()
        # Within the holder's exit, one lock retry and one sweep interval (plus a second's slack): far
        # sooner than the TTL the lock had left, so the stopping beat released it, not let it expire.
        assert took < loop_interval + 3, standby.log()
        assert took < 10 < ttl_left, standby.log()
