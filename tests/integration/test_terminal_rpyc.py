"""The `terminal` process for real: `python -m workers.terminal` in a subprocess, reached over RPyC classic
both the way an unmodified mt5linux client does it and through the Gateway (sim:// and mt5linux://).

All tests share one server process (and so one simulated broker): each uses its own logins so that they
do not see each other's positions, except where sharing is the point.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import rpyc

from shared.mt5 import constants as C
from shared.mt5.errors import (
    OrderOutcomeUnknown,
    SymbolNotFound,
    TerminalNotSupported,
    TerminalTimeout,
    TerminalUnavailable,
)
from shared.mt5.gateway import Gateway
from shared.mt5.terminals import declared_terminals

ROOT = Path(__file__).resolve().parents[2]
MAGIC = 880001
SERVER = "TradeGuard-Sim"


@dataclass
class TerminalProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A bare RPyC classic server, as mt5linux runs one (rpyc_classic.py's SlaveService), but in a Python
# without the MetaTrader5 package.
BARE_CLASSIC_SERVER = (
    "import sys; from rpyc.core.service import SlaveService; from rpyc.utils.server import ThreadedServer; "
    "ThreadedServer(SlaveService, hostname='127.0.0.1', port=int(sys.argv[1])).start()"
)


def start_terminal(program: list[str] | None = None) -> TerminalProcess:
    port = _free_port()
    program = program or ["-m", "workers.terminal", "--port"]
    log_path = Path(tempfile.mkdtemp(prefix="tg-terminal-")) / "terminal.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["LOG_LEVEL"] = "INFO"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *program, str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches everything it started
        )
    terminal = TerminalProcess(proc, port, log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"terminal exited with {proc.returncode}:\n{terminal.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return terminal
        except OSError:
            time.sleep(0.1)
    terminal.stop()
    raise TimeoutError(f"terminal did not listen on {port} within 20 s:\n{terminal.log()}")


@pytest.fixture(scope="module")
def terminal() -> Iterator[TerminalProcess]:
    process = start_terminal()
    try:
        yield process
    finally:
        process.stop()


def open_gateway(
    terminal: TerminalProcess, login: int, *, scheme: str = "sim", timeout: float = 5.0
) -> Gateway:
    url = f"{scheme}://127.0.0.1:{terminal.port}"
    return Gateway.open(
        url, declared=declared_terminals([url]), login=login, password="demo", server=SERVER, timeout=timeout
    )


def market_buy(comment: str, volume: str = "0.10") -> dict[str, Any]:
    return Gateway.market_order_request(
        symbol="EURUSD", side="buy", volume=volume, price="1.08510", sl="1.08000", tp="1.09500",
        deviation_points=20, magic=MAGIC, comment=comment,
    )  # fmt: skip


def pin_prices(terminal: TerminalProcess) -> None:
    """Pin EURUSD on the shared broker (over a raw connection), so fills and stops are predictable."""
    conn = rpyc.classic.connect("127.0.0.1", terminal.port)
    try:
        conn.execute("import MetaTrader5 as mt5")
        conn.eval("mt5.sim_set_quote('EURUSD', 1.085, 1.0851)")
    finally:
        conn.close()


def test_startup_warns_about_the_classic_protocol(terminal: TerminalProcess) -> None:
    log = terminal.log()
    assert "WARNING" in log and "arbitrary code" in log and "trusted interfaces" in log


def test_unmodified_mt5linux_style_client(terminal: TerminalProcess) -> None:
    conn = rpyc.classic.connect("127.0.0.1", terminal.port)
    try:
        conn.execute("import MetaTrader5 as mt5")
        assert conn.eval("mt5.initialize(login=1001, password='x', server='sim')") is True
        mt5 = conn.eval("mt5")
        assert mt5.TRADE_ACTION_DEAL == 1 and mt5.TRADE_RETCODE_DONE == 10009

        account = rpyc.classic.obtain(mt5.account_info())._asdict()
        assert account["login"] == 1001 and account["balance"] == 10000.0 and account["currency"] == "USD"

        mt5.sim_set_quote("EURUSD", 1.085, 1.0851)
        tick = mt5.symbol_info_tick("EURUSD")
        assert (tick.bid, tick.ask) == (1.085, 1.0851)

        # mt5linux sends the request as Python source, so the terminal gets a real dict of plain values.
        request = {
            "action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.1, "type": mt5.ORDER_TYPE_BUY,
            "price": 1.0851, "deviation": 20, "magic": MAGIC, "comment": "raw-client",
            "type_time": mt5.ORDER_TIME_GTC, "type_filling": mt5.ORDER_FILLING_IOC,
        }  # fmt: skip
        result = rpyc.classic.obtain(conn.eval(f"mt5.order_send({request!r})"))._asdict()
        assert result["retcode"] == mt5.TRADE_RETCODE_DONE and result["volume"] == 0.1

        positions = rpyc.classic.obtain(mt5.positions_get())
        assert [(p.ticket, p.magic, p.comment) for p in positions] == [(result["order"], MAGIC, "raw-client")]
        assert mt5.last_error() == (1, "Success")

        # Failures follow the package's convention: None (or False) plus last_error().
        assert mt5.symbol_info("NOPE") is None
        assert mt5.last_error()[0] == C.RES_E_NOT_FOUND
        mt5.shutdown()
        assert mt5.account_info() is None
        assert mt5.last_error()[0] == C.RES_E_INTERNAL_FAIL_CONNECT
    finally:
        conn.close()


def test_gateway_over_sim_url_trades_and_reads_back(terminal: TerminalProcess) -> None:
    pin_prices(terminal)
    with open_gateway(terminal, 2001) as gw:
        account = gw.account()
        assert account.login == 2001 and account.balance == Decimal("10000")
        assert gw.symbol("EURUSD").pip == Decimal("0.0001")
        quote = gw.quote("EURUSD")
        assert (quote.bid, quote.ask) == (Decimal("1.085"), Decimal("1.0851")) and quote.time.tzinfo is UTC

        assert gw.check_order(market_buy("tg-rpyc-1")) == (0, "Done")
        result = gw.send_order(market_buy("tg-rpyc-1"))
        assert result.retcode == C.TRADE_RETCODE_DONE and result.price == Decimal("1.0851")

        [position] = gw.positions()
        assert position.ticket == result.order and position.side == "buy"
        assert (position.magic, position.comment) == (MAGIC, "tg-rpyc-1")
        assert position.sl == Decimal("1.08") and position.tp == Decimal("1.095")
        assert position.volume == Decimal("0.1") and position.opened_at.tzinfo is UTC
        assert gw.position(result.order) == position

        [deal] = gw.deals_for_position(result.order)
        assert (
            deal.ticket == result.deal and deal.entry == C.DEAL_ENTRY_IN and deal.price == Decimal("1.0851")
        )
        now = datetime.now(UTC)
        window = gw.deals(now - timedelta(hours=1), now + timedelta(minutes=1))
        assert [d.side for d in window] == ["balance", "buy"]
        assert gw.account().margin > 0


def test_mt5linux_url_is_the_same_protocol(terminal: TerminalProcess) -> None:
    pin_prices(terminal)
    with open_gateway(terminal, 2101, scheme="mt5linux") as gw:
        assert gw.account().login == 2101
        result = gw.send_order(market_buy("tg-mt5linux-1"))
        assert result.retcode == C.TRADE_RETCODE_DONE
        assert [(p.ticket, p.comment) for p in gw.positions()] == [(result.order, "tg-mt5linux-1")]


def test_connections_see_their_own_accounts_and_share_one_broker(terminal: TerminalProcess) -> None:
    pin_prices(terminal)
    with open_gateway(terminal, 3001) as a, open_gateway(terminal, 3002) as b:
        # Each connection is its own terminal session, logged into its own account.
        assert a.account().login == 3001 and b.account().login == 3002
        opened = a.send_order(market_buy("tg-shared-1"))
        assert [p.ticket for p in a.positions()] == [opened.order]
        assert b.positions() == []

        # A second connection (another worker, say) on the same login sees the same positions.
        with open_gateway(terminal, 3001, scheme="mt5linux") as a2:
            assert [p.ticket for p in a2.positions()] == [opened.order]
            second = a2.send_order(market_buy("tg-shared-2"))
            assert {p.ticket for p in a.positions()} == {opened.order, second.order}
        assert b.positions() == []


def test_terminal_errors_cross_rpyc_with_their_codes(terminal: TerminalProcess) -> None:
    # last_error() is read on the server in the same round trip as the failed call.
    with open_gateway(terminal, 4001) as gw:
        with pytest.raises(SymbolNotFound) as raised:
            gw.symbol("NOPE")
        assert raised.value.terminal_code == C.RES_E_NOT_FOUND and raised.value.call == "symbol_info"


def test_latency_over_rpyc_times_out_and_the_connection_recovers(terminal: TerminalProcess) -> None:
    control = rpyc.classic.connect("127.0.0.1", terminal.port)
    control.execute("import MetaTrader5 as mt5")
    try:
        with open_gateway(terminal, 5001, timeout=0.3) as gw:
            control.eval("mt5.sim_set_latency(800, 5001)")  # only terminals logged in to 5001
            started = time.monotonic()
            with pytest.raises(TerminalTimeout):
                gw.account()
            assert time.monotonic() - started < 0.7
            control.eval("mt5.sim_set_latency(0, 5001)")
            time.sleep(1.0)  # the server finishes the abandoned call; its late reply is discarded
            assert gw.account().login == 5001
    finally:
        control.close()


def test_lost_reply_over_rpyc_is_outcome_unknown(terminal: TerminalProcess) -> None:
    pin_prices(terminal)
    with open_gateway(terminal, 6001) as gw:
        gw.control("sim_lose_next_reply")
        with pytest.raises(OrderOutcomeUnknown):
            gw.send_order(market_buy("tg-lost-1"))
        found = [p for p in gw.positions() if (p.magic, p.comment) == (MAGIC, "tg-lost-1")]
        assert len(found) == 1


def test_server_gone_is_unavailable_and_order_send_unknown() -> None:
    own = start_terminal()
    try:
        gw = open_gateway(own, 7001, timeout=3)
        own.stop()
        with pytest.raises(TerminalUnavailable) as raised:
            gw.account()
        assert raised.value.retryable
        with pytest.raises(OrderOutcomeUnknown):
            gw.send_order(market_buy("tg-gone-1"))
        gw.close()  # closing a gateway whose server died must not raise
        with pytest.raises(TerminalUnavailable):
            open_gateway(own, 7001, timeout=3)
    finally:
        own.stop()


def test_a_restarted_terminal_process_keeps_its_positions_and_never_reuses_a_ticket(tmp_path) -> None:
    """Stopped (SIGTERM, as honcho stops it) and started again on its state file, the terminal still has
    the account's positions and history, and goes on with new tickets."""
    state_file = tmp_path / "sim-state.json"
    program = ["-m", "workers.terminal", "--state-file", str(state_file), "--port"]

    first = start_terminal(program)
    try:
        pin_prices(first)
        with open_gateway(first, 8001) as gw:
            opened = gw.send_order(market_buy("tg-kept-1"))
            deals_before = gw.deals(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1))
    finally:
        first.stop()
    assert first.proc.returncode is not None and state_file.exists()

    again = start_terminal(program)
    try:
        with open_gateway(again, 8001) as gw:
            [position] = gw.positions()
            assert (position.ticket, position.comment) == (opened.order, "tg-kept-1")
            deals_after = gw.deals(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1))
            assert deals_after == deals_before
            reopened = gw.send_order(market_buy("tg-kept-2"))
            assert reopened.order > max(d.ticket for d in deals_before)
    finally:
        again.stop()
    assert "state file" in again.log()


def test_mt5linux_server_without_the_package_is_not_supported() -> None:
    bare = start_terminal(["-c", BARE_CLASSIC_SERVER])
    try:
        with pytest.raises(TerminalNotSupported, match="no MetaTrader5 package"):
            url = f"mt5linux://127.0.0.1:{bare.port}"
            Gateway.open(url, declared=declared_terminals([url]), login=1, password="x", server=SERVER)
    finally:
        bare.stop()
