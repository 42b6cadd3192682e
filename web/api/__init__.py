"""One blueprint per resource, each a `Blueprint` from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import flask_smorest
from flask import Flask

from shared.core.config import Settings
from shared.core.extensions import settings
from web.errors import ErrorEnvelopeSchema
from web.json_body import JsonBodyParser

F = TypeVar("F", bound=Callable[..., Any])
# What part of an operation's document says of the app's settings (see Blueprint.settings_doc).
SettingsDoc = Callable[[Settings], Mapping[str, Any]]

# What each error status means, as the OpenAPI document tells clients. A view may say more about one.
ERROR_MEANINGS = {
    400: "the body cannot be read: not UTF-8, not JSON (NaN and Infinity are not JSON either), nested "
    "too deeply, or with a key given twice (named in `fields`)",
    401: "the bearer token is missing, invalid or expired",
    403: "administrators only",
    404: "no such row of yours (other users' rows are not found either)",
    409: "conflicts with the current state",
    413: "the body is larger than 64 KiB",
    415: "the body is not sent with Content-Type: application/json",
    422: "a field breaks a rule; `fields` names each one",
    429: "too many attempts; wait as long as the Retry-After header says",
    503: "the database is unavailable; nothing was stored, send the request again shortly",
}

# Headers an error status always carries, documented with it.
ERROR_HEADERS = {
    429: {
        "Retry-After": {
            "description": "seconds to wait",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}

# The statuses every view that reads a JSON body can answer before it looks at a field (`@blp.arguments`
# documents the 422 itself).
BODY_ERRORS = (400, 413, 415)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, whose `@arguments` read JSON bodies with TradeGuard's parser."""

    ARGUMENTS_PARSER = JsonBodyParser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # flask-smorest runs these (its own: arguments, responses, ...) for each operation whenever an app
        # registers the blueprint, i.e. once per app's document.
        self._prepare_doc_cbks.append(self._prepare_settings_doc)

    @staticmethod
    def settings_doc(build: SettingsDoc) -> Callable[[F], F]:
        """Like `doc`, for what the document says of a setting (a limit the API enforces): `build` is
        given the app's Settings when that app's document is made, so the document states the value this
        deployment enforces rather than a copy of its default. Its keys replace the same keys given to
        `doc`."""

        def document(view: F) -> F:
            # `_apidoc` is where flask-smorest's decorators leave a view's documentation for the blueprint.
            view.__dict__["_apidoc"] = {**view.__dict__.get("_apidoc", {}), "settings_doc": build}
            return view

        return document

    @staticmethod
    def _prepare_settings_doc(
        doc: dict[str, Any], doc_info: dict[str, Any], *, app: Flask, **_: Any
    ) -> dict[str, Any]:
        build: SettingsDoc | None = doc_info.get("settings_doc")
        if build is not None:
            # doc_info is this registration's own copy; its manual_doc (what `doc` gave) is merged into
            # the operation after every callback has run.
            built = build(settings(app))
            doc_info["manual_doc"] = {**doc_info.get("manual_doc", {}), **built}
        return doc

    def errors(self, *statuses: int | tuple[int, str]) -> Callable[[F], F]:
        """Documents the error statuses a view answers, each with the error envelope: a status alone
        takes its meaning from ERROR_MEANINGS, `(status, "meaning")` says it for this view. A status a
        view answers but does not document fails test_openapi_conformance.py when it meets one."""

        def document(view: F) -> F:
            for entry in statuses:
                status, meaning = entry if isinstance(entry, tuple) else (entry, ERROR_MEANINGS[entry])
                view = self.alt_response(
                    status, schema=ErrorEnvelopeSchema, description=meaning, headers=ERROR_HEADERS.get(status)
                )(view)
            return view

        return document
