"""The circuit breaker of reconciliation, as pure functions: when an account whose terminal keeps failing
is backed off, for how long, and whether it is backed off now.

One definition for everyone who asks: the sync (skip the account, open the breaker), the owner's account
status and /metrics, so that they can never disagree about whether a breaker is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BreakerSettings:
    failures_to_open: int = 3  # consecutive failed syncs before the account is backed off
    first_backoff_seconds: float = 30.0
    max_backoff_seconds: float = 600.0


def breaker_is_open(open_until: datetime | None, now: datetime) -> bool:
    return bool(open_until and now < open_until)


def backoff_seconds(consecutive_failures: int, settings: BreakerSettings) -> float:
    """How long the breaker stays open after this many failures in a row: the first backoff when it
    trips, doubling with every failed retry after that, capped. A success resets the count."""
    extra_failures = max(0, consecutive_failures - settings.failures_to_open)
    return float(min(settings.max_backoff_seconds, settings.first_backoff_seconds * 2**extra_failures))
