"""Celery tasks. Each is a thin wrapper: it takes ids (or nothing), reloads rows and calls shared/."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from celery import Task

from shared.core.crypto import SecretBox, SecretUnreadable
from shared.core.db import db, utcnow
from shared.execution import service as execution
from shared.models import Account, AccountSync, Signal, SignalStatus, Trade, TradeState
from shared.mt5.errors import CredentialsUnreadable, PermanentTerminalError, RetryableTerminalError
from shared.signals.expiry import expire_due_signals
from workers.celery_app import DatabaseTask, celery_app, flask_app

log = logging.getLogger(__name__)

EXECUTE_SIGNAL = "tradeguard.execute_signal"


@celery_app.task(name="tradeguard.expire_signals", base=DatabaseTask)
def expire_signals() -> int:
    """Beat's sweep: pending signals past their time-to-live become `expired`. Safe to run twice."""
    expired = expire_due_signals(db.session)
    if expired:
        log.info("expired %d pending signal(s): %s", len(expired), expired[:20])
    return len(expired)


@contextmanager
def open_terminal(account: Any, *, pooled: bool = False) -> Iterator[Any]:
    """The account's terminal, logged in, for the duration of the block. `pooled` (reconciliation): a
    connection of this process's pool (RPyC terminals), logged in with the first calls if need be."""
    from shared.mt5.gateway import Gateway

    app = flask_app()
    settings = app.extensions["tradeguard.settings"]
    with Gateway.open(
        account.terminal_url,
        declared=app.extensions["tradeguard.terminals"],
        login=account.login,
        password=_account_password(account),
        server=account.server,
        timeout=settings.terminal_timeout_seconds,
        pool=terminal_pool() if pooled else None,
    ) as gateway:
        yield gateway


def open_pooled_terminal(account: Any) -> AbstractContextManager[Any]:
    return open_terminal(account, pooled=True)


def execution_settings() -> execution.ExecutionSettings:
    settings = flask_app().extensions["tradeguard.settings"]
    return execution.ExecutionSettings(
        magic=settings.magic,
        deviation_points=settings.deviation_points,
        max_price_retries=settings.max_price_retries,
        unknown_outcome_grace_seconds=settings.unknown_outcome_grace_seconds,
        terminal_timeout_seconds=settings.terminal_timeout_seconds,
        lock_dir=settings.instance_dir / "locks",
    )


def retry_countdown(retries: int) -> float:
    """Exponential back-off between attempts on an unreachable terminal: 1, 2, 4, ... up to 30 s."""
    return float(min(30, 2**retries))


@celery_app.task(name=EXECUTE_SIGNAL, base=DatabaseTask, bind=True, max_retries=None)
def execute_signal(self: Task, signal_id: int) -> str | None:
    """Send the approved signal's order, at most once. Retries only what is retryable (terminal
    unreachable, timed out, outcome unknown, trade busy in another worker) and, a bounded number of
    times counted on the trade, errors nobody classified."""
    max_retries = flask_app().extensions["tradeguard.settings"].execution_max_retries
    started_at = utcnow()
    try:
        trade = execution.execute_signal(
            db.session,
            signal_id,
            engine=db.engine,
            open_terminal=open_terminal,
            settings=execution_settings(),
        )
    except PermanentTerminalError as exc:
        # Wrong or unreadable credentials, unknown symbol, no MetaTrader5 package here: retrying cannot
        # help.
        db.session.rollback()
        trade = give_up(signal_id, f"{type(exc).__name__}: {exc}")
    except (RetryableTerminalError, execution.TerminalRetryLater) as exc:
        db.session.rollback()
        if self.request.retries < max_retries:
            raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc
        log.error("signal %s: giving up after %d retries: %s", signal_id, self.request.retries, exc)
        trade = give_up(signal_id, f"terminal unreachable: {exc}")
    except Exception as exc:
        # Unclassified (a terminal reply of the wrong shape, a bug): left to escape, it would leave the
        # trade pending with no reason, and the safety net would run it again every 15 s for ever.
        db.session.rollback()
        log.exception("signal %s: execution failed with an unclassified error", signal_id)
        error = f"{type(exc).__name__}: {exc}"
        trade = execution.count_failed_attempt(
            db.session,
            signal_id,
            error,
            started_at=started_at,
            engine=db.engine,
            settings=execution_settings(),
        )
        if trade is None:
            raise  # no trade to count on: the error came before it was made
        if trade.state not in UNFINISHED:
            return trade.state.value
        if trade.attempts < attempt_limit():
            raise self.retry(exc=exc, countdown=retry_countdown(max(0, trade.attempts - 1))) from exc
        trade = give_up(signal_id, f"gave up after {trade.attempts} attempts: {error}")
        if trade is not None and trade.state == TradeState.SENT:
            log.error(
                "trade %s: gave up after %d attempts, but its order may have been sent: it stays `sent` "
                "for reconciliation to settle (compare the broker's history with the trade)",
                trade.id,
                trade.attempts,
            )
    return trade.state.value if trade else None


UNFINISHED = (TradeState.PENDING, TradeState.SENT)


def attempt_limit() -> int:
    """How many attempts a trade gets: the first and TRADEGUARD_EXECUTION_MAX_RETRIES more, as an
    unreachable terminal gets. Orders sent count (see `execution.count_failed_attempt`)."""
    return int(flask_app().extensions["tradeguard.settings"].execution_max_retries) + 1


def give_up(signal_id: int, reason: str) -> Trade | None:
    """Mark the signal's trade failed, unless it may have been sent (see `execution.give_up`)."""
    return execution.give_up(db.session, signal_id, reason, engine=db.engine, settings=execution_settings())


def enqueue_execution(signal_id: int) -> None:
    celery_app.send_task(EXECUTE_SIGNAL, args=[signal_id])


@celery_app.task(name="tradeguard.dispatch_approved", base=DatabaseTask)
def dispatch_approved(older_than_seconds: float = 30.0) -> int:
    """Beat's safety net: an approved signal whose execution message was lost (broker down at the
    moment of approval, a purged queue) is enqueued again. Harmless when the first message is still
    on its way: execution is idempotent.

    A `sent` trade that has used up its attempts is not enqueued again: its order may exist, so no run
    may mark it failed (`execution.give_up`), and each run would only fail again, every tick, for ever.
    It stays `sent` for reconciliation to settle. A `pending` one is enqueued (it is pending at its limit
    only when giving up lost a race): a run either executes it or, failing, gives it up (`failed`), so it
    does not come back."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    without_trade = sa.select(Signal.id).where(
        Signal.status == SignalStatus.APPROVED,
        Signal.decided_at < cutoff,
        ~sa.exists().where(Trade.signal_id == Signal.id),
    )
    unfinished = sa.select(Trade.signal_id).where(
        Trade.updated_at < cutoff,
        sa.or_(
            Trade.state == TradeState.PENDING,
            sa.and_(Trade.state == TradeState.SENT, Trade.attempts < attempt_limit()),
        ),
    )
    signal_ids = list(db.session.scalars(without_trade.limit(500))) + list(
        db.session.scalars(unfinished.limit(500))
    )
    for signal_id in signal_ids:
        enqueue_execution(signal_id)
    return len(signal_ids)


# --- reconciliation ---------------------------------------------------------------------------------

RECONCILE_ACCOUNTS = "tradeguard.reconcile_accounts"

# Symbol specifications change rarely; asking for them on every sync would double the terminal calls.
_symbol_cache: dict[tuple[str, str, str], tuple[float, Any]] = {}
_SYMBOL_CACHE_SECONDS = 600.0


def symbol_specs(account: Any, terminal: Any, names: set[str]) -> dict[str, Any]:
    specs: dict[str, Any] = {}
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


# This process's idle terminal connections, reused from sync to sync (see ConnectionPool).
_terminal_pool: Any = None
# This process's threads for syncs: created once, not per batch (see reconcile_accounts).
_sync_threads: ThreadPoolExecutor | None = None
_pools_lock = threading.Lock()


def terminal_pool() -> Any:
    global _terminal_pool
    with _pools_lock:
        if _terminal_pool is None:
            from shared.mt5.pool import ConnectionPool

            _terminal_pool = ConnectionPool()
        return _terminal_pool


def sync_threads() -> ThreadPoolExecutor:
    global _sync_threads
    with _pools_lock:
        if _sync_threads is None:
            settings = flask_app().extensions["tradeguard.settings"]
            _sync_threads = ThreadPoolExecutor(
                max_workers=settings.reconcile_threads, thread_name_prefix="sync"
            )
        return _sync_threads


def _account_password(account: Any) -> str:
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
    box: SecretBox = flask_app().extensions["tradeguard.secret_box"]
    return box.decrypt(credentials_encrypted)


def _account_locks(names: list[str]) -> Any:
    """Redis locks where Redis is the broker (many machines); else Postgres advisory locks, or flocks on
    the embedded setup."""
    from shared.core.locks import exclusive_many, redis_exclusive_many

    settings = flask_app().extensions["tradeguard.settings"]
    if settings.redis_url:
        return redis_exclusive_many(_redis(), names, ttl_seconds=settings.reconcile_lock_seconds)
    return exclusive_many(db.engine, names, lock_dir=settings.instance_dir / "locks")


_redis_client: Any = None
_redis_lock = threading.Lock()


def _redis() -> Any:
    global _redis_client
    if _redis_client is None:
        with _redis_lock:
            if _redis_client is None:
                import redis

                _redis_client = redis.Redis.from_url(flask_app().extensions["tradeguard.settings"].redis_url)
    return _redis_client


def reconcile_tolerances(settings: Any) -> Any:
    """The reconciliation tolerances from the settings (TRADEGUARD_MATCH_*, *_DIVERGENCE_*, ...)."""
    from shared.reconciliation.rules import Tolerances

    return Tolerances(
        match_volume_percent=settings.match_volume_percent,
        match_price_pips=settings.match_price_pips,
        slippage_pips=settings.slippage_pips,
        volume_percent=settings.volume_divergence_percent,
        stop_pips=settings.stop_divergence_pips,
    )


# A batch waits on terminals (each call bounded by the terminal timeout), so it finishes well within
# these; the hard limit stays below the account lock's TTL (TRADEGUARD_RECONCILE_LOCK_SECONDS, 150 s)
# so that no lock expires while its holder is still working.
@celery_app.task(name=RECONCILE_ACCOUNTS, soft_time_limit=100, time_limit=120)
def reconcile_accounts(account_ids: list[int]) -> dict[str, int]:
    """Reconcile a batch of accounts: loaded and written in one transaction each, the terminals asked
    concurrently (the work is waiting on terminals, not CPU), so one slow or failing account does not
    delay the others. Returns how many accounts ended in each status."""
    from shared.reconciliation.breaker import BreakerSettings
    from shared.reconciliation.sync import sync_accounts

    app = flask_app()
    settings = app.extensions["tradeguard.settings"]
    with app.app_context():
        try:
            outcomes = sync_accounts(
                lambda: db.session(),
                account_ids,
                open_terminal=open_pooled_terminal,
                locks=_account_locks,
                symbol_specs=symbol_specs,
                tolerances=reconcile_tolerances(settings),
                breaker=BreakerSettings(
                    failures_to_open=settings.breaker_failures,
                    first_backoff_seconds=settings.breaker_first_backoff_seconds,
                    max_backoff_seconds=settings.breaker_max_backoff_seconds,
                ),
                # The threads only talk to terminals: loading and writing stay on this one.
                executor=sync_threads(),
                # Well inside the soft time limit (100 s), so that stragglers are recorded as failed
                # syncs instead of the limit throwing away every result not yet written.
                give_up_after_seconds=80.0,
            )
        finally:
            db.session.remove()
    return dict(Counter(outcome.status for outcome in outcomes))


@celery_app.task(name="tradeguard.reconcile_tick", base=DatabaseTask)
def reconcile_tick() -> int:
    """Beat's clock: enqueue every account whose breaker is not open, in batches. Each message
    expires at the next tick, so a backlog is dropped rather than piled up behind a slow account."""
    settings = flask_app().extensions["tradeguard.settings"]
    now = utcnow()
    account_ids = list(
        db.session.scalars(
            sa.select(Account.id)
            .outerjoin(AccountSync, AccountSync.account_id == Account.id)
            .where(sa.or_(AccountSync.breaker_open_until.is_(None), AccountSync.breaker_open_until <= now))
            # Stalest first: when a tick cannot finish every account, the ones left over go first next
            # time instead of the same tail being dropped on every tick.
            .order_by(AccountSync.last_synced_at.asc().nulls_first(), Account.id)
        )
    )
    size = settings.reconcile_batch_size
    for start in range(0, len(account_ids), size):
        celery_app.send_task(
            RECONCILE_ACCOUNTS,
            args=[account_ids[start : start + size]],
            expires=settings.reconcile_interval_seconds,
        )
    return len(account_ids)
