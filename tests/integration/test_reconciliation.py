"""Reconciliation scenarios, driven through the simulated terminal's control surface, on Postgres."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.core.locks import redis_exclusive_many
from shared.models import AccountSync, AuditLog, PositionSnapshot, ReconciliationLog, Trade, TradeState
from shared.mt5 import constants as mt5c
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.terminal import SimTerminal
from tests.integration.conftest import BUY


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
    assert (outside.position_ticket, outside.opened_from, outside.trade_id) == (ticket, "desktop", None)
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


def test_a_success_closes_the_breaker_and_a_new_outage_starts_at_the_first_backoff(sync, api, db_session):
    world = api.setup()
    account_id = world["account"]["id"]

    def state():
        query = sa.select(AccountSync).where(AccountSync.account_id == account_id)
        return db_session.scalars(query.execution_options(populate_existing=True)).one()

    sync.unreachable.add(account_id)
    for _ in range(4):  # trips at the third failure; the fourth attempt finds it open
        sync(account_id)
    db_session.execute(  # the backoff has run out
        sa.update(AccountSync)
        .where(AccountSync.account_id == account_id)
        .values(breaker_open_until=utcnow() - timedelta(seconds=1))
    )

    sync.unreachable.discard(account_id)
    assert sync(account_id).status == "ok"
    assert (state().consecutive_failures, state().breaker_open_until) == (0, None)

    sync.unreachable.add(account_id)
    assert [sync(account_id).status for _ in range(3)] == ["failed", "failed", "failed"]
    # Counted from this outage's failures alone: 30 s again, not the doubled backoff of the last one.
    reopened = state()
    assert reopened.consecutive_failures == 3
    assert abs((reopened.breaker_open_until - utcnow()).total_seconds() - 30) < 5


def test_two_workers_racing_on_one_account_one_wins_nothing_doubled(sync, api, app, db_session, terminal):
    world = api.setup()
    terminal.sim_open_manual(1001, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    terminal.sim_set_latency(300)  # both syncs overlap while waiting on the terminal
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    def locks(names):  # the workers' own locks (workers.runtime)
        return redis_exclusive_many(client, names, ttl_seconds=30)

    results: list[str] = []
    barrier = threading.Barrier(2)

    def race():
        with app.app_context():
            barrier.wait()
            results.append(sync.many([world["account"]["id"]], locks=locks)[0].status)

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


# --- batches ------------------------------------------------------------------------------------------


def test_a_batch_reconciles_every_account_once_and_reports_each_outcome(sync, api, db_session, terminal):
    worlds = [api.setup() for _ in range(3)]
    ids = [w["account"]["id"] for w in worlds]
    for world in worlds:  # each its own MT5 account (one login is registered once)
        terminal.sim_open_manual(world["account"]["login"], "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    sync.unreachable.add(ids[1])

    outcomes = sync.many([*ids, 999_999])

    assert [(o.account_id, o.status) for o in outcomes] == [
        (ids[0], "ok"),
        (ids[1], "failed"),
        (ids[2], "ok"),
        (999_999, "gone"),
    ]
    assert [o.events for o in outcomes] == [1, 0, 1, 0]  # one outside position on each account that synced
    for account_id, snapshots in ((ids[0], 1), (ids[1], 0), (ids[2], 1)):
        stored = db_session.scalars(
            sa.select(PositionSnapshot).where(PositionSnapshot.account_id == account_id)
        ).all()
        assert len(stored) == snapshots
    failed = db_session.get(AccountSync, ids[1])
    assert failed.consecutive_failures == 1 and "connection refused" in failed.last_error
    assert failed.last_synced_at is None


def test_accounts_whose_lock_is_held_elsewhere_are_busy_and_untouched(sync, api, db_session):
    from contextlib import contextmanager

    from shared.core.locks import Busy

    held, free = api.setup()["account"]["id"], api.setup()["account"]["id"]

    @contextmanager
    def lock(name):
        if name == f"account:{held}":
            raise Busy(name)
        yield

    outcomes = sync.many([held, free], lock=lock)
    assert [o.status for o in outcomes] == ["busy", "ok"]
    assert db_session.get(AccountSync, held) is None
    assert db_session.get(AccountSync, free).last_synced_at is not None


def test_one_account_whose_rows_cannot_be_written_does_not_lose_the_others(
    sync, api, db_session, monkeypatch
):
    from shared.reconciliation import sync as account_sync

    good, bad, other = (api.setup()["account"]["id"] for _ in range(3))
    write_plans = account_sync._write_plans
    batches: list[list[int]] = []

    def failing_for_bad(session, plans):
        batches.append([plan.account_id for plan in plans])
        if any(plan.account_id == bad for plan in plans):
            raise sa.exc.IntegrityError("INSERT ...", {}, Exception("simulated constraint violation"))
        return write_plans(session, plans)

    monkeypatch.setattr(account_sync, "_write_plans", failing_for_bad)
    outcomes = sync.many([good, bad, other])

    # The batch's transaction failed as a whole, then each account was written on its own.
    assert batches == [[good, bad, other], [good], [bad], [other]]
    assert [o.status for o in outcomes] == ["ok", "crashed", "ok"]
    assert db_session.get(AccountSync, good).last_synced_at is not None
    assert db_session.get(AccountSync, other).last_synced_at is not None
    assert db_session.get(AccountSync, bad) is None


def test_a_crash_while_deciding_one_account_is_a_failed_sync_and_spares_the_batch(sync, api, db_session):
    first, second = api.setup()["account"]["id"], api.setup()["account"]["id"]

    def specs(account, terminal, names):
        if account.id == first:
            raise RuntimeError("a bug in the rules")
        return {name: terminal.symbol(name) for name in names}

    outcomes = sync.many([first, second], symbol_specs=specs)
    assert [o.status for o in outcomes] == ["failed", "ok"]
    state = db_session.get(AccountSync, first)
    assert state.consecutive_failures == 1 and "a bug in the rules" in state.last_error


def test_deals_are_read_from_just_after_the_newest_deal_already_seen(sync, api, db_session, terminal):
    from datetime import timedelta

    account_id = api.setup()["account"]["id"]
    assert sync(account_id).status == "ok"
    (first,) = sync.reads
    assert first[2] - first[1] > timedelta(days=1)  # no deal seen yet: a wide window
    # The window held the account's deposit: the cursor is the newest deal's time.
    deposit = max(d.time for d in terminal.history_deals_get(0, 2**31))
    cursor = db_session.get(AccountSync, account_id).deals_synced_to
    assert int(cursor.timestamp()) == deposit

    terminal.sim_open_manual(1001, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    assert sync(account_id).status == "ok"
    second = sync.reads[-1]
    assert second[1] == cursor.replace(microsecond=0) + timedelta(seconds=1)
    opening = max(d.time for d in terminal.history_deals_get(0, 2**31))
    moved = db_session.get(AccountSync, account_id).deals_synced_to
    assert opening >= deposit and int(moved.timestamp()) == opening

    # Nothing new: the window starts after the newest deal, and the cursor stays where it was.
    assert sync(account_id).status == "ok"
    assert sync.reads[-1][1] == moved.replace(microsecond=0) + timedelta(seconds=1)
    assert db_session.get(AccountSync, account_id).deals_synced_to == moved


def test_a_hung_terminal_does_not_hold_back_the_figures_of_the_accounts_that_answered(
    sync, api, db_session, monkeypatch
):
    """The answered accounts are written after `write_after_seconds`, while the hung one still waits;
    the hung one is written when it finally answers."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.reconciliation import sync as account_sync

    fast, hung, other = (api.setup()["account"]["id"] for _ in range(3))
    first_write = threading.Event()
    written: list[list[int]] = []
    write_plans = account_sync._write_plans

    def recording(session, plans):
        written.append([plan.account_id for plan in plans])
        result = write_plans(session, plans)
        first_write.set()
        return result

    monkeypatch.setattr(account_sync, "_write_plans", recording)

    def specs(account, terminal, names):
        if account.id == hung:
            # Answers only once the others are written; gives up (and fails the test) after 10 s.
            assert first_write.wait(timeout=10), "the answered accounts waited for the hung one"
        return {name: terminal.symbol(name) for name in names}

    with ThreadPoolExecutor(max_workers=3) as threads:
        outcomes = sync.many(
            [fast, hung, other], symbol_specs=specs, executor=threads, write_after_seconds=0.5
        )

    assert [o.status for o in outcomes] == ["ok", "ok", "ok"]
    assert written == [[fast, other], [hung]]
    for account_id in (fast, hung, other):
        assert db_session.get(AccountSync, account_id).last_synced_at is not None


def test_an_account_still_not_done_at_the_batch_deadline_is_recorded_as_a_failed_sync(sync, api, db_session):
    from concurrent.futures import ThreadPoolExecutor

    fast, hung = api.setup()["account"]["id"], api.setup()["account"]["id"]
    release = threading.Event()

    def specs(account, terminal, names):
        if account.id == hung:
            release.wait(timeout=10)  # a terminal that does not answer within the batch's deadline
        return {name: terminal.symbol(name) for name in names}

    try:
        with ThreadPoolExecutor(max_workers=2) as threads:
            outcomes = sync.many(
                [fast, hung, fast],  # a duplicate id is synced once
                symbol_specs=specs,
                executor=threads,
                write_after_seconds=0.2,
                give_up_after_seconds=1.0,
            )
            release.set()
    finally:
        release.set()
    assert [(o.account_id, o.status) for o in outcomes] == [(fast, "ok"), (hung, "failed")]
    state = db_session.get(AccountSync, hung)
    assert state.consecutive_failures == 1 and "deadline" in state.last_error
    assert state.last_synced_at is None
    assert (
        len(db_session.scalars(sa.select(PositionSnapshot).where(PositionSnapshot.account_id == fast)).all())
        == 1
    )


# --- positions identified by more than their ticket; positions that vanish ---------------------------


def _trade_on(api, run, db_session, world, comment):
    """A buy on the world's account, approved and executed against the market the test's `run` reaches."""
    signal = api.send_signal(world["client"], {**BUY, "comment": comment}).json
    api.decide(world["user"], signal["id"])
    return db_session.get(Trade, run(signal["id"]).id)


def _api_events(api, world, trade_id):
    url = f"/api/v1/reconciliation/{world['account']['id']}?trade_id={trade_id}"
    return api.http.get(url, headers=world["user"]["headers"]).json["items"]  # newest first


def test_a_ticket_reused_by_a_restarted_terminal_is_a_new_position_matched_and_closed(
    api, run, sync, db_session, broker, market, terminal
):
    world = api.setup()
    account_id = world["account"]["id"]
    first = _trade_on(api, run, db_session, world, "first")
    sync(account_id)
    terminal.sim_close_manual(1001, first.position_ticket)
    sync(account_id)
    assert [e["event_type"] for e in _api_events(api, world, first.id)] == ["closed_outside", "matched"]

    # The terminal restarts having forgotten everything and numbers its tickets from where it began:
    # the next position gets the first one's ticket again (a server without its state file did so).
    control = market.restart(SimBroker(seed=7, first_ticket=broker.first_ticket))
    second = _trade_on(api, run, db_session, world, "second")
    assert second.position_ticket == first.position_ticket

    sync(account_id)
    (matched,) = _api_events(api, world, second.id)
    assert (matched["event_type"], matched["position_ticket"]) == ("matched", second.position_ticket)

    control.sim_close_manual(1001, second.position_ticket)
    sync(account_id)
    second = db_session.get(Trade, second.id)
    assert second.state == TradeState.CLOSED and second.close_reason == "by_hand"
    closed, _ = _api_events(api, world, second.id)
    assert (closed["event_type"], closed["close_reason"]) == ("closed_outside", "by_hand")
    assert Decimal(closed["pnl"]) == second.pnl
    # The first trade's events are still its own, one of each.
    assert [e["event_type"] for e in _api_events(api, world, first.id)] == ["closed_outside", "matched"]


def test_a_position_lost_by_a_restarted_terminal_is_recorded_as_vanished_once(
    api, run, sync, db_session, market
):
    world = api.setup()
    account_id = world["account"]["id"]
    trade = _trade_on(api, run, db_session, world, "lost")
    sync(account_id)
    market.restart(SimBroker(seed=7))  # no state file: the position and its history are gone

    # The sync right after it went may not have its closing deal yet (history can lag): it waits once.
    sync(account_id)
    assert events(db_session, account_id, "vanished") == []
    sync(account_id)
    sync(account_id)

    (vanished,) = events(db_session, account_id, "vanished")
    assert (vanished.trade_id, vanished.position_ticket) == (trade.id, trade.position_ticket)
    assert (vanished.symbol, vanished.side, vanished.volume) == ("EURUSD", "buy", Decimal("0.1"))
    trade = db_session.get(Trade, trade.id)
    assert trade.state == TradeState.FILLED and trade.closed_at is None  # still looked for
    headers = world["user"]["headers"]
    shown = api.http.get(f"/api/v1/trades/{trade.id}", headers=headers).json
    assert shown["state"] == "filled" and shown["vanished_at"] is not None
    status = api.http.get(f"/api/v1/accounts/{account_id}/status", headers=headers).json
    assert status["vanished_trades"] == 1
    assert [e["event_type"] for e in _api_events(api, world, trade.id)] == ["vanished", "matched"]
    assert "trade.vanished" in db_session.scalars(sa.select(AuditLog.action)).all()


class HistoryGapTerminal(SimTerminal):
    """A terminal whose deal history lacks the deals of the positions in `hidden` (incomplete history)."""

    hidden: set[int] = set()

    def history_deals_get(self, *args, **kwargs):
        deals = super().history_deals_get(*args, **kwargs)
        if deals is None:
            return None
        return tuple(d for d in deals if d.position_id not in self.hidden)


def test_a_vanished_trade_is_closed_with_its_real_close_once_the_closing_deal_turns_up(
    api, run, sync, db_session, terminal, monkeypatch
):
    world = api.setup()
    account_id = world["account"]["id"]
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    trade = _trade_on(api, run, db_session, world, "gap")
    sync(account_id)
    monkeypatch.setattr(HistoryGapTerminal, "hidden", {trade.position_ticket})
    sync.terminal_type = HistoryGapTerminal
    terminal.sim_set_quote("EURUSD", 1.08600, 1.08610)
    terminal.sim_close_manual(1001, trade.position_ticket)
    sync(account_id)
    sync(account_id)
    assert [e.trade_id for e in events(db_session, account_id, "vanished")] == [trade.id]
    assert db_session.get(Trade, trade.id).state == TradeState.FILLED

    HistoryGapTerminal.hidden = set()  # the history catches up
    sync(account_id)
    trade = db_session.get(Trade, trade.id)
    assert trade.state == TradeState.CLOSED and trade.close_reason == "by_hand"
    # Bought at 1.08510, closed at 1.08600: 9 pips on 0.1 lot.
    assert trade.close_price == Decimal("1.086") and trade.pnl == Decimal("9.00")
    (closed,) = events(db_session, account_id, "closed_outside")
    assert (closed.trade_id, closed.close_price, closed.pnl) == (trade.id, Decimal("1.086"), Decimal("9.00"))
    status = api.http.get(f"/api/v1/accounts/{account_id}/status", headers=world["user"]["headers"]).json
    assert status["vanished_trades"] == 0
    sync(account_id)
    assert len(events(db_session, account_id, "vanished")) == 1


def test_a_vanished_position_that_comes_back_is_matched_again_and_no_longer_vanished(
    api, run, sync, db_session, broker, market
):
    world = api.setup()
    account_id = world["account"]["id"]
    trade = _trade_on(api, run, db_session, world, "back")
    sync(account_id)
    market.restart(SimBroker(seed=7))  # a terminal without the position ...
    sync(account_id)
    sync(account_id)
    assert db_session.get(Trade, trade.id).vanished_at is not None
    market.restart(broker)  # ... and the one that has it again
    sync(account_id)
    trade = db_session.get(Trade, trade.id)
    assert trade.vanished_at is None and trade.state == TradeState.FILLED
    state = db_session.get(AccountSync, account_id)
    assert [p["trade_id"] for p in state.positions] == [trade.id]
    # One event of each: the position is the same one (same key), matched and vanished once.
    assert [e.event_type for e in events(db_session, account_id)] == ["matched", "vanished"]
    assert "trade.reappeared" in db_session.scalars(sa.select(AuditLog.action)).all()
