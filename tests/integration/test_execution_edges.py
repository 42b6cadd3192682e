"""Execution's rules around orders whose outcome is unknown, and around what may be executed at all, each
pinned by a test (issue 17: each was a mutant no test noticed).

- Only an approved signal is executed: a pending, rejected or expired one makes no trade and sends
  nothing.
- A trade left `sent` (its reply lost) is identified on the terminal by TradeGuard's magic number *and*
  its own comment, in the open positions and then in the deal history from a day before it was sent
  (trade servers keep their own clock): never by another TradeGuard trade's position on the same symbol,
  nor by another program's position that happens to carry the comment.
- The order rate limit counts the orders sent in the 60 s up to now, both ends included.
- Giving up on a `sent` trade leaves it `sent` (its order may exist) and clears its next retry, its own
  only.
- An attempt that failed with an unclassified error is counted unless it sent an order at or after it
  began (the send counted it).
- With a task queue, what became of the trade (filled, rejected) is sent to the owner's webhooks.
- For `terminal_timeout_seconds + unknown_outcome_grace_seconds` after it was sent (the lease), absence
  proves nothing: no resend. After it, the grace is waited once (only when the first look finds nothing,
  and only when it is over 0), then the terminal is looked at again; an order that turned up meanwhile is
  adopted, not sent again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.core.config import DEFAULT_MAGIC
from shared.core.db import utcnow
from shared.core.extensions import secret_box, task_queue
from shared.execution import service as execution
from shared.guards.risk_settings import OrderGuard
from shared.guards.settings import OrderLimits
from shared.models import AuditLog, Signal, SignalStatus, Trade, TradeState, User, WebhookDelivery
from shared.mt5.errors import OrderOutcomeUnknown
from shared.mt5.gateway import Gateway
from shared.notifications import webhooks

TIMEOUT = 10012  # TRADE_RETCODE_TIMEOUT: outcome unknown, and the simulated server executed nothing
BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}


def orders_with(terminal, comment: str) -> list:
    orders = terminal.history_orders_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return [o for o in orders or () if o.comment == comment]


def actions(db_session, trade) -> list[str]:
    return list(
        db_session.scalars(
            sa.select(AuditLog.action).where(AuditLog.target_type == "trade", AuditLog.target_id == trade.id)
        )
    )


def trade_of(db_session, signal_id) -> Trade:
    return db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))


def left_sent(run, terminal, db_session, signal_id, *, sent_seconds_ago: float | None = None) -> Trade:
    """The signal's trade `sent` with no order on the terminal (a timeout retcode), its sent_at moved
    back by `sent_seconds_ago` when given."""
    terminal.sim_set_reject(TIMEOUT)
    with pytest.raises(execution.TerminalRetryLater):
        run(signal_id)
    terminal.sim_set_reject(None)
    trade = trade_of(db_session, signal_id)
    assert trade.state == TradeState.SENT and not orders_with(terminal, trade.comment)
    if sent_seconds_ago is not None:
        trade.sent_at = utcnow() - timedelta(seconds=sent_seconds_ago)
        db_session.commit()
    return trade


def place(terminal, *, magic: int, comment: str) -> int:
    """An order placed on the terminal by someone else (another program, or the lost order arriving
    late); returns its position's ticket."""
    tick = terminal.symbol_info_tick("EURUSD")
    request = Gateway.market_order_request(
        symbol="EURUSD",
        side="buy",
        volume="0.10",
        price=tick.ask,
        sl=None,
        tp=None,
        deviation_points=20,
        magic=magic,
        comment=comment,
    )
    result = terminal.order_send(request)
    assert result is not None and result.retcode == 10009, result
    return result.order


@pytest.fixture
def execute(run):
    """`execute(signal_id, sleep=..., queue=None, **settings)`: the `run` fixture, with the sleep (and the
    task queue, for webhooks) given."""
    return run


# --- only approved signals ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "rejected", "expired"])
def test_a_signal_that_is_not_approved_makes_no_trade_and_sends_nothing(
    run, api, terminal, db_session, status
):
    world = api.setup()
    signal_id = api.send_signal(world["client"], BUY).json["id"]
    if status == "rejected":
        api.decide(world["user"], signal_id, "reject")  # an approvals row exists, with decision reject
    elif status == "expired":
        db_session.get(Signal, signal_id).status = SignalStatus.EXPIRED
        db_session.commit()
    assert db_session.get(Signal, signal_id).status == status
    assert run(signal_id) is None
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Trade)) == 0
    assert terminal.history_orders_get(
        datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    ) in (
        None,
        (),
    )


# --- whose order is it --------------------------------------------------------------------------------


def test_a_lost_reply_never_adopts_another_tradeguard_trades_position_on_the_same_symbol(
    run, api, terminal, db_session
):
    world = api.setup()  # one account (login 1001, the terminal fixture's), two signals
    first_id, signal_id = (
        api.send_signal(world["client"], {**BUY, "volume": volume}).json["id"] for volume in ("0.10", "0.20")
    )
    for approved_id in (first_id, signal_id):
        api.decide(world["user"], approved_id)
    first = run(first_id)
    assert first.state == TradeState.FILLED
    second = left_sent(run, terminal, db_session, signal_id)
    assert second.magic == first.magic == DEFAULT_MAGIC  # the same magic, on the same symbol

    second = run(signal_id)
    assert second.state == TradeState.FILLED and second.attempts == 2
    assert second.position_ticket != first.position_ticket
    (own,) = orders_with(terminal, second.comment)
    assert second.order_ticket == own.ticket
    assert "trade.not_found_after_lost_reply" in actions(db_session, second)


def test_a_position_with_the_trades_comment_but_another_magic_is_not_the_trades(
    run, approved, terminal, db_session
):
    signal_id = approved()
    trade = left_sent(run, terminal, db_session, signal_id)
    stranger = place(terminal, magic=DEFAULT_MAGIC + 1, comment=trade.comment)

    trade = run(signal_id)
    assert trade.state == TradeState.FILLED and trade.position_ticket != stranger
    assert len(orders_with(terminal, trade.comment)) == 2  # the stranger's, and the trade's own


def test_an_order_whose_position_was_closed_meanwhile_is_found_in_the_deal_history(
    run, approved, terminal, db_session
):
    signal_id = approved()
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        run(signal_id)
    trade = trade_of(db_session, signal_id)
    (position,) = [p for p in terminal.positions_get() if p.comment == trade.comment]
    terminal.sim_close_manual(1001, position.ticket)

    trade = run(signal_id)
    assert trade.state == TradeState.FILLED and trade.position_ticket == position.identifier
    assert len(orders_with(terminal, trade.comment)) == 1  # found, not sent again
    assert "trade.found_after_lost_reply" in actions(db_session, trade)


# --- when a resend becomes allowed --------------------------------------------------------------------


def test_within_the_terminal_timeout_plus_the_grace_an_absent_order_may_still_be_in_flight(
    run, approved, terminal, db_session
):
    signal_id = approved()
    left_sent(run, terminal, db_session, signal_id)
    lease = {"terminal_timeout_seconds": 30.0, "unknown_outcome_grace_seconds": 30.0}  # 60 s in all
    # Sent a moment ago: absent, but not yet proof of anything.
    with pytest.raises(execution.TerminalRetryLater, match="in flight"):
        run(signal_id, **lease)
    trade = trade_of(db_session, signal_id)
    trade.sent_at = utcnow() - timedelta(seconds=50)  # still inside the 60 s
    db_session.commit()
    with pytest.raises(execution.TerminalRetryLater, match="in flight"):
        run(signal_id, **lease)
    assert not orders_with(terminal, trade.comment)

    trade.sent_at = utcnow() - timedelta(seconds=61)  # the lease is over: looked for, then sent
    db_session.commit()
    trade = run(signal_id, **lease)
    assert trade.state == TradeState.FILLED and len(orders_with(terminal, trade.comment)) == 1


def test_the_grace_is_not_waited_when_the_first_look_finds_the_order(execute, approved, terminal, db_session):
    signal_id = approved()
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        execute(signal_id, sleep=lambda _: None)
    trade = trade_of(db_session, signal_id)
    trade.sent_at = utcnow() - timedelta(seconds=60)
    db_session.commit()
    waits: list[float] = []
    trade = execute(signal_id, sleep=waits.append, unknown_outcome_grace_seconds=2.0)
    assert trade.state == TradeState.FILLED and waits == []


def test_without_a_grace_an_absent_order_is_sent_again_without_waiting(
    execute, approved, terminal, db_session
):
    signal_id = approved()
    left_sent(execute_as_run(execute), terminal, db_session, signal_id, sent_seconds_ago=60)
    waits: list[float] = []
    trade = execute(signal_id, sleep=waits.append)
    assert trade.state == TradeState.FILLED and waits == []


def test_an_order_that_turns_up_during_the_grace_is_adopted_not_sent_again(
    execute, approved, terminal, db_session
):
    signal_id = approved()
    trade = left_sent(execute_as_run(execute), terminal, db_session, signal_id, sent_seconds_ago=60)
    arrived: list[int] = []

    def grace(seconds):
        # The order sent 60 s ago reaches the server while the grace is waited (half a second here).
        assert seconds == 0.5
        arrived.append(place(terminal, magic=trade.magic, comment=trade.comment))

    trade = execute(signal_id, sleep=grace, unknown_outcome_grace_seconds=0.5)
    assert trade.state == TradeState.FILLED and trade.position_ticket == arrived[0]
    assert len(orders_with(terminal, trade.comment)) == 1
    assert "trade.found_after_lost_reply" in actions(db_session, trade)


def execute_as_run(execute):
    """`execute` with the `run` fixture's call (no sleeping)."""
    return lambda signal_id, **settings: execute(signal_id, sleep=lambda _: None, **settings)


# --- what the owner is told -------------------------------------------------------------------------------


@pytest.mark.parametrize(("retcode", "event"), [(None, "trade.filled"), (10019, "trade.rejected")])
def test_with_a_queue_the_owner_is_told_what_became_of_the_trade(
    execute, approved, terminal, db_session, retcode, event
):
    signal_id = approved()
    owner = db_session.get(User, db_session.get(Signal, signal_id).owner_id)
    webhooks.create_webhook(
        db_session, secret_box(), owner, url="http://93.184.216.34/hook", events=None, allow_private=False
    )
    db_session.commit()
    terminal.sim_set_reject(retcode)  # 10019: no money, the broker rejects it
    trade = execute(signal_id, sleep=lambda _: None, queue=task_queue())
    deliveries = db_session.scalars(sa.select(WebhookDelivery)).all()
    assert [(d.event, d.payload["data"]["trade_id"]) for d in deliveries] == [(event, trade.id)]


# --- the order rate window, and giving up -----------------------------------------------------------------


def test_an_order_sent_exactly_a_minute_ago_still_counts_in_the_last_minute(
    run, api, db_session, monkeypatch
):
    """`max_orders_per_minute` counts the account's orders sent in the 60 s up to now, both ends included;
    the trade's own earlier attempt is not counted."""
    world = api.setup()
    earlier_id, signal_id = (
        api.send_signal(world["client"], {**BUY, "volume": volume}).json["id"] for volume in ("0.10", "0.20")
    )
    for approved_id in (earlier_id, signal_id):
        api.decide(world["user"], approved_id)
    earlier, trade = (
        run(earlier_id),
        execution._claim_trade(db_session, signal_id, execution.ExecutionSettings()),
    )
    now = utcnow()
    monkeypatch.setattr(execution, "utcnow", lambda: now)
    guard = OrderGuard(
        orders=OrderLimits(
            max_lots_per_order=None,
            max_open_positions=None,
            max_total_lots=None,
            max_orders_per_minute=5,
            max_risk_percent_per_trade=None,
            symbols=None,
        ),
        halted_at=None,
        halted_reason=None,
        blocked_symbols={},
    )
    trade.sent_at = now - timedelta(seconds=1)  # its own earlier attempt
    for sent_at, counted in (
        (now - timedelta(seconds=60), 1),
        (now - timedelta(seconds=60, microseconds=1), 0),
    ):
        earlier.sent_at = sent_at
        db_session.commit()
        figures = execution._order_limit_figures(db_session, trade, terminal=None, guard=guard)
        assert figures == {"orders_last_minute": counted}


def test_giving_up_on_a_sent_trade_clears_only_its_next_retry_and_leaves_it_sent(
    run, api, terminal, db_session, engine, tmp_path
):
    world = api.setup()
    other_id, signal_id = (
        api.send_signal(world["client"], {**BUY, "volume": volume}).json["id"] for volume in ("0.10", "0.20")
    )
    for approved_id in (other_id, signal_id):
        api.decide(world["user"], approved_id)
    settings = execution.ExecutionSettings(lock_dir=tmp_path)
    left_sent(run, terminal, db_session, signal_id)
    execution._claim_trade(db_session, other_id, settings)
    due = utcnow() + timedelta(minutes=1)
    for retried in (signal_id, other_id):
        execution.record_retry(
            db_session, retried, "TerminalUnavailable", retry_at=due, engine=engine, settings=settings
        )

    trade = execution.give_up(db_session, signal_id, "out of retries", engine=engine, settings=settings)
    assert trade.state == TradeState.SENT and trade.next_retry_at is None and trade.failure_reason is None
    other = trade_of(db_session, other_id)
    db_session.refresh(other)
    assert other.state == TradeState.PENDING and other.next_retry_at == due  # not this call's to clear


def test_an_attempt_that_sent_at_the_moment_it_began_was_counted_by_its_send(
    run, approved, terminal, db_session, engine, tmp_path
):
    """`count_failed_attempt` counts an attempt unless it sent an order at or after `started_at` (its send
    counted it); an error before the trade was even made counts nothing."""
    settings = execution.ExecutionSettings(lock_dir=tmp_path)
    signal_id = approved()
    assert (
        execution.count_failed_attempt(
            db_session, signal_id, "KeyError: 'x'", started_at=utcnow(), engine=engine, settings=settings
        )
        is None
    )
    trade = left_sent(run, terminal, db_session, signal_id)
    sent_at = trade.sent_at
    trade = execution.count_failed_attempt(
        db_session, signal_id, "KeyError: 'bid'", started_at=sent_at, engine=engine, settings=settings
    )
    assert trade.attempts == 1
    trade = execution.count_failed_attempt(
        db_session,
        signal_id,
        "KeyError: 'ask'",
        started_at=sent_at + timedelta(microseconds=1),
        engine=engine,
        settings=settings,
    )
    assert trade.attempts == 2
