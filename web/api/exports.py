"""CSV files of the caller's rows, for accountants and spreadsheets; streamed, never built in memory."""

from __future__ import annotations

import itertools
from typing import Any

from flask import Response, stream_with_context

from shared.identity.accounts import get_own_account
from shared.insight import exports
from web.api import Blueprint
from web.auth import current_user, login_required
from web.extensions import db
from web.schemas import AccountRangeQuerySchema

blp = Blueprint(
    "exports",
    __name__,
    url_prefix="/api/v1/exports",
    description="CSV exports of trades and reconciliation events",
)

CSV_RESPONSE = {
    "description": "the rows as CSV (RFC 4180, header row first, UTC ISO-8601 timestamps with Z, decimals as "
    "stored; text that would start a spreadsheet formula is escaped with a leading apostrophe)",
    "content": {"text/csv": {"schema": {"type": "string"}}},
}


def _export(export: exports.Export, query: dict[str, Any]) -> Response:
    owner = current_user()
    if query["account_id"] is not None:
        get_own_account(db.session, owner, query["account_id"])  # another user's account is 404
    statement = exports.statement(
        export, owner, account_id=query["account_id"], start=query["start"], end=query["end"]
    )
    chunks = exports.stream(db.engine, export, statement)
    header = next(chunks)  # runs the query: a database that fails answers 503 here, before any byte is sent
    response = Response(stream_with_context(itertools.chain([header], chunks)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


@blp.get("/trades.csv")
@login_required
@blp.arguments(AccountRangeQuerySchema, location="query")
@blp.doc(responses={"200": CSV_RESPONSE})
@blp.errors(401, 404, 503)
def trades_csv(query: dict[str, Any]) -> Response:
    """The caller's trades created in [from, to), of one account when `account_id` is given, oldest first."""
    return _export(exports.TRADES, query)


@blp.get("/reconciliation.csv")
@login_required
@blp.arguments(AccountRangeQuerySchema, location="query")
@blp.doc(responses={"200": CSV_RESPONSE})
@blp.errors(401, 404, 503)
def reconciliation_csv(query: dict[str, Any]) -> Response:
    """The caller's reconciliation events recorded in [from, to), of one account when `account_id` is
    given, oldest first: the same rows GET /api/v1/reconciliation/{account_id} pages through."""
    return _export(exports.RECONCILIATION, query)
