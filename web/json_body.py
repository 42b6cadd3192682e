"""JSON request bodies: parsed once, and every way a body can be unreadable answered as a 4xx.

Used by the signal endpoint, which parses its body itself (see `web.api.signals`), and by the
webargs parser that every other endpoint's `@blp.arguments` goes through (`JsonBodyParser`), so the
two answer the same body the same way.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import Request
from webargs.flaskparser import FlaskParser, is_json_request

from shared.core.errors import BadRequest, InvalidInput, UnsupportedMediaType
from web.errors import flatten_locations, invalid_request_message

_NOT_JSON = "Content-Type must be application/json"


class DuplicateKey(ValueError):
    """A JSON object names the same key twice. Python keeps the last value and a client's parser may
    keep the first, so the body would say two different things: send each key once."""

    def __init__(self, key: str):
        super().__init__(f"the key {key!r} is given twice")
        self.key = key


class NotJsonConstant(ValueError):
    """NaN, Infinity or -Infinity in a body: Python's json reads them, but they are not JSON. Send
    numbers (or, for decimals, strings of digits)."""

    def __init__(self, token: str):
        super().__init__(f"{token} is not JSON")


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def _refuse_constant(token: str) -> Any:
    raise NotJsonConstant(token)


# One decoder for every body: a fraction is read as a Decimal, never a float, so "volume": 0.1 is 0.1
# and not 0.1000000000000000055...; an integer stays an int. Built once: json.loads(..., **options)
# would build a decoder on every call, and signal ingest is benchmarked (bench/ingest.py).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_once, parse_float=Decimal, parse_constant=_refuse_constant
)


def parse_json(text: str) -> Any:
    """`text` as JSON, strictly: DuplicateKey for a key given twice in any object, NotJsonConstant for
    NaN/Infinity, another ValueError for anything else that is not JSON."""
    return _DECODER.decode(text)


def json_body(request: Request) -> Any:
    """The request's JSON body, or BadRequest / UnsupportedMediaType. No body at all reads as an empty
    object, so that validation names the fields it needs."""
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    if not is_json_request(request):
        raise UnsupportedMediaType(_NOT_JSON, fields={"Content-Type": [_NOT_JSON]})
    try:
        return parse_json(raw.decode("utf-8"))
    except DuplicateKey as error:
        raise BadRequest(
            f"invalid request: {error.key} is given twice in the body", fields={error.key: ["given twice"]}
        ) from None
    except NotJsonConstant as error:
        raise BadRequest(invalid_request_message(["body"]), fields={"body": [str(error)]}) from None
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
