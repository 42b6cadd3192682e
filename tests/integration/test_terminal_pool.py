"""Pooled RPyC connections to the real `terminal` process (`ConnectionPool`, `Gateway.open(pool=...)`) and
`Gateway.read_account`, the one-round-trip read a sync makes; and the terminal's `--latency-mode`.

Most tests share one server process (one simulated broker) and use their own logins and their own pool.
Tests that kill a terminal or set a terminal-wide latency start their own. The gateway's `_backend` and
`_pending_login` are looked at directly: which connection a gateway got, and whether it will log in, is
exactly what pooling is about, and nothing public says it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import rpyc
from rpyc.core import consts

from shared.mt5 import constants as C
from shared.mt5.errors import (
    TerminalError,
    TerminalLoginFailed,
    TerminalNotDeclared,
    TerminalTimeout,
    TerminalUnavailable,
)
from shared.mt5.gateway import Gateway, fill_pool
from shared.mt5.pool import ConnectionPool
from shared.mt5.terminals import declared_terminals
from tests.processes import terminal_server, wait_for

SERVER = "TradeGuard-Sim"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with terminal_server() as listening:
        yield listening


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    connections = ConnectionPool()
    yield connections
    connections.clear()


def control_connection(port: int) -> Any:
    """A plain mt5linux-style connection to the server, for the simulator's sim_* controls."""
    conn = rpyc.classic.connect("127.0.0.1", port)
    conn.execute("import MetaTrader5 as mt5")
    return conn


@pytest.fixture
def control(port: int) -> Iterator[Any]:
    conn = control_connection(port)
    yield conn
    conn.close()


def open_pooled(port: int, login: int, pool: ConnectionPool, *, password: str = "demo", timeout: float = 5.0):
    url = f"sim://127.0.0.1:{port}"
    return Gateway.open(
        url,
        declared=declared_terminals([url]),
        login=login,
        password=password,
        server=SERVER,
        timeout=timeout,
        pool=pool,
    )


def window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(minutes=1)


@contextmanager
def rpyc_requests(backend: Any) -> Iterator[list[int]]:
    """The RPyC requests sent on `backend`'s connection meanwhile (their handlers, e.g. HANDLE_CALL).

    Counted where RPyC puts a request on the wire, so every round trip the client starts is seen: a
    netref attribute fetch or a result copied back would be a request of its own.
    """
    conn = backend.conn
    sent: list[int] = []
    original = conn._send

    def counting(msg: int, seq: int, args: Any) -> None:
        if msg == consts.MSG_REQUEST:
            sent.append(args[0])
        original(msg, seq, args)

    conn._send = counting
    try:
        yield sent
    finally:
        del conn._send  # the class's method again


def add_passworded_account(control: Any, login: int, password: str) -> None:
    """The terminal process runs a demo broker, which opens any account with any password; an account
    that refuses a wrong password has to be added to it. No sim_* control does that, hence the broker's
    own (private) method, under its lock."""
    control.execute(
        "with mt5.sim_broker._lock:\n"
        f"    mt5.sim_broker._add_account({login}, {{'password': {password!r}}}, server={SERVER!r})"
    )


# --- giving back and reusing ---------------------------------------------------------------------


def test_a_closed_pooled_gateway_goes_back_to_the_pool_and_is_reused_without_a_shutdown(port, pool):
    gateway = open_pooled(port, 8101, pool)
    backend = gateway._backend
    assert gateway.read_account(*window()).account.login == 8101
    assert pool.idle() == 0  # in use

    with rpyc_requests(backend) as sent:
        gateway.close()
        gateway.close()  # twice: still given back once
    assert sent == []  # no shutdown, nor anything else, went to the terminal
    assert pool.idle() == 1

    again = open_pooled(port, 8101, pool)
    assert again._backend is backend and again._backend.conn is backend.conn
    assert pool.idle() == 0
    # The terminal session survived the close: the account reads without a login, on the same connection.
    with rpyc_requests(backend) as sent:
        assert again.read_account(*window()).account.login == 8101
    assert sent == [consts.HANDLE_CALL]
    again.close()
    assert pool.idle() == 1


def test_the_same_login_sends_no_login_and_another_login_logs_in_on_the_same_connection(port, pool, control):
    ticket = control.eval("mt5.sim_open_manual")(8201, "EURUSD", C.ORDER_TYPE_BUY, 0.1)
    first = open_pooled(port, 8201, pool)
    backend = first._backend
    assert first._pending_login is not None and first._pending_login[0] == "initialize"  # a new session
    assert [p.ticket for p in first.read_account(*window()).positions] == [ticket]
    assert first._pending_login is None and backend.logged_in_as[:2] == (8201, SERVER)
    first.close()

    same = open_pooled(port, 8201, pool)
    assert same._backend is backend
    assert same._pending_login is None  # already logged in to 8201: no login at all
    state = same.read_account(*window())
    assert state.account.login == 8201 and [p.ticket for p in state.positions] == [ticket]
    same.close()

    other = open_pooled(port, 8202, pool)
    assert other._backend is backend
    # The session is started, so it switches accounts with login(), not initialize().
    assert other._pending_login is not None
    how, _, credentials = other._pending_login
    assert (how, credentials["login"], credentials["server"]) == ("login", 8202, SERVER)
    state = other.read_account(*window())
    # The other account's own figures: its login, and none of 8201's positions.
    assert state.account.login == 8202 and state.positions == []
    assert [d.side for d in state.deals] == ["balance"]
    assert other._pending_login is None and backend.logged_in_as[:2] == (8202, SERVER)
    other.close()
    assert pool.idle() == 1


def test_read_account_is_one_request_with_figures_positions_and_the_deals_of_the_window(port, pool, control):
    mt5 = control.eval("mt5")
    buy = mt5.sim_open_manual(8301, "EURUSD", C.ORDER_TYPE_BUY, 0.1)
    sell = mt5.sim_open_manual(8301, "USDJPY", C.ORDER_TYPE_SELL, 0.2)

    gateway = open_pooled(port, 8301, pool)
    # The first read of a new connection carries the login: initialize plus three calls, one request.
    with rpyc_requests(gateway._backend) as sent:
        state = gateway.read_account(*window())
    assert sent == [consts.HANDLE_CALL]

    assert state.account.login == 8301 and state.account.balance == Decimal("10000")
    assert state.account.margin > 0  # the two positions hold margin
    assert [(p.ticket, p.symbol, p.side, p.volume) for p in state.positions] == [
        (buy, "EURUSD", "buy", Decimal("0.1")),
        (sell, "USDJPY", "sell", Decimal("0.2")),
    ]
    assert [(d.side, d.position_id) for d in state.deals] == [("balance", 0), ("buy", buy), ("sell", sell)]

    # The deals are those of the window asked for; figures and positions do not depend on it.
    now = datetime.now(UTC)
    with rpyc_requests(gateway._backend) as sent:
        past = gateway.read_account(now - timedelta(hours=3), now - timedelta(hours=2))
    assert sent == [consts.HANDLE_CALL]
    assert past.deals == [] and [p.ticket for p in past.positions] == [buy, sell]
    assert past.account.login == 8301
    gateway.close()


def test_fill_pool_connects_until_enough_are_idle_and_each_is_started_by_its_first_user(port, pool):
    url = f"sim://127.0.0.1:{port}"
    declared = declared_terminals([url])
    in_use = open_pooled(port, 8151, pool)  # taken: not idle, so not counted
    assert in_use.read_account(*window()).account.login == 8151
    assert fill_pool(pool, url, declared=declared, count=3, timeout=5) == 3
    assert pool.idle() == 3
    assert fill_pool(pool, url, declared=declared, count=3, timeout=5) == 0  # enough already
    in_use.close()
    assert fill_pool(pool, url, declared=declared, count=5, timeout=5) == 1  # 4 idle: one more
    assert pool.idle() == 5

    # A warmed connection has no session yet: its first user starts one, with its login, and reads (the
    # connection used before logs in to another account instead).
    gateways = [open_pooled(port, 8152 + i, pool) for i in range(5)]
    assert pool.idle() == 0
    assert sorted(g._pending_login[0] for g in gateways if g._pending_login) == ["initialize"] * 4 + ["login"]
    assert [g.read_account(*window()).account.login for g in gateways] == [8152 + i for i in range(5)]
    for gateway in gateways:
        gateway.close()


def test_fill_pool_makes_no_more_than_the_pool_keeps(port):
    url = f"sim://127.0.0.1:{port}"
    small = ConnectionPool(max_idle_per_terminal=2)
    try:
        assert fill_pool(small, url, declared=declared_terminals([url]), count=5, timeout=5) == 2
        assert small.idle() == 2
    finally:
        small.clear()


def test_fill_pool_connects_only_to_a_declared_rpyc_terminal(port, pool):
    url = f"sim://127.0.0.1:{port}"
    with pytest.raises(TerminalNotDeclared):
        fill_pool(pool, url, declared=declared_terminals([f"sim://127.0.0.1:{port + 1}"]), count=2)
    assert pool.idle() == 0
    # An in-process terminal has no connection to keep.
    assert fill_pool(pool, "sim://", declared=declared_terminals(["sim://"]), count=2) == 0
    assert pool.idle() == 0


def test_fill_pool_on_a_terminal_that_is_down_fails_retryably_and_keeps_what_it_made(pool):
    with terminal_server() as own:
        url = f"sim://127.0.0.1:{own}"
        assert fill_pool(pool, url, declared=declared_terminals([url]), count=2, timeout=3) == 2
        kill_terminal(own)
        with pytest.raises(TerminalUnavailable) as raised:
            fill_pool(pool, url, declared=declared_terminals([url]), count=3, timeout=3)
        assert raised.value.retryable
        assert pool.idle() == 2  # dropped by the first user that finds them dead, as any idle one


def test_a_worker_warms_its_own_pool_and_only_logs_a_terminal_it_cannot_reach(port, caplog):
    """What the guards' watch does after each tick (workers.tasks.guard_watch): the next check finds a
    connection idle for each account it reads at once."""
    from workers import runtime

    pool = runtime.terminal_pool()
    pool.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="workers.runtime"):
            runtime.warm_terminals([f"sim://127.0.0.1:{port}", "sim://127.0.0.1:1"], 4)
        assert pool.idle() == 4
        assert "warming connections to sim://127.0.0.1:1 failed (TerminalUnavailable" in caplog.text
    finally:
        pool.clear()


# --- logins that fail or change ------------------------------------------------------------------


def test_a_wrong_password_fails_the_first_read_and_leaves_the_connection_not_logged_in_as_that_login(
    port, pool, control
):
    add_passworded_account(control, 8401, "right")
    # A new connection: the wrong password travels as initialize().
    fresh = open_pooled(port, 8401, pool, password="wrong")
    backend = fresh._backend
    with pytest.raises(TerminalLoginFailed):
        fresh.read_account(*window())
    assert backend.logged_in_as is None and not backend.initialized
    fresh.close()

    # A started session on another account: the wrong password travels as login().
    other = open_pooled(port, 8402, pool)
    assert other._backend is backend
    assert other.read_account(*window()).account.login == 8402
    other.close()
    wrong = open_pooled(port, 8401, pool, password="wrong")
    assert wrong._backend is backend and wrong._pending_login is not None
    assert wrong._pending_login[0] == "login"
    with rpyc_requests(backend) as sent, pytest.raises(TerminalLoginFailed):
        wrong.read_account(*window())
    assert sent == [consts.HANDLE_CALL]  # the reads after the refused login were not made
    wrong.close()
    assert backend.logged_in_as is None and not backend.initialized
    # The terminal agrees: its session is not on 8401.
    account, _ = backend.call("account_info", (), {})
    assert account is None or account["login"] != 8401

    # The right password does log in on this connection.
    right = open_pooled(port, 8401, pool, password="right")
    assert right._backend is backend
    assert right.read_account(*window()).account.login == 8401
    right.close()


def test_a_refused_login_does_not_fail_the_next_user_of_the_connection(port, pool, control):
    """A refused login() leaves the terminal session logged out (the simulator, like a terminal that lost
    its account), but the connection goes back to the pool still marked as logged in to the account it
    was on before. The next sync of *that* account then skips its login and fails with
    TerminalLoginFailed: an innocent account's sync fails (and counts towards its breaker) because
    another account's password was wrong, on every reuse of the connection, until some other login
    uses it."""
    add_passworded_account(control, 8451, "right")
    innocent = open_pooled(port, 8452, pool)
    backend = innocent._backend
    assert innocent.read_account(*window()).account.login == 8452
    innocent.close()

    wrong = open_pooled(port, 8451, pool, password="wrong")
    with pytest.raises(TerminalLoginFailed):
        wrong.read_account(*window())
    wrong.close()

    again = open_pooled(port, 8452, pool)
    assert again._backend is backend
    assert again.read_account(*window()).account.login == 8452
    again.close()


def test_read_account_refuses_figures_of_another_login_than_the_gateways(port, pool):
    gateway = open_pooled(port, 8701, pool)
    backend = gateway._backend
    assert gateway.read_account(*window()).account.login == 8701
    # Behind the gateway's back, its own terminal session (the server thread of this connection) moves
    # to another account.
    assert gateway.control("login", 8702, password="x", server=SERVER) is True

    with pytest.raises(TerminalLoginFailed, match="logged in to account 8702, not 8701"):
        gateway.read_account(*window())
    gateway.close()
    # Not given back: nobody may trust what this session is logged in to.
    assert pool.idle() == 0 and backend.logged_in_as is None and backend.conn.closed


# --- dead terminals and forks --------------------------------------------------------------------


def kill_terminal(port: int) -> None:
    """SIGKILL the terminal process listening on `port` (it tells its own pid), and wait until the port
    refuses connections: from then on its connections are dead at the transport level."""
    conn = control_connection(port)
    pid = conn.modules.os.getpid()
    conn.close()
    os.kill(pid, signal.SIGKILL)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        return False

    assert wait_for(refused, timeout=10, interval=0.05)


def test_a_connection_to_a_dead_terminal_is_unavailable_and_not_given_back(pool, port):
    with terminal_server() as own:
        first, second = open_pooled(own, 8501, pool), open_pooled(own, 8502, pool)
        elsewhere = open_pooled(port, 8503, pool)  # another terminal, alive
        for gateway in (first, second, elsewhere):
            assert gateway.read_account(*window()).account.login in (8501, 8502, 8503)
        backend = second._backend
        second.close()
        first.close()
        elsewhere.close()
        assert pool.idle() == 3

        kill_terminal(own)
        # The pool hands out an idle connection (opening sends nothing); the first read finds it dead,
        # and the pool drops the dead terminal's other idle connection with it, not the live one's.
        dead = open_pooled(own, 8501, pool, timeout=3)
        assert dead._backend is not backend and pool.idle() == 2
        with pytest.raises(TerminalUnavailable) as raised:
            dead.read_account(*window())
        assert raised.value.retryable
        dead.close()
        assert pool.idle() == 1  # the live terminal's

        # Nothing dead is left to hand out: the next open connects afresh, and fails at once.
        with pytest.raises(TerminalUnavailable):
            open_pooled(own, 8501, pool, timeout=3)
        assert pool.idle() == 1


def test_a_forked_child_sees_an_empty_pool_and_leaves_the_parents_connection_alone(port, pool):
    gateway = open_pooled(port, 8601, pool)
    backend = gateway._backend
    assert gateway.read_account(*window()).account.login == 8601
    gateway.close()
    assert pool.idle() == 1

    pid = os.fork()
    if pid == 0:  # the child: its observation is its exit code
        code = 99
        try:
            if pool.idle() != 0:
                code = 1
            elif pool.take(backend.key) is not None:
                code = 2
            else:
                # Clearing closes the pool's idle connections: it must not reach the inherited one,
                # which would send RPyC's close message down the socket the parent shares.
                pool.clear()
                gc.collect()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    assert pool.idle() == 1
    again = open_pooled(port, 8601, pool)
    assert again._backend is backend and not backend.conn.closed
    assert again.read_account(*window()).account.login == 8601
    again.close()
    assert pool.idle() == 1


# --- latency modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mode"), [([], "call"), (["--latency-mode", "reply"], "reply")], ids=["default-call", "reply"]
)
def test_a_pooled_read_waits_out_every_calls_latency_in_either_mode(pool, args, mode):
    """ "reply" mode sleeps once per request instead of once per call, but a client must wait as long as
    in "call" mode: a read of initialize + three calls at 200 ms each takes 0.8 s, not 0.2 s (paid
    once) nor 1.6 s (paid twice)."""
    with terminal_server(args=args) as own:
        control = control_connection(own)
        try:
            assert control.eval("mt5.sim_broker.latency_mode") == mode
            ticket = control.eval("mt5.sim_open_manual")(8801, "EURUSD", C.ORDER_TYPE_BUY, 0.1)
            control.eval("mt5.sim_set_latency")(200)

            gateway = open_pooled(own, 8801, pool, timeout=10)
            with rpyc_requests(gateway._backend) as sent:
                started = time.monotonic()
                state = gateway.read_account(*window())
                elapsed = time.monotonic() - started
            assert sent == [consts.HANDLE_CALL]
            assert 0.79 <= elapsed < 1.6, elapsed  # 0.79: a hair under 4 x 0.2 for clock rounding
            assert state.account.login == 8801 and state.account.balance == Decimal("10000")
            assert [p.ticket for p in state.positions] == [ticket]
            assert [(d.side, d.position_id) for d in state.deals] == [("balance", 0), ("buy", ticket)]
            gateway.close()
        finally:
            control.close()


@pytest.mark.parametrize("args", [[], ["--latency-mode", "reply"]], ids=["call", "reply"])
def test_runs_on_different_connections_wait_on_the_simulated_terminal_side_by_side(pool, args):
    """The simulated terminal gives each connection its own session, so it needs no lock around a run
    of calls: eight accounts' reads of 4 x 200 ms take about 0.8 s together, not 6.4 s one by one."""
    from concurrent.futures import ThreadPoolExecutor

    with terminal_server(args=args) as own:
        control = control_connection(own)
        try:
            control.eval("mt5.sim_set_latency")(200)
            gateways = [open_pooled(own, 8701 + i, pool, timeout=10) for i in range(8)]
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as threads:
                logins = list(threads.map(lambda g: g.read_account(*window()).account.login, gateways))
            elapsed = time.monotonic() - started
            assert logins == [8701 + i for i in range(8)]
            assert 0.79 <= elapsed < 2.0, elapsed
            for gateway in gateways:
                gateway.close()
        finally:
            control.close()


def test_a_session_the_terminal_lost_is_started_afresh_by_the_next_user(port, pool):
    """The terminal's own session can end behind the pool's back (terminal64.exe restarted under its
    mt5linux server, or another client's shutdown() on the real package's one session per process):
    the sync that finds out fails once, and the connection's next user starts the session again with
    initialize() instead of failing for ever."""
    first = open_pooled(port, 8801, pool)
    assert first.read_account(*window()).account.login == 8801
    backend = first._backend
    first.close()
    backend.call("shutdown", (), {})  # the terminal session ends; the connection lives on

    unlucky = open_pooled(port, 8801, pool)
    assert unlucky._backend is backend and unlucky._pending_login is None  # believed logged in
    with pytest.raises(TerminalError):
        unlucky.read_account(*window())
    assert not backend.initialized and backend.logged_in_as is None
    unlucky.close()

    again = open_pooled(port, 8801, pool)
    assert again._pending_login is not None and again._pending_login[0] == "initialize"
    assert again.read_account(*window()).account.login == 8801
    again.close()


def test_the_same_login_on_another_server_or_with_another_password_logs_in_again(port, pool):
    first = open_pooled(port, 8901, pool)
    first.read_account(*window())
    first.close()
    url = f"sim://127.0.0.1:{port}"
    elsewhere = Gateway.open(
        url,
        declared=declared_terminals([url]),
        login=8901,
        password="demo",
        server="Other-Server",
        timeout=5,
        pool=pool,
    )
    assert elsewhere._pending_login is not None and elsewhere._pending_login[2]["server"] == "Other-Server"
    elsewhere.read_account(*window())
    elsewhere.close()
    changed = open_pooled(port, 8901, pool, password="changed")
    assert changed._pending_login is not None and changed._pending_login[2]["password"] == "changed"
    changed.close()


def test_a_pooled_connect_to_a_terminal_that_never_answers_gives_up_within_the_timeout(pool):
    """RPyC's handshake has its own 30-s default; the pooled path must still honour the terminal timeout."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does) and never says a word
    try:
        started = time.monotonic()
        with pytest.raises(TerminalTimeout):
            url = f"sim://127.0.0.1:{listener.getsockname()[1]}"
            Gateway.open(
                url,
                declared=declared_terminals([url]),
                login=1,
                password="x",
                server=SERVER,
                timeout=1.0,
                pool=pool,
            )
        assert time.monotonic() - started < 3.0
    finally:
        listener.close()
