"""`install_as_metatrader5`: the simulator as a module named MetaTrader5, as the `terminal` process serves it
over RPyC (the way mt5linux serves the official package).
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from shared.mt5 import constants as C
from shared.mt5 import structs
from shared.mt5.protocol import FUNCTIONS
from shared.mt5.sim.broker import SimBroker, default_broker
from shared.mt5.sim.terminal import SimTerminal

__all__ = ["install_as_metatrader5"]

# Besides the official constants and named tuples, the module offers the official functions (the terminal
# protocol's, and no others) and the simulator's controls.
_CONTROL_FUNCTIONS = tuple(name for name in dir(SimTerminal) if name.startswith("sim_"))


def install_as_metatrader5(broker: SimBroker | None = None) -> types.ModuleType:
    """Put a module named MetaTrader5 into sys.modules that behaves like the official package, backed by
    `broker` (default: `default_broker()`), and return it.

    It carries the official constants and named tuples, and the official functions plus the sim_*
    controls. Each calling thread gets its own `SimTerminal`, i.e. its own login and last_error: the RPyC
    classic server serves each client connection in its own thread, and each client logs in to its own
    account. Replaces whatever MetaTrader5 module was there.
    """
    broker = broker if broker is not None else default_broker()
    module = types.ModuleType("MetaTrader5", "TradeGuard's simulated MetaTrader 5 terminal (shared.mt5.sim).")
    for name in dir(C):
        if name.isupper():
            setattr(module, name, getattr(C, name))
    for name in structs.__all__:
        setattr(module, name, getattr(structs, name))
    module.__dict__["__version__"] = C.OFFICIAL_PACKAGE_VERSION
    module.__dict__["__author__"] = "TradeGuard (simulated terminal)"
    local = threading.local()

    def terminal() -> SimTerminal:
        current: SimTerminal | None = getattr(local, "terminal", None)
        if current is None:
            current = local.terminal = SimTerminal(broker)
        return current

    def forward(name: str) -> Callable[..., Any]:
        method = getattr(SimTerminal, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(terminal(), name)(*args, **kwargs)

        return call

    for name in FUNCTIONS + _CONTROL_FUNCTIONS:
        setattr(module, name, forward(name))
    module.__dict__["sim_broker"] = broker
    # Each thread (each RPyC connection) has its own session: callers need not serialise their runs of
    # calls (see the gateway's _tradeguard_calls), as they must on the real package's one session.
    module.__dict__["SESSION_PER_THREAD"] = True
    module.__dict__["sim_terminal"] = terminal  # this thread's SimTerminal
    sys.modules["MetaTrader5"] = module
    return module
