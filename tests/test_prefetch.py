"""The prefetcher hands out exactly the loop's batches, makes the next one ahead, and counts waiting."""

import threading
import time

import pytest

from metabench.harness.data.prefetch import Prefetcher


def test_batches_are_the_loops_own_and_made_ahead_on_another_thread():
    made_on = {}

    def make(iteration):
        made_on[iteration] = threading.current_thread().name
        return {"iteration": iteration}

    with Prefetcher(make, total=4) as batches:
        assert [batches.get(i)["iteration"] for i in range(4)] == [0, 1, 2, 3]
    assert made_on[0] == threading.current_thread().name  # nothing was ahead of the first
    assert all(made_on[i].startswith("metabench-prefetch") for i in (1, 2, 3))
    assert sorted(made_on) == [0, 1, 2, 3]  # nothing at or past `total` is made
    assert batches.batches == 4


def test_the_next_batch_is_made_during_the_step_and_only_a_batch_not_ready_is_waited_for():
    finished = {0: threading.Event(), 1: threading.Event()}

    def make(iteration):
        time.sleep(0.05)
        if iteration in finished:
            finished[iteration].set()
        return iteration

    with Prefetcher(make, total=3) as batches:
        batches.get(0)  # nothing was ahead: made in line, waited in full
        first_wait = batches.wait_seconds
        # the "step": batch 1 gets made meanwhile, without anyone asking for it
        assert finished[1].wait(timeout=10)
        batches.get(1)
        assert batches.last_wait_seconds == pytest.approx(batches.wait_seconds - first_wait)
    assert first_wait >= 0.05
    assert batches.wait_seconds - first_wait < 0.05 / 2  # batch 1 was ready: no sleep was waited for
    assert batches.produce_seconds >= 0.1


def test_a_rewind_makes_the_asked_batch_and_drops_the_one_ahead():
    with Prefetcher(lambda i: i * 10, total=10) as batches:
        assert batches.get(5) == 50
        assert batches.get(2) == 20  # after a NaN retry the loop goes back
        assert batches.get(3) == 30


def test_an_error_making_a_batch_reaches_the_loop():
    def make(iteration):
        if iteration == 1:
            raise OSError("archive member unreadable")
        return iteration

    with Prefetcher(make, total=3) as batches:
        batches.get(0)
        with pytest.raises(OSError, match="archive member unreadable"):
            batches.get(1)


def test_a_start_iteration_is_made_before_anyone_asks():
    made = threading.Event()

    def make(iteration):
        if iteration == 3:
            made.set()
        return iteration

    with Prefetcher(make, total=5, start=3) as batches:
        assert made.wait(timeout=10)
        assert batches.get(3) == 3 and batches.get(4) == 4
