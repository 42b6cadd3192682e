"""The pre-trade risk rules (shared.execution.risk): each order limit on both sides of its boundary
(exactly at a limit is allowed, past it is not), the halt, the market guard's blocks, and the risk of an
SL from the symbol's tick value."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest

from shared.execution import risk
from shared.guards.settings import OrderLimits
from shared.mt5.gateway import Gateway
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.terminal import SimTerminal
from shared.mt5.types import SymbolSpec

EURUSD = SymbolSpec(
    name="EURUSD",
    digits=5,
    point=D("0.00001"),
    contract_size=D(100000),
    tick_value=D(1),
    tick_size=D("0.00001"),
    volume_min=D("0.01"),
    volume_max=D(100),
    volume_step=D("0.01"),
    stops_level_points=10,
    trade_allowed=True,
)
# An index future: quoted to 0.01, moving in ticks of 0.25 worth 12.50 a lot.
INDEX = replace(EURUSD, name="US500", digits=2, point=D("0.01"), tick_size=D("0.25"), tick_value=D("12.5"))

OFF = OrderLimits(
    max_lots_per_order=None,
    max_open_positions=None,
    max_total_lots=None,
    max_orders_per_minute=None,
    max_risk_percent_per_trade=None,
    symbols=None,
)


def problems(limits: OrderLimits, **order):
    args = {"symbol": "EURUSD", "volume": D(1), "price": D("1.10000"), "sl": None, "spec": EURUSD, **order}
    return risk.order_limit_problems(limits=limits, **args)


def test_with_every_limit_off_nothing_is_refused_and_nothing_is_needed():
    assert problems(OFF, volume=D(100)) == []
    assert not risk.needs_positions(OFF)
    assert not risk.needs_equity(OFF, D("1.09"))
    assert not risk.needs_recent_orders(OFF)


def test_lots_per_order_at_the_limit_pass_and_above_it_are_refused():
    limits = replace(OFF, max_lots_per_order=D(5))
    assert problems(limits, volume=D(5)) == []
    assert problems(limits, volume=D("5.01")) == ["volume 5.01 lots > 5 (max_lots_per_order)"]
    assert problems(limits, volume=D(6)) == ["volume 6 lots > 5 (max_lots_per_order)"]


def test_open_positions_count_the_order_itself():
    limits = replace(OFF, max_open_positions=20)
    assert risk.needs_positions(limits)
    assert problems(limits, open_positions=[("EURUSD", D("0.1"))] * 19) == []  # the order makes 20
    assert problems(limits, open_positions=[("EURUSD", D("0.1"))] * 20) == [
        "21 open positions > 20 (max_open_positions)"
    ]


def test_zero_open_positions_allowed_refuses_every_order():
    assert problems(replace(OFF, max_open_positions=0), open_positions=[]) == [
        "1 open positions > 0 (max_open_positions)"
    ]
    assert problems(replace(OFF, max_open_positions=1), open_positions=[]) == []


def test_total_lots_add_the_order_to_every_open_position():
    limits = replace(OFF, max_total_lots=D(20))
    assert risk.needs_positions(limits)
    open_positions = [("EURUSD", D(10)), ("XAUUSD", D("9.5"))]
    assert problems(limits, volume=D("0.5"), open_positions=open_positions) == []  # exactly 20
    assert problems(limits, volume=D(1), open_positions=open_positions) == [
        "total 20.5 lots > 20 (max_total_lots)"
    ]


def test_orders_per_minute_count_the_order_itself():
    limits = replace(OFF, max_orders_per_minute=10)
    assert risk.needs_recent_orders(limits)
    assert problems(limits, orders_last_minute=9) == []
    assert problems(limits, orders_last_minute=10) == [
        "11 orders in the last minute > 10 (max_orders_per_minute)"
    ]


def test_only_the_allowed_symbols_pass():
    limits = replace(OFF, symbols=("XAUUSD", "GBPUSD"))
    assert problems(limits, symbol="XAUUSD") == []
    assert problems(limits) == ["EURUSD is not in the allowed symbols (symbols)"]
    assert problems(replace(OFF, symbols=()), symbol="XAUUSD") == [
        "XAUUSD is not in the allowed symbols (symbols)"
    ]
    assert problems(replace(OFF, symbols=("eurusd",))) == ["EURUSD is not in the allowed symbols (symbols)"]


def test_the_risk_of_an_sl_is_its_distance_in_ticks_times_the_tick_value_times_the_lots():
    # 200 points of 1 USD a lot, on 1 lot.
    assert risk.risk_amount(price=D("1.10000"), sl=D("1.09800"), volume=D(1), spec=EURUSD) == D(200)
    # A sell's SL is above: the distance counts, not its sign. 0.5 lots: half.
    assert risk.risk_amount(price=D("1.10000"), sl=D("1.10200"), volume=D("0.5"), spec=EURUSD) == D(100)
    # 10 points of the index are 40 ticks of 0.25, each worth 12.50: 500 a lot (not 1000 points' worth).
    assert risk.risk_amount(price=D(5000), sl=D(4990), volume=D(1), spec=INDEX) == D(500)


def test_risk_per_trade_at_the_limit_passes_and_above_it_is_refused():
    limits = replace(OFF, max_risk_percent_per_trade=D(2))
    order = {"price": D("1.10000"), "sl": D("1.09800")}  # 200 USD at the SL on 1 lot
    assert risk.needs_equity(limits, order["sl"])
    assert problems(limits, **order, equity=D(10000)) == []  # exactly 2 %
    (refused,) = problems(limits, **order, equity=D(9999))  # 2.0002 %: shown with the places it takes
    assert refused == "risk 2.0002% of equity > 2% (max_risk_percent_per_trade): 200 at the SL, equity 9999"
    (refused,) = problems(limits, **order, equity=D("9999.99"))  # 2.000002 %
    assert refused.startswith("risk 2.0001% of equity > 2%")
    (refused,) = problems(limits, **order, equity=D("6451.61"))
    assert refused.startswith("risk 3.1% of equity > 2% (max_risk_percent_per_trade)")


def test_risk_per_trade_on_a_symbol_whose_tick_is_not_its_point():
    limits = replace(OFF, max_risk_percent_per_trade=D(5))
    order = {"symbol": "US500", "spec": INDEX, "price": D(5000), "sl": D(4990)}  # 500 at the SL
    assert problems(limits, **order, equity=D(10000)) == []  # 5 %
    assert problems(limits, **order, equity=D("9999"))[0].startswith("risk 5.0005% of equity > 5%")


def test_an_order_without_an_sl_is_refused_while_the_risk_limit_is_set_without_reading_equity():
    limits = replace(OFF, max_risk_percent_per_trade=D(2))
    assert not risk.needs_equity(limits, None)
    assert problems(limits, sl=None) == ["no SL: max_risk_percent_per_trade needs one"]
    assert problems(OFF, sl=None) == []


def test_no_equity_leaves_no_room_for_risk():
    limits = replace(OFF, max_risk_percent_per_trade=D(2))
    assert problems(limits, sl=D("1.09999"), equity=D(0)) == [
        "equity 0 leaves no room for any risk (max_risk_percent_per_trade)"
    ]


def test_a_figure_a_set_limit_needs_must_be_given():
    with pytest.raises(ValueError):
        problems(replace(OFF, max_open_positions=3))
    with pytest.raises(ValueError):
        problems(replace(OFF, max_orders_per_minute=3))
    with pytest.raises(ValueError):
        problems(replace(OFF, max_risk_percent_per_trade=D(1)), sl=D("1.09"))


def test_every_broken_limit_is_named_at_once():
    limits = OrderLimits(
        max_lots_per_order=D(1),
        max_open_positions=1,
        max_total_lots=D(1),
        max_orders_per_minute=1,
        max_risk_percent_per_trade=D(1),
        symbols=("XAUUSD",),
    )
    found = problems(
        limits,
        volume=D(2),
        sl=D("1.09800"),
        open_positions=[("XAUUSD", D(1))],
        orders_last_minute=1,
        equity=D(10000),
    )
    assert [problem.split("(")[1].split(")")[0] for problem in found] == [
        "symbols",
        "max_lots_per_order",
        "max_open_positions",
        "max_total_lots",
        "max_orders_per_minute",
        "max_risk_percent_per_trade",
    ]
    assert found[-1].startswith("risk 4% of equity > 1%")  # 400 on 2 lots


def test_a_halted_account_and_a_blocked_symbol_are_refused_with_the_reason():
    assert risk.guard_problems(symbol="EURUSD", halted=False, halted_reason=None, blocked_symbols={}) == []
    assert risk.guard_problems(
        symbol="EURUSD", halted=True, halted_reason="daily loss 5.2% > 5%", blocked_symbols={}
    ) == ["account halted: daily loss 5.2% > 5%; resume it first"]
    blocked = {
        "XAUUSD": {"reason": "spread 45 pips > 20", "since": "2026-11-30T10:00:00+00:00", "kind": "spread"}
    }
    assert (
        risk.guard_problems(symbol="EURUSD", halted=False, halted_reason=None, blocked_symbols=blocked) == []
    )
    assert risk.guard_problems(
        symbol="XAUUSD", halted=False, halted_reason=None, blocked_symbols=blocked
    ) == ["XAUUSD blocked by the market guard: spread 45 pips > 20"]


def test_an_alert_closing_the_accounts_positions_refuses_every_order_with_its_figures():
    alert = "alert 12 (max drawdown: drawdown 10.4%) closes at 2026-12-01 10:00:10+00"
    assert risk.guard_problems(
        symbol="EURUSD", halted=False, halted_reason=None, blocked_symbols={}, live_alert=alert
    ) == [f"a guard is closing the account's positions: {alert}"]
    assert (
        risk.guard_problems(
            symbol="EURUSD", halted=False, halted_reason=None, blocked_symbols={}, live_alert=None
        )
        == []
    )


def test_the_gateway_reads_the_tick_size_and_value_of_the_simulated_terminal():
    terminal = SimTerminal(SimBroker(seed=1))
    with Gateway.from_module(
        terminal, login=1001, password="x", server="TradeGuard-Sim", timeout=5
    ) as gateway:
        eurusd, xauusd = gateway.symbol("EURUSD"), gateway.symbol("XAUUSD")
    assert (eurusd.tick_size, eurusd.tick_value) == (D("0.00001"), D(1))  # 1 point of 100 000 EUR
    assert (xauusd.tick_size, xauusd.tick_value) == (D("0.01"), D(1))  # 1 cent of 100 oz
