"""Idle RPyC terminal connections of one process, for reuse."""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable

from shared.mt5.backends import RpycBackend

log = logging.getLogger(__name__)


def _pool_after_fork(pool_ref: weakref.ref[ConnectionPool]) -> None:
    pool = pool_ref()
    if pool is not None:
        pool._after_fork()


class ConnectionPool:
    """Idle RPyC terminal connections of this process, per (host, port), for reuse.

    Connecting costs a TCP handshake, an RPyC handshake and defining the helper remotely: several round
    trips and, on a busy worker, most of a sync's CPU. A pooled connection keeps its terminal session;
    its next user logs in again only when it needs another account (`Gateway.open(pool=...)`).

    A pool belongs to one process. After a fork the child starts empty and never touches the parent's
    connections: not even to close them, which would send RPyC's close message down a shared socket.
    """

    def __init__(self, max_idle_per_terminal: int = 256):
        self.max_idle_per_terminal = max_idle_per_terminal
        self._idle: dict[tuple[str, int], list[RpycBackend]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inherited: list[RpycBackend] = []  # the parent's, kept referenced so they are never closed
        # A fork while another thread holds the lock would leave the child's copy locked for ever.
        os.register_at_fork(after_in_child=functools.partial(_pool_after_fork, weakref.ref(self)))

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._own()

    def _own(self) -> None:
        if self._pid != os.getpid():
            self._inherited.extend(c for idle in self._idle.values() for c in idle)
            self._idle = {}
            self._pid = os.getpid()

    def take(self, key: tuple[str, int]) -> RpycBackend | None:
        with self._lock:
            self._own()
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, backend: RpycBackend) -> None:
        with self._lock:
            self._own()
            idle = self._idle.setdefault(backend.key, [])
            if len(idle) < self.max_idle_per_terminal:
                idle.append(backend)
                return
        backend.close()

    def fill(self, key: tuple[str, int], count: int, connect: Callable[[], RpycBackend]) -> int:
        """Connect until `count` connections to `key` are idle here; returns how many it made. For work
        that is about to open many at once: a guard check reads its accounts concurrently, and the first
        check after a quiet spell paid each connection's handshakes in front of its alerts
        (bench/guards.py). Never more than the pool keeps (`max_idle_per_terminal`). A failed connect
        raises (nothing made so far is lost: it stays idle here)."""
        count = min(count, self.max_idle_per_terminal)
        made = 0
        while True:
            with self._lock:
                self._own()
                if len(self._idle.get(key, ())) >= count:
                    return made
            self.give(connect())
            made += 1

    def discard(self, key: tuple[str, int]) -> None:
        """Close the idle connections to one terminal (it was found dead)."""
        with self._lock:
            self._own()
            idle = self._idle.pop(key, [])
        for backend in idle:
            try:
                backend.close()
            except Exception as exc:  # closing a dead connection may fail; it is gone either way
                log.debug("closing a pooled terminal connection failed: %s", exc)

    def idle(self) -> int:
        with self._lock:
            self._own()
            return sum(len(idle) for idle in self._idle.values())

    def clear(self) -> None:
        """Close every idle connection (shutting a worker down, or in tests)."""
        with self._lock:
            self._own()
            idle, self._idle = self._idle, {}
        for backend in (c for connections in idle.values() for c in connections):
            try:
                backend.close()
            except Exception as exc:  # closing a dead connection may fail; it is gone either way
                log.debug("closing a pooled terminal connection failed: %s", exc)
