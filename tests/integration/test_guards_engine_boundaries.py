"""The guards' alert engine and the batched close on their boundaries (issue 17, mutation testing): the
rules the mutants of `shared/guards/engine.py` and `shared/guards/closing.py` showed untested, each stated
by a test on Postgres against the simulated terminal, as plain function calls."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from shared.core.db import utcnow
from shared.core.errors import Conflict, NotFound
from shared.guards import closing, readings, rules
from shared.guards import engine as guards
from shared.guards.risk_settings import risk_settings_of
from shared.guards.settings import default_settings, validate_settings
from shared.models import (
    Account,
    AccountRisk,
    AlertClose,
    AuditLog,
    DrawdownAlert,
    GuardState,
    MarketQuote,
    TradeState,
)
from shared.mt5 import constants as mt5c
from shared.mt5.errors import OrderOutcomeUnknown
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal
from tests.integration import test_guards_engine as engine_tests
from tests.integration.test_guards_closing import alerted_trade, carry_out, closing_deals, crowd
from tests.integration.test_guards_engine import alerts_of, open_sim, state_of
from tests.integration.test_guards_readings_edges import check as check_at_once

# The guards' fixtures, as test_guards_engine defines them.
guarded = engine_tests.guarded
recorder = engine_tests.recorder


def _close_of(db_session, alert_id):
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert_id))
    db_session.refresh(close)
    return close


def _actions(db_session, alert_id):
    return list(
        db_session.scalars(
            sa.select(AuditLog.action)
            .where(AuditLog.target_type == "alert", AuditLog.target_id == alert_id)
            .order_by(AuditLog.id)
        )
    )


def _pending_alert(db_session, account_id, **values):
    """A pending drawdown alert on the account, due now, as a reading would have raised it."""
    account = db_session.get(Account, account_id)
    fields = {
        "alert_type": "drawdown",
        "limit_name": engine_tests.MAX_DRAWDOWN["name"],
        "reason": "max drawdown: drawdown 3%",
        "currency": "USD",
        "equity": Decimal(9700),
        "status": "pending",
        "close_at": utcnow(),
        **values,
    }
    alert = DrawdownAlert(account_id=account_id, owner_id=account.owner_id, details={}, **fields)
    db_session.add(alert)
    db_session.commit()
    return alert


def with_costs(open_terminal, commission="-7", swap="-2"):
    """`open_terminal`, whose closing deals carry a commission and a swap (the simulated broker charges
    neither)."""

    @contextmanager
    def opened(account):
        with open_terminal(account) as gateway:
            real = gateway.deals_for_positions

            def deals_for_positions(position_ids):
                return {
                    ticket: [
                        d
                        if d.entry == mt5c.DEAL_ENTRY_IN
                        else dataclasses.replace(d, commission=Decimal(commission), swap=Decimal(swap))
                        for d in deals
                    ]
                    for ticket, deals in real(position_ids).items()
                }

            gateway.deals_for_positions = deals_for_positions
            yield gateway

    return opened


# --- closing.execute_due_alerts --------------------------------------------------------------------------


def test_an_alert_due_exactly_at_its_close_time_is_carried_out_by_the_batch(
    guarded, terminal, db_session, recorder
):
    """`close_at` is the first moment the close may happen: a run at that very instant neither refuses the
    alert as not due nor leaves it out of the alerts due."""
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    at = alert.close_at

    done = carry_out(db_session, terminal, recorder, alert.id, now=lambda: at)

    assert done.first == guards.AlertResult(alert.id, "executed", 1)
    assert len(closing_deals(terminal, ticket)) == 1


def _restart_alert_ids(db_session):
    """The next alert gets id 1 (the table is empty in a test's transaction; setval is not rolled back,
    and later ids only count on from there)."""
    assert db_session.scalar(sa.select(sa.func.count()).select_from(DrawdownAlert)) == 0
    db_session.execute(sa.text("SELECT setval(pg_get_serial_sequence('drawdown_alerts', 'id'), 1, false)"))


def test_a_task_for_an_alert_that_is_gone_reports_it_gone_and_takes_the_earliest_due_first(
    guarded, terminal, db_session, recorder
):
    """A task whose alert no longer exists says so (`gone`, not another alert's status), and favours no
    alert over the others due: within its limit the earliest due go first, whatever their ids."""
    _restart_alert_ids(db_session)
    alerted = crowd(guarded, terminal, db_session, 2)
    (_, _, first), (_, _, second) = alerted
    assert first.id == 1
    now = utcnow()
    for alert, close_at in ((first, now - timedelta(seconds=1)), (second, now - timedelta(seconds=5))):
        db_session.execute(
            sa.update(DrawdownAlert).where(DrawdownAlert.id == alert.id).values(close_at=close_at)
        )
    db_session.commit()
    gone = second.id + 1000

    done = carry_out(db_session, terminal, recorder, gone, limit=1, max_runs=1)

    assert done.first == guards.AlertResult(gone, "gone") and done.first.closed == 0
    assert set(done.results) == {second.id}  # due 4 s before the alert with id 1
    assert _status(db_session, first.id) == "pending"


def _status(db_session, alert_id):
    db_session.expire_all()
    return db_session.get(DrawdownAlert, alert_id).status


def test_an_alert_another_run_holds_is_skipped_not_waited_for(app, committed_db, terminal, recorder):
    """Two runs at once share the alerts due (FOR UPDATE SKIP LOCKED): a run finds the alert another holds
    taken, and returns at once, the alert still pending and nothing sent, instead of waiting for it."""
    from shared.core.db import db
    from tests.conftest import Api

    api = Api(app.test_client())
    account = api.account(api.user(), terminal_url="sim://", login=88002, verify=False)
    document = default_settings()
    document.update(grace_seconds=0, confirmations=1, drawdown_limits=[engine_tests.MAX_DRAWDOWN])
    committed_db.add(AccountRisk(account_id=account["id"], settings=validate_settings(document)))
    committed_db.commit()
    terminal.sim_set_quote("EURUSD", *engine_tests.PIN)
    assert terminal.initialize(login=88002, password="x", server="TradeGuard-Sim")
    ticket = terminal.sim_open_manual(88002, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    for bid in (engine_tests.PIN[0], 1.08200):
        terminal.sim_set_quote("EURUSD", bid, bid + 0.0001)
        readings.check_account(
            committed_db,
            account["id"],
            open_terminal=open_sim(terminal),
            notify=recorder.notify,
            schedule=None,
        )
    alert_id = committed_db.scalar(
        sa.select(DrawdownAlert.id).where(DrawdownAlert.account_id == account["id"])
    )
    assert alert_id is not None

    holder = db.session.session_factory()  # the other run, in a transaction of its own
    try:
        holder.execute(sa.select(DrawdownAlert.id).where(DrawdownAlert.id == alert_id).with_for_update())
        committed_db.execute(sa.text("SET LOCAL lock_timeout = '2s'"))  # a wait fails instead of hanging
        done = closing.execute_due_alerts(
            committed_db, alert_id, open_terminal=open_sim(terminal), notify=recorder.notify
        )
    finally:
        holder.rollback()
        holder.close()

    assert done.first == guards.AlertResult(alert_id, "pending") and done.results == {}
    outs = [d for d in terminal.history_deals_get(position=ticket) or () if d.entry == mt5c.DEAL_ENTRY_OUT]
    assert outs == []


def test_the_batchs_decisions_are_written_with_their_closes_or_not_at_all(
    guarded, terminal, db_session, recorder, monkeypatch
):
    """One transaction decides every alert of the batch and writes their closes: when writing the closes
    fails, no alert is left `closing` without them (all stay pending, for their tasks to take again)."""
    alerted = crowd(guarded, terminal, db_session, 2)

    def fails(*args, **kwargs):
        raise RuntimeError("the closes could not be written")

    monkeypatch.setattr(guards, "write_closes", fails)
    with pytest.raises(RuntimeError):
        carry_out(db_session, terminal, recorder, alerted[0][2].id)
    db_session.rollback()

    assert [_status(db_session, alert.id) for _, _, alert in alerted] == ["pending", "pending"]
    assert all(closing_deals(terminal, ticket) == [] for _, ticket, _ in alerted)


def test_a_close_whose_send_starts_exactly_at_the_send_budget_is_still_sent_by_the_batch(
    guarded, terminal, db_session, recorder, monkeypatch
):
    """`send_after_claim_seconds` is the last moment the batch may start a close's send: at exactly that
    long after the claim the order still goes (only later is it left to the one-alert path)."""
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    claimed_at = utcnow()
    monkeypatch.setattr(closing, "utcnow", lambda: claimed_at)  # the claim's clock
    settings = guards.GuardSettings(send_after_claim_seconds=3.0)

    done = carry_out(
        db_session,
        terminal,
        recorder,
        alert.id,
        settings=settings,
        now=lambda: claimed_at + timedelta(seconds=3),
    )

    assert done.first.status == "executed" and done.left == []
    assert len(closing_deals(terminal, ticket)) == 1


def open_sim_then(terminal, nth, action):
    """`open_sim`, and `action()` once the `nth` terminal it opened is closed again: something that
    happens elsewhere between two steps of a batch (its read, its orders)."""
    inner = open_sim(terminal)
    closed = []

    @contextmanager
    def open_terminal(account):
        with inner(account) as gateway:
            yield gateway
        closed.append(account.id)
        if len(closed) == nth:
            action()

    return open_terminal


def test_the_batch_sends_at_the_price_its_decision_read_and_a_move_past_the_deviation_is_a_requote(
    guarded, terminal, db_session, recorder
):
    """Each close goes at the position's price as the decision read it (no quote asked): when the market
    has moved further than the deviation since, the broker requotes, and the close is left to the
    one-alert path, which sends it again at a fresh price, once."""
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    # After the read: 10 pips lower by the time the order goes.
    open_terminal = open_sim_then(terminal, 1, lambda: terminal.sim_set_quote("EURUSD", 1.08100, 1.08110))

    done = carry_out(db_session, terminal, recorder, alert.id, open_terminal=open_terminal)

    assert done.left == [alert.id]
    close = _close_of(db_session, alert.id)
    assert (close.state, close.retcode) == ("pending", mt5c.TRADE_RETCODE_REQUOTE)
    (sent,) = db_session.scalars(
        sa.select(AuditLog).where(AuditLog.action == "position.close_sent", AuditLog.target_id == alert.id)
    )
    assert Decimal(sent.meta["price"]) == Decimal("1.082")
    assert closing_deals(terminal, ticket) == []
    result = guards.execute_alert(
        db_session, alert.id, open_terminal=open_sim(terminal), notify=recorder.notify
    )
    assert result.status == "executed"
    assert _close_of(db_session, alert.id).close_price == Decimal("1.081")
    assert len(closing_deals(terminal, ticket)) == 1


@pytest.mark.parametrize(
    ("side", "opened_as", "expected"),
    [("buy", mt5c.ORDER_TYPE_BUY, "1.082"), ("sell", mt5c.ORDER_TYPE_SELL, "1.083")],
)
def test_a_batch_order_without_a_decided_price_goes_at_the_close_sides_quote(
    guarded, terminal, db_session, side, opened_as, expected
):
    """An order the batch has no price for asks the terminal: a buy closes at the bid, a sell at the ask
    (here 10 pips apart, five times the deviation: the wrong side would be requoted)."""
    _, account_id, login, _, _ = guarded()
    ticket = terminal.sim_open_manual(login, "EURUSD", opened_as, 1.0)
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08300)
    alert = _pending_alert(db_session, account_id)
    reads = closing._read_accounts(db_session, [alert.id], open_sim(terminal), None, utcnow)
    order = closing._Order(
        close_id=0,
        alert_id=alert.id,
        ticket=ticket,
        symbol="EURUSD",
        side=side,
        volume=Decimal("1.0"),
        comment="TG-X0",
        sent_at=utcnow(),
        price=None,
    )

    (sent,) = closing._send([order], reads, open_sim(terminal), guards.DEFAULT_GUARD_SETTINGS, None, utcnow)

    assert sent.result is not None and sent.result.done
    assert sent.result.price == Decimal(expected)
    assert sent.deal is not None and sent.deal.ticket == sent.result.deal


def _outs(terminal, login, ticket):
    """The closing deals of `ticket` on `login` (a terminal shows the history of its own account)."""
    viewer = SimTerminal(terminal.broker)
    assert viewer.initialize(login=login, password="x", server="TradeGuard-Sim")
    return [d for d in viewer.history_deals_get(position=ticket) or () if d.entry == mt5c.DEAL_ENTRY_OUT]


def test_a_batch_that_runs_past_its_send_budget_midway_sends_the_first_close_and_leaves_the_next(
    guarded, terminal, db_session, recorder, monkeypatch
):
    """The send budget is checked before each order: an account's first close goes (and is recorded
    closed, with its deal); the next, whose send would start past the budget, stays `sent`, unsent, for
    the one-alert path."""
    _, account_id, login, check, _ = guarded()
    first = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    second = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.5)
    engine_tests.breach_confirmed(check, terminal)
    (alert,) = alerts_of(db_session, account_id)
    claimed_at = utcnow()
    monkeypatch.setattr(closing, "utcnow", lambda: claimed_at)  # the claim's clock
    inner = open_sim(terminal)
    opened = []

    @contextmanager
    def open_terminal(account):
        opened.append(account.id)
        with inner(account) as gateway:
            yield gateway

    seconds = iter([1, 4])  # the first send 1 s after the claim, the second 4 s after (budget: 3 s)

    def now():
        return utcnow() if len(opened) < 2 else claimed_at + timedelta(seconds=next(seconds, 4))

    done = carry_out(db_session, terminal, recorder, alert.id, open_terminal=open_terminal, now=now)

    assert done.left == [alert.id]
    closes = db_session.scalars(
        sa.select(AlertClose).where(AlertClose.alert_id == alert.id).order_by(AlertClose.id)
    ).all()
    for close in closes:
        db_session.refresh(close)
    assert [(c.position_ticket, c.state) for c in closes] == [(first, "closed"), (second, "sent")]
    assert closes[0].deal_ticket is not None and closes[0].pnl == Decimal("-310")
    assert len(_outs(terminal, login, first)) == 1 and _outs(terminal, login, second) == []


def test_a_close_by_the_batch_counts_its_deals_commission_and_swap_in_its_pnl(
    guarded, terminal, db_session, recorder
):
    """A close's P&L is its deal's profit plus its commission and its swap (both charges, negative
    here), and the alert's loss is the sum of its closes' P&L."""
    ((account_id, _, alert),) = crowd(guarded, terminal, db_session, 1)

    done = carry_out(db_session, terminal, recorder, alert.id, open_terminal=with_costs(open_sim(terminal)))

    assert done.first.status == "executed"
    assert _close_of(db_session, alert.id).pnl == Decimal("-319")  # -310 - 7 - 2
    (ended,) = alerts_of(db_session, account_id)
    assert ended.total_loss == Decimal("319")


def test_a_close_the_broker_refuses_in_the_batch_fails_and_the_alert_fails_and_halts(
    guarded, terminal, db_session, recorder
):
    """A refusal (not a requote, not a position already closed) is final: the close fails with the
    broker's retcode, audited; the alert, its closes all ended, fails, and the account is halted."""
    ((account_id, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_set_reject(mt5c.TRADE_RETCODE_REJECT)

    done = carry_out(db_session, terminal, recorder, alert.id)

    assert done.first == guards.AlertResult(alert.id, "failed", 0) and done.left == []
    close = _close_of(db_session, alert.id)
    assert (close.state, close.retcode) == ("failed", mt5c.TRADE_RETCODE_REJECT)
    assert close.error.startswith(f"broker refused the close: retcode {mt5c.TRADE_RETCODE_REJECT}")
    assert "position.close_failed" in _actions(db_session, alert.id)
    assert state_of(db_session, account_id).halted_at is not None
    assert closing_deals(terminal, ticket) == []


class _AlgoTradingOff(SimTerminal):
    """A terminal whose "Algo Trading" is switched off: order_send refused outright."""

    def __init__(self, broker):
        super().__init__(broker)
        self.sim_set_algo_trading(False)


def test_a_close_the_terminal_refuses_outright_in_the_batch_fails_at_once_and_the_alert_fails_and_halts(
    guarded, terminal, db_session, recorder
):
    """Algo trading off: the terminal sends nothing (AutoTradingDisabled). No retry cures that, so the
    close is not left `sent` for the one-alert path to look for and send again, and again: it fails,
    audited, the alert fails (the owner told) and the account is halted."""
    ((account_id, ticket, alert),) = crowd(guarded, terminal, db_session, 1)

    done = carry_out(
        db_session, terminal, recorder, alert.id, open_terminal=open_sim(terminal, _AlgoTradingOff)
    )

    assert done.first == guards.AlertResult(alert.id, "failed", 0) and done.left == []
    close = _close_of(db_session, alert.id)
    assert (close.state, close.attempts) == ("failed", 1)
    assert close.error.startswith("the terminal refused the close: order_send failed"), close.error
    assert _actions(db_session, alert.id).count("position.close_failed") == 1
    assert "alert.failed" in recorder.names()
    assert state_of(db_session, account_id).halted_by_alert_id == alert.id
    assert closing_deals(terminal, ticket) == []


@pytest.mark.parametrize("its_state", ["closed", "sent"])
def test_a_close_another_attempt_moved_on_while_the_batchs_orders_were_out_keeps_that_attempts_record(
    guarded, terminal, db_session, recorder, its_state
):
    """The batch's close was requoted, but before the batch recorded it, another attempt (the one-alert
    path, past the in-flight window) sent it again: recorded closed, or still on its way (`sent`, at its
    own later `sent_at`). The batch must not write its requote over that: reopened as `pending`, the
    close would be claimed and sent once more."""
    ((_, _, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_set_requotes(1)
    resent_at = utcnow() + timedelta(seconds=1)

    def another_attempt_sends_it_again():  # this session unaware
        db_session.execute(
            sa.update(AlertClose)
            .where(AlertClose.alert_id == alert.id)
            .values(state=its_state, sent_at=resent_at, attempts=AlertClose.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        db_session.commit()

    done = carry_out(
        db_session,
        terminal,
        recorder,
        alert.id,
        open_terminal=open_sim_then(terminal, 2, another_attempt_sends_it_again),
    )

    close = _close_of(db_session, alert.id)
    assert (close.state, close.attempts, close.sent_at) == (its_state, 2, resent_at)
    assert "position.close_requoted" not in _actions(db_session, alert.id)
    assert done.left == ([] if its_state == "closed" else [alert.id])


def test_the_batch_records_its_fills_and_ends_its_alerts_in_one_transaction(
    guarded, terminal, db_session, recorder
):
    """Recording the batch's fills and ending its alerts is one transaction: a failure while ending the
    second alert leaves both alerts closing and their closes `sent`; the one-alert path then finishes
    each from the deal its comment names, sending nothing again."""
    alerted = crowd(guarded, terminal, db_session, 2)
    told = []

    def notify(session, owner_id, event, data):
        told.append(event)
        if event == "alert.executed" and told.count(event) == 2:
            raise RuntimeError("telling the second owner failed")

    with pytest.raises(RuntimeError):
        closing.execute_due_alerts(
            db_session, alerted[0][2].id, open_terminal=open_sim(terminal), notify=notify
        )
    db_session.rollback()

    assert [_status(db_session, alert.id) for _, _, alert in alerted] == ["closing", "closing"]
    assert [_close_of(db_session, alert.id).state for _, _, alert in alerted] == ["sent", "sent"]
    for _, ticket, alert in alerted:
        result = _execute(
            db_session, terminal, recorder, alert.id, settings=guards.GuardSettings(in_flight_seconds=60)
        )
        assert (result.status, result.closed) == ("executed", 1)
        assert len(closing_deals(terminal, ticket)) == 1


def test_an_alert_another_run_ended_while_the_batchs_orders_were_out_is_not_ended_again(
    guarded, terminal, db_session, recorder
):
    """The batch reads its alerts afresh (and locks them) before ending them: one that another run ended
    meanwhile is reported as that run left it, and not ended, audited or told a second time."""
    ((_, _, alert),) = crowd(guarded, terminal, db_session, 1)

    def another_run_ends_the_alert():  # this session unaware
        db_session.execute(
            sa.update(DrawdownAlert)
            .where(DrawdownAlert.id == alert.id)
            .values(status="executed", action_taken="closed")
            .execution_options(synchronize_session=False)
        )

    # The orders are done (the read's terminal and the orders' closed again): another run ends the alert.
    open_terminal = open_sim_then(terminal, 2, another_run_ends_the_alert)

    done = carry_out(db_session, terminal, recorder, alert.id, open_terminal=open_terminal)

    assert done.results[alert.id].status == "executed"
    assert "alert.executed" not in recorder.names()
    assert "alert.executed" not in _actions(db_session, alert.id)
    assert _close_of(db_session, alert.id).state == "closed"


def test_an_account_halted_since_this_session_read_it_is_not_halted_again_by_the_batch(
    guarded, terminal, db_session, recorder
):
    """The batch reads the guard states it locks afresh: an account another worker halted (for this
    alert's close) after this session last read its state keeps that halt (its reason, no second
    `account.halted`)."""
    ((account_id, _, alert),) = crowd(guarded, terminal, db_session, 1)
    seen = db_session.get(GuardState, account_id)  # held: this session's copy, not halted
    assert seen.halted_at is None
    db_session.execute(
        sa.update(GuardState)
        .where(GuardState.account_id == account_id)
        .values(
            halted_at=utcnow(), halted_reason="by another worker", halted_by_alert_id=alert.id, state="halted"
        )
        .execution_options(synchronize_session=False)
    )
    db_session.commit()

    done = carry_out(db_session, terminal, recorder, alert.id)

    assert done.first.status == "executed"
    assert state_of(db_session, account_id).halted_reason == "by another worker"
    assert "account.halted" not in recorder.names()
    assert seen is not None


# --- engine.execute_alert: the one-alert path ------------------------------------------------------------


def _alerted(guarded, terminal, db_session, volumes=(1.0,), **settings):
    """A guarded account holding 1-lot EURUSD buys (one per volume given), breached past its 2 % maximum
    (30 pips) and confirmed: (account id, login, the positions' tickets, the pending alert)."""
    _, account_id, login, check, _ = guarded(**settings)
    tickets = [terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, v) for v in volumes]
    engine_tests.breach_confirmed(check, terminal)
    (alert,) = alerts_of(db_session, account_id)
    return account_id, login, tickets, alert


def _execute(db_session, terminal, recorder, alert_id, open_terminal=None, **options):
    return guards.execute_alert(
        db_session,
        alert_id,
        open_terminal=open_terminal or open_sim(terminal),
        notify=recorder.notify,
        **options,
    )


@contextmanager
def _orders_never_arrive():
    """Every order_send fails with an unknown outcome, and the order is not made (a connection that
    dropped before the request left)."""
    original = Gateway.send_order

    def never_arrives(self, request):
        raise OrderOutcomeUnknown("connection dropped while sending")

    Gateway.send_order = never_arrives
    try:
        yield
    finally:
        Gateway.send_order = original


def test_an_alert_due_exactly_at_its_close_time_is_carried_out_by_its_task(
    guarded, terminal, db_session, recorder
):
    """`close_at` is the first moment the close may happen: the one-alert path at that instant does not
    refuse the alert as early."""
    _, _, _, alert = _alerted(guarded, terminal, db_session)

    result = _execute(db_session, terminal, recorder, alert.id, now=lambda: alert.close_at)

    assert (result.status, result.closed) == ("executed", 1)


def test_a_close_sent_by_the_one_alert_path_counts_its_deals_commission_and_swap(
    guarded, terminal, db_session, recorder
):
    """The P&L of a close the one-alert path sends is its deal's profit plus its commission and swap."""
    account_id, _, _, alert = _alerted(guarded, terminal, db_session)

    result = _execute(db_session, terminal, recorder, alert.id, open_terminal=with_costs(open_sim(terminal)))

    assert result.status == "executed"
    assert _close_of(db_session, alert.id).pnl == Decimal("-319")  # -310 - 7 - 2
    assert alerts_of(db_session, account_id)[0].total_loss == Decimal("319")


def test_a_close_found_by_its_comment_after_a_lost_reply_counts_its_deals_commission_and_swap(
    guarded, terminal, db_session, recorder
):
    """A close whose reply was lost is recorded from the deal found by its comment: that deal's price,
    ticket, and profit plus commission and swap."""
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        _execute(db_session, terminal, recorder, alert.id)

    result = _execute(
        db_session,
        terminal,
        recorder,
        alert.id,
        open_terminal=with_costs(open_sim(terminal)),
        settings=guards.GuardSettings(in_flight_seconds=60),
    )

    assert result.status == "executed"
    close = _close_of(db_session, alert.id)
    (deal,) = _outs(terminal, login, ticket)
    assert (close.state, close.pnl, close.deal_ticket) == ("closed", Decimal("-319"), deal.ticket)
    actions = _actions(db_session, alert.id)
    assert "position.closed_by_guard" in actions and "position.closed_in_part" not in actions


def test_a_sent_close_whose_position_was_closed_by_hand_is_recorded_gone_at_its_last_closing_deal(
    guarded, terminal, db_session, recorder
):
    """A close whose order never reached the broker, while its position was closed elsewhere (part by an
    order, the rest by hand): no deal carries the close's comment, so it is not ours: the close is
    `gone`, recorded at the position's last closing deal (price, ticket, profit plus commission and
    swap), and the alert still ends."""
    account_id, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    with _orders_never_arrive(), pytest.raises(OrderOutcomeUnknown):
        _execute(db_session, terminal, recorder, alert.id)
    assert _close_of(db_session, alert.id).state == "sent"
    account = db_session.get(Account, account_id)
    with open_sim(terminal)(account) as gateway:  # 0.4 lot closed by an order of the owner's
        quote = gateway.quote("EURUSD")
        request = gateway.market_order_request(
            symbol="EURUSD",
            side="sell",
            volume=Decimal("0.4"),
            price=quote.bid,
            sl=None,
            tp=None,
            deviation_points=20,
            magic=0,
            comment="by the owner",
            position=ticket,
        )
        assert gateway.send_order(request).done
    terminal.sim_close_manual(login, ticket)  # the rest, 0.6 lot, by hand
    _, last = _outs(terminal, login, ticket)

    result = _execute(
        db_session,
        terminal,
        recorder,
        alert.id,
        open_terminal=with_costs(open_sim(terminal)),
        settings=guards.GuardSettings(in_flight_seconds=60),
    )

    assert (result.status, result.closed) == ("executed", 0)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket, close.close_price) == ("gone", last.ticket, Decimal("1.082"))
    assert close.pnl == Decimal("-195")  # 0.6 lot, 31 pips: -186, then -7 and -2
    assert "position.close_gone" in _actions(db_session, alert.id)
    assert len(_outs(terminal, login, ticket)) == 2  # nothing sent by the guard


def test_a_sent_close_not_found_exactly_when_its_in_flight_window_ends_is_sent_again(
    guarded, terminal, db_session, recorder
):
    """The in-flight window is `in_flight_seconds` from the send: at exactly its end the order can no
    longer arrive, so a close whose deal is not found (its position still open) is sent again, once."""
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    with _orders_never_arrive(), pytest.raises(OrderOutcomeUnknown):
        _execute(db_session, terminal, recorder, alert.id)
    sent_at = _close_of(db_session, alert.id).sent_at

    result = _execute(
        db_session,
        terminal,
        recorder,
        alert.id,
        settings=guards.GuardSettings(in_flight_seconds=10),
        now=lambda: sent_at + timedelta(seconds=10),
    )

    assert result.status == "executed"
    close = _close_of(db_session, alert.id)
    assert (close.state, close.attempts) == ("closed", 2)
    assert len(_outs(terminal, login, ticket)) == 1


@pytest.mark.parametrize(
    ("opened_as", "breached_at", "closed_at"),
    [
        (mt5c.ORDER_TYPE_BUY, (1.08200, 1.08300), Decimal("1.082")),  # a buy closes at the bid
        (mt5c.ORDER_TYPE_SELL, (1.08700, 1.08800), Decimal("1.088")),  # a sell at the ask
    ],
)
def test_the_one_alert_path_closes_a_buy_at_the_bid_and_a_sell_at_the_ask(
    guarded, terminal, db_session, recorder, opened_as, breached_at, closed_at
):
    """The close is the opposite order at the close side's price; the spread here (10 pips) is five times
    the deviation, so the other side's price would be requoted on every attempt."""
    _, account_id, login, check, _ = guarded()
    ticket = terminal.sim_open_manual(login, "EURUSD", opened_as, 1.0)
    check()
    terminal.sim_set_quote("EURUSD", *breached_at)  # about 3 % against either position
    check()
    check()
    (alert,) = alerts_of(db_session, account_id)

    result = _execute(db_session, terminal, recorder, alert.id)

    assert (result.status, result.closed) == ("executed", 1)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.close_price, close.attempts) == ("closed", closed_at, 1)
    assert len(_outs(terminal, login, ticket)) == 1


def test_after_a_requote_the_position_is_read_again_and_one_closed_meanwhile_is_gone_without_an_order(
    guarded, terminal, db_session, recorder
):
    """Only the first attempt goes on the position as the decision read it: a retry after a requote reads
    it again, and a position closed meanwhile (by hand) is recorded gone, no second order sent."""
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_set_requotes(1)
    original = Gateway.send_order

    def send_order(self, request):
        result = original(self, request)
        terminal.sim_close_manual(login, ticket)  # while the requote comes back
        return result

    Gateway.send_order = send_order
    try:
        result = _execute(db_session, terminal, recorder, alert.id)
    finally:
        Gateway.send_order = original

    assert (result.status, result.closed) == ("executed", 0)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.attempts) == ("gone", 1)
    assert _actions(db_session, alert.id).count("position.close_sent") == 1
    assert len(_outs(terminal, login, ticket)) == 1  # the hand close only


def test_a_close_the_broker_refuses_on_the_one_alert_path_fails_and_the_alert_fails_and_halts(
    guarded, terminal, db_session, recorder
):
    """A refusal (not a requote, not a position already closed) is final: the close fails with the
    broker's retcode, audited, and is not sent again; the alert fails; the account is halted."""
    account_id, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_set_reject(mt5c.TRADE_RETCODE_REJECT)

    result = _execute(db_session, terminal, recorder, alert.id)

    assert (result.status, result.closed) == ("failed", 0)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.retcode, close.attempts) == ("failed", mt5c.TRADE_RETCODE_REJECT, 1)
    assert close.error.startswith(f"broker refused the close: retcode {mt5c.TRADE_RETCODE_REJECT}")
    assert "position.close_failed" in _actions(db_session, alert.id)
    assert state_of(db_session, account_id).halted_at is not None
    assert _outs(terminal, login, ticket) == []


def test_a_close_the_terminal_refuses_outright_on_the_one_alert_path_fails_and_is_not_sent_again(
    guarded, terminal, db_session, recorder
):
    account_id, login, (ticket,), alert = _alerted(guarded, terminal, db_session)

    for _ in range(2):  # a second delivery of the task finds the alert ended
        result = _execute(
            db_session, terminal, recorder, alert.id, open_terminal=open_sim(terminal, _AlgoTradingOff)
        )
        assert (result.status, result.closed) == ("failed", 0)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.attempts) == ("failed", 1)
    assert close.error.startswith("the terminal refused the close: order_send failed"), close.error
    assert _actions(db_session, alert.id).count("position.close_sent") == 1
    assert state_of(db_session, account_id).halted_by_alert_id == alert.id
    assert _outs(terminal, login, ticket) == []


def test_a_position_an_earlier_alert_failed_to_close_is_closed_by_the_next_alert(
    guarded, terminal, db_session, recorder
):
    """The first alert's close is refused (the market closed, say): that alert fails and the position
    stays open. After the owner resumes, the next breach's alert closes it: one close per alert and
    position, not one ever (which dropped the second alert's close and ended it `executed`, the
    position still open)."""
    _, account_id, login, check, _ = guarded()
    ticket = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    engine_tests.breach_confirmed(check, terminal)
    (first,) = alerts_of(db_session, account_id)
    terminal.sim_set_reject(mt5c.TRADE_RETCODE_MARKET_CLOSED)
    assert _execute(db_session, terminal, recorder, first.id).status == "failed"
    terminal.sim_set_reject(None)
    guards.resume(db_session, db_session.get(Account, account_id).owner_id, account_id)
    db_session.commit()

    engine_tests.breach_confirmed(check, terminal, bid=1.07900)  # 30 pips more, from the resume's equity
    second = alerts_of(db_session, account_id)[-1]
    assert second.id != first.id
    result = _execute(db_session, terminal, recorder, second.id)

    assert (result.status, result.closed) == ("executed", 1)
    closes = db_session.scalars(
        sa.select(AlertClose).where(AlertClose.account_id == account_id).order_by(AlertClose.id)
    ).all()
    assert [(c.alert_id, c.position_ticket, c.state) for c in closes] == [
        (first.id, ticket, "failed"),
        (second.id, ticket, "closed"),
    ]
    assert len(_outs(terminal, login, ticket)) == 1
    assert terminal.positions_get() == ()


def _deals_pnl(deals):
    return sum((d.profit + d.commission + d.swap for d in deals), 0.0)


def _closed_in_halves(guarded, terminal, db_session, recorder, terminal_type=SimTerminal):
    """An alerted account's 1-lot position closed by the one-alert path through a broker that fills
    each order in half (down to 0.01 lot), on a terminal of `terminal_type`: (login, ticket, alert,
    the alert's result)."""
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_set_partial_fill(0.5)
    result = _execute(
        db_session, terminal, recorder, alert.id, open_terminal=open_sim(terminal, terminal_type)
    )
    return login, ticket, alert, result


def test_a_close_that_fills_in_part_is_sent_again_for_the_rest_until_the_position_is_closed(
    guarded, terminal, db_session, recorder
):
    """IOC closes may fill in part (TRADE_RETCODE_DONE_PARTIAL): each part is recorded and the rest sent
    again, until the position is gone. Recorded as closed at the first part, the rest stayed open."""
    login, ticket, alert, result = _closed_in_halves(guarded, terminal, db_session, recorder)

    assert (result.status, result.closed) == ("executed", 1)
    assert terminal.positions_get() == ()
    outs = _outs(terminal, login, ticket)
    assert len(outs) > 2 and sum(d.volume for d in outs) == pytest.approx(1.0)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket) == ("closed", outs[-1].ticket)
    assert float(close.pnl) == pytest.approx(_deals_pnl(outs))  # every part's P&L, not the last one's
    actions = _actions(db_session, alert.id)
    assert actions.count("position.closed_in_part") == len(outs) - 1
    assert actions.count("position.close_sent") == len(outs)


def test_a_batch_close_that_fills_in_part_is_finished_by_the_one_alert_path(
    guarded, terminal, db_session, recorder
):
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_set_partial_fill(0.5)
    terminal.sim_set_requotes(0)

    done = carry_out(db_session, terminal, recorder, alert.id)

    assert done.left == [alert.id]  # not ended: the rest is still open
    close = _close_of(db_session, alert.id)
    (part,) = closing_deals(terminal, ticket)
    assert (close.state, close.deal_ticket) == ("pending", part.ticket)
    terminal.sim_set_partial_fill(None)
    assert _execute(db_session, terminal, recorder, alert.id).status == "executed"
    first, rest = closing_deals(terminal, ticket)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket) == ("closed", rest.ticket)
    assert float(close.pnl) == pytest.approx(_deals_pnl([first, rest]))
    assert terminal.positions_get() == ()


def test_after_a_part_filled_a_lost_reply_finds_the_rests_deal_not_the_parts(
    guarded, terminal, db_session, recorder
):
    """Every order of a close carries its comment: the look after a lost reply takes the deal past the
    part already recorded, not that part again (which would count its P&L twice and leave the rest)."""
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_set_partial_fill(0.5)
    carry_out(db_session, terminal, recorder, alert.id)
    terminal.sim_set_partial_fill(None)
    terminal.sim_lose_next_reply(1)
    with pytest.raises(OrderOutcomeUnknown):
        _execute(db_session, terminal, recorder, alert.id)
    assert _close_of(db_session, alert.id).state == "sent"

    result = _execute(
        db_session, terminal, recorder, alert.id, settings=guards.GuardSettings(in_flight_seconds=0)
    )

    assert result.status == "executed"
    part, rest = closing_deals(terminal, ticket)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket) == ("closed", rest.ticket)
    assert float(close.pnl) == pytest.approx(_deals_pnl([part, rest]))
    assert _actions(db_session, alert.id).count("position.close_sent") == 2


class _AnotherWorkerTakesThePart(SimTerminal):
    """Its close order fills in part; meanwhile another copy of the task, after a lost reply, found that
    part, recorded it and claimed the rest (the close `sent` again, at a later `sent_at`)."""

    connection = None

    def order_send(self, request):
        result = super().order_send(request)
        _AnotherWorkerTakesThePart.connection.execute(
            sa.update(AlertClose.__table__)
            .where(AlertClose.__table__.c.comment == request["comment"])
            .values(sent_at=utcnow() + timedelta(seconds=1), deal_ticket=result.deal, pnl=Decimal("-155"))
        )
        return result


def test_a_part_another_worker_recorded_and_went_on_from_is_not_written_over_nor_its_rest_sent_again(
    guarded, terminal, db_session, recorder
):
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_set_partial_fill(0.5)
    _AnotherWorkerTakesThePart.connection = db_session.connection()

    with pytest.raises(guards.CloseInFlight, match="another worker recorded it and went on"):
        _execute(
            db_session,
            terminal,
            recorder,
            alert.id,
            open_terminal=open_sim(terminal, _AnotherWorkerTakesThePart),
        )

    close = _close_of(db_session, alert.id)
    assert (close.state, close.pnl) == ("sent", Decimal("-155"))  # as the other worker left it
    assert len(_outs(terminal, login, ticket)) == 1  # the part; its rest not sent by this attempt
    assert "position.closed_in_part" not in _actions(db_session, alert.id)


def test_a_position_whose_rest_went_another_way_after_a_part_counts_as_closed_at_its_parts_figures(
    guarded, terminal, db_session, recorder
):
    ((account_id, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_set_partial_fill(0.5)
    carry_out(db_session, terminal, recorder, alert.id)
    terminal.sim_set_partial_fill(None)
    (part,) = closing_deals(terminal, ticket)
    terminal.sim_close_manual(db_session.get(Account, account_id).login, ticket)  # the rest, by hand

    result = _execute(db_session, terminal, recorder, alert.id)

    assert (result.status, result.closed) == ("executed", 1)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket) == ("closed", part.ticket)
    assert float(close.pnl) == pytest.approx(_deals_pnl([part]))
    (ended,) = alerts_of(db_session, account_id)
    assert float(ended.total_loss) == pytest.approx(-_deals_pnl([part]))


class _RepliesWithoutDeal(SimTerminal):
    """A broker whose replies name no deal (deal 0: some exchange execution)."""

    def order_send(self, request):
        result = super().order_send(request)
        return None if result is None else result._replace(deal=0)


def test_parts_whose_replies_name_no_deal_are_found_by_the_closes_comment_each_once(
    guarded, terminal, db_session, recorder
):
    login, ticket, alert, result = _closed_in_halves(
        guarded, terminal, db_session, recorder, _RepliesWithoutDeal
    )

    assert result.status == "executed"
    outs = _outs(terminal, login, ticket)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket) == ("closed", outs[-1].ticket)
    assert float(close.pnl) == pytest.approx(_deals_pnl(outs))


def test_a_close_still_open_after_its_most_parts_fails_saying_so(guarded, terminal, db_session, recorder):
    """A broker filling a sliver at a time: after MAX_PARTIAL_FILLS parts the close fails (the alert
    fails, the owner told) instead of sending for ever."""
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_set_partial_fill(0.1)  # a tenth of what is left each time: never all of it in 10

    result = _execute(db_session, terminal, recorder, alert.id)

    assert result.status == "failed"
    assert len(_outs(terminal, login, ticket)) == guards.MAX_PARTIAL_FILLS
    close = _close_of(db_session, alert.id)
    assert (close.state, close.error) == (
        "failed",
        f"still open after {guards.MAX_PARTIAL_FILLS} partial fills",
    )
    assert _actions(db_session, alert.id).count("position.close_sent") == guards.MAX_PARTIAL_FILLS


class _NoDealHistory(SimTerminal):
    """A terminal whose deal history shows nothing yet (a broker slow to book deals)."""

    def history_deals_get(self, *args, **kwargs):
        return ()


def test_parts_whose_deals_cannot_be_read_leave_the_closes_pnl_unknown_not_wrong(
    guarded, terminal, db_session, recorder
):
    login, ticket, alert, result = _closed_in_halves(guarded, terminal, db_session, recorder, _NoDealHistory)

    assert result.status == "executed"
    close = _close_of(db_session, alert.id)
    assert (close.state, close.pnl) == ("closed", None)
    assert close.deal_ticket == _outs(terminal, login, ticket)[-1].ticket  # from the replies


class _DealHistoryOnce(SimTerminal):
    """A broker whose first close order fills in part and the next in full, and whose deal history is read
    once, then shows nothing more (slow to book the deals that follow)."""

    reads = 0

    def order_send(self, request):
        result = super().order_send(request)
        self.sim_set_partial_fill(None)
        return result

    def history_deals_get(self, *args, **kwargs):
        _DealHistoryOnce.reads += 1
        return super().history_deals_get(*args, **kwargs) if _DealHistoryOnce.reads == 1 else ()


def test_a_close_whose_last_parts_deal_cannot_be_read_has_its_pnl_unknown_not_its_first_parts(
    guarded, terminal, db_session, recorder
):
    _DealHistoryOnce.reads = 0
    _, _, alert, result = _closed_in_halves(guarded, terminal, db_session, recorder, _DealHistoryOnce)

    assert result.status == "executed"
    assert _DealHistoryOnce.reads == 2  # the part's deal read, the rest's not found
    assert _actions(db_session, alert.id).count("position.closed_in_part") == 1
    assert (_close_of(db_session, alert.id).state, _close_of(db_session, alert.id).pnl) == ("closed", None)


def test_a_part_found_after_a_lost_reply_is_recorded_as_a_part_and_the_rest_is_sent(
    guarded, terminal, db_session, recorder
):
    """The reply to an order that filled in part was lost: the look finds its deal and the position still
    open, records the part (not the close) and sends the rest."""
    _, login, (ticket,), alert = _alerted(guarded, terminal, db_session)
    terminal.sim_set_partial_fill(0.5)
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        _execute(db_session, terminal, recorder, alert.id)
    terminal.sim_set_partial_fill(None)

    result = _execute(
        db_session, terminal, recorder, alert.id, settings=guards.GuardSettings(in_flight_seconds=0)
    )

    assert result.status == "executed"
    part, rest = _outs(terminal, login, ticket)
    close = _close_of(db_session, alert.id)
    assert (close.state, close.deal_ticket) == ("closed", rest.ticket)
    assert float(close.pnl) == pytest.approx(_deals_pnl([part, rest]))
    actions = _actions(db_session, alert.id)
    assert (actions.count("position.closed_in_part"), actions.count("position.close_sent")) == (1, 2)


def test_the_batch_records_a_fill_whose_deal_cannot_be_read_by_its_replys_deal_with_no_pnl(
    guarded, terminal, db_session, recorder
):
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)

    done = carry_out(
        db_session, terminal, recorder, alert.id, open_terminal=open_sim(terminal, _NoDealHistory)
    )

    assert done.first.status == "executed"
    close = _close_of(db_session, alert.id)
    (deal,) = closing_deals(terminal, ticket)
    assert (close.state, close.pnl, close.deal_ticket) == ("closed", None, deal.ticket)


def test_the_end_of_an_alert_and_a_cancelled_alert_are_committed_by_the_one_alert_path(
    guarded, terminal, db_session, recorder
):
    """execute_alert commits what it decides: the caller has nothing left to commit (a rollback after it
    undoes nothing), whether the alert was carried out or cancelled."""
    account_id, _, _, alert = _alerted(guarded, terminal, db_session)
    assert _execute(db_session, terminal, recorder, alert.id).status == "executed"
    db_session.rollback()
    assert _status(db_session, alert.id) == "executed"
    assert state_of(db_session, account_id).halted_at is not None

    terminal.sim_set_quote("EURUSD", *engine_tests.PIN)
    _, _, _, other = _alerted(guarded, terminal, db_session)
    terminal.sim_set_quote("EURUSD", *engine_tests.PIN)  # cleared before its close
    assert _execute(db_session, terminal, recorder, other.id).status == "cancelled"
    db_session.rollback()
    assert _status(db_session, other.id) == "cancelled"


# --- the sweep and the task's wait -----------------------------------------------------------------------


def test_an_alert_is_overdue_from_exactly_grace_seconds_after_its_close_time(guarded, db_session):
    """The sweep takes an alert still live `grace_seconds` after its close time, not a moment before."""
    _, account_id, _, _, _ = guarded()
    alert = _pending_alert(db_session, account_id)
    close_at = alert.close_at

    assert alert.id in guards.overdue_alerts(db_session, close_at + timedelta(seconds=30), grace_seconds=30)
    early = close_at + timedelta(seconds=29)
    assert alert.id not in guards.overdue_alerts(db_session, early, grace_seconds=30)


def test_the_wait_until_an_alert_is_due_is_its_close_time_less_now_and_never_negative(guarded, db_session):
    _, account_id, _, _, _ = guarded()
    later = _pending_alert(db_session, account_id, close_at=utcnow() + timedelta(seconds=30))

    assert 29 < guards.seconds_until_due(db_session, later.id) <= 30
    db_session.execute(
        sa.update(DrawdownAlert)
        .where(DrawdownAlert.id == later.id)
        .values(close_at=utcnow() - timedelta(seconds=5))
    )
    assert guards.seconds_until_due(db_session, later.id) == 0.0
    assert guards.seconds_until_due(db_session, later.id + 1000) == 0.0  # gone: at once


# --- engine.record_reading, as a reconciliation sync calls it (no batch preloaded) ------------------------


def _reading(equity, balance="10000", at=None, margin_level=None):
    return rules.Reading(
        at or utcnow(),
        Decimal(equity),
        Decimal(balance),
        None if margin_level is None else Decimal(margin_level),
    )


def _record(db_session, recorder, account_id, reading, **options):
    outcome = guards.record_reading(
        db_session,
        account_id,
        reading,
        currency="USD",
        notify=recorder.notify,
        schedule=recorder.schedule,
        **options,
    )
    db_session.commit()
    return outcome


def test_an_accounts_first_reading_makes_its_guard_state_with_no_broker_offset(guarded, db_session, recorder):
    """The first reading of an account makes its guard state: no broker offset known (0), no margin
    streak, the reading's balance as the initial balance."""
    _, account_id, _, _, _ = guarded()
    assert state_of(db_session, account_id) is None

    assert _record(db_session, recorder, account_id, _reading("10000", balance="9990")).state == "ok"

    state = state_of(db_session, account_id)
    assert (state.broker_offset_seconds, state.margin_streak, state.initial_balance) == (
        0,
        0,
        Decimal("9990"),
    )


def test_a_synced_breach_confirms_nothing_alone_and_the_second_raises_the_alert(
    guarded, db_session, recorder
):
    """A reading from a sync is one reading (no estimate presumed before it): with two confirmations, the
    first breached reading raises nothing; the second raises the alert, scheduled at its close time."""
    _, account_id, _, _, _ = guarded()
    _record(db_session, recorder, account_id, _reading("10000"))

    once = _record(db_session, recorder, account_id, _reading("9700"))  # 3 %: past the 2 % maximum
    assert once.alert_id is None and alerts_of(db_session, account_id) == []

    twice = _record(db_session, recorder, account_id, _reading("9700"))
    (alert,) = alerts_of(db_session, account_id)
    assert (twice.state, twice.alert_id, alert.status) == ("alert", alert.id, "pending")
    assert (alert.positions_closed_count, alert.total_loss) == (0, Decimal(0))  # nothing closed yet
    assert recorder.scheduled == [("tradeguard.execute_alert", [alert.id], alert.close_at)]


def test_another_accounts_live_alert_neither_stops_this_ones_alert_nor_its_resume(
    guarded, terminal, db_session, recorder
):
    """A live alert belongs to its account: another account's does not stand for this one's (its breach
    still raises its own alert), and does not hold up this one's resume."""
    other_id, _, _, _ = _alerted(guarded, terminal, db_session)
    assert alerts_of(db_session, other_id)[0].status == "pending"
    _, account_id, _, _, _ = guarded()
    for equity in ("10000", "9700", "9700"):
        outcome = _record(db_session, recorder, account_id, _reading(equity))
    (alert,) = alerts_of(db_session, account_id)
    assert outcome.alert_id == alert.id

    # This account's alert ends (failed here, by hand) and the account is halted; the other's is live.
    db_session.execute(sa.update(DrawdownAlert).where(DrawdownAlert.id == alert.id).values(status="failed"))
    db_session.execute(
        sa.update(GuardState).where(GuardState.account_id == account_id).values(halted_at=utcnow())
    )
    db_session.commit()
    owner = db_session.get(Account, account_id).owner_id
    assert guards.resume(db_session, owner, account_id).halted_at is None


def test_a_resume_reads_the_guard_state_afresh_not_as_this_session_last_saw_it(guarded, db_session, recorder):
    """Sessions keep what they read across commits: an account another worker halted since this session
    read its state is seen halted, and resumed."""
    _, account_id, _, _, _ = guarded()
    _record(db_session, recorder, account_id, _reading("10000"))
    seen = db_session.get(GuardState, account_id)
    assert seen.halted_at is None
    db_session.execute(
        sa.update(GuardState)
        .where(GuardState.account_id == account_id)
        .values(halted_at=utcnow(), halted_reason="by another worker", state="halted")
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    assert seen.halted_at is None  # this session's copy, as it read it

    owner = db_session.get(Account, account_id).owner_id
    resumed = guards.resume(db_session, owner, account_id, notify=recorder.notify)

    assert (resumed.halted_at, resumed.state, resumed.margin_streak) == (None, "ok", 0)
    assert "account.resumed" in recorder.names()
    (audited,) = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "account.resumed"))
    assert (audited.actor_type, audited.actor_id, audited.target_id) == ("user", owner, account_id)
    assert guards.is_halted(db_session, account_id) is False


def test_only_the_owner_resumes_only_a_halted_account_and_not_while_its_alert_is_closing(
    guarded, terminal, db_session, recorder
):
    """Resume is the owner's (another user is told there is no such account), for a halted account (one
    not halted is a conflict), once its alert has ended (a live alert is a conflict)."""
    account_id, _, _, alert = _alerted(guarded, terminal, db_session)
    owner = db_session.get(Account, account_id).owner_id
    _, other_account, _, _, _ = guarded()
    stranger = db_session.get(Account, other_account).owner_id
    with pytest.raises(Conflict):  # not halted
        guards.resume(db_session, owner, account_id)
    db_session.rollback()
    db_session.execute(
        sa.update(GuardState).where(GuardState.account_id == account_id).values(halted_at=utcnow())
    )
    db_session.commit()
    assert guards.is_halted(db_session, account_id) and not guards.is_halted(db_session, other_account)
    with pytest.raises(NotFound):
        guards.resume(db_session, stranger, account_id)
    db_session.rollback()
    with pytest.raises(Conflict):  # its alert is live
        guards.resume(db_session, owner, account_id)
    db_session.rollback()
    db_session.execute(sa.update(DrawdownAlert).where(DrawdownAlert.id == alert.id).values(status="executed"))
    db_session.commit()
    assert guards.resume(db_session, owner, account_id).halted_at is None


def test_the_watchs_margin_estimate_counts_as_one_reading_of_the_margin_run(guarded, db_session, recorder):
    """Under the margin minimum, a reading the watch presumed (its estimate just before) counts twice:
    with two confirmations that first reading raises the margin alert; without the estimate it does not."""
    _, account_id, _, _, _ = guarded(min_margin_level_percent=100)
    _, plain_id, _, _, _ = guarded(min_margin_level_percent=100)
    for account in (account_id, plain_id):
        _record(db_session, recorder, account, _reading("10000", margin_level="500"))

    low = _record(db_session, recorder, plain_id, _reading("10000", margin_level="80"))
    assert low.state == "warning"  # under the minimum, not yet confirmed: a warning on its own
    outcome = _record(db_session, recorder, account_id, _reading("10000", margin_level="80"), presumed=1)

    assert alerts_of(db_session, plain_id) == []
    (alert,) = alerts_of(db_session, account_id)
    assert (outcome.alert_id, alert.alert_type) == (alert.id, "margin")


@pytest.mark.parametrize("action", ["block", "warn"])
def test_a_synced_reading_blocks_a_held_symbol_its_servers_quotes_show_too_wide_and_raises_no_alert(
    guarded, db_session, recorder, action
):
    """The market guard reads what was last quoted on the account's own server: a spread past the maximum
    on a held symbol, confirmed (two readings), blocks the symbol when the action is `block` (no alert:
    only `close` closes), and only tells the owner (`guard.warning`) when the action is `warn`."""
    market = {"max_spread_pips": 5, "max_gap_pips": 1000, "stale_quote_seconds": None, "action": action}
    _, account_id, _, _, _ = guarded(market=market)
    wide = {
        "bid": Decimal("1.085"),
        "ask": Decimal("1.086"),
        "spread_pips": Decimal(10),
        "gap_pips": Decimal(0),
    }
    db_session.add(
        MarketQuote(server="TradeGuard-Sim", symbol="EURUSD", quoted_at=utcnow(), trading=True, **wide)
    )
    db_session.commit()

    _record(db_session, recorder, account_id, _reading("10000"), held_symbols=["EURUSD"])
    assert state_of(db_session, account_id).blocked_symbols == {}  # one reading confirms nothing
    outcome = _record(db_session, recorder, account_id, _reading("10000"), held_symbols=["EURUSD"])

    blocked = state_of(db_session, account_id).blocked_symbols
    if action == "block":
        assert blocked["EURUSD"]["kind"] == "spread"
        assert outcome.state == "warning"  # a blocked symbol alone is a warning
        assert recorder.names() == ["market.blocked"]
    else:
        assert blocked == {} and recorder.names() == ["guard.warning"]
        assert outcome.state == "warning"  # traded through, and shown
    assert alerts_of(db_session, account_id) == []


def test_a_guard_state_made_when_missing_starts_ok_with_no_streak_and_no_broker_offset(guarded, db_session):
    """An account's guard state, made when first needed (one account, or a batch's at once by default),
    starts `ok`: no limits, no margin streak, no blocked symbol, no broker offset known."""
    _, one, _, _, _ = guarded()
    _, batch, _, _, _ = guarded()
    at = utcnow()

    made = {one: guards._locked_state(db_session, one, at), **guards.locked_states(db_session, [batch], at)}

    assert set(made) == {one, batch}
    for state in made.values():
        assert (state.state, state.limits, state.margin_streak, state.blocked_symbols) == ("ok", {}, 0, {})
        assert (state.broker_offset_seconds, state.halted_at) == (0, None)


# --- engine._still_breached: whether an alert's breach still holds at its close ---------------------------


def _transient_state(account_id, **values):
    fields = {
        "state": "alert",
        "limits": {},
        "margin_streak": 0,
        "blocked_symbols": {},
        "broker_offset_seconds": 0,
    }
    return GuardState(account_id=account_id, **{**fields, **values})


def test_a_limit_from_the_initial_balance_with_no_state_yet_is_measured_from_the_recorded_initial_balance(
    guarded, db_session
):
    """At the close, a limit that starts afresh (no state recorded for it) is anchored where a reading
    would anchor it: an `initial_balance` limit at the balance the guard first recorded, not at the
    balance read now."""
    limit = {
        "name": "from the start",
        "period": "lifetime",
        "reference": "initial_balance",
        "max_percent": 2,
        "action": "close",
    }
    _, account_id, _, _, _ = guarded(drawdown_limits=[limit])
    account = db_session.get(Account, account_id)
    settings = risk_settings_of(db_session, account_id)
    alert = DrawdownAlert(alert_type="drawdown", limit_name="from the start")
    state = _transient_state(account_id, initial_balance=Decimal(10000))
    reading = _reading("9750", balance="9000")  # 2.5 % under the initial 10,000

    why = guards._still_breached(alert, settings, state, reading, db_session, account, reading.at)

    assert why is not None and why.startswith("drawdown 2.5")


def test_a_market_alert_still_holds_with_the_problems_reason_the_owner_reads(guarded, db_session):
    """A market alert's breach, at its close, is named by what the market guard sees on the account's
    server now: the problem's reason (the text the owner reads), not its bare kind."""
    market = {"max_spread_pips": 5, "max_gap_pips": 1000, "stale_quote_seconds": None, "action": "close"}
    _, account_id, _, _, _ = guarded(market=market)
    account = db_session.get(Account, account_id)
    settings = risk_settings_of(db_session, account_id)
    wide = {
        "bid": Decimal("1.085"),
        "ask": Decimal("1.086"),
        "spread_pips": Decimal(10),
        "gap_pips": Decimal(0),
    }
    db_session.add(
        MarketQuote(server=account.server, symbol="EURUSD", quoted_at=utcnow(), trading=True, **wide)
    )
    db_session.commit()
    alert = DrawdownAlert(alert_type="market", symbol="EURUSD")
    reading = _reading("10000")

    why = guards._still_breached(
        alert, settings, _transient_state(account_id), reading, db_session, account, reading.at
    )

    assert why == "spread 10.00 pips > 5"


def test_a_run_that_read_the_alert_pending_while_another_decided_it_does_not_decide_again(
    guarded, terminal, db_session, recorder
):
    """The one-alert path re-reads the alert (locked) before deciding: one another copy of the task has
    decided meanwhile is carried out on that decision, with one `alert.closing` on record, not two."""
    account_id, _, _, alert = _alerted(guarded, terminal, db_session, volumes=(1.0, 1.0))
    account = db_session.get(Account, account_id)
    with open_sim(terminal)(account) as gateway:  # the other copy decides, and commits
        guards._decide(db_session, alert, account, gateway, utcnow(), lambda *a, **k: None)
    set_committed_value(alert, "status", "pending")  # this copy read it before that decision

    result = _execute(db_session, terminal, recorder, alert.id)

    assert (result.status, result.closed) == ("executed", 2)
    assert _actions(db_session, alert.id).count("alert.closing") == 1


def test_a_tradeguard_trade_closed_by_the_one_alert_path_is_closed_with_the_closes_price_and_pnl(
    run, approved, db_session, terminal, recorder
):
    """The close of a position TradeGuard opened names its trade, and the trade is closed with it (reason
    `guard`, the close's price and P&L), audited and told once."""
    trade, alert = alerted_trade(run, approved, db_session, terminal, recorder)

    result = _execute(db_session, terminal, recorder, alert.id)

    assert (result.status, result.closed) == ("executed", 1)
    close = _close_of(db_session, alert.id)
    db_session.refresh(trade)
    assert close.trade_id == trade.id
    assert (trade.state, trade.close_reason, trade.close_price) == (
        TradeState.CLOSED,
        "guard",
        Decimal("1.082"),
    )
    assert trade.pnl == close.pnl and trade.pnl < 0
    assert [data["trade_id"] for _, event, data in recorder.events if event == "trade.closed"] == [trade.id]


def test_a_positions_notional_is_its_volume_at_its_current_price(guarded, terminal, db_session):
    """What the margin guard weighs a position's share of the account's margin by (`rules.OpenPosition`):
    its volume times its current price."""
    _, account_id, login, _, _ = guarded()
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 2.0)
    account = db_session.get(Account, account_id)
    with open_sim(terminal)(account) as gateway:
        snapshot, (position,) = gateway.account(), gateway.positions()

    opened = guards._open_position(position, snapshot)

    assert position.volume == Decimal("2") and position.price_current == Decimal("1.085")
    assert opened.notional == Decimal("2.170")
    assert (opened.ticket, opened.volume, opened.side) == (position.ticket, position.volume, "buy")


def test_an_alert_another_run_ended_while_this_runs_order_was_out_is_not_ended_again(
    guarded, terminal, db_session, recorder
):
    """The one-alert path re-reads the alert (locked) before ending it: one that another run ended while
    this run's order was out is reported as that run left it, not ended, audited or told a second time."""
    _, _, _, alert = _alerted(guarded, terminal, db_session)
    original = Gateway.send_order

    def send_order(self, request):
        result = original(self, request)
        db_session.execute(  # meanwhile another run ended the alert (this session unaware)
            sa.update(DrawdownAlert)
            .where(DrawdownAlert.id == alert.id)
            .values(status="executed", action_taken="closed")
            .execution_options(synchronize_session=False)
        )
        return result

    Gateway.send_order = send_order
    try:
        result = _execute(db_session, terminal, recorder, alert.id)
    finally:
        Gateway.send_order = original

    assert result.status == "executed"
    assert "alert.executed" not in recorder.names()
    assert "alert.executed" not in _actions(db_session, alert.id)
    assert _close_of(db_session, alert.id).state == "closed"


def test_a_batch_of_readings_takes_an_alert_id_per_account_in_one_round_trip(
    guarded, terminal, db_session, recorder
):
    """Three accounts confirmed by one check: one `nextval` statement, of three ids, for their three
    alerts, given in the accounts' order; a check of one account later takes one id."""
    accounts = []
    for _ in range(4):
        _, account_id, login, check, _ = guarded()
        terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
        check()  # the reference, at the pinned price
        accounts.append(account_id)
    terminal.sim_set_quote("EURUSD", 1.08250, 1.08260)  # 25 pips on 1 lot: 2.5 %
    sequence_rows = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if "nextval" in statement:
            sequence_rows.append(cursor.rowcount)

    engine = db_session.get_bind().engine
    sa.event.listen(engine, "after_cursor_execute", note)
    try:
        outcomes = check_at_once(db_session, terminal, recorder, accounts[:3], presumed=accounts[:3])
        assert sequence_rows == [3]
        (later,) = check_at_once(db_session, terminal, recorder, accounts[3:], presumed=accounts[3:])
        assert sequence_rows == [3, 1]
    finally:
        sa.event.remove(engine, "after_cursor_execute", note)
    alert_ids = [o.alert_id for o in outcomes]
    assert None not in alert_ids and alert_ids == sorted(set(alert_ids))
    assert [a.id for account_id in accounts[:3] for a in alerts_of(db_session, account_id)] == alert_ids
    assert later.alert_id is not None and later.alert_id not in alert_ids
