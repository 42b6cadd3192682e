"""Group commit: concurrent callers' items run together, each caller gets its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from shared.core.coalesce import Coalescer, Stalled


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


class HeldFirstBatch:
    """A coalescer whose first batch (item 0) waits at a gate, so that callers queue behind it."""

    def __init__(self, run_rest: Callable[[Sequence[int]], Sequence[Any]], **options: Any):
        self.gate = threading.Event()
        self.first_running = threading.Event()
        self.batches: list[list[int]] = []
        self.outcomes: dict[int, Any] = {}

        def run(items: Sequence[int]) -> Sequence[Any]:
            self.batches.append(list(items))
            if list(items) == [0]:
                self.first_running.set()
                assert self.gate.wait(10)
                return ["first"]
            return run_rest(items)

        self.coalescer: Coalescer[int, Any] = Coalescer(run, **options)
        self.threads: list[threading.Thread] = []

    def call(self, item: int) -> None:
        try:
            self.outcomes[item] = self.coalescer.submit(item)
        except BaseException as exc:
            self.outcomes[item] = exc

    def start(self, item: int) -> None:
        thread = threading.Thread(target=self.call, args=(item,), daemon=True)
        self.threads.append(thread)
        thread.start()

    def queue_behind_first(self, items: Sequence[int]) -> None:
        self.start(0)
        assert self.first_running.wait(10)
        for item in items:
            self.start(item)
        _wait_until(lambda: len(self.coalescer._queue) == len(items), f"{len(items)} callers queued")

    def release(self) -> None:
        self.gate.set()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive()


def test_a_lone_caller_runs_its_item_at_once_alone():
    batches: list[list[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [item * 10 for item in items]

    coalescer: Coalescer[int, int] = Coalescer(run)
    assert coalescer.submit(1) == 10
    assert coalescer.submit(2) == 20
    assert batches == [[1], [2]]


def test_callers_arriving_during_a_batch_go_together_in_the_next_with_their_own_results():
    held = HeldFirstBatch(lambda items: [f"result {item}" for item in items])
    held.queue_behind_first([1, 2, 3, 4, 5])
    held.release()
    assert held.batches[0] == [0]
    assert sorted(held.batches[1]) == [1, 2, 3, 4, 5] and len(held.batches) == 2
    assert held.outcomes == {0: "first", **{i: f"result {i}" for i in range(1, 6)}}


def test_an_exception_given_as_one_items_outcome_is_raised_to_that_caller_only():
    bad = ValueError("this one's data was refused")
    held = HeldFirstBatch(lambda items: [bad if item == 2 else item for item in items])
    held.queue_behind_first([1, 2, 3])
    held.release()
    assert held.outcomes == {0: "first", 1: 1, 2: bad, 3: 3}


def test_a_failed_batch_raises_in_every_caller_of_that_batch_and_the_next_batch_still_runs():
    def run_rest(items: Sequence[int]) -> list[str]:
        if 1 in items:
            raise ConnectionError("database went away")
        return ["ok"] * len(items)

    held = HeldFirstBatch(run_rest)
    held.queue_behind_first([1, 2, 3])
    held.release()
    assert held.outcomes[0] == "first"
    assert all(isinstance(held.outcomes[i], ConnectionError) for i in (1, 2, 3))
    assert held.coalescer.submit(4) == "ok"  # nothing is left stuck behind the failure


def test_an_item_queued_behind_a_stuck_batch_is_taken_out_unrun_after_the_queue_timeout():
    held = HeldFirstBatch(lambda items: ["ran"] * len(items), queue_timeout=0.2)
    held.start(0)
    assert held.first_running.wait(10)
    began = time.monotonic()
    with pytest.raises(Stalled):
        held.coalescer.submit(1)
    assert 0.2 <= time.monotonic() - began < 5
    assert held.coalescer._queue == []  # taken out: no later batch will run it behind its back
    held.release()
    assert held.outcomes == {0: "first"} and held.batches == [[0]]
    assert held.coalescer.submit(2) == "ran"


def test_an_interrupted_leader_reraises_and_its_batch_mates_learn_the_outcome_is_unknown():
    def run_rest(items: Sequence[int]) -> list[int]:
        raise KeyboardInterrupt

    held = HeldFirstBatch(run_rest)
    held.queue_behind_first([1, 2, 3])
    held.release()
    outcomes = [held.outcomes[i] for i in (1, 2, 3)]
    # One of them led the batch and got the interruption itself; the others a plain error about it.
    assert sum(isinstance(o, KeyboardInterrupt) for o in outcomes) == 1
    others = [o for o in outcomes if not isinstance(o, KeyboardInterrupt)]
    assert len(others) == 2 and all(isinstance(o, RuntimeError) and "unknown" in str(o) for o in others)
    assert isinstance(others[0].__cause__, KeyboardInterrupt)
    assert held.coalescer._running is False


def test_a_wrong_number_of_outcomes_is_an_error_not_a_shifted_answer():
    coalescer: Coalescer[str, str] = Coalescer(lambda items: [])
    with pytest.raises(RuntimeError, match="0 outcomes for a batch of 1"):
        coalescer.submit("x")
