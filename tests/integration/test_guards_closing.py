"""Alerts that fall due together, carried out together (`shared.guards.closing`), on Postgres against the
simulated terminal: every due alert of the crowd decided in one run, each of its positions closed once,
a cleared one cancelled; what the batch cannot finish (a requote, a terminal that fails, an order claimed
too long ago) is left to the one-alert path, which finishes it without a second order."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.guards import closing, readings
from shared.guards import engine as guards
from shared.guards.settings import default_settings, validate_settings
from shared.models import AccountRisk, AlertClose, AuditLog, DrawdownAlert, TradeState
from shared.mt5 import constants as mt5c
from shared.mt5.errors import TerminalUnavailable
from shared.mt5.sim.terminal import SimTerminal
from tests.integration import test_guards_engine as engine_tests
from tests.integration.test_guards_engine import alerts_of, open_sim, state_of

# The guards' fixtures, as test_guards_engine defines them: accounts with risk settings on the test
# broker, and a recorder of what the owners are told.
guarded = engine_tests.guarded
recorder = engine_tests.recorder


def crowd(guarded, terminal, db_session, size, lots=1.0):
    """`size` guarded accounts, each holding one EURUSD buy of `lots`, all breached by one price move
    and confirmed: their pending alerts, due at once (grace 0); [(account id, ticket, alert)]."""
    accounts = []
    for _ in range(size):
        _, account_id, login, check, _ = guarded()
        ticket = terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, lots)
        _logins[ticket] = [login]
        check()  # the reference, at the pinned price
        accounts.append((account_id, ticket, check))
    terminal.sim_set_quote("EURUSD", 1.08200, 1.08210)  # 30 pips: 3 % on each
    for _, _, check in accounts:
        check()
        check()
    return [(account_id, ticket, alerts_of(db_session, account_id)[0]) for account_id, ticket, _ in accounts]


def carry_out(db_session, terminal, recorder, alert_id, **kwargs):
    return closing.execute_due_alerts(
        db_session,
        alert_id,
        open_terminal=kwargs.pop("open_terminal", None) or open_sim(terminal),
        notify=recorder.notify,
        **kwargs,
    )


def closing_deals(terminal, ticket):
    """The closing deals of `ticket`, whichever test account holds it (a terminal shows the history of
    the account logged in to it)."""
    for login in _logins.get(ticket, ()):
        viewer = SimTerminal(terminal.broker)
        assert viewer.initialize(login=login, password="x", server="TradeGuard-Sim")
        return [d for d in viewer.history_deals_get(position=ticket) or () if d.entry == mt5c.DEAL_ENTRY_OUT]
    raise AssertionError(f"position {ticket} was not opened by crowd()")


_logins: dict[int, list[int]] = {}


def test_one_run_carries_out_every_alert_due_each_position_closed_once(
    guarded, terminal, db_session, recorder
):
    alerted = crowd(guarded, terminal, db_session, 3)
    assert all(alert.status == "pending" for _, _, alert in alerted)

    done = carry_out(db_session, terminal, recorder, alerted[1][2].id)

    assert done.first == guards.AlertResult(alerted[1][2].id, "executed", 1)
    assert done.left == []
    assert {alert_id: r.status for alert_id, r in done.results.items()} == {
        alert.id: "executed" for _, _, alert in alerted
    }
    for account_id, ticket, alert in alerted:
        (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
        db_session.refresh(close)
        assert (close.state, close.attempts, close.comment) == ("closed", 1, guards.close_comment(close.id))
        assert close.close_price == Decimal("1.082") and close.pnl == Decimal("-310")  # 31 pips, 1 lot
        (deal,) = closing_deals(terminal, ticket)
        assert deal.comment == close.comment
        (ended,) = alerts_of(db_session, account_id)
        assert (ended.status, ended.positions_closed_count, ended.total_loss) == ("executed", 1, Decimal(310))
        assert state_of(db_session, account_id).halted_at is not None
    # Every step audited, per alert: the intent (with the price it went at) before the close.
    for _, _, alert in alerted:
        actions = list(
            db_session.scalars(
                sa.select(AuditLog.action)
                .where(AuditLog.target_type == "alert", AuditLog.target_id == alert.id)
                .order_by(AuditLog.id)
            )
        )
        assert actions == [
            "alert.pending",
            "alert.closing",
            "position.close_sent",
            "position.closed_by_guard",
            "alert.executed",
        ]
    sent = db_session.scalars(sa.select(AuditLog).where(AuditLog.action == "position.close_sent")).all()
    assert {Decimal(entry.meta["price"]) for entry in sent} == {Decimal("1.082")}
    # Each owner told of the executed alert, then of the halt.
    names = recorder.names()
    for owner_events in (
        [e for o, e, _ in recorder.events if o == owner] for owner in {o for o, _, _ in recorder.events}
    ):
        assert owner_events[-2:] == ["alert.executed", "account.halted"]
    assert names.count("alert.executed") == 3

    # Run again (the other alerts' own tasks, a redelivery): nothing more is sent.
    for _, _, alert in alerted:
        again = carry_out(db_session, terminal, recorder, alert.id)
        assert again.first.status == "executed" and again.results == {}
    assert all(len(closing_deals(terminal, ticket)) == 1 for _, ticket, _ in alerted)


def test_an_alert_that_no_longer_holds_is_cancelled_and_the_others_still_close(
    guarded, terminal, db_session, recorder
):
    alerted = crowd(guarded, terminal, db_session, 2)
    (kept_id, kept_ticket, kept), (cleared_id, cleared_ticket, cleared) = alerted
    # During the grace period the owner of the second removed the limit it breached.
    risk = db_session.get(AccountRisk, cleared_id)
    risk.settings = validate_settings({**default_settings(), "drawdown_limits": []})
    db_session.commit()

    done = carry_out(db_session, terminal, recorder, kept.id)

    assert done.results[cleared.id].status == "cancelled"
    assert done.results[kept.id].status == "executed"
    assert len(closing_deals(terminal, kept_ticket)) == 1
    assert closing_deals(terminal, cleared_ticket) == []
    assert db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == cleared.id)).all() == []
    assert state_of(db_session, cleared_id).halted_at is None
    assert state_of(db_session, kept_id).halted_at is not None
    assert ("alert.cancelled" in recorder.names()) and recorder.names().count("account.halted") == 1


def test_an_alert_not_yet_due_is_refused_and_others_not_due_are_not_taken(
    guarded, terminal, db_session, recorder
):
    alerted = crowd(guarded, terminal, db_session, 2)
    later = utcnow() + timedelta(seconds=30)
    for _, _, alert in alerted:
        db_session.execute(
            sa.update(DrawdownAlert).where(DrawdownAlert.id == alert.id).values(close_at=later)
        )
    db_session.commit()
    with pytest.raises(guards.AlertNotDue):
        carry_out(db_session, terminal, recorder, alerted[0][2].id)
    db_session.expire_all()
    assert [db_session.get(DrawdownAlert, alert.id).status for _, _, alert in alerted] == ["pending"] * 2
    assert all(closing_deals(terminal, ticket) == [] for _, ticket, _ in alerted)


def test_a_requoted_close_is_left_to_the_one_alert_path_which_sends_it_once_more(
    guarded, terminal, db_session, recorder
):
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_set_requotes(1)

    done = carry_out(db_session, terminal, recorder, alert.id)

    assert done.left == [alert.id] and alert.id not in done.results
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    assert (close.state, close.attempts, close.retcode) == ("pending", 1, mt5c.TRADE_RETCODE_REQUOTE)
    assert closing_deals(terminal, ticket) == []

    result = guards.execute_alert(
        db_session, alert.id, open_terminal=open_sim(terminal), notify=recorder.notify
    )
    assert (result.status, result.closed) == ("executed", 1)
    db_session.refresh(close)
    assert (close.state, close.attempts) == ("closed", 2)
    assert len(closing_deals(terminal, ticket)) == 1


def test_an_order_whose_outcome_is_unknown_stays_sent_and_is_found_not_sent_again(
    guarded, terminal, db_session, recorder
):
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    terminal.sim_lose_next_reply()  # the order is made; its reply never comes

    done = carry_out(db_session, terminal, recorder, alert.id)

    assert done.left == [alert.id]
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    assert close.state == "sent"
    assert len(closing_deals(terminal, ticket)) == 1  # made, though nobody was told
    result = guards.execute_alert(
        db_session, alert.id, open_terminal=open_sim(terminal), notify=recorder.notify
    )
    assert result.status == "executed"
    db_session.refresh(close)
    assert (close.state, close.attempts) == ("closed", 1)
    assert len(closing_deals(terminal, ticket)) == 1


def test_an_account_whose_terminal_fails_is_read_again_by_its_task_and_the_others_close(
    guarded, terminal, db_session, recorder
):
    alerted = crowd(guarded, terminal, db_session, 2)
    (failing_id, failing_ticket, failing), (_, ok_ticket, _) = alerted
    inner = open_sim(terminal)
    opened = []

    def open_terminal(account):
        opened.append(account.id)
        if account.id == failing_id:
            raise TerminalUnavailable("terminal down")
        return inner(account)

    done = carry_out(db_session, terminal, recorder, failing.id, open_terminal=open_terminal)

    assert "terminal down" in done.unread  # the task tries it again shortly
    # Once: its alert stays due, but the task's later runs leave it to that retry.
    assert opened.count(failing_id) == 1
    assert done.first.status == "pending" and failing.id not in done.results

    db_session.refresh(failing)
    assert failing.status == "pending" and closing_deals(terminal, failing_ticket) == []
    assert len(closing_deals(terminal, ok_ticket)) == 1
    done = carry_out(db_session, terminal, recorder, failing.id)
    assert done.first.status == "executed" and len(closing_deals(terminal, failing_ticket)) == 1


def test_orders_claimed_longer_ago_than_the_send_budget_are_not_sent_by_the_batch(
    guarded, terminal, db_session, recorder
):
    """A batch that stalls between its claim and its sends (a slow terminal before them) must not start
    a send that could outlast the in-flight window (a look after it could take the close for lost and
    send it again): past `send_after_claim_seconds` it leaves the close `sent`, and the one-alert path
    sends it once that window has passed."""
    ((_, ticket, alert),) = crowd(guarded, terminal, db_session, 1)
    settings = guards.GuardSettings(in_flight_seconds=10.0, send_after_claim_seconds=3.0)
    stalled = lambda: utcnow() + timedelta(seconds=3.5)  # noqa: E731 - 3.5 s after the claim

    done = carry_out(db_session, terminal, recorder, alert.id, settings=settings, now=stalled)

    assert done.left == [alert.id]
    assert closing_deals(terminal, ticket) == []
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    assert close.state == "sent"
    # Within the window, the one-alert path waits; after it, it sends (once).
    with pytest.raises(guards.CloseInFlight):
        guards.execute_alert(db_session, alert.id, open_terminal=open_sim(terminal), settings=settings)
    result = guards.execute_alert(
        db_session,
        alert.id,
        open_terminal=open_sim(terminal),
        settings=settings,
        now=lambda: utcnow() + timedelta(seconds=11),
    )
    assert result.status == "executed" and len(closing_deals(terminal, ticket)) == 1


def test_at_most_limit_alerts_a_run_and_the_task_for_its_own_alert_first(
    guarded, terminal, db_session, recorder
):
    alerted = crowd(guarded, terminal, db_session, 3)
    last = alerted[-1][2]

    done = carry_out(db_session, terminal, recorder, last.id, limit=2, max_runs=1)

    assert set(done.results) == {last.id, alerted[0][2].id}  # its own, then the earliest due
    db_session.refresh(alerted[1][2])
    assert alerted[1][2].status == "pending"
    done = carry_out(
        db_session, terminal, recorder, last.id, limit=2, max_runs=1
    )  # its own is done: the rest still taken
    assert set(done.results) == {alerted[1][2].id}


def test_a_task_takes_what_its_first_run_left_in_a_second_run(guarded, terminal, db_session, recorder):
    alerted = crowd(guarded, terminal, db_session, 3)

    done = carry_out(db_session, terminal, recorder, alerted[-1][2].id, limit=2)

    assert {alert_id: r.status for alert_id, r in done.results.items()} == {
        alert.id: "executed" for _, _, alert in alerted
    }
    assert all(len(closing_deals(terminal, ticket)) == 1 for _, ticket, _ in alerted)


def steps_of_a_run_with_one_alert_due_late(guarded, terminal, db_session, recorder, **kwargs):
    """A crowd of 3 whose last alert falls due only once the run has sent its first close order (the
    clock moves on then): each order sent and each owner told, in order, as [(step, account id)]."""
    alerted = crowd(guarded, terminal, db_session, 3)
    late_id = alerted[2][2].id
    db_session.execute(
        sa.update(DrawdownAlert)
        .where(DrawdownAlert.id == late_id)
        .values(close_at=utcnow() + timedelta(seconds=1))
    )
    db_session.commit()
    skew = [timedelta(0)]
    steps = []
    inner = open_sim(terminal)

    @contextmanager
    def open_terminal(account):
        with inner(account) as gateway:
            send_order = gateway.send_order

            def sending(request):
                result = send_order(request)
                steps.append(("sent", account.id))
                skew[0] = timedelta(seconds=1.5)  # inside the send budget (3 s) of the run's claims
                return result

            gateway.send_order = sending
            yield gateway

    def notify(session, owner_id, event, data):
        steps.append((event, data.get("account_id")))
        recorder.notify(session, owner_id, event, data)

    done = closing.execute_due_alerts(
        db_session,
        alerted[0][2].id,
        open_terminal=open_terminal,
        notify=notify,
        now=lambda: utcnow() + skew[0],
        **kwargs,
    )
    return alerted, done, steps


def test_alerts_due_while_a_run_sends_have_their_orders_sent_before_the_run_is_recorded(
    guarded, terminal, db_session, recorder
):
    alerted, done, steps = steps_of_a_run_with_one_alert_due_late(guarded, terminal, db_session, recorder)

    assert {alert_id: r.status for alert_id, r in done.results.items()} == {
        alert.id: "executed" for _, _, alert in alerted
    }
    account_ids = [account_id for account_id, _, _ in alerted]
    sends = [account_id for step, account_id in steps if step == "sent"]
    executed = [account_id for step, account_id in steps if step == "alert.executed"]
    assert sends == account_ids and sorted(executed) == sorted(account_ids)
    # The late alert's order went out before any close of the first run was recorded.
    assert steps.index(("sent", account_ids[2])) < min(
        steps.index(("alert.executed", account_id)) for account_id in account_ids
    )
    assert all(len(closing_deals(terminal, ticket)) == 1 for _, ticket, _ in alerted)


def test_a_task_sends_at_most_max_runs_before_recording(guarded, terminal, db_session, recorder):
    alerted, done, steps = steps_of_a_run_with_one_alert_due_late(
        guarded, terminal, db_session, recorder, max_runs=1
    )

    assert set(done.results) == {alerted[0][2].id, alerted[1][2].id}
    late_id, late_ticket = alerted[2][2].id, alerted[2][1]
    assert db_session.get(DrawdownAlert, late_id, populate_existing=True).status == "pending"
    assert closing_deals(terminal, late_ticket) == []
    assert [step for step, _ in steps].count("sent") == 2


def alerted_trade(run, approved, db_session, terminal, recorder):
    """A filled 1-lot EURUSD buy of TradeGuard's on an account with the engine tests' 2 % limit, no grace
    and 2 confirmations, breached and confirmed: (the trade, its account's pending alert)."""
    terminal.sim_set_quote("EURUSD", *engine_tests.PIN)
    trade = run(approved({"volume": "1.00"}))
    assert trade.state == TradeState.FILLED
    document = {
        **default_settings(),
        "grace_seconds": 0,
        "confirmations": 2,
        "drawdown_limits": [engine_tests.MAX_DRAWDOWN],
    }
    db_session.add(AccountRisk(account_id=trade.account_id, settings=validate_settings(document)))
    db_session.commit()

    def check():
        return readings.check_account(
            db_session,
            trade.account_id,
            open_terminal=open_sim(terminal),
            notify=recorder.notify,
            schedule=recorder.schedule,
        )

    engine_tests.breach_confirmed(check, terminal)
    (alert,) = alerts_of(db_session, trade.account_id)
    return trade, alert


def test_a_tradeguard_trade_closed_by_the_batch_is_closed_once_with_the_closes_price_and_pnl(
    run, approved, db_session, terminal, recorder
):
    trade, alert = alerted_trade(run, approved, db_session, terminal, recorder)

    done = carry_out(db_session, terminal, recorder, alert.id)

    assert done.first.status == "executed"
    (close,) = db_session.scalars(sa.select(AlertClose).where(AlertClose.alert_id == alert.id))
    db_session.refresh(close)
    db_session.refresh(trade)
    assert close.trade_id == trade.id and close.state == "closed"
    assert (trade.state, trade.close_reason, trade.close_price) == (
        TradeState.CLOSED,
        "guard",
        Decimal("1.082"),
    )
    assert trade.pnl == close.pnl and trade.pnl < 0 and trade.closed_at == close.closed_at
    closed_events = [data for _, event, data in recorder.events if event == "trade.closed"]
    assert [(e["trade_id"], e["reason"], Decimal(e["close_price"])) for e in closed_events] == [
        (trade.id, "guard", Decimal("1.082"))
    ]
    audited = db_session.scalars(
        sa.select(AuditLog).where(AuditLog.action == "trade.closed_by_guard", AuditLog.target_id == trade.id)
    ).all()
    assert len(audited) == 1 and audited[0].meta["alert_id"] == alert.id
