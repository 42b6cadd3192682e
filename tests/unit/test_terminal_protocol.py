"""The seam is checked: the gateway and the simulator against the terminal protocol they both follow
(shared.mt5.protocol), written once.

- the simulated terminal implements every function of the protocol, with the documented parameters;
- every function the gateway calls on a terminal is in the protocol, and the simulator answers it: seen by
  a recording terminal handed to the gateway the normal way, and cross-checked against the call sites in
  gateway.py and the session code of wire.py;
- the constants the simulator and the gateway rely on are in shared.mt5.constants, with the official values.
"""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.mt5 import constants as C
from shared.mt5 import errors, gateway, structs, wire
from shared.mt5.errors import SymbolNotFound
from shared.mt5.gateway import Gateway
from shared.mt5.protocol import FUNCTIONS, MetaTrader5Module
from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.install import install_as_metatrader5
from shared.mt5.sim.terminal import SimTerminal

SERVER = "TradeGuard-Sim"
ROOT = Path(__file__).resolve().parents[2]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def incompatibilities(documented: Callable[..., Any], implemented: Callable[..., Any]) -> list[str]:
    """How a call written against `documented` could go wrong on `implemented`: a parameter missing,
    renamed, of another kind, with another default, or in another position; or a parameter `documented`
    does not have that `implemented` requires."""
    want = inspect.signature(documented).parameters
    have = inspect.signature(implemented).parameters
    problems = []
    for name, wanted in want.items():
        got = have.get(name)
        if got is None:
            problems.append(f"no parameter {name!r}")
            continue
        if got.kind != wanted.kind:
            problems.append(f"{name!r} is {got.kind.description}, documented {wanted.kind.description}")
        if wanted.default is wanted.empty:
            continue
        if got.default is got.empty:
            problems.append(f"{name!r} has no default, documented {wanted.default!r}")
        elif type(got.default) is not type(wanted.default) or got.default != wanted.default:
            problems.append(f"{name!r} defaults to {got.default!r}, documented {wanted.default!r}")
    positional_wanted = [name for name, p in want.items() if p.kind in _POSITIONAL]
    positional_got = [name for name, p in have.items() if p.kind in _POSITIONAL]
    if positional_got[: len(positional_wanted)] != positional_wanted:
        problems.append(f"positional parameters {positional_got}, documented {positional_wanted}")
    for name, got in have.items():
        if name not in want and got.default is got.empty and got.kind not in _VARIADIC:
            problems.append(f"requires {name!r}, which the documented function does not have")
    return problems


# ----- the simulator implements the protocol -------------------------------------------------------------


def test_the_protocol_lists_the_functions_tradeguard_relies_on() -> None:
    assert len(FUNCTIONS) == len(set(FUNCTIONS))
    assert {"initialize", "login", "account_info", "positions_get", "history_deals_get", "order_send"} <= set(
        FUNCTIONS
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_simulator_implements_each_function_with_the_documented_parameters(name: str) -> None:
    implemented = getattr(SimTerminal, name, None)
    assert callable(implemented), f"SimTerminal has no {name}()"
    assert incompatibilities(getattr(MetaTrader5Module, name), implemented) == []


def test_the_check_sees_a_parameter_renamed_moved_of_another_kind_or_default_or_required() -> None:
    def documented(
        self: Any, symbol: str, enable: bool | None = None, *, ticket: int | None = None
    ) -> None: ...

    def with_more(
        self: Any,
        symbol: str,
        enable: bool | None = None,
        *args: Any,
        ticket: int | None = None,
        extra: int = 0,
    ) -> None: ...

    def renamed(self: Any, name: str, enable: bool | None = None, *, ticket: int | None = None) -> None: ...

    def moved(
        self: Any, enable: bool | None = None, symbol: str = "", *, ticket: int | None = None
    ) -> None: ...

    def keyword(self: Any, symbol: str, enable: bool | None = None, ticket: int | None = None) -> None: ...

    def other_default(self: Any, symbol: str, enable: bool = True, *, ticket: int | None = None) -> None: ...

    def requires_more(
        self: Any, symbol: str, enable: bool | None, *, ticket: int | None, more: int
    ) -> None: ...

    assert incompatibilities(documented, with_more) == []  # what it adds is optional
    assert incompatibilities(documented, renamed) == [
        "no parameter 'symbol'",
        "positional parameters ['self', 'name', 'enable'], documented ['self', 'symbol', 'enable']",
        "requires 'name', which the documented function does not have",
    ]
    assert incompatibilities(documented, moved) == [
        "positional parameters ['self', 'enable', 'symbol'], documented ['self', 'symbol', 'enable']"
    ]
    assert incompatibilities(documented, keyword) == [
        "'ticket' is positional or keyword, documented keyword-only"
    ]
    assert incompatibilities(documented, other_default) == ["'enable' defaults to True, documented None"]
    assert incompatibilities(documented, requires_more) == [
        "'enable' has no default, documented None",
        "'ticket' has no default, documented None",
        "requires 'more', which the documented function does not have",
    ]


def test_the_installed_module_offers_the_protocol_functions_and_the_controls_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)  # restored (removed) after the test
    module = install_as_metatrader5(SimBroker(seed=7))
    functions = {
        name
        for name, value in vars(module).items()
        if callable(value) and not name.startswith(("_", "sim_")) and name not in structs.__all__
    }
    assert functions == set(FUNCTIONS)
    controls = {name for name in dir(SimTerminal) if name.startswith("sim_")}
    assert controls and controls <= set(vars(module))


# ----- the gateway calls only what the protocol has ------------------------------------------------------


class RecordingTerminal:
    """A terminal for the gateway, handed over like any module-like object: each call of a function is
    recorded by name and answered by the simulated terminal behind it. A function the simulator does not
    have fails the call (AttributeError, which the gateway reports as a TerminalError)."""

    def __init__(self, terminal: SimTerminal) -> None:
        self.terminal = terminal
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):  # what the session code keeps on the module (_tradeguard_session)
            raise AttributeError(name)
        answer = getattr(self.terminal, name)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return answer(*args, **kwargs)

        return recorded


def exercise(gw: Gateway, terminal: SimTerminal) -> None:
    """Every public reading and trading method of the gateway, along its fallbacks."""
    since, until = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1)
    terminal.sim_set_quote("EURUSD", 1.085, 1.0851)
    gw.account()
    gw.symbol("EURUSD")
    assert terminal.symbol_select("GBPUSD", False)
    gw.symbol("GBPUSD")  # hidden from Market Watch: selected, then read again
    quote = gw.quote("EURUSD")
    with pytest.raises(SymbolNotFound):
        gw.quote("NOSUCH")  # no tick: selected (which fails), and last_error read
    request = Gateway.market_order_request(
        symbol="EURUSD", side="buy", volume="0.10", price=quote.ask, sl=None, tp=None,
        deviation_points=20, magic=770001, comment="protocol",
    )  # fmt: skip
    assert gw.check_order(request)[0] == 0
    assert gw.send_order(request).done
    (ticket,) = [position.ticket for position in gw.positions()]
    assert [position.ticket for position in gw.positions("EURUSD")] == [ticket]
    assert (gw.position(ticket) or pytest.fail()).ticket == ticket
    assert gw.deals(since, until)
    assert gw.deals_for_position(ticket)
    assert gw.deals_for_positions([ticket])[ticket]
    assert [position.ticket for position in gw.read_account(since, until).positions] == [ticket]


@pytest.fixture
def recorded() -> Iterator[list[str]]:
    """The names of the terminal functions a gateway called while every one of its methods ran: on a
    session of its own (closed with shutdown), and on a session shared with another gateway that logged
    it in to another account meanwhile (the session code logs it back in to its own)."""
    broker = SimBroker(seed=7)
    own = RecordingTerminal(SimTerminal(broker))
    with Gateway.from_module(own, login=1001, password="x", server=SERVER, timeout=5) as gw:
        exercise(gw, own.terminal)
    shared_session = RecordingTerminal(SimTerminal(broker))
    credentials = {"password": "x", "server": SERVER, "timeout": 5, "shared_session": True}
    with (
        Gateway.from_module(shared_session, login=1002, **credentials) as first,
        Gateway.from_module(shared_session, login=1003, **credentials),  # now the session is on 1003
    ):
        assert first.account().login == 1002
    yield own.calls + shared_session.calls


def gateway_call_sites() -> set[str]:
    """The function names written at gateway.py's call sites: `_call("name", ...)`, and the call tuples
    `("name", (args), kwargs)` of a run."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(gateway.__file__).read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_call":
            first = node.args[0]
        elif isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[1], ast.Tuple):
            first = node.elts[0]
        else:
            continue
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
    return names


def session_calls() -> set[str]:
    """What wire.py's session code (run here and in the terminal's Python) calls on the module itself."""
    names: set[str] = set()
    for source in (wire._SESSION_SOURCE, wire._REMOTE_HELPER):
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "mt5"
            ):
                names.add(node.func.attr)
    return names


def test_every_function_the_gateway_called_is_in_the_protocol_and_answered_by_the_simulator(
    recorded: list[str],
) -> None:
    called = set(recorded)
    assert called - set(FUNCTIONS) == set()
    assert all(callable(getattr(SimTerminal, name, None)) for name in called)
    # The exercise reached the login of a shared session and the error path, not only the happy calls.
    assert {"initialize", "login", "last_error", "symbol_select", "order_send", "shutdown"} <= called


def test_every_call_site_of_the_gateway_names_a_protocol_function_and_was_exercised(
    recorded: list[str],
) -> None:
    sites = gateway_call_sites()
    assert sites - set(FUNCTIONS) == set()
    assert {"initialize", "login", "account_info", "order_send"} <= sites  # the extraction still works
    # A call site the exercise never reached would leave the recording blind to it.
    assert sites - set(recorded) == set()


def test_the_session_code_calls_protocol_functions_only() -> None:
    calls = session_calls()
    assert calls - set(FUNCTIONS) == set()
    assert {"account_info", "login", "last_error"} <= calls  # the extraction still works


def test_the_gateway_sorts_calls_by_protocol_function_names() -> None:
    for names in (errors.ORDER_CALLS, errors.SYMBOL_CALLS, gateway._LIST_CALLS, gateway._VOID_CALLS):
        assert names - set(FUNCTIONS) == set()


# ----- the constants ------------------------------------------------------------------------------------

# Read from MetaTrader5/__init__.py of the Windows wheel metatrader5-5.0.6231 (C.OFFICIAL_PACKAGE_VERSION):
# every constant the gateway side uses (test_sim_terminal.py spot-checks more).
OFFICIAL_VALUES = {
    "COPY_TICKS_ALL": -1,
    "DEAL_ENTRY_IN": 0,
    "DEAL_ENTRY_INOUT": 2,
    "DEAL_ENTRY_OUT": 1,
    "DEAL_ENTRY_OUT_BY": 3,
    "DEAL_REASON_CLIENT": 0,
    "DEAL_REASON_EXPERT": 3,
    "DEAL_REASON_MOBILE": 1,
    "DEAL_REASON_SL": 4,
    "DEAL_REASON_SO": 6,
    "DEAL_REASON_TP": 5,
    "DEAL_REASON_WEB": 2,
    "ORDER_FILLING_IOC": 1,
    "ORDER_TIME_GTC": 0,
    "ORDER_TYPE_BUY": 0,
    "ORDER_TYPE_SELL": 1,
    "POSITION_REASON_CLIENT": 0,
    "POSITION_REASON_EXPERT": 3,
    "POSITION_REASON_MOBILE": 1,
    "POSITION_REASON_WEB": 2,
    "RES_E_AUTH_FAILED": -6,
    "RES_E_AUTO_TRADING_DISABLED": -8,
    "RES_E_FAIL": -1,
    "RES_E_INTERNAL_FAIL": -10000,
    "RES_E_INTERNAL_FAIL_CONNECT": -10004,
    "RES_E_INTERNAL_FAIL_INIT": -10003,
    "RES_E_INTERNAL_FAIL_RECEIVE": -10002,
    "RES_E_INTERNAL_FAIL_SEND": -10001,
    "RES_E_INTERNAL_FAIL_TIMEOUT": -10005,
    "RES_E_INVALID_PARAMS": -2,
    "RES_E_INVALID_VERSION": -5,
    "RES_E_NOT_FOUND": -4,
    "RES_E_NO_MEMORY": -3,
    "RES_E_UNSUPPORTED": -7,
    "RES_S_OK": 1,
    "SYMBOL_TRADE_MODE_FULL": 4,
    "SYMBOL_TRADE_MODE_LONGONLY": 1,
    "SYMBOL_TRADE_MODE_SHORTONLY": 2,
    "TRADE_ACTION_DEAL": 1,
    "TRADE_ACTION_SLTP": 6,
    "TRADE_RETCODE_CONNECTION": 10031,
    "TRADE_RETCODE_DONE": 10009,
    "TRADE_RETCODE_DONE_PARTIAL": 10010,
    "TRADE_RETCODE_ERROR": 10011,
    "TRADE_RETCODE_PLACED": 10008,
    "TRADE_RETCODE_PRICE_CHANGED": 10020,
    "TRADE_RETCODE_POSITION_CLOSED": 10036,
    "TRADE_RETCODE_PRICE_OFF": 10021,
    "TRADE_RETCODE_REQUOTE": 10004,
    "TRADE_RETCODE_TIMEOUT": 10012,
    "TRADE_RETCODE_TOO_MANY_REQUESTS": 10024,
}


def constants_used() -> dict[Path, set[str]]:
    """The shared.mt5.constants names each module of TradeGuard uses: `C.NAME` through whatever name it
    imports the module as, and `from shared.mt5.constants import NAME`."""
    used: dict[Path, set[str]] = {}
    for path in sorted(
        path for package in ("shared", "workers", "web") for path in (ROOT / package).rglob("*.py")
    ):
        tree = ast.parse(path.read_text())
        aliases: set[str] = set()
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "shared.mt5.constants":
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == "shared.mt5":
                aliases.update(
                    alias.asname or alias.name for alias in node.names if alias.name == "constants"
                )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                names.add(node.attr)
        if names:
            used[path.relative_to(ROOT)] = names
    return used


def test_the_constants_the_simulator_and_the_gateway_use_are_official_ones() -> None:
    used = constants_used()
    by_simulator = set().union(
        *(names for path, names in used.items() if path.parts[:3] == ("shared", "mt5", "sim"))
    )
    by_gateway_side = set().union(
        *(names for path, names in used.items() if path.parts[:3] != ("shared", "mt5", "sim"))
    )
    assert len(by_simulator) > 50 and {"TRADE_ACTION_DEAL", "RES_S_OK"} <= by_gateway_side  # still seen
    assert {name for name in by_simulator | by_gateway_side if not hasattr(C, name)} == set()
    # Every constant the gateway side relies on is checked against the wheel here.
    assert by_gateway_side - set(OFFICIAL_VALUES) == set()
    assert {name: getattr(C, name) for name in OFFICIAL_VALUES} == OFFICIAL_VALUES
