"""Every error leaves the API as JSON: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask, Response, jsonify
from flask_smorest import Api
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from shared.errors import TradeGuardError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def error_response(
    status: int, message: str, code: str | None = None, fields: Mapping[str, Any] | None = None
) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code or _CODES.get(status, "error"), "message": message}
    if fields:
        body["fields"] = dict(fields)
    return jsonify({"error": body}), status


def flatten_locations(messages: Mapping[str, Any]) -> dict[str, Any]:
    """webargs keys errors by location ({"json": {"volume": [...]}}); clients want the field names."""
    fields: dict[str, Any] = {}
    for location, errors in messages.items():
        if isinstance(errors, Mapping):
            for name, problems in errors.items():
                fields["body" if name == "_schema" else name] = problems
        else:
            fields[location] = errors
    return fields


def invalid_request_message(fields: Iterable[str]) -> str:
    return "invalid request: " + ", ".join(sorted(fields))


class TradeGuardApi(Api):
    """flask-smorest's Api with TradeGuard's error envelope instead of its own."""

    def handle_http_exception(self, error: HTTPException) -> Any:
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        messages = data.get("messages") or data.get("errors")
        if messages:
            fields = flatten_locations(messages)
            return error_response(status, invalid_request_message(fields), fields=fields)
        message = data.get("message") or error.description or error.name
        return error_response(status, message)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(TradeGuardError)
    def _domain_error(error: TradeGuardError) -> tuple[Response, int]:
        return error_response(error.http_status, error.message, error.code, error.fields)

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.TimeoutError)
    def _database_unavailable(error: Exception) -> tuple[Response, int]:
        # The database is down, restarting or out of connections: nothing was stored, and the same
        # request (with its Idempotency-Key) can safely be sent again.
        log.warning("database unavailable: %s", error)
        return error_response(
            503, "the database is unavailable; nothing was stored, retry shortly", "unavailable"
        )

    try:
        import psycopg2

        # The ingest hot path talks to psycopg2 directly, so its errors arrive unwrapped.
        app.register_error_handler(psycopg2.OperationalError, _database_unavailable)
        app.register_error_handler(psycopg2.InterfaceError, _database_unavailable)
    except ImportError:  # pragma: no cover - psycopg2 is a requirement
        pass

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return error_response(error.code or 500, error.description or error.name)
        log.exception("unhandled error")
        return error_response(500, "internal error; the operator has the details in the log")
