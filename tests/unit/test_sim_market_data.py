"""What the risk guards read of the simulated terminal: order_calc_profit and order_calc_margin, the tick
history (copy_ticks_*) and the bars built from it (copy_rates_*), scripted price paths, closed markets and
stale quotes, and the trade server's UTC offset; and how the arrays cross to the gateway."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy
import pytest

from shared.mt5 import constants as C
from shared.mt5.arrays import RATE_FIELDS, TICK_FIELDS, from_bytes, rates_array
from shared.mt5.gateway import Gateway
from shared.mt5.sim.broker import SimBroker, SimError
from shared.mt5.sim.history import TickHistory, bar_open_times, bars
from shared.mt5.sim.state import load_state, save_state
from shared.mt5.sim.terminal import SimTerminal
from shared.mt5.wire import _REMOTE_HELPER, decode_answers, to_plain

START = 1_700_006_400  # 2023-11-15 00:00:00 UTC, a Wednesday: whole minutes, hours and a day
LOGIN = 1001
SERVER = "TradeGuard-Sim"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> SimBroker:
    return SimBroker(seed=7, clock=clock)


@pytest.fixture
def mt5(broker: SimBroker) -> SimTerminal:
    terminal = SimTerminal(broker)
    assert terminal.initialize(login=LOGIN, password="x", server=SERVER)
    terminal.sim_set_quote("EURUSD", 1.10000, 1.10010)
    terminal.sim_set_quote("USDJPY", 150.000, 150.012)
    return terminal


def send(mt5: SimTerminal, symbol: str, order_type: int, volume: float = 0.1, **extra: object) -> int:
    tick = mt5.symbol_info_tick(symbol)
    assert tick is not None
    price = tick.ask if order_type == C.ORDER_TYPE_BUY else tick.bid
    result = mt5.order_send(
        {"action": C.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume, "type": order_type,
         "price": price, "deviation": 10, "magic": 7, "comment": "md", **extra}
    )  # fmt: skip
    assert result is not None, mt5.last_error()
    return result.retcode


# ----- profit and margin ---------------------------------------------------------------------------------


def test_profit_of_a_buy_and_a_sell_in_the_account_currency(mt5: SimTerminal) -> None:
    assert mt5.order_calc_profit(C.ORDER_TYPE_BUY, "EURUSD", 1.0, 1.10000, 1.10300) == 300.0
    assert mt5.order_calc_profit(C.ORDER_TYPE_SELL, "EURUSD", 1.0, 1.10000, 1.10300) == -300.0
    assert mt5.order_calc_profit(C.ORDER_TYPE_SELL, "EURUSD", 0.5, 1.10300, 1.10000) == 150.0


def test_profit_in_another_currency_is_converted_at_the_simulators_rates(mt5: SimTerminal) -> None:
    # 300 points of USDJPY on one lot is 30000 JPY; at the mid 150.006 that is 199.99 USD.
    assert mt5.order_calc_profit(C.ORDER_TYPE_BUY, "USDJPY", 1.0, 150.0, 150.3) == round(30000 / 150.006, 2)


def test_an_open_positions_profit_is_what_order_calc_profit_says(mt5: SimTerminal) -> None:
    send(mt5, "USDJPY", C.ORDER_TYPE_SELL, 0.3)
    mt5.sim_set_quote("USDJPY", 149.100, 149.112)
    (position,) = mt5.positions_get() or ()
    expected = mt5.order_calc_profit(
        position.type, "USDJPY", position.volume, position.price_open, position.price_current
    )
    assert position.profit == expected and expected > 0


def test_margin_is_volume_times_contract_times_price_over_leverage_converted(mt5: SimTerminal) -> None:
    assert mt5.order_calc_margin(C.ORDER_TYPE_BUY, "EURUSD", 0.1, 1.1) == 110.0  # 0.1*100000*1.1/100
    assert mt5.order_calc_margin(C.ORDER_TYPE_SELL, "EURUSD", 1.0, 1.2) == 1200.0
    # USDJPY: 0.1 lot is 10000 USD, 100 USD of margin at 1:100 (through the yen at the given price).
    assert mt5.order_calc_margin(C.ORDER_TYPE_BUY, "USDJPY", 0.1, 150.006) == 100.0


def test_the_calculations_refuse_what_the_package_refuses(mt5: SimTerminal) -> None:
    assert mt5.order_calc_profit(C.ORDER_TYPE_BUY_LIMIT, "EURUSD", 1.0, 1.1, 1.2) is None
    assert mt5.last_error()[0] == C.RES_E_INVALID_PARAMS
    assert mt5.order_calc_margin(C.ORDER_TYPE_BUY, "NOSUCH", 1.0, 1.1) is None
    assert mt5.last_error()[0] == C.RES_E_NOT_FOUND
    assert mt5.order_calc_margin(C.ORDER_TYPE_BUY, "EURUSD", "1", 1.1) is None  # type: ignore[arg-type]


# ----- ticks -------------------------------------------------------------------------------------------


def test_ticks_are_recorded_as_prices_move_and_read_by_range_and_count(
    mt5: SimTerminal, clock: FakeClock
) -> None:
    for bid in (1.10010, 1.10020, 1.10030):
        clock.advance(10)
        mt5.sim_set_quote("EURUSD", bid, bid + 0.0001)
    ticks = mt5.copy_ticks_range("EURUSD", START + 10, START + 20, C.COPY_TICKS_ALL)
    assert ticks is not None and ticks.dtype.names == tuple(name for name, _ in TICK_FIELDS)
    assert ticks["bid"].tolist() == [1.1001, 1.1002]
    assert ticks["time"].tolist() == [START + 10, START + 20]
    assert ticks["time_msc"].tolist() == [(START + 10) * 1000, (START + 20) * 1000]
    after = mt5.copy_ticks_from("EURUSD", datetime.fromtimestamp(START + 15, UTC), 1, C.COPY_TICKS_ALL)
    assert after is not None and after["bid"].tolist() == [1.1002]
    everything = mt5.copy_ticks_from("EURUSD", 0, 1000, C.COPY_TICKS_ALL)
    assert everything is not None and everything["bid"][-1] == 1.1003 and len(everything) >= 4


def test_tick_flags_say_what_changed_and_select_the_kind(mt5: SimTerminal, clock: FakeClock) -> None:
    clock.advance(1)
    mt5.sim_set_spread("EURUSD", 30)  # the ask alone moves
    clock.advance(1)
    mt5.sim_set_quote("EURUSD", 1.10100, 1.10130)  # both move
    clock.advance(1)
    mt5.sim_set_quote("EURUSD", 1.10110, 1.10130)  # the bid alone moves
    ticks = mt5.copy_ticks_from("EURUSD", START + 1, 10, C.COPY_TICKS_INFO)
    assert ticks is not None
    assert ticks["flags"].tolist() == [C.TICK_FLAG_ASK, C.TICK_FLAG_BID | C.TICK_FLAG_ASK, C.TICK_FLAG_BID]
    trades = mt5.copy_ticks_from("EURUSD", START, 10, C.COPY_TICKS_TRADE)
    assert trades is not None and len(trades) == 0  # a forex feed has no last/volume ticks
    assert mt5.copy_ticks_from("EURUSD", START, 10, 99) is None
    assert mt5.last_error()[0] == C.RES_E_INVALID_PARAMS
    assert mt5.copy_ticks_range("NOSUCH", START, START + 1, C.COPY_TICKS_ALL) is None


def test_the_tick_history_keeps_the_last_ticks_only() -> None:
    history = TickHistory(capacity=3)
    for i in range(5):
        history.append(1000 * i, 1.0 + i, 2.0 + i, 6)
    times, bids, _, _ = history.columns()
    assert times.tolist() == [2000, 3000, 4000] and bids.tolist() == [3.0, 4.0, 5.0]
    history.append(500, 9.0, 9.5, 6)  # a clock stepped back: the tick keeps time order
    assert history.last() == (4000, 9.0, 9.5, 6)


# ----- bars ----------------------------------------------------------------------------------------------


def test_bars_are_built_from_known_ticks_at_timeframe_boundaries() -> None:
    # Ticks at 00:00:00, 00:00:30, 00:00:59.999, 00:01:00, 01:00:00 (seconds after START).
    msc = numpy.array([0, 30_000, 59_999, 60_000, 3_600_000], dtype=numpy.int64) + START * 1000
    bid = numpy.array([1.0, 1.3, 0.9, 1.1, 1.2])
    ask = bid + numpy.array([0.0002, 0.0001, 0.0003, 0.0002, 0.0002])
    m1 = bars(msc, bid, ask, timeframe=C.TIMEFRAME_M1, point=0.0001)
    assert [b[0] - START for b in m1] == [0, 60, 3600]
    assert m1[0][1:7] == (1.0, 1.3, 0.9, 0.9, 3, 1)  # open, high, low, close, ticks, lowest spread
    assert m1[1][1:6] == (1.1, 1.1, 1.1, 1.1, 1)
    h1 = bars(msc, bid, ask, timeframe=C.TIMEFRAME_H1, point=0.0001)
    assert [(b[0] - START, b[1], b[4], b[5]) for b in h1] == [(0, 1.0, 1.1, 4), (3600, 1.2, 1.2, 1)]
    # Three hours ahead of UTC: the same ticks fall in the server's 03:00 and 04:00 bars.
    shifted = bars(msc, bid, ask, timeframe=C.TIMEFRAME_H1, point=0.0001, offset_seconds=3 * 3600)
    assert [b[0] - START for b in shifted] == [3 * 3600, 4 * 3600]


def test_days_weeks_and_months_open_where_mt5_opens_them() -> None:
    wednesday_noon = numpy.array([START + 12 * 3600])
    assert bar_open_times(wednesday_noon, C.TIMEFRAME_D1).tolist() == [START]
    sunday = datetime(2023, 11, 12, tzinfo=UTC).timestamp()  # weeks open on Sunday 00:00
    assert bar_open_times(wednesday_noon, C.TIMEFRAME_W1).tolist() == [sunday]
    assert bar_open_times(wednesday_noon, C.TIMEFRAME_MN1).tolist() == [
        datetime(2023, 11, 1, tzinfo=UTC).timestamp()
    ]
    with pytest.raises(ValueError):
        bar_open_times(wednesday_noon, 7)


def test_copy_rates_read_bars_by_date_position_and_range(mt5: SimTerminal, clock: FakeClock) -> None:
    mt5.sim_price_path("EURUSD", [1.1001, 1.1005, 1.0999, 1.1002, 1.1010, 1.1008], 30)
    clock.advance(150)
    mt5.symbol_info_tick("EURUSD")  # the broker catches up with its clock
    rates = mt5.copy_rates_range("EURUSD", C.TIMEFRAME_M1, START, START + 3600)
    assert rates is not None and rates.dtype.names == tuple(name for name, _ in RATE_FIELDS)
    # 00:00 holds the start price (1.085), the fixture's pinned one (1.1) and the points at 0 s and 30 s;
    # then those at 60 and 90 s, 120 and 150 s.
    assert [tuple(r)[:6] for r in rates.tolist()] == [
        (START, 1.085, 1.1005, 1.085, 1.1005, 4),
        (START + 60, 1.0999, 1.1002, 1.0999, 1.1002, 2),
        (START + 120, 1.101, 1.101, 1.1008, 1.1008, 2),
    ]
    last_two = mt5.copy_rates_from_pos("EURUSD", C.TIMEFRAME_M1, 0, 2)
    assert last_two is not None and last_two["time"].tolist() == [START + 60, START + 120]
    before = mt5.copy_rates_from("EURUSD", C.TIMEFRAME_M1, START + 119, 5)
    assert before is not None and before["time"].tolist() == [START, START + 60]
    assert mt5.copy_rates_from_pos("EURUSD", C.TIMEFRAME_M1, 1, 1)["time"].tolist() == [START + 60]  # type: ignore[index]
    assert mt5.copy_rates_range("EURUSD", 7, START, START + 60) is None


# ----- price paths, closed markets, stale quotes ---------------------------------------------------------


def test_a_price_path_moves_one_point_per_interval_and_fires_stops_on_the_way(
    mt5: SimTerminal, clock: FakeClock
) -> None:
    assert send(mt5, "EURUSD", C.ORDER_TYPE_BUY, sl=1.0995) == C.TRADE_RETCODE_DONE
    mt5.sim_price_path("EURUSD", [1.1000, 1.0990, 1.1020], 5)
    tick = mt5.symbol_info_tick("EURUSD")
    assert tick is not None and tick.bid == 1.1 and tick.ask == 1.1001  # ask = bid + the spread
    clock.advance(4.9)
    assert (mt5.symbol_info_tick("EURUSD") or pytest.fail()).bid == 1.1  # not due yet
    clock.advance(60)  # both points are due: each is a tick at its own time
    assert (mt5.symbol_info_tick("EURUSD") or pytest.fail()).bid == 1.102
    ticks = mt5.copy_ticks_from("EURUSD", START + 1, 10, C.COPY_TICKS_ALL)
    assert ticks is not None and [
        (t - START, b) for t, b in zip(ticks["time"], ticks["bid"], strict=True)
    ] == [
        (5, 1.099),
        (10, 1.102),
    ]
    assert mt5.positions_get() == ()  # the stop at 1.0995 fired at the 1.0990 point, though it came back
    closing = (mt5.history_deals_get(START, START + 100) or ())[-1]
    assert closing.reason == C.DEAL_REASON_SL and closing.price == 1.099 and closing.time == START + 5
    clock.advance(60)
    assert (mt5.symbol_info_tick("EURUSD") or pytest.fail()).bid == 1.102  # the last point stays
    with pytest.raises(SimError):
        mt5.sim_price_path("EURUSD", [], 5)


def test_a_closed_market_has_no_ticks_refuses_orders_and_opens_with_its_gap(
    mt5: SimTerminal, clock: FakeClock
) -> None:
    assert send(mt5, "EURUSD", C.ORDER_TYPE_BUY, sl=1.0950) == C.TRADE_RETCODE_DONE
    mt5.sim_release_quote("EURUSD")
    mt5.sim_market_closed("EURUSD", True)
    before = mt5.symbol_info_tick("EURUSD")
    clock.advance(3600)
    mt5.sim_gap("EURUSD", -1.0)  # the weekend's move: through the stop, while nothing executes
    assert mt5.symbol_info_tick("EURUSD") == before  # no tick, the quote's time stays
    info = mt5.symbol_info("EURUSD")
    assert info is not None and info.trade_mode == C.SYMBOL_TRADE_MODE_DISABLED
    assert send(mt5, "EURUSD", C.ORDER_TYPE_SELL) == C.TRADE_RETCODE_MARKET_CLOSED
    assert len(mt5.positions_get() or ()) == 1  # the stop waits
    none = mt5.copy_ticks_from("EURUSD", START + 1, 10, C.COPY_TICKS_ALL)
    assert none is not None and len(none) == 0
    clock.advance(60)
    mt5.sim_market_closed("EURUSD", False)
    opening = mt5.copy_ticks_from("EURUSD", START + 1, 10, C.COPY_TICKS_ALL)
    assert opening is not None and opening["time"].tolist() == [START + 3660]
    assert opening["bid"][0] < 1.095
    assert mt5.positions_get() == ()  # the stop fired at the open, beyond its level
    assert (mt5.symbol_info("EURUSD") or pytest.fail()).trade_mode == C.SYMBOL_TRADE_MODE_FULL


def test_stale_quotes_stop_ticking_while_the_symbol_still_trades(mt5: SimTerminal, clock: FakeClock) -> None:
    mt5.sim_release_quote("EURUSD")
    clock.advance(5)
    mt5.sim_stop_quotes("EURUSD")
    tick = mt5.symbol_info_tick("EURUSD")
    clock.advance(600)
    assert mt5.symbol_info_tick("EURUSD") == tick
    assert tick is not None and tick.time == START + 5
    assert send(mt5, "EURUSD", C.ORDER_TYPE_BUY) == C.TRADE_RETCODE_DONE
    mt5.sim_stop_quotes("EURUSD", False)
    clock.advance(5)
    assert (mt5.symbol_info_tick("EURUSD") or pytest.fail()).time == START + 610


# ----- the server's UTC offset ----------------------------------------------------------------------------


def test_the_server_offset_shifts_every_time_the_terminal_reports(mt5: SimTerminal, clock: FakeClock) -> None:
    send(mt5, "EURUSD", C.ORDER_TYPE_BUY)
    plain = (mt5.positions_get() or ())[0]
    assert plain.time == START  # offset 0: UTC, as before
    mt5.sim_set_server_offset(3)
    hours = 3 * 3600
    tick = mt5.symbol_info_tick("EURUSD")
    assert tick is not None and tick.time - clock() == hours  # what a guard learns the offset from
    assert (mt5.symbol_info("EURUSD") or pytest.fail()).time == tick.time
    position = (mt5.positions_get() or ())[0]
    assert position.time == START + hours and position.time_msc == (START + hours) * 1000
    deals = mt5.history_deals_get(START + hours, START + hours)  # bounds read in the server's time
    assert deals and all(d.time == START + hours for d in deals)
    orders = mt5.history_orders_get(START + hours, START + hours)
    assert orders and orders[0].time_setup == START + hours
    ticks = mt5.copy_ticks_range("EURUSD", START + hours, START + hours, C.COPY_TICKS_ALL)
    assert ticks is not None and len(ticks) >= 1 and ticks["time"][0] == START + hours
    rates = mt5.copy_rates_from_pos("EURUSD", C.TIMEFRAME_H1, 0, 1)
    assert rates is not None and rates["time"].tolist() == [START + hours]
    with pytest.raises(SimError):
        mt5.sim_set_server_offset(15)


def test_deals_stamped_in_server_time_stay_in_reconciliations_window() -> None:
    broker = SimBroker(seed=7)  # the real clock: the gateway compares the server's time with it
    broker.set_server_offset(2)
    terminal = SimTerminal(broker)
    with Gateway.from_module(terminal, login=LOGIN, password="x", server=SERVER, timeout=5) as gw:
        now = datetime.now(UTC)
        terminal.sim_set_quote("EURUSD", 1.1, 1.1001)
        request = Gateway.market_order_request(
            symbol="EURUSD", side="buy", volume=Decimal("0.1"), price=Decimal("1.1001"), sl=None, tp=None,
            deviation_points=10, magic=5, comment="offset",
        )  # fmt: skip
        assert gw.send_order(request).done
        # Reconciliation's window (a day either side of now) still holds the deal stamped 2 h ahead.
        state = gw.read_account(now - timedelta(days=1), now + timedelta(days=1))
        assert [d.comment for d in state.deals if d.magic == 5] == ["offset"]
        assert abs(state.positions[0].opened_at - (now + timedelta(hours=2))) < timedelta(seconds=5)


def test_the_offset_is_kept_across_restarts_and_the_ticks_are_not(broker: SimBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker.set_server_offset(-5.5)
    broker.set_market_closed("GBPUSD", True)
    path = tmp_path / "sim-state.json"
    save_state(broker, path)
    assert "history" not in path.read_text()
    restored = SimBroker(seed=7, clock=FakeClock(START + 60))
    assert load_state(restored, path)
    assert restored.server_offset_seconds == -5.5 * 3600
    assert (restored.symbol_info("GBPUSD") or pytest.fail()).trade_mode == C.SYMBOL_TRADE_MODE_DISABLED
    ticks = restored.ticks("EURUSD", 0, flags=C.COPY_TICKS_ALL)
    assert ticks is not None and len(ticks) == 1  # only its start price


# ----- arrays on the wire -------------------------------------------------------------------------------


def test_arrays_cross_to_the_gateway_as_rows_of_plain_numbers() -> None:
    rates = rates_array([(START, 1.1, 1.2, 1.0, 1.15, 12, 10, 0)])
    assert to_plain(rates) == [
        {"time": START, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15, "tick_volume": 12, "spread": 10,
         "real_volume": 0}
    ]  # fmt: skip
    namespace: dict[str, object] = {"mt5": None}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - our own source: the terminal side's conversion
    sent = json.dumps([(namespace["_tradeguard_compact"](rates), None)])  # type: ignore[operator]
    ((rows, error),) = decode_answers(sent, 1)
    assert error is None and rows == [
        {
            "time": START,
            "open": "1.1",
            "high": "1.2",
            "low": "1.0",
            "close": "1.15",
            "tick_volume": 12,
            "spread": 10,
            "real_volume": 0,
        }
    ]  # fmt: skip (fractions come back as their text, as every number the gateway reads)


def test_arrays_are_rebuilt_from_bytes_in_the_official_layouts_only() -> None:
    rates = rates_array([(START, 1.1, 1.2, 1.0, 1.15, 12, 10, 0)])
    names = rates.dtype.names or ()
    types = tuple(rates.dtype[n].str for n in names)
    assert from_bytes(names, types, rates.tobytes()).tolist() == rates.tolist()
    with pytest.raises(ValueError):
        from_bytes(("time", "obj"), ("<i8", "|O"), b"")
    with pytest.raises(ValueError):
        from_bytes(names, types, rates.tobytes()[:-1])
