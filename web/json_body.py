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
from webargs.flaskparser import FlaskParser, is_json_request

from shared.errors import BadRequest, InvalidInput, UnsupportedMediaType
from web.errors import flatten_locations, invalid_request_message

_NOT_JSON = "Content-Type must be application/json"


def json_body(request: Request) -> Any:
    """The request's JSON body, or BadRequest / UnsupportedMediaType. No body at all reads as an empty
    object, so that validation names the fields it needs."""
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    if not is_json_request(request):
        raise UnsupportedMediaType(_NOT_JSON, fields={"Content-Type": [_NOT_JSON]})
    try:
        return json.loads(raw.decode("utf-8"))
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; nesting too deep for the parser is a
    # RecursionError, which would otherwise be a 500.
    except (ValueError, RecursionError):
        raise BadRequest(invalid_request_message(["body"]), fields={"body": ["Invalid JSON body."]}) from None


def load(schema: ma.Schema, payload: Any) -> dict[str, Any]:
    """`schema.load(payload)`, with validation errors as InvalidInput naming each field ("body" for the
    body as a whole, such as a JSON array where an object belongs), as for every other endpoint."""
    try:
        loaded: dict[str, Any] = schema.load(payload)
    except ma.ValidationError as error:
        fields = flatten_locations({"json": error.normalized_messages()})
        raise InvalidInput(invalid_request_message(fields), fields=fields) from None
    return loaded


class JsonBodyParser(FlaskParser):
    """webargs' Flask parser, reading JSON bodies with `json_body`. webargs' own reading let a body
    nested too deeply through as a RecursionError (a 500), and read a body sent with another
    Content-Type as no body at all."""

    def _raw_load_json(self, req: Request) -> Any:
        return json_body(req)
