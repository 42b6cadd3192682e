"""Where the guards' readings come from, on Postgres, at their edges (issue 17: each test here was a
mutant no test noticed): a guard check's reading and what it refreshes of the market, the server's
clock, a batch whose recording fails, the watch's presumed breach, and when a breach is "building up".

Decided, and kept as the code had them:
- the offset of the server's clock is learnt from the freshest quote of a trading symbol known to be
  live (it moved since a look at most a minute before); when no quote is, the offset known for the
  account dates the quotes (0 when none is known);
- the same quote seen again keeps the jump it was seen with; a new quote's jump is from the last quote
  seen on the same server;
- a batch that records cleanly takes no savepoint; when one account's recording fails, the others keep
  their readings and the failed one leaves nothing behind (not even a new guard state);
- a breach is building up (read again soon) while a run is between 1 and its confirmations, exclusive:
  a run that reached them, an alert counting down or a halt is no longer building up.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.core.db import utcnow
from shared.guards import engine as guards
from shared.guards import readings
from shared.guards.settings import default_settings, validate_settings
from shared.models import Account, AccountRisk, GuardState, MarketQuote
from shared.mt5 import constants as mt5c
from shared.mt5.errors import TerminalUnavailable
from shared.mt5.gateway import Gateway
from shared.mt5.sim.terminal import SimTerminal
from shared.mt5.types import Quote, SymbolSpec
from shared.reconciliation.sync import AccountToSync
from tests.integration.test_guards_engine import MAX_DRAWDOWN, PIN

SERVER = "TradeGuard-Sim"


class Recorder:
    def __init__(self):
        self.events = []
        self.scheduled = []

    def notify(self, session, owner_id, event, data):
        self.events.append(event)

    def schedule(self, session, task, args, at):
        self.scheduled.append(task)


@pytest.fixture
def recorder():
    return Recorder()


def opener(terminal):
    @contextmanager
    def open_terminal(account):
        with Gateway.from_module(
            SimTerminal(terminal.broker), login=account.login, password="x", server=account.server, timeout=5
        ) as gateway:
            yield gateway

    return open_terminal


@pytest.fixture
def guarded(api, db_session, terminal, sync, recorder):
    """An account with the 1 %/2 % limit (`limit` overrides it), `lots` of EURUSD bought at PIN; `read`
    syncs it and records that first reading."""
    terminal.sim_set_quote("EURUSD", *PIN)

    def make(lots=1.0, read=True, **limit):
        world = api.setup()
        account_id, login = world["account"]["id"], world["account"]["login"]
        document = default_settings()
        document.update(
            {"grace_seconds": 0, "confirmations": 2, "drawdown_limits": [{**MAX_DRAWDOWN, **limit}]}
        )
        db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
        db_session.commit()
        if lots:
            terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, lots)
        if read:
            assert sync(account_id).status == "ok"
            [outcome] = readings.record_synced(
                db_session, [account_id], notify=recorder.notify, schedule=recorder.schedule
            )
            assert outcome.status == "ok"
        return account_id

    return make


def check(db_session, terminal, recorder, ids, **options):
    return readings.check_accounts(
        db_session,
        ids,
        open_terminal=opener(terminal),
        notify=recorder.notify,
        schedule=recorder.schedule,
        **options,
    )


def state_of(db_session, account_id):
    db_session.expire_all()
    return db_session.get(GuardState, account_id)


# --- a guard check ----------------------------------------------------------------------------------------


def test_a_check_records_its_reading_at_the_time_given_and_refreshes_the_market_it_holds(
    guarded, terminal, db_session, recorder
):
    account_id = guarded()
    at = utcnow().replace(microsecond=0)
    assert readings.check_account(
        db_session,
        account_id,
        open_terminal=opener(terminal),
        notify=recorder.notify,
        schedule=recorder.schedule,
        now=at,
    ) == readings.CheckOutcome(account_id, "ok", "ok", False, None)
    assert state_of(db_session, account_id).read_at == at
    seen = db_session.get(MarketQuote, (SERVER, "EURUSD"))
    assert (seen.seen_at, seen.bid, seen.ask, seen.spread_pips) == (
        at,
        Decimal("1.085"),
        Decimal("1.0851"),
        Decimal("1.00"),
    )


def test_a_terminal_that_fails_gives_no_reading_and_an_unknown_account_is_gone(guarded, db_session, recorder):
    account_id = guarded()
    read_at = state_of(db_session, account_id).read_at

    @contextmanager
    def unreachable(account):
        raise TerminalUnavailable("connection refused", call="initialize")
        yield

    outcomes = readings.check_accounts(
        db_session, [account_id, 999_999], open_terminal=unreachable, notify=recorder.notify, schedule=None
    )
    assert outcomes[0].status == "failed" and outcomes[0].error.startswith("TerminalUnavailable: ")
    assert (outcomes[0].state, outcomes[0].unconfirmed, outcomes[0].alert_id) == (None, False, None)
    assert outcomes[1] == readings.CheckOutcome(999_999, "gone")
    assert state_of(db_session, account_id).read_at == read_at


def test_the_terminals_are_asked_on_the_executor_given(guarded, terminal, db_session, recorder):
    account_id = guarded()
    submitted = []

    class Recording:
        def submit(self, fn, *args):
            submitted.append(args[0].id)
            from concurrent.futures import Future

            future = Future()
            future.set_result(fn(*args))
            return future

    [outcome] = check(db_session, terminal, recorder, [account_id], executor=Recording())
    assert submitted == [account_id] and outcome.status == "ok"


def test_the_watchs_presumed_breach_counts_only_for_the_accounts_it_names(
    guarded, terminal, db_session, recorder
):
    """Two accounts 2.5 % down, confirmations 2: the presumed one is confirmed by this one reading (its
    alert is raised), the other has a run of one, building up."""
    presumed, other = guarded(), guarded()
    terminal.sim_set_quote("EURUSD", 1.08250, 1.08260)  # 25 pips on 1 lot: 2.5 %
    by_id = {
        o.account_id: o for o in check(db_session, terminal, recorder, [presumed, other], presumed=[presumed])
    }
    assert by_id[presumed].alert_id is not None and not by_id[presumed].unconfirmed
    assert (by_id[other].alert_id, by_id[other].unconfirmed) == (None, True)
    assert state_of(db_session, other).limits["max drawdown"]["streak"] == 1


def test_a_batch_that_records_cleanly_takes_no_savepoint(
    guarded, terminal, db_session, recorder, monkeypatch
):
    """All the batch's readings in one transaction: a savepoint and a flush per account were half the
    time from a crowd's breach to its alerts."""
    ids = [guarded(), guarded()]
    nested = []
    begin_nested = db_session.begin_nested

    def counted():
        nested.append(1)
        return begin_nested()

    monkeypatch.setattr(db_session, "begin_nested", counted)
    outcomes = check(db_session, terminal, recorder, ids)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert nested == []


def test_one_accounts_failed_recording_costs_the_others_nothing_and_leaves_nothing_behind(
    guarded, terminal, db_session, recorder, monkeypatch
):
    """The first account (never read: no guard state yet) fails in the database; the batch is recorded
    again one by one: the second keeps its reading, the first is `failed` and has no guard state."""
    failing = guarded(read=False)
    fine = guarded()
    assert db_session.get(GuardState, failing) is None
    record = guards.record_reading

    def failing_for_one(session, account_id, *args, **kwargs):
        outcome = record(session, account_id, *args, **kwargs)
        if account_id == failing:
            session.execute(sa.text("SELECT 1 / 0"))  # a database error: the transaction is aborted
        return outcome

    monkeypatch.setattr(guards, "record_reading", failing_for_one)
    at = utcnow().replace(microsecond=0)
    outcomes = check(db_session, terminal, recorder, [failing, fine], now=at)
    assert [(o.account_id, o.status) for o in outcomes] == [(failing, "failed"), (fine, "ok")]
    assert outcomes[0].error == "DataError"
    assert state_of(db_session, failing) is None
    assert state_of(db_session, fine).read_at == at


def test_a_symbol_blocked_but_no_longer_held_is_unblocked_once_its_market_is_fine(
    guarded, terminal, db_session, recorder
):
    account_id = guarded()
    now = utcnow()
    fine = {"bid": 1.27, "ask": 1.2701, "spread_pips": 1, "gap_pips": 0, "quoted_at": now, "trading": True}
    db_session.add(MarketQuote(server=SERVER, symbol="GBPUSD", seen_at=now, **fine))
    state = db_session.get(GuardState, account_id)
    state.blocked_symbols = {"GBPUSD": {"reason": "spread", "since": now.isoformat(), "kind": "spread"}}
    db_session.commit()
    [outcome] = check(db_session, terminal, recorder, [account_id])
    assert outcome.status == "ok"
    assert state_of(db_session, account_id).blocked_symbols == {}
    assert "market.unblocked" in recorder.events


# --- the server's clock and the market's view -----------------------------------------------------------


@pytest.mark.parametrize("known", [7200, 0])
def test_quotes_too_old_to_tell_the_offset_are_dated_with_the_accounts_known_offset(
    guarded, terminal, db_session, recorder, known
):
    """7.5 minutes off any quarter hour, the quote teaches nothing: the account's known offset (2 h, or
    0 for a UTC server) turns its server time into UTC."""
    account_id = guarded()
    terminal.sim_stop_quotes("EURUSD")
    with opener(terminal)(_account_to_sync(db_session, account_id)) as gateway:
        _, quote = gateway.symbol_and_quote("EURUSD")
    state = db_session.get(GuardState, account_id)
    state.broker_offset_seconds = known
    db_session.commit()
    [outcome] = check(db_session, terminal, recorder, [account_id], now=utcnow() + timedelta(seconds=450))
    assert outcome.status == "ok"
    db_session.expire_all()
    seen = db_session.get(MarketQuote, (SERVER, "EURUSD"))
    assert seen.quoted_at == quote.time - timedelta(seconds=known)
    assert state_of(db_session, account_id).broker_offset_seconds == known


def _account_to_sync(db_session, account_id):
    row = db_session.execute(sa.select(*AccountToSync.COLUMNS).where(Account.id == account_id)).one()
    db_session.rollback()
    return AccountToSync.from_row(row)


NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def spec(name, trading=True):
    return SymbolSpec(
        name=name,
        digits=5,
        point=Decimal("0.00001"),
        contract_size=Decimal(100000),
        tick_value=Decimal(1),
        tick_size=Decimal("0.00001"),
        volume_min=Decimal("0.01"),
        volume_max=Decimal(100),
        volume_step=Decimal("0.01"),
        stops_level_points=0,
        trade_allowed=trading,
    )


def observe(db_session, quotes, server=SERVER, at=NOW, **options):
    specs = {symbol: spec(symbol) for symbol in quotes}
    offset = readings.observe_market(db_session, server, quotes, specs, at, **options)
    db_session.commit()
    return offset


def seen(db_session, symbol, server=SERVER):
    db_session.expire_all()
    return db_session.get(MarketQuote, (server, symbol))


def test_the_offset_is_learnt_from_the_freshest_quote(db_session):
    """A UTC+2 server: since the look a second ago EURUSD ticked just now, ZZZUSD showed a tick of 15
    minutes ago (which looks like UTC+1:45): the fresh one tells."""
    two_hours, before = timedelta(hours=2), NOW - timedelta(seconds=1)

    def quotes(eurusd, zzzusd, time):
        return {
            "EURUSD": Quote("EURUSD", Decimal(eurusd), Decimal(eurusd) + Decimal("0.0001"), time),
            "ZZZUSD": Quote(
                "ZZZUSD", Decimal(zzzusd), Decimal(zzzusd) + Decimal("0.0001"), time - timedelta(minutes=15)
            ),
        }

    observe(db_session, quotes("1.085", "1.2", NOW + two_hours - timedelta(minutes=5)), at=before)
    assert observe(db_session, quotes("1.0851", "1.2001", NOW + two_hours)) == 7200
    assert seen(db_session, "EURUSD").quoted_at == NOW
    assert seen(db_session, "ZZZUSD").quoted_at == NOW - timedelta(minutes=15)
    # The learnt offset wins over the one known before.
    later = NOW + timedelta(seconds=1)
    assert (
        observe(db_session, quotes("1.0852", "1.2", later + two_hours), at=later, known_offset=3600) == 7200
    )


def test_without_a_known_offset_an_old_quote_is_taken_as_utc(db_session):
    old = NOW - timedelta(hours=14, minutes=13)
    assert observe(db_session, {"EURUSD": Quote("EURUSD", Decimal("1.085"), Decimal("1.0851"), old)}) is None
    assert seen(db_session, "EURUSD").quoted_at == old


def test_the_same_quote_again_keeps_its_jump_and_a_new_one_jumps_from_the_last_seen_on_its_server(
    db_session,
):
    def quote(bid, at):
        return {"EURUSD": Quote("EURUSD", Decimal(bid), Decimal(bid) + Decimal("0.0001"), at)}

    observe(db_session, quote("1.08000", NOW), server="Other-Server")  # another server's quote: no matter
    observe(db_session, quote("1.08500", NOW))
    assert seen(db_session, "EURUSD").gap_pips == Decimal(0)  # the first quote seen here
    later = NOW + timedelta(seconds=1)
    observe(db_session, quote("1.08200", later), at=later)
    assert seen(db_session, "EURUSD").gap_pips == Decimal(30)
    observe(db_session, quote("1.08200", later), at=later + timedelta(seconds=1))  # the same tick again
    assert seen(db_session, "EURUSD").gap_pips == Decimal(30)
    same_price = later + timedelta(seconds=2)
    observe(db_session, quote("1.08200", same_price), at=same_price)  # a new tick at the same price
    assert seen(db_session, "EURUSD").gap_pips == Decimal(0)
    observe(db_session, quote("1.08150", same_price), at=same_price)  # a new price, same second
    assert seen(db_session, "EURUSD").gap_pips == Decimal(5)
    other = seen(db_session, "EURUSD", "Other-Server")
    assert (other.bid, other.gap_pips) == (Decimal("1.08"), Decimal(0))


# --- a breach building up ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "margin_streak", "halted_by", "alert_id", "building"),
    [
        ({"max drawdown": {"streak": 1}}, 0, None, None, True),  # one of two
        ({"max drawdown": {"streak": 0}}, 1, None, None, True),  # the margin's one of two
        ({"max drawdown": {"streak": 2}}, 0, None, None, False),  # confirmed (a warn-only limit)
        ({"max drawdown": {"streak": 1}}, 0, None, 123, False),  # an alert counts down already
        ({"max drawdown": {"streak": 1}}, 0, "close", None, False),  # halted by a close: nothing to close
        ({"max drawdown": {"streak": 1}}, 0, "block", None, True),  # a block: the close behind it acts
        ({"max drawdown": {"streak": 0}}, 0, None, None, False),  # nothing at all
        ({"max drawdown": {"anchor": "10000", "peak": "10000"}}, 0, None, None, False),  # no streak: none
    ],
)
def test_a_breach_is_building_up_while_a_run_is_short_of_its_confirmations(
    guarded, db_session, limits, margin_streak, halted_by, alert_id, building
):
    account_id = guarded(lots=0, read=False)
    db_session.add(
        GuardState(
            account_id=account_id,
            state="ok",
            limits=limits,
            margin_streak=margin_streak,
            blocked_symbols={},
            broker_offset_seconds=0,
            halted_at=utcnow() if halted_by else None,
            halted_by_alert_id=41 if halted_by == "close" else None,
            updated_at=utcnow(),
        )
    )
    db_session.commit()
    outcome = guards.ReadingOutcome(account_id, "ok", alert_id)
    assert readings._unconfirmed(db_session, account_id, outcome) is building


# --- the quiet sync readings ------------------------------------------------------------------------------


def test_a_second_breached_sync_reading_confirms_through_the_engine(
    guarded, sync, terminal, db_session, recorder
):
    """Past the warning (sent) and in breach a second time: not quiet, although no new warning is due."""
    account_id = guarded()
    terminal.sim_set_quote("EURUSD", 1.08250, 1.08260)  # 2.5 %
    for _ in range(2):
        assert sync(account_id).status == "ok"
        [outcome] = readings.record_synced(
            db_session, [account_id], notify=recorder.notify, schedule=recorder.schedule
        )
    assert outcome.alert_id is not None
    assert state_of(db_session, account_id).limits["max drawdown"]["streak"] == 2


def test_a_quiet_reading_leaves_no_margin_run_on_the_row_by_row_path(guarded, db_session):
    """The statement SQLite's quiet readings use (one per account) resets the margin run and writes the
    figures, over the row as read."""
    account_id = guarded()
    read = state_of(db_session, account_id)
    at = utcnow()
    row = {
        "b_account_id": account_id,
        "b_was_updated_at": read.updated_at,
        "b_limits": read.limits,
        "b_equity": Decimal(10010),
        "b_balance": Decimal(10000),
        "b_margin_level": None,
        "b_currency": "USD",
        "b_at": at,
    }
    assert db_session.execute(readings._QUIET_UPDATE, row).rowcount == 1
    db_session.commit()
    written = state_of(db_session, account_id)
    assert (written.margin_streak, written.equity, written.read_at) == (0, Decimal(10010), at)


def test_a_sync_reading_of_an_account_with_a_market_streak_goes_through_the_engine(
    guarded, sync, db_session, recorder, monkeypatch
):
    """A market guard's run (here GBPUSD's, a symbol the account no longer holds) is the engine's to
    keep or end: such a reading is not quiet, even with the figures calm."""
    account_id = guarded()
    state = db_session.get(GuardState, account_id)
    state.limits = {**state.limits, "market:GBPUSD": {"streak": 1}}
    db_session.commit()
    calls = _engine_calls(monkeypatch)
    assert sync(account_id).status == "ok"
    [outcome] = readings.record_synced(db_session, [account_id], notify=recorder.notify, schedule=None)
    assert (outcome.status, calls) == ("ok", [account_id])


def test_a_market_problem_on_a_symbol_the_account_does_not_hold_leaves_its_reading_quiet(
    guarded, sync, db_session, recorder, monkeypatch
):
    """XAUUSD's spread blew out on the account's server, but the account holds only EURUSD: its calm
    sync reading is written with the batch's quiet ones, not through the engine."""
    account_id = guarded()
    now = utcnow()
    wide = {"bid": 1, "ask": 2, "spread_pips": 500, "gap_pips": 0, "quoted_at": now, "trading": True}
    db_session.add(MarketQuote(server=SERVER, symbol="XAUUSD", seen_at=now, **wide))
    db_session.commit()
    calls = _engine_calls(monkeypatch)
    assert sync(account_id).status == "ok"
    [outcome] = readings.record_synced(db_session, [account_id], notify=recorder.notify, schedule=None)
    assert (outcome.status, outcome.state, calls) == ("ok", "ok", [])


def _engine_calls(monkeypatch):
    calls = []
    record = guards.record_reading

    def counted(session, account_id, *args, **kwargs):
        calls.append(account_id)
        return record(session, account_id, *args, **kwargs)

    monkeypatch.setattr(guards, "record_reading", counted)
    return calls


def test_a_breach_after_a_cancelled_alert_goes_through_the_engine_though_its_warning_was_sent(
    guarded, sync, terminal, db_session, recorder, monkeypatch
):
    """A cancelled alert (or a resume) sets the state back to `ok` without a reading, and a limit's
    warning may stand sent (`warned`). A breached reading then sends no new warning, yet it is no
    quiet one: the engine counts it, and the second raises the alert."""
    account_id = guarded()
    state = db_session.get(GuardState, account_id)
    limit = state.limits["max drawdown"]
    state.limits = {**state.limits, "max drawdown": {**limit, "warned": True}}
    db_session.commit()
    calls = _engine_calls(monkeypatch)
    terminal.sim_set_quote("EURUSD", 1.08250, 1.08260)  # 2.5 %
    outcomes = []
    for _ in range(2):
        assert sync(account_id).status == "ok"
        outcomes += readings.record_synced(
            db_session, [account_id], notify=recorder.notify, schedule=recorder.schedule
        )
    assert calls == [account_id, account_id]
    assert outcomes[0].unconfirmed and outcomes[1].alert_id is not None


def test_a_symbol_blocked_on_an_ok_account_is_the_engines_to_unblock_once_its_market_is_fine(
    guarded, sync, db_session, recorder, monkeypatch
):
    """A cancelled market alert leaves the state `ok` with the symbol still blocked: the next sync
    reading goes through the engine, which unblocks it (its market is fine now)."""
    account_id = guarded()
    now = utcnow()
    fine = {"bid": 1.085, "ask": 1.0851, "spread_pips": 1, "gap_pips": 0, "quoted_at": now, "trading": True}
    db_session.add(MarketQuote(server=SERVER, symbol="EURUSD", seen_at=now, **fine))
    state = db_session.get(GuardState, account_id)
    state.blocked_symbols = {"EURUSD": {"reason": "spread", "since": now.isoformat(), "kind": "spread"}}
    db_session.commit()
    calls = _engine_calls(monkeypatch)
    assert sync(account_id).status == "ok"
    [outcome] = readings.record_synced(db_session, [account_id], notify=recorder.notify, schedule=None)
    assert (outcome.status, calls) == ("ok", [account_id])
    assert state_of(db_session, account_id).blocked_symbols == {}
    assert "market.unblocked" in recorder.events
