"""The Positions and Trades pages through the app (Postgres): positions with their attribution (a trade of
TradeGuard's links to its page; an outside one says how it was opened), kept current by a fragment; the
trades list filtered and paged; a trade's fields and timeline; nobody else's rows; everything escaped."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from shared.core.config import DEFAULT_MAGIC
from shared.core.db import utcnow
from shared.models import (
    AccountSync,
    Approval,
    Decision,
    GuardState,
    Side,
    Signal,
    SignalStatus,
    Trade,
    TradeState,
)
from shared.mt5 import constants as mt5c
from tests.integration.conftest import BUY
from tests.integration.test_pages import sign_in

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _html(response: Any) -> str:
    return str(response.get_data(as_text=True))


def _rows(html: str, prefix: str) -> dict[str, str]:
    """The table rows whose id starts with `prefix`, by id."""
    return {
        found.group(1): found.group(0)
        for found in re.finditer(rf'<tr id="({prefix}[^"]*)".*?</tr>', html, re.S)
    }


def _trade_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr id="trade-(\d+)"', html)]


def _seed_trades(
    db_session: Any, world: dict[str, Any], states: list[TradeState], **fields: Any
) -> list[int]:
    """One trade per state in `states` on the world's account, each with its own signal and approval; their
    ids, oldest first."""
    user_id, account_id, client_id = world["user"]["id"], world["account"]["id"], world["client"]["id"]
    now = utcnow()
    signals = [
        Signal(
            owner_id=user_id,
            account_id=account_id,
            client_id=client_id,
            instrument="EURUSD",
            side=Side.BUY,
            volume=Decimal("0.10"),
            status=SignalStatus.APPROVED,
            ttl_seconds=600,
            expires_at=now + timedelta(minutes=10),
            signature=uuid.uuid4().hex,
            body_sha256=uuid.uuid4().hex,
        )
        for _ in states
    ]
    db_session.add_all(signals)
    db_session.flush()
    approvals = [
        Approval(signal_id=signal.id, user_id=user_id, decision=Decision.APPROVE) for signal in signals
    ]
    db_session.add_all(approvals)
    db_session.flush()
    trades = []
    for state, signal, approval in zip(states, signals, approvals, strict=True):
        filled = state in (TradeState.FILLED, TradeState.PARTIAL, TradeState.CLOSED)
        trade = Trade(
            signal_id=signal.id,
            approval_id=approval.id,
            account_id=account_id,
            owner_id=user_id,
            symbol="EURUSD",
            side=Side.BUY,
            magic=DEFAULT_MAGIC,
            comment=f"TG-{uuid.uuid4().hex[:12]}",
            requested_volume=Decimal("0.10"),
            requested_price=Decimal("1.1000"),
            filled_volume=Decimal("0.10") if filled else None,
            filled_price=Decimal("1.1002") if filled else None,
            state=state,
            failure_reason="broker rejected the order: retcode 10019 No money"
            if state == TradeState.REJECTED
            else None,
            **fields,
        )
        db_session.add(trade)
        db_session.flush()  # one at a time: the ids grow in the order of `states`
        trades.append(trade.id)
    db_session.commit()
    return trades


def _position(account_id: int, identifier: int, **fields: Any) -> dict[str, Any]:
    """A position row as the sync stores it in account_sync.positions."""
    return {
        "ticket": identifier,
        "identifier": identifier,
        "position_key": uuid.uuid4().hex,
        "symbol": "EURUSD",
        "side": "buy",
        "volume": "0.10",
        "price_open": "1.10020",
        "price_current": "1.10120",
        "sl": None,
        "tp": "1.11000",
        "profit": "10.00",
        "magic": 0,
        "comment": "",
        "opened_at": "2026-01-05T10:00:00+00:00",
        "attribution": "outside",
        "trade_id": None,
        "matched_by": None,
        "divergences": [],
        "opened_from": "mobile",
        **fields,
    }


# --- empty states ---------------------------------------------------------------------------------------


def test_a_user_without_data_is_told_what_to_do_next(api, client):
    newcomer = api.user()
    sign_in(client, newcomer["email"])
    page = _html(client.get("/positions"))
    assert 'href="/positions" aria-current="page"' in page and 'href="/trades"' in page  # the navigation
    assert "No accounts yet" in page and "POST /api/v1/accounts" in page
    assert 'data-refresh="/positions/table" data-every="2000"' in page
    trades = _html(client.get("/trades"))
    assert "No trades yet" in trades and 'href="/signals"' in trades
    assert "<table" not in trades and "Page 1" not in trades

    # With an account, but nothing open and nothing traded yet.
    api.account(newcomer)
    table = client.get("/positions/table")
    assert table.status_code == 200 and "<html" not in _html(table)
    assert "No open positions" in _html(table) and "Pending signals" in _html(table)
    assert "No trades yet" in _html(client.get("/trades"))


def test_the_pages_need_a_signed_in_user(client):
    for path in ("/positions", "/positions/table", "/trades", "/trades/1"):
        response = client.get(path)
        assert response.status_code == 302 and response.headers["Location"] == f"/login?next={path}"


# --- positions ------------------------------------------------------------------------------------------


def test_positions_link_tradeguards_to_their_trade_and_say_how_outside_ones_were_opened(
    api, client, run, sync, terminal, db_session
):
    world = api.setup()
    account_id = world["account"]["id"]
    signal = api.send_signal(world["client"], BUY).json
    api.decide(world["user"], signal["id"])
    trade = run(signal["id"])
    manual = terminal.sim_open_manual(1001, "USDJPY", mt5c.ORDER_TYPE_SELL, 0.2)
    assert sync(account_id).status == "ok"
    db_session.expire_all()
    trade = db_session.get(Trade, trade.id)

    sign_in(client, world["user"]["email"])
    page = _html(client.get("/positions"))
    rows = _rows(page, "position-")
    ours = rows[f"position-{account_id}-{trade.position_ticket}"]
    assert f'<a href="/trades/{trade.id}">TradeGuard: trade {trade.id}</a>' in ours
    assert all(f"<td>{shown}</td>" in ours for shown in ("EURUSD", "0.1", world["account"]["name"]))
    outside = rows[f"position-{account_id}-{manual}"]
    assert "Outside TradeGuard: by hand, on the desktop terminal" in outside and "/trades/" not in outside
    assert "<td>USDJPY</td>" in outside and ">sell<" in outside and "<td>0.2</td>" in outside

    # A trade filled since: the fragment the page refreshes from lists its position, no reload needed.
    second = api.send_signal(world["client"], {**BUY, "comment": "second"}).json
    api.decide(world["user"], second["id"])
    filled = run(second["id"])
    sync(account_id)
    fragment = _html(client.get("/positions/table"))
    assert "<html" not in fragment
    assert f'<a href="/trades/{filled.id}">' in fragment and f'<a href="/trades/{trade.id}">' in fragment
    assert len(_rows(fragment, "position-")) == 3

    # Nobody else sees them.
    client.delete_cookie("tg_session")
    stranger = api.setup()
    sign_in(client, stranger["user"]["email"])
    elsewhere = _html(client.get("/positions"))
    assert _rows(elsewhere, "position-") == {} and "No open positions" in elsewhere


def test_positions_show_profit_sl_tp_and_every_way_of_opening(api, client, db_session):
    world = api.setup()
    account_id = world["account"]["id"]
    (trade_id,) = _seed_trades(db_session, world, [TradeState.FILLED])
    db_session.add(
        AccountSync(
            account_id=account_id,
            last_synced_at=utcnow(),
            positions=[
                _position(account_id, 501, attribution="tradeguard", trade_id=trade_id, opened_from=None),
                _position(account_id, 502, opened_from="mobile", profit="-3.50", sl="1.09000"),
                _position(account_id, 503, opened_from="web"),
                _position(account_id, 504, opened_from="expert"),
                _position(account_id, 505, opened_from=None),
            ],
        )
    )
    db_session.commit()
    sign_in(client, world["user"]["email"])
    rows = _rows(_html(client.get("/positions")), "position-")
    assert f'href="/trades/{trade_id}"' in rows[f"position-{account_id}-501"]
    assert "on the mobile app" in rows[f"position-{account_id}-502"]
    assert '<td class="loss">-3.50</td>' in rows[f"position-{account_id}-502"]
    assert "<td>1.09000</td>" in rows[f"position-{account_id}-502"]  # SL
    assert "<td>1.11000</td>" in rows[f"position-{account_id}-502"]  # TP
    assert "<td>—</td>" in rows[f"position-{account_id}-503"]  # no SL
    assert '<td class="gain">10.00</td>' in rows[f"position-{account_id}-503"]
    assert "on the web terminal" in rows[f"position-{account_id}-503"]
    assert "by an expert advisor" in rows[f"position-{account_id}-504"]
    assert "opened from an unknown source" in rows[f"position-{account_id}-505"]


# --- trades ---------------------------------------------------------------------------------------------


def test_trades_are_newest_first_and_filter_by_state_and_account(api, client, db_session):
    world = api.setup()
    other_account = api.account(world["user"])
    ids = _seed_trades(
        db_session, world, [TradeState.FILLED, TradeState.REJECTED, TradeState.CLOSED, TradeState.FILLED]
    )
    (elsewhere,) = _seed_trades(db_session, {**world, "account": other_account}, [TradeState.FAILED])
    sign_in(client, world["user"]["email"])

    everything = _html(client.get("/trades"))
    assert _trade_ids(everything) == [elsewhere, *reversed(ids)]
    rejected_row = _rows(everything, f"trade-{ids[1]}")[f"trade-{ids[1]}"]
    assert f'<a href="/trades/{ids[1]}">#{ids[1]}</a>' in rejected_row
    assert "broker rejected the order: retcode 10019 No money" in rejected_row
    assert "0.1 @ 1.1" in rejected_row
    assert "0.1 @ 1.1002" in _rows(everything, f"trade-{ids[0]}")[f"trade-{ids[0]}"]
    assert "Page 1 of 1 · 5 trades" in everything and 'rel="next"' not in everything

    filled = _html(client.get("/trades?state=filled"))
    assert _trade_ids(filled) == [ids[3], ids[0]]
    assert '<option value="filled" selected>' in filled
    assert _trade_ids(_html(client.get(f"/trades?account_id={other_account['id']}"))) == [elsewhere]
    both = _html(client.get(f"/trades?state=rejected&account_id={world['account']['id']}"))
    assert _trade_ids(both) == [ids[1]]
    assert f'<option value="{world["account"]["id"]}" selected>' in both
    none = _html(client.get(f"/trades?state=partial&account_id={world['account']['id']}"))
    assert _trade_ids(none) == [] and "No trades match these filters" in none

    # Bad filters are shown as an error and ignored: never a 500.
    stranger = api.setup()
    for query, error in (
        ("state=lost", "That state is not one of the list"),
        ("state=%3Cscript%3E", "That state is not one of the list"),
        ("account_id=abc", "That account is not one of yours"),
        ("account_id=-1", "That account is not one of yours"),
        ("account_id=99999999999999999999999", "That account is not one of yours"),
        (f"account_id={stranger['account']['id']}", "That account is not one of yours"),
    ):
        response = client.get(f"/trades?{query}")
        assert response.status_code == 200, query
        assert error in _html(response) and _trade_ids(_html(response)) == [elsewhere, *reversed(ids)]
        assert "<script>" not in _html(response)
    for query in ("page=abc", "page=-3", "page=0", "page=", "page=%D9%A1"):
        response = client.get(f"/trades?{query}")
        assert response.status_code == 200 and len(_trade_ids(_html(response))) == 5, query
    far = client.get("/trades?page=99999999999999999999")
    assert far.status_code == 200 and "No trades on this page: there are 5" in _html(far)


def test_trades_page_fifty_at_a_time_keeping_the_filters(api, client, db_session):
    world = api.setup()
    ids = _seed_trades(db_session, world, [TradeState.REJECTED] * 52 + [TradeState.FILLED])
    sign_in(client, world["user"]["email"])

    first = _html(client.get("/trades"))
    assert _trade_ids(first) == list(reversed(ids))[:50]
    assert "Page 1 of 2 · 53 trades" in first
    assert 'rel="next" href="/trades?page=2"' in first and 'rel="prev"' not in first
    second = _html(client.get("/trades?page=2"))
    assert _trade_ids(second) == list(reversed(ids))[50:]
    assert 'rel="prev" href="/trades"' in second and 'rel="next"' not in second

    account_id = world["account"]["id"]
    rejected = _html(client.get(f"/trades?state=rejected&account_id={account_id}"))
    assert _trade_ids(rejected) == list(reversed(ids[:52]))[:50]
    assert f'rel="next" href="/trades?state=rejected&amp;account_id={account_id}&amp;page=2"' in rejected
    rest = _html(client.get(f"/trades?state=rejected&account_id={account_id}&page=2"))
    assert _trade_ids(rest) == [ids[1], ids[0]]
    assert f'rel="prev" href="/trades?state=rejected&amp;account_id={account_id}"' in rest


# --- one trade ------------------------------------------------------------------------------------------


def test_a_trade_page_shows_its_fields_and_its_timeline_in_order(api, client, run, sync, db_session):
    world = api.setup()
    account_id = world["account"]["id"]
    signal = api.send_signal(world["client"], {**BUY, "comment": "breakout"}).json
    api.decide(world["user"], signal["id"])
    trade_id = run(signal["id"]).id
    sync(account_id)
    state = db_session.get(GuardState, account_id) or GuardState(account_id=account_id)
    state.broker_offset_seconds = 7200  # the trade server runs on UTC+2, as the guards learnt
    db_session.add(state)
    db_session.commit()

    sign_in(client, world["user"]["email"])
    response = client.get(f"/trades/{trade_id}")
    assert response.status_code == 200
    page = _html(response)
    trade = db_session.get(Trade, trade_id)
    assert f"Trade #{trade_id}: buy EURUSD" in page
    assert '<dt>State</dt><dd class="trade-state state-filled">filled</dd>' in page
    assert f"<dt>Account</dt><dd>{world['account']['name']}</dd>" in page
    assert "<tr><th>Volume</th><td>0.1</td><td>0.1</td></tr>" in page
    assert f"<td>{format(trade.filled_price.normalize(), 'f')}</td></tr>" in page
    assert "Broker time is the trade server's clock: UTC+2." in page

    timeline = api.http.get(f"/api/v1/trades/{trade_id}/timeline", headers=world["user"]["headers"]).json
    kinds = [entry["kind"] for entry in timeline["entries"]]
    assert kinds[:3] == ["signal.received", "signal.approved", "trade.created"]
    assert "order.filled" in kinds and kinds[-1] == "reconciliation.matched"
    items = re.findall(r"<li class=\"kind-[^\"]+\">(.*?)</li>", page, re.S)
    assert [re.search(r'<code class="kind">(.*?)</code>', item).group(1) for item in items] == kinds
    for item, entry in zip(items, timeline["entries"], strict=True):
        assert f'<time datetime="{entry["at"]}">' in item
        assert "broker " + entry["broker_time"][:19].replace("T", " ") in item
    received = items[0]
    assert "<dt>client</dt> <dd>strategy</dd>" in received
    assert "<dt>comment</dt> <dd>breakout</dd>" in received
    assert "<dt>price</dt> <dd>—</dd>" in received  # a market order
    approved = items[1]
    assert f"<dt>by</dt> <dd>{world['user']['email']}</dd>" in approved
    filled = items[kinds.index("order.filled")]
    assert "<dt>partial</dt> <dd>no</dd>" in filled and "<dt>volume</dt> <dd>0.1</dd>" in filled


def test_another_users_trade_is_a_404_page_and_their_rows_never_show(api, client, db_session):
    owner = api.setup()
    (trade_id,) = _seed_trades(db_session, owner, [TradeState.FILLED])
    db_session.add(
        AccountSync(
            account_id=owner["account"]["id"],
            last_synced_at=utcnow(),
            positions=[_position(owner["account"]["id"], 777, attribution="tradeguard", trade_id=trade_id)],
        )
    )
    db_session.commit()
    stranger = api.setup()
    sign_in(client, stranger["user"]["email"])

    response = client.get(f"/trades/{trade_id}")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "Trade not found" in _html(response) and "EURUSD" not in _html(response)
    for missing in ("/trades/0", "/trades/2147483648", "/trades/99999999999999999999"):
        answer = client.get(missing)
        assert answer.status_code == 404 and "Trade not found" in _html(answer), missing
    assert "No trades yet" in _html(client.get("/trades"))
    assert "That account is not one of yours" in _html(
        client.get(f"/trades?account_id={owner['account']['id']}")
    )
    assert _rows(_html(client.get("/positions")), "position-") == {}
    assert owner["account"]["name"] not in _html(client.get("/trades"))


def test_what_strategies_brokers_and_owners_named_is_escaped(api, client, db_session):
    world = api.setup()
    account_id = world["account"]["id"]
    db_session.execute(
        sa.text("UPDATE accounts SET name = :name WHERE id = :id"), {"name": SCRIPT, "id": account_id}
    )
    db_session.execute(
        sa.text("UPDATE strategy_clients SET name = :name WHERE id = :id"),
        {"name": SCRIPT, "id": world["client"]["id"]},
    )
    (trade_id,) = _seed_trades(db_session, world, [TradeState.REJECTED], last_error=SCRIPT)
    trade = db_session.get(Trade, trade_id)
    trade.comment = SCRIPT
    trade.failure_reason = SCRIPT
    trade.signal.comment = SCRIPT
    db_session.add(
        AccountSync(
            account_id=account_id,
            last_synced_at=utcnow(),
            positions=[_position(account_id, 900, symbol=SCRIPT, opened_from=SCRIPT)],
        )
    )
    db_session.commit()
    sign_in(client, world["user"]["email"])

    for path in ("/positions", "/positions/table", "/trades", f"/trades/{trade_id}"):
        page = _html(client.get(path))
        assert SCRIPT not in page and ESCAPED in page, path
    detail = _html(client.get(f"/trades/{trade_id}"))
    assert f"<dt>Comment</dt><dd>{ESCAPED}</dd>" in detail
    assert (
        f"<dt>client</dt> <dd>{ESCAPED}</dd>" in detail and f"<dt>comment</dt> <dd>{ESCAPED}</dd>" in detail
    )
    assert f"opened from {ESCAPED}" in _html(client.get("/positions"))
