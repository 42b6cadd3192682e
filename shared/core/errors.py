"""Errors the domain raises. The web layer maps each to an HTTP status; workers log them.

Each docstring says what the caller (or the operator reading the log) should do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class TradeGuardError(Exception):
    """Base class. `code` is a stable machine-readable name; the message is for people."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, fields: Mapping[str, Sequence[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = dict(fields) if fields else None


class BadRequest(TradeGuardError):
    """The request body cannot be read at all (not JSON, or not UTF-8). Send a JSON object."""

    code = "bad_request"
    http_status = 400


class UnsupportedMediaType(TradeGuardError):
    """The body is not sent as JSON. Send it with `Content-Type: application/json`."""

    code = "unsupported_media_type"
    http_status = 415


class InvalidInput(TradeGuardError):
    """The request is well-formed but breaks a rule; `fields` names each offending field. Fix and resend."""

    code = "validation_error"
    http_status = 422


class NotAuthenticated(TradeGuardError):
    """Credentials, token or request signature are missing, wrong or stale. Sign in or re-sign the request."""

    code = "unauthorized"
    http_status = 401


class Forbidden(TradeGuardError):
    """Authenticated but not allowed (e.g. an admin-only endpoint). Ask an administrator."""

    code = "forbidden"
    http_status = 403


class NotFound(TradeGuardError):
    """No such row visible to you. Other users' rows are reported as not found, never as forbidden."""

    code = "not_found"
    http_status = 404


class Conflict(TradeGuardError):
    """The request clashes with current state (already decided, expired, replayed).

    Reload the row and decide again; a replayed signal must be re-signed or sent with its key."""

    code = "conflict"
    http_status = 409


class Unavailable(TradeGuardError):
    """The request could not be handled now (the database is stuck or down); nothing was stored.

    Send it again shortly, with the same Idempotency-Key, so that it cannot be stored twice."""

    code = "unavailable"
    http_status = 503


def dotted_field_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error messages as one level of dotted field names, as clients read them:
    {"drawdown_limits": {0: {"max_percent": [...]}}} becomes {"drawdown_limits.0.max_percent": [...]}.
    A schema-level error (`_schema`) belongs to the object that holds it, `body` at the top."""
    if isinstance(messages, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            inner = f"{prefix}.{key}" if prefix else str(key)
            name = (prefix or "body") if key == "_schema" else inner
            for field, problems in dotted_field_errors(value, name).items():
                flat.setdefault(field, []).extend(problems)
        return flat
    problems = messages if isinstance(messages, list) else [messages]
    return {prefix or "body": [str(problem) for problem in problems]}
