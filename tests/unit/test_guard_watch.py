"""The watch's estimate between syncs: equity from the last sync plus each position's move at the
current quotes, and when that estimate calls for a reading now."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

from shared.guards.watch import (
    WatchedAccount,
    WatchedPosition,
    breaches,
    estimate_equity,
    needs_reading,
)
from shared.mt5.types import Quote, SymbolSpec

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def spec(name="EURUSD", tick_size="0.00001", tick_value="1"):
    return SymbolSpec(
        name=name,
        digits=5,
        point=D("0.00001"),
        contract_size=D(100000),
        tick_value=D(tick_value),
        tick_size=D(tick_size),
        volume_min=D("0.01"),
        volume_max=D(100),
        volume_step=D("0.01"),
        stops_level_points=0,
        trade_allowed=True,
    )


def account(positions, limits=(), min_margin=None, margin="0", equity="10000"):
    return WatchedAccount(1, D(equity), D(margin), tuple(positions), tuple(limits), min_margin)


def quote(bid, ask):
    return Quote("EURUSD", D(bid), D(ask), NOW)


def test_a_buy_moves_with_the_bid_and_a_sell_with_the_ask():
    buy = WatchedPosition("EURUSD", "buy", D(1), D("1.08500"))
    sell = WatchedPosition("EURUSD", "sell", D("0.5"), D("1.08510"))
    quotes = {"EURUSD": quote("1.08300", "1.08320")}
    # Buy: 200 ticks down x 1 USD x 1 lot = -200; sell: 190 ticks in its favour x 0.5 lot = +95.
    assert estimate_equity(account([buy]), quotes, {"EURUSD": spec()}) == D(9800)
    assert estimate_equity(account([sell]), quotes, {"EURUSD": spec()}) == D(10095)
    assert estimate_equity(account([buy, sell]), quotes, {"EURUSD": spec()}) == D(9895)


def test_the_tick_value_and_size_convert_the_move_to_the_account_currency():
    buy = WatchedPosition("USDJPY", "buy", D(2), D("150.000"))
    jpy = spec("USDJPY", tick_size="0.001", tick_value="0.67")
    quotes = {"USDJPY": Quote("USDJPY", D("149.900"), D("149.910"), NOW)}
    assert estimate_equity(account([buy]), quotes, {"USDJPY": jpy}) == D(10000) - D(100) * D("0.67") * 2


def test_a_symbol_without_a_quote_is_taken_as_unmoved():
    buy = WatchedPosition("GBPUSD", "buy", D(1), D("1.27000"))
    assert estimate_equity(account([buy]), {}, {}) == D(10000)


def test_a_reading_is_needed_at_a_maximum_or_an_unsent_warning_and_not_below():
    limits = [(D(10000), D(4), D(5), None, False)]
    assert not needs_reading(account([], limits), D("9601"))
    assert needs_reading(account([], limits), D(9600))  # the warning, not yet sent
    warned = [(D(10000), D(4), D(5), None, True)]
    assert not needs_reading(account([], warned), D(9600))  # sent already: wait for the maximum
    assert needs_reading(account([], warned), D(9500))
    by_amount = [(D(10000), None, None, D(300), True)]
    assert not needs_reading(account([], by_amount), D("9700.01"))
    assert needs_reading(account([], by_amount), D(9700))


def test_a_reading_is_needed_under_the_margin_minimum():
    assert needs_reading(account([], min_margin=D(150), margin="6700"), D(10000))  # 149.25 %
    assert not needs_reading(account([], min_margin=D(150), margin="6600"), D(10000))  # 151.5 %
    assert not needs_reading(account([], min_margin=D(150), margin="0"), D(10000))


def test_the_margin_minimum_itself_is_no_reason_to_read():
    assert not needs_reading(account([], min_margin=D(150), margin="6000"), D(9000))  # exactly 150 %
    assert needs_reading(account([], min_margin=D(150), margin="6000"), D("8999.99"))


def test_a_zero_reference_never_calls_for_a_reading():
    assert not needs_reading(account([], [(D(0), D(4), D(5), None, False)]), D(0))


def test_an_estimate_breaches_at_a_maximum_in_percent_or_amount_not_at_a_warning():
    """Only a breach stands for a confirmation (engine.record_reading's `presumed`); a warning is read."""
    limits = [(D(10000), D(4), D(5), None, False)]
    assert not breaches(account([], limits), D(9600))  # the warning: read, but presumes nothing
    assert not breaches(account([], limits), D("9500.01"))
    assert breaches(account([], limits), D(9500))  # exactly the maximum breaches, as the engine says
    by_amount = [(D(10000), None, None, D(300), False)]
    assert not breaches(account([], by_amount), D("9700.01"))
    assert breaches(account([], by_amount), D(9700))
    # Either limit of several: the second one's maximum is reached first here.
    two = [(D(10000), None, D(5), None, False), (D(9800), None, D(2), None, False)]
    assert not breaches(account([], two), D("9604.01"))
    assert breaches(account([], two), D(9604))


def test_an_estimate_breaches_under_the_margin_minimum_not_at_it():
    assert breaches(account([], min_margin=D(150), margin="6000"), D("8999.99"))
    assert not breaches(account([], min_margin=D(150), margin="6000"), D(9000))
    assert not breaches(account([], min_margin=D(150), margin="0"), D(1))  # no margin used: no level
    assert not breaches(account([], [(D(0), D(4), D(5), None, False)]), D(-5))  # a zero reference
