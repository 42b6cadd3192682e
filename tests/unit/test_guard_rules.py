"""The guards' pure decisions: periods in broker time, each reference, warn and breach boundaries, the
confirmation count, resume, margin, the market, and what an alert closes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from shared.guards import rules
from shared.guards.settings import DrawdownLimit, MarketLimits, RiskSettings
from shared.mt5.sim.symbols import DEFAULT_SYMBOLS
from shared.mt5.types import pip_size

HOUR = 3600


def limit(**overrides):
    values = {
        "name": "dd",
        "period": "lifetime",
        "reference": "peak_equity",
        "warn_percent": D(4),
        "max_percent": D(5),
        "max_amount": None,
        "action": "close",
        "resume": "manual",
    }
    return DrawdownLimit(**{**values, **overrides})


def reading(equity, balance=None, at=None, margin_level=None):
    return rules.Reading(
        at or datetime(2026, 11, 30, 12, tzinfo=UTC),
        D(equity),
        D(balance if balance is not None else equity),
        None if margin_level is None else D(margin_level),
    )


def assess(the_limit, previous, the_reading, *, initial=D(10000), offset=0, confirmations=1, presumed=0):
    return rules.assess_limit(
        the_limit,
        previous,
        the_reading,
        initial_balance=initial,
        broker_offset_seconds=offset,
        confirmations=confirmations,
        presumed=presumed,
    )


# --- periods --------------------------------------------------------------------------------


def test_a_day_starts_at_broker_midnight_not_utc_midnight():
    # 22:30 UTC on Monday 30 Nov is 00:30 on Tuesday for a UTC+2 server: its day began at 22:00 UTC.
    at = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)
    assert rules.period_start(at, "day", 2 * HOUR) == datetime(2026, 11, 30, 22, tzinfo=UTC)
    assert rules.period_start(at, "day", 0) == datetime(2026, 11, 30, tzinfo=UTC)
    # Behind UTC: 01:00 UTC is still the previous day at UTC-3.
    early = datetime(2026, 12, 1, 1, tzinfo=UTC)
    assert rules.period_start(early, "day", -3 * HOUR) == datetime(2026, 11, 30, 3, tzinfo=UTC)


def test_a_week_starts_on_monday_and_a_month_on_the_first_in_broker_time():
    sunday_late = datetime(2026, 11, 29, 23, tzinfo=UTC)  # Monday 01:00 at UTC+2
    assert rules.period_start(sunday_late, "week", 2 * HOUR) == datetime(2026, 11, 29, 22, tzinfo=UTC)
    assert rules.period_start(sunday_late, "week", 0) == datetime(2026, 11, 23, tzinfo=UTC)
    last_evening = datetime(2026, 11, 30, 23, tzinfo=UTC)  # 1 December at UTC+2
    assert rules.period_start(last_evening, "month", 2 * HOUR) == datetime(2026, 11, 30, 22, tzinfo=UTC)
    assert rules.period_start(last_evening, "month", 0) == datetime(2026, 11, 1, tzinfo=UTC)
    assert rules.period_start(last_evening, "lifetime", 0) is None


def test_the_broker_offset_is_learnt_to_the_quarter_hour():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert rules.broker_offset_seconds(now + timedelta(hours=2, seconds=3), now) == 2 * HOUR
    assert rules.broker_offset_seconds(now + timedelta(hours=2, seconds=-40), now) == 2 * HOUR
    assert rules.broker_offset_seconds(now + timedelta(hours=5, minutes=45), now) == 5 * HOUR + 45 * 60
    assert rules.broker_offset_seconds(now - timedelta(hours=3), now) == -3 * HOUR


def test_a_quote_too_old_to_tell_teaches_no_offset():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    # Friday's last tick on Saturday, on a UTC+2 server: 14 h 13 min behind, not an offset of -14 h.
    assert rules.broker_offset_seconds(now - timedelta(hours=14, minutes=13), now) is None
    assert rules.broker_offset_seconds(now + timedelta(hours=2, seconds=-61), now) is None
    assert rules.broker_offset_seconds(now + timedelta(hours=2, seconds=-60), now) == 2 * HOUR


def test_no_offset_is_learnt_beyond_the_worlds_time_zones():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert rules.broker_offset_seconds(now - timedelta(hours=12), now) == -12 * HOUR
    assert rules.broker_offset_seconds(now + timedelta(hours=14), now) == 14 * HOUR
    # A tick 15 h old on a UTC server, 16 h 15 min on a UTC+1:15 one: stale, not a clock.
    assert rules.broker_offset_seconds(now - timedelta(hours=15), now) is None
    assert rules.broker_offset_seconds(now + timedelta(hours=14, minutes=15), now) is None


def test_only_a_quote_seen_moving_moments_ago_teaches_the_offset():
    """Friday's last tick on Saturday on a UTC+2 server, 14 h 0 min 20 s old: to within a minute of a
    quarter hour, its age alone reads as UTC-12. Standing still, or seen for the first time, it is no
    live quote; one that moved since a look a second ago is."""
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    stale = now + timedelta(hours=2) - timedelta(hours=14, seconds=20)
    assert rules.broker_offset_seconds(stale, now) == -12 * HOUR  # what it taught
    a_second_ago = now - timedelta(seconds=1)
    assert rules.live_offset_seconds(stale, now, moved=False, last_seen=a_second_ago) is None
    assert rules.live_offset_seconds(stale, now, moved=True, last_seen=None) is None
    live = now + timedelta(hours=2, seconds=-1)
    assert rules.live_offset_seconds(live, now, moved=True, last_seen=a_second_ago) == 2 * HOUR
    # Moved since a look 5 min ago: it may be 5 min old.
    five_minutes_ago = now - timedelta(minutes=5)
    assert rules.live_offset_seconds(live, now, moved=True, last_seen=five_minutes_ago) is None
    assert rules.live_offset_seconds(live, now, moved=True, last_seen=now - timedelta(seconds=60)) == 2 * HOUR
    # A look at this very instant is no look before it.
    assert rules.live_offset_seconds(live, now, moved=True, last_seen=now) is None


# --- drawdown limits --------------------------------------------------------------------------------


def test_peak_equity_trails_the_highest_equity_and_the_drawdown_is_measured_from_it():
    first = assess(limit(), None, reading(10000))
    higher = assess(limit(), first.state, reading(11000))
    lower = assess(limit(), higher.state, reading(10600))
    assert (lower.reference, lower.drawdown_amount) == (D(11000), D(400))
    assert lower.drawdown_percent == D("3.6364")
    assert lower.level == rules.OK


@pytest.mark.parametrize(
    ("equity", "level"),
    [("9601", rules.OK), ("9600", rules.WARNING), ("9501", rules.WARNING), ("9500", rules.BREACH)],
)
def test_warn_and_max_percent_are_reached_at_exactly_their_value(equity, level):
    start = assess(limit(), None, reading(10000))
    assert assess(limit(), start.state, reading(equity)).level == level


def test_max_amount_breaches_first_when_it_is_the_nearer():
    the_limit = limit(max_percent=D(50), warn_percent=None, max_amount=D(300))
    start = assess(the_limit, None, reading(10000))
    assert assess(the_limit, start.state, reading("9701")).level == rules.OK
    assert assess(the_limit, start.state, reading("9700")).level == rules.BREACH


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("period_start_balance", D(10000)),  # the first reading's balance
        ("period_start_equity", D(9800)),  # its equity
        ("initial_balance", D(12000)),  # the account's first balance ever
        ("peak_equity", D(9900)),  # the highest equity seen (the second reading)
    ],
)
def test_each_reference_is_the_value_it_names(reference, expected):
    the_limit = limit(reference=reference, period="day")
    first = assess(the_limit, None, reading(9800, balance=10000), initial=D(12000))
    second = assess(the_limit, first.state, reading(9900, balance=10000), initial=D(12000))
    third = assess(the_limit, second.state, reading(9000, balance=10000), initial=D(12000))
    assert third.reference == expected
    assert third.drawdown_amount == expected - D(9000)


def test_a_breach_acts_only_after_the_confirmations_in_a_row():
    start = assess(limit(), None, reading(10000), confirmations=3)
    one = assess(limit(), start.state, reading(9000), confirmations=3)
    two = assess(limit(), one.state, reading(9000), confirmations=3)
    assert (one.level, one.confirmed, two.confirmed) == (rules.BREACH, False, False)
    three = assess(limit(), two.state, reading(9000), confirmations=3)
    assert three.confirmed and three.state.streak == 3
    # A reading back under the maximum starts the count again.
    calm = assess(limit(), two.state, reading(9800), confirmations=3)
    again = assess(limit(), calm.state, reading(9000), confirmations=3)
    assert (calm.state.streak, again.state.streak, again.confirmed) == (0, 1, False)


def test_a_presumed_breach_counts_towards_the_run_only_when_the_reading_breaches_too():
    """The watch's estimate at a breach is a breached reading just before this one."""
    start = assess(limit(), None, reading(10000), confirmations=3)
    wrong = assess(limit(), start.state, reading(9550), confirmations=3, presumed=1)
    assert (wrong.level, wrong.state.streak, wrong.confirmed) == (rules.WARNING, 0, False)
    first = assess(limit(), start.state, reading(9000), confirmations=3, presumed=1)
    assert (first.state.streak, first.confirmed) == (2, False)
    second = assess(limit(), first.state, reading(9000), confirmations=3)
    assert (second.state.streak, second.confirmed) == (3, True)
    # With two confirmations the estimate and one read are the run.
    assert assess(limit(), start.state, reading(9000), confirmations=2, presumed=1).confirmed


def test_the_warning_is_sent_once_until_the_limit_is_ok_again():
    start = assess(limit(), None, reading(10000))
    warned = assess(limit(), start.state, reading(9550))
    still = assess(limit(), warned.state, reading(9540))
    breach = assess(limit(), still.state, reading(9400))
    recovered = assess(limit(), breach.state, reading(9900))
    again = assess(limit(), recovered.state, reading(9550))
    assert [warned.warn_now, still.warn_now, breach.warn_now, recovered.warn_now, again.warn_now] == [
        True,
        False,
        False,
        False,
        True,
    ]
    straight_to_breach = assess(limit(), start.state, reading(9000))
    assert straight_to_breach.warn_now


def test_a_new_day_at_broker_midnight_starts_the_limit_from_that_reading():
    daily = limit(period="day", reference="period_start_balance", resume="next_period")
    offset = 2 * HOUR
    before = datetime(2026, 11, 30, 21, 59, tzinfo=UTC)  # 23:59 on the server
    after = datetime(2026, 11, 30, 22, 1, tzinfo=UTC)  # 00:01 the next day on the server
    day_one = assess(daily, None, reading(9400, balance=10000, at=before), offset=offset)
    assert day_one.level == rules.BREACH
    day_two = assess(daily, day_one.state, reading(9400, balance=9300, at=after), offset=offset)
    assert day_two.new_period
    assert (day_two.reference, day_two.level, day_two.state.streak) == (D(9300), rules.OK, 0)
    # The same two moments on a UTC server are one day: no rollover.
    same_day = assess(daily, assess(daily, None, reading(10000, at=before)).state, reading(9400, at=after))
    assert not same_day.new_period and same_day.level == rules.BREACH


def test_an_offset_learnt_or_shifted_within_the_broker_day_keeps_the_days_reference():
    """The day counted from UTC midnight (no offset known yet) with 4 % lost; at 12:00 UTC the server's
    UTC+2 is learnt: the day began at 22:00 UTC yesterday, the same broker day, so its reference stays and
    the next loss adds up (8.5 %, a breach; taken as a new day it showed 4.7 %). A DST hour later the same
    day changes nothing either."""
    daily = limit(period="day", reference="period_start_balance", resume="next_period")
    morning = assess(daily, None, reading(10000, at=datetime(2026, 11, 30, 8, tzinfo=UTC)))
    lost = assess(daily, morning.state, reading(9600, at=datetime(2026, 11, 30, 11, tzinfo=UTC)))
    assert (lost.drawdown_percent, lost.level) == (D(4), rules.WARNING)
    learnt = assess(
        daily, lost.state, reading(9530, 9600, at=datetime(2026, 11, 30, 12, tzinfo=UTC)), offset=2 * HOUR
    )
    assert not learnt.new_period
    assert (learnt.reference, learnt.drawdown_percent) == (D(10000), D("4.7"))
    assert learnt.state.period_start == datetime(2026, 11, 29, 22, tzinfo=UTC)  # broker midnight now
    more = assess(
        daily, learnt.state, reading(9150, 9150, at=datetime(2026, 11, 30, 13, tzinfo=UTC)), offset=2 * HOUR
    )
    assert (more.reference, more.drawdown_percent, more.level) == (D(10000), D("8.5"), rules.BREACH)
    dst = assess(daily, more.state, reading(9150, at=datetime(2026, 11, 30, 14, tzinfo=UTC)), offset=HOUR)
    assert (dst.new_period, dst.reference, dst.state.streak) == (False, D(10000), 2)
    assert dst.state.period_start == datetime(2026, 11, 29, 23, tzinfo=UTC)


def test_a_day_on_a_server_far_east_of_utc_is_one_day_from_its_midnight_to_the_next():
    """UTC+10: the broker day of Tuesday 1 December runs from 14:00 UTC on the 30th to 14:00 UTC on the
    1st; readings all through it keep its reference, the first after it starts the next."""
    daily = limit(period="day", reference="period_start_equity", resume="next_period")
    east = 10 * HOUR
    start = assess(daily, None, reading(10000, at=datetime(2026, 11, 30, 14, 30, tzinfo=UTC)), offset=east)
    assert start.state.period_start == datetime(2026, 11, 30, 14, tzinfo=UTC)
    late = assess(
        daily, start.state, reading(9700, at=datetime(2026, 12, 1, 13, 30, tzinfo=UTC)), offset=east
    )
    assert (late.new_period, late.reference) == (False, D(10000))
    next_day = assess(
        daily, late.state, reading(9700, at=datetime(2026, 12, 1, 14, 30, tzinfo=UTC)), offset=east
    )
    assert (next_day.new_period, next_day.reference) == (True, D(9700))


def test_an_offset_moved_back_across_broker_midnight_does_not_start_the_day_twice():
    """UTC+3, the new day began at 21:00 UTC; at 21:30 the offset is corrected to UTC+2, which puts the
    server at 23:30 of the day before: still the new day, whose reference stays, until its own end."""
    daily = limit(period="day", reference="period_start_equity", resume="next_period")
    old_day = assess(daily, None, reading(10000, at=datetime(2026, 11, 30, 20, tzinfo=UTC)), offset=3 * HOUR)
    new_day = assess(
        daily, old_day.state, reading(9800, at=datetime(2026, 11, 30, 21, 10, tzinfo=UTC)), offset=3 * HOUR
    )
    assert new_day.new_period and new_day.reference == D(9800)
    back = assess(
        daily, new_day.state, reading(9700, at=datetime(2026, 11, 30, 21, 30, tzinfo=UTC)), offset=2 * HOUR
    )
    assert (back.new_period, back.reference) == (False, D(9800))
    assert back.state.period_start == datetime(2026, 11, 30, 22, tzinfo=UTC)
    at_midnight = assess(
        daily, back.state, reading(9600, at=datetime(2026, 11, 30, 22, 30, tzinfo=UTC)), offset=2 * HOUR
    )
    assert (at_midnight.new_period, at_midnight.reference) == (False, D(9800))
    next_day = assess(
        daily, at_midnight.state, reading(9600, at=datetime(2026, 12, 1, 22, 30, tzinfo=UTC)), offset=2 * HOUR
    )
    assert (next_day.new_period, next_day.reference) == (True, D(9600))


@pytest.mark.parametrize(
    ("period", "same", "next_one"),
    [
        # Wednesday, then Sunday 23:30 on the server; the next period from Monday 00:30 on the server.
        ("week", datetime(2026, 12, 6, 20, 30, tzinfo=UTC), datetime(2026, 12, 6, 22, 30, tzinfo=UTC)),
        # The 2nd, then the 31st at 23:30 on the server; the next period from the 1st 00:30 on the server.
        ("month", datetime(2026, 12, 31, 20, 30, tzinfo=UTC), datetime(2026, 12, 31, 22, 30, tzinfo=UTC)),
    ],
)
def test_a_week_or_a_month_is_new_only_when_the_servers_calendar_moves_on(period, same, next_one):
    """Counted from UTC with no offset known, then under UTC+2 learnt: the same week (month) until the
    server's Monday (1st), then a new one."""
    the_limit = limit(period=period, reference="period_start_equity")
    first = assess(the_limit, None, reading(10000, at=datetime(2026, 12, 2, 12, tzinfo=UTC)))
    learnt = assess(the_limit, first.state, reading(9900, at=same), offset=2 * HOUR)
    assert (learnt.new_period, learnt.reference) == (False, D(10000))
    rolled = assess(the_limit, learnt.state, reading(9900, at=next_one), offset=2 * HOUR)
    assert (rolled.new_period, rolled.reference) == (True, D(9900))
    assert rolled.state.period_start == next_one.replace(hour=22, minute=0)


def test_a_limit_whose_period_the_owner_changed_starts_afresh():
    """A day's state (begun on a Wednesday) read as a week's is no week's start: a new period, as before."""
    wednesday = datetime(2026, 12, 2, 12, tzinfo=UTC)
    daily = assess(limit(period="day"), None, reading(10000, at=wednesday))
    weekly = assess(limit(period="week"), daily.state, reading(9900, at=wednesday + timedelta(hours=1)))
    assert (weekly.new_period, weekly.reference) == (True, D(9900))
    lifetime = assess(limit(period="lifetime"), daily.state, reading(9900, at=wednesday + timedelta(hours=1)))
    assert lifetime.new_period and lifetime.state.period_start is None


def test_the_first_reading_is_not_a_new_period():
    assert not assess(limit(period="day"), None, reading(10000)).new_period


def test_a_resume_takes_the_equity_now_as_the_reference():
    start = assess(limit(reference="period_start_balance", period="day"), None, reading(10000))
    breached = assess(limit(reference="period_start_balance", period="day"), start.state, reading(9000))
    resumed = rules.resumed_state(breached.state, D(9000))
    after = assess(limit(reference="period_start_balance", period="day"), resumed, reading(8900))
    assert (after.reference, after.level, after.state.streak) == (D(9000), rules.OK, 0)
    peak_resumed = rules.resumed_state(assess(limit(), start.state, reading(9000)).state, D(9000))
    assert assess(limit(), peak_resumed, reading(8900)).reference == D(9000)
    assert rules.resumed_state(None, D(1)) is None


def test_the_state_round_trips_through_json():
    state = assess(limit(period="week"), None, reading(10000)).state
    assert rules.LimitState.from_json(state.to_json()) == state
    assert rules.LimitState.from_json(None) is None


# --- margin and market --------------------------------------------------------------------------------


def test_margin_breaches_strictly_under_the_minimum_and_never_without_margin_in_use():
    assert rules.margin_breached(D("149.99"), D(150))
    assert not rules.margin_breached(D(150), D(150))
    assert not rules.margin_breached(None, D(150))
    assert not rules.margin_breached(D(10), None)


NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
MARKET = MarketLimits(max_spread_pips=D(5), max_gap_pips=D(30), stale_quote_seconds=60, action="block")


def view(spread="1", gap="0", age=0, trading=True):
    return rules.MarketView("EURUSD", D(spread), D(gap), NOW - timedelta(seconds=age), trading)


@pytest.mark.parametrize(
    ("the_view", "kind"),
    [
        (view(spread="5"), None),
        (view(spread="5.1"), "spread"),
        (view(gap="30"), None),
        (view(gap="30.5"), "gap"),
        (view(age=60), None),
        (view(age=61), "stale"),
        (view(age=3600, trading=False), None),  # a closed market's quote is old by nature
    ],
)
def test_the_market_guard_blocks_beyond_each_threshold(the_view, kind):
    problem = rules.market_problem(the_view, MARKET, NOW)
    assert (problem[0] if problem else None) == kind


def test_market_thresholds_left_null_are_off():
    off = MarketLimits(None, None, None, "block")
    assert rules.market_problem(view(spread="500", gap="500", age=99999), off, NOW) is None


def test_the_default_maximum_spread_leaves_ordinary_spreads_alone_and_warns_on_a_blow_out():
    """Every simulated symbol's ordinary spread, in pips, is under the default maximum (the simulator's
    gold, 30 points at 2 digits, was over the earlier 20 and had all its holders warned); a spread past
    the maximum is still a problem."""
    market = RiskSettings.from_document(None).market
    ordinary = {
        symbol.name: symbol.spread * D(str(symbol.point)) / pip_size(symbol.digits, D(str(symbol.point)))
        for symbol in DEFAULT_SYMBOLS
    }
    assert ordinary["XAUUSD"] == 30
    for name, spread_pips in ordinary.items():
        assert rules.market_problem(view(spread=str(spread_pips)), market, NOW) is None, name
    assert rules.market_problem(view(spread="50"), market, NOW) is None
    problem = rules.market_problem(view(spread="50.01"), market, NOW)
    assert problem == ("spread", "spread 50.01 pips > 50")


def test_the_gap_is_the_jump_from_the_previous_quote_in_pips():
    assert rules.gap_pips(D("1.08500"), D("1.08200"), D("0.0001")) == D(30)
    assert rules.gap_pips(D("1.08200"), D("1.08500"), D("0.0001")) == D(30)
    assert rules.gap_pips(None, D("1.08500"), D("0.0001")) == D(0)


# --- what an alert closes --------------------------------------------------------------------------------


def position(ticket, profit, symbol="EURUSD", notional=100):
    return rules.OpenPosition(ticket, f"k{ticket}", symbol, "buy", D(1), D(profit), D(notional))


def test_a_drawdown_alert_closes_every_position_the_largest_loser_first():
    positions = [position(1, -50), position(2, 30), position(3, -200)]
    assert [p.ticket for p in rules.positions_to_close("drawdown", positions)] == [3, 1, 2]


def test_a_market_alert_closes_only_its_symbols_positions():
    positions = [position(1, -50, "EURUSD"), position(2, -10, "GBPUSD"), position(3, 5, "EURUSD")]
    closes = rules.positions_to_close("market", positions, symbol="EURUSD")
    assert [p.ticket for p in closes] == [1, 3]


def test_a_margin_alert_closes_the_largest_losers_until_the_level_is_restored():
    # Equity 1000 on margin 1000 is 100 %; the minimum is 150 %: freeing a third of the margin restores it.
    positions = [
        position(1, -300, notional=100),
        position(2, -100, notional=100),
        position(3, 50, notional=100),
    ]
    closes = rules.positions_to_close(
        "margin", positions, equity=D(1000), margin=D(1000), min_margin_level=D(150)
    )
    assert [p.ticket for p in closes] == [1]  # 1000 / 666.67 = 150 %: enough
    stricter = rules.positions_to_close(
        "margin", positions, equity=D(1000), margin=D(1000), min_margin_level=D(200)
    )
    assert [p.ticket for p in stricter] == [1, 2]  # 1000 / 333.33 = 300 %
    assert (
        rules.positions_to_close("margin", positions, equity=D(2000), margin=D(1000), min_margin_level=D(150))
        == []
    )


def test_a_zero_reference_is_no_drawdown_rather_than_a_division_by_zero():
    empty = limit(reference="initial_balance", max_percent=D(5))
    assessed = assess(empty, None, reading(0, balance=0), initial=D(0))
    assert (assessed.drawdown_percent, assessed.level) == (D(0), rules.OK)


def test_a_symbol_without_a_pip_size_has_no_gap():
    assert rules.gap_pips(D("1.1"), D("1.2"), D(0)) == D(0)


def test_the_margin_guard_frees_nothing_without_margin_in_use():
    positions = [position(1, -300), position(2, 10)]
    assert (
        rules.positions_to_close("margin", positions, equity=D(10), margin=D(0), min_margin_level=D(150))
        == []
    )


def test_the_margin_guard_shares_the_margin_evenly_when_no_position_has_a_notional():
    positions = [position(1, -300, notional=0), position(2, -100, notional=0), position(3, 5, notional=0)]
    # Each frees a third: 1000 / 666.67 is 150 % after the first.
    closes = rules.positions_to_close(
        "margin", positions, equity=D(1000), margin=D(1000), min_margin_level=D(150)
    )
    assert [p.ticket for p in closes] == [1]


def test_the_margin_guard_stops_once_all_margin_is_freed():
    # The first position holds all the margin; the second none: closing the first frees everything.
    positions = [position(1, -300, notional=100), position(2, 50, notional=0)]
    closes = rules.positions_to_close(
        "margin", positions, equity=D(100), margin=D(1000), min_margin_level=D(10000)
    )
    assert [p.ticket for p in closes] == [1]


def test_the_market_guards_entries_are_read_by_symbol_and_a_standing_warning_keeps_its_first_time():
    limits = {"daily loss": {"streak": 1}, "market:EURUSD": {"streak": 2}, "market:XAUUSD": {"streak": 1}}
    assert rules.market_entries(limits) == {"EURUSD": {"streak": 2}, "XAUUSD": {"streak": 1}}
    assert rules.market_entries(None) == {}
    first = rules.standing_warning({"streak": 1}, 2, "spread", "spread 30 pips > 20", NOW)
    assert first == {
        "streak": 2,
        "warned": True,
        "kind": "spread",
        "reason": "spread 30 pips > 20",
        "since": NOW.isoformat(),
    }
    later = rules.standing_warning(first, 3, "gap", "price jumped 60 pips > 50", NOW + timedelta(seconds=9))
    assert later == {**first, "streak": 3, "kind": "gap", "reason": "price jumped 60 pips > 50"}
    told = {**limits, "market:GBPUSD": first, "market:USDJPY": {"streak": 3, "warned": False}}
    assert rules.market_warnings(told) == {"GBPUSD": first}
    assert rules.market_warnings(None) == {}
