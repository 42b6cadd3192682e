"""Pre-trade risk (PR-024) in the execution path, on Postgres against the simulated terminal: each order
limit, a halted account and a symbol the market guard blocks refuse the order before any order_send —
the trade `rejected` with a reason naming the limit and the figures, nothing sent, 0 attempts — and with
the defaults an order fills as before, at no extra terminal call and three small reads of the guards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.db import db, utcnow
from shared.guards.settings import default_settings, validate_settings
from shared.models import Account, AccountRisk, AuditLog, DrawdownAlert, GuardState, Signal, Trade, TradeState
from shared.mt5 import constants as mt5c
from shared.mt5.sim.terminal import SimTerminal

BUY = {"instrument": "EURUSD", "side": "buy", "volume": "0.10", "ttl_seconds": 600}
LOGIN = 1001  # the account `approved` makes, and the `terminal` fixture's


def orders_sent(terminal, trade) -> int:
    orders = terminal.history_orders_get(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return sum(1 for o in orders or () if o.comment == trade.comment)


def account_of(db_session, signal_id: int) -> int:
    return db_session.get(Signal, signal_id).account_id


def set_orders(db_session, account_id: int, **orders) -> None:
    document = default_settings()
    document["orders"].update(orders)
    db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
    db_session.flush()


def assert_refused(db_session, terminal, trade, reason: str) -> None:
    assert trade.state == TradeState.REJECTED, trade.failure_reason
    assert trade.failure_reason == reason
    assert trade.attempts == 0 and trade.sent_at is None
    assert orders_sent(terminal, trade) == 0
    (audit,) = db_session.scalars(
        sa.select(AuditLog).where(
            AuditLog.action == "trade.rejected_pre_trade", AuditLog.target_id == trade.id
        )
    ).all()
    assert audit.meta["problems"] == [reason]


def signal(api, world, n: int) -> int:
    """Signal `n` of the world's client (each body its own: a signature is accepted once)."""
    return api.send_signal(world["client"], {**BUY, "comment": f"signal {n}"}).json["id"]


class CountedTerminal(SimTerminal):
    """A SimTerminal that notes the reads the order limits may make."""

    calls: list[str] = []

    def positions_get(self, *args, **kwargs):
        CountedTerminal.calls.append("positions_get")
        return super().positions_get(*args, **kwargs)

    def account_info(self):
        CountedTerminal.calls.append("account_info")
        return super().account_info()


@pytest.fixture
def statements(db_session):
    """The SQL statements run from now on, as sent to Postgres."""
    seen: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    engine = db.engines[None].engine
    sa.event.listen(engine, "before_cursor_execute", note)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", note)


def test_with_the_defaults_an_order_fills_with_no_extra_terminal_call_and_three_small_reads(
    run, approved, terminal, db_session, statements
):
    signal_id = approved()
    CountedTerminal.calls = []
    statements.clear()
    trade = run(signal_id, terminal_type=CountedTerminal)
    assert trade.state == TradeState.FILLED and trade.attempts == 1
    assert CountedTerminal.calls == []  # neither the positions nor the account were read
    guard_reads = [s for s in statements if "account_risk" in s or "guard_states" in s]
    # The first look; then, in the transaction that marks the trade sent, the guard state locked and
    # read again (after the lock: see `guard_now`).
    assert len(guard_reads) == 3, guard_reads
    assert ["FOR SHARE" in read for read in guard_reads] == [False, True, False]
    assert not [s for s in statements if "count(" in s.lower()]


def test_lots_per_order(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), max_lots_per_order=0.05)
    assert_refused(db_session, terminal, run(signal_id), "volume 0.1 lots > 0.05 (max_lots_per_order)")


def test_lots_per_order_at_the_limit_fill(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), max_lots_per_order=0.1)
    assert run(signal_id).state == TradeState.FILLED


def test_open_positions_count_those_opened_outside_tradeguard(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), max_open_positions=1)
    terminal.sim_open_manual(LOGIN, "GBPUSD", mt5c.ORDER_TYPE_BUY, 0.2)  # by hand, in the terminal
    CountedTerminal.calls = []
    trade = run(signal_id, terminal_type=CountedTerminal)
    assert_refused(db_session, terminal, trade, "2 open positions > 1 (max_open_positions)")
    assert CountedTerminal.calls == ["positions_get"]  # the positions only: no equity is needed


def test_open_positions_below_the_limit_fill(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), max_open_positions=2)
    terminal.sim_open_manual(LOGIN, "GBPUSD", mt5c.ORDER_TYPE_BUY, 0.2)
    assert run(signal_id).state == TradeState.FILLED


def test_total_lots_count_outside_positions(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), max_total_lots=0.5)
    terminal.sim_open_manual(LOGIN, "XAUUSD", mt5c.ORDER_TYPE_SELL, 0.45)
    assert_refused(db_session, terminal, run(signal_id), "total 0.55 lots > 0.5 (max_total_lots)")


def test_orders_per_minute_count_the_accounts_orders_sent_in_the_last_minute(api, run, terminal, db_session):
    world = api.setup()
    first, second, third = (signal(api, world, n) for n in range(3))
    for signal_id in (first, second, third):
        api.decide(world["user"], signal_id)
    set_orders(db_session, world["account"]["id"], max_orders_per_minute=2)
    assert run(first).state == TradeState.FILLED
    assert run(second).state == TradeState.FILLED
    assert_refused(
        db_session, terminal, run(third), "3 orders in the last minute > 2 (max_orders_per_minute)"
    )


def test_orders_sent_over_a_minute_ago_do_not_count(api, run, terminal, db_session):
    world = api.setup()
    first, second = (signal(api, world, n) for n in range(2))
    for signal_id in (first, second):
        api.decide(world["user"], signal_id)
    set_orders(db_session, world["account"]["id"], max_orders_per_minute=1)
    assert run(first).state == TradeState.FILLED
    db_session.execute(
        sa.update(Trade).where(Trade.signal_id == first).values(sent_at=utcnow() - timedelta(seconds=61))
    )
    assert run(second).state == TradeState.FILLED


def test_risk_per_trade_from_the_distance_to_the_sl(run, approved, terminal, db_session):
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    # Bought at 1.08510 with the SL at 1.07510: 1000 points of 1 USD a lot on 0.1 lots, 100 USD of the
    # simulated account's 10 000 (1 %).
    signal_id = approved({"sl": "1.07510"})
    set_orders(db_session, account_of(db_session, signal_id), max_risk_percent_per_trade=0.5)
    CountedTerminal.calls = []
    trade = run(signal_id, terminal_type=CountedTerminal)
    assert_refused(
        db_session,
        terminal,
        trade,
        "risk 1% of equity > 0.5% (max_risk_percent_per_trade): 100 at the SL, equity 10000",
    )
    assert CountedTerminal.calls == ["account_info"]


def test_risk_per_trade_at_the_limit_fills(run, approved, terminal, db_session):
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    signal_id = approved({"sl": "1.07510"})
    set_orders(db_session, account_of(db_session, signal_id), max_risk_percent_per_trade=1)
    trade = run(signal_id)
    assert trade.state == TradeState.FILLED and trade.filled_price == Decimal("1.08510")


def test_no_sl_is_refused_while_the_risk_limit_is_set(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), max_risk_percent_per_trade=2)
    CountedTerminal.calls = []
    trade = run(signal_id, terminal_type=CountedTerminal)
    assert_refused(db_session, terminal, trade, "no SL: max_risk_percent_per_trade needs one")
    assert CountedTerminal.calls == []  # no equity needed to refuse it


def test_a_symbol_not_in_the_list(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), symbols=["GBPUSD", "XAUUSD"])
    assert_refused(db_session, terminal, run(signal_id), "EURUSD is not in the allowed symbols (symbols)")


def test_a_symbol_in_the_list_fills(run, approved, terminal, db_session):
    signal_id = approved()
    set_orders(db_session, account_of(db_session, signal_id), symbols=["GBPUSD", "EURUSD"])
    assert run(signal_id).state == TradeState.FILLED


def test_a_halted_account_refuses_every_order(run, approved, terminal, db_session):
    signal_id = approved()
    db_session.add(
        GuardState(
            account_id=account_of(db_session, signal_id),
            state="halted",
            halted_at=utcnow(),
            halted_reason="max drawdown 10.4% > 10%",
        )
    )
    db_session.flush()
    assert_refused(
        db_session, terminal, run(signal_id), "account halted: max drawdown 10.4% > 10%; resume it first"
    )


def test_an_account_whose_positions_an_alert_is_closing_takes_no_new_order(api, run, terminal, db_session):
    world = api.setup()
    first, second = signal(api, world, 1), signal(api, world, 2)
    for signal_id in (first, second):
        api.decide(world["user"], signal_id)
    account_id = world["account"]["id"]
    db_session.add(GuardState(account_id=account_id, state="alert"))
    alert = DrawdownAlert(
        account_id=account_id,
        owner_id=db_session.get(Account, account_id).owner_id,
        alert_type="drawdown",
        reason="max drawdown: drawdown 10.4%",
        currency="USD",
        equity=Decimal(8960),
        close_at=datetime(2026, 12, 1, 10, 0, 10, tzinfo=UTC),
    )
    db_session.add(alert)
    db_session.flush()
    trade = run(first)
    assert trade.failure_reason.startswith(
        f"a guard is closing the account's positions: alert {alert.id} (max drawdown: drawdown 10.4%) "
        "closes at 2026-12-01 10:00:10"
    ), trade.failure_reason
    assert_refused(db_session, terminal, trade, trade.failure_reason)
    # Once the alert has ended (cancelled: the breach cleared), orders go out again.
    alert.status = "cancelled"
    db_session.flush()
    assert run(second).state == TradeState.FILLED


class HaltedMeanwhile(SimTerminal):
    """A terminal during whose quote the guards halt the account, as another worker's commit would (on
    the test's connection: the call runs on the gateway's thread)."""

    connection = None

    def symbol_info_tick(self, symbol):
        connection = HaltedMeanwhile.connection
        account_id = connection.scalar(sa.select(Account.id).where(Account.login == LOGIN))
        connection.execute(
            sa.insert(GuardState.__table__).values(
                account_id=account_id,
                state="halted",
                limits={},
                blocked_symbols={},
                margin_streak=0,
                broker_offset_seconds=0,
                halted_at=utcnow(),
                halted_reason="daily loss 5.1% > 5%",
                updated_at=utcnow(),
            )
        )
        return super().symbol_info_tick(symbol)


def test_a_halt_the_guards_commit_after_the_first_look_stops_the_order_before_it_is_sent(
    run, approved, terminal, db_session
):
    signal_id = approved()
    HaltedMeanwhile.connection = db_session.connection()
    trade = run(signal_id, terminal_type=HaltedMeanwhile)
    assert_refused(db_session, terminal, trade, "account halted: daily loss 5.1% > 5%; resume it first")


def test_a_symbol_the_market_guard_blocks_is_refused_and_others_are_not(api, run, terminal, db_session):
    world = api.setup()
    eurusd = api.send_signal(world["client"], BUY).json["id"]
    gbpusd = api.send_signal(world["client"], {**BUY, "instrument": "GBPUSD"}).json["id"]
    for signal_id in (eurusd, gbpusd):
        api.decide(world["user"], signal_id)
    since = utcnow().isoformat()
    db_session.add(
        GuardState(
            account_id=world["account"]["id"],
            state="warning",
            blocked_symbols={"EURUSD": {"reason": "spread 31 pips > 20", "since": since, "kind": "spread"}},
        )
    )
    db_session.flush()
    assert_refused(
        db_session, terminal, run(eurusd), "EURUSD blocked by the market guard: spread 31 pips > 20"
    )
    assert run(gbpusd).state == TradeState.FILLED


def test_a_guard_state_that_is_not_halted_lets_orders_through(run, approved, terminal, db_session):
    signal_id = approved()
    db_session.add(GuardState(account_id=account_of(db_session, signal_id), state="warning"))
    db_session.flush()
    assert run(signal_id).state == TradeState.FILLED


def test_an_order_counted_against_account_wide_limits_waits_for_the_accounts_other_order(
    run, approved, terminal, db_session, engine, tmp_path
):
    """Two workers each counting 0 open positions under a limit of 1 would both send: while a limit
    counts the account's positions or orders, its orders go out one at a time. Held by another worker,
    the account's order lock makes this one retry later, nothing sent."""
    from shared.core.locks import exclusive
    from shared.execution.errors import TerminalRetryLater

    signal_id = approved()
    account_id = account_of(db_session, signal_id)
    set_orders(db_session, account_id, max_open_positions=1)
    with exclusive(engine, f"account-orders:{account_id}", lock_dir=tmp_path):
        with pytest.raises(TerminalRetryLater):
            run(signal_id)
        trade = db_session.scalar(sa.select(Trade).where(Trade.signal_id == signal_id))
        assert (trade.state, trade.attempts, orders_sent(terminal, trade)) == (TradeState.PENDING, 0, 0)
    assert run(signal_id).state == TradeState.FILLED


def test_without_account_wide_limits_orders_of_one_account_need_no_account_lock(
    run, approved, terminal, db_session, engine, tmp_path
):
    from shared.core.locks import exclusive

    signal_id = approved()
    account_id = account_of(db_session, signal_id)
    set_orders(db_session, account_id, max_lots_per_order=5)  # about the order alone
    with exclusive(engine, f"account-orders:{account_id}", lock_dir=tmp_path):
        assert run(signal_id).state == TradeState.FILLED


def test_the_guards_read_again_under_lock_see_an_alert_committed_while_the_lock_was_awaited(
    app, committed_db
):
    """Two connections, real commits: the guards hold the account's guard state (FOR UPDATE) and raise an
    alert; the execution path's re-read waits for the lock, and once the guards commit it sees the alert
    (read in the statement that took the lock, it would not: that statement's snapshot predates it)."""
    import threading

    from shared.guards.risk_settings import guard_now, order_guard_of
    from tests.conftest import Api

    world = Api(app.test_client()).setup()
    account_id = world["account"]["id"]
    committed_db.add(GuardState(account_id=account_id, state="ok"))
    committed_db.commit()
    guard = order_guard_of(committed_db, account_id)
    committed_db.rollback()

    seen = {}
    with db.engine.connect() as guards_connection:
        guards_connection.execute(
            sa.text("SELECT account_id FROM guard_states WHERE account_id = :id FOR UPDATE"),
            {"id": account_id},
        )
        alert_id = guards_connection.execute(
            sa.insert(DrawdownAlert.__table__)
            .values(
                account_id=account_id,
                owner_id=world["user"]["id"],
                alert_type="drawdown",
                reason="max drawdown: drawdown 2.4%",
                currency="USD",
                equity=Decimal(9760),
                positions_closed_count=0,
                total_loss=Decimal(0),
                status="pending",
                close_at=utcnow(),
                created_at=utcnow(),
                details={},
            )
            .returning(DrawdownAlert.__table__.c.id)
        ).scalar_one()

        def execution_path():
            with app.app_context():
                seen["guard"] = guard_now(db.session, account_id, guard)
                db.session.rollback()
                db.session.remove()

        waiting = threading.Thread(target=execution_path)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # held by the guards' lock
        guards_connection.commit()
    waiting.join(10)
    assert seen["guard"].live_alert is not None
    assert seen["guard"].live_alert.startswith(f"alert {alert_id} (max drawdown: drawdown 2.4%)")
