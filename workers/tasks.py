"""Celery tasks. Each is a thin wrapper: it takes ids (or nothing), reloads rows and calls shared/."""

from __future__ import annotations

import logging

from shared.db import db
from shared.signals import expire_due_signals
from workers.celery_app import DatabaseTask, celery_app

log = logging.getLogger(__name__)


@celery_app.task(name="tradeguard.expire_signals", base=DatabaseTask)
def expire_signals() -> int:
    """Beat's sweep: pending signals past their time-to-live become `expired`. Safe to run twice."""
    expired = expire_due_signals(db.session)
    if expired:
        log.info("expired %d pending signal(s): %s", len(expired), expired[:20])
    return len(expired)
