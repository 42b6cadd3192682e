"""The simulated MT5 terminal (shared.mt5.sim): official conventions, fills, broker-side events, faults."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.mt5 import constants as C
from shared.mt5 import structs
from shared.mt5.sim import broker as broker_module
from shared.mt5.sim.broker import SEED_ENV, SimBroker, SimError, default_broker
from shared.mt5.sim.install import install_as_metatrader5
from shared.mt5.sim.terminal import TERMINAL_BUILD, TERMINAL_BUILD_DATE, SimTerminal

START = 1_700_000_000  # 2023-11-14 22:13:20 UTC, unix seconds
LOGIN = 1001


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
    assert terminal.initialize(login=LOGIN, password="anything", server="TradeGuard-Sim")
    # Pinned quotes make every price in these tests exact.
    terminal.sim_set_quote("EURUSD", 1.10000, 1.10010)
    terminal.sim_set_quote("USDJPY", 150.000, 150.012)
    terminal.sim_set_quote("XAUUSD", 2000.00, 2000.30)
    return terminal


def deal_request(symbol: str, order_type: int, volume: float, **extra: Any) -> dict[str, Any]:
    return {
        "action": C.TRADE_ACTION_DEAL,
        "symbol": symbol,
        "volume": volume,
        "type": order_type,
        "deviation": 10,
        "magic": 424242,
        "comment": "TG-1",
        "type_filling": C.ORDER_FILLING_IOC,
        **extra,
    }


def buy(
    mt5: SimTerminal, volume: float = 0.1, symbol: str = "EURUSD", **extra: Any
) -> structs.OrderSendResult:
    tick = mt5.symbol_info_tick(symbol)
    assert tick is not None
    result = mt5.order_send(deal_request(symbol, C.ORDER_TYPE_BUY, volume, price=tick.ask, **extra))
    assert result is not None, mt5.last_error()
    return result


def sell(
    mt5: SimTerminal, volume: float = 0.1, symbol: str = "EURUSD", **extra: Any
) -> structs.OrderSendResult:
    tick = mt5.symbol_info_tick(symbol)
    assert tick is not None
    result = mt5.order_send(deal_request(symbol, C.ORDER_TYPE_SELL, volume, price=tick.bid, **extra))
    assert result is not None, mt5.last_error()
    return result


def positions(mt5: SimTerminal) -> tuple[structs.TradePosition, ...]:
    found = mt5.positions_get()
    assert found is not None
    return found


def account(mt5: SimTerminal) -> structs.AccountInfo:
    info = mt5.account_info()
    assert info is not None
    return info


def deals_of(mt5: SimTerminal, position: int) -> tuple[structs.TradeDeal, ...]:
    deals = mt5.history_deals_get(position=position)
    assert deals is not None
    return deals


# ----- conventions ------------------------------------------------------------------------------------


def test_calls_before_initialize_fail_like_the_package(broker: SimBroker) -> None:
    mt5 = SimTerminal(broker)
    assert mt5.account_info() is None
    assert mt5.last_error() == (C.RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
    assert mt5.symbol_info_tick("EURUSD") is None
    assert mt5.order_send(deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1)) is None
    assert mt5.login(LOGIN, "pw") is False


def test_demo_broker_opens_any_account_with_10000_usd(broker: SimBroker) -> None:
    mt5 = SimTerminal(broker)
    assert mt5.initialize(login=5555, password="whatever") is True
    assert mt5.last_error() == (C.RES_S_OK, "Success")
    info = account(mt5)
    assert (info.login, info.balance, info.equity, info.currency, info.leverage) == (
        5555,
        10000.0,
        10000.0,
        "USD",
        100,
    )
    assert (info.margin, info.margin_free, info.margin_level) == (0.0, 10000.0, 0.0)
    assert info.server == "TradeGuard-Sim"
    assert info.margin_mode == C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
    assert mt5.version() == (500, TERMINAL_BUILD, TERMINAL_BUILD_DATE)
    terminal = mt5.terminal_info()
    assert terminal is not None and terminal.connected and terminal.trade_allowed


def test_configured_broker_refuses_wrong_credentials(clock: FakeClock) -> None:
    broker = SimBroker(
        clock=clock,
        accounts={
            2001: {"password": "right", "balance": 5000, "currency": "USD", "leverage": 50},
            2002: {"password": "other", "balance": 750.5},
        },
    )
    mt5 = SimTerminal(broker)
    assert mt5.initialize(login=2001, password="wrong") is False
    assert mt5.last_error()[0] == C.RES_E_AUTH_FAILED
    assert mt5.initialize(login=9999, password="right") is False  # not configured: no demo accounts
    assert mt5.last_error()[0] == C.RES_E_AUTH_FAILED
    assert mt5.initialize(login=2001, password="right", server="Elsewhere-Live") is False

    assert mt5.initialize(login=2001, password="right") is True
    info = account(mt5)
    assert (info.login, info.balance, info.leverage) == (2001, 5000.0, 50)

    assert mt5.login(2002, password="nope") is False
    assert mt5.last_error()[0] == C.RES_E_AUTH_FAILED
    assert mt5.account_info() is None  # a refused login leaves the terminal logged out
    assert mt5.login(2002, password="other") is True
    assert account(mt5).balance == 750.5


def test_login_with_a_wrong_type_is_an_invalid_params_error(mt5: SimTerminal) -> None:
    assert mt5.login("1001", password="x") is False  # type: ignore[arg-type]
    assert mt5.last_error() == (C.RES_E_INVALID_PARAMS, 'Invalid "login" argument')


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRADE_ACTION_DEAL", 1),
        ("TRADE_ACTION_PENDING", 5),
        ("TRADE_ACTION_SLTP", 6),
        ("TRADE_ACTION_CLOSE_BY", 10),
        ("ORDER_TYPE_BUY", 0),
        ("ORDER_TYPE_SELL", 1),
        ("ORDER_TYPE_CLOSE_BY", 8),
        ("ORDER_FILLING_FOK", 0),
        ("ORDER_FILLING_IOC", 1),
        ("ORDER_FILLING_RETURN", 2),
        ("ORDER_FILLING_BOC", 3),
        ("ORDER_TIME_SPECIFIED_DAY", 3),
        ("ORDER_STATE_FILLED", 4),
        ("ORDER_STATE_REQUEST_CANCEL", 9),
        ("ORDER_REASON_SO", 6),
        ("POSITION_TYPE_SELL", 1),
        ("POSITION_REASON_CLIENT", 0),
        ("POSITION_REASON_EXPERT", 3),
        ("DEAL_TYPE_BALANCE", 2),
        ("DEAL_TAX", 17),
        ("DEAL_ENTRY_OUT", 1),
        ("DEAL_ENTRY_OUT_BY", 3),
        ("DEAL_REASON_SL", 4),
        ("DEAL_REASON_TP", 5),
        ("DEAL_REASON_SO", 6),
        ("DEAL_REASON_SPLIT", 9),
        ("TRADE_RETCODE_REQUOTE", 10004),
        ("TRADE_RETCODE_REJECT", 10006),
        ("TRADE_RETCODE_DONE", 10009),
        ("TRADE_RETCODE_DONE_PARTIAL", 10010),
        ("TRADE_RETCODE_INVALID", 10013),
        ("TRADE_RETCODE_INVALID_VOLUME", 10014),
        ("TRADE_RETCODE_INVALID_STOPS", 10016),
        ("TRADE_RETCODE_MARKET_CLOSED", 10018),
        ("TRADE_RETCODE_NO_MONEY", 10019),
        ("TRADE_RETCODE_PRICE_CHANGED", 10020),
        ("TRADE_RETCODE_INVALID_CLOSE_VOLUME", 10038),
        ("TRADE_RETCODE_FIFO_CLOSE", 10045),
        ("SYMBOL_TRADE_MODE_DISABLED", 0),
        ("SYMBOL_TRADE_MODE_FULL", 4),
        ("SYMBOL_CALC_MODE_CFDLEVERAGE", 4),
        ("SYMBOL_CALC_MODE_EXCH_STOCKS", 32),
        ("SYMBOL_CALC_MODE_SERV_COLLATERAL", 64),
        ("ACCOUNT_TRADE_MODE_REAL", 2),
        ("ACCOUNT_STOPOUT_MODE_MONEY", 1),
        ("ACCOUNT_MARGIN_MODE_RETAIL_HEDGING", 2),
        ("RES_S_OK", 1),
        ("RES_E_FAIL", -1),
        ("RES_E_INVALID_PARAMS", -2),
        ("RES_E_NOT_FOUND", -4),
        ("RES_E_AUTH_FAILED", -6),
        ("RES_E_AUTO_TRADING_DISABLED", -8),
        ("RES_E_INTERNAL_FAIL", -10000),
        ("RES_E_INTERNAL_FAIL_INIT", -10003),
        ("RES_E_INTERNAL_FAIL_CONNECT", -10004),
        ("RES_E_INTERNAL_FAIL_TIMEOUT", -10005),
        ("TIMEFRAME_H1", 0x4001),
        ("TIMEFRAME_MN1", 0xC001),
    ],
)
def test_constants_have_the_official_values(name: str, value: int) -> None:
    # Values read from MetaTrader5/__init__.py in the metatrader5-5.0.6231 Windows wheel.
    assert getattr(C, name) == value


def test_constants_name_the_wheel_they_were_checked_against() -> None:
    assert C.OFFICIAL_PACKAGE_VERSION == "5.0.6231"


OFFICIAL_FIELDS = {
    structs.TradePosition: (
        "ticket time time_msc time_update time_update_msc type magic identifier reason volume "
        "price_open sl tp price_current swap profit symbol comment external_id"
    ),
    structs.TradeDeal: (
        "ticket order time time_msc type entry magic position_id reason volume price commission swap "
        "profit fee symbol comment external_id"
    ),
    structs.TradeOrder: (
        "ticket time_setup time_setup_msc time_done time_done_msc time_expiration type type_time "
        "type_filling state magic position_id position_by_id reason volume_initial volume_current "
        "price_open sl tp price_current price_stoplimit symbol comment external_id"
    ),
    structs.AccountInfo: (
        "login trade_mode leverage limit_orders margin_so_mode trade_allowed trade_expert margin_mode "
        "currency_digits fifo_close balance credit profit equity margin margin_free margin_level "
        "margin_so_call margin_so_so margin_initial margin_maintenance assets liabilities "
        "commission_blocked name server currency company"
    ),
    structs.Tick: "time bid ask last volume time_msc flags volume_real",
    structs.OrderSendResult: (
        "retcode deal order volume price bid ask comment request_id retcode_external request"
    ),
    structs.OrderCheckResult: "retcode balance equity profit margin margin_free margin_level comment request",
    structs.TradeRequest: (
        "action magic order symbol volume price stoplimit sl tp deviation type type_filling type_time "
        "expiration comment position position_by"
    ),
    structs.TerminalInfo: (
        "community_account community_connection connected dlls_allowed trade_allowed "
        "tradeapi_disabled email_enabled ftp_enabled notifications_enabled mqid build maxbars "
        "codepage ping_last community_balance retransmission company name language path data_path "
        "commondata_path"
    ),
    # As printed by the real package for symbol_info("EURJPY").
    structs.SymbolInfo: (
        "custom chart_mode select visible session_deals session_buy_orders session_sell_orders volume "
        "volumehigh volumelow time digits spread spread_float ticks_bookdepth trade_calc_mode "
        "trade_mode start_time expiration_time trade_stops_level trade_freeze_level trade_exemode "
        "swap_mode swap_rollover3days margin_hedged_use_leg expiration_mode filling_mode order_mode "
        "order_gtc_mode option_mode option_right bid bidhigh bidlow ask askhigh asklow last lasthigh "
        "lastlow volume_real volumehigh_real volumelow_real option_strike point trade_tick_value "
        "trade_tick_value_profit trade_tick_value_loss trade_tick_size trade_contract_size "
        "trade_accrued_interest trade_face_value trade_liquidity_rate volume_min volume_max "
        "volume_step volume_limit swap_long swap_short margin_initial margin_maintenance "
        "session_volume session_turnover session_interest session_buy_orders_volume "
        "session_sell_orders_volume session_open session_close session_aw session_price_settlement "
        "session_price_limit_min session_price_limit_max margin_hedged price_change price_volatility "
        "price_theoretical price_greeks_delta price_greeks_theta price_greeks_gamma price_greeks_vega "
        "price_greeks_rho price_greeks_omega price_sensitivity basis category currency_base "
        "currency_profit currency_margin bank description exchange formula isin name page path"
    ),
}


@pytest.mark.parametrize("struct", list(OFFICIAL_FIELDS), ids=lambda s: s.__name__)
def test_named_tuples_have_the_official_fields_in_order(struct: type) -> None:
    assert struct._fields == tuple(OFFICIAL_FIELDS[struct].split())  # type: ignore[attr-defined]


def plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(plain(v) for v in value)
    return type(value) in (int, float, str, bool)


def test_results_hold_plain_python_values(mt5: SimTerminal) -> None:
    result = buy(mt5, sl=1.09, tp=1.11)
    for found in (
        result,
        mt5.symbol_info("USDJPY"),
        mt5.symbol_info_tick("EURUSD"),
        account(mt5),
        mt5.terminal_info(),
        positions(mt5)[0],
        deals_of(mt5, result.order)[0],
        mt5.history_orders_get(ticket=result.order),
    ):
        assert found is not None and plain(found), found


def test_symbol_specs(mt5: SimTerminal) -> None:
    eurusd, usdjpy, xauusd, gbpusd = (mt5.symbol_info(s) for s in ("EURUSD", "USDJPY", "XAUUSD", "GBPUSD"))
    assert eurusd is not None and usdjpy is not None and xauusd is not None and gbpusd is not None
    assert (eurusd.digits, eurusd.point, eurusd.trade_contract_size, eurusd.trade_tick_value) == (
        5,
        0.00001,
        100000.0,
        1.0,
    )
    assert (eurusd.bid, eurusd.ask, eurusd.spread) == (1.1, 1.1001, 10)
    assert (eurusd.currency_base, eurusd.currency_profit) == ("EUR", "USD")
    assert (gbpusd.digits, gbpusd.point) == (5, 0.00001)
    assert (usdjpy.digits, usdjpy.point, usdjpy.spread) == (3, 0.001, 12)
    # One point on one lot of USDJPY is 100 JPY, worth 100 / USDJPY dollars.
    assert usdjpy.trade_tick_value == pytest.approx(0.001 * 100000 / ((150.000 + 150.012) / 2))
    assert (xauusd.digits, xauusd.point, xauusd.trade_contract_size, xauusd.trade_tick_value) == (
        2,
        0.01,
        100.0,
        1.0,
    )
    for info in (eurusd, usdjpy, xauusd, gbpusd):
        assert (info.volume_min, info.volume_max, info.volume_step) == (0.01, 100.0, 0.01)
        assert info.trade_stops_level == 10
        assert info.trade_mode == C.SYMBOL_TRADE_MODE_FULL
    assert mt5.symbols_total() == 4
    assert [s.name for s in mt5.symbols_get(group="*USD*,!EUR*") or ()] == ["GBPUSD", "USDJPY", "XAUUSD"]
    assert mt5.symbol_info("NOPE") is None
    assert mt5.last_error()[0] == C.RES_E_NOT_FOUND


def test_feed_moves_with_the_clock_deterministically(clock: FakeClock) -> None:
    def ticks(seed: int) -> list[tuple[float, float]]:
        local = FakeClock()
        mt5 = SimTerminal(SimBroker(seed=seed, clock=local))
        assert mt5.initialize()
        seen = []
        for _ in range(20):
            tick = mt5.symbol_info_tick("USDJPY")
            assert tick is not None
            seen.append((tick.bid, tick.ask))
            local.advance(30)
        return seen

    first = ticks(1)
    assert first == ticks(1)
    assert first != ticks(2)
    assert len(set(first)) > 10  # it moves
    for bid, ask in first:
        assert round(bid, 3) == bid and round(ask - bid, 3) == 0.012  # digits and spread respected

    mt5 = SimTerminal(SimBroker(seed=1, clock=clock))
    assert mt5.initialize()
    frozen = [mt5.symbol_info_tick("EURUSD") for _ in range(3)]
    assert frozen[0] == frozen[1] == frozen[2]  # a clock that stands still: a price that stands still


def test_pinned_quote_holds_until_released(mt5: SimTerminal, clock: FakeClock) -> None:
    clock.advance(600)
    tick = mt5.symbol_info_tick("EURUSD")
    assert tick is not None and (tick.bid, tick.ask) == (1.1, 1.1001)
    mt5.sim_release_quote("EURUSD")
    clock.advance(600)
    tick = mt5.symbol_info_tick("EURUSD")
    assert tick is not None and tick.bid != 1.1
    assert abs(tick.bid - 1.1) < 0.01  # walked on from the pinned price


# ----- fills ------------------------------------------------------------------------------------------


def test_buy_fills_at_ask(mt5: SimTerminal) -> None:
    result = buy(mt5, 0.5)
    assert result.retcode == C.TRADE_RETCODE_DONE
    assert (result.price, result.volume, result.bid, result.ask) == (1.1001, 0.5, 1.1, 1.1001)
    assert result.order and result.deal and result.request.magic == 424242
    (position,) = positions(mt5)
    assert (position.ticket, position.identifier) == (result.order, result.order)
    assert (position.type, position.volume, position.price_open) == (C.POSITION_TYPE_BUY, 0.5, 1.1001)
    assert (position.magic, position.comment, position.reason) == (424242, "TG-1", C.POSITION_REASON_EXPERT)
    (deal,) = deals_of(mt5, position.ticket)
    assert (deal.ticket, deal.order, deal.entry, deal.type) == (
        result.deal,
        result.order,
        C.DEAL_ENTRY_IN,
        C.DEAL_TYPE_BUY,
    )
    assert (deal.magic, deal.comment, deal.reason, deal.price) == (
        424242,
        "TG-1",
        C.DEAL_REASON_EXPERT,
        1.1001,
    )
    (order,) = mt5.history_orders_get(ticket=result.order) or ()
    assert (order.state, order.position_id, order.volume_initial) == (
        C.ORDER_STATE_FILLED,
        position.ticket,
        0.5,
    )


def test_sell_fills_at_bid(mt5: SimTerminal) -> None:
    result = sell(mt5, 1.0, symbol="USDJPY")
    assert (result.retcode, result.price) == (C.TRADE_RETCODE_DONE, 150.0)
    (position,) = positions(mt5)
    assert (position.type, position.price_open, position.price_current) == (
        C.POSITION_TYPE_SELL,
        150.0,
        150.012,
    )
    assert position.profit == pytest.approx(-12 * 100 / 150.012, abs=0.01)  # the spread, in USD


def test_comment_is_cut_to_31_characters(mt5: SimTerminal) -> None:
    result = buy(mt5, comment="x" * 40)
    assert positions(mt5)[0].comment == "x" * 31
    assert deals_of(mt5, result.order)[0].comment == "x" * 31


def test_slippage_within_deviation_fills(mt5: SimTerminal) -> None:
    mt5.sim_set_slippage(3)
    result = buy(mt5)
    assert (result.retcode, result.price) == (C.TRADE_RETCODE_DONE, 1.10013)
    result = sell(mt5)
    assert (result.retcode, result.price) == (C.TRADE_RETCODE_DONE, 1.09997)


def test_slippage_beyond_deviation_requotes_and_fills_nothing(mt5: SimTerminal) -> None:
    mt5.sim_set_slippage(5)
    mt5.sim_set_quote("EURUSD", 1.10020, 1.10030)
    result = mt5.order_send(deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1, price=1.10010, deviation=10))
    assert result is not None
    assert result.retcode == C.TRADE_RETCODE_REQUOTE
    assert (result.deal, result.order, result.volume) == (0, 0, 0.0)
    assert (result.bid, result.ask) == (1.1002, 1.1003)  # the fresh price to retry at
    assert positions(mt5) == ()


def test_requote_leaves_nothing_open(mt5: SimTerminal) -> None:
    mt5.sim_set_requotes(1)
    result = buy(mt5)
    assert result.retcode == C.TRADE_RETCODE_REQUOTE
    assert positions(mt5) == ()
    assert mt5.history_orders_get(START - 10, START + 10) == ()
    assert buy(mt5).retcode == C.TRADE_RETCODE_DONE  # only the next one was requoted


def test_requote_probability_is_seeded(clock: FakeClock) -> None:
    def outcomes() -> list[int]:
        mt5 = SimTerminal(SimBroker(seed=3, clock=clock))
        assert mt5.initialize(login=LOGIN)
        mt5.sim_set_requotes(probability=0.5)
        return [buy(mt5, 0.01).retcode for _ in range(20)]

    first = outcomes()
    assert first == outcomes()
    assert set(first) == {C.TRADE_RETCODE_DONE, C.TRADE_RETCODE_REQUOTE}


def test_partial_fill_opens_the_filled_volume(mt5: SimTerminal) -> None:
    mt5.sim_set_partial_fill(0.5)
    result = buy(mt5, 0.33)
    assert (result.retcode, result.volume) == (C.TRADE_RETCODE_DONE_PARTIAL, 0.16)
    (position,) = positions(mt5)
    assert position.volume == 0.16
    (order,) = mt5.history_orders_get(ticket=result.order) or ()
    assert (order.volume_initial, order.volume_current, order.state) == (0.33, 0.17, C.ORDER_STATE_PARTIAL)
    mt5.sim_set_partial_fill(None)
    assert buy(mt5, 0.33).retcode == C.TRADE_RETCODE_DONE


@pytest.mark.parametrize(
    ("request_", "retcode"),
    [
        (deal_request("EURUSD", C.ORDER_TYPE_BUY, 20.0), C.TRADE_RETCODE_NO_MONEY),  # margin 22002 > 10000
        (deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.015), C.TRADE_RETCODE_INVALID_VOLUME),
        (deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.001), C.TRADE_RETCODE_INVALID_VOLUME),
        (deal_request("EURUSD", C.ORDER_TYPE_BUY, 101.0), C.TRADE_RETCODE_INVALID_VOLUME),
        (deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1, sl=1.10100), C.TRADE_RETCODE_INVALID_STOPS),
        (deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1, tp=1.09), C.TRADE_RETCODE_INVALID_STOPS),
        (
            deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1, sl=1.09995),
            C.TRADE_RETCODE_INVALID_STOPS,
        ),  # < 10 pts
        (deal_request("EURUSD", C.ORDER_TYPE_SELL, 0.1, sl=1.09), C.TRADE_RETCODE_INVALID_STOPS),
        (deal_request("EURUSD", C.ORDER_TYPE_SELL, 0.1, tp=1.10005), C.TRADE_RETCODE_INVALID_STOPS),
        (deal_request("NOPE", C.ORDER_TYPE_BUY, 0.1), C.TRADE_RETCODE_INVALID),
        (deal_request("EURUSD", C.ORDER_TYPE_BUY_LIMIT, 0.1), C.TRADE_RETCODE_INVALID),
        ({"action": C.TRADE_ACTION_DEAL, "volume": 0.1, "type": 0}, C.TRADE_RETCODE_INVALID),  # no symbol
        (
            {**deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1), "action": C.TRADE_ACTION_PENDING},
            C.TRADE_RETCODE_INVALID,
        ),
        (
            deal_request("EURUSD", C.ORDER_TYPE_SELL, 0.1, position=123),
            C.TRADE_RETCODE_INVALID,
        ),  # no such position
    ],
)
def test_refused_requests_fill_nothing(mt5: SimTerminal, request_: dict[str, Any], retcode: int) -> None:
    result = mt5.order_send(request_)
    assert result is not None
    assert result.retcode == retcode
    assert (result.order, result.deal) == (0, 0)
    assert positions(mt5) == ()
    assert account(mt5).balance == 10000.0


def test_order_check_agrees_with_order_send_on_no_money(mt5: SimTerminal) -> None:
    check = mt5.order_check(deal_request("EURUSD", C.ORDER_TYPE_BUY, 20.0))
    assert check is not None and check.retcode == C.TRADE_RETCODE_NO_MONEY
    check = mt5.order_check(deal_request("EURUSD", C.ORDER_TYPE_BUY, 1.0))
    assert check is not None
    assert (check.retcode, check.comment) == (0, "Done")
    assert check.margin == pytest.approx(1100.05)  # 1 lot * 100000 * mid 1.10005 / 100
    assert (check.balance, check.equity, check.margin_free) == (10000.0, 10000.0, 8899.95)
    assert check.margin_level == pytest.approx(10000 / 1100.05 * 100, abs=0.01)
    assert positions(mt5) == ()  # a check trades nothing


def test_market_closed_and_forced_rejects(mt5: SimTerminal) -> None:
    mt5.sim_set_trade_mode("EURUSD", C.SYMBOL_TRADE_MODE_DISABLED)
    assert buy(mt5).retcode == C.TRADE_RETCODE_MARKET_CLOSED
    mt5.sim_set_trade_mode("EURUSD", C.SYMBOL_TRADE_MODE_FULL)
    mt5.sim_set_reject(C.TRADE_RETCODE_REJECT)
    assert buy(mt5).retcode == C.TRADE_RETCODE_REJECT
    assert positions(mt5) == ()
    mt5.sim_set_reject(None)
    assert buy(mt5).retcode == C.TRADE_RETCODE_DONE


@pytest.mark.parametrize(
    "request_",
    [
        "not a dict",
        {**deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1), "volume": "0.1"},
        {**deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1), "magic": True},
        {**deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1), "positon": 5},  # a typo is not silently ignored
    ],
)
def test_malformed_requests_return_none_with_invalid_params(mt5: SimTerminal, request_: Any) -> None:
    assert mt5.order_send(request_) is None
    assert mt5.last_error()[0] == C.RES_E_INVALID_PARAMS
    assert positions(mt5) == ()


# ----- closing and modifying ----------------------------------------------------------------------------


def test_close_by_position_partially_then_fully_books_the_profit(mt5: SimTerminal) -> None:
    opened = buy(mt5, 1.0)
    ticket = opened.order
    mt5.sim_set_quote("EURUSD", 1.10110, 1.10120)

    partial = sell(mt5, 0.4, position=ticket, comment="TG-1 close")
    assert (partial.retcode, partial.price, partial.volume) == (C.TRADE_RETCODE_DONE, 1.1011, 0.4)
    assert account(mt5).balance == 10040.0  # (1.10110 - 1.10010) * 0.4 * 100000
    (position,) = positions(mt5)
    assert (position.ticket, position.volume) == (ticket, 0.6)

    assert sell(mt5, 0.7, position=ticket).retcode == C.TRADE_RETCODE_INVALID_CLOSE_VOLUME
    assert buy(mt5, 0.6, position=ticket).retcode == C.TRADE_RETCODE_INVALID  # same direction
    final = sell(mt5, 0.6, position=ticket)
    assert final.retcode == C.TRADE_RETCODE_DONE
    assert positions(mt5) == ()
    assert account(mt5).balance == 10100.0

    deals = deals_of(mt5, ticket)
    assert [(d.entry, d.volume, d.profit) for d in deals] == [
        (C.DEAL_ENTRY_IN, 1.0, 0.0),
        (C.DEAL_ENTRY_OUT, 0.4, 40.0),
        (C.DEAL_ENTRY_OUT, 0.6, 60.0),
    ]
    assert {d.position_id for d in deals} == {ticket}
    assert deals[1].comment == "TG-1 close" and deals[2].type == C.DEAL_TYPE_SELL
    assert len(mt5.history_orders_get(position=ticket) or ()) == 3
    assert sell(mt5, 0.1, position=ticket).retcode == C.TRADE_RETCODE_POSITION_CLOSED


def test_sltp_modifies_a_position(mt5: SimTerminal) -> None:
    ticket = buy(mt5).order
    request = {
        "action": C.TRADE_ACTION_SLTP,
        "position": ticket,
        "symbol": "EURUSD",
        "sl": 1.095,
        "tp": 1.105,
    }
    result = mt5.order_send(request)
    assert result is not None and result.retcode == C.TRADE_RETCODE_DONE
    (position,) = positions(mt5)
    assert (position.sl, position.tp) == (1.095, 1.105)
    assert (mt5.order_send(request) or result).retcode == C.TRADE_RETCODE_NO_CHANGES
    bad = mt5.order_send({**request, "sl": 1.1005})  # above the bid of a buy
    assert bad is not None and bad.retcode == C.TRADE_RETCODE_INVALID_STOPS
    assert positions(mt5)[0].sl == 1.095


# ----- broker-side events -------------------------------------------------------------------------------


def test_stop_loss_hit_closes_at_the_stop(mt5: SimTerminal) -> None:
    ticket = buy(mt5, 1.0, sl=1.09500, tp=1.11000).order
    mt5.sim_set_quote("EURUSD", 1.09600, 1.09610)
    assert len(positions(mt5)) == 1
    mt5.sim_set_quote("EURUSD", 1.09500, 1.09510)
    assert positions(mt5) == ()
    closing = deals_of(mt5, ticket)[-1]
    assert (closing.entry, closing.reason, closing.price) == (C.DEAL_ENTRY_OUT, C.DEAL_REASON_SL, 1.095)
    assert closing.magic == 424242 and closing.comment == "[sl 1.09500]"
    assert closing.profit == -510.0  # (1.09500 - 1.10010) * 100000
    assert account(mt5).balance == 9490.0
    (order,) = [o for o in mt5.history_orders_get(position=ticket) or () if o.ticket == closing.order]
    assert order.reason == C.ORDER_REASON_SL


def test_take_profit_hit_by_a_gap_closes_at_the_target(mt5: SimTerminal) -> None:
    ticket = sell(mt5, 0.5, symbol="XAUUSD", tp=1990.00).order
    mt5.sim_gap("XAUUSD", -1.0)  # ask 2000.30 -> ~1980.30, through the target
    assert positions(mt5) == ()
    closing = deals_of(mt5, ticket)[-1]
    assert (closing.reason, closing.price, closing.type) == (C.DEAL_REASON_TP, 1990.0, C.DEAL_TYPE_BUY)
    assert closing.profit == 500.0  # (2000.00 - 1990.00) * 0.5 * 100


def test_stop_loss_gapped_through_fills_at_the_market(mt5: SimTerminal) -> None:
    ticket = buy(mt5, 0.1, sl=1.09500).order
    mt5.sim_gap("EURUSD", -2.0)
    tick = mt5.symbol_info_tick("EURUSD")
    assert tick is not None and tick.bid == 1.078
    closing = deals_of(mt5, ticket)[-1]
    assert (closing.reason, closing.price) == (C.DEAL_REASON_SL, 1.078)  # worse than the stop: gap slippage


def test_stop_out_closes_the_most_losing_position_first(mt5: SimTerminal) -> None:
    big = buy(mt5, 6.0).order
    small = buy(mt5, 2.0).order
    assert account(mt5).margin_level > 100
    mt5.sim_gap("EURUSD", -0.8)
    (survivor,) = positions(mt5)
    assert survivor.ticket == small
    closing = deals_of(mt5, big)[-1]
    assert (closing.reason, closing.entry, closing.volume) == (C.DEAL_REASON_SO, C.DEAL_ENTRY_OUT, 6.0)
    assert closing.comment.startswith("[so ")
    info = account(mt5)
    assert info.margin_level >= info.margin_so_so
    assert info.balance == pytest.approx(10000.0 + closing.profit)


def test_a_wider_spread_alone_stops_out(mt5: SimTerminal) -> None:
    ticket = sell(mt5, 8.0).order  # closes at the ask
    assert account(mt5).margin_level > 100
    mt5.sim_set_spread("EURUSD", 1000)  # the bid stays at 1.10000, the ask moves to 1.11000
    assert positions(mt5) == ()
    closing = deals_of(mt5, ticket)[-1]
    assert (closing.reason, closing.price) == (C.DEAL_REASON_SO, 1.11)


def test_stop_out_of_everything_on_a_big_gap(mt5: SimTerminal) -> None:
    buy(mt5, 8.0)
    buy(mt5, 0.5, symbol="XAUUSD")
    mt5.sim_gap("EURUSD", -1.5)
    assert positions(mt5) == ()
    info = account(mt5)
    assert (info.margin, info.margin_level) == (0.0, 0.0)
    reasons = [
        d.reason for d in mt5.history_deals_get(START - 1, START + 1) or () if d.entry == C.DEAL_ENTRY_OUT
    ]
    assert reasons == [C.DEAL_REASON_SO, C.DEAL_REASON_SO]


def _book(accounts: int, per_account: int = 20) -> tuple[SimBroker, FakeClock, SimTerminal]:
    """A walking (unpinned) broker with `accounts` demo accounts of `per_account` positions each, every
    fifth one with a far SL and TP; the terminal is logged in to the first account."""
    clock = FakeClock()
    broker = SimBroker(seed=11, clock=clock)
    terminal = SimTerminal(broker)
    symbols = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
    for login in range(LOGIN, LOGIN + accounts):
        assert terminal.initialize(login=login)
        for i in range(per_account):
            order_type = C.ORDER_TYPE_BUY if i % 2 == 0 else C.ORDER_TYPE_SELL
            ticket = terminal.sim_open_manual(login, symbols[i % 4], order_type, 0.01)
            if i % 5 == 0:
                (position,) = terminal.positions_get(ticket=ticket) or ()
                far = 0.2 * position.price_open * (1 if order_type == C.ORDER_TYPE_BUY else -1)
                digits = 3 if position.symbol == "USDJPY" else 2 if position.symbol == "XAUUSD" else 5
                request = {
                    "action": C.TRADE_ACTION_SLTP,
                    "position": ticket,
                    "sl": round(position.price_open - far, digits),
                    "tp": round(position.price_open + far, digits),
                }
                assert (terminal.order_send(request) or _no_answer()).retcode == C.TRADE_RETCODE_DONE
    assert terminal.initialize(login=LOGIN)
    return broker, clock, terminal


def _no_answer() -> Any:
    raise AssertionError("order_send returned None")


def _visits_per_call(
    broker: SimBroker, clock: FakeClock, terminal: SimTerminal, calls: int = 200
) -> tuple[int, int]:
    """(positions, history records) the broker examined over `calls` x (account_info, positions_get,
    history_deals_get of one position)."""
    terminal.account_info()  # settles the checks the setup left pending
    first = (terminal.positions_get() or _no_answer())[0].ticket
    before = broker.position_visits, broker.record_visits
    for _ in range(calls):
        clock.advance(1.0)  # every call sees new prices: the walk moves every symbol
        assert terminal.account_info() is not None
        assert len(terminal.positions_get() or ()) == 20
        assert [d.position_id for d in terminal.history_deals_get(position=first) or ()] == [first]
    return broker.position_visits - before[0], broker.record_visits - before[1]


def test_a_call_costs_the_callers_positions_not_the_whole_book() -> None:
    small, small_records = _visits_per_call(*_book(5))
    big_broker, big_clock, big_terminal = _book(500)
    big, big_records = _visits_per_call(big_broker, big_clock, big_terminal)
    # 200 x (account_info + positions_get) over 20 positions: ~8,000 visits however many accounts there
    # are (before the indexes, each call scanned all 10,000 positions once per account with positions).
    assert small <= 200 * 2 * 20 * 1.5
    assert big <= 2 * small, (small, big)
    # A history read examines the caller's 21 deals (the deposit and 20 openings), not every account's.
    assert small_records <= 200 * 21 * 1.5
    assert big_records <= 2 * small_records, (small_records, big_records)

    # The server-side events still happen at once in the big book: a gap stops out the account that
    # cannot carry it and hits the stop losses it passes, before anyone sees the gapped price.
    edge = LOGIN + 250
    big_terminal.sim_open_manual(edge, "EURUSD", C.ORDER_TYPE_BUY, 8.0)  # margin level ~110 %
    assert big_terminal.login(edge)
    assert (big_terminal.account_info() or _no_answer()).margin_level > 100
    big_terminal.sim_gap("EURUSD", -25.0)  # through the far stop losses of the EURUSD buys (-20 %)
    assert set(_closing_reasons(big_terminal)) == {C.DEAL_REASON_SL, C.DEAL_REASON_SO}
    assert all(p.symbol != "EURUSD" or p.type != C.ORDER_TYPE_BUY for p in big_terminal.positions_get() or ())
    assert big_terminal.login(LOGIN + 499)  # an account far from its stop-out only lost its SL'd buy
    assert _closing_reasons(big_terminal) == [C.DEAL_REASON_SL]


def test_an_unconvertible_currency_is_refused(clock: FakeClock, broker: SimBroker) -> None:
    with pytest.raises(SimError, match="no symbol converts"):
        SimBroker(clock=clock, accounts={2001: {"currency": "CHF"}})
    for pair in (("CHF", "USD"), ("USD", "CHF"), ("CHF", "EUR"), ("EUR", "CHF")):
        with pytest.raises(SimError, match="no symbol converts"):
            broker._rate(*pair)
        with pytest.raises(SimError, match="no symbol converts"):
            broker._rate_path(*pair)  # the symbols a stop-out window watches come from the same search
    assert broker._rate("EUR", "EUR") == 1.0
    assert [name for name, _ in broker._rate_path("EUR", "JPY")] == ["EURUSD", "USDJPY"]
    assert broker._rate("EUR", "JPY") == broker._rate("EUR", "USD") * broker._rate("USD", "JPY")


def _closing_reasons(terminal: SimTerminal) -> list[int]:
    deals = terminal.history_deals_get(0, 2**31) or ()
    return [d.reason for d in deals if d.entry == C.DEAL_ENTRY_OUT]


def test_manual_positions_are_client_ones(mt5: SimTerminal, broker: SimBroker) -> None:
    ticket = mt5.sim_open_manual(LOGIN, "GBPUSD", C.ORDER_TYPE_SELL, 0.3)
    (position,) = mt5.positions_get(ticket=ticket) or ()
    assert (position.magic, position.reason, position.comment, position.volume) == (
        0,
        C.POSITION_REASON_CLIENT,
        "",
        0.3,
    )
    other = SimTerminal(broker)  # another terminal on the same account sees it too
    assert other.initialize(login=LOGIN, password="x")
    assert [p.ticket for p in other.positions_get() or ()] == [ticket]

    deal = mt5.sim_close_manual(LOGIN, ticket)
    assert positions(mt5) == ()
    opening, closing = deals_of(mt5, ticket)
    assert opening.reason == closing.reason == C.DEAL_REASON_CLIENT
    assert (closing.ticket, closing.magic, closing.entry) == (deal, 0, C.DEAL_ENTRY_OUT)
    with pytest.raises(SimError):
        mt5.sim_close_manual(LOGIN, ticket)


def test_equity_margin_and_margin_level(mt5: SimTerminal) -> None:
    buy(mt5, 1.0)  # EURUSD at 1.10010
    sell(mt5, 1.0, symbol="USDJPY")  # at 150.000
    buy(mt5, 0.1, symbol="XAUUSD")  # at 2000.30
    mt5.sim_set_quote("EURUSD", 1.10110, 1.10120)
    mt5.sim_set_quote("USDJPY", 149.488, 149.500)
    mt5.sim_set_quote("XAUUSD", 2010.00, 2010.30)

    eur_profit = 100.0  # (1.10110 - 1.10010) * 100000 USD
    jpy_profit = round(0.5 * 100000 / 149.494, 2)  # 50000 JPY at the USDJPY mid
    gold_profit = 97.0  # (2010.00 - 2000.30) * 0.1 * 100
    eur_margin = 1101.15  # 100000 EUR / 100 at EURUSD mid 1.10115
    jpy_margin = 1000.0  # 100000 USD / 100
    gold_margin = 201.015  # 0.1 lot * 100 oz * 2010.15 / 100
    assert [p.profit for p in positions(mt5)] == [eur_profit, jpy_profit, gold_profit]

    info = account(mt5)
    profit = eur_profit + jpy_profit + gold_profit
    margin = eur_margin + jpy_margin + gold_margin
    assert info.profit == pytest.approx(profit)
    assert info.equity == pytest.approx(10000.0 + profit)
    # Each figure is rounded to cents, so allow a cent.
    assert info.margin == pytest.approx(margin, abs=0.011)
    assert info.margin_free == pytest.approx(10000.0 + profit - margin, abs=0.011)
    assert info.margin_level == pytest.approx((10000.0 + profit) / margin * 100, abs=0.01)
    assert info.balance == 10000.0


def test_history_by_date_range_by_position_and_group(mt5: SimTerminal, clock: FakeClock) -> None:
    first = buy(mt5).order
    clock.advance(3600)
    second = buy(mt5, symbol="USDJPY").order
    clock.advance(3600)
    third = sell(mt5, 0.1, position=first).deal

    def deal_tickets(date_from: Any, date_to: Any, group: str | None = None) -> list[int]:
        deals = mt5.history_deals_get(date_from, date_to, group=group)
        assert deals is not None
        return [d.ticket for d in deals if d.type != C.DEAL_TYPE_BALANCE]

    hour = datetime.fromtimestamp(START + 3600, UTC)
    assert len(deal_tickets(START, START + 7200)) == 3
    assert deal_tickets(hour, START + 7200) == [deals_of(mt5, second)[0].ticket, third]
    assert deal_tickets(hour.replace(tzinfo=None), hour.replace(tzinfo=None)) == [
        deals_of(mt5, second)[0].ticket
    ]
    assert deal_tickets(START, START + 7200, group="*JPY*") == [deals_of(mt5, second)[0].ticket]
    assert deal_tickets(START + 7201, START + 9000) == []
    assert [d.entry for d in deals_of(mt5, first)] == [C.DEAL_ENTRY_IN, C.DEAL_ENTRY_OUT]
    assert mt5.history_deals_total(START, START + 7200) == 4  # with the initial balance deal
    orders = mt5.history_orders_get(START, START + 3599)
    assert [o.ticket for o in orders or ()] == [first]
    assert mt5.history_deals_get() is None
    assert mt5.last_error()[0] == C.RES_E_INVALID_PARAMS


def test_positions_get_filters_and_refuses_positional_arguments(mt5: SimTerminal) -> None:
    eur = buy(mt5).order
    jpy = buy(mt5, symbol="USDJPY").order
    assert [p.ticket for p in mt5.positions_get(symbol="USDJPY") or ()] == [jpy]
    assert [p.ticket for p in mt5.positions_get(ticket=eur) or ()] == [eur]
    assert [p.ticket for p in mt5.positions_get(group="*JPY*") or ()] == [jpy]
    assert mt5.positions_total() == 2
    assert mt5.positions_get("EURUSD") is None
    assert mt5.last_error() == (C.RES_E_INVALID_PARAMS, "Unnamed arguments not allowed")
    assert mt5.orders_get() == () and mt5.orders_total() == 0


# ----- faults ---------------------------------------------------------------------------------------------


def test_latency_delays_every_call(mt5: SimTerminal) -> None:
    mt5.sim_set_latency(60)
    started = time.perf_counter()
    assert mt5.account_info() is not None
    assert time.perf_counter() - started >= 0.06
    mt5.sim_set_latency(0)
    started = time.perf_counter()
    assert mt5.account_info() is not None
    assert time.perf_counter() - started < 0.06


def test_disconnect_fails_calls_until_the_window_ends(mt5: SimTerminal, clock: FakeClock) -> None:
    mt5.sim_disconnect(30)
    assert mt5.account_info() is None
    assert mt5.last_error() == (C.RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
    assert mt5.symbol_info_tick("EURUSD") is None
    assert mt5.order_send(deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1)) is None
    assert mt5.initialize(login=LOGIN) is False
    clock.advance(31)
    assert positions(mt5) == ()  # nothing was sent while disconnected
    assert buy(mt5).retcode == C.TRADE_RETCODE_DONE


def test_disconnect_of_one_account_leaves_the_others(mt5: SimTerminal, broker: SimBroker) -> None:
    other = SimTerminal(broker)
    assert other.initialize(login=2002)
    mt5.sim_disconnect(30, login=2002)
    assert other.account_info() is None
    assert mt5.account_info() is not None


def test_lost_reply_fills_on_the_broker_but_returns_none(mt5: SimTerminal) -> None:
    mt5.sim_lose_next_reply()
    tick = mt5.symbol_info_tick("EURUSD")
    assert tick is not None
    request = deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.2, price=tick.ask, magic=777, comment="TG-42")
    assert mt5.order_send(request) is None
    assert mt5.last_error()[0] == C.RES_E_INTERNAL_FAIL_TIMEOUT
    (position,) = positions(mt5)
    assert (position.magic, position.comment, position.volume) == (777, "TG-42", 0.2)
    assert buy(mt5).retcode == C.TRADE_RETCODE_DONE  # only one reply was lost


def test_algo_trading_switched_off(mt5: SimTerminal) -> None:
    mt5.sim_set_algo_trading(False)
    assert mt5.order_send(deal_request("EURUSD", C.ORDER_TYPE_BUY, 0.1)) is None
    assert mt5.last_error()[0] == C.RES_E_AUTO_TRADING_DISABLED
    assert (mt5.terminal_info() or pytest.fail()).trade_allowed is False


# ----- module-level access -------------------------------------------------------------------------------


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, broker: SimBroker) -> Any:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)  # restored (removed) after the test
    return install_as_metatrader5(broker)


def test_installed_module_looks_like_the_package(installed: Any) -> None:
    mt5 = importlib.import_module("MetaTrader5")
    assert mt5 is installed
    assert mt5.TRADE_RETCODE_DONE == 10009 and mt5.RES_E_AUTH_FAILED == -6
    assert mt5.TradePosition is structs.TradePosition
    assert mt5.__version__ == "5.0.6231"
    assert mt5.initialize(login=LOGIN, password="x")
    assert mt5.account_info().login == LOGIN
    mt5.sim_set_quote("EURUSD", 1.2, 1.2001)
    assert mt5.symbol_info_tick("EURUSD").bid == 1.2


def test_each_thread_has_its_own_terminal(installed: Any) -> None:
    barrier = threading.Barrier(2)
    seen: dict[int, Any] = {}

    def client(login: int) -> None:
        import MetaTrader5 as mt5  # as an RPyC client evaluates it: in its own thread

        assert mt5.initialize(login=login, password="pw")
        barrier.wait(timeout=5)  # both logged in before either reads
        info = mt5.account_info()
        seen[login] = info.login if info else mt5.last_error()

    threads = [threading.Thread(target=client, args=(login,)) for login in (3001, 3002)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {3001: 3001, 3002: 3002}
    assert installed.account_info() is None  # this thread never initialized its terminal


def test_default_broker_is_seeded_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "_default_broker", None)
    monkeypatch.setenv(SEED_ENV, "99")
    broker = default_broker()
    assert broker.seed == 99
    assert default_broker() is broker
