"""Reconciliation scenarios, driven through the simulated terminal's control surface, on Postgres."""

from __future__ import annotations

import os
import threading
from decimal import Decimal

import pytest
import redis
import sqlalchemy as sa

from shared.locks import redis_exclusive
from shared.models import AccountSync, AuditLog, PositionSnapshot, ReconciliationLog, Trade, TradeState
from shared.mt5 import constants as mt5c


def events(db_session, account_id, kind=None):
    query = sa.select(ReconciliationLog).where(ReconciliationLog.account_id == account_id)
    if kind:
        query = query.where(ReconciliationLog.event_type == kind)
    return list(db_session.scalars(query.order_by(ReconciliationLog.id)))


def executed(run, approved, db_session, payload=None, **settings):
    signal_id = approved(payload)
    trade = run(signal_id, **settings)
    return db_session.get(Trade, trade.id)


def test_a_filled_trade_is_matched_once_and_the_snapshot_is_stored(sync, run, approved, db_session):
    trade = executed(run, approved, db_session)
    assert sync(trade.account_id).status == "ok"
    assert sync(trade.account_id).status == "ok"
    (matched,) = events(db_session, trade.account_id)
    assert (matched.event_type, matched.trade_id, matched.details["matched_by"]) == (
        "matched",
        trade.id,
        "ticket",
    )
    state = db_session.get(AccountSync, trade.account_id)
    assert [p["attribution"] for p in state.positions] == ["tradeguard"]
    assert state.positions[0]["trade_id"] == trade.id
    snapshots = list(
        db_session.scalars(sa.select(PositionSnapshot).where(PositionSnapshot.account_id == trade.account_id))
    )
    assert (
        len(snapshots) == 2
        and snapshots[-1].open_positions == 1
        and snapshots[-1].total_lots == Decimal("0.1")
    )
    assert snapshots[-1].peak_equity >= snapshots[-1].equity


def test_a_partial_fill_is_a_volume_divergence(sync, run, approved, db_session, terminal):
    terminal.sim_set_partial_fill(0.5)
    trade = executed(run, approved, db_session)
    sync(trade.account_id)
    (divergence,) = events(db_session, trade.account_id, "divergence")
    assert [d["kind"] for d in divergence.details["divergences"]] == ["volume"]


def test_slippage_beyond_five_pips_is_a_divergence(sync, run, approved, db_session, terminal):
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)  # a moving price would blur the 8 pips
    terminal.sim_set_slippage(80)  # 8 pips on EURUSD
    trade = executed(run, approved, db_session, deviation_points=200)
    sync(trade.account_id)
    (divergence,) = events(db_session, trade.account_id, "divergence")
    (slippage,) = divergence.details["divergences"]
    assert slippage["kind"] == "slippage" and Decimal(slippage["difference"]) == Decimal("8")


def test_sl_moved_at_the_broker_is_recorded_once_and_again_when_it_changes(
    sync, run, approved, db_session, terminal
):
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    trade = executed(run, approved, db_session, {"sl": "1.08000", "tp": "1.09000"})
    sync(trade.account_id)
    assert events(db_session, trade.account_id, "divergence") == []

    def move_sl(new_sl):
        result = terminal.order_send(
            {
                "action": mt5c.TRADE_ACTION_SLTP,
                "position": trade.position_ticket,
                "symbol": "EURUSD",
                "sl": new_sl,
                "tp": 1.09000,
            }
        )
        assert result.retcode == mt5c.TRADE_RETCODE_DONE

    move_sl(1.07850)  # 15 pips further
    sync(trade.account_id)
    sync(trade.account_id)
    (first,) = events(db_session, trade.account_id, "divergence")
    assert first.details["divergences"][0]["kind"] == "sl"
    move_sl(1.07700)
    sync(trade.account_id)
    assert len(events(db_session, trade.account_id, "divergence")) == 2
    # Put back as requested: the clearing is recorded; moved again as before: recorded again.
    move_sl(1.08000)
    sync(trade.account_id)
    sync(trade.account_id)
    move_sl(1.07850)
    sync(trade.account_id)
    history = events(db_session, trade.account_id, "divergence")
    assert [e.details.get("cleared", False) for e in history] == [False, False, True, False]
    assert history[-1].fingerprint == history[0].fingerprint
    assert len(events(db_session, trade.account_id, "matched")) == 1


def test_a_position_opened_by_hand_is_an_outside_position_recorded_once(sync, api, db_session, terminal):
    world = api.setup()
    ticket = terminal.sim_open_manual(1001, "GBPUSD", mt5c.ORDER_TYPE_SELL, 0.3)
    sync(world["account"]["id"])
    sync(world["account"]["id"])
    (outside,) = events(db_session, world["account"]["id"], "outside_position")
    assert (outside.position_ticket, outside.opened_by, outside.trade_id) == (ticket, "desktop", None)
    state = db_session.get(AccountSync, world["account"]["id"])
    assert state.positions[0]["attribution"] == "outside" and state.positions[0]["opened_from"] == "desktop"


@pytest.mark.parametrize("how", ["sl", "tp", "by_hand"])
def test_a_position_closed_outside_tradeguard_closes_the_trade_with_reason_price_and_pnl(
    sync, run, approved, db_session, terminal, how
):
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    trade = executed(run, approved, db_session, {"sl": "1.08000", "tp": "1.09000"})
    sync(trade.account_id)
    if how == "sl":
        terminal.sim_set_quote("EURUSD", 1.07990, 1.08000)
    elif how == "tp":
        terminal.sim_set_quote("EURUSD", 1.09010, 1.09020)
    else:
        terminal.sim_close_manual(1001, trade.position_ticket)
    terminal.positions_get()  # let the broker act on the new price
    assert sync(trade.account_id).status == "ok"

    trade = db_session.get(Trade, trade.id)
    assert trade.state == TradeState.CLOSED and trade.close_reason == how
    assert trade.close_price is not None and trade.pnl is not None
    if how == "sl":
        assert trade.close_price <= Decimal("1.08000") and trade.pnl < 0
    if how == "tp":
        assert trade.close_price == Decimal("1.09000") and trade.pnl > 0
    (closed,) = events(db_session, trade.account_id, "closed_outside")
    assert (closed.close_reason, closed.trade_id) == (how, trade.id)
    sync(trade.account_id)
    assert len(events(db_session, trade.account_id, "closed_outside")) == 1
    assert "trade.closed_outside" in db_session.scalars(sa.select(AuditLog.action)).all()


def test_a_stop_out_is_recorded_as_such(sync, run, approved, db_session, terminal):
    trade = executed(run, approved, db_session, {"volume": "9"})
    sync(trade.account_id)
    terminal.sim_gap("EURUSD", -5)
    terminal.positions_get()
    sync(trade.account_id)
    trade = db_session.get(Trade, trade.id)
    assert trade.state == TradeState.CLOSED and trade.close_reason == "stop_out"


def test_a_terminal_that_is_down_opens_the_breaker_and_others_are_unaffected(sync, api, db_session):
    down, fine = api.setup(), api.setup()
    sync.unreachable.add(down["account"]["id"])
    outcomes = [sync(down["account"]["id"]).status for _ in range(3)]
    assert outcomes == ["failed", "failed", "failed"]
    assert sync(down["account"]["id"]).status == "breaker_open"
    assert sync(fine["account"]["id"]).status == "ok"

    state = db_session.get(AccountSync, down["account"]["id"])
    assert state.consecutive_failures == 3 and state.breaker_open_until is not None
    assert "TerminalUnavailable" in state.last_error
    opened = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "account.breaker_opened")).all()
    assert [a.target_id for a in opened] == [down["account"]["id"]]


def test_two_workers_racing_on_one_account_one_wins_nothing_doubled(sync, api, app, db_session, terminal):
    world = api.setup()
    terminal.sim_open_manual(1001, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    terminal.sim_set_latency(300)  # both syncs overlap while waiting on the terminal
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    def lock(name):
        return redis_exclusive(client, f"test:{name}", ttl_seconds=30)

    results: list[str] = []
    barrier = threading.Barrier(2)

    def race():
        with app.app_context():
            barrier.wait()
            results.append(sync(world["account"]["id"], lock=lock).status)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    terminal.sim_set_latency(0)
    assert sorted(results) == ["busy", "ok"]
    assert len(events(db_session, world["account"]["id"], "outside_position")) == 1


def test_a_trade_left_sent_is_settled_when_its_position_is_found_by_identity(
    sync, run, approved, db_session, terminal
):
    from shared.mt5.errors import OrderOutcomeUnknown

    signal_id = approved()
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        run(signal_id)
    trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    assert trade.state == TradeState.SENT
    assert sync(trade.account_id).status == "ok"
    trade = db_session.get(Trade, trade.id)
    assert trade.state == TradeState.FILLED and trade.filled_volume == Decimal("0.10")
    assert trade.position_ticket is not None
    actions = db_session.scalars(sa.select(AuditLog.action).where(AuditLog.target_id == trade.id)).all()
    assert "trade.filled_by_reconciliation" in actions
    # The execution task's next attempt finds it settled and sends nothing.
    again = run(signal_id)
    assert again.state == TradeState.FILLED and again.attempts == 1
