"""One blueprint per resource, each a `Blueprint` from here."""

from __future__ import annotations

import flask_smorest

from web.json_body import JsonBodyParser


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, whose `@arguments` read JSON bodies with TradeGuard's parser."""

    ARGUMENTS_PARSER = JsonBodyParser()
