"""The trade server's clock, on Postgres: which quotes teach its offset from UTC, what a change of that
offset does to the drawdown limits' periods, and the watch dating quotes with the offset known.

- An offset is learnt only from a quote known to be live: one that moved since a look at its symbol a
  moment before. A stale quote's age can look like an offset (a weekend's last tick, 14 h old on a UTC+2
  server, is 12 h behind UTC) and taught it; the periods then moved by half a day.
- A change of the offset (learnt at noon, corrected, a DST hour) moves when broker midnight falls in
  UTC, not which broker day it is: the day's reference and its loss so far stay. Broker midnight still
  starts a new day.
- The watch dates the quotes with the server's known offset, as a check does: as UTC, a UTC+2 server's
  stale quote was 2 h in the future, and the watch's write every half second lifted a stale-quote block.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.core.db import utcnow
from shared.guards import readings, rules, watch
from shared.guards.settings import default_settings, validate_settings
from shared.models import AccountRisk, MarketQuote
from shared.mt5 import constants as mt5c
from shared.mt5.sim.broker import SimBroker
from shared.mt5.types import Quote
from tests.integration import test_guards_engine as engine_tests
from tests.integration.test_guards_engine import open_sim, state_of
from tests.integration.test_guards_readings_edges import check, spec

SERVER = "TradeGuard-Sim"
PIN = (1.08500, 1.08510)
NOON = datetime(2026, 11, 30, 12, tzinfo=UTC)  # a Monday
HOUR = 3600


class Clock:
    """The simulated broker's clock: real time, or a time the test sets (`at`), `shift` seconds off."""

    def __init__(self):
        self.at: datetime | None = None
        self.shift = 0.0

    def __call__(self) -> float:
        base = self.at.timestamp() if self.at is not None else time.time()
        return base + self.shift


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def broker(clock):
    """The test's simulated broker (tests/integration/conftest.py), on a clock the test turns."""
    return SimBroker(seed=7, clock=clock)


# The engine tests' recorder of what the owners are told (and what is scheduled).
recorder = engine_tests.recorder


@pytest.fixture
def guarded(api, db_session, terminal):
    """An account with these risk settings (overrides of the defaults), 1 lot of EURUSD bought at PIN."""

    def make(**overrides):
        terminal.sim_set_quote("EURUSD", *PIN)
        world = api.setup()
        account_id, login = world["account"]["id"], world["account"]["login"]
        document = default_settings()
        document.update({"grace_seconds": 0, "confirmations": 1, **overrides})
        db_session.add(AccountRisk(account_id=account_id, settings=validate_settings(document)))
        db_session.commit()
        terminal.sim_open_manual(login, "EURUSD", mt5c.ORDER_TYPE_BUY, 1.0)
        return account_id

    return make


# --- which quotes teach the offset ---------------------------------------------------------------------


def observe(db_session, bid, server_time, at, known_offset=0):
    quote = Quote("EURUSD", Decimal(bid), Decimal(bid) + Decimal("0.0001"), server_time)
    offset = readings.observe_market(
        db_session, SERVER, {"EURUSD": quote}, {"EURUSD": spec("EURUSD")}, at, known_offset=known_offset
    )
    db_session.commit()
    return offset


def quoted_at(db_session):
    db_session.expire_all()
    return db_session.get(MarketQuote, (SERVER, "EURUSD")).quoted_at


def test_a_stale_quote_whose_age_looks_like_an_offset_teaches_none(db_session):
    """A UTC+2 server on Saturday: Friday's last tick, 14 h 0 min 30 s old, is 12 h behind UTC to within
    a minute of a quarter hour. Seen once, or again unchanged, it teaches nothing (it taught -43200): the
    offset known (2 h) dates it."""
    friday = NOON + timedelta(hours=2) - timedelta(hours=14, seconds=30)
    assert observe(db_session, "1.085", friday, NOON, known_offset=2 * HOUR) is None
    assert quoted_at(db_session) == friday - timedelta(hours=2)
    later = NOON + timedelta(seconds=1)
    assert observe(db_session, "1.085", friday, later, known_offset=2 * HOUR) is None
    assert quoted_at(db_session) == friday - timedelta(hours=2)


def test_a_quote_that_moved_since_a_look_moments_ago_teaches_the_offset(db_session):
    """A look a second ago saw one tick; now another, at another price: it was priced since, so its time is
    the server's now. The offset known before (0, none learnt) gives way to it."""
    before = NOON - timedelta(seconds=1)
    assert observe(db_session, "1.085", before + timedelta(hours=2), before) is None  # a first look
    assert observe(db_session, "1.0851", NOON + timedelta(hours=2), NOON) == 2 * HOUR
    assert quoted_at(db_session) == NOON


def test_a_quote_that_moved_teaches_nothing_after_a_long_gap_or_from_an_older_tick(db_session):
    """Moved since a look 5 min ago, the tick could be 5 min old: nothing learnt. Another price at an older
    time than the last look's (a lagging terminal of the same server) is no live quote either."""
    long_ago = NOON - timedelta(minutes=5)
    observe(db_session, "1.085", long_ago + timedelta(hours=2), long_ago, known_offset=2 * HOUR)
    assert observe(db_session, "1.0851", NOON + timedelta(hours=2), NOON, known_offset=2 * HOUR) is None
    lagging = NOON + timedelta(hours=2) - timedelta(hours=14, seconds=30)
    later = NOON + timedelta(seconds=1)
    assert observe(db_session, "1.0840", lagging, later, known_offset=2 * HOUR) is None
    # An hour old on the server's clock (dated by the offset known: before the last look's quote) is no
    # tick priced since that look; nor is another price at exactly the time the last look saw.
    an_hour_old = NOON + timedelta(hours=1)
    assert observe(db_session, "1.0842", an_hour_old, later, known_offset=2 * HOUR) is None
    seen_at = later + timedelta(seconds=1)
    observe(db_session, "1.0843", NOON + timedelta(hours=2), seen_at, known_offset=2 * HOUR)
    same_time = NOON + timedelta(hours=2)
    assert (
        observe(db_session, "1.0844", same_time, seen_at + timedelta(seconds=1), known_offset=2 * HOUR)
        is None
    )


# --- a change of offset and the periods ---------------------------------------------------------------


DAILY_LOSS = {
    "name": "daily loss",
    "period": "day",
    "reference": "period_start_equity",
    "warn_percent": 4,
    "max_percent": 5,
    "action": "warn",
    "resume": "next_period",
}


def test_an_offset_learnt_mid_day_keeps_the_days_reference_and_broker_midnight_still_starts_a_new_day(
    guarded, terminal, clock, db_session, recorder
):
    """A UTC+2 server, Monday noon UTC. The first checks learn no offset (the first look; then a quote
    moved since a look two minutes before) and count the day from UTC midnight, the offset known (0); a
    4 % loss is counted. The next check sees a quote that moved a second after the last look and learns
    UTC+2: the day now began at 22:00 UTC on Sunday, the same broker day, so its reference and its loss
    stand (it took the equity of that moment as the day's reference: 0 % shown). At broker midnight the
    new day starts from that reading."""
    clock.at = NOON
    terminal.sim_set_server_offset(2)
    account_id = guarded(drawdown_limits=[DAILY_LOSS])

    def check_at(at, bid):
        clock.at = at
        terminal.sim_set_quote("EURUSD", bid, bid + 0.0001)
        [outcome] = check(db_session, terminal, recorder, [account_id], now=at)
        assert outcome.status == "ok"
        state = state_of(db_session, account_id)
        return state, state.limits["daily loss"]

    state, daily = check_at(NOON, PIN[0])
    assert (state.broker_offset_seconds, daily["period_start"]) == (0, "2026-11-30T00:00:00+00:00")
    reference = Decimal(daily["reference"])
    state, daily = check_at(NOON + timedelta(minutes=2), 1.08100)  # 40 pips on 1 lot: 400 USD
    assert state.broker_offset_seconds == 0  # the last look was 2 min ago: not known to be live
    assert daily["level"] == rules.WARNING and Decimal(daily["drawdown_percent"]) >= 4

    state, daily = check_at(NOON + timedelta(minutes=2, seconds=1), 1.08090)
    assert state.broker_offset_seconds == 2 * HOUR
    assert daily["period_start"] == "2026-11-29T22:00:00+00:00"  # broker midnight, the same broker day
    assert Decimal(daily["reference"]) == reference
    assert daily["level"] == rules.WARNING and Decimal(daily["drawdown_percent"]) >= Decimal("4.1")

    # Broker midnight: 22:00 UTC. Still Monday before it; Tuesday's first reading starts the day afresh.
    state, daily = check_at(datetime(2026, 11, 30, 21, 59, 59, tzinfo=UTC), 1.08080)
    assert Decimal(daily["reference"]) == reference
    state, daily = check_at(datetime(2026, 11, 30, 22, 0, 1, tzinfo=UTC), 1.08070)
    assert daily["period_start"] == "2026-11-30T22:00:00+00:00"
    assert (Decimal(daily["reference"]), daily["level"]) == (state.equity, rules.OK)


# --- the watch ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_watch(monkeypatch):
    """Each test starts with the watch's per-process cache empty, as a new worker does."""
    monkeypatch.setattr(watch, "_cache", {})
    monkeypatch.setattr(watch, "_last_groups", None)
    monkeypatch.setattr(watch, "_settings", {})


def test_the_watch_dates_a_stale_quote_with_the_servers_known_offset_and_the_block_stays(
    guarded, terminal, clock, db_session, sync, recorder
):
    """A UTC+2 server whose offset the account's guard state knows; EURUSD's last tick is 10 min old. A
    check blocks EURUSD (stale); the watch's tick after it keeps the quote's time, so the next sync's
    reading still finds it stale and the block stays (the watch dated it as UTC, 2 h in the future: the
    sync's reading lifted the block)."""
    terminal.sim_set_server_offset(2)
    clock.shift = -600  # EURUSD's tick, and the position, 10 minutes ago
    market = {"max_spread_pips": None, "max_gap_pips": None, "stale_quote_seconds": 60, "action": "block"}
    account_id = guarded(market=market, drawdown_limits=[])
    terminal.sim_stop_quotes("EURUSD")
    clock.shift = 0
    assert sync(account_id).status == "ok"
    readings.record_synced(db_session, [account_id], notify=recorder.notify, schedule=recorder.schedule)
    state = state_of(db_session, account_id)
    state.broker_offset_seconds = 2 * HOUR
    db_session.commit()

    [outcome] = check(db_session, terminal, recorder, [account_id])
    assert outcome.status == "ok"
    assert list(state_of(db_session, account_id).blocked_symbols) == ["EURUSD"]
    assert "market.blocked" in recorder.names()
    stale_since = quoted_at(db_session)
    assert 590 <= (utcnow() - stale_since).total_seconds() <= 660

    result = watch.watch(db_session, open_terminal=open_sim(terminal))
    assert result.counts["servers"] == 1
    assert quoted_at(db_session) == stale_since  # not 2 h in the future
    assert sync(account_id).status == "ok"
    readings.record_synced(db_session, [account_id], notify=recorder.notify, schedule=recorder.schedule)
    assert list(state_of(db_session, account_id).blocked_symbols) == ["EURUSD"]
    assert "market.unblocked" not in recorder.names()
