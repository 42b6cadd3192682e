"""Reconciliation's sync at its edges (issue 17: each test here kills a mutant of
shared/reconciliation/sync.py no test noticed).

- A batch writes what has answered after `write_after_seconds`, then waits for the stragglers until
  `give_up_after_seconds` after the batch started: a straggler that answers before that deadline is
  written with its figures, not given up.
- A trade learns its position's key at the first sync that matches it by identity.
- The shown positions and the divergence events carry prices as text, and null for what is absent.
- A position closed in parts across syncs is booked with every part (its whole history is read when the
  window lacks its opening deal).
- A trade closed outside is closed at its closing deal's time (on the trade and in its webhook event).
- A sync records how long it took, in milliseconds; the breaker counts its openings, and the first
  success after it was open is audited (`account.breaker_closed`), once.
- A `sent` trade is settled from its position only if it is still `sent` when the sync writes.
- A batch of one whose write fails is reported `crashed`, with the error's type.
- A snapshot stored before positions had keys is read by identifier: its positions' events are not
  recorded again.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.core.extensions import secret_box, task_queue
from shared.models import AccountSync, AuditLog, ReconciliationLog, Trade, TradeState, User, WebhookDelivery
from shared.mt5 import constants as mt5c
from shared.mt5.errors import OrderOutcomeUnknown
from shared.mt5.gateway import Gateway
from shared.notifications import webhooks
from shared.reconciliation import sync as reconciliation_sync


def test_a_straggler_that_answers_before_the_batchs_deadline_is_written_not_given_up(sync, api):
    fast, slow = api.setup()["account"]["id"], api.setup()["account"]["id"]

    def specs(account, terminal, names):
        if account.id == slow:
            time.sleep(0.5)  # past the first write, well within the deadline
        return {name: terminal.symbol(name) for name in names}

    with ThreadPoolExecutor(max_workers=2) as threads:
        outcomes = sync.many(
            [fast, slow],
            symbol_specs=specs,
            executor=threads,
            write_after_seconds=0.1,
            give_up_after_seconds=30,
        )
    assert [(o.account_id, o.status) for o in outcomes] == [(fast, "ok"), (slow, "ok")]


def _executed(run, approved, db_session, payload=None):
    return db_session.get(Trade, run(approved(payload)).id)


def events(db_session, account_id, kind):
    query = sa.select(ReconciliationLog).where(
        ReconciliationLog.account_id == account_id, ReconciliationLog.event_type == kind
    )
    return list(db_session.scalars(query.order_by(ReconciliationLog.id)))


def test_a_trade_learns_its_positions_key_at_the_first_sync(sync, run, approved, db_session):
    trade = _executed(run, approved, db_session)
    assert trade.position_key is None
    sync(trade.account_id)
    (matched,) = events(db_session, trade.account_id, "matched")
    assert db_session.get(Trade, trade.id).position_key == matched.position_key


def test_the_shown_positions_and_divergences_carry_their_figures_as_text_and_none_when_absent(
    sync, run, approved, db_session, terminal
):
    """A stop the position does not have is null, one it has is its price as text; a divergence says what
    was expected and what is there, null for a stop added that was not requested."""
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    trade = _executed(run, approved, db_session, {"sl": "1.08000"})
    sync(trade.account_id)
    (row,) = db_session.get(AccountSync, trade.account_id).positions
    assert Decimal(row["sl"]) == Decimal("1.08") and row["tp"] is None
    result = terminal.order_send(
        {
            "action": mt5c.TRADE_ACTION_SLTP,
            "position": trade.position_ticket,
            "symbol": "EURUSD",
            "sl": 1.07850,  # 15 pips further
            "tp": 1.09000,  # not requested
        }
    )
    assert result.retcode == mt5c.TRADE_RETCODE_DONE
    sync(trade.account_id)
    (divergence,) = events(db_session, trade.account_id, "divergence")
    moved, added = divergence.details["divergences"]
    assert (moved["kind"], Decimal(moved["expected"]), Decimal(moved["actual"])) == (
        "sl",
        Decimal("1.08"),
        Decimal("1.0785"),
    )
    assert (added["kind"], added["change"], added["expected"], Decimal(added["actual"])) == (
        "tp",
        "added",
        None,
        Decimal("1.09"),
    )


def test_a_trade_closed_outside_is_closed_at_its_closing_deals_time(
    sync, run, approved, db_session, terminal
):
    trade = _executed(run, approved, db_session)
    owner = db_session.get(User, trade.owner_id)
    webhooks.create_webhook(
        db_session, secret_box(), owner, url="http://93.184.216.34/hook", events=None, allow_private=False
    )
    db_session.commit()
    sync(trade.account_id)
    terminal.sim_close_manual(1001, trade.position_ticket)
    (closing,) = [
        d
        for d in terminal.history_deals_get(
            datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
        if d.position_id == trade.position_ticket and d.entry == mt5c.DEAL_ENTRY_OUT
    ]
    time.sleep(0.01)  # the sync's own time is another moment
    sync(trade.account_id, queue=task_queue())
    trade = db_session.get(Trade, trade.id)
    closed_at = datetime.fromtimestamp(closing.time_msc / 1000, UTC)
    assert trade.state == TradeState.CLOSED and trade.closed_at == closed_at
    (delivery,) = db_session.scalars(sa.select(WebhookDelivery)).all()
    assert delivery.event == "trade.closed"
    assert datetime.fromisoformat(delivery.payload["data"]["closed_at"]) == closed_at


def test_a_sync_records_how_long_it_took_in_milliseconds(sync, api, db_session):
    account_id = api.setup()["account"]["id"]
    start = utcnow()
    ticks = iter(range(100))

    def clock():
        return start + timedelta(seconds=1.5 * next(ticks))  # each reading of the clock 1.5 s later

    (outcome,) = sync.many([account_id], now=clock)
    assert outcome.status == "ok"
    # Read when the batch was loaded, when the account's sync started and when it ended.
    assert db_session.get(AccountSync, account_id).last_sync_ms == 1500


def test_the_breaker_counts_its_openings_and_the_first_success_after_it_is_audited_once(
    sync, api, db_session
):
    account_id = api.setup()["account"]["id"]
    sync.unreachable.add(account_id)
    for _ in range(3):
        sync(account_id)
    state = db_session.get(AccountSync, account_id)
    assert state.breaker_open_until is not None and state.breaker_openings == 1
    state.breaker_open_until = utcnow() - timedelta(seconds=1)  # the back-off is over
    db_session.commit()
    sync.unreachable.discard(account_id)

    def closings():
        query = sa.select(AuditLog.target_id).where(AuditLog.action == "account.breaker_closed")
        return db_session.scalars(query).all()

    assert sync(account_id).status == "ok"
    assert closings() == [account_id]  # the success that closed it
    assert sync(account_id).status == "ok"
    assert closings() == [account_id]  # and no other


def test_a_snapshot_from_before_position_keys_does_not_record_its_positions_events_again(
    sync, run, approved, db_session
):
    """Rows of a snapshot stored before positions had keys are found by identifier, once: the position's
    matched event (recorded then under the key `ticket:<ticket>`) is not recorded again."""
    trade = _executed(run, approved, db_session)
    sync(trade.account_id)
    (matched,) = events(db_session, trade.account_id, "matched")
    matched.position_key = f"ticket:{trade.position_ticket}"
    state = db_session.get(AccountSync, trade.account_id)
    state.positions = [{k: v for k, v in row.items() if k != "position_key"} for row in state.positions]
    db_session.commit()
    assert sync(trade.account_id).events == 0
    assert len(events(db_session, trade.account_id, "matched")) == 1


def test_a_batch_of_one_whose_write_fails_is_reported_crashed(sync, api, db_session, monkeypatch):
    account_id = api.setup()["account"]["id"]

    def broken(session, plans):
        raise sa.exc.OperationalError("INSERT ...", {}, Exception("the database went away"))

    monkeypatch.setattr(reconciliation_sync, "_write_plans", broken)
    (outcome,) = sync.many([account_id])
    assert (outcome.account_id, outcome.status, outcome.error) == (account_id, "crashed", "OperationalError")


def test_a_close_in_two_parts_across_syncs_is_booked_with_both_parts(
    sync, run, approved, db_session, terminal
):
    """The deals window of a sync starts after the newest deal already seen, so a position closed in two
    parts across syncs has only its last part in the window: without its opening deal there, its whole
    history is read, and the close is booked with both parts' volume."""
    trade = _executed(run, approved, db_session, {"volume": "0.20"})
    sync(trade.account_id)
    tick = terminal.symbol_info_tick("EURUSD")
    request = Gateway.market_order_request(
        symbol="EURUSD",
        side="sell",
        volume="0.10",
        price=tick.bid,
        sl=None,
        tp=None,
        deviation_points=20,
        magic=0,
        comment="",
        position=trade.position_ticket,
    )
    assert terminal.order_send(request).retcode == mt5c.TRADE_RETCODE_DONE
    sync(trade.account_id)  # half of it still open; the window moves past the first part
    time.sleep(1.1)  # the rest is closed in a later second
    terminal.sim_close_manual(1001, trade.position_ticket)
    sync(trade.account_id)
    assert db_session.get(Trade, trade.id).state == TradeState.CLOSED
    (closed,) = events(db_session, trade.account_id, "closed_outside")
    assert closed.volume == Decimal("0.20")


def test_a_sent_trade_another_worker_settled_meanwhile_is_not_settled_again(
    sync, run, approved, db_session, terminal
):
    """The sync settles a `sent` trade from its position only if it is still `sent` when the sync writes
    (conditional update): an execution that found the order meanwhile has recorded it, and the sync adds
    no audit entry of its own."""
    signal_id = approved()
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        run(signal_id)
    trade_id = db_session.scalar(sa.select(Trade.id).where(Trade.signal_id == signal_id))

    def specs(account, terminal, names):
        # While the sync reads the terminal, the execution's next attempt finds the order and records it.
        db_session.execute(sa.update(Trade).where(Trade.id == trade_id).values(state=TradeState.FILLED))
        db_session.commit()
        return {name: terminal.symbol(name) for name in names}

    account_id = db_session.get(Trade, trade_id).account_id
    (outcome,) = sync.many([account_id], symbol_specs=specs)
    assert outcome.status == "ok"
    actions = db_session.scalars(sa.select(AuditLog.action).where(AuditLog.target_id == trade_id)).all()
    assert "trade.filled_by_reconciliation" not in actions
