"""Handing approved signals to the workers: once, right after the approval commits, and again by
beat's safety net for any whose message was lost. Sending twice is harmless (execution is idempotent);
never sending is what this guards against."""

from __future__ import annotations

import logging
import time
from datetime import datetime

import sqlalchemy as sa

from shared.core.db import DbSession, after_commit
from shared.core.queue import EXECUTE_SIGNAL, Queue
from shared.execution.timing import PUBLISHED_AT
from shared.models import Signal, SignalStatus, Trade, TradeState

log = logging.getLogger(__name__)

# One sweep's most: the rest wait for the next tick rather than making one huge burst of messages.
SWEEP_LIMIT = 500


def enqueue_execution(queue: Queue, signal_id: int) -> None:
    # The message says when it was sent, so the worker can log how long it waited (shared.execution.timing).
    queue.send(EXECUTE_SIGNAL, [signal_id], headers={PUBLISHED_AT: time.time()})


def enqueue_execution_after_commit(session: DbSession, queue: Queue, signal_id: int) -> None:
    """Send the execution task once the approval is committed, so the worker always finds it. A broker
    that refuses it does not undo the approval: the safety net (`signals_to_dispatch`) sends it
    again shortly."""

    def send() -> None:
        try:
            enqueue_execution(queue, signal_id)
        except Exception:
            log.exception(
                "could not enqueue execution of signal %s; the dispatch sweep will retry", signal_id
            )

    after_commit(session, send)


def signals_to_dispatch(session: DbSession, *, cutoff: datetime, attempt_limit: int) -> list[int]:
    """The approved signals, decided before `cutoff`, that have no trade yet, or whose trade is
    unfinished and untouched since `cutoff`.

    A `sent` trade that has used up its attempts is left out: its order may exist, so no run may mark it
    failed (`service.give_up`), and each run would only fail again, every tick, for ever. It stays `sent`
    for reconciliation to settle. A `pending` one is included (it is pending at its limit only when
    giving up lost a race): a run either executes it or, failing, gives it up (`failed`), so it does not
    come back."""
    without_trade = sa.select(Signal.id).where(
        Signal.status == SignalStatus.APPROVED,
        Signal.decided_at < cutoff,
        ~sa.exists().where(Trade.signal_id == Signal.id),
    )
    unfinished = sa.select(Trade.signal_id).where(
        Trade.updated_at < cutoff,
        sa.or_(
            Trade.state == TradeState.PENDING,
            sa.and_(Trade.state == TradeState.SENT, Trade.attempts < attempt_limit),
        ),
    )
    return list(session.scalars(without_trade.limit(SWEEP_LIMIT))) + list(
        session.scalars(unfinished.limit(SWEEP_LIMIT))
    )
