"""Simulated latency owed until the reply (`SimBroker.latency_mode` "reply"): the calls a thread makes add
their latencies up here, and whoever sends the thread's reply (the `terminal` process) sleeps them once,
with `pay_latency`.
"""

from __future__ import annotations

import threading
import time

__all__ = ["owe", "pay_latency"]

_owed = threading.local()  # latency this thread's calls owe their reply (latency_mode "reply")


def owe(seconds: float) -> None:
    """Add `seconds` to what this thread's calls owe their reply."""
    _owed.seconds = getattr(_owed, "seconds", 0.0) + seconds


def pay_latency() -> None:
    """Sleep the latency this thread's calls owe (latency_mode "reply"); the terminal server calls it
    before sending each reply."""
    seconds = getattr(_owed, "seconds", 0.0)
    if seconds:
        _owed.seconds = 0.0
        time.sleep(seconds)
