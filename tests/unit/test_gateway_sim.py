"""The Gateway against an in-process simulated terminal: conversions, errors, timeouts, order outcomes.

No services: every test builds its own SimBroker, so latency and faults set on one cannot leak into
another (sim_* controls act on the whole broker).
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.mt5 import constants as C
from shared.mt5 import errors
from shared.mt5.errors import (
    AutoTradingDisabled,
    InvalidTerminalUrl,
    OrderOutcomeUnknown,
    PermanentTerminalError,
    RetryableTerminalError,
    SymbolNotFound,
    TerminalError,
    TerminalLoginFailed,
    TerminalNotSupported,
    TerminalTimeout,
    TerminalUnavailable,
    classify,
)
from shared.mt5.gateway import Gateway
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.install import install_as_metatrader5
from shared.mt5.sim.symbols import DEFAULT_SYMBOLS
from shared.mt5.sim.terminal import SimTerminal
from shared.mt5.terminals import declared_terminals
from shared.mt5.types import OrderResult, Position

LOGIN = 1001
MT5_HERE = declared_terminals(["mt5://"])  # what an operator of a Windows worker declares
MAGIC = 770001
SERVER = "TradeGuard-Sim"


@pytest.fixture
def broker() -> SimBroker:
    return SimBroker(seed=7)


@pytest.fixture
def terminal(broker: SimBroker) -> SimTerminal:
    return SimTerminal(broker)


@pytest.fixture
def gw(terminal: SimTerminal) -> Iterator[Gateway]:
    with Gateway.from_module(terminal, login=LOGIN, password="demo", server=SERVER, timeout=2.0) as gateway:
        yield gateway


def buy_request(comment: str = "tg-trade-1", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "symbol": "EURUSD",
        "side": "buy",
        "volume": Decimal("0.10"),
        "price": Decimal("1.08510"),
        "sl": Decimal("1.08000"),
        "tp": Decimal("1.09500"),
        "deviation_points": 20,
        "magic": MAGIC,
        "comment": comment,
        **overrides,
    }
    return Gateway.market_order_request(**fields)


def pin_eurusd(terminal: SimTerminal) -> None:
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)


# --- conversions ---------------------------------------------------------------------------------


def test_account_snapshot_uses_decimals_and_no_margin_level_without_margin(gw: Gateway) -> None:
    account = gw.account()
    assert account.login == LOGIN
    assert account.server == SERVER
    assert account.currency == "USD"
    assert account.balance == Decimal("10000") and isinstance(account.balance, Decimal)
    # A fresh demo account: no positions, so equity is the balance.
    assert account.equity == Decimal("10000") and isinstance(account.equity, Decimal)
    assert isinstance(account.margin_free, Decimal)
    assert account.leverage == 100
    # MT5 reports margin level 0 with no margin in use; 0 % would look like a margin call.
    assert account.margin == 0 and account.margin_level is None


def test_symbol_spec_and_pip_sizes(gw: Gateway) -> None:
    eurusd = gw.symbol("EURUSD")
    assert eurusd.digits == 5 and eurusd.point == Decimal("0.00001")
    assert eurusd.pip == Decimal("0.0001")
    assert eurusd.contract_size == Decimal("100000")
    assert eurusd.volume_min == Decimal("0.01") and eurusd.volume_step == Decimal("0.01")
    assert eurusd.trade_allowed is True
    eurusd_sim = next(spec for spec in DEFAULT_SYMBOLS if spec.name == "EURUSD")
    assert eurusd.stops_level_points == eurusd_sim.stops_level and isinstance(eurusd.stops_level_points, int)
    # 3-digit yen quote: a pip is 10 points.
    assert gw.symbol("USDJPY").pip == Decimal("0.01")
    # Gold is quoted with 2 digits in the simulator: a pip is one point, 0.01.
    xau = gw.symbol("XAUUSD")
    assert xau.digits == 2 and xau.pip == Decimal("0.01")


def test_symbol_reselects_a_hidden_symbol(gw: Gateway, terminal: SimTerminal) -> None:
    def visible() -> bool:
        info = terminal.symbol_info("GBPUSD")
        assert info is not None
        return bool(info.visible)

    terminal.symbol_select("GBPUSD", False)
    assert not visible()
    assert gw.symbol("GBPUSD").name == "GBPUSD"
    assert visible()


def test_trade_allowed_false_when_symbol_disabled(gw: Gateway, terminal: SimTerminal) -> None:
    terminal.sim_set_trade_mode("GBPUSD", C.SYMBOL_TRADE_MODE_DISABLED)
    assert gw.symbol("GBPUSD").trade_allowed is False


def test_quote_is_decimal_with_utc_time(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    quote = gw.quote("EURUSD")
    assert quote.bid == Decimal("1.085") and quote.ask == Decimal("1.0851")
    assert quote.spread == Decimal("0.0001")
    assert quote.time.tzinfo is UTC
    assert abs(datetime.now(UTC) - quote.time) < timedelta(minutes=1)


def test_unknown_symbol_is_permanent(gw: Gateway) -> None:
    with pytest.raises(SymbolNotFound) as raised:
        gw.symbol("NOPE")
    assert isinstance(raised.value, PermanentTerminalError) and not raised.value.retryable
    assert raised.value.call == "symbol_info" and raised.value.terminal_code == C.RES_E_NOT_FOUND
    with pytest.raises(SymbolNotFound):
        gw.quote("NOPE")


def counted_runs(gw: Gateway) -> list[list[str]]:
    """The runs of calls the gateway sends from now on (one run is one round trip to a remote terminal)."""
    runs: list[list[str]] = []
    backend = gw._backend
    call_many = backend.call_many

    def counting(calls: list[Any]) -> list[Any]:
        runs.append([name for name, _, _ in calls])
        return call_many(calls)

    backend.call_many = counting  # type: ignore[method-assign]
    return runs


def test_symbol_and_quote_are_one_round_trip_and_read_as_each_alone(
    gw: Gateway, terminal: SimTerminal
) -> None:
    pin_eurusd(terminal)
    runs = counted_runs(gw)
    spec, quote = gw.symbol_and_quote("EURUSD")
    assert runs == [["symbol_info", "symbol_info_tick"]]
    assert spec == gw.symbol("EURUSD")
    assert (quote.bid, quote.ask) == (Decimal("1.085"), Decimal("1.0851")) and quote.time.tzinfo is UTC


def test_symbol_and_quote_of_a_hidden_symbol_shows_it_first(gw: Gateway, terminal: SimTerminal) -> None:
    terminal.symbol_select("GBPUSD", False)
    runs = counted_runs(gw)
    spec, quote = gw.symbol_and_quote("GBPUSD")
    assert spec.name == "GBPUSD" and quote.ask > quote.bid > 0
    assert ["symbol_select"] in runs  # asked again the long way, which shows it
    info = terminal.symbol_info("GBPUSD")
    assert info is not None and info.visible


def test_symbol_and_quote_of_an_unknown_symbol_is_permanent(gw: Gateway) -> None:
    with pytest.raises(SymbolNotFound) as raised:
        gw.symbol_and_quote("NOPE")
    assert raised.value.call == "symbol_info"


def test_position_and_deals_conversion(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    result = gw.send_order(buy_request())
    assert result.retcode == C.TRADE_RETCODE_DONE and result.done
    assert result.volume == Decimal("0.1") and result.price == Decimal("1.0851")
    assert result.order > 0 and result.deal > 0

    # A second one without SL/TP: MT5 reports 0.0, the gateway None.
    gw.send_order(buy_request("tg-trade-2", sl=None, tp=None, side="sell", price=Decimal("1.08500")))

    positions = gw.positions()
    assert len(positions) == 2
    first, second = positions
    assert isinstance(first, Position)
    assert first.ticket == result.order and first.identifier == result.order
    assert first.symbol == "EURUSD" and first.side == "buy"
    assert first.volume == Decimal("0.1") and first.price_open == Decimal("1.0851")
    assert first.sl == Decimal("1.08") and first.tp == Decimal("1.095")
    # Pinned at 1.08500/1.08510: a buy is valued at the bid, 0.1 lot x 100000 x -0.0001 = -1 USD.
    assert first.price_current == Decimal("1.085") and isinstance(first.price_current, Decimal)
    assert first.profit == Decimal("-1") and isinstance(first.profit, Decimal)
    assert first.magic == MAGIC and first.comment == "tg-trade-1"
    assert first.reason == C.POSITION_REASON_EXPERT
    assert first.opened_at.tzinfo is UTC
    assert second.side == "sell" and second.sl is None and second.tp is None

    assert gw.position(first.ticket) == first
    assert gw.position(999_999_999) is None
    assert [p.ticket for p in gw.positions("EURUSD")] == [first.ticket, second.ticket]
    assert gw.positions("USDJPY") == []

    account = gw.account()
    terminal_account = terminal.account_info()
    assert terminal_account is not None
    assert account.margin > 0 and account.margin == Decimal(str(terminal_account.margin))
    assert isinstance(account.margin_level, Decimal)

    deals = gw.deals_for_position(first.ticket)
    assert len(deals) == 1
    deal = deals[0]
    assert deal.ticket == result.deal and deal.order == result.order and deal.position_id == first.ticket
    assert deal.side == "buy" and deal.entry == C.DEAL_ENTRY_IN
    assert deal.price == Decimal("1.0851") and deal.volume == Decimal("0.1")
    assert deal.magic == MAGIC and deal.comment == "tg-trade-1" and deal.reason == C.DEAL_REASON_EXPERT
    assert deal.time.tzinfo is UTC

    now = datetime.now(UTC)
    window = gw.deals(now - timedelta(hours=1), now + timedelta(minutes=1))
    sides = [d.side for d in window]
    # The account's initial deposit is a balance deal, then the two trades.
    assert sides == ["balance", "buy", "sell"]
    assert window[0].profit == Decimal("10000")
    with pytest.raises(ValueError, match="naive"):
        gw.deals(datetime(2024, 1, 1), datetime(2024, 1, 2))


def test_closing_a_position_by_ticket(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    opened = gw.send_order(buy_request())
    close = Gateway.market_order_request(
        symbol="EURUSD", side="sell", volume="0.10", price="1.08500", sl=None, tp=None,
        deviation_points=20, magic=MAGIC, comment="tg-close-1", position=opened.order,
    )  # fmt: skip
    assert close["position"] == opened.order and isinstance(close["position"], int)
    result = gw.send_order(close)
    assert result.retcode == C.TRADE_RETCODE_DONE
    assert gw.positions() == []
    entries = [d.entry for d in gw.deals_for_position(opened.order)]
    assert entries == [C.DEAL_ENTRY_IN, C.DEAL_ENTRY_OUT]


# --- requests ------------------------------------------------------------------------------------


def test_market_order_request_is_plain_and_official() -> None:
    request = buy_request()
    assert request == {
        "action": C.TRADE_ACTION_DEAL,
        "symbol": "EURUSD",
        "volume": 0.1,
        "type": C.ORDER_TYPE_BUY,
        "price": 1.0851,
        "sl": 1.08,
        "tp": 1.095,
        "deviation": 20,
        "magic": MAGIC,
        "comment": "tg-trade-1",
        "type_time": C.ORDER_TIME_GTC,
        "type_filling": C.ORDER_FILLING_IOC,
    }
    # Exactly float / int / str: no Decimal, no bool, no numpy scalar may reach the package.
    for key in ("volume", "price", "sl", "tp"):
        assert type(request[key]) is float, key
    for key in ("action", "type", "deviation", "magic", "type_time", "type_filling"):
        assert type(request[key]) is int, key
    assert C.TRADE_ACTION_DEAL == 1 and C.ORDER_TYPE_BUY == 0 and C.ORDER_TYPE_SELL == 1

    sell = buy_request(side="sell", sl=None, tp=None, filling=C.ORDER_FILLING_FOK)
    assert sell["type"] == C.ORDER_TYPE_SELL and sell["sl"] == 0.0 and sell["tp"] == 0.0
    assert sell["type_filling"] == C.ORDER_FILLING_FOK and "position" not in sell


def test_market_order_request_refuses_what_mt5_would_mangle() -> None:
    with pytest.raises(ValueError, match="side"):
        buy_request(side="long")
    with pytest.raises(ValueError, match="comment"):
        buy_request(comment="x" * 32)  # MT5 would silently cut it, losing the trade's identity


def test_check_order(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    assert gw.check_order(buy_request()) == (0, "Done")
    retcode, _ = gw.check_order(buy_request(volume="0.001"))
    assert retcode == C.TRADE_RETCODE_INVALID_VOLUME


def test_decimal_fields_are_converted_before_sending(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    request = buy_request()
    request["volume"] = Decimal("0.20")  # a caller's Decimal must not reach the package
    assert gw.send_order(request).volume == Decimal("0.2")


# --- retcodes are results, not errors --------------------------------------------------------------


def test_requote_comes_back_as_a_result(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    terminal.sim_set_requotes(1)
    result = gw.send_order(buy_request())
    assert isinstance(result, OrderResult)
    assert result.retcode == C.TRADE_RETCODE_REQUOTE and not result.done
    assert result.bid == Decimal("1.085") and result.ask == Decimal("1.0851")
    assert gw.positions() == []
    assert gw.send_order(buy_request()).retcode == C.TRADE_RETCODE_DONE


def test_reject_and_partial_fill_come_back_as_results(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    terminal.sim_set_reject(C.TRADE_RETCODE_REJECT)
    assert gw.send_order(buy_request()).retcode == C.TRADE_RETCODE_REJECT
    terminal.sim_set_reject(None)
    terminal.sim_set_partial_fill(0.5)
    partial = gw.send_order(buy_request(volume="0.40"))
    assert partial.retcode == C.TRADE_RETCODE_DONE_PARTIAL and partial.done
    assert partial.volume == Decimal("0.2")


# --- failures --------------------------------------------------------------------------------------


def test_wrong_password_is_login_failed() -> None:
    broker = SimBroker(seed=1, accounts={LOGIN: {"password": "right", "balance": 5000}})
    with pytest.raises(TerminalLoginFailed) as raised:
        Gateway.from_module(SimTerminal(broker), login=LOGIN, password="wrong", server=SERVER)
    error = raised.value
    assert isinstance(error, PermanentTerminalError) and not error.retryable
    assert error.call == "initialize" and error.terminal_code == C.RES_E_AUTH_FAILED
    assert error.code == "terminal_login_failed"  # the stable name every TradeGuardError has
    with Gateway.from_module(SimTerminal(broker), login=LOGIN, password="right", server=SERVER) as gw:
        assert gw.account().balance == Decimal("5000")


def test_disconnect_is_retryable_unavailable(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    terminal.sim_disconnect(30)
    with pytest.raises(TerminalUnavailable) as raised:
        gw.account()
    assert isinstance(raised.value, RetryableTerminalError) and raised.value.retryable
    assert raised.value.terminal_code == C.RES_E_INTERNAL_FAIL_CONNECT
    # "No IPC connection" is a definite answer: nothing was sent, so this is not an unknown outcome.
    with pytest.raises(TerminalUnavailable) as sent:
        gw.send_order(buy_request())
    assert not isinstance(sent.value, OrderOutcomeUnknown)
    terminal.sim_disconnect(0)
    assert gw.positions() == []


def test_login_while_disconnected_is_retryable(broker: SimBroker) -> None:
    broker.disconnect(30)
    with pytest.raises(TerminalUnavailable):
        Gateway.from_module(SimTerminal(broker), login=LOGIN, password="x", server=SERVER)


def test_latency_above_timeout_is_terminal_timeout(broker: SimBroker) -> None:
    with Gateway.from_module(
        SimTerminal(broker), login=LOGIN, password="x", server=SERVER, timeout=0.2
    ) as gw:
        broker.set_latency(600)
        started = time.monotonic()
        with pytest.raises(TerminalTimeout) as raised:
            gw.account()
        assert time.monotonic() - started < 0.5  # the gateway's wait, not the terminal's latency
        assert raised.value.retryable and raised.value.call == "account_info"
        broker.set_latency(0)
        time.sleep(0.7)  # let the abandoned call finish on the gateway's thread
        assert gw.account().login == LOGIN


def test_order_send_timeout_is_outcome_unknown_and_the_order_may_exist(broker: SimBroker) -> None:
    terminal = SimTerminal(broker)
    terminal.sim_set_quote("EURUSD", 1.08500, 1.08510)
    with Gateway.from_module(terminal, login=LOGIN, password="x", server=SERVER, timeout=0.2) as gw:
        broker.set_latency(400)
        with pytest.raises(OrderOutcomeUnknown):
            gw.send_order(buy_request("tg-slow-1"))
        broker.set_latency(0)
        time.sleep(0.5)
        # The terminal did execute it after we stopped waiting: exactly why callers must look first.
        assert [(p.magic, p.comment) for p in gw.positions()] == [(MAGIC, "tg-slow-1")]


def test_lost_reply_is_outcome_unknown_and_the_order_is_found(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    terminal.sim_lose_next_reply()
    with pytest.raises(OrderOutcomeUnknown) as raised:
        gw.send_order(buy_request("tg-trade-42"))
    assert raised.value.retryable and raised.value.call == "order_send"
    assert raised.value.terminal_code == C.RES_E_INTERNAL_FAIL_TIMEOUT
    found = [p for p in gw.positions() if p.magic == MAGIC and p.comment == "tg-trade-42"]
    assert len(found) == 1 and found[0].volume == Decimal("0.1")


def test_algo_trading_off_is_permanent(gw: Gateway, terminal: SimTerminal) -> None:
    pin_eurusd(terminal)
    terminal.sim_set_algo_trading(False)
    with pytest.raises(AutoTradingDisabled):
        gw.send_order(buy_request())
    assert gw.positions() == []


def test_closed_gateway_refuses_calls(terminal: SimTerminal) -> None:
    gw = Gateway.from_module(terminal, login=LOGIN, password="x", server=SERVER)
    gw.close()
    gw.close()  # twice is fine
    with pytest.raises(TerminalUnavailable):
        gw.account()
    # close() shut the terminal session down.
    assert terminal.account_info() is None


# --- opening by URL ------------------------------------------------------------------------------


def test_open_sim_in_process() -> None:
    with Gateway.open(
        "sim://", declared=declared_terminals(["sim://"]), login=4242, password="x", server=SERVER
    ) as gw:
        assert gw.account().login == 4242
        assert isinstance(gw.module, SimTerminal)


def test_open_mt5_without_the_package_is_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)  # makes `import MetaTrader5` fail
    with pytest.raises(TerminalNotSupported):
        Gateway.open("mt5://", declared=MT5_HERE, login=LOGIN, password="x", server=SERVER)


def test_open_mt5_uses_whatever_module_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "MetaTrader5", raising=False)  # restored after the test
    install_as_metatrader5(SimBroker(seed=3))
    with Gateway.open("mt5://", declared=MT5_HERE, login=LOGIN, password="x", server=SERVER) as gw:
        assert gw.account().login == LOGIN
        assert gw.symbol("EURUSD").pip == Decimal("0.0001")


@pytest.mark.parametrize("url", ["ftp://host", "mt5://somehost", "mt5linux://host", "nonsense"])
def test_invalid_terminal_urls(url: str) -> None:
    with pytest.raises(InvalidTerminalUrl):
        Gateway.open(url, declared=MT5_HERE, login=LOGIN, password="x", server=SERVER)


def test_unreachable_rpyc_server_is_unavailable() -> None:
    with pytest.raises(TerminalUnavailable):
        Gateway.open(
            "sim://127.0.0.1:1",
            declared=declared_terminals(["sim://127.0.0.1:1"]),
            login=LOGIN,
            password="x",
            server=SERVER,
            timeout=2,
        )


# --- the error classes -----------------------------------------------------------------------------


def test_every_error_class_tells_the_operator_what_to_do() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, TerminalError) and obj.__module__ == errors.__name__
    ]
    assert len(classes) >= 10
    for cls in classes:
        doc = cls.__dict__.get("__doc__")  # its own docstring, not an inherited one
        assert doc and len(doc.split()) >= 10, cls.__name__
    assert issubclass(OrderOutcomeUnknown, RetryableTerminalError)
    for cls in (TerminalLoginFailed, SymbolNotFound, TerminalNotSupported, InvalidTerminalUrl):
        assert issubclass(cls, PermanentTerminalError)
    from shared.core.errors import TradeGuardError

    assert issubclass(TerminalError, TradeGuardError)


@pytest.mark.parametrize(
    ("call", "code", "expected"),
    [
        ("initialize", C.RES_E_AUTH_FAILED, TerminalLoginFailed),
        ("account_info", C.RES_E_INTERNAL_FAIL_CONNECT, TerminalUnavailable),
        ("account_info", C.RES_E_INTERNAL_FAIL_RECEIVE, TerminalUnavailable),
        ("positions_get", C.RES_E_INTERNAL_FAIL_TIMEOUT, TerminalTimeout),
        ("symbol_info", C.RES_E_NOT_FOUND, SymbolNotFound),
        ("symbol_info_tick", C.RES_E_FAIL, SymbolNotFound),
        ("order_send", C.RES_E_INTERNAL_FAIL_TIMEOUT, OrderOutcomeUnknown),
        ("order_send", C.RES_E_INTERNAL_FAIL_RECEIVE, OrderOutcomeUnknown),
        ("order_send", C.RES_E_FAIL, OrderOutcomeUnknown),
        ("order_send", None, OrderOutcomeUnknown),
        ("order_send", C.RES_E_INTERNAL_FAIL_CONNECT, TerminalUnavailable),
        ("order_send", C.RES_E_AUTO_TRADING_DISABLED, AutoTradingDisabled),
        ("initialize", C.RES_E_UNSUPPORTED, TerminalNotSupported),
        ("account_info", C.RES_E_FAIL, TerminalError),
    ],
)
def test_classify(call: str, code: int | None, expected: type[TerminalError]) -> None:
    error = classify(call, code, "message")
    assert type(error) is expected
    assert error.call == call and error.terminal_code == code and error.terminal_message == "message"
    assert call in str(error)
