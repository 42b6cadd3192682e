"""Per-app singletons kept on `app.extensions`, with typed accessors for views."""

from __future__ import annotations

from typing import cast

from flask import current_app

from shared.core.config import Settings
from shared.core.crypto import SecretBox
from shared.core.db import db
from shared.signals.auth import ClientKeyCache

__all__ = ["client_keys", "db", "declared_terminals", "secret_box", "settings"]


def settings() -> Settings:
    return cast(Settings, current_app.extensions["tradeguard.settings"])


def secret_box() -> SecretBox:
    return cast(SecretBox, current_app.extensions["tradeguard.secret_box"])


def client_keys() -> ClientKeyCache:
    return cast(ClientKeyCache, current_app.extensions["tradeguard.client_keys"])


def declared_terminals() -> frozenset[str]:
    """The canonical URLs of the terminals the operator declared (TRADEGUARD_TERMINALS)."""
    return cast(frozenset[str], current_app.extensions["tradeguard.terminals"])
