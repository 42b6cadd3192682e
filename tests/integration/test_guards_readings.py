"""record_synced on Postgres: a quiet reading (nothing but figures change) is written together with the
batch's others and leaves exactly the guard state the engine would; anything else goes through the
engine as before."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.guards import engine as guards
from shared.guards import readings
from shared.guards.settings import default_settings, validate_settings
from shared.models import Account, AccountRisk, GuardState, MarketQuote, PositionSnapshot
from shared.mt5 import constants as mt5c

PIN = (1.08500, 1.08510)
FIELDS = ("state", "limits", "margin_streak", "equity", "balance", "margin_level", "currency", "read_at")


class Recorder:
    def __init__(self):
        self.events = []

    def notify(self, session, owner_id, event, data):
        self.events.append(event)

    def schedule(self, session, task, args, at):
        self.events.append(task)


@pytest.fixture
def account(make_account):
    return make_account()


@pytest.fixture
def make_account(api, db_session, terminal):
    return lambda: _guarded_account(api, db_session, terminal)


def _guarded_account(api, db_session, terminal):
    world = api.setup()
    account_id, login = world["account"]["id"], world["account"]["login"]
    document = default_settings()
    document["drawdown_limits"].append(
        {
            "name": "tight drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": 1,
            "max_percent": 2,
            "action": "close",
            "resume": "manual",
        }
    )
    db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
    db_session.commit()
    terminal.sim_set_quote("EURUSD", *PIN)
    terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
    return account_id


def figures(db_session, account_id):
    db_session.expire_all()
    state = db_session.get(GuardState, account_id)
    return {name: getattr(state, name) for name in FIELDS}


def through_the_engine(db_session, account_id):
    """What engine.record_reading makes of the account's latest snapshot (rolled back afterwards)."""
    snapshot = db_session.scalars(
        sa.select(PositionSnapshot)
        .where(PositionSnapshot.account_id == account_id)
        .order_by(PositionSnapshot.id.desc())
    ).first()
    reading = guards.rules.Reading(
        snapshot.synced_at, snapshot.equity, snapshot.balance, snapshot.margin_level
    )
    guards.record_reading(
        db_session, account_id, reading, currency=snapshot.currency, held_symbols=["EURUSD"]
    )
    db_session.flush()
    expected = figures(db_session, account_id)
    db_session.rollback()
    return expected


def another_reading_after_the_look(monkeypatch, db_session, account_id):
    """Between the batch's look at the account's guard state and its write, another reading changes it."""
    decide = readings._quiet_limits

    def then_another_reading(row, *args, **kwargs):
        decided = decide(row, *args, **kwargs)
        if row.account_id == account_id:
            db_session.execute(
                sa.text(
                    "UPDATE guard_states SET updated_at = updated_at + interval '1 ms' WHERE account_id = :a"
                ),
                {"a": account_id},
            )
        return decided

    monkeypatch.setattr(readings, "_quiet_limits", then_another_reading)


def engine_calls(monkeypatch):
    """The accounts whose reading goes through engine.record_reading, in order."""
    calls = []
    record = guards.record_reading

    def counted(session, account_id, *args, **kwargs):
        calls.append(account_id)
        return record(session, account_id, *args, **kwargs)

    monkeypatch.setattr(guards, "record_reading", counted)
    return calls


def test_a_quiet_sync_reading_leaves_the_state_the_engine_would_without_the_engine(
    account, sync, terminal, db_session, monkeypatch
):
    recorder = Recorder()
    assert sync(account).status == "ok"
    first = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert [o.status for o in first] == ["ok"]  # the first reading: through the engine, the state made

    terminal.sim_set_quote("EURUSD", 1.08600, 1.08610)  # up 10 pips: a new peak, still quiet
    assert sync(account).status == "ok"
    expected = through_the_engine(db_session, account)

    def not_called(*args, **kwargs):
        raise AssertionError("a quiet reading went through the engine")

    monkeypatch.setattr(guards, "record_reading", not_called)
    outcomes = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert [(o.status, o.state, o.unconfirmed) for o in outcomes] == [("ok", "ok", False)]
    assert figures(db_session, account) == expected
    assert expected["limits"]["tight drawdown"]["peak"] == str(expected["equity"])
    assert recorder.events == []


def test_a_breaching_sync_reading_goes_through_the_engine(account, sync, terminal, db_session):
    recorder = Recorder()
    assert sync(account).status == "ok"
    readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)

    terminal.sim_set_quote("EURUSD", 1.08250, 1.08260)  # 25 pips on 1 lot: 2.5 %
    assert sync(account).status == "ok"
    [outcome] = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert outcome.unconfirmed  # one breached reading of two: the worker reads it again soon
    assert figures(db_session, account)["limits"]["tight drawdown"]["streak"] == 1
    assert recorder.events == ["guard.warning"]


def test_a_reading_that_lost_the_race_goes_through_the_engine(
    account, sync, terminal, db_session, monkeypatch
):
    """Another reading changed the state between the batch's look and its write: the batch's UPDATE
    matches nothing, and the engine applies the reading under its lock."""
    recorder = Recorder()
    assert sync(account).status == "ok"
    readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    terminal.sim_set_quote("EURUSD", 1.08600, 1.08610)
    assert sync(account).status == "ok"

    another_reading_after_the_look(monkeypatch, db_session, account)
    calls = engine_calls(monkeypatch)
    [outcome] = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert calls == [account] and outcome.state == "ok"
    state = figures(db_session, account)
    assert state["limits"]["tight drawdown"]["peak"] == str(state["equity"])


def test_a_market_problem_keeps_a_reading_off_the_quiet_path_only_on_a_symbol_the_account_holds(
    account, sync, terminal, db_session
):
    recorder = Recorder()
    assert sync(account).status == "ok"
    readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    for symbol in ("XAUUSD", "EURUSD"):
        wide_spread(db_session, symbol, 500)
        assert sync(account).status == "ok"
        readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
        limits = figures(db_session, account)["limits"]
        # Only the engine writes the market guard's streak: it read the account when EURUSD blew out.
        assert ("market:EURUSD" in limits) == (symbol == "EURUSD"), symbol


def set_market_action(db_session, account_id, action):
    risk = db_session.get(AccountRisk, account_id)
    risk.settings = validate_settings(
        {**risk.settings, "market": {**risk.settings["market"], "action": action}}
    )
    db_session.commit()


def wide_spread(db_session, symbol, spread_pips):
    """What the watch records when `symbol` quotes this wide on the sim's server."""
    now = datetime.now(UTC)
    db_session.merge(
        MarketQuote(
            server="TradeGuard-Sim",
            symbol=symbol,
            bid=1,
            ask=2,
            spread_pips=spread_pips,
            gap_pips=0,
            quoted_at=now,
            trading=True,
            seen_at=now,
        )
    )
    db_session.commit()


def test_a_market_warning_that_stands_keeps_the_sync_readings_quiet_leaving_what_the_engine_would(
    account, sync, terminal, db_session, monkeypatch
):
    """The market guard set to warn (the default) and told of EURUSD's spread already: while the spread
    stays wide, a sync reading changes only figures, the warning's streak and its reason, and is written
    with the batch's quiet ones; when the spread narrows, the engine ends the warning."""
    recorder = Recorder()
    wide_spread(db_session, "EURUSD", 60)  # the default settings' maximum is 50
    for _ in range(2):  # the first reading starts the streak, the second confirms and warns
        assert sync(account).status == "ok"
        readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert recorder.events == ["guard.warning"]
    warned = figures(db_session, account)
    assert warned["state"] == "warning" and warned["limits"]["market:EURUSD"]["streak"] == 2

    wide_spread(db_session, "EURUSD", 65)
    terminal.sim_set_quote("EURUSD", 1.08600, 1.08610)  # a new peak: the figures move
    assert sync(account).status == "ok"
    expected = through_the_engine(db_session, account)
    calls = engine_calls(monkeypatch)
    outcomes = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert calls == []
    assert [(o.status, o.state, o.unconfirmed) for o in outcomes] == [("ok", "warning", False)]
    assert figures(db_session, account) == expected
    assert expected["limits"]["market:EURUSD"] == {
        "streak": 3,
        "warned": True,
        "kind": "spread",
        "reason": "spread 65.00 pips > 50",
        "since": warned["limits"]["market:EURUSD"]["since"],
    }
    assert recorder.events == ["guard.warning"]  # told once

    wide_spread(db_session, "EURUSD", 2)
    assert sync(account).status == "ok"
    [outcome] = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert calls == [account] and outcome.state == "ok"
    assert "market:EURUSD" not in figures(db_session, account)["limits"]


@pytest.mark.parametrize("action", ["warn", "block"])
def test_a_sync_reading_that_starts_a_market_streak_asks_for_a_read_only_when_more_than_a_warning_follows(
    action, account, sync, db_session
):
    """A wide spread is one per server and symbol: re-reading every holder at once to confirm it is worth
    it for a block or a close, not for a warning (the next sync confirms it)."""
    set_market_action(db_session, account, action)
    recorder = Recorder()
    wide_spread(db_session, "EURUSD", 60)
    assert sync(account).status == "ok"
    [outcome] = readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert figures(db_session, account)["limits"]["market:EURUSD"] == {"streak": 1}
    assert outcome.unconfirmed == (action == "block")


@pytest.mark.parametrize(
    ("action", "limits", "unconfirmed"),
    [
        ("warn", {"a limit removed since": {"level": "breach"}}, False),  # no streak recorded: none
        ("warn", {"max drawdown": {"streak": 1}}, True),
        ("warn", {"market:EURUSD": {"streak": 1}}, False),
        ("block", {"market:EURUSD": {"streak": 1}}, True),
        ("block", {"market:EURUSD": {"streak": 2}}, False),  # confirmed already
    ],
)
def test_which_streaks_ask_for_a_read_at_once(action, limits, unconfirmed, account, db_session):
    set_market_action(db_session, account, action)
    db_session.add(GuardState(account_id=account, state="ok", limits=limits, margin_streak=0))
    db_session.flush()
    outcome = guards.ReadingOutcome(account, "ok")
    assert readings._unconfirmed(db_session, account, outcome) is unconfirmed


@pytest.mark.parametrize("change", ["another symbol blows out", "the guard is set to block"])
def test_a_standing_market_warning_leaves_the_quiet_path_when_anything_else_changes(
    change, account, sync, terminal, db_session, monkeypatch
):
    recorder = Recorder()
    wide_spread(db_session, "EURUSD", 60)
    for _ in range(2):
        assert sync(account).status == "ok"
        readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert figures(db_session, account)["state"] == "warning"
    if change == "another symbol blows out":
        login = db_session.get(Account, account).login
        terminal.sim_open_manual(login, "XAUUSD", mt5c.ORDER_TYPE_BUY, 0.01)
        wide_spread(db_session, "XAUUSD", 60)
    else:
        set_market_action(db_session, account, "block")
    assert sync(account).status == "ok"
    calls = engine_calls(monkeypatch)
    readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
    assert calls == [account]
    limits = figures(db_session, account)["limits"]
    if change == "another symbol blows out":
        assert limits["market:XAUUSD"] == {"streak": 1}  # the engine began its streak
        # And confirms it: a warning standing beside one building up is no quiet reading.
        assert sync(account).status == "ok"
        readings.record_synced(db_session, [account], notify=recorder.notify, schedule=None)
        assert calls == [account, account]
        assert figures(db_session, account)["limits"]["market:XAUUSD"]["warned"] is True
        assert recorder.events == ["guard.warning", "guard.warning"]
    else:
        assert limits["market:EURUSD"] == {"streak": 3}  # counted towards the block, no longer a warning


def test_a_batch_writes_its_quiet_readings_in_one_statement_and_leaves_the_one_that_lost_the_race(
    make_account, sync, terminal, db_session, monkeypatch
):
    """Three quiet readings in one batch, the middle one's state changed by another reading after the
    batch looked: the other two are written together, the middle one goes through the engine."""
    recorder = Recorder()
    ids = [make_account() for _ in range(3)]
    for account_id in ids:
        assert sync(account_id).status == "ok"
    readings.record_synced(db_session, ids, notify=recorder.notify, schedule=None)
    terminal.sim_set_quote("EURUSD", 1.08600, 1.08610)
    for account_id in ids:
        assert sync(account_id).status == "ok"
    expected = {account_id: through_the_engine(db_session, account_id) for account_id in ids}
    raced = ids[1]
    another_reading_after_the_look(monkeypatch, db_session, raced)
    calls = engine_calls(monkeypatch)
    statements = []

    def count_updates(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE guard_states"):
            statements.append(statement)

    engine = db_session.get_bind().engine
    sa.event.listen(engine, "before_cursor_execute", count_updates)
    try:
        outcomes = readings.record_synced(db_session, ids, notify=recorder.notify, schedule=None)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count_updates)
    assert [(o.account_id, o.status, o.state) for o in outcomes] == [(i, "ok", "ok") for i in ids]
    assert calls == [raced]
    assert len([s for s in statements if "jsonb_to_recordset" in s]) == 1
    for account_id in ids:
        assert figures(db_session, account_id) == expected[account_id], account_id


def test_the_batch_write_applies_only_to_rows_as_read_that_are_quiet_and_keeps_every_figure_exact(
    make_account, db_session
):
    """`_write_quiet` on Postgres (one statement, its readings as JSON): a row is written only while its
    `updated_at` is the one read, its state quiet and the account not halted; what it writes comes back
    exactly (decimals to the column's places, a NULL margin level, the reading's time to the microsecond)."""
    was = datetime(2026, 11, 30, 9, 15, 1, 123456, tzinfo=UTC)
    at = datetime(2026, 11, 30, 9, 15, 11, 654321, tzinfo=UTC)
    ids = [make_account() for _ in range(5)]
    fresh, alert, halted, moved, warning = ids
    for account_id in ids:
        db_session.add(GuardState(account_id=account_id, state="ok", limits={}, margin_streak=3))
    db_session.flush()
    db_session.get(GuardState, alert).state = "alert"
    db_session.get(GuardState, halted).halted_at = was
    db_session.get(GuardState, moved).updated_at = datetime(2026, 11, 30, 9, 15, 1, 123457, tzinfo=UTC)
    db_session.get(GuardState, warning).state = "warning"
    db_session.flush()
    # As read: the changes above moved `updated_at` (onupdate), which is not what is tested here.
    db_session.execute(
        sa.update(GuardState)
        .where(GuardState.account_id.in_([fresh, alert, halted, warning]))  # `moved`: a microsecond on
        .values(updated_at=was)
    )
    db_session.commit()

    def reading(account_id, margin_level):
        return {
            "b_account_id": account_id,
            "b_was_updated_at": was,
            "b_limits": {"tight drawdown": {"peak": "10012.3400", "streak": 0}},
            "b_equity": Decimal("10012.3456789"),
            "b_balance": Decimal("10000"),
            "b_margin_level": margin_level,
            "b_currency": "USD",
            "b_at": at,
        }

    written = readings._write_quiet(
        db_session, [reading(fresh, None), *(reading(i, Decimal("512.12345")) for i in ids[1:])]
    )
    db_session.commit()
    assert written == {fresh, warning}
    db_session.expire_all()
    row = db_session.get(GuardState, fresh)
    assert (row.equity, row.balance, row.margin_level, row.currency) == (
        Decimal("10012.3457"),
        Decimal("10000.0000"),
        None,
        "USD",
    )
    assert (row.read_at, row.updated_at, row.margin_streak) == (at, at, 0)
    assert row.limits == {"tight drawdown": {"peak": "10012.3400", "streak": 0}}
    assert db_session.get(GuardState, warning).margin_level == Decimal("512.1235")
    for untouched in (alert, halted, moved):
        row = db_session.get(GuardState, untouched)
        assert (row.equity, row.margin_streak, row.read_at) == (None, 3, None), untouched


def test_the_batch_writes_json_carries_decimals_and_times_as_exact_text_a_naive_time_as_utc():
    assert readings._json_text(Decimal("10012.3456789")) == "10012.3456789"
    aware = datetime(2026, 11, 30, 9, 15, 1, 123456, tzinfo=UTC)
    assert readings._json_text(aware) == "2026-11-30T09:15:01.123456+00:00"
    assert readings._json_text(aware.replace(tzinfo=None)) == "2026-11-30T09:15:01.123456+00:00"
    assert readings._json_text("USD") == "USD" and readings._json_text(None) is None
