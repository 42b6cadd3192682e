"""GET /api/v1/trades: own trades only, with the fields that explain what happened."""

from decimal import Decimal

import pytest

from shared.core.config import DEFAULT_MAGIC
from shared.models import Side, Signal, Trade, TradeState
from tests.conftest import GOOD_SIGNAL
from tests.integration.conftest import BUY

GOOD = GOOD_SIGNAL  # read only: tests spread it into new dicts


@pytest.fixture
def world(api, db_session):
    world = api.setup()
    signal_id = api.send_signal(world["client"], GOOD).json["id"]
    approval = api.decide(world["user"], signal_id)
    signal = db_session.get(Signal, signal_id)
    trade = Trade(
        signal_id=signal.id,
        approval_id=approval["id"],
        account_id=signal.account_id,
        owner_id=signal.owner_id,
        symbol="EURUSD",
        side=Side.BUY,
        magic=DEFAULT_MAGIC,
        comment="TG-test",
        requested_volume=Decimal("0.10"),
        requested_price=Decimal("1.1000"),
        state=TradeState.REJECTED,
        retcode=10019,
        failure_reason="broker rejected the order: retcode 10019 No money",
        attempts=1,
    )
    db_session.add(trade)
    db_session.commit()
    world["trade"] = trade
    return world


def test_owners_read_their_trades_with_the_rejection_reason(api, world):
    headers = world["user"]["headers"]
    listing = api.http.get("/api/v1/trades", headers=headers).json
    assert listing["total"] == 1
    item = listing["items"][0]
    assert (item["state"], item["retcode"], item["failure_reason"]) == (
        "rejected",
        10019,
        "broker rejected the order: retcode 10019 No money",
    )
    assert (item["requested_volume"], item["requested_price"], item["filled_volume"]) == ("0.1", "1.1", None)
    assert item["comment"] == "TG-test" and item["magic"] == DEFAULT_MAGIC
    one = api.http.get(f"/api/v1/trades/{item['id']}", headers=headers)
    assert one.status_code == 200 and one.json == item


def test_trades_filter_by_state_and_account(api, world):
    headers = world["user"]["headers"]
    assert api.http.get("/api/v1/trades?state=filled", headers=headers).json["total"] == 0
    assert api.http.get("/api/v1/trades?state=rejected", headers=headers).json["total"] == 1
    own_account, other_account = world["account"]["id"], world["account"]["id"] + 1000
    assert api.http.get(f"/api/v1/trades?account_id={own_account}", headers=headers).json["total"] == 1
    assert api.http.get(f"/api/v1/trades?account_id={other_account}", headers=headers).json["total"] == 0
    bad = api.http.get("/api/v1/trades?state=lost", headers=headers)
    assert bad.status_code == 422 and "state" in bad.json["error"]["fields"]


def test_other_users_trades_are_404(api, world):
    stranger = api.user()
    trade_id = world["trade"].id
    assert api.http.get(f"/api/v1/trades/{trade_id}", headers=stranger["headers"]).status_code == 404
    assert api.http.get("/api/v1/trades", headers=stranger["headers"]).json["total"] == 0


def test_only_an_approval_sends_the_execution_task(api, db_session, sent_tasks):
    world = api.setup()
    first = api.send_signal(world["client"], {**GOOD, "comment": "a"}).json["id"]
    second = api.send_signal(world["client"], {**GOOD, "comment": "b"}).json["id"]
    headers = world["user"]["headers"]
    api.decide(world["user"], first)
    api.decide(world["user"], second, "reject")
    refused = api.http.post(
        "/api/v1/approvals", json={"signal_id": first, "decision": "approve"}, headers=headers
    )
    assert refused.status_code == 409
    assert sent_tasks.executions() == [first]  # rejected and refused decisions enqueue nothing


def test_a_closed_trade_carries_its_close_time_price_reason_and_pnl(api, run, sync, terminal, db_session):
    world = api.setup()
    headers = world["user"]["headers"]
    signal = api.send_signal(world["client"], BUY).json
    api.decide(world["user"], signal["id"])
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    trade_id = run(signal["id"]).id
    sync(world["account"]["id"])

    open_trade = api.http.get(f"/api/v1/trades/{trade_id}", headers=headers).json
    assert open_trade["state"] == "filled"
    closing = ("closed_at", "close_reason", "close_price", "pnl")
    assert {name: open_trade[name] for name in closing} == dict.fromkeys(closing)  # null while open

    terminal.sim_set_quote("EURUSD", 1.08400, 1.08410)
    terminal.sim_close_manual(1001, open_trade["position_ticket"])
    sync(world["account"]["id"])

    closed = api.http.get(f"/api/v1/trades/{trade_id}", headers=headers).json
    (event,) = api.http.get(
        f"/api/v1/reconciliation/{world['account']['id']}?event_type=closed_outside", headers=headers
    ).json["items"]
    assert closed["state"] == "closed" and event["trade_id"] == trade_id
    assert (closed["close_reason"], closed["close_price"]) == ("by_hand", "1.084")
    assert closed["pnl"] == event["pnl"] and Decimal(closed["pnl"]) == Decimal("-11")  # 1.08510 -> 1.08400
    assert (closed["close_reason"], closed["close_price"]) == (event["close_reason"], event["close_price"])
    stored = db_session.get(Trade, trade_id)
    assert closed["closed_at"] == stored.closed_at.isoformat()
    listed = api.http.get("/api/v1/trades?state=closed", headers=headers).json["items"]
    assert listed == [closed]

    document = api.http.get("/api/openapi.json").json
    properties = document["components"]["schemas"]["Trade"]["properties"]
    for name in closing:
        assert properties[name].get("description"), name
        assert "null" in str(properties[name]), name
