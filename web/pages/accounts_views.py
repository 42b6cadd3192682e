"""Accounts (sync, equity, drawdown bars, guard state, the alert countdown), alerts history and the
equity chart."""

from __future__ import annotations

from typing import Any

from flask import Response, abort, render_template, request

from shared.core.db import utcnow
from shared.core.errors import NotFound
from shared.guards import queries as guard_queries
from shared.identity.accounts import list_own_accounts
from shared.insight import account_pages, chart, chart_queries
from web.extensions import db
from web.pages import blp, nav
from web.pages.session import current_user, page_login_required

nav("pages.accounts", "Accounts")
nav("pages.alerts", "Alerts")

ALERTS_PER_PAGE = 50


def _overviews() -> list[account_pages.AccountOverview]:
    return account_pages.account_overviews(db.session, current_user(), utcnow())


@blp.get("/accounts")
@page_login_required
def accounts() -> str:
    return render_template("accounts.html", overviews=_overviews())


@blp.get("/accounts/table")
@page_login_required
def accounts_table() -> str:
    """The accounts alone: what the page fetches every 2 s, so an alert's close shows without a reload."""
    return render_template("_accounts_table.html", overviews=_overviews())


@blp.get("/accounts/<int:account_id>/equity.png")
@page_login_required
def account_equity_chart(account_id: int) -> Response:
    """The account's equity chart over its whole history, as `GET /api/v1/charts/equity.png` draws it;
    another user's account is 404."""
    try:
        data = chart_queries.equity_chart(db.session, current_user(), account_id)
    except NotFound:
        abort(404, description="no such account of yours")
    image = data.render("png")
    response = Response(image, mimetype=chart.MEDIA_TYPES["png"])
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@blp.get("/alerts")
@page_login_required
def alerts() -> str:
    """The alerts the guards raised on own accounts, newest first; one account's with `?account_id=`."""
    page = max(1, request.args.get("page", 1, type=int) or 1)
    accounts: dict[int, Any] = {
        account.id: account for account in list_own_accounts(db.session, current_user())
    }
    account_id = request.args.get("account_id", type=int)
    if account_id not in accounts:
        account_id = None  # someone else's, or none: every own alert
    listing = guard_queries.list_own_alerts(
        db.session,
        current_user(),
        account_id=account_id,
        status=None,
        since=None,
        page=page,
        per_page=ALERTS_PER_PAGE,
    )
    return render_template("alerts.html", listing=listing, accounts=accounts, account_id=account_id)
