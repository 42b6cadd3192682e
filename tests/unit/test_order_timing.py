"""Where an order's time goes: the execution message says when it was sent, and the task's clock notes
each step on the way to order_send (shared.execution.timing) without changing what is called."""

from __future__ import annotations

from contextlib import contextmanager
from itertools import count

from shared.core.queue import EXECUTE_SIGNAL
from shared.execution import dispatch
from shared.execution.timing import PUBLISHED_AT, OrderClock


class Queue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list, dict]] = []

    def send(self, task_name, args, **options):
        self.sent.append((task_name, list(args), options))

    def check_broker(self, timeout_seconds):
        pass


def test_the_execution_message_says_when_it_was_sent(monkeypatch):
    monkeypatch.setattr(dispatch.time, "time", lambda: 1234.5)
    queue = Queue()
    dispatch.enqueue_execution(queue, 7)
    assert queue.sent == [(EXECUTE_SIGNAL, [7], {"headers": {PUBLISHED_AT: 1234.5}})]


class Terminal:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def quote(self, name):
        self.calls.append("quote")
        return "a quote"

    def market_order_request(self, **kwargs):
        self.calls.append("market_order_request")
        return {"symbol": kwargs["symbol"]}

    def send_order(self, request):
        self.calls.append("send_order")
        return "a result"


def ticking(start: float, step: float):
    """A clock that advances by `step` at each reading."""
    readings = count()
    return lambda: start + step * next(readings)


def test_the_clock_notes_each_step_and_the_terminal_answers_as_it_would():
    terminal = Terminal()
    opened: list[object] = []

    @contextmanager
    def open_terminal(account):
        opened.append(account)
        yield terminal

    clock = OrderClock(100.0, clock=ticking(100.010, 0.001), cpu_clock=ticking(5.0, 0.0005))
    with clock.opener(open_terminal)("the account") as timed:
        assert timed.quote("EURUSD") == "a quote"  # passed through untouched
        request = timed.market_order_request(symbol="EURUSD")
        assert timed.send_order(request) == "a result"
        timed.send_order(request)  # a requote's second send: the first is the one that counts

    assert opened == ["the account"]
    assert terminal.calls == ["quote", "market_order_request", "send_order", "send_order"]
    assert list(clock.marks) == ["started", "opening", "opened", "checked", "sending", "answered"]
    line = clock.line(12, 7)
    assert line == (
        "order timing signal=12 trade=7 published=100.000000 started=10.00 opening=11.00 opened=12.00 "
        "checked=13.00 sending=14.00 answered=15.00 cpu=0.50 (ms after published; cpu: the task thread's)"
    )


def test_without_a_published_time_the_steps_count_from_the_tasks_start():
    for header in (None, "yesterday"):
        clock = OrderClock(header, clock=ticking(50.0, 0.002), cpu_clock=ticking(0.0, 0.0))
        clock.mark("opening")
        assert clock.published_at is None
        assert clock.line(3, None) == (
            "order timing signal=3 trade=None started=0.00 opening=2.00 (ms after started; cpu: the task "
            "thread's)"
        )
