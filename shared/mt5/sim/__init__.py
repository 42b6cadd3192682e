"""TradeGuard's simulated MetaTrader 5 terminal: a product feature (demo, paper trading, tests, benchmarks).

Two layers, mirroring the real world:

- `SimBroker` is the trade server: accounts, symbols with a seeded price feed, positions, the order and
  deal history, and the server-side events that happen without anyone asking (stop loss and take profit
  hits, stop-out). One broker is shared by many terminals and threads, so every state change happens
  under one lock. Given the same seed, clock readings and calls, it produces the same prices and tickets.
- `SimTerminal` is one terminal process: the official `MetaTrader5` module's functions with the official
  names, arguments and return conventions (named tuples from `structs`; `None`, or `False` for
  `initialize`/`login`, plus `last_error()` on failure). Each terminal has its own logged-in account and
  its own `last_error()`.

The `sim_*` methods of `SimTerminal` are the control surface (also on the module installed by
`install_as_metatrader5`, so a test or a demo can drive a `terminal` process over RPyC): they set prices,
gaps, spreads and price paths, close markets, stop quotes, set the server's UTC offset, open and close
positions "by hand", and inject latency, disconnects, slippage,
requotes, partial fills, rejects and lost replies. Apart from `sim_set_algo_trading` they act on the
broker, so every terminal connected to it sees the effect.

Modules, by concern:

- `symbols`: `SimSymbol`, the simulator's definition of a symbol, and `DEFAULT_SYMBOLS`;
- `broker`: `SimBroker`, the simulated trade server and its server-side events, `SimError`, and
  `default_broker()`, the process-wide broker;
- `terminal`: `SimTerminal`, the `MetaTrader5` module's functions (`shared.mt5.protocol`) and the
  control surface;
- `install`: `install_as_metatrader5`, the simulator as a module named MetaTrader5 (the `terminal`
  process serves it over RPyC);
- `history`: `TickHistory`, a symbol's recorded ticks, and `bars`, the OHLC bars built from them;
- `latency`: simulated latency owed until the reply (`pay_latency`);
- `state`: the broker's state file, which the `terminal` process keeps across restarts;
- `client`: `connect`, a script's connection to the `terminal` process, numpy arrays included, without
  pickle.

The names below are re-exported for convenience; TradeGuard's own code imports them from their modules.
"""

from shared.mt5.sim.broker import SimBroker, SimError, default_broker
from shared.mt5.sim.install import install_as_metatrader5
from shared.mt5.sim.latency import pay_latency
from shared.mt5.sim.symbols import DEFAULT_SYMBOLS, SimSymbol
from shared.mt5.sim.terminal import SimTerminal

__all__ = [
    "DEFAULT_SYMBOLS",
    "SimBroker",
    "SimError",
    "SimSymbol",
    "SimTerminal",
    "default_broker",
    "install_as_metatrader5",
    "pay_latency",
]
