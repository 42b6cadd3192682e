"""The `terminal` process: TradeGuard's simulated MT5 terminal, served the way mt5linux serves the real one.

    python -m workers.terminal [--host 127.0.0.1] [--port 18812]

It installs the simulator as the `MetaTrader5` module of this process and runs an RPyC *classic* server,
so an unmodified mt5linux-style client works against it:

    conn = rpyc.classic.connect("127.0.0.1", 18812)
    conn.execute("import MetaTrader5 as mt5")
    conn.eval("mt5.initialize(login=1001, password='x', server='sim')")   # True

Every connection is served on its own server thread, and the installed module gives each thread its own
`SimTerminal` on the one default broker: so each connection logs in on its own, while all connections
(and all worker processes) see the same accounts, positions and prices.

TRADEGUARD_TERMINAL_HOST and TRADEGUARD_TERMINAL_PORT change the defaults; the options override both.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from rpyc.core import consts
from rpyc.core.protocol import Connection
from rpyc.core.service import SlaveService
from rpyc.utils.server import ThreadedServer

from shared.core.config import ConfigurationError, load_settings, start_line
from shared.core.logs import configure_logging
from shared.mt5.sim.broker import default_broker
from shared.mt5.sim.state import default_state_file, keep_state

log = logging.getLogger("tradeguard.terminal")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18812  # mt5linux's default port, so mt5linux clients need no configuration

# RPyC classic: the client may evaluate anything here (that is how mt5linux reaches the module). A
# generous request timeout: order_send under simulated latency must not be cut short by the server side.
PROTOCOL_CONFIG = {
    "allow_all_attrs": True,
    "allow_public_attrs": True,
    "allow_pickle": True,  # rpyc.classic.obtain() copies results by pickling them here
    "sync_request_timeout": 60,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.terminal", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("TRADEGUARD_TERMINAL_HOST", DEFAULT_HOST),
        help="interface to listen on (default: $TRADEGUARD_TERMINAL_HOST or 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("TRADEGUARD_TERMINAL_PORT", DEFAULT_PORT)),
        help="TCP port (default: $TRADEGUARD_TERMINAL_PORT or 18812)",
    )
    parser.add_argument(
        "--latency-mode",
        choices=("call", "reply"),
        default=os.environ.get("TRADEGUARD_TERMINAL_LATENCY_MODE", "call"),
        help="with sim_set_latency: sleep before every call (call, the default), or once per RPyC "
        "request for the sum of its calls' latencies, just before replying (reply: the client waits as "
        "long, the terminal process wakes once per request instead of once per call)",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=default_state_file(),
        help="keep the simulated broker's state (accounts, positions, history, prices) in this file "
        "across restarts (default: $TRADEGUARD_SIM_STATE_FILE, else instance/sim-state.json in the "
        "embedded setup, none next to a server database)",
    )
    parser.add_argument("--no-state-file", dest="state_file", action="store_const", const=None)
    return parser.parse_args(argv)


class _PayingConnection(Connection):
    """Sleeps the latency the request's simulated calls owe before sending the reply (latency mode
    "reply", see SimBroker.latency_mode)."""

    def _send(self, msg: int, seq: int, args: Any) -> None:
        if msg in (consts.MSG_REPLY, consts.MSG_EXCEPTION):
            from shared.mt5.sim.latency import pay_latency

            pay_latency()
        super()._send(msg, seq, args)


class _Service(SlaveService):
    """RPyC's classic server side, as mt5linux's server runs it: clients evaluate code here; this side
    never asks anything of its clients (ClassicService would, and TradeGuard's workers refuse it)."""

    _protocol = _PayingConnection


def build_server(host: str, port: int, latency_mode: str = "call") -> ThreadedServer:
    """The RPyC classic server, with the simulator installed as this process's MetaTrader5 module."""
    from rpyc.core.channel import Channel

    from shared.mt5.sim.install import install_as_metatrader5

    module = install_as_metatrader5()
    module.sim_broker.latency_mode = latency_mode
    # RPyC zlib-compresses every message over 3,000 bytes (an account's positions are ~5,000). On the
    # loopback or a LAN that only burns CPU on both ends; the receiver decompresses by a flag in the
    # message, so clients need no setting for this.
    Channel.COMPRESSION_THRESHOLD = 1 << 62
    return ThreadedServer(
        _Service,
        hostname=host,
        port=port,
        reuse_addr=True,
        protocol_config=PROTOCOL_CONFIG,
    )


# The process runs a thread per connection, hundreds of them, each mostly asleep in the simulated
# latency. CPython's default 5 ms switch interval makes a thread that wakes up force a GIL handoff often;
# a longer one measured a quarter less CPU per request (bench/fanout.py, call mode), and no thread here
# holds the GIL for long.
SWITCH_INTERVAL_SECONDS = 0.05


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    configure_logging()
    _say_that_the_terminal_starts()
    log.warning(
        "the terminal server speaks RPyC's classic protocol: any client that can connect can run arbitrary "
        "code in this process. Listen only on trusted interfaces (127.0.0.1 or a private network), never "
        "on a public address. Listening on %s:%s.",
        args.host,
        args.port,
    )
    server = build_server(args.host, args.port, args.latency_mode)
    keeper = keep_state(default_broker(), args.state_file)
    # honcho, systemd and container runtimes stop a process with SIGTERM: close the server as Ctrl-C
    # does (the state is saved once more, in the finally below), and exit 0.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log.info("simulated MT5 terminal ready on %s:%s (state file: %s)", args.host, args.port, args.state_file)
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if keeper is not None:
            keeper.close()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _say_that_the_terminal_starts() -> None:
    """The first log line of every TradeGuard process: which one it is, and which database and broker the
    deployment uses. The terminal uses neither, so settings it cannot read are reported, not fatal."""
    try:
        log.info(start_line("terminal", load_settings()))
    except ConfigurationError as exc:
        log.info("TradeGuard terminal (settings unreadable, which this process does not need: %s)", exc)


if __name__ == "__main__":
    main(sys.argv[1:])
