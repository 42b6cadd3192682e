"""Executing approved signals against the simulated terminal, on Postgres, through every retcode path.

`orders_sent` counts what reached the terminal: the history orders carrying the trade's comment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.config import DEFAULT_MAGIC
from shared.core.locks import exclusive
from shared.execution import service as execution
from shared.models import AuditLog, Trade, TradeState
from shared.mt5.errors import OrderOutcomeUnknown, TerminalUnavailable
from shared.mt5.sim.terminal import SimTerminal

BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}


def orders_sent(terminal, trade) -> int:
    orders = terminal.history_orders_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return sum(1 for o in orders or () if o.comment == trade.comment)


def actions(db_session, trade) -> list[str]:
    return list(
        db_session.scalars(
            sa.select(AuditLog.action).where(AuditLog.target_type == "trade", AuditLog.target_id == trade.id)
        )
    )


def test_an_approved_signal_is_filled_once_with_magic_and_comment(run, approved, terminal, db_session):
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    signal_id = approved()
    trade = run(signal_id)
    assert trade.state == TradeState.FILLED
    assert trade.comment == f"TG-{trade.id}" and trade.magic == DEFAULT_MAGIC
    assert trade.filled_volume == Decimal("0.10")
    # A buy is asked at the ask; with the quote pinned and no slippage it fills there.
    assert trade.requested_price == Decimal("1.08510") == trade.filled_price
    assert trade.order_ticket and trade.deal_ticket and trade.position_ticket == trade.order_ticket
    (position,) = [p for p in terminal.positions_get() if p.comment == trade.comment]
    assert (position.magic, position.volume, position.identifier) == (
        DEFAULT_MAGIC,
        0.1,
        trade.position_ticket,
    )
    assert actions(db_session, trade) == ["trade.created", "trade.sent", "trade.filled"]

    # Running it again (a duplicate message, a retry) does nothing.
    again = run(signal_id)
    assert again.id == trade.id and again.state == TradeState.FILLED
    assert orders_sent(terminal, trade) == 1


def test_requotes_retry_at_a_fresh_price_then_fill(run, approved, terminal, db_session):
    terminal.sim_set_requotes(2)
    trade = run(approved(), max_price_retries=3)
    assert trade.state == TradeState.FILLED and trade.attempts == 3
    assert actions(db_session, trade).count("trade.requoted") == 2
    assert orders_sent(terminal, trade) == 1


def test_too_many_requotes_reject_the_trade_and_nothing_is_open(run, approved, terminal):
    terminal.sim_set_requotes(10)
    trade = run(approved(), max_price_retries=2)
    assert trade.state == TradeState.REJECTED and trade.attempts == 3
    assert "price moved" in trade.failure_reason
    assert not [p for p in terminal.positions_get() if p.comment == trade.comment]


def test_a_partial_fill_records_the_filled_volume(run, approved, terminal):
    terminal.sim_set_partial_fill(0.5)
    trade = run(approved())
    assert trade.state == TradeState.PARTIAL and trade.retcode == 10010
    assert trade.filled_volume == Decimal("0.05") and trade.requested_volume == Decimal("0.10")


@pytest.mark.parametrize("retcode", [10019, 10006, 10016])
def test_a_broker_rejection_is_recorded_with_its_retcode(run, approved, terminal, retcode):
    terminal.sim_set_reject(retcode)
    trade = run(approved())
    assert trade.state == TradeState.REJECTED and trade.retcode == retcode
    assert str(retcode) in trade.failure_reason
    assert not [p for p in terminal.positions_get() if p.comment == trade.comment]


def test_pre_trade_checks_refuse_before_anything_is_sent(run, approved, terminal, db_session):
    trade = run(approved({"volume": "0.015"}))
    assert trade.state == TradeState.REJECTED and trade.attempts == 0
    assert "step" in trade.failure_reason
    assert orders_sent(terminal, trade) == 0
    assert "trade.rejected_pre_trade" in actions(db_session, trade)


def test_stops_inside_the_stops_level_are_refused(run, approved, terminal):
    tick = terminal.symbol_info_tick("EURUSD")
    trade = run(approved({"sl": f"{tick.bid - 0.00002:.5f}"}))
    assert trade.state == TradeState.REJECTED and "sl" in trade.failure_reason
    assert orders_sent(terminal, trade) == 0


def test_a_lost_reply_is_found_on_the_terminal_not_sent_again(run, approved, terminal, db_session):
    signal_id = approved()
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        run(signal_id)
    trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    assert trade.state == TradeState.SENT  # committed before order_send
    assert orders_sent(terminal, trade) == 1  # the broker did execute it

    trade = run(signal_id)
    assert trade.state == TradeState.FILLED and trade.filled_volume == Decimal("0.10")
    assert trade.attempts == 1
    assert orders_sent(terminal, trade) == 1
    assert "trade.found_after_lost_reply" in actions(db_session, trade)


class DisconnectsDuringOrderSend(SimTerminal):
    """A terminal whose connection drops as order_send starts: nothing is executed, and the sender does
    not know it."""

    def order_send(self, request):
        self.sim_disconnect(0.2)
        return super().order_send(request)


def test_an_order_that_never_reached_the_terminal_is_sent_after_looking(run, approved, terminal, db_session):
    signal_id = approved()
    with pytest.raises(TerminalUnavailable):
        run(signal_id, terminal_type=DisconnectsDuringOrderSend)
    trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    assert trade.state == TradeState.SENT and orders_sent(terminal, trade) == 0

    import time

    time.sleep(0.3)  # the disconnect is over
    trade = run(signal_id)
    assert trade.state == TradeState.FILLED and trade.attempts == 2
    assert orders_sent(terminal, trade) == 1
    assert "trade.not_found_after_lost_reply" in actions(db_session, trade)


def test_an_unreachable_terminal_leaves_the_trade_pending_and_sends_nothing(
    run, approved, terminal, db_session
):
    signal_id = approved()
    terminal.sim_disconnect(30)
    with pytest.raises(TerminalUnavailable):
        run(signal_id)
    trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    assert trade.state == TradeState.PENDING and trade.attempts == 0


def test_a_trade_locked_by_another_worker_is_left_alone(run, approved, engine, tmp_path, db_session):
    signal_id = approved()
    trade = execution._claim_trade(db_session, signal_id, execution.ExecutionSettings())
    with (
        exclusive(engine, f"trade:{trade.id}", lock_dir=tmp_path),
        pytest.raises(execution.TerminalRetryLater),
    ):
        run(signal_id)
    db_session.refresh(trade)
    assert trade.state == TradeState.PENDING and trade.attempts == 0
    assert run.opened == []  # the terminal was never even opened


def test_signals_that_are_not_approved_are_not_executed(run, api, db_session):
    world = api.setup()
    signal_id = api.send_signal(world["client"], BUY).json["id"]
    assert run(signal_id) is None
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Trade)) == 0


def test_a_timeout_retcode_leaves_the_trade_sent_and_the_next_attempt_looks_first(
    run, approved, terminal, db_session
):
    signal_id = approved()
    terminal.sim_set_reject(10012)  # TRADE_RETCODE_TIMEOUT: the server may or may not have executed it
    with pytest.raises(execution.TerminalRetryLater):
        run(signal_id)
    trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    assert trade.state == TradeState.SENT and trade.retcode == 10012
    terminal.sim_set_reject(None)
    trade = run(signal_id)
    assert trade.state == TradeState.FILLED and trade.attempts == 2
    assert "trade.not_found_after_lost_reply" in actions(db_session, trade)
    assert orders_sent(terminal, trade) == 1


def test_the_dispatch_sweep_re_enqueues_approved_signals_left_without_a_trade(
    approved, db_session, sent_tasks
):
    from datetime import timedelta

    import workers.tasks
    from shared.core.db import utcnow
    from shared.models import Signal

    signal_id = approved()
    db_session.get(Signal, signal_id).decided_at = utcnow() - timedelta(minutes=5)
    db_session.commit()
    sent_tasks.sent.clear()  # the approval's own message
    assert workers.tasks.dispatch_approved.run() == 1
    assert sent_tasks.executions() == [signal_id]


def test_two_workers_claiming_one_signal_make_one_trade(app, committed_db, tmp_path, sent_tasks):
    """Two deliveries of one message race to create the trade row: one row, one order."""
    import threading

    from shared.core.db import db
    from tests.conftest import Api

    api = Api(app.test_client())
    world = api.setup()
    signal_id = api.send_signal(world["client"], BUY).json["id"]
    api.decide(world["user"], signal_id)
    claimed: list[int] = []
    barrier = threading.Barrier(2)

    def claim():
        with app.app_context():
            barrier.wait()
            trade = execution._claim_trade(
                db.session, signal_id, execution.ExecutionSettings(lock_dir=tmp_path)
            )
            claimed.append(trade.id)
            db.session.remove()

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(claimed) == 2 and claimed[0] == claimed[1]
    assert committed_db.scalar(sa.select(sa.func.count()).select_from(Trade)) == 1


def test_a_recent_lost_reply_is_not_concluded_absent_while_the_order_may_be_in_flight(
    run, approved, terminal, db_session
):
    signal_id = approved()
    terminal.sim_set_reject(10012)  # outcome unknown, and nothing is on the terminal
    with pytest.raises(execution.TerminalRetryLater):
        run(signal_id)
    terminal.sim_set_reject(None)
    # Within the lease (terminal timeout + grace after sent_at) absence proves nothing: no resend.
    with pytest.raises(execution.TerminalRetryLater, match="in flight"):
        run(signal_id, terminal_timeout_seconds=60.0)
    trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
    assert trade.state == TradeState.SENT and trade.attempts == 1
    assert orders_sent(terminal, trade) == 0


def test_giving_up_never_overwrites_a_trade_that_was_sent(
    run, approved, terminal, db_session, engine, tmp_path
):
    signal_id = approved()
    terminal.sim_set_reject(10012)
    with pytest.raises(execution.TerminalRetryLater):
        run(signal_id)
    settings = execution.ExecutionSettings(lock_dir=tmp_path)
    trade = execution.give_up(db_session, signal_id, "terminal unreachable", engine=engine, settings=settings)
    assert trade.state == TradeState.SENT and trade.failure_reason is None
