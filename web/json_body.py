"""JSON request bodies: parsed once, and every way a body can be unreadable answered as a 4xx.

Used by the signal endpoint, which parses its body itself (see `web.api.signals`), and by the
webargs parser that every other endpoint's `@blp.arguments` goes through (`JsonBodyParser`), so the
two answer the same body the same way.
"""

from __future__ import annotations

import json
from typing import Any

import marshmallow as ma
from flask import Request
from webargs import core
from webargs.flaskparser import FlaskParser, abort, is_json_request

from shared.errors import BadRequest, InvalidInput, UnsupportedMediaType

_NOT_JSON = "Content-Type must be application/json"
_INVALID_JSON = "Invalid JSON body."


def decode_json(raw: bytes) -> Any:
    """The JSON document in `raw` (UTF-8). ValueError when it is not one, including nesting too deep
    for the parser, which Python reports as a RecursionError, not as bad JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def json_body(request: Request) -> Any:
    """The request's JSON body, or BadRequest / UnsupportedMediaType. No body at all reads as an empty
    object, so that validation names the fields it needs."""
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    if not is_json_request(request):
        raise UnsupportedMediaType(_NOT_JSON, fields={"Content-Type": [_NOT_JSON]})
    try:
        return decode_json(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequest("invalid request: body", fields={"body": [_INVALID_JSON]}) from None


def load(schema: ma.Schema, payload: Any) -> dict[str, Any]:
    """`schema.load(payload)`, with validation errors as InvalidInput naming each field ("body" for the
    body as a whole, such as a JSON array where an object belongs)."""
    try:
        loaded: dict[str, Any] = schema.load(payload)
    except ma.ValidationError as error:
        messages = error.normalized_messages()
        fields = {("body" if name == "_schema" else name): problems for name, problems in messages.items()}
        raise InvalidInput("invalid request: " + ", ".join(sorted(fields)), fields=fields) from None
    return loaded


class JsonBodyParser(FlaskParser):
    """webargs' Flask parser, reading JSON bodies with `decode_json`: a body nested too deeply is a
    400 like any other invalid JSON (webargs' own parser let the RecursionError through, a 500), and a
    body sent with another Content-Type is a 415 rather than read as no body at all."""

    def _raw_load_json(self, req: Request) -> Any:
        raw = req.get_data(cache=True)
        if not is_json_request(req):
            if raw:
                abort(415, messages={"Content-Type": [_NOT_JSON]})
            return core.missing
        if not raw:
            return core.missing
        try:
            return decode_json(raw)
        except ValueError:
            abort(400, messages={"body": [_INVALID_JSON]})
