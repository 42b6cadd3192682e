"""The account's risk settings as a form, and the owner's webhooks.

Risk settings: the form is the API's document (`GET/PUT /api/v1/accounts/{id}/risk`) spelled as inputs
named by the API's own dotted field names (`drawdown_limits.0.max_percent`), so that a 422's `fields`
land next to the inputs they name. Saving goes through `risk_settings.save_risk_settings`, the function
the API's PUT calls: the same validation, the same messages, who saved it and the audit row.

Webhooks: `shared.notifications.webhooks`, called as `web.api.webhooks` calls it (the deployment's
`webhook_allow_private` included). The signing secret is on the page that answers the creation only: it
is stored encrypted and never shown again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Response, abort, make_response, redirect, render_template, request
from werkzeug.datastructures import MultiDict

from shared.core.errors import Conflict, InvalidInput, NotFound
from shared.guards import risk_settings
from shared.guards.settings import LIMIT_ACTIONS, MARKET_ACTIONS, PERIODS, REFERENCES, RESUMES
from shared.identity.accounts import get_own_account, list_own_accounts
from shared.models import Account, Webhook
from shared.notifications import webhooks
from shared.notifications.events import ALL_EVENTS
from web.extensions import db, secret_box, settings
from web.pages import blp, nav
from web.pages.session import current_user, page_login_required

nav("pages.risk", "Risk settings")
nav("pages.webhooks", "Webhooks")

# What a redirect may say (a code, never text from the URL).
NOTICES = {
    "saved": "Saved: the guards use the new settings from their next check.",
    "unchanged": "Nothing changed: the settings are as they were.",
    "webhook_deleted": "Webhook deleted: it receives nothing more, and its pending deliveries stopped.",
}

# --- risk settings ----------------------------------------------------------------------------------------

LIMIT_NUMBERS = ("warn_percent", "max_percent", "max_amount")
LIMIT_CHOICES: dict[str, tuple[str, ...]] = {
    "period": PERIODS,
    "reference": REFERENCES,
    "action": LIMIT_ACTIONS,
    "resume": RESUMES,
}
LIMIT_KEYS = ("name", "period", "reference", *LIMIT_NUMBERS, "action", "resume")
TOP_NUMBERS = ("grace_seconds", "confirmations", "min_margin_level_percent")
MARKET_NUMBERS = ("max_spread_pips", "max_gap_pips", "stale_quote_seconds")
ORDER_NUMBERS = (
    "max_lots_per_order",
    "max_open_positions",
    "max_total_lots",
    "max_orders_per_minute",
    "max_risk_percent_per_trade",
)

_LIMIT_FIELD = re.compile(r"drawdown_limits\.([0-9]{1,6})\.")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_ID = re.compile(r"[0-9]{1,10}")
# Longer than any value the settings take: sent as typed, for the validation to name.
_LONGEST_NUMBER = 50


def _text(value: Any) -> str:
    """A stored value as its input shows it: null as an empty field."""
    return "" if value is None else str(value)


def _number(text: str) -> Any:
    """What a number input means in the document: empty is null, digits an integer, a decimal a Decimal
    (as the API's JSON reads a fraction). Anything else goes as the text typed, and the validation names
    it as it would in a JSON body ("Not a valid number.")."""
    if not text:
        return None
    if len(text) > _LONGEST_NUMBER:
        return text
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    return value if value.is_finite() else text


def _symbols(text: str) -> list[str] | None:
    """The comma list of symbols: empty is null (every symbol)."""
    symbols = [item.strip() for item in text.split(",") if item.strip()]
    return symbols or None


def _values_of(document: dict[str, Any]) -> tuple[dict[str, str], int]:
    """The form's inputs for a stored document, by field name, and how many limits it has."""
    values = {key: _text(document.get(key)) for key in TOP_NUMBERS}
    limits = document.get("drawdown_limits") or []
    for index, limit in enumerate(limits):
        for key in LIMIT_KEYS:
            values[f"drawdown_limits.{index}.{key}"] = _text(limit.get(key))
    market = document.get("market") or {}
    for key in (*MARKET_NUMBERS, "action"):
        values[f"market.{key}"] = _text(market.get(key))
    orders = document.get("orders") or {}
    for key in ORDER_NUMBERS:
        values[f"orders.{key}"] = _text(orders.get(key))
    symbols = orders.get("symbols")
    values["orders.symbols"] = "" if symbols is None else ", ".join(symbols)
    return values, len(limits)


def _read_form(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, str], int]:
    """The document the posted form spells, the inputs as typed (to show again), and how many limits
    the document has. A limit ticked "remove" is left out, and so is the blank row for a new limit while
    nothing is typed in it; the limits that stay are numbered as in the document, so the validation's
    `drawdown_limits.N.field` names the row shown as row N."""

    def typed(name: str) -> str:
        return (form.get(name) or "").strip()

    values = {key: typed(key) for key in TOP_NUMBERS}
    document: dict[str, Any] = {key: _number(values[key]) for key in TOP_NUMBERS}

    rows = sorted({int(found.group(1)) for name in form if (found := _LIMIT_FIELD.match(name))})
    limits: list[dict[str, str]] = []
    for row in rows:
        prefix = f"drawdown_limits.{row}."
        if form.get(prefix + "remove"):
            continue
        limit = {key: typed(prefix + key) for key in LIMIT_KEYS}
        if form.get(prefix + "new") and not limit["name"] and not any(limit[k] for k in LIMIT_NUMBERS):
            continue
        limits.append(limit)
    document["drawdown_limits"] = []
    for index, limit in enumerate(limits):
        for key, value in limit.items():
            values[f"drawdown_limits.{index}.{key}"] = value
        document["drawdown_limits"].append(
            {key: _number(value) if key in LIMIT_NUMBERS else value for key, value in limit.items()}
        )

    market: dict[str, Any] = {}
    for key in MARKET_NUMBERS:
        values[f"market.{key}"] = typed(f"market.{key}")
        market[key] = _number(values[f"market.{key}"])
    values["market.action"] = typed("market.action")
    market["action"] = values["market.action"]
    document["market"] = market

    orders: dict[str, Any] = {}
    for key in ORDER_NUMBERS:
        values[f"orders.{key}"] = typed(f"orders.{key}")
        orders[key] = _number(values[f"orders.{key}"])
    values["orders.symbols"] = typed("orders.symbols")
    orders["symbols"] = _symbols(values["orders.symbols"])
    document["orders"] = orders
    return document, values, len(limits)


def _field_names(limit_count: int) -> set[str]:
    """The names of the form's inputs (a problem named otherwise is shown above the form)."""
    names = {*TOP_NUMBERS, "drawdown_limits", "market.action", "orders.symbols"}
    names.update(f"market.{key}" for key in MARKET_NUMBERS)
    names.update(f"orders.{key}" for key in ORDER_NUMBERS)
    names.update(f"drawdown_limits.{i}.{key}" for i in range(limit_count) for key in LIMIT_KEYS)
    return names


def _placed(name: str, fields: set[str]) -> bool:
    # A symbol's problem (`orders.symbols.1`) is shown at the symbols' input.
    return name in fields or name.startswith("orders.symbols.")


def _selected_account(accounts: list[Account]) -> Account | None:
    """The account `?account_id=` names (404 unless it is one of the user's), else the first."""
    raw = request.args.get("account_id")
    if raw is None or raw == "":
        return accounts[0] if accounts else None
    if not _ID.fullmatch(raw) or not 1 <= int(raw) <= 2**31 - 1:
        abort(404)
    return _own_account(int(raw))


def _own_account(account_id: int) -> Account:
    try:
        return get_own_account(db.session, current_user(), account_id)
    except NotFound:
        abort(404)


def _risk_page(
    accounts: list[Account],
    account: Account | None,
    values: dict[str, str],
    limit_count: int,
    errors: Mapping[str, Sequence[str]] | None = None,
    message: str | None = None,
    status: int = 200,
) -> Response:
    errors = errors or {}
    fields = _field_names(limit_count)
    page = render_template(
        "risk.html",
        accounts=accounts,
        account=account,
        values=values,
        limit_count=limit_count,
        errors=errors,
        message=message,
        other_errors={name: problems for name, problems in errors.items() if not _placed(name, fields)},
        symbol_errors={
            name: problems
            for name, problems in errors.items()
            if name == "orders.symbols" or name.startswith("orders.symbols.")
        },
        periods=PERIODS,
        references=REFERENCES,
        limit_actions=LIMIT_ACTIONS,
        resumes=RESUMES,
        market_actions=MARKET_ACTIONS,
        notice=NOTICES.get(request.args.get("notice", "")),
    )
    return make_response(page, status)


@blp.get("/risk")
@page_login_required
def risk() -> Response:
    accounts = list_own_accounts(db.session, current_user())
    account = _selected_account(accounts)
    if account is None:
        return _risk_page(accounts, None, {}, 0)
    values, limit_count = _values_of(risk_settings.document_of(db.session, account.id))
    return _risk_page(accounts, account, values, limit_count)


@blp.post("/risk/<id:account_id>")
@page_login_required
def risk_save(account_id: int) -> Any:
    account = _own_account(account_id)
    document, values, limit_count = _read_form(request.form)
    before = risk_settings.document_of(db.session, account.id)
    try:
        stored = risk_settings.save_risk_settings(db.session, current_user(), account.id, document)
    except InvalidInput as error:
        db.session.rollback()
        accounts = list_own_accounts(db.session, current_user())
        return _risk_page(
            accounts,
            account,
            values,
            limit_count,
            errors=error.fields or {},
            message=error.message,
            status=422,
        )
    db.session.commit()
    notice = "unchanged" if stored == before else "saved"
    return redirect(f"/risk?account_id={account.id}&notice={notice}")


# --- webhooks ---------------------------------------------------------------------------------------------

# The last deliveries shown under each webhook (the API pages through all of them).
LAST_DELIVERIES = 10


def _webhooks_page(
    *,
    status: int = 200,
    url: str = "",
    events: list[str] | None = None,
    errors: Mapping[str, Sequence[str]] | None = None,
    created: Webhook | None = None,
    secret: str | None = None,
) -> Response:
    user = current_user()
    listed = [
        (webhook, webhooks.list_deliveries(db.session, user, webhook.id, page=1, per_page=LAST_DELIVERIES))
        for webhook in webhooks.list_own_webhooks(db.session, user)
    ]
    errors = errors or {}
    page = render_template(
        "webhooks.html",
        listed=listed,
        all_events=ALL_EVENTS,
        url=url,
        events=events or [],
        errors=errors,
        event_errors=[
            (name, problems)
            for name, problems in errors.items()
            if name == "events" or name.startswith("events.")
        ],
        other_errors=[
            (name, problems)
            for name, problems in errors.items()
            if name != "url" and name != "events" and not name.startswith("events.")
        ],
        created=created,
        secret=secret,
        max_webhooks=webhooks.MAX_WEBHOOKS_PER_OWNER,
        notice=NOTICES.get(request.args.get("notice", "")),
    )
    response = make_response(page, status)
    if secret is not None:
        response.headers["Cache-Control"] = "no-store"  # the secret stays out of every cache
    return response


@blp.get("/webhooks", endpoint="webhooks")
@page_login_required
def webhooks_page() -> Response:
    return _webhooks_page()


@blp.post("/webhooks")
@page_login_required
def webhook_create() -> Response:
    url = (request.form.get("url") or "").strip()
    events = request.form.getlist("events")
    try:
        webhook, secret = webhooks.create_webhook(
            db.session,
            secret_box(),
            current_user(),
            url=url,
            events=events or None,  # none ticked: every event, including ones added later
            allow_private=settings().webhook_allow_private,
        )
    except InvalidInput as error:
        db.session.rollback()
        problems = error.fields or {"url": [error.message]}
        return _webhooks_page(status=422, url=url, events=events, errors=problems)
    except Conflict as error:
        db.session.rollback()
        return _webhooks_page(status=409, url=url, events=events, errors={"webhooks": [error.message]})
    db.session.commit()
    # The secret is shown here, once: answering with the page (no redirect) keeps it out of any URL.
    return _webhooks_page(status=201, created=webhook, secret=secret)


@blp.post("/webhooks/<id:webhook_id>/delete")
@page_login_required
def webhook_delete(webhook_id: int) -> Any:
    try:
        webhooks.delete_webhook(db.session, current_user(), webhook_id)
    except NotFound:
        db.session.rollback()
        abort(404)
    db.session.commit()
    return redirect("/webhooks?notice=webhook_deleted")
