"""What a process keeps on its Flask app, one key per fact, with a typed accessor for each: the views
and the workers read them alike. (The app is built by `web.create_app`, in the web and in each worker
process.)"""

from __future__ import annotations

from typing import cast

from flask import Flask, current_app

from shared.core.config import Settings
from shared.core.crypto import SecretBox
from shared.core.queue import Queue

SETTINGS = "tradeguard.settings"
SECRET_BOX = "tradeguard.secret_box"  # noqa: S105 - the key it is kept under, not a secret
TERMINALS = "tradeguard.terminals"
TASK_QUEUE = "tradeguard.task_queue"


def _app(app: Flask | None) -> Flask:
    return app if app is not None else current_app


def settings(app: Flask | None = None) -> Settings:
    return cast(Settings, _app(app).extensions[SETTINGS])


def secret_box(app: Flask | None = None) -> SecretBox:
    return cast(SecretBox, _app(app).extensions[SECRET_BOX])


def declared_terminals(app: Flask | None = None) -> frozenset[str]:
    """The canonical URLs of the terminals the operator declared (TRADEGUARD_TERMINALS)."""
    return cast(frozenset[str], _app(app).extensions[TERMINALS])


def task_queue(app: Flask | None = None) -> Queue:
    return cast(Queue, _app(app).extensions[TASK_QUEUE])
