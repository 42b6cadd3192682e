"""Every error leaves the API as JSON: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import marshmallow as ma
from flask import Flask, Response, jsonify
from flask_smorest import Api
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from shared.core.errors import TradeGuardError, dotted_field_errors

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


def error_envelope(
    status: int, message: str, code: str | None = None, fields: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The body of every error TradeGuard answers, from Flask or from gunicorn (web.gunicorn_conf)."""
    body: dict[str, Any] = {"code": code or _CODES.get(status, "error"), "message": message}
    if fields:
        body["fields"] = dict(fields)
    return {"error": body}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    fields: Mapping[str, Any] | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> tuple[Response, int]:
    response = jsonify(error_envelope(status, message, code, fields))
    response.headers.extend(headers)
    return response, status


def _headers_of(error: HTTPException) -> list[tuple[str, str]]:
    """The headers werkzeug gives an HTTP error, less its HTML Content-Type: `Allow` on a 405 (the
    methods the URL takes), `Retry-After` on a 429 or 503, `WWW-Authenticate` on a 401."""
    return [(name, value) for name, value in error.get_headers() if name.lower() != "content-type"]


class ErrorDetailSchema(ma.Schema):
    code = ma.fields.String(
        required=True, metadata={"description": "stable machine-readable name, such as validation_error"}
    )
    message = ma.fields.String(required=True, metadata={"description": "for people"})
    # "fields" on the wire; a schema attribute of that name would hide marshmallow's own `fields`.
    problems = ma.fields.Dict(
        data_key="fields",
        keys=ma.fields.String(),
        values=ma.fields.List(ma.fields.String()),
        metadata={
            "description": "each offending field, header or `body` (the body as a whole), with its problems"
        },
    )


class ErrorEnvelopeSchema(ma.Schema):
    """What every error response carries: `{"error": {"code", "message", "fields"?}}`. Documentation only:
    `error_envelope` writes it."""

    error = ma.fields.Nested(ErrorDetailSchema, required=True)


def flatten_locations(messages: Mapping[str, Any]) -> dict[str, Any]:
    """webargs keys errors by location ({"json": {"volume": [...]}}); clients want the field names, a
    nested one dotted (`drawdown_limits.0.max_percent`)."""
    fields: dict[str, Any] = {}
    for location, errors in messages.items():
        if isinstance(errors, Mapping):
            fields.update(dotted_field_errors(errors))
        else:
            fields[location] = errors
    return fields


def invalid_request_message(fields: Iterable[str]) -> str:
    return "invalid request: " + ", ".join(sorted(fields))


class TradeGuardApi(Api):
    """flask-smorest's Api with TradeGuard's error envelope instead of its own, in the responses and in
    the OpenAPI document."""

    # The schema of flask-smorest's own error responses (the 422 `@blp.arguments` documents);
    # `Blueprint.errors` documents every other error status with it too.
    ERROR_SCHEMA = ErrorEnvelopeSchema
    # No catch-all `default` response: each operation lists the statuses it can answer, so a status it
    # does not list is a bug the conformance test (test_openapi_conformance.py) reports.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, **kwargs: Any) -> None:
        from web.schemas import ExactDecimal, decimal_properties

        # Decimals: documented by decimal_properties, as the strings they are sent as; ExactDecimal
        # (accepted as a number or a string) gets no single `type` of its own.
        self.register_field(ExactDecimal, None, None)
        super().init_app(app, **kwargs)
        self.ma_plugin.converter.add_attribute_function(decimal_properties)

    def handle_http_exception(self, error: HTTPException) -> Any:
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        headers = [*_headers_of(error), *dict(data.get("headers") or {}).items()]
        messages = data.get("messages") or data.get("errors")
        if messages:
            fields = flatten_locations(messages)
            return error_response(status, invalid_request_message(fields), fields=fields, headers=headers)
        message = data.get("message") or error.description or error.name
        return error_response(status, message, headers=headers)


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

    from shared.identity.key_check import KeysDoNotMatch

    @app.errorhandler(KeysDoNotMatch)
    def _wrong_keys(error: KeysDoNotMatch) -> tuple[Response, int]:
        # This process started while the database could not be asked (shared.identity.key_check), and its keys
        # turned out not to be the data's: nothing was stored; another web process may answer.
        log.critical("refusing to use secrets: %s", error)
        return error_response(
            503,
            "this server's keys do not match the stored data's; nothing was stored. The operator must fix "
            "its TRADEGUARD_ENCRYPTION_KEY / TRADEGUARD_JWT_SECRET",
            "keys_do_not_match",
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
            return error_response(
                error.code or 500, error.description or error.name, headers=_headers_of(error)
            )
        log.exception("unhandled error")
        return error_response(500, "internal error; the operator has the details in the log")
