"""SimBroker.latency_mode, in process: "call" sleeps before every call; "reply" runs the calls at once and
leaves their summed latency for `pay_latency()`, which the terminal server calls before each reply.

The owed latency is per thread (the server serves each connection on its own thread), so each test runs
its calls on a thread of its own: nothing owed by another test can leak into the timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from shared.mt5.sim.broker import SimBroker
from shared.mt5.sim.latency import pay_latency
from shared.mt5.sim.terminal import SimTerminal

LOGIN = 1001
LATENCY_MS = 100


def on_own_thread(fn: Callable[[], Any]) -> Any:
    """`fn()` run on a new thread; its result, or its exception raised here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def timed(fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def three_calls(terminal: SimTerminal) -> None:
    assert terminal.initialize(login=LOGIN, password="x")
    account = terminal.account_info()
    assert account is not None and account.login == LOGIN
    assert terminal.positions_get() == ()


def broker_with_latency(mode: str) -> SimBroker:
    broker = SimBroker(seed=7)
    broker.latency_mode = mode
    broker.set_latency(LATENCY_MS)
    return broker


def test_reply_mode_calls_do_not_sleep_and_pay_latency_sleeps_their_sum_once() -> None:
    terminal = SimTerminal(broker_with_latency("reply"))

    def scenario() -> tuple[float, float, float]:
        calls = timed(lambda: three_calls(terminal))
        paid = timed(pay_latency)
        again = timed(pay_latency)  # the debt was reset: nothing left to sleep
        return calls, paid, again

    calls, paid, again = on_own_thread(scenario)
    # Three calls at 100 ms each: they ran at once (0.3 s would be the "call" mode's sleeps) ...
    assert calls < 0.15, calls
    # ... and the 0.3 s they owe is slept in one go, once.
    assert 0.3 <= paid < 0.6, paid
    assert again < 0.05, again


def test_reply_mode_latency_is_owed_by_the_calling_thread_only() -> None:
    """The server pays before each reply on the connection's own thread: another connection's debt must
    not delay it, nor be paid off by it."""
    terminal = SimTerminal(broker_with_latency("reply"))

    def scenario() -> tuple[float, float]:
        three_calls(terminal)  # this thread owes 0.3 s
        paid_elsewhere = on_own_thread(lambda: timed(pay_latency))
        paid_here = timed(pay_latency)
        return paid_elsewhere, paid_here

    paid_elsewhere, paid_here = on_own_thread(scenario)
    assert paid_elsewhere < 0.05, paid_elsewhere
    assert 0.3 <= paid_here < 0.6, paid_here


def test_call_mode_sleeps_in_every_call_and_owes_nothing() -> None:
    broker = broker_with_latency("call")
    assert SimBroker(seed=7).latency_mode == "call"  # the default
    terminal = SimTerminal(broker)

    def scenario() -> tuple[float, float]:
        return timed(lambda: three_calls(terminal)), timed(pay_latency)

    calls, paid = on_own_thread(scenario)
    assert 0.3 <= calls < 0.6, calls
    assert paid < 0.05, paid
