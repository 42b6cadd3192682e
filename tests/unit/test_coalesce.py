"""Group commit: concurrent callers' items run together, each caller gets its own result."""

import threading
import time

import pytest

from shared.coalesce import Coalescer


def test_a_lone_caller_runs_its_item_at_once_alone():
    batches: list[list[int]] = []

    def run(items):
        batches.append(list(items))
        return [item * 10 for item in items]

    coalescer = Coalescer(run)
    assert coalescer.submit(1) == 10
    assert coalescer.submit(2) == 20
    assert batches == [[1], [2]]


def test_callers_arriving_during_a_batch_go_together_in_the_next_with_their_own_results():
    first_running = threading.Event()
    release_first = threading.Event()
    batches: list[list[int]] = []

    def run(items):
        batches.append(list(items))
        if items == [0]:
            first_running.set()
            assert release_first.wait(10)
        return [f"result {item}" for item in items]

    coalescer = Coalescer(run)
    results: dict[int, str] = {}

    def call(item: int) -> None:
        results[item] = coalescer.submit(item)

    leader = threading.Thread(target=call, args=(0,))
    leader.start()
    assert first_running.wait(10)
    followers = [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in followers:
        t.start()
    deadline = time.monotonic() + 10
    while len(coalescer._queue) < 5:  # every follower queued behind the running batch
        assert time.monotonic() < deadline
        time.sleep(0.001)
    release_first.set()
    for t in [leader, *followers]:
        t.join(10)

    assert batches[0] == [0]
    assert sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2
    assert results == {i: f"result {i}" for i in range(6)}


def test_a_failed_batch_raises_in_every_caller_of_that_batch_and_the_next_batch_still_runs():
    gate = threading.Event()
    started = threading.Event()
    calls = 0

    def run(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            assert gate.wait(10)
            return ["ok"]
        if calls == 2:
            raise ConnectionError("database went away")
        return ["ok"] * len(items)

    coalescer = Coalescer(run)
    outcomes: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            outcomes[item] = coalescer.submit(item)
        except ConnectionError as exc:
            outcomes[item] = exc

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert started.wait(10)
    failing = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    for t in failing:
        t.start()
    while len(coalescer._queue) < 3:
        time.sleep(0.001)
    gate.set()
    for t in [first, *failing]:
        t.join(10)

    assert outcomes[0] == "ok"
    assert all(isinstance(outcomes[i], ConnectionError) for i in (1, 2, 3))
    assert coalescer.submit(4) == "ok"  # nothing is left stuck behind the failure


def test_a_wrong_number_of_results_is_an_error_not_a_shifted_answer():
    coalescer = Coalescer(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for a batch of 1"):
        coalescer.submit("x")
