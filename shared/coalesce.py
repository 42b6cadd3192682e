"""Group commit: the same work asked for by several threads at once is done in one batch.

A web process serves several requests at a time on threads. When each signal is inserted by its own
statement, every one pays a round trip, a transaction and a WAL flush; done together they pay these
once. Nothing waits for company: a caller finding no batch in progress runs its item at once, alone.
Callers arriving while a batch runs queue up, and the first of them to get its turn runs everything
queued so far. So batches form only under load, and grow with it (up to the number of threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item):
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch` on the items of concurrent `submit` calls, one batch at a time.

    `run_batch(items)` returns one result per item, in order. If it raises, every caller in that batch
    gets the exception (as `concurrent.futures.Future.result()` would give it to each waiter).
    """

    def __init__(self, run_batch: Callable[[Sequence[Item]], Sequence[Result]]):
        self._run_batch = run_batch
        self._changed = threading.Condition()
        self._queue: list[_Slot[Item, Result]] = []
        self._running = False

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._changed:
            self._queue.append(slot)
            while self._running and not slot.done:
                self._changed.wait()
            batch = None
            if not slot.done:
                # No batch is running and ours is not done: lead the next one, with everything queued.
                self._running = True
                batch, self._queue = self._queue, []
        if batch is not None:
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, batch: list[_Slot[Item, Result]]) -> None:
        try:
            results = self._run_batch([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            for s, result in zip(batch, results, strict=True):
                s.result = result
        except BaseException as exc:  # handed to every caller of the batch
            for s in batch:
                s.error = exc
        finally:
            with self._changed:
                for s in batch:
                    s.done = True
                self._running = False
                self._changed.notify_all()
