"""Per-app singletons kept on `app.extensions`, with typed accessors for views. The ones the workers
read too are defined in `shared.core.extensions`."""

from __future__ import annotations

from typing import cast

from flask import current_app

from shared.core.db import db
from shared.core.extensions import declared_terminals, secret_box, settings, task_queue
from shared.signals.auth import ClientKeyCache

__all__ = ["CLIENT_KEYS", "client_keys", "db", "declared_terminals", "secret_box", "settings", "task_queue"]

CLIENT_KEYS = "tradeguard.client_keys"


def client_keys() -> ClientKeyCache:
    return cast(ClientKeyCache, current_app.extensions[CLIENT_KEYS])
