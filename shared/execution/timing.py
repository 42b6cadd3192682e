"""Where an order's time goes: one log line per execution, saying when each step was reached.

The execution message carries when it was enqueued (the `PUBLISHED_AT` header, set by
`shared.execution.dispatch`); the task starts an `OrderClock`, hands `execute_signal` the clock's
terminal opener, which notes when the terminal is asked for and open, when the order request is built
(the pre-trade checks passed) and when order_send is called (the trade's `sent` commit done) and
answered; the task then logs one line:

    order timing signal=12 trade=7 published=1718000000.123456 started=2.10 opening=9.80 opened=10.90
    checked=12.40 sending=15.20 answered=16.30 cpu=6.20 (ms after published; cpu: the task thread's)

`cpu` is the processor time the task's thread used from its start until order_send was answered
(time.thread_time): what the order itself cost the worker, whatever else the machine was doing.

Only timestamps are taken: nothing here changes what execution does or in what order. The clocks of
the machine that enqueued and of the worker are compared, so across machines `started` is as good as
their clock sync. bench/approval.py reads these lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from shared.mt5.ports import OpenTerminal, TerminalAccount, TerminalPort
from shared.mt5.types import OrderResult

log = logging.getLogger(__name__)

# The execution message's header: when it was enqueued, as time.time().
PUBLISHED_AT = "tradeguard_published_at"


class OrderClock:
    """The moments one execution reached each step (time.time()); the first of each is kept."""

    def __init__(
        self,
        published_at: Any,
        clock: Callable[[], float] = time.time,
        cpu_clock: Callable[[], float] = time.thread_time,
    ):
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.published_at = published_at if isinstance(published_at, int | float) else None
        self.marks: dict[str, float] = {}
        self.cpu_seconds: float | None = None
        self._cpu_started = cpu_clock()
        self.mark("started")

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, self._clock())

    def answered(self) -> None:
        """order_send answered: the processor time used so far is what the order cost (the first)."""
        if self.cpu_seconds is None:
            self.cpu_seconds = self._cpu_clock() - self._cpu_started

    def opener(self, open_terminal: OpenTerminal) -> OpenTerminal:
        """`open_terminal`, noting when the terminal is asked for and open, and what is sent on it."""

        @contextmanager
        def timed(account: TerminalAccount) -> Iterator[TerminalPort]:
            self.mark("opening")
            with open_terminal(account) as terminal:
                self.mark("opened")
                yield cast(TerminalPort, _TimedTerminal(terminal, self))

        return timed

    def line(self, signal_id: int, trade_id: int | None) -> str:
        origin = self.published_at if self.published_at is not None else self.marks["started"]
        parts = [f"signal={signal_id}", f"trade={trade_id}"]
        if self.published_at is not None:
            parts.append(f"published={self.published_at:.6f}")
        parts += [f"{name}={(at - origin) * 1000:.2f}" for name, at in self.marks.items()]
        if self.cpu_seconds is not None:
            parts.append(f"cpu={self.cpu_seconds * 1000:.2f}")
        after = "published" if self.published_at is not None else "started"
        return f"order timing {' '.join(parts)} (ms after {after}; cpu: the task thread's)"

    def log(self, signal_id: int, trade_id: int | None) -> None:
        log.info("%s", self.line(signal_id, trade_id))


class _TimedTerminal:
    """A terminal that notes when the order request is built and when order_send is called and answers;
    everything else is the terminal's own."""

    def __init__(self, terminal: TerminalPort, clock: OrderClock):
        self._terminal = terminal
        self._clock = clock

    def market_order_request(self, **kwargs: Any) -> dict[str, Any]:
        self._clock.mark("checked")
        return self._terminal.market_order_request(**kwargs)

    def send_order(self, request: Mapping[str, Any]) -> OrderResult:
        self._clock.mark("sending")
        result = self._terminal.send_order(request)
        self._clock.mark("answered")
        self._clock.answered()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._terminal, name)
