"""The guards' pure rules, the watch's estimate and the risk settings at their edges (issue 17: each test
here was a mutant no test noticed).

Decided, and kept as the code had them:
- a limit's first reading counts: it may breach and warn at once, and it is one reading of the run;
- a stored limit without a streak or a `warned` flag has no run and has sent no warning (the safe side:
  a missing streak never shortens a confirmation, a missing flag never swallows a warning);
- a resume starts a limit's run and its warning afresh;
- any positive reference, however small, measures the drawdown in percent; a zero reference none;
- a margin alert without the figures to estimate the margin closes every position, largest loser first;
- any margin in use, however small, counts: the margin guard frees it and the watch checks its level;
- a sync that recorded no margin has none in use;
- every threshold of the settings is positive (0 is refused) except the order limits' counts, where 0
  means "none"; a warning must lie below its limit's maximum (equal is refused).
"""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from shared.core.errors import InvalidInput
from shared.guards import rules
from shared.guards.settings import RiskSettings, default_settings, validate_settings
from shared.guards.watch import (
    WatchedAccount,
    WatchedPosition,
    _figures_of,
    _limits_of,
    breaches,
    estimate_equity,
    needs_reading,
)
from shared.mt5.types import Quote
from tests.unit.test_guard_rules import assess, limit, position, reading
from tests.unit.test_guard_watch import NOW, spec

# --- drawdown limits ---------------------------------------------------------------------------------


def test_a_limits_first_reading_is_one_breached_reading_of_the_run_and_warns():
    """The first reading of a period may already be in breach (its reference is the balance, the equity
    below it): it counts once towards the confirmations, and it sends the warning."""
    daily = limit(period="day", reference="period_start_balance")
    first = assess(daily, None, reading(9000, balance=10000), confirmations=2)
    assert (first.level, first.state.streak, first.confirmed) == (rules.BREACH, 1, False)
    assert first.warn_now and first.state.warned
    warned_only = assess(daily, None, reading(9550, balance=10000))
    assert (warned_only.level, warned_only.warn_now) == (rules.WARNING, True)


def test_without_presumed_readings_a_breach_counts_once():
    """`presumed` defaults to none: a breached reading alone is a run of one."""
    start = assess(limit(), None, reading(10000))
    assessed = rules.assess_limit(
        limit(),
        start.state,
        reading(9000),
        initial_balance=D(10000),
        broker_offset_seconds=0,
        confirmations=2,
    )
    assert (assessed.state.streak, assessed.confirmed) == (1, False)


def test_a_stored_limit_without_a_streak_or_warned_flag_has_no_run_and_has_not_warned():
    """A row that lacks them (hand-edited or written before they were) starts from zero, not warned."""
    state = rules.LimitState.from_json({"period_start": None, "anchor": "10000", "peak": "10000"})
    assert state is not None and (state.streak, state.warned) == (0, False)
    after = assess(limit(), state, reading(9000), confirmations=2)
    assert (after.state.streak, after.confirmed, after.warn_now) == (1, False, True)


def test_a_resume_starts_the_run_and_the_warning_afresh():
    """After a resume the next breach is the first of a new run, and a warning is sent again."""
    start = assess(limit(), None, reading(10000))
    breached = assess(limit(), start.state, reading(9000))
    assert breached.state.streak == 1 and breached.state.warned
    resumed = rules.resumed_state(breached.state, D(9000))
    assert resumed is not None and (resumed.streak, resumed.warned) == (0, False)
    again = assess(limit(), resumed, reading(8500), confirmations=2)
    assert (again.level, again.state.streak, again.confirmed) == (rules.BREACH, 1, False)
    assert again.warn_now


def test_any_positive_reference_measures_the_drawdown_in_percent():
    """A reference of 1 (an account's last unit) is a reference like any other: half of it is 50 %."""
    tiny = limit(reference="initial_balance", max_percent=D(5), warn_percent=D(4))
    assessed = assess(tiny, None, reading("0.5", balance="0.5"), initial=D(1))
    assert (assessed.drawdown_percent, assessed.level) == (D(50), rules.BREACH)


def test_a_zero_reference_reaches_not_even_a_fraction_of_a_percent():
    """No reference, no drawdown: 0 %, below a 0.5 % warning and a 1 % maximum."""
    small = limit(reference="initial_balance", warn_percent=D("0.5"), max_percent=D(1))
    assessed = assess(small, None, reading(0, balance=0), initial=D(0))
    assert (assessed.drawdown_percent, assessed.level) == (D(0), rules.OK)


# --- what a margin alert closes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "figures",
    [
        {"equity": None, "margin": D(1000), "min_margin_level": D(150)},
        {"equity": D(1000), "margin": None, "min_margin_level": D(150)},
        {"equity": D(1000), "margin": D(1000), "min_margin_level": None},
    ],
)
def test_a_margin_alert_without_the_figures_closes_every_position_the_largest_loser_first(figures):
    """Without equity, margin or the minimum there is no estimate of what suffices: all of them go."""
    positions = [position(1, -50), position(2, 30), position(3, -200)]
    assert [p.ticket for p in rules.positions_to_close("margin", positions, **figures)] == [3, 1, 2]


def test_a_margin_under_one_unit_is_still_margin_to_free():
    """Equity 1 on a margin of 0.80 is 125 %, under a 150 % minimum: the loser is closed."""
    positions = [position(1, -300, notional=100), position(2, 50, notional=100)]
    closes = rules.positions_to_close(
        "margin", positions, equity=D(1), margin=D("0.80"), min_margin_level=D(150)
    )
    assert [p.ticket for p in closes] == [1]


def test_without_notionals_each_position_frees_an_equal_share_of_the_margin():
    """Three positions without a notional hold a third of the margin each: on 1000 of margin, a 200 %
    minimum needs two of them closed (1000 / 333.33 = 300 %), one (150 %) is not enough."""
    positions = [position(1, -300, notional=0), position(2, -100, notional=0), position(3, 5, notional=0)]
    closes = rules.positions_to_close(
        "margin", positions, equity=D(1000), margin=D(1000), min_margin_level=D(200)
    )
    assert [p.ticket for p in closes] == [1, 2]


def test_the_margin_is_shared_by_notional_however_small_the_notionals():
    """Notionals of 0.9 and 0.1 (a cheap symbol, a small volume) hold 90 % and 10 % of the margin:
    closing the 0.1 one frees too little (1000 / 900 = 111 %), so the 0.9 one goes as well. Shared evenly,
    the first would have freed half and sufficed."""
    positions = [position(1, -300, notional="0.1"), position(2, -100, notional="0.9")]
    closes = rules.positions_to_close(
        "margin", positions, equity=D(1000), margin=D(1000), min_margin_level=D(150)
    )
    assert [p.ticket for p in closes] == [1, 2]


# --- the watch's estimate ------------------------------------------------------------------------------


def watched(positions=(), limits=(), min_margin=None, margin="0", equity="10000"):
    return WatchedAccount(1, D(equity), D(margin), tuple(positions), tuple(limits), min_margin)


def test_a_symbol_quoted_but_without_its_specification_is_taken_as_unmoved():
    """No specification, no tick value: the position's move cannot be valued, so it counts as none."""
    buy = WatchedPosition("EURUSD", "buy", D(1), D("1.08500"))
    quotes = {"EURUSD": Quote("EURUSD", D("1.08000"), D("1.08010"), NOW)}
    assert estimate_equity(watched([buy]), quotes, {}) == D(10000)
    assert estimate_equity(watched([buy]), {}, {"EURUSD": spec()}) == D(10000)


def test_the_watch_checks_the_margin_level_of_any_margin_in_use_however_small():
    """0.80 of margin on an equity of 1 is 125 %, under a 150 % minimum: it breaches."""
    assert breaches(watched(min_margin=D(150), margin="0.80"), D(1))
    assert not breaches(watched(min_margin=D(150), margin="0.50"), D(1))  # 200 %


def test_the_watch_measures_any_positive_reference_in_percent():
    """A reference of 1: an estimate of 0.5 is 50 % down, past a 5 % maximum."""
    assert breaches(watched(limits=[(D(1), None, D(5), None, False)]), D("0.5"))
    assert needs_reading(watched(limits=[(D(1), D(4), None, D(1000), False)]), D("0.5"))


def test_the_watch_finds_no_drawdown_from_a_zero_reference_not_even_a_fraction_of_a_percent():
    assert not needs_reading(watched(limits=[(D(0), D("0.5"), D(1), None, False)]), D(0))


# --- the watch's view of an account, from what its sync stored --------------------------------------------

WATCH_DOCUMENT = {
    **default_settings(),
    "drawdown_limits": [
        {
            "name": "max drawdown",
            "period": "lifetime",
            "reference": "peak_equity",
            "warn_percent": 1,
            "max_percent": 2,
            "action": "close",
            "resume": "manual",
        },
        {
            "name": "daily loss",
            "period": "day",
            "reference": "period_start_balance",
            "max_amount": 300,
            "action": "warn",
            "resume": "next_period",
        },
    ],
    "min_margin_level_percent": 150,
}
POSITIONS = [{"symbol": "EURUSD", "side": "buy", "volume": "1.5", "price_current": "1.08500"}]


def test_the_watched_view_takes_each_read_limits_reference_and_the_owners_thresholds():
    """A limit already read brings its stored reference and `warned`; one never read is left out (its
    first reading comes with the next sync). The positions, equity and margin are the sync's."""
    stored = {"max drawdown": {"reference": "10000", "warned": True}}
    settings = RiskSettings.from_document(validate_settings(WATCH_DOCUMENT))
    assert _figures_of(D(9950), D(500), POSITIONS) == (
        D(9950),
        D(500),
        (WatchedPosition("EURUSD", "buy", D("1.5"), D("1.08500")),),
    )
    assert _limits_of(settings, stored) == (((D(10000), D(1), D(2), None, True),), D(150))
    assert _figures_of(D(9950), D(500), None)[2] == ()
    assert _limits_of(settings, None) == ((), D(150))
    # No settings stored: the defaults' thresholds (warn 8 %, maximum 10 % for "max drawdown").
    assert _limits_of(RiskSettings.from_document(None), stored)[0] == ((D(10000), D(8), D(10), None, True),)


def test_the_watched_view_holds_one_position_per_symbol_and_side_worth_what_its_positions_are():
    """Positions on the same symbol and side are one volume at their volume-weighted price: every move
    is worth exactly what it is worth on them one by one."""
    positions = [
        {"symbol": "EURUSD", "side": "buy", "volume": "0.10", "price_current": "1.08500"},
        {"symbol": "EURUSD", "side": "sell", "volume": "0.30", "price_current": "1.08530"},
        {"symbol": "EURUSD", "side": "buy", "volume": "0.30", "price_current": "1.08600"},
        {"symbol": "USDJPY", "side": "buy", "volume": "0.50", "price_current": "150.000"},
    ]
    watched_positions = _figures_of(D(10000), D(500), positions)[2]
    assert watched_positions == (
        WatchedPosition("EURUSD", "buy", D("0.40"), D("1.08575")),
        WatchedPosition("EURUSD", "sell", D("0.30"), D("1.08530")),
        WatchedPosition("USDJPY", "buy", D("0.50"), D("150.000")),
    )
    one_by_one = tuple(
        WatchedPosition(p["symbol"], p["side"], D(p["volume"]), D(p["price_current"])) for p in positions
    )
    specs = {"EURUSD": spec(), "USDJPY": spec("USDJPY", tick_size="0.001", tick_value="0.66")}
    for bid in ("1.08400", "1.08575", "1.08710"):
        quotes = {
            "EURUSD": Quote("EURUSD", D(bid), D(bid) + D("0.00010"), NOW),
            "USDJPY": Quote("USDJPY", D("149.500"), D("149.512"), NOW),
        }
        aggregated = estimate_equity(watched(list(watched_positions)), quotes, specs)
        assert aggregated == estimate_equity(watched(list(one_by_one)), quotes, specs), bid
    assert _figures_of(D(1), None, [{**positions[0], "volume": "0"}])[2] == ()


def test_a_sync_that_recorded_no_margin_has_no_margin_level_to_breach():
    """Margin NULL is no margin in use: however low the equity, the margin minimum is not at stake."""
    settings = RiskSettings.from_document(validate_settings(WATCH_DOCUMENT))
    view = WatchedAccount(7, *_figures_of(D(1), None, POSITIONS), *_limits_of(settings, {}))
    assert view.margin == D(0)
    assert not breaches(view, D(1))


# --- the risk settings -------------------------------------------------------------------------------------


def settings_with(**changes):
    document = default_settings()
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    return document


_DROP = object()
LIMIT = "drawdown_limits__0__"


def refused(document):
    """The fields validate_settings names as wrong (it must refuse the document)."""
    with pytest.raises(InvalidInput) as caught:
        validate_settings(document)
    assert str(caught.value).startswith("invalid risk settings: ")
    return set(caught.value.fields or {})


@pytest.mark.parametrize(
    ("field", "name"),
    [
        (LIMIT + "warn_percent", "drawdown_limits.0.warn_percent"),
        (LIMIT + "max_amount", "drawdown_limits.0.max_amount"),
        ("min_margin_level_percent", "min_margin_level_percent"),
        ("market__max_spread_pips", "market.max_spread_pips"),
        ("orders__max_lots_per_order", "orders.max_lots_per_order"),
    ],
)
def test_a_threshold_of_zero_is_refused_and_any_positive_fraction_taken(field, name):
    """Thresholds are positive: 0 is refused (it would breach at once), 0.5 is a threshold like any."""
    assert refused(settings_with(**{field: 0})) == {name}
    assert refused(settings_with(**{field: -1})) == {name}
    loaded = validate_settings(settings_with(**{field: 0.5}))
    assert RiskSettings.from_document(loaded) is not None


def test_a_threshold_that_is_not_a_number_is_refused_naming_it():
    for value in ("NaN", float("nan"), "Infinity"):
        assert refused(settings_with(**{LIMIT + "max_percent": value})) == {"drawdown_limits.0.max_percent"}


def test_the_thresholds_left_null_are_off_and_stay_null():
    document = settings_with(
        **{
            LIMIT + "warn_percent": None,
            "market__max_spread_pips": None,
            "market__stale_quote_seconds": None,
            "orders__symbols": None,
        }
    )
    loaded = validate_settings(document)
    assert loaded["drawdown_limits"][0]["warn_percent"] is None
    assert loaded["market"]["max_spread_pips"] is None and loaded["market"]["stale_quote_seconds"] is None
    assert RiskSettings.from_document(loaded).orders.symbols is None


@pytest.mark.parametrize("field", ["name", "period", "reference"])
def test_a_limit_must_say_its_name_period_and_reference(field):
    assert refused(settings_with(**{LIMIT + field: _DROP})) == {f"drawdown_limits.0.{field}"}


@pytest.mark.parametrize("field", ["grace_seconds", "confirmations", "drawdown_limits", "market", "orders"])
def test_the_document_must_hold_each_of_its_sections(field):
    assert refused(settings_with(**{field: _DROP})) == {field}


def test_names_and_symbols_may_not_be_empty_nor_hold_nul():
    assert refused(settings_with(**{LIMIT + "name": ""})) == {"drawdown_limits.0.name"}
    assert refused(settings_with(**{LIMIT + "name": "daily\x00loss"})) == {"drawdown_limits.0.name"}
    assert refused(settings_with(orders__symbols=[""])) == {"orders.symbols.0"}
    assert validate_settings(settings_with(orders__symbols=["EURUSD"]))["orders"]["symbols"] == ["EURUSD"]


def test_a_limit_needs_a_maximum_in_percent_or_amount_and_either_alone_will_do():
    assert refused(settings_with(**{LIMIT + "max_percent": None})) == {"drawdown_limits.0.max_percent"}
    by_amount = validate_settings(
        settings_with(
            **{LIMIT + "max_percent": None, LIMIT + "warn_percent": None, LIMIT + "max_amount": 500}
        )
    )
    assert by_amount["drawdown_limits"][0]["max_amount"] == 500
    # A warning in percent beside a maximum in amount only: nothing to be below, so it stands.
    warned = validate_settings(
        settings_with(**{LIMIT + "max_percent": None, LIMIT + "warn_percent": 3, LIMIT + "max_amount": 500})
    )
    assert warned["drawdown_limits"][0]["warn_percent"] == 3
    no_warning = validate_settings(settings_with(**{LIMIT + "warn_percent": None}))
    assert no_warning["drawdown_limits"][0]["max_percent"] == 5


def test_a_warning_must_lie_below_its_maximum_equal_is_refused():
    assert refused(settings_with(**{LIMIT + "warn_percent": 5})) == {"drawdown_limits.0.warn_percent"}
    assert validate_settings(settings_with(**{LIMIT + "warn_percent": 4.99}))


def test_only_a_lifetime_limit_may_not_resume_at_the_next_period():
    assert refused(settings_with(**{LIMIT + "period": "lifetime"})) == {"drawdown_limits.0.resume"}
    assert validate_settings(settings_with(**{LIMIT + "period": "week"}))


def test_the_stale_quote_limit_is_at_least_one_second():
    assert refused(settings_with(market__stale_quote_seconds=0)) == {"market.stale_quote_seconds"}
    one_second = validate_settings(settings_with(market__stale_quote_seconds=1))
    assert one_second["market"]["stale_quote_seconds"] == 1


@pytest.mark.parametrize("field", ["max_open_positions", "max_orders_per_minute"])
def test_an_order_count_limit_of_zero_is_allowed_and_means_none(field):
    assert validate_settings(settings_with(**{f"orders__{field}": 0}))["orders"][field] == 0
    assert refused(settings_with(**{f"orders__{field}": -1})) == {f"orders.{field}"}


def test_no_grace_is_allowed_and_at_least_one_confirmation_is_needed():
    assert validate_settings(settings_with(grace_seconds=0))["grace_seconds"] == 0
    assert refused(settings_with(confirmations=0)) == {"confirmations"}
    assert validate_settings(settings_with(confirmations=1))["confirmations"] == 1


def test_two_limits_may_not_share_a_name():
    document = default_settings()
    document["drawdown_limits"][1]["name"] = document["drawdown_limits"][0]["name"]
    assert refused(document) == {"drawdown_limits.1.name"}


def test_the_stored_document_keeps_the_numbers_as_the_owner_wrote_them():
    """Whole numbers are stored as integers, fractions as they were: 5 stays 5 (not 5.0), 5.1 stays 5.1."""
    loaded = validate_settings(settings_with(**{LIMIT + "max_percent": 5.1, LIMIT + "warn_percent": 4}))
    text = json.dumps(loaded["drawdown_limits"][0])
    assert '"warn_percent": 4,' in text and '"max_percent": 5.1,' in text


def test_the_typed_view_reads_the_stored_document_and_finds_limits_by_name():
    document = validate_settings(
        settings_with(
            grace_seconds=30,
            orders__symbols=["EURUSD", "GBPUSD"],
            **{LIMIT + "max_percent": 5.1, LIMIT + "name": "daily"},
        )
    )
    settings = RiskSettings.from_document(document)
    assert settings.grace_seconds == 30
    assert settings.orders.symbols == ("EURUSD", "GBPUSD")
    daily = settings.limit("daily")
    assert daily is not None and daily.max_percent == D("5.1") and daily.period == "day"
    assert settings.limit("max drawdown") is settings.drawdown_limits[1]
    assert settings.limit("nope") is None
    defaults = RiskSettings.from_document(None)
    assert defaults.grace_seconds == 10 and defaults.orders.symbols is None


def test_only_a_json_object_is_a_settings_document():
    with pytest.raises(InvalidInput) as caught:
        validate_settings([default_settings()])
    assert caught.value.fields == {"body": ["must be a JSON object"]}
    assert validate_settings(default_settings())["confirmations"] == 2


def test_the_defaults_are_valid_and_round_trip():
    assert validate_settings(default_settings()) == default_settings()
