"""Celery tasks. Each is a thin wrapper: it takes ids (or nothing), reloads rows and calls shared/."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from celery import Task

from shared import execution
from shared.crypto import SecretBox
from shared.db import db, utcnow
from shared.models import Account, Signal, SignalStatus, Trade, TradeState
from shared.mt5.errors import PermanentTerminalError, RetryableTerminalError
from shared.signals import expire_due_signals
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
def open_terminal(account: Account) -> Iterator[Any]:
    """The account's terminal, logged in, for the duration of the block."""
    from shared.mt5.gateway import Gateway

    app = flask_app()
    settings = app.extensions["tradeguard.settings"]
    box: SecretBox = app.extensions["tradeguard.secret_box"]
    with Gateway.open(
        account.terminal_url,
        login=account.login,
        password=box.decrypt(account.credentials_encrypted),
        server=account.server,
        timeout=settings.terminal_timeout_seconds,
    ) as gateway:
        yield gateway


def execution_settings() -> execution.ExecutionSettings:
    settings = flask_app().extensions["tradeguard.settings"]
    return execution.ExecutionSettings(
        magic=settings.magic,
        deviation_points=settings.deviation_points,
        max_price_retries=settings.max_price_retries,
        unknown_outcome_grace_seconds=settings.unknown_outcome_grace_seconds,
        lock_dir=settings.instance_dir / "locks",
    )


def retry_countdown(retries: int) -> float:
    """Exponential back-off between attempts on an unreachable terminal: 1, 2, 4, ... up to 30 s."""
    return float(min(30, 2**retries))


@celery_app.task(name=EXECUTE_SIGNAL, base=DatabaseTask, bind=True, max_retries=None)
def execute_signal(self: Task, signal_id: int) -> str | None:
    """Send the approved signal's order, at most once. Retries only what is retryable (terminal
    unreachable, timed out, outcome unknown, trade busy in another worker)."""
    max_retries = flask_app().extensions["tradeguard.settings"].execution_max_retries
    try:
        trade = execution.execute_signal(
            db.session,
            signal_id,
            engine=db.engine,
            open_terminal=open_terminal,
            settings=execution_settings(),
        )
    except PermanentTerminalError as exc:
        # Wrong credentials, unknown symbol, no MetaTrader5 package here: retrying cannot help.
        db.session.rollback()
        trade = execution.give_up(db.session, signal_id, f"{type(exc).__name__}: {exc}")
        return trade.state.value if trade else None
    except (RetryableTerminalError, execution.TerminalRetryLater) as exc:
        db.session.rollback()
        if self.request.retries >= max_retries:
            log.error("signal %s: giving up after %d retries: %s", signal_id, self.request.retries, exc)
            trade = execution.give_up(db.session, signal_id, f"terminal unreachable: {exc}")
            return trade.state.value if trade else None
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc
    return trade.state.value if trade else None


def enqueue_execution(signal_id: int) -> None:
    celery_app.send_task(EXECUTE_SIGNAL, args=[signal_id])


@celery_app.task(name="tradeguard.dispatch_approved", base=DatabaseTask)
def dispatch_approved(older_than_seconds: float = 30.0) -> int:
    """Beat's safety net: an approved signal whose execution message was lost (broker down at the
    moment of approval, a purged queue) is enqueued again. Harmless when the first message is still
    on its way: execution is idempotent."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    without_trade = sa.select(Signal.id).where(
        Signal.status == SignalStatus.APPROVED,
        Signal.decided_at < cutoff,
        ~sa.exists().where(Trade.signal_id == Signal.id),
    )
    unfinished = sa.select(Trade.signal_id).where(
        Trade.state.in_([TradeState.PENDING, TradeState.SENT]), Trade.updated_at < cutoff
    )
    signal_ids = list(db.session.scalars(without_trade.limit(500))) + list(
        db.session.scalars(unfinished.limit(500))
    )
    for signal_id in signal_ids:
        enqueue_execution(signal_id)
    return len(signal_ids)
