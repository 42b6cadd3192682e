"""GET / PUT /api/v1/accounts/{id}/risk: one document, validated whole, stored with who and when."""

from __future__ import annotations

import copy
import json

import pytest
import sqlalchemy as sa

from shared.guards.settings import DEFAULT_SETTINGS
from shared.models import AccountRisk, AuditLog

# A document setting every part: limits that close, a weekly limit by amount, market and order limits.
EXAMPLE = {
    "grace_seconds": 30,
    "confirmations": 3,
    "drawdown_limits": [
        {
            "name": "daily loss",
            "period": "day",
            "reference": "period_start_balance",
            "warn_percent": 3.5,
            "max_percent": 5,
            "max_amount": None,
            "action": "close",
            "resume": "next_period",
        },
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
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": 8,
            "max_percent": 10,
            "max_amount": None,
            "action": "close",
            "resume": "manual",
        },
    ],
    "min_margin_level_percent": 150,
    "market": {"max_spread_pips": 3.5, "max_gap_pips": 40, "stale_quote_seconds": 60, "action": "block"},
    "orders": {
        "max_lots_per_order": 2,
        "max_open_positions": 10,
        "max_total_lots": 8.5,
        "max_orders_per_minute": 6,
        "max_risk_percent_per_trade": 1.5,
        "symbols": ["EURUSD", "XAUUSD"],
    },
}


def url(account_id):
    return f"/api/v1/accounts/{account_id}/risk"


def stored_rows(db_session, account_id):
    return db_session.scalars(sa.select(AccountRisk).where(AccountRisk.account_id == account_id)).all()


def risk_audits(db_session, account_id):
    return db_session.scalars(
        sa.select(AuditLog)
        .where(AuditLog.action == "account.risk_updated", AuditLog.target_id == account_id)
        .order_by(AuditLog.id)
    ).all()


def test_a_new_account_has_the_defaults_guards_that_warn_and_limits_off(api, client):
    world = api.setup()
    response = client.get(url(world["account"]["id"]), headers=world["user"]["headers"])
    assert response.status_code == 200
    assert response.json == DEFAULT_SETTINGS
    assert {limit["action"] for limit in response.json["drawdown_limits"]} == {"warn"}
    assert set(response.json["orders"].values()) == {None}


def test_the_example_document_round_trips_and_is_audited_with_who_and_when(api, client, db_session):
    world = api.setup()
    account_id, headers = world["account"]["id"], world["user"]["headers"]
    response = client.put(url(account_id), json=EXAMPLE, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json == EXAMPLE
    assert client.get(url(account_id), headers=headers).json == EXAMPLE

    (row,) = stored_rows(db_session, account_id)
    assert row.settings == EXAMPLE and row.updated_by == world["user"]["id"] and row.updated_at is not None
    (audit,) = risk_audits(db_session, account_id)
    assert (audit.actor_type, audit.actor_id, audit.target_type) == ("user", world["user"]["id"], "account")
    assert audit.meta == {"previous": DEFAULT_SETTINGS, "settings": EXAMPLE}
    assert audit.created_at is not None

    # Saved again unchanged: nothing to audit. Changed: the audit holds what it replaced.
    assert client.put(url(account_id), json=EXAMPLE, headers=headers).status_code == 200
    assert len(risk_audits(db_session, account_id)) == 1
    changed = copy.deepcopy(EXAMPLE)
    changed["orders"]["max_open_positions"] = 12
    assert client.put(url(account_id), json=changed, headers=headers).json == changed
    second = risk_audits(db_session, account_id)[1]
    assert second.meta == {"previous": EXAMPLE, "settings": changed}


def test_omitted_optional_values_take_their_defaults(api, client):
    world = api.setup()
    body = {
        "grace_seconds": 5,
        "confirmations": 1,
        "drawdown_limits": [{"name": "daily", "period": "day", "reference": "peak_equity", "max_percent": 4}],
        "market": {},
        "orders": {"max_lots_per_order": "0.5"},
    }
    response = client.put(url(world["account"]["id"]), json=body, headers=world["user"]["headers"])
    assert response.status_code == 200, response.json
    (limit,) = response.json["drawdown_limits"]
    assert limit == {
        "name": "daily",
        "period": "day",
        "reference": "peak_equity",
        "warn_percent": None,
        "max_percent": 4,
        "max_amount": None,
        "action": "warn",
        "resume": "manual",
    }
    assert response.json["min_margin_level_percent"] is None
    assert response.json["orders"]["max_lots_per_order"] == 0.5
    assert response.json["orders"]["max_open_positions"] is None
    assert response.json["market"]["action"] == "warn"


def put_invalid(api, client, db_session, document):
    """PUT `document` on a new account; asserts 422 and that nothing was stored or audited."""
    world = api.setup()
    account_id = world["account"]["id"]
    response = client.put(url(account_id), json=document, headers=world["user"]["headers"])
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"
    assert stored_rows(db_session, account_id) == [] and risk_audits(db_session, account_id) == []
    assert client.get(url(account_id), headers=world["user"]["headers"]).json == DEFAULT_SETTINGS
    return response.json["error"]["fields"]


def test_a_bad_nested_value_is_named_with_dots_and_nothing_is_stored(api, client, db_session):
    document = copy.deepcopy(EXAMPLE)
    document["drawdown_limits"][0]["max_percent"] = 101
    document["orders"]["max_open_positions"] = -1
    fields = put_invalid(api, client, db_session, document)
    assert set(fields) == {"drawdown_limits.0.max_percent", "orders.max_open_positions"}


def test_unknown_keys_are_refused_by_name_at_every_level(api, client, db_session):
    document = copy.deepcopy(EXAMPLE)
    document["colour"] = "red"
    document["orders"]["max_lots"] = 1
    document["drawdown_limits"][1]["limit"] = 3
    fields = put_invalid(api, client, db_session, document)
    assert set(fields) == {"colour", "orders.max_lots", "drawdown_limits.1.limit"}
    assert fields["colour"] == ["Unknown field."]


def test_a_warning_at_or_above_the_maximum_is_refused(api, client, db_session):
    document = copy.deepcopy(EXAMPLE)
    document["drawdown_limits"][2]["warn_percent"] = 10  # == max_percent
    fields = put_invalid(api, client, db_session, document)
    assert set(fields) == {"drawdown_limits.2.warn_percent"}
    assert "below max_percent" in fields["drawdown_limits.2.warn_percent"][0]


def test_two_limits_with_one_name_are_refused(api, client, db_session):
    document = copy.deepcopy(EXAMPLE)
    document["drawdown_limits"][1]["name"] = "daily loss"
    fields = put_invalid(api, client, db_session, document)
    assert fields == {"drawdown_limits.1.name": ["another limit has this name"]}


def test_missing_required_parts_and_text_postgres_cannot_store_are_named(api, client, db_session):
    document = copy.deepcopy(EXAMPLE)
    del document["market"]
    document["drawdown_limits"][0]["name"] = "daily\x00loss"
    document["orders"]["symbols"] = ["EURUSD", "\ud800"]
    fields = put_invalid(api, client, db_session, document)
    assert set(fields) == {"market", "drawdown_limits.0.name", "orders.symbols.1"}


def test_a_body_that_is_not_an_object_is_refused(api, client, db_session):
    assert put_invalid(api, client, db_session, [EXAMPLE]) == {"body": ["must be a JSON object"]}


def test_another_users_account_is_not_found_and_keeps_its_settings(api, client, db_session):
    owner, other = api.setup(), api.setup()
    account_id = owner["account"]["id"]
    read = client.get(url(account_id), headers=other["user"]["headers"])
    written = client.put(url(account_id), json=EXAMPLE, headers=other["user"]["headers"])
    missing = client.put(url(999_999), json=EXAMPLE, headers=owner["user"]["headers"])
    # Someone else's account reads word for word as one that does not exist.
    as_missing = {
        "error": {
            **missing.json["error"],
            "message": missing.json["error"]["message"].replace("999999", str(account_id)),
        }
    }
    assert (read.status_code, written.status_code, missing.status_code) == (404, 404, 404)
    assert read.json == written.json == as_missing
    assert stored_rows(db_session, account_id) == [] and risk_audits(db_session, account_id) == []


def test_without_a_token_it_is_401(api, client):
    world = api.setup()
    assert client.get(url(world["account"]["id"])).status_code == 401
    assert client.put(url(world["account"]["id"]), json=EXAMPLE).status_code == 401


def test_figures_past_any_real_accounts_are_refused_even_spelled_with_a_huge_exponent(
    api, client, db_session
):
    """1e999999999 is valid JSON; as a stored figure it would take minutes to write out."""
    world = api.setup()
    account_id = world["account"]["id"]
    document = copy.deepcopy(EXAMPLE)
    document["drawdown_limits"][0]["max_amount"] = "HUGE"
    document["market"]["max_spread_pips"] = 100_001
    document["orders"]["max_total_lots"] = 100_001
    body = json.dumps(document).replace('"HUGE"', "1e999999999")
    response = client.put(
        url(account_id), data=body, headers={**world["user"]["headers"], "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.json
    assert set(response.json["error"]["fields"]) == {
        "drawdown_limits.0.max_amount",
        "market.max_spread_pips",
        "orders.max_total_lots",
    }
    assert stored_rows(db_session, account_id) == []
    document["drawdown_limits"][0]["max_amount"] = 10**12  # the largest allowed
    document["market"]["max_spread_pips"] = 100_000
    document["orders"]["max_total_lots"] = 100_000
    assert client.put(url(account_id), json=document, headers=world["user"]["headers"]).status_code == 200


def test_a_figure_the_stored_json_number_cannot_hold_is_refused_not_stored_as_another(
    api, client, db_session
):
    """Checked as given, stored as a JSON number: 4.99999999999999999999 under a maximum of 5 would be
    stored as 5.0 (equal to it, a document its own GET then fails to save), and 1e-999999999 as 0.0 (a
    close at any drawdown)."""
    world = api.setup()
    account_id = world["account"]["id"]
    document = copy.deepcopy(EXAMPLE)
    document["drawdown_limits"][0]["warn_percent"] = "WARN"
    document["drawdown_limits"][1]["max_percent"] = "TINY"
    body = json.dumps(document).replace('"WARN"', "4.99999999999999999999").replace('"TINY"', "1e-999999999")
    response = client.put(
        url(account_id), data=body, headers={**world["user"]["headers"], "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.json
    fields = response.json["error"]["fields"]
    assert set(fields) == {"drawdown_limits.0.warn_percent", "drawdown_limits.1.max_percent"}
    assert "at most 15 significant digits" in fields["drawdown_limits.1.max_percent"][0]
    assert stored_rows(db_session, account_id) == []
    # 15 significant digits are stored as given.
    body = json.dumps(document).replace('"WARN"', "4.99999999999999").replace('"TINY"', "0.000001")
    saved = client.put(
        url(account_id), data=body, headers={**world["user"]["headers"], "Content-Type": "application/json"}
    )
    assert saved.status_code == 200, saved.json
    stored = client.get(url(account_id), headers=world["user"]["headers"]).json
    assert stored["drawdown_limits"][0]["warn_percent"] == 4.99999999999999
    assert stored["drawdown_limits"][1]["max_percent"] == 0.000001


# --- the functions behind the API, as the guards and the execution path call them --------------------


def test_each_accounts_guards_read_its_own_settings(api, client, db_session):
    from shared.guards.risk_settings import risk_settings_of

    world = api.setup()
    headers = world["user"]["headers"]
    first, second = world["account"]["id"], api.account(world["user"])["id"]
    never_saved = api.account(world["user"])["id"]
    changed = copy.deepcopy(EXAMPLE)
    changed["confirmations"] = 5
    assert client.put(url(first), json=EXAMPLE, headers=headers).status_code == 200
    assert client.put(url(second), json=changed, headers=headers).status_code == 200

    assert risk_settings_of(db_session, first).confirmations == 3
    assert risk_settings_of(db_session, second).confirmations == 5
    assert risk_settings_of(db_session, never_saved).confirmations == DEFAULT_SETTINGS["confirmations"]


def test_a_save_holds_the_account_against_other_saves_but_never_against_new_rows_of_it(app, committed_db):
    from shared.core.db import db
    from shared.guards.risk_settings import save_risk_settings
    from shared.models import User
    from tests.conftest import Api

    world = Api(app.test_client()).setup()
    account_id = world["account"]["id"]
    save_risk_settings(committed_db, committed_db.get(User, world["user"]["id"]), account_id, EXAMPLE)
    # Not committed yet: the save holds the account's row.
    with db.engine.connect() as other:
        # What the foreign key of a new trade or signal of the account takes: granted at once.
        held = sa.text("SELECT id FROM accounts WHERE id = :id FOR KEY SHARE NOWAIT")
        assert other.execute(held, {"id": account_id}).scalar_one() == account_id
        other.rollback()
        # What another save takes: it would wait for this one.
        with pytest.raises(sa.exc.OperationalError, match="could not obtain lock"):
            other.execute(
                sa.text("SELECT id FROM accounts WHERE id = :id FOR NO KEY UPDATE NOWAIT"), {"id": account_id}
            )
        other.rollback()
    committed_db.rollback()


def test_a_save_audits_the_document_it_replaced_even_after_this_session_read_an_older_one(app, committed_db):
    from sqlalchemy.orm import Session

    from shared.core.db import db
    from shared.guards.risk_settings import save_risk_settings
    from shared.models import User
    from tests.conftest import Api

    world = Api(app.test_client()).setup()
    account_id = world["account"]["id"]
    owner = committed_db.get(User, world["user"]["id"])
    save_risk_settings(committed_db, owner, account_id, EXAMPLE)
    committed_db.commit()
    # This session (a browser tab) reads the settings, and holds them (the identity map keeps only what
    # is referenced); meanwhile another tab saves a change.
    read = committed_db.get(AccountRisk, account_id)
    assert read.settings == EXAMPLE
    changed = copy.deepcopy(EXAMPLE)
    changed["grace_seconds"] = 60
    with Session(db.engine) as other_tab:
        save_risk_settings(other_tab, other_tab.get(User, owner.id), account_id, changed)
        other_tab.commit()

    latest = copy.deepcopy(EXAMPLE)
    latest["grace_seconds"] = 90
    save_risk_settings(committed_db, owner, account_id, latest)
    committed_db.commit()
    previous = [audit.meta["previous"]["grace_seconds"] for audit in risk_audits(committed_db, account_id)]
    assert previous == [DEFAULT_SETTINGS["grace_seconds"], 30, 60]  # 60: the other tab's, not the one read
    assert committed_db.get(AccountRisk, account_id).settings == latest
