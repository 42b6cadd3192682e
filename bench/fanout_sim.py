"""The `terminal` process for bench/fanout.py with an *indexed* simulated broker (``--sim indexed``).

    python -m bench.fanout_sim --port 18812

Same server as ``python -m workers.terminal`` (same RPyC classic service and protocol settings), but the
simulator's broker keeps its open positions indexed by login and runs its server-side sweeps (stops,
stop-outs) at most once per ``TRADEGUARD_BENCH_SWEEP_SECONDS`` (default 1 s) instead of on every call.

Why: the stock ``SimBroker._refresh`` runs on every account_info/positions_get call, under the broker's
one lock, and costs O(accounts x positions) (``_run_stop_outs`` calls ``_figures`` for every login, and
``_figures`` scans every open position to find that login's). With 1,000 accounts x 20 positions that is
~20 M iterations per call, so the stock simulator, not TradeGuard, would be what the benchmark measures.
A real MT5 fleet has one terminal per account, so the indexed mode is the closer stand-in for measuring
the workers. The answers are the same (prices still move on every call; the benchmark's small positions
never hit a stop or a stop-out).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from shared.mt5 import sim


class _IndexedPositions(dict):  # type: ignore[type-arg]
    """A dict of ticket -> position that also keeps login -> {ticket: position}."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.by_login: dict[int, dict[int, Any]] = {}
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: int, value: Any) -> None:
        old = self.get(key)
        if old is not None:
            self.by_login.get(old.login, {}).pop(key, None)
        super().__setitem__(key, value)
        self.by_login.setdefault(value.login, {})[key] = value

    def __delitem__(self, key: int) -> None:
        value = self[key]
        super().__delitem__(key)
        self.by_login.get(value.login, {}).pop(key, None)

    def pop(self, key: int, *default: Any) -> Any:
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)


def patch(sweep_seconds: float) -> None:
    original_init = sim.SimBroker.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._positions = _IndexedPositions(self._positions)
        self._bench_last_sweep = float("-inf")

    def _account_positions(self: Any, login: int) -> list[Any]:
        return list(self._positions.by_login.get(login, {}).values())

    def _refresh(self: Any) -> None:
        now = self.now()
        self._advance(now)
        if now - self._bench_last_sweep >= sweep_seconds:
            self._bench_last_sweep = now
            self._run_stops(now)
            self._run_stop_outs(now)

    sim.SimBroker.__init__ = __init__  # type: ignore[method-assign]
    sim.SimBroker._account_positions = _account_positions  # type: ignore[method-assign]
    sim.SimBroker._refresh = _refresh  # type: ignore[method-assign]


def main() -> None:
    patch(float(os.environ.get("TRADEGUARD_BENCH_SWEEP_SECONDS", "1")))
    from workers import terminal

    terminal.main(sys.argv[1:])


if __name__ == "__main__":
    main()
