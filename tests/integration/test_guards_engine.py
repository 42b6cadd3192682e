"""The guards on Postgres against the simulated terminal: readings, the warning, the confirmation count,
the alert and its grace period, the close (exactly once, also after a lost reply), cancel, halt, resume,
the margin and market guards."""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value

from shared.core.db import after_commit, utcnow
from shared.guards import engine as guards
from shared.guards import readings, watch
from shared.guards.settings import default_settings, validate_settings
from shared.models import Account, AccountRisk, AlertClose, AuditLog, DrawdownAlert, GuardState, MarketQuote
from shared.mt5 import constants as mt5c
from shared.mt5.errors import OrderOutcomeUnknown
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal

# 1 lot of EURUSD moves 10 USD a pip: on the demo account's 10,000 USD, 20 pips are 2 %.
PIN = (1.08500, 1.08510)
# The guarded account's limit unless a test says otherwise: warn at 1 %, close at 2 %.
MAX_DRAWDOWN = {
    "name": "max drawdown",
    "period": "lifetime",
    "reference": "peak_equity",
    "warn_percent": 1,
    "max_percent": 2,
    "action": "close",
    "resume": "manual",
}


class Recorder:
    def __init__(self):
        self.events = []  # (owner_id, event, data)
        self.scheduled = []  # (task, args, at)

    def notify(self, session, owner_id, event, data):
        self.events.append((owner_id, event, data))

    def schedule(self, session, task, args, at):
        self.scheduled.append((task, args, at))

    def names(self):
        return [event for _, event, _ in self.events]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def guarded(api, db_session, terminal, market, recorder):
    """An account with risk settings (given as overrides of a prop-style document) and its terminal."""

    def make(**overrides):
        world = api.setup()
        account_id = world["account"]["id"]
        login = world["account"]["login"]
        document = default_settings()
        document.update(
            {
                "grace_seconds": 0,
                "confirmations": 2,
                "drawdown_limits": [MAX_DRAWDOWN],
            }
        )
        document.update(overrides)
        db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
        db_session.commit()

        @contextmanager
        def open_terminal(account):
            with Gateway.from_module(
                SimTerminal(market.broker),
                login=account.login,
                password="x",
                server=account.server,
                timeout=5,
            ) as gateway:
                yield gateway

        def check():
            return readings.check_account(
                db_session,
                account_id,
                open_terminal=open_terminal,
                notify=recorder.notify,
                schedule=recorder.schedule,
            )

        def execute(alert_id, **settings):
            return guards.execute_alert(
                db_session,
                alert_id,
                open_terminal=open_terminal,
                settings=guards.GuardSettings(**settings),
                notify=recorder.notify,
            )

        return world, account_id, login, check, execute

    terminal.sim_set_quote("EURUSD", *PIN)
    return make


def open_sim(terminal, terminal_type=SimTerminal):
    """Opens the test broker's terminal for an account, as the workers' pool does for a real one (a
    SimTerminal, or one of `terminal_type`: a SimTerminal that misbehaves, say)."""

    @contextmanager
    def open_terminal(account):
        with Gateway.from_module(
            terminal_type(terminal.broker),
            login=account.login,
            password="x",
            server=account.server,
            timeout=5,
        ) as gateway:
            yield gateway

    return open_terminal


def state_of(db_session, account_id):
    db_session.expire_all()
    return db_session.get(GuardState, account_id)


def alerts_of(db_session, account_id):
    db_session.expire_all()
    return list(
        db_session.scalars(
            sa.select(DrawdownAlert).where(DrawdownAlert.account_id == account_id).order_by(DrawdownAlert.id)
        )
    )


def breach_confirmed(check, terminal, bid=1.08200):
    """A reading at the pinned price, then two past the 2 % maximum: the alert is raised."""
    check()
    terminal.sim_set_quote("EURUSD", bid, bid + 0.0001)
    check()
    return check()


def alerted_on_one_position(guarded, terminal, db_session, **settings):
    """A guarded account holding one 1-lot EURUSD buy, breached past its 2 % (30 pips: 3 %) and
    confirmed: (account id, the position's ticket, the pending alert, execute)."""
    _, account_id, login, check, execute = guarded(**settings)
    ticket = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    breach_confirmed(check, terminal)
    (alert,) = alerts_of(db_session, account_id)
    return account_id, ticket, alert, execute


def test_a_breach_warns_then_alerts_after_its_confirmations_and_the_close_takes_each_position_once(
    guarded, terminal, db_session, recorder, api
):
    world, account_id, login, check, execute = guarded()
    first = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    second = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.5)
    assert check().state == "ok"

    terminal.sim_set_quote("EURUSD", 1.08380, 1.08390)  # 12 pips x 1.5 lots: about 1.8 %
    warned = check()
    assert warned.state == "warning" and recorder.names() == ["guard.warning"]

    terminal.sim_set_quote("EURUSD", 1.08300, 1.08310)  # 20 pips x 1.5 lots: about 3 %
    once = check()
    assert once.unconfirmed and alerts_of(db_session, account_id) == []  # one reading is not enough
    twice = check()
    (alert,) = alerts_of(db_session, account_id)
    assert twice.state == "alert" and twice.alert_id == alert.id and not twice.unconfirmed
    assert (alert.status, alert.alert_type, alert.limit_name, alert.currency) == (
        "pending",
        "drawdown",
        "max drawdown",
        "USD",
    )
    assert alert.drawdown_percent > Decimal(2) and alert.threshold_percent == Decimal(2)
    assert recorder.names()[-1] == "alert.pending"
    assert recorder.events[-1][2]["close_at"] == alert.close_at.isoformat()
    assert recorder.scheduled == [("tradeguard.execute_alert", [alert.id], alert.close_at)]

    result = execute(alert.id)
    assert (result.status, result.closed) == ("executed", 2)
    assert not {p.ticket for p in terminal.positions_get() or ()} & {first, second}
    closes = list(db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id)))
    assert sorted(c.position_ticket for c in closes) == sorted([first, second])
    assert all(c.state == "closed" and c.close_price == Decimal("1.083") and c.pnl < 0 for c in closes)
    assert all(c.comment == guards.close_comment(c.id) and c.attempts == 1 for c in closes)
    # Larger loser first.
    assert [c.position_ticket for c in sorted(closes, key=lambda c: c.id)] == [first, second]
    (alert,) = alerts_of(db_session, account_id)
    assert (alert.status, alert.positions_closed_count) == ("executed", 2)
    assert alert.total_loss == -sum(c.pnl for c in closes) and alert.total_loss > 0
    assert state_of(db_session, account_id).halted_at is not None
    assert recorder.names()[-2:] == ["alert.executed", "account.halted"]

    # Run again (a redelivered task): nothing more is sent.
    assert execute(alert.id).status == "executed"
    for ticket in (first, second):
        deals = [d for d in terminal.history_deals_get(position=ticket) if d.entry == mt5c.DEAL_ENTRY_OUT]
        assert len(deals) == 1 and deals[0].comment.startswith("TG-X")

    actions = set(
        db_session.scalars(
            sa.select(AuditLog.action).where(
                AuditLog.action.in_(
                    [
                        "guard.warning",
                        "alert.pending",
                        "alert.closing",
                        "position.closed_by_guard",
                        "alert.executed",
                        "account.halted",
                    ]
                )
            )
        )
    )
    assert actions == {
        "guard.warning",
        "alert.pending",
        "alert.closing",
        "position.closed_by_guard",
        "alert.executed",
        "account.halted",
    }

    # Halted: no new alert while halted, whatever the readings say.
    check()
    check()
    assert len(alerts_of(db_session, account_id)) == 1

    # Resume: the reference becomes the equity now, so it does not breach again at once.
    response = api.http.post(f"/api/v1/accounts/{account_id}/resume", headers=world["user"]["headers"])
    assert response.status_code == 200, response.json
    assert response.json["state"] == "ok"
    state = state_of(db_session, account_id)
    assert state.halted_at is None
    assert Decimal(state.limits["max drawdown"]["peak"]) == state.equity
    assert check().state == "ok"
    again = api.http.post(f"/api/v1/accounts/{account_id}/resume", headers=world["user"]["headers"])
    assert again.status_code == 409


def test_a_breach_that_clears_within_the_grace_period_cancels_the_alert(
    guarded, terminal, db_session, recorder
):
    account_id, ticket, alert, execute = alerted_on_one_position(guarded, terminal, db_session)
    terminal.sim_set_quote("EURUSD", 1.08490, 1.08500)  # back within 0.1 %
    assert execute(alert.id).status == "cancelled"
    (alert,) = alerts_of(db_session, account_id)
    assert (alert.status, alert.action_taken, alert.positions_closed_count) == ("cancelled", "cancelled", 0)
    assert [p.ticket for p in terminal.positions_get()] == [ticket]
    state = state_of(db_session, account_id)
    assert (state.halted_at, state.state) == (None, "ok")
    assert recorder.names()[-1] == "alert.cancelled"
    assert execute(alert.id).status == "cancelled"  # again: still nothing closed


def test_one_bad_reading_between_good_ones_never_raises_an_alert(guarded, terminal, db_session):
    _, account_id, login, check, _ = guarded(confirmations=2)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    for bid in (1.08200, 1.08500, 1.08200, 1.08500):
        terminal.sim_set_quote("EURUSD", bid, bid + 0.0001)
        check()
    assert alerts_of(db_session, account_id) == []
    assert state_of(db_session, account_id).limits["max drawdown"]["streak"] == 0


def test_a_failed_reading_neither_confirms_nor_clears(guarded, terminal, db_session):
    _, account_id, login, check, _ = guarded(confirmations=2)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)
    check()
    terminal.sim_disconnect(30, login=login)
    failed = check()
    assert failed.status == "failed"
    assert state_of(db_session, account_id).limits["max drawdown"]["streak"] == 1
    assert alerts_of(db_session, account_id) == []


def test_the_watchs_estimate_stands_for_one_confirmation_never_for_the_account_read(
    guarded, terminal, db_session, recorder
):
    """An account the watch estimated at a breach (`presumed`) needs one reading fewer; with three
    confirmations, two account reads are still needed, and a read that does not breach confirms nothing."""
    _, account_id, login, _, _ = guarded(confirmations=3)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)

    def check(presumed):
        (outcome,) = readings.check_accounts(
            db_session,
            [account_id],
            open_terminal=open_sim(terminal),
            notify=recorder.notify,
            schedule=recorder.schedule,
            presumed={account_id} if presumed else (),
        )
        return outcome

    check(presumed=False)
    # The estimate was wrong (the position moved back before the read): nothing builds up.
    assert not check(presumed=True).unconfirmed
    assert state_of(db_session, account_id).limits["max drawdown"]["streak"] == 0

    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)  # 30 pips: 3 %
    first = check(presumed=True)
    assert first.unconfirmed and alerts_of(db_session, account_id) == []  # estimate + 1 read of 3
    second = check(presumed=False)
    (alert,) = alerts_of(db_session, account_id)
    assert second.state == "alert" and second.alert_id == alert.id


def test_a_presumed_breach_is_alerted_on_the_first_account_read_with_two_confirmations(
    guarded, terminal, db_session, recorder
):
    _, account_id, login, _, _ = guarded(confirmations=2)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check = dict(open_terminal=open_sim(terminal), notify=recorder.notify, schedule=recorder.schedule)
    readings.check_accounts(db_session, [account_id], **check)
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)
    (outcome,) = readings.check_accounts(db_session, [account_id], presumed=[account_id], **check)
    (alert,) = alerts_of(db_session, account_id)
    assert (outcome.state, outcome.alert_id, alert.status) == ("alert", alert.id, "pending")


def test_a_limit_that_goes_straight_past_its_warning_to_the_alert_sends_the_alert_alone(
    guarded, terminal, db_session, recorder
):
    """`alert.pending` carries the figures a warning would: one webhook, not two, for that limit; another
    limit's warning in the same reading is still sent, and the audit log keeps every warning."""
    daily = {
        "name": "daily loss",
        "period": "day",
        "reference": "period_start_equity",
        "warn_percent": 2.5,
        "max_percent": 50,
        "action": "warn",
        "resume": "next_period",
    }
    _, account_id, login, check, _ = guarded(confirmations=1, drawdown_limits=[MAX_DRAWDOWN, daily])
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    assert recorder.names() == []
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)  # 30 pips: 3 %, past both warnings
    assert check().state == "alert"
    assert recorder.names() == ["alert.pending", "guard.warning"]
    assert recorder.events[-1][2]["limit"] == "daily loss"
    warned = db_session.scalars(
        sa.select(AuditLog.meta).where(AuditLog.action == "guard.warning", AuditLog.target_id == account_id)
    ).all()
    assert sorted(meta["limit"] for meta in warned) == ["daily loss", "max drawdown"]


def test_a_batch_records_each_account_on_its_own_and_a_failure_loses_no_other_reading(
    guarded, terminal, db_session, recorder, monkeypatch
):
    """One transaction for the batch, a savepoint per account: an account whose terminal fails gives no
    reading, one whose recording fails is rolled back alone (with the tasks it asked to send after the
    commit), and the others' readings and follow-ups land. Outcomes come back in the order asked."""
    accounts = [guarded() for _ in range(3)]
    (_, ok_id, ok_login, _, _), (_, broken_id, broken_login, _, _), (_, down_id, down_login, _, _) = accounts
    for login in (ok_login, broken_login, down_login):
        terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    sent = []
    real = guards.record_reading

    def record_reading(session, account_id, *args, **kwargs):
        outcome = real(session, account_id, *args, **kwargs)
        after_commit(session, lambda: sent.append(account_id))
        if account_id == broken_id:
            raise sa.exc.OperationalError("UPDATE guard_states", {}, Exception("the server went away"))
        return outcome

    monkeypatch.setattr(readings.engine, "record_reading", record_reading)
    terminal.sim_disconnect(30, login=down_login)
    outcomes = readings.check_accounts(
        db_session,
        [down_id, broken_id, ok_id],
        open_terminal=open_sim(terminal),
        notify=recorder.notify,
        schedule=recorder.schedule,
    )
    assert [(o.account_id, o.status) for o in outcomes] == [
        (down_id, "failed"),
        (broken_id, "failed"),
        (ok_id, "ok"),
    ]
    assert "OperationalError" in outcomes[1].error and "TerminalError" not in outcomes[1].error
    assert sent == [ok_id]
    assert state_of(db_session, ok_id).read_at is not None
    assert state_of(db_session, broken_id) is None and state_of(db_session, down_id) is None


def test_a_close_whose_reply_was_lost_is_found_by_its_comment_and_never_sent_twice(
    guarded, terminal, db_session
):
    _, ticket, alert, execute = alerted_on_one_position(guarded, terminal, db_session)
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown):
        execute(alert.id)
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    assert close.state == "sent"
    # The order went through; its reply was lost: the next run finds its deal and sends nothing.
    assert execute(alert.id, in_flight_seconds=60).status == "executed"
    db_session.expire_all()
    close = db_session.get(AlertClose, close.id)
    assert (close.state, close.attempts, close.close_price) == ("closed", 1, Decimal("1.082"))
    outs = [d for d in terminal.history_deals_get(position=ticket) if d.entry == mt5c.DEAL_ENTRY_OUT]
    assert len(outs) == 1 and outs[0].comment == close.comment


def test_a_close_whose_order_may_still_be_in_flight_waits_and_is_sent_once_it_cannot_be(
    guarded, terminal, db_session
):
    _, ticket, alert, execute = alerted_on_one_position(guarded, terminal, db_session)
    original_send = Gateway.send_order

    def never_arrives(self, request):
        raise OrderOutcomeUnknown("connection dropped while sending")

    Gateway.send_order = never_arrives
    try:
        with pytest.raises(OrderOutcomeUnknown):
            execute(alert.id)
    finally:
        Gateway.send_order = original_send
    # No deal, the position still open: within the in-flight window that proves nothing.
    with pytest.raises(guards.CloseInFlight):
        execute(alert.id, in_flight_seconds=60)
    assert [p.ticket for p in terminal.positions_get()] == [ticket]
    # Past it, the order cannot still arrive: sent again, once.
    assert execute(alert.id, in_flight_seconds=0).status == "executed"
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    assert (close.state, close.attempts) == ("closed", 2)
    outs = [d for d in terminal.history_deals_get(position=ticket) if d.entry == mt5c.DEAL_ENTRY_OUT]
    assert len(outs) == 1


def test_a_position_closed_elsewhere_during_the_grace_period_is_recorded_gone_not_closed_again(
    guarded, terminal, db_session
):
    _, account_id, login, check, execute = guarded()
    kept = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    by_hand = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    breach_confirmed(check, terminal)  # 30 pips: 3 %
    (alert,) = alerts_of(db_session, account_id)

    # The owner closes one position by hand just as the close begins (after the decision, before the send).
    guarded_close = terminal.sim_close_manual
    original_send = Gateway.send_order
    state = {"done": False}

    def send_order(self, request):
        if not state["done"]:
            state["done"] = True
            guarded_close(login, by_hand)
        return original_send(self, request)

    Gateway.send_order = send_order
    try:
        result = execute(alert.id)
    finally:
        Gateway.send_order = original_send
    closes = {c.position_ticket: c for c in db_session.scalars(sa.select(AlertClose))}
    assert result.closed == 1
    assert closes[kept].state == "closed"
    assert closes[by_hand].state in ("gone", "closed")
    outs = [d for d in terminal.history_deals_get(position=by_hand) if d.entry == mt5c.DEAL_ENTRY_OUT]
    assert len(outs) == 1


DAILY_LOSS_BLOCK = {
    "name": "daily loss",
    "period": "day",
    "reference": "period_start_balance",
    "warn_percent": 1,
    "max_percent": 2,
    "action": "block",
    "resume": "next_period",
}


def test_a_block_action_halts_without_closing_and_refuses_no_reading(guarded, terminal, db_session, recorder):
    _, account_id, login, check, _ = guarded(drawdown_limits=[DAILY_LOSS_BLOCK])
    ticket = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)
    check()
    assert state_of(db_session, account_id).halted_at is None
    assert check().state == "halted"
    state = state_of(db_session, account_id)
    assert (state.halted_limit, state.halted_resume) == ("daily loss", "next_period")
    assert alerts_of(db_session, account_id) == []
    assert [p.ticket for p in terminal.positions_get()] == [ticket]
    assert "account.halted" in recorder.names()


BLOCK_THEN_CLOSE = [DAILY_LOSS_BLOCK, {**MAX_DRAWDOWN, "warn_percent": 3, "max_percent": 4}]


def test_an_account_a_block_halted_is_still_closed_when_its_close_limit_breaches_and_the_close_halts_it(
    guarded, terminal, db_session, recorder
):
    _, account_id, login, check, execute = guarded(drawdown_limits=BLOCK_THEN_CLOSE)
    ticket = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    terminal.sim_set_quote("EURUSD", 1.08250, 1.08260)  # 26 pips: 2.6 %, past the block only
    check()
    check()
    state = state_of(db_session, account_id)
    assert (state.halted_limit, state.halted_by_alert_id) == ("daily loss", None)
    assert alerts_of(db_session, account_id) == []
    # The loss runs on while the account is blocked: 46 pips, 4.6 %, past the close limit.
    terminal.sim_set_quote("EURUSD", 1.08050, 1.08060)
    check()
    assert alerts_of(db_session, account_id) == []  # one reading of two
    assert check().state == "halted"  # still halted by the block while the alert counts down
    (alert,) = alerts_of(db_session, account_id)
    assert (alert.alert_type, alert.limit_name, alert.status) == ("drawdown", "max drawdown", "pending")
    assert execute(alert.id).status == "executed"
    assert terminal.positions_get() == ()
    assert [(c.position_ticket, c.state) for c in db_session.scalars(sa.select(AlertClose))] == [
        (ticket, "closed")
    ]
    # The close's halt takes over from the block's: its limit, its resume, its alert.
    state = state_of(db_session, account_id)
    assert (state.halted_limit, state.halted_resume, state.halted_by_alert_id) == (
        "max drawdown",
        "manual",
        alert.id,
    )
    assert recorder.names().count("account.halted") == 2


def test_a_block_and_a_close_confirmed_by_the_same_reading_both_act(guarded, terminal, db_session):
    _, account_id, login, check, _ = guarded(drawdown_limits=BLOCK_THEN_CLOSE)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    terminal.sim_set_quote("EURUSD", 1.08050, 1.08060)  # 4.6 %: past both at once
    check()
    check()
    state = state_of(db_session, account_id)
    assert (state.halted_limit, state.halted_by_alert_id) == ("daily loss", None)  # orders refused now
    (alert,) = alerts_of(db_session, account_id)
    assert (alert.limit_name, alert.status) == ("max drawdown", "pending")


def test_an_account_halted_by_a_close_raises_no_other_alert_until_it_resumes(guarded, terminal, db_session):
    _, account_id, login, check, execute = guarded(drawdown_limits=BLOCK_THEN_CLOSE)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    terminal.sim_set_quote("EURUSD", 1.08050, 1.08060)
    check()
    check()
    (alert,) = alerts_of(db_session, account_id)
    execute(alert.id)
    # A position opened by hand on the halted account, deep in loss: the owner's own doing after the
    # close; the guards do not close it behind their back.
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    terminal.sim_set_quote("EURUSD", 1.07500, 1.07510)
    for _ in range(3):
        assert check().state == "halted"
    assert [a.id for a in alerts_of(db_session, account_id)] == [alert.id]


def test_the_margin_guard_closes_the_largest_loser_first_until_the_level_is_restored(
    guarded, terminal, db_session
):
    # 10,000 USD at 1:100: 5 lots of EURUSD hold about 5,400 of margin; at a loss, about 155 %.
    _, account_id, login, check, execute = guarded(
        drawdown_limits=[], min_margin_level_percent=170, confirmations=1
    )
    loser = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 3.0)
    terminal.sim_set_quote("EURUSD", 1.08400, 1.08410)  # the first position loses 10 pips
    other = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 2.0)
    terminal.sim_set_quote("EURUSD", 1.08150, 1.08160)
    outcome = check()
    assert outcome.state == "alert", state_of(db_session, account_id).margin_level
    (alert,) = alerts_of(db_session, account_id)
    assert alert.alert_type == "margin"
    execute(alert.id)
    closed = [c.position_ticket for c in db_session.scalars(sa.select(AlertClose)) if c.state == "closed"]
    # 3 of the 5 lots' margin freed: far above 170 % again, so the other position stays.
    assert closed == [loser]
    assert [p.ticket for p in terminal.positions_get()] == [other]


def spread_blows_out(guarded, terminal, action):
    """An account holding EURUSD, read once at a normal spread and once at 10 pips, over its market
    guard's 5 (two readings confirm). Returns the account, its check and the second reading's outcome."""
    market = {"max_spread_pips": 5, "max_gap_pips": 1000, "stale_quote_seconds": None, "action": action}
    _, account_id, login, check, _ = guarded(market=market, confirmations=2)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    check()
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08600)  # 10 pips
    return account_id, check, check()


def test_the_market_guard_blocks_a_symbol_whose_spread_blows_out_and_lifts_it_when_normal(
    guarded, terminal, db_session, recorder
):
    account_id, check, first = spread_blows_out(guarded, terminal, "block")
    assert first.unconfirmed  # a block follows: read again soon
    assert state_of(db_session, account_id).blocked_symbols == {}
    check()
    blocked = state_of(db_session, account_id).blocked_symbols
    assert blocked["EURUSD"]["kind"] == "spread" and "spread 10" in blocked["EURUSD"]["reason"]
    terminal.sim_set_quote("EURUSD", *PIN)
    check()
    assert state_of(db_session, account_id).blocked_symbols == {}
    assert [n for n in recorder.names() if n.startswith("market.")] == ["market.blocked", "market.unblocked"]


def test_the_market_guard_set_to_warn_tells_the_owner_once_while_the_problem_lasts_and_blocks_nothing(
    guarded, terminal, db_session, recorder
):
    account_id, check, first = spread_blows_out(guarded, terminal, "warn")
    assert "guard.warning" not in recorder.names() and state_of(db_session, account_id).state == "ok"
    # One reading of two, but only a warning would follow: the next reading confirms it, none is asked.
    assert not first.unconfirmed
    check()
    warnings = [data for _, event, data in recorder.events if event == "guard.warning"]
    assert warnings == [
        {
            "account_id": account_id,
            "guard": "market",
            "symbol": "EURUSD",
            "kind": "spread",
            "reason": "spread 10.00 pips > 5",
        }
    ]
    state = state_of(db_session, account_id)
    assert (state.state, state.blocked_symbols) == ("warning", {})
    warned_since = state.limits["market:EURUSD"]["since"]
    audited = db_session.scalars(
        sa.select(AuditLog.meta).where(AuditLog.action == "guard.warning", AuditLog.target_id == account_id)
    ).all()
    assert [(m["guard"], m["symbol"], m["kind"]) for m in audited] == [("market", "EURUSD", "spread")]
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08620)  # 12 pips: the same problem, still told once
    check()
    assert recorder.names().count("guard.warning") == 1
    entry = state_of(db_session, account_id).limits["market:EURUSD"]
    assert (entry["reason"], entry["since"]) == ("spread 12.00 pips > 5", warned_since)
    terminal.sim_set_quote("EURUSD", *PIN)
    check()
    state = state_of(db_session, account_id)
    assert state.state == "ok" and not any(key.startswith("market:") for key in state.limits)
    assert not [n for n in recorder.names() if n.startswith("market.")]  # nothing was blocked


def test_a_symbol_no_longer_held_leaves_no_market_streak_behind(guarded, terminal, db_session, recorder):
    market = {"max_spread_pips": 5, "max_gap_pips": 1000, "stale_quote_seconds": None, "action": "block"}
    _, account_id, login, check, _ = guarded(market=market, confirmations=3)
    ticket = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    check()
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08600)  # 10 pips
    assert check().unconfirmed  # one reading of three towards the block: read again soon
    assert state_of(db_session, account_id).limits["market:EURUSD"] == {"streak": 1}
    terminal.sim_close_manual(login, ticket)
    # Nothing held, nothing to watch: no streak left to read the account again for after every sync.
    outcome = check()
    assert not outcome.unconfirmed
    assert "market:EURUSD" not in state_of(db_session, account_id).limits


def test_the_watch_reads_at_once_an_account_its_quotes_push_over_a_limit(
    guarded, sync, terminal, db_session, market, recorder
):
    _, account_id, login, _, _ = guarded()
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    assert sync(account_id).status == "ok"
    readings.record_synced(db_session, [account_id], notify=recorder.notify, schedule=recorder.schedule)

    @contextmanager
    def open_terminal(account):
        with Gateway.from_module(
            SimTerminal(market.broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    assert watch.watch(db_session, open_terminal=open_terminal).to_read == []
    terminal.sim_set_quote("EURUSD", 1.08395, 1.08405)  # 10.5 pips: 1.05 %, the warning
    warned = watch.watch(db_session, open_terminal=open_terminal)
    assert (warned.to_read, warned.breached) == ([account_id], [])  # read; a warning presumes nothing
    terminal.sim_set_quote("EURUSD", 1.08290, 1.08300)  # 21 pips: 2.1 %, past the maximum
    breached = watch.watch(db_session, open_terminal=open_terminal)
    assert (breached.to_read, breached.breached) == ([account_id], [account_id])
    terminal.sim_set_quote("EURUSD", 1.08480, 1.08490)  # back to 0.2 %
    assert watch.watch(db_session, open_terminal=open_terminal).to_read == []
    # The watch saw the spread too: the market guard's view of EURUSD on this server is fresh.
    seen = db_session.get(MarketQuote, ("TradeGuard-Sim", "EURUSD"))
    assert (seen.bid, seen.spread_pips) == (Decimal("1.0848"), Decimal("1.00"))


def test_a_requoted_close_is_sent_again_at_a_fresh_price_and_closes_once(guarded, terminal, db_session):
    _, ticket, alert, execute = alerted_on_one_position(guarded, terminal, db_session)
    terminal.sim_set_requotes(1)
    assert execute(alert.id).status == "executed"
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    assert (close.state, close.attempts, close.retcode) == ("closed", 2, mt5c.TRADE_RETCODE_DONE)
    outs = [d for d in terminal.history_deals_get(position=ticket) if d.entry == mt5c.DEAL_ENTRY_OUT]
    assert len(outs) == 1
    requoted = db_session.scalars(
        sa.select(AuditLog).where(
            AuditLog.action == "position.close_requoted", AuditLog.target_id == alert.id
        )
    ).all()
    assert len(requoted) == 1 and requoted[0].meta["retcode"] == mt5c.TRADE_RETCODE_REQUOTE


def test_a_close_refused_on_every_price_fails_the_alert_and_still_halts(
    guarded, terminal, db_session, recorder
):
    account_id, _, alert, execute = alerted_on_one_position(guarded, terminal, db_session)
    terminal.sim_set_requotes(100)
    assert execute(alert.id, max_price_retries=2).status == "failed"
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    assert (close.state, close.attempts) == ("failed", 3)
    assert "price moved on each of 3 attempts" in close.error
    assert state_of(db_session, account_id).halted_at is not None
    assert "alert.failed" in recorder.names()


def test_a_limit_resuming_next_period_ends_its_halt_at_broker_midnight_and_starts_afresh(
    guarded, terminal, db_session, recorder
):
    limits = [
        {
            "name": "daily loss",
            "period": "day",
            "reference": "period_start_equity",
            "warn_percent": 1,
            "max_percent": 2,
            "action": "block",
            "resume": "next_period",
        }
    ]
    _, account_id, login, _, _ = guarded(drawdown_limits=limits)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)

    def check_at(at):
        return readings.check_account(
            db_session,
            account_id,
            open_terminal=open_sim(terminal),
            notify=recorder.notify,
            schedule=recorder.schedule,
            now=at,
        )

    today = utcnow()
    check_at(today)
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)
    check_at(today + timedelta(seconds=1))
    assert check_at(today + timedelta(seconds=2)).state == "halted"
    # Still the same day (the sim's server runs on UTC): a halt that resumes next period stays.
    assert check_at(today + timedelta(seconds=3)).state == "halted"
    # Just past midnight, at a time the terminal's (real-time) quotes cannot be taken to date: 7.5 min
    # off any quarter hour from them, so the offset learnt today (0) stands.
    midnight = (today + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    base = today + timedelta(seconds=450)
    tomorrow = base + timedelta(seconds=900 * -(-(midnight - base).total_seconds() // 900))
    assert midnight <= tomorrow < midnight + timedelta(minutes=15)
    resumed = check_at(tomorrow)
    state = state_of(db_session, account_id)
    assert resumed.state != "halted" and state.halted_at is None
    assert (state.broker_offset_seconds, state.limits["daily loss"]["period_start"]) == (
        0,
        midnight.isoformat(),
    )
    # The new day's reference is that reading's equity: the loss of yesterday is not counted again.
    assert Decimal(state.limits["daily loss"]["reference"]) == state.equity
    assert recorder.names()[-1] == "account.resumed"
    resumed_rows = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "account.resumed")).all()
    assert [row.meta["how"] for row in resumed_rows] == ["next_period"]


def test_a_market_close_action_closes_only_that_symbols_positions_when_quotes_go_stale(
    guarded, terminal, db_session
):

    market = {"max_spread_pips": None, "max_gap_pips": None, "stale_quote_seconds": 1, "action": "close"}
    _, account_id, login, check, execute = guarded(market=market, drawdown_limits=[])
    eurusd = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    gbpusd = terminal.sim_open_manual(login, "GBPUSD", mt5c.ORDER_TYPE_BUY, 0.1)
    terminal.sim_stop_quotes("EURUSD")
    time.sleep(1.5)  # EURUSD's last tick is now older than a second; GBPUSD is quoted afresh below

    terminal.sim_set_quote("GBPUSD", 1.27000, 1.27010)
    check()
    assert state_of(db_session, account_id).blocked_symbols == {}  # one reading: not yet confirmed
    terminal.sim_set_quote("GBPUSD", 1.27000, 1.27010)
    outcome = check()
    blocked = state_of(db_session, account_id).blocked_symbols
    assert list(blocked) == ["EURUSD"] and blocked["EURUSD"]["kind"] == "stale"
    (alert,) = alerts_of(db_session, account_id)
    assert (outcome.state, alert.alert_type, alert.symbol) == ("alert", "market", "EURUSD")
    # Its close: the grace period has ended (grace 0); EURUSD's position closes at its last price.
    assert execute(alert.id).status == "executed"
    closes = {c.position_ticket: c.state for c in db_session.scalars(sa.select(AlertClose))}
    assert closes == {eurusd: "closed"}
    assert [p.ticket for p in terminal.positions_get()] == [gbpusd]


def test_the_sweep_finds_alerts_whose_close_is_overdue(guarded, terminal, db_session):
    _, _, alert, _ = alerted_on_one_position(guarded, terminal, db_session)
    assert guards.overdue_alerts(db_session, alert.close_at, grace_seconds=5) == []
    assert guards.overdue_alerts(db_session, alert.close_at + timedelta(seconds=5), grace_seconds=5) == [
        alert.id
    ]
    alert.status = "executed"
    db_session.commit()
    assert guards.overdue_alerts(db_session, alert.close_at + timedelta(seconds=60), grace_seconds=5) == []


def test_quotes_too_old_to_tell_the_servers_clock_are_dated_with_the_offset_known_before(
    guarded, terminal, db_session, recorder
):
    """A check learns the server's offset from fresh quotes only; when none is fresh enough (here: the
    check's clock 7.5 min off the quotes'), the account's known offset dates the quotes it stores."""
    _, account_id, login, check, _ = guarded()
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    check()
    state = state_of(db_session, account_id)
    assert state.broker_offset_seconds == 0  # learnt from the sim's fresh quotes (it runs on UTC)
    state.broker_offset_seconds = 3600
    db_session.commit()
    readings.check_accounts(
        db_session,
        [account_id],
        open_terminal=open_sim(terminal),
        notify=recorder.notify,
        schedule=recorder.schedule,
        now=utcnow() + timedelta(minutes=7, seconds=30),
    )
    db_session.expire_all()
    quoted_at = db_session.get(MarketQuote, ("TradeGuard-Sim", "EURUSD")).quoted_at
    # The sim's quote time is UTC now; read as server time an hour ahead, it was quoted an hour ago.
    assert abs((utcnow() - timedelta(hours=1) - quoted_at).total_seconds()) < 60
    assert state_of(db_session, account_id).broker_offset_seconds == 3600  # not learnt: kept


def test_an_alert_is_not_carried_out_before_its_close_time_nor_when_it_is_gone(
    guarded, terminal, db_session, recorder
):
    account_id, ticket, alert, execute = alerted_on_one_position(
        guarded, terminal, db_session, grace_seconds=60
    )
    with pytest.raises(guards.AlertNotDue):
        execute(alert.id)
    (alert,) = alerts_of(db_session, account_id)
    assert alert.status == "pending" and [p.ticket for p in terminal.positions_get()] == [ticket]
    missing = guards.execute_alert(db_session, alert.id + 1000, open_terminal=open_sim(terminal))
    assert missing.status == "gone"


def test_a_run_that_finds_the_alert_decided_by_another_carries_out_that_decision(
    guarded, terminal, db_session, recorder, api
):
    """Two copies of the task: this one read the alert as pending, the other decided meanwhile (the
    alert closing, its closes committed). This one, locking the alert, finds it closing and takes the
    other's closes to their end instead of deciding again."""
    _, account_id, login, check, _ = guarded()
    tickets = {terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0) for _ in range(2)}
    breach_confirmed(check, terminal)
    (alert,) = alerts_of(db_session, account_id)
    account = db_session.get(Account, account_id)
    with open_sim(terminal)(account) as gateway:  # the other copy decides, and commits
        decided = guards._decide(db_session, alert, account, gateway, utcnow(), lambda *a, **k: None)
    assert set(decided) == tickets and alert.status == "closing"
    set_committed_value(alert, "status", "pending")  # this copy read it before that decision
    result = guards.execute_alert(
        db_session, alert.id, open_terminal=open_sim(terminal), notify=recorder.notify
    )
    assert (result.status, result.closed) == ("executed", 2)
    closes = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id)).all()
    assert len(closes) == 2 and {c.state for c in closes} == {"closed"}
    assert not (terminal.positions_get() or ())  # both closed, once each


def test_a_copy_of_the_close_that_read_its_rows_before_another_finished_sends_nothing(
    app, committed_db, terminal, recorder
):
    """A redelivered task racing the first, each in its own transaction (real commits): copy B has read
    the closes as pending when copy A closes them all; B's claim finds them no longer pending, so B sends
    no second order."""
    from shared.core.db import db
    from tests.conftest import Api

    api = Api(app.test_client())
    user = api.user()
    account = api.account(user, terminal_url="sim://", login=88001, verify=False)
    document = default_settings()
    document.update(
        grace_seconds=0,
        confirmations=1,
        drawdown_limits=[
            {
                "name": "dd",
                "period": "lifetime",
                "reference": "peak_equity",
                "max_percent": 2,
                "action": "close",
            }
        ],
    )
    committed_db.add(AccountRisk(account_id=account["id"], settings=validate_settings(document)))
    committed_db.commit()
    terminal.sim_set_quote("EURUSD", *PIN)
    assert terminal.initialize(login=88001, password="x", server="TradeGuard-Sim")  # the demo account
    tickets = [terminal.sim_open_manual(88001, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0) for _ in range(2)]

    def check():
        return readings.check_account(
            committed_db,
            account["id"],
            open_terminal=open_sim(terminal),
            notify=recorder.notify,
            schedule=None,
        )

    check()
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)
    assert check().state == "alert"
    alert_id = committed_db.scalar(sa.select(DrawdownAlert.id))
    other = db.session.session_factory()  # copy B: a session, and a transaction, of its own
    ran_a = []

    @contextmanager
    def open_for_b(account):
        with open_sim(terminal)(account) as gateway:
            real_quote = gateway.quote

            def quote(symbol):
                if not ran_a:  # B has its rows and the position in hand: now A runs to the end
                    ran_a.append(
                        guards.execute_alert(committed_db, alert_id, open_terminal=open_sim(terminal))
                    )
                return real_quote(symbol)

            gateway.quote = quote
            yield gateway

    try:
        b = guards.execute_alert(other, alert_id, open_terminal=open_for_b)
    finally:
        other.close()
    assert ran_a[0].status == "executed" and b.status == "executed"
    for ticket in tickets:
        outs = [d for d in terminal.history_deals_get(position=ticket) if d.entry == mt5c.DEAL_ENTRY_OUT]
        assert len(outs) == 1, ticket
    committed_db.expire_all()
    closes = committed_db.scalars(sa.select(AlertClose).order_by(AlertClose.id)).all()
    assert [(c.state, c.attempts) for c in closes] == [("closed", 1), ("closed", 1)]


def test_a_resume_resets_only_the_limit_that_halted_the_account(guarded, terminal, db_session, api):
    limits = [
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": 1,
            "max_percent": 2,
            "action": "close",
        },
        {"name": "weekly", "period": "week", "reference": "peak_equity", "max_percent": 50, "action": "warn"},
    ]
    world, account_id, login, check, execute = guarded(drawdown_limits=limits)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    breach_confirmed(check, terminal)
    (alert,) = alerts_of(db_session, account_id)
    execute(alert.id)
    peak_before = state_of(db_session, account_id).limits["weekly"]["peak"]
    response = api.http.post(f"/api/v1/accounts/{account_id}/resume", headers=world["user"]["headers"])
    assert response.status_code == 200, response.json
    state = state_of(db_session, account_id)
    assert Decimal(state.limits["max drawdown"]["peak"]) == state.equity < Decimal(peak_before)
    assert state.limits["weekly"]["peak"] == peak_before


def test_the_watch_skips_an_account_a_close_halted_and_sees_new_settings_at_once(
    guarded, sync, terminal, db_session, recorder
):
    """Two accounts on one server: the one a close halted is not watched, and the other's view follows its
    owner's new settings on the next tick (the per-process cache is keyed on what it was built from)."""
    _, watched_id, watched_login, _, _ = guarded()
    _, halted_id, halted_login, _, _ = guarded()
    for account_id, login in ((watched_id, watched_login), (halted_id, halted_login)):
        terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
        assert sync(account_id).status == "ok"
    readings.record_synced(db_session, [watched_id, halted_id], notify=recorder.notify, schedule=None)
    halted = db_session.get(GuardState, halted_id)
    halted.halted_at, halted.halted_by_alert_id, halted.updated_at = utcnow(), 3, utcnow()
    db_session.commit()

    terminal.sim_set_quote("EURUSD", 1.08395, 1.08405)  # 10.5 pips on 1 lot: the 1 % warning
    assert watch.watch(db_session, open_terminal=open_sim(terminal)).to_read == [watched_id]
    # Warned: the same price is no reason to read it again...
    state = db_session.get(GuardState, watched_id)
    state.limits = {**state.limits, "max drawdown": {**state.limits["max drawdown"], "warned": True}}
    state.updated_at = utcnow()
    db_session.commit()
    assert watch.watch(db_session, open_terminal=open_sim(terminal)).to_read == []
    # ...until its owner lowers the maximum below the drawdown it is at.
    risk = db_session.get(AccountRisk, watched_id)
    document = dict(risk.settings)
    document["drawdown_limits"] = [{**document["drawdown_limits"][0], "warn_percent": 0.5, "max_percent": 1}]
    risk.settings, risk.updated_at = validate_settings(document), utcnow()
    db_session.commit()
    assert watch.watch(db_session, open_terminal=open_sim(terminal)).to_read == [watched_id]
