"""Liveness and readiness probes."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from web.api import Blueprint
from web.extensions import db, task_queue
from web.schemas import HealthSchema

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, url_prefix="", description="Probes")


@blp.get("/healthz")
@blp.doc(security=[])
@blp.response(200, HealthSchema)
def healthz() -> Any:
    """The process is up. Touches nothing else, so a slow database never restarts the web server."""
    return {"status": "ok", "checks": {}}


@blp.get("/readyz")
@blp.doc(security=[])
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="database or broker unreachable")
def readyz() -> Any:
    """Ready to serve: the database answers and the Celery broker accepts a connection."""
    checks: dict[str, str] = {}
    try:
        db.session.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready", and is reported, not raised
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = f"error: {type(exc).__name__}"
    finally:
        db.session.rollback()
    try:
        task_queue().check_broker(timeout_seconds=2)
        checks["broker"] = "ok"
    except Exception as exc:
        log.warning("readiness: broker unreachable: %s", exc)
        checks["broker"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return {"status": "ok" if ready else "unavailable", "checks": checks}, (200 if ready else 503)
