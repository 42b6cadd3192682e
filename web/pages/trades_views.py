"""Open positions with attribution, the trades list (filterable) and each trade's timeline."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from flask import render_template, request

from shared.core.errors import NotFound
from shared.execution import queries as trade_queries
from shared.identity.accounts import get_own_account, list_own_accounts
from shared.insight import timeline_queries
from shared.models import TradeState
from shared.reconciliation import queries as position_queries
from web.extensions import db
from web.pages import blp, nav
from web.pages.session import current_user, page_login_required
from web.schemas import PositionViewSchema, decimal_text

nav("pages.positions", "Positions")
nav("pages.trades", "Trades")

PER_PAGE = 50
MAX_PAGE = 1_000_000
MAX_ID = 2**31 - 1
STATES = [state.value for state in TradeState]

# How an outside position was opened (MT5's POSITION_REASON, as the sync names it).
OPENED_FROM = {
    "desktop": "by hand, on the desktop terminal",
    "mobile": "by hand, on the mobile app",
    "web": "by hand, on the web terminal",
    "expert": "by an expert advisor (a program on the terminal)",
}

# What a bad filter says (fixed words, never text from the URL).
BAD_STATE = "That state is not one of the list: showing trades in every state."
BAD_ACCOUNT = "That account is not one of yours: showing trades of every account."

# The API's own representation of a position (decimals as plain text, never with an exponent).
_POSITIONS = PositionViewSchema(many=True)


def _number(value: Any) -> str:
    """A decimal as plain text ("0.1", "1.0855"); a dash for none."""
    return "—" if value is None else decimal_text(value)


def _detail(value: Any) -> str:
    """One of a timeline entry's details as text (lists and nested figures flattened)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_detail(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(_detail(item) for item in value) or "none"
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# --- positions ------------------------------------------------------------------------------------------


def _positions_context() -> dict[str, Any]:
    user = current_user()
    accounts = list_own_accounts(db.session, user)
    return {
        "positions": _POSITIONS.dump(position_queries.own_positions(db.session, user)),
        "account_names": {account.id: account.name for account in accounts},
        "has_accounts": bool(accounts),
        "opened_from": OPENED_FROM,
    }


@blp.get("/positions")
@page_login_required
def positions() -> str:
    return render_template("positions.html", **_positions_context())


@blp.get("/positions/table")
@page_login_required
def positions_table() -> str:
    """The positions alone: what the page fetches every 2 s to stay current."""
    return render_template("_positions_table.html", **_positions_context())


# --- trades ---------------------------------------------------------------------------------------------


def _trades_url(state: str | None, account_id: int | None, page: int) -> str:
    query = {"state": state, "account_id": account_id, "page": page if page > 1 else None}
    kept = {name: value for name, value in query.items() if value is not None}
    return "/trades" + ("?" + urlencode(kept) if kept else "")


def _page_number(raw: str | None) -> int:
    """The page asked for: a bad or missing number is the first page; past the last possible, the last."""
    if not raw or not raw.isascii() or not raw.isdigit():
        return 1
    return MAX_PAGE if len(raw) > 7 else min(max(int(raw), 1), MAX_PAGE)


@blp.get("/trades")
@page_login_required
def trades() -> str:
    user = current_user()
    accounts = list_own_accounts(db.session, user)
    names = {account.id: account.name for account in accounts}
    errors: list[str] = []

    state_text = request.args.get("state") or None
    if state_text is not None and state_text not in STATES:
        errors.append(BAD_STATE)
        state_text = None
    account_text = request.args.get("account_id") or None
    account_id: int | None = None
    if account_text is not None:
        digits = account_text.isascii() and account_text.isdigit() and len(account_text) <= 12
        if digits and int(account_text) in names:
            account_id = int(account_text)
        else:
            errors.append(BAD_ACCOUNT)
    page_number = _page_number(request.args.get("page"))

    listing = trade_queries.list_own_trades(
        db.session,
        user,
        state=TradeState(state_text) if state_text else None,
        account_id=account_id,
        page=page_number,
        per_page=PER_PAGE,
    )
    last_page = max(1, -(-listing.total // PER_PAGE))
    return render_template(
        "trades.html",
        listing=listing,
        accounts=accounts,
        account_names=names,
        states=STATES,
        state=state_text,
        account_id=account_id,
        filtered=state_text is not None or account_id is not None,
        errors=errors,
        last_page=last_page,
        previous_url=_trades_url(state_text, account_id, page_number - 1) if page_number > 1 else None,
        next_url=_trades_url(state_text, account_id, page_number + 1)
        if page_number * PER_PAGE < listing.total
        else None,
        first_url=_trades_url(state_text, account_id, 1),
        number=_number,
    )


def _offset_label(seconds: int) -> str:
    """The trade server's clock against UTC, as people write it: "UTC+2", "UTC-3:30"."""
    if not seconds:
        return "UTC (or its offset is not known yet)"
    sign = "+" if seconds > 0 else "-"
    hours, rest = divmod(abs(seconds), 3600)
    minutes = rest // 60
    return f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")


def _not_found(trade_id: int) -> tuple[str, int]:
    return render_template("trade_not_found.html", trade_id=trade_id), 404


@blp.get("/trades/<int:trade_id>")
@page_login_required
def trade(trade_id: int) -> Any:
    """One trade's fields and its timeline. Another user's trade is not found, as one that does not
    exist is."""
    if not 1 <= trade_id <= MAX_ID:
        return _not_found(trade_id)
    user = current_user()
    try:
        found, offset, entries = timeline_queries.own_trade_timeline(db.session, user, trade_id)
    except NotFound:
        return _not_found(trade_id)
    account = get_own_account(db.session, user, found.account_id)
    timeline = [
        {
            "at": entry.at,
            "broker_time": entry.broker_time,
            "kind": entry.kind,
            "details": [(key, _detail(value)) for key, value in entry.details.items()],
        }
        for entry in entries
    ]
    return render_template(
        "trade.html",
        trade=found,
        account=account,
        broker_offset=_offset_label(offset),
        timeline=timeline,
        number=_number,
    )
