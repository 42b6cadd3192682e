"""The Risk settings and Webhooks pages through the app (Postgres): the risk document as a form checked by
the API's own validation (the same messages, next to the fields they name), adding and removing limits,
webhooks added (the secret shown once), refused, deleted, their deliveries; CSRF, nobody else's rows, and
everything escaped."""

from __future__ import annotations

import copy
import dataclasses
import html
import re
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa

from shared.core.extensions import secret_box
from shared.guards.settings import DEFAULT_SETTINGS
from shared.models import Account, AccountRisk, AuditLog, DeliveryStatus, Webhook, WebhookDelivery
from shared.notifications import webhooks
from shared.notifications.events import ALL_EVENTS

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def _token(page: str) -> str:
    found = TOKEN.search(page)
    assert found, page[:500]
    return found.group(1)


def sign_in(http: Any, email: str, password: str = "correct horse") -> None:
    form = http.get("/login").get_data(as_text=True)
    response = http.post(
        "/login", data={"email": email, "password": password, "next": "/risk", "csrf_token": _token(form)}
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:500]


class _Form(HTMLParser):
    """What a browser would submit from the page's form whose action is `action`: text and hidden
    inputs, ticked boxes, selected options."""

    def __init__(self, action: str):
        super().__init__()
        self.action, self.inside, self.select = action, False, None
        self.fields: dict[str, Any] = {}
        self.first_option: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.inside = a.get("action") == self.action and a.get("method") == "post"
        elif not self.inside:
            return
        elif tag == "input" and a.get("type") in ("text", "hidden", None):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "input" and a.get("type") == "checkbox" and "checked" in a:
            self.fields.setdefault(a["name"], []).append(a["value"])
        elif tag == "select":
            self.select = a["name"]
        elif tag == "option" and self.select:
            self.first_option.setdefault(self.select, a["value"])
            if "selected" in a:
                self.fields[self.select] = a["value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select:
            self.fields.setdefault(self.select, self.first_option.get(self.select, ""))
            self.select = None


def form_of(page: str, action: str) -> dict[str, Any]:
    parser = _Form(action)
    parser.feed(page)
    assert parser.fields, f"no form posting to {action}"
    return parser.fields


def value_of(page: str, name: str) -> str:
    found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', page)
    assert found, name
    return html.unescape(found.group(1))


def problems_at(page: str, name: str) -> list[str]:
    """The problems shown next to the input `name`."""
    found = re.search(
        rf'<span class="field-error" id="error-{re.escape(name)}">(.*?)</span></span>', page, re.S
    )
    if not found:
        return []
    return [
        html.unescape(text)
        for text in re.findall(r'<span class="problem">(.*?)</span>', found.group(1) + "</span>")
    ]


def risk_audits(db_session: Any, account_id: int) -> list[AuditLog]:
    return list(
        db_session.scalars(
            sa.select(AuditLog)
            .where(AuditLog.action == "account.risk_updated", AuditLog.target_id == account_id)
            .order_by(AuditLog.id)
        )
    )


@pytest.fixture
def owner(api: Any, client: Any) -> dict[str, Any]:
    user = api.user()
    account = api.account(user)
    sign_in(client, user["email"])
    return {"user": user, "account": account}


def risk_url(account_id: int) -> str:
    return f"/api/v1/accounts/{account_id}/risk"


# --- risk settings ----------------------------------------------------------------------------------------


def test_a_user_without_accounts_is_told_what_to_do(api, client):
    user = api.user()
    sign_in(client, user["email"])
    page = client.get("/risk").get_data(as_text=True)
    assert "You have no MT5 account yet" in page and "POST /api/v1/accounts" in page
    assert '<form method="post" action="/risk/' not in page
    # Both pages are in the navigation.
    assert '<a href="/risk" aria-current="page">Risk settings</a>' in page and '<a href="/webhooks"' in page


def test_the_form_shows_the_defaults_of_a_new_account(client, owner):
    account_id = owner["account"]["id"]
    page = client.get("/risk").get_data(as_text=True)  # the first account, unasked
    assert owner["account"]["name"] in page
    fields = form_of(page, f"/risk/{account_id}")
    assert fields["grace_seconds"] == "10" and fields["confirmations"] == "2"
    assert fields["min_margin_level_percent"] == ""
    for index, limit in enumerate(DEFAULT_SETTINGS["drawdown_limits"]):
        for key, value in limit.items():
            assert fields[f"drawdown_limits.{index}.{key}"] == ("" if value is None else str(value)), key
    assert fields["drawdown_limits.2.new"] == "1" and fields["drawdown_limits.2.name"] == ""
    assert (fields["market.max_spread_pips"], fields["market.max_gap_pips"]) == ("50", "50")
    assert (fields["market.stale_quote_seconds"], fields["market.action"]) == ("120", "warn")
    assert all(fields[f"orders.{key}"] == "" for key in DEFAULT_SETTINGS["orders"])
    assert client.get(f"/risk?account_id={account_id}").get_data(as_text=True) == page


def test_saving_a_change_stores_it_with_who_and_the_audit_row(client, owner, db_session):
    account_id, headers = owner["account"]["id"], owner["user"]["headers"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    fields.update(
        {
            "grace_seconds": "30",
            "confirmations": " 3 ",
            "min_margin_level_percent": "150",
            "drawdown_limits.0.warn_percent": "3.5",
            "drawdown_limits.0.action": "close",
            "market.max_spread_pips": "",
            "market.action": "block",
            "orders.max_lots_per_order": "0.5",
            "orders.max_open_positions": "10",
            "orders.symbols": "EURUSD, XAUUSD,",
        }
    )
    response = client.post(f"/risk/{account_id}", data=fields)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == f"/risk?account_id={account_id}&notice=saved"

    expected = copy.deepcopy(DEFAULT_SETTINGS)
    expected.update({"grace_seconds": 30, "confirmations": 3, "min_margin_level_percent": 150})
    expected["drawdown_limits"][0].update({"warn_percent": 3.5, "action": "close"})
    expected["market"].update({"max_spread_pips": None, "action": "block"})
    expected["orders"].update(
        {"max_lots_per_order": 0.5, "max_open_positions": 10, "symbols": ["EURUSD", "XAUUSD"]}
    )
    assert client.get(risk_url(account_id), headers=headers).json == expected  # the blank new row ignored
    row = db_session.get(AccountRisk, account_id)
    assert row.updated_by == owner["user"]["id"] and row.updated_at is not None
    (audit,) = risk_audits(db_session, account_id)
    assert audit.actor_id == owner["user"]["id"]
    assert audit.meta == {"previous": DEFAULT_SETTINGS, "settings": expected}

    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Saved: the guards use the new settings" in page
    assert value_of(page, "orders.symbols") == "EURUSD, XAUUSD"
    assert value_of(page, "drawdown_limits.0.warn_percent") == "3.5"
    # Saved again unchanged: nothing to audit, and the page says so.
    again = client.post(f"/risk/{account_id}", data=form_of(page, f"/risk/{account_id}"))
    assert again.headers["Location"] == f"/risk?account_id={account_id}&notice=unchanged"
    assert len(risk_audits(db_session, account_id)) == 1


def test_invalid_values_come_back_as_typed_with_the_apis_messages_by_their_fields(client, owner, db_session):
    account_id, headers = owner["account"]["id"], owner["user"]["headers"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    fields.update(
        {
            "drawdown_limits.0.warn_percent": "6",  # above its max_percent, 5
            "drawdown_limits.1.max_percent": "-1",
            "orders.max_open_positions": "many",
            "orders.symbols": "EURUSD, " + "X" * 40,
            "grace_seconds": "",
        }
    )
    response = client.post(f"/risk/{account_id}", data=fields)
    page = response.get_data(as_text=True)
    assert response.status_code == 422

    # The API, sent the same document, names the same fields with the same words.
    document = copy.deepcopy(DEFAULT_SETTINGS)
    document["grace_seconds"] = None
    document["drawdown_limits"][0]["warn_percent"] = 6
    document["drawdown_limits"][1]["max_percent"] = -1
    document["orders"].update({"max_open_positions": "many", "symbols": ["EURUSD", "X" * 40]})
    api_error = client.put(risk_url(account_id), json=document, headers=headers).json["error"]
    assert set(api_error["fields"]) == {
        "grace_seconds",
        "drawdown_limits.0.warn_percent",
        "drawdown_limits.1.max_percent",
        "orders.max_open_positions",
        "orders.symbols.1",
    }
    for name, problems in api_error["fields"].items():
        if name == "orders.symbols.1":
            assert problems_at(page, "orders.symbols") == [f"symbol 2: {problem}" for problem in problems]
        else:
            assert problems_at(page, name) == problems, name
    assert problems_at(page, "drawdown_limits.0.warn_percent") == ["must be below max_percent (5)"]
    assert f"Not saved: {html.escape(api_error['message'])}" in page
    assert 'aria-invalid="true" aria-describedby="error-drawdown_limits.1.max_percent"' in page

    # What was typed is on the form again; nothing was stored.
    for name in (
        "drawdown_limits.0.warn_percent",
        "drawdown_limits.1.max_percent",
        "orders.max_open_positions",
    ):
        assert value_of(page, name) == fields[name]
    assert value_of(page, "orders.symbols") == fields["orders.symbols"]
    assert value_of(page, "grace_seconds") == ""
    assert client.get(risk_url(account_id), headers=headers).json == DEFAULT_SETTINGS
    assert risk_audits(db_session, account_id) == []


def test_two_limits_with_one_name_are_refused_at_the_second(client, owner):
    account_id = owner["account"]["id"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    fields["drawdown_limits.1.name"] = "daily loss"
    response = client.post(f"/risk/{account_id}", data=fields)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert problems_at(page, "drawdown_limits.1.name") == ["another limit has this name"]
    assert problems_at(page, "drawdown_limits.0.name") == []


def test_a_problem_with_the_list_of_limits_is_shown_with_the_limits(client, owner):
    account_id = owner["account"]["id"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    for index in range(2, 21):  # 21 limits: one more than the settings take
        fields.update(
            {
                f"drawdown_limits.{index}.name": f"limit {index}",
                f"drawdown_limits.{index}.period": "day",
                f"drawdown_limits.{index}.reference": "peak_equity",
                f"drawdown_limits.{index}.max_percent": "5",
                f"drawdown_limits.{index}.action": "warn",
                f"drawdown_limits.{index}.resume": "manual",
            }
        )
    response = client.post(f"/risk/{account_id}", data=fields)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert problems_at(page, "drawdown_limits") == ["Longer than maximum length 20."]
    assert value_of(page, "drawdown_limits.20.name") == "limit 20"
    assert value_of(page, "drawdown_limits.21.name") == ""  # and a blank row to add one, as ever
    assert "drawdown_limits.22.name" not in page


def test_limits_are_added_and_removed(client, owner, db_session):
    account_id, headers = owner["account"]["id"], owner["user"]["headers"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    fields.update(
        {
            "drawdown_limits.0.remove": "1",  # daily loss goes
            "drawdown_limits.2.name": "weekly loss",  # the blank row: a new limit
            "drawdown_limits.2.period": "week",
            "drawdown_limits.2.reference": "period_start_equity",
            "drawdown_limits.2.max_amount": "2500",
            "drawdown_limits.2.action": "block",
            "drawdown_limits.2.resume": "manual",
        }
    )
    response = client.post(f"/risk/{account_id}", data=fields)
    assert response.status_code == 302, response.get_data(as_text=True)
    stored = client.get(risk_url(account_id), headers=headers).json["drawdown_limits"]
    assert stored == [
        DEFAULT_SETTINGS["drawdown_limits"][1],
        {
            "name": "weekly loss",
            "period": "week",
            "reference": "period_start_equity",
            "warn_percent": None,
            "max_percent": None,
            "max_amount": 2500,
            "action": "block",
            "resume": "manual",
        },
    ]
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    after = form_of(page, f"/risk/{account_id}")
    assert [after[f"drawdown_limits.{i}.name"] for i in range(3)] == ["max drawdown", "weekly loss", ""]
    assert after["drawdown_limits.2.new"] == "1" and "drawdown_limits.3.name" not in after

    # A problem in a limit after a removed one is named by its place in what is saved, and shown there.
    after.update({"drawdown_limits.0.remove": "1", "drawdown_limits.1.max_amount": ""})
    refused = client.post(f"/risk/{account_id}", data=after)
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert problems_at(page, "drawdown_limits.0.max_percent") == ["set max_percent, max_amount or both"]
    assert value_of(page, "drawdown_limits.0.name") == "weekly loss"
    assert value_of(page, "drawdown_limits.1.name") == ""  # the blank row
    # Removing every limit leaves none.
    after.update({"drawdown_limits.1.remove": "1"})
    assert client.post(f"/risk/{account_id}", data=after).status_code == 302
    assert client.get(risk_url(account_id), headers=headers).json["drawdown_limits"] == []
    assert "No drawdown limit" in client.get("/risk").get_data(as_text=True)


def test_a_new_row_with_values_but_no_name_is_not_dropped_silently(client, owner):
    account_id = owner["account"]["id"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    fields["drawdown_limits.2.max_percent"] = "3"
    response = client.post(f"/risk/{account_id}", data=fields)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert problems_at(page, "drawdown_limits.2.name") == ["Length must be between 1 and 100."]
    assert value_of(page, "drawdown_limits.2.max_percent") == "3"


def test_another_users_account_is_not_found(api, client, owner, db_session):
    stranger = api.user()
    theirs = api.account(stranger)
    token = _token(client.get("/risk").get_data(as_text=True))
    assert client.get(f"/risk?account_id={theirs['id']}").status_code == 404
    for bad in ("abc", "0", "-1", "\u00b2", str(2**31), "99999999999999999999"):
        assert client.get(f"/risk?account_id={bad}").status_code == 404, bad
    fields = {"csrf_token": token, "grace_seconds": "5"}
    assert client.post(f"/risk/{theirs['id']}", data=fields).status_code == 404
    assert db_session.get(AccountRisk, theirs["id"]) is None
    # The owner's picker lists their own accounts only.
    page = client.get("/risk").get_data(as_text=True)
    assert theirs["name"] not in page


def test_the_account_picker_lists_every_own_account(api, client, owner):
    second = api.account(owner["user"])
    page = client.get("/risk").get_data(as_text=True)
    assert f'<option value="{second["id"]}">' in page
    assert f'<option value="{owner["account"]["id"]}" selected>' in page
    chosen = client.get(f"/risk?account_id={second['id']}").get_data(as_text=True)
    assert (
        f'action="/risk/{second["id"]}"' in chosen and f'<option value="{second["id"]}" selected>' in chosen
    )


def test_a_form_without_the_csrf_token_is_refused(client, owner, db_session):
    account_id = owner["account"]["id"]
    fields = form_of(client.get("/risk").get_data(as_text=True), f"/risk/{account_id}")
    fields["grace_seconds"] = "60"
    for token in (None, "", "0" * 64):
        sent = (
            {**fields, "csrf_token": token}
            if token is not None
            else {k: v for k, v in fields.items() if k != "csrf_token"}
        )
        assert client.post(f"/risk/{account_id}", data=sent).status_code == 403
    assert db_session.get(AccountRisk, account_id) is None
    assert client.post("/webhooks", data={"url": "https://hooks.example.com/"}).status_code == 403
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Webhook)) == 0


def test_what_owners_named_is_escaped_on_the_risk_page(client, owner, db_session):
    account_id, headers = owner["account"]["id"], owner["user"]["headers"]
    evil = '"><script>alert(1)</script>'
    document = copy.deepcopy(DEFAULT_SETTINGS)
    document["drawdown_limits"][0]["name"] = evil
    assert client.put(risk_url(account_id), json=document, headers=headers).status_code == 200
    db_session.execute(sa.update(Account).where(Account.id == account_id).values(name="<b>mine</b>"))
    db_session.commit()
    page = client.get("/risk").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "<b>mine</b>" not in page
    assert "&lt;b&gt;mine&lt;/b&gt;" in page
    assert value_of(page, "drawdown_limits.0.name") == evil
    # Typed back into a refused form, still escaped.
    fields = form_of(page, f"/risk/{account_id}")
    fields.update({"drawdown_limits.1.name": evil, "orders.symbols": "<i>EURUSD</i>"})
    refused = client.post(f"/risk/{account_id}", data=fields)
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422 and "<script>" not in page and "<i>EURUSD</i>" not in page
    assert value_of(page, "orders.symbols") == "<i>EURUSD</i>"


# --- webhooks ---------------------------------------------------------------------------------------------


def add_webhook(client: Any, url: str, events: list[str] | None = None) -> Any:
    token = _token(client.get("/webhooks").get_data(as_text=True))
    return client.post("/webhooks", data={"csrf_token": token, "url": url, "events": events or []})


def test_no_webhooks_yet_says_what_to_do(client, owner):
    page = client.get("/webhooks").get_data(as_text=True)
    assert "No webhooks yet" in page and "Add a webhook" in page
    for event in ALL_EVENTS:
        assert f'name="events" value="{event}">' in page


def test_a_webhook_is_added_and_its_secret_shown_once(app, client, owner, dns, db_session):
    response = add_webhook(client, "https://hooks.example.com/tg", ["trade.filled", "alert.pending"])
    page = response.get_data(as_text=True)
    assert response.status_code == 201, page
    assert response.headers["Cache-Control"] == "no-store"
    hook = db_session.scalars(sa.select(Webhook).where(Webhook.owner_id == owner["user"]["id"])).one()
    assert (hook.url, hook.events) == ("https://hooks.example.com/tg", ["trade.filled", "alert.pending"])
    shown = re.search(r'class="secret-value" readonly value="([^"]+)"', page).group(1)
    assert shown == secret_box(app).decrypt(hook.secret_encrypted)  # the secret deliveries are signed with
    assert len(shown) >= 32 and "copy its secret now" in page and "only time" in page
    assert f'id="webhook-{hook.id}"' in page and "trade.filled, alert.pending" in page

    again = client.get("/webhooks").get_data(as_text=True)
    assert shown not in again and "copy its secret now" not in again
    assert f'id="webhook-{hook.id}"' in again and "No deliveries yet" in again
    listed = client.get("/api/v1/webhooks", headers=owner["user"]["headers"]).json
    assert [item["id"] for item in listed] == [hook.id]


def test_no_event_ticked_means_every_event(client, owner, dns, db_session):
    assert add_webhook(client, "https://hooks.example.com/all").status_code == 201
    hook = db_session.scalars(sa.select(Webhook).where(Webhook.owner_id == owner["user"]["id"])).one()
    assert hook.events is None
    assert "all events, including ones added later" in client.get("/webhooks").get_data(as_text=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.8/hook",
        "http://127.0.0.1:8080/hook",
        "http://internal.example.com/hook",
        "ftp://hooks.example.com/",
        "",
    ],
)
def test_a_refused_url_shows_the_apis_message_and_keeps_the_form(client, owner, dns, db_session, url):
    response = add_webhook(client, url, ["trade.closed"])
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    api = client.post(
        "/api/v1/webhooks", json={"url": url, "events": ["trade.closed"]}, headers=owner["user"]["headers"]
    )
    assert api.status_code == 422
    if url:  # the API's schema refuses an empty URL before the domain's check ("Shorter than ...")
        assert problems_at(page, "url") == api.json["error"]["fields"]["url"]
    else:
        assert problems_at(page, "url") == ["must be an http:// or https:// URL"]
    assert value_of(page, "url") == url
    assert 'name="events" value="trade.closed" checked>' in page
    assert 'name="events" value="trade.filled">' in page
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Webhook)) == 0


def test_the_private_address_refusal_words(client, owner, dns):
    page = add_webhook(client, "http://10.0.0.8/hook").get_data(as_text=True)
    assert problems_at(page, "url") == [
        "host 10.0.0.8 resolves to 10.0.0.8, a private address: webhooks go to public addresses only"
    ]


def test_private_addresses_are_accepted_when_the_deployment_allows_them(app, client, owner, dns, monkeypatch):
    from shared.core.extensions import SETTINGS

    monkeypatch.setitem(
        app.extensions, SETTINGS, dataclasses.replace(app.extensions[SETTINGS], webhook_allow_private=True)
    )
    assert add_webhook(client, "http://10.0.0.8/hook").status_code == 201


def test_a_webhook_is_deleted_and_nobody_else_can(api, client, owner, dns, db_session):
    created = client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/x"}, headers=owner["user"]["headers"]
    ).json
    stranger = api.user()
    theirs = client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/theirs"}, headers=stranger["headers"]
    ).json
    page = client.get("/webhooks").get_data(as_text=True)
    assert "https://hooks.example.com/x" in page and "https://hooks.example.com/theirs" not in page
    token = _token(page)
    assert client.post(f"/webhooks/{theirs['id']}/delete", data={"csrf_token": token}).status_code == 404
    assert db_session.get(Webhook, theirs["id"]).deleted_at is None
    assert client.post(f"/webhooks/{created['id']}/delete", data={}).status_code == 403

    response = client.post(f"/webhooks/{created['id']}/delete", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/webhooks?notice=webhook_deleted"
    after = client.get(response.headers["Location"]).get_data(as_text=True)
    assert (
        "Webhook deleted" in after
        and "https://hooks.example.com/x" not in after
        and "No webhooks yet" in after
    )
    assert client.get("/api/v1/webhooks", headers=owner["user"]["headers"]).json == []
    assert client.post(f"/webhooks/{created['id']}/delete", data={"csrf_token": token}).status_code == 404


def test_the_last_deliveries_are_listed_escaped(client, owner, dns, db_session):
    from shared.core.extensions import task_queue

    hook = client.post(
        "/api/v1/webhooks",
        json={"url": "https://hooks.example.com/d", "events": ["trade.filled", "trade.closed"]},
        headers=owner["user"]["headers"],
    ).json
    for event in ("trade.filled", "trade.closed"):
        webhooks.notify(db_session, task_queue(), owner["user"]["id"], event, {"trade_id": 9})
        db_session.commit()
    failed = db_session.scalars(
        sa.select(WebhookDelivery).where(WebhookDelivery.event == "trade.filled")
    ).one()
    failed.status, failed.status_code, failed.attempts = DeliveryStatus.FAILED, 500, 7
    failed.last_error = "<script>alert('receiver')</script>"
    db_session.commit()

    page = client.get("/webhooks").get_data(as_text=True)
    section = re.search(
        rf'<article class="webhook" id="webhook-{hook["id"]}">.*?</article>', page, re.S
    ).group(0)
    rows = re.findall(r'<tr class="delivery status-(\w+)">(.*?)</tr>', section, re.S)
    assert [status for status, _ in rows] == ["pending", "failed"]  # newest first
    cells = [
        re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", rows[1][1], re.S)
    ]
    assert cells[1:] == [
        "trade.filled",
        "failed",
        "500",
        "7",
        "&lt;script&gt;alert(&#39;receiver&#39;)&lt;/script&gt;",
    ]
    pending = [
        re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", rows[0][1], re.S)
    ]
    assert pending[1:] == ["trade.closed", "pending", "—", "0", "—"]
    assert "<script>alert(" not in page


def test_a_webhook_url_is_escaped(client, owner, dns, db_session):
    hook = client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/"}, headers=owner["user"]["headers"]
    ).json
    db_session.execute(
        sa.update(Webhook)
        .where(Webhook.id == hook["id"])
        .values(url='https://hooks.example.com/"><script>x()</script>')
    )
    db_session.commit()
    page = client.get("/webhooks").get_data(as_text=True)
    assert "<script>x()</script>" not in page
    assert "https://hooks.example.com/&#34;&gt;&lt;script&gt;x()&lt;/script&gt;" in page
