"""Group commit: the same work asked for by several threads at once is done in one batch.

A web process serves several requests at a time on threads. When each signal is inserted by its own
statement, every one pays a round trip, a transaction and a WAL flush; done together they pay these
once. Nothing waits for company: a caller finding no batch in progress runs its item at once, alone.
Callers arriving while a batch runs queue up, and the first of them to get its turn runs everything
queued so far. So batches form only under load, and grow with it (up to the number of threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Stalled(Exception):
    """The batch ahead of this item ran longer than the queue timeout (the database is stuck, say).

    The item was taken out of the queue unrun: nothing of it was done, and it can be sent again."""


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result", "taken")

    def __init__(self, item: Item):
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.taken = False  # by a batch: from then on its caller must wait for the outcome
        self.done = False


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch` on the items of concurrent `submit` calls, one batch at a time.

    `run_batch(items)` returns one outcome per item, in order: a result, or an exception, which is
    raised to that item's caller alone. If `run_batch` raises an `Exception`, every caller of that
    batch gets it (as `concurrent.futures.Future.result()` gives it to each waiter).

    A caller whose item is still queued after `queue_timeout` seconds takes it out and gets `Stalled`;
    an item a batch has taken is always waited for, since its outcome is what the caller must report.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Sequence[Result | Exception]],
        *,
        queue_timeout: float | None = None,
    ):
        self._run_batch = run_batch
        self._queue_timeout = queue_timeout
        self._changed = threading.Condition()
        self._queue: list[_Slot[Item, Result]] = []
        self._running = False

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._changed:
            self._queue.append(slot)
            try:
                self._wait_for_turn(slot)
            except BaseException:
                if not slot.taken:
                    self._queue.remove(slot)  # never run: nobody would be told its outcome
                raise
            batch = None
            if not slot.done:
                # No batch is running and ours is not done: lead the next one, with everything queued.
                self._running = True
                batch, self._queue = self._queue, []
                for queued in batch:
                    queued.taken = True
        if batch is not None:
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _wait_for_turn(self, slot: _Slot[Item, Result]) -> None:
        """Until our item is done, or no batch runs and it is our turn to lead (lock held)."""
        deadline = None if self._queue_timeout is None else time.monotonic() + self._queue_timeout
        while self._running and not slot.done:
            if slot.taken or deadline is None:
                self._changed.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Stalled(f"the batch ahead ran for more than {self._queue_timeout} s")
            self._changed.wait(remaining)

    def _lead(self, batch: list[_Slot[Item, Result]]) -> None:
        try:
            outcomes = self._run_batch([s.item for s in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
            for s, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    s.error = outcome
                else:
                    s.result = outcome
        except Exception as exc:
            for s in batch:
                s.error = exc
        except BaseException as exc:
            # The leader's own thread was interrupted (KeyboardInterrupt, a worker shutting down): it
            # re-raises that; the others learn only that the outcome is unknown.
            for s in batch:
                unknown = RuntimeError("the batch was interrupted; whether its items were done is unknown")
                unknown.__cause__ = exc
                s.error = unknown
            raise
        finally:
            with self._changed:
                for s in batch:
                    s.done = True
                self._running = False
                self._changed.notify_all()
