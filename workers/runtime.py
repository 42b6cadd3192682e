"""What a worker process keeps between tasks: its terminal connections, its sync threads, its Redis
client, the symbol specifications it has asked for, the passwords it has decrypted. Created on first
use, after the fork, and never shared between processes.

Also the settings-derived objects the tasks hand to the features (execution settings, reconciliation
tolerances and breaker settings), read from the worker's app in one place.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from shared.core import extensions
from shared.core.config import Settings
from shared.core.crypto import SecretUnreadable
from shared.core.db import db
from shared.execution.service import ExecutionSettings
from shared.guards.engine import GuardSettings
from shared.insight.retention import RetentionSettings
from shared.mt5.errors import CredentialsUnreadable, TerminalError
from shared.mt5.gateway import Gateway, fill_pool
from shared.mt5.pool import ConnectionPool
from shared.mt5.ports import TerminalAccount, TerminalPort
from shared.mt5.types import SymbolSpec
from shared.notifications.delivery import DeliverySettings
from shared.reconciliation.breaker import BreakerSettings
from shared.reconciliation.rules import Tolerances
from workers.celery_app import flask_app

log = logging.getLogger(__name__)


def settings() -> Settings:
    return extensions.settings(flask_app())


# --- terminals --------------------------------------------------------------------------------------


@contextmanager
def open_terminal(account: TerminalAccount, *, pooled: bool = True) -> Iterator[Gateway]:
    """The account's terminal, logged in, for the duration of the block.

    `pooled` (the default, for orders and reconciliation alike): an RPyC terminal's connection comes
    from this process's pool and goes back to it, logged in with the first calls if need be. Opening
    a connection of its own costs an order a TCP and RPyC handshake, the remote helper's definition,
    initialize() and, afterwards, shutdown(): measured, 5.6 of the 19 ms from the task's start to
    order_send at p50, and 95-158 ms of the slowest orders, opened while reconciliation kept the
    terminal busy (bench/approval.py). A connection whose answer was lost or garbled is never
    given back (`Gateway`), so an order is never sent on a connection in an unknown state.
    `pooled=False`: a connection of its own, closed (its session shut down) at the end."""
    app = flask_app()
    with Gateway.open(
        account.terminal_url,
        declared=extensions.declared_terminals(app),
        login=account.login,
        password=_account_password(account),
        server=account.server,
        timeout=extensions.settings(app).terminal_timeout_seconds,
        pool=terminal_pool() if pooled else None,
    ) as gateway:
        yield gateway


def open_pooled_terminal(account: TerminalAccount) -> AbstractContextManager[Gateway]:
    return open_terminal(account, pooled=True)


def warm_terminals(terminal_urls: Iterable[str], count: int) -> None:
    """Have `count` idle connections to each of these terminals in this process's pool, so that work
    reading many accounts at once (a guard check) does not pay for its connections first. A terminal
    that cannot be reached is logged and left for the work itself to report."""
    app = flask_app()
    for terminal_url in terminal_urls:
        try:
            fill_pool(
                terminal_pool(),
                terminal_url,
                declared=extensions.declared_terminals(app),
                count=count,
                timeout=extensions.settings(app).terminal_timeout_seconds,
            )
        except TerminalError as exc:
            log.warning("warming connections to %s failed (%s: %s)", terminal_url, type(exc).__name__, exc)


# This process's idle terminal connections, reused from sync to sync (see ConnectionPool).
_terminal_pool: ConnectionPool | None = None
# This process's threads for syncs: created once, not per batch (see workers.tasks.reconcile_accounts).
_sync_threads: ThreadPoolExecutor | None = None
_pools_lock = threading.Lock()


def terminal_pool() -> ConnectionPool:
    global _terminal_pool
    with _pools_lock:
        if _terminal_pool is None:
            _terminal_pool = ConnectionPool()
        return _terminal_pool


# This process's threads for webhook POSTs (a commit's deliveries go out together).
_delivery_threads: ThreadPoolExecutor | None = None
DELIVERY_THREADS = 8


def delivery_threads() -> ThreadPoolExecutor:
    global _delivery_threads
    with _pools_lock:
        if _delivery_threads is None:
            _delivery_threads = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="webhook")
        return _delivery_threads


def sync_threads() -> ThreadPoolExecutor:
    global _sync_threads
    with _pools_lock:
        if _sync_threads is None:
            _sync_threads = ThreadPoolExecutor(
                max_workers=settings().reconcile_threads, thread_name_prefix="sync"
            )
        return _sync_threads


# Symbol specifications change rarely; asking for them on every sync would double the terminal calls.
_symbol_cache: dict[tuple[str, str, str], tuple[float, SymbolSpec]] = {}
_SYMBOL_CACHE_SECONDS = 600.0


def symbol_specs(account: TerminalAccount, terminal: TerminalPort, names: set[str]) -> dict[str, SymbolSpec]:
    specs: dict[str, SymbolSpec] = {}
    now = time.monotonic()
    for name in names:
        # Per terminal and trade server, not per login: symbol specs are the server's, and a per-login
        # key made every account's first sync ask again (measured: 7 terminal calls instead of 3).
        key = (account.terminal_url, account.server, name)
        cached = _symbol_cache.get(key)
        if cached is None or now - cached[0] > _SYMBOL_CACHE_SECONDS:
            cached = (now, terminal.symbol(name))
            _symbol_cache[key] = cached
        specs[name] = cached[1]
    return specs


def _account_password(account: TerminalAccount) -> str:
    """The account's terminal password, or CredentialsUnreadable (permanent): a password no configured
    key decrypts must fail the trade and the sync with what to do, not escape as a ValueError that leaves
    the trade pending and retried for ever."""
    try:
        return _password(bytes(account.credentials_encrypted))
    except SecretUnreadable as exc:
        raise CredentialsUnreadable(
            f"account {account.id}: its stored password cannot be decrypted with the keys in "
            "TRADEGUARD_ENCRYPTION_KEY: put the key that encrypted it back in TRADEGUARD_ENCRYPTION_KEY; "
            "if that key is lost, the owner must re-enter the account's password (add the account again)",
            call="initialize",
        ) from exc


@functools.lru_cache(maxsize=20_000)
def _password(credentials_encrypted: bytes) -> str:
    """The account password, decrypted once per process rather than on every sync (a Fernet decryption
    is a tenth of a millisecond; a worker syncs thousands of accounts every few seconds). Keyed by the
    ciphertext, so a changed password is decrypted afresh."""
    return extensions.secret_box(flask_app()).decrypt(credentials_encrypted)


# --- locks ------------------------------------------------------------------------------------------


def account_locks(names: list[str]) -> Any:
    """The reconciliation's per-account locks (`exclusive_locks`), held at most as long as a batch may
    run (TRADEGUARD_RECONCILE_LOCK_SECONDS)."""
    return exclusive_locks(names, ttl_seconds=settings().reconcile_lock_seconds)


def exclusive_locks(names: list[str], *, ttl_seconds: float) -> Any:
    """Take as many of these locks as are free, without waiting; yields the names held. Redis locks
    where Redis is the broker (many machines), kept at most `ttl_seconds` by a holder that dies; else
    Postgres advisory locks, or flocks on the embedded setup (both end with their holder)."""
    from shared.core.locks import exclusive_many, redis_exclusive_many

    current = settings()
    if current.redis_url:
        return redis_exclusive_many(_redis(), names, ttl_seconds=ttl_seconds)
    return exclusive_many(db.engine, names, lock_dir=current.instance_dir / "locks")


_redis_client: Any = None
_redis_lock = threading.Lock()


def _redis() -> Any:
    global _redis_client
    if _redis_client is None:
        with _redis_lock:
            if _redis_client is None:
                import redis

                _redis_client = redis.Redis.from_url(str(settings().redis_url))
    return _redis_client


# --- the features' settings -------------------------------------------------------------------------


def execution_settings() -> ExecutionSettings:
    current = settings()
    return ExecutionSettings(
        magic=current.magic,
        deviation_points=current.deviation_points,
        max_price_retries=current.max_price_retries,
        unknown_outcome_grace_seconds=current.unknown_outcome_grace_seconds,
        terminal_timeout_seconds=current.terminal_timeout_seconds,
        lock_dir=current.instance_dir / "locks",
    )


def guard_settings() -> GuardSettings:
    current = settings()
    return GuardSettings(
        deviation_points=current.deviation_points,
        max_price_retries=current.max_price_retries,
        in_flight_seconds=current.terminal_timeout_seconds + current.unknown_outcome_grace_seconds,
        magic=current.magic,
        send_after_claim_seconds=current.unknown_outcome_grace_seconds,
    )


def retention_settings() -> RetentionSettings:
    current = settings()
    return RetentionSettings(full_days=current.snapshot_full_days, minute_days=current.snapshot_minute_days)


def delivery_settings() -> DeliverySettings:
    current = settings()
    return DeliverySettings(
        allow_private=current.webhook_allow_private,
        timeout_seconds=current.webhook_timeout_seconds,
        retry_scale=current.webhook_retry_scale,
    )


def attempt_limit() -> int:
    """How many attempts a trade gets: the first and TRADEGUARD_EXECUTION_MAX_RETRIES more, as an
    unreachable terminal gets. Orders sent count (see `shared.execution.service.count_failed_attempt`)."""
    return int(settings().execution_max_retries) + 1


def reconcile_tolerances(current: Settings) -> Tolerances:
    """The reconciliation tolerances from the settings (TRADEGUARD_MATCH_*, *_DIVERGENCE_*, ...)."""
    return Tolerances(
        match_volume_percent=current.match_volume_percent,
        match_price_pips=current.match_price_pips,
        slippage_pips=current.slippage_pips,
        volume_percent=current.volume_divergence_percent,
        stop_pips=current.stop_divergence_pips,
    )


def breaker_settings(current: Settings) -> BreakerSettings:
    return BreakerSettings(
        failures_to_open=current.breaker_failures,
        first_backoff_seconds=current.breaker_first_backoff_seconds,
        max_backoff_seconds=current.breaker_max_backoff_seconds,
    )
