"""The real MetaTrader5 package has one terminal session per process, shared by every caller (every
thread, every mt5linux connection). A gateway on such a terminal must not find its calls made on the
account another caller logged in to in the meantime: above all, not its orders."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from shared.mt5.backends import connector
from shared.mt5.errors import TerminalError
from shared.mt5.gateway import Gateway


class OneSessionTerminal:
    """Just enough of the package, with its one-session-per-process behaviour: a login by anyone
    switches the account for everyone. Records which account each order went to."""

    def __init__(self) -> None:
        self.account: int | None = None
        self.initialized = False
        self.orders: list[tuple[int | None, str]] = []
        self.logins = 0

    def account_info(self) -> Any:
        if not self.initialized or self.account is None:
            return None
        return SimpleNamespace(login=self.account, server="S")

    def initialize(self, login: int | None = None, password: str = "x", **_: Any) -> bool:
        self.initialized = True
        if password != "x":
            return False
        self.account = login
        return True

    def login(self, login: int, password: str = "x", **_: Any) -> bool:
        self.logins += 1
        if password != "x":
            # A refused login leaves the session where it was and, on some builds, last_error() says
            # "Success" all the same.
            return False
        self.account = login
        return True

    def shutdown(self) -> None:
        self.initialized, self.account = False, None

    def last_error(self) -> tuple[int, str]:
        return (1, "Success")

    def slow_call(self) -> bool:
        time.sleep(0.3)  # long enough for another thread to try to log in meanwhile
        return True

    def order_send(self, request: dict[str, Any]) -> dict[str, Any]:
        self.orders.append((self.account, request["comment"]))
        return {
            "retcode": 10009,
            "deal": 1,
            "order": 1,
            "volume": request["volume"],
            "price": request["price"],
            "bid": request["price"],
            "ask": request["price"],
            "comment": "Request executed",
            "request_id": 1,
        }


def order(comment: str) -> dict[str, Any]:
    return Gateway.market_order_request(
        symbol="EURUSD",
        side="buy",
        volume="0.1",
        price="1.1",
        sl=None,
        tp=None,
        deviation_points=10,
        magic=7,
        comment=comment,
    )


def open_on(terminal: OneSessionTerminal, login: int) -> Gateway:
    return Gateway.from_module(
        terminal, login=login, password="x", server="S", timeout=5, shared_session=True
    )


def test_an_order_goes_to_the_gateways_account_even_after_another_login_on_the_terminal():
    terminal = OneSessionTerminal()
    first, second = open_on(terminal, 1001), open_on(terminal, 1002)
    assert terminal.account == 1002  # the second gateway's login switched the one session

    first.send_order(order("first"))
    second.send_order(order("second"))
    assert terminal.orders == [(1001, "first"), (1002, "second")]


def test_a_gateway_logs_in_again_only_when_the_session_is_on_another_account():
    terminal = OneSessionTerminal()
    first = open_on(terminal, 1001)
    first.send_order(order("a"))
    first.send_order(order("b"))
    assert terminal.logins == 0  # initialize() logged in; the session stayed on 1001
    second = open_on(terminal, 1002)
    first.send_order(order("c"))
    assert terminal.logins == 1  # back to 1001, once
    second.send_order(order("d"))
    assert terminal.logins == 2
    assert terminal.orders == [(1001, "a"), (1001, "b"), (1001, "c"), (1002, "d")]


def test_a_login_from_another_thread_waits_until_a_run_of_calls_is_over():
    terminal = OneSessionTerminal()
    first, second = open_on(terminal, 1001), open_on(terminal, 1002)
    started = threading.Event()

    def switch_accounts() -> None:
        started.wait(timeout=5)
        second._call("slow_call")  # logs in to 1002 first, if it can get in

    other = threading.Thread(target=switch_accounts)
    other.start()
    original = terminal.slow_call

    def slow_and_signal() -> bool:
        started.set()
        return original()

    terminal.slow_call = slow_and_signal  # type: ignore[method-assign]
    first._call_many([("slow_call", (), {}), ("order_send", (order("first"),), {})])
    other.join(timeout=5)
    assert terminal.orders == [(1001, "first")]


def test_closing_a_gateway_leaves_the_shared_session_running_for_the_other_callers():
    terminal = OneSessionTerminal()
    first, second = open_on(terminal, 1001), open_on(terminal, 1002)
    first.close()
    assert terminal.initialized
    second.send_order(order("second"))
    assert terminal.orders == [(1002, "second")]


def test_which_terminals_share_one_session_per_process(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "MetaTrader5", types.ModuleType("MetaTrader5"))  # Windows only
    assert connector("mt5linux://10.0.0.5:18812", 5)[2] is True
    assert connector("mt5://", 5)[2] is True
    assert connector("sim://127.0.0.1:18812", 5)[2] is False  # one session per connection
    assert connector("sim://", 5)[2] is False


def test_the_remote_helper_runs_one_run_at_a_time_on_a_one_session_terminal():
    """What `_tradeguard_calls` does in the terminal's Python (here exec'd locally, as the RPyC classic
    server would): on the real package, a run is not split by another connection's login."""
    from shared.mt5.wire import _REMOTE_HELPER, decode_answers, encode_calls

    terminal = OneSessionTerminal()
    terminal.initialize(login=1001)
    namespace: dict[str, Any] = {"mt5": terminal}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - the helper's own source
    calls = namespace["_tradeguard_calls"]
    in_slow_call = threading.Event()
    original = terminal.slow_call

    def slow_and_signal() -> bool:
        in_slow_call.set()
        return original()

    terminal.slow_call = slow_and_signal  # type: ignore[method-assign]
    run = [("login", (1001,), {}), ("slow_call", (), {}), ("order_send", (order("first"),), {})]
    first = threading.Thread(target=calls, args=(encode_calls(run),))
    first.start()
    assert in_slow_call.wait(timeout=5)
    login = encode_calls([("login", (1002,), {})])  # another connection's login, during the run
    answers = decode_answers(calls(login), 1)
    first.join(timeout=5)
    assert answers == [(True, None)]
    assert terminal.orders == [(1001, "first")] and terminal.account == 1002


def test_the_remote_helper_takes_no_lock_on_a_terminal_with_a_session_per_thread():
    from shared.mt5.wire import _REMOTE_HELPER, decode_answers, encode_calls

    terminal = OneSessionTerminal()
    terminal.SESSION_PER_THREAD = True  # type: ignore[attr-defined]
    namespace: dict[str, Any] = {"mt5": terminal}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - the helper's own source
    decode_answers(namespace["_tradeguard_calls"](encode_calls([("login", (1,), {})])), 1)
    assert "_tradeguard_lock" not in terminal.__dict__


def test_the_remote_helper_logs_in_only_when_the_session_is_on_another_account():
    from shared.mt5.wire import _REMOTE_HELPER, ENSURE_LOGIN, decode_answers, encode_calls

    terminal = OneSessionTerminal()
    namespace: dict[str, Any] = {"mt5": terminal}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - the helper's own source

    def run(login: int, password: str = "x", first: str = ENSURE_LOGIN) -> Any:
        credentials = {"login": login, "password": password, "server": "S", "timeout": 1000}
        payload = encode_calls([(first, (), credentials), ("order_send", (order(str(login)),), {})])
        return decode_answers(namespace["_tradeguard_calls"](payload), 2)

    run(1001, first="initialize")  # a gateway's first run opens the session
    ensured, sent = run(1001)
    assert ensured == (True, None) and sent[1] is None and terminal.logins == 0
    run(1002)
    assert terminal.logins == 1
    assert terminal.orders == [(1001, "1001"), (1001, "1001"), (1002, "1002")]


def test_a_session_opened_by_someone_else_is_logged_in_to_again():
    """The session is on 1001, but not through a login of ours with these credentials (another
    program, or another account row naming 1001): a login is made before anything else."""
    from shared.mt5.wire import _REMOTE_HELPER, ENSURE_LOGIN, decode_answers, encode_calls

    terminal = OneSessionTerminal()
    terminal.initialize(login=1001)
    namespace: dict[str, Any] = {"mt5": terminal}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - the helper's own source
    ensure = (ENSURE_LOGIN, (), {"login": 1001, "password": "x", "server": "S", "timeout": 1000})
    decode_answers(namespace["_tradeguard_calls"](encode_calls([ensure])), 1)
    assert terminal.logins == 1


def test_another_row_naming_the_same_login_with_a_wrong_password_never_rides_on_the_session():
    """Owner A's gateway opened the shared session on 1001. Owner B's account names login 1001 with a
    wrong password, and B's pooled run starts with ensure-login: B must neither read A's account nor
    trade on it. The refused login ends the run although last_error says "Success" (the terminal's side
    of the run used to go on, on A's account)."""
    from shared.mt5.gateway import _checked_run
    from shared.mt5.wire import _REMOTE_HELPER, ENSURE_LOGIN, decode_answers, encode_calls

    terminal = OneSessionTerminal()
    namespace: dict[str, Any] = {"mt5": terminal}
    exec(_REMOTE_HELPER, namespace)  # noqa: S102 - the helper's own source

    def run(first: tuple[str, tuple[Any, ...], dict[str, Any]], comment: str) -> Any:
        calls = [first, ("order_send", (order(comment),), {})]
        return calls, decode_answers(namespace["_tradeguard_calls"](encode_calls(calls)), 2)

    owner_a = {"login": 1001, "password": "x", "server": "S", "timeout": 1000}
    owner_b = {**owner_a, "password": "a guess"}
    run(("initialize", (), owner_a), "from A")
    calls, answers = run((ENSURE_LOGIN, (), owner_b), "from B")
    assert answers == [(False, (1, "Success"))]  # stopped at the refused login
    with pytest.raises(TerminalError) as raised:
        _checked_run(calls, answers)
    assert raised.value.call == ENSURE_LOGIN
    assert terminal.orders == [(1001, "from A")]
    # A's next run logs in again (B's attempt left nothing known about the session) and goes on.
    calls, answers = run((ENSURE_LOGIN, (), owner_a), "A again")
    assert [error for _, error in answers] == [None, None] and terminal.logins == 2
    assert terminal.orders == [(1001, "from A"), (1001, "A again")]


def test_an_order_that_ran_after_a_failed_call_is_outcome_unknown():
    """A terminal whose side of the run went on past a failure (not ours: ours stops) may have placed
    the order: the gateway must look for it, not call it failed."""
    from shared.mt5.errors import OrderOutcomeUnknown
    from shared.mt5.gateway import _checked_run

    calls = [("login", (), {}), ("order_send", ({},), {})]
    with pytest.raises(OrderOutcomeUnknown, match="order_send ran after login failed"):
        _checked_run(calls, [(False, (1, "Success")), ({"retcode": 10009}, None)])
    with pytest.raises(OrderOutcomeUnknown, match="skipped"):
        _checked_run(calls, [(True, None)])  # answered short, without a failure to explain it
