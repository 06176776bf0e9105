"""Produce the next meta-batch on a thread while the current one computes, and count the time waited.

Training data in metabench is a pure function of the iteration (``source.batch(iteration)`` depends
only on the seed and the iteration), so a batch produced ahead of time is the batch the loop would
have produced itself: prefetching changes no result.

Example (``make_batch`` stands in for ``source.batch``; a training loop calls its step on each batch):
    >>> def make_batch(iteration):
    ...     return {"iteration": iteration}
    >>> with Prefetcher(make_batch, total=3) as batches:
    ...     made = [batches.get(iteration)["iteration"] for iteration in range(3)]
    >>> made
    [0, 1, 2]
    >>> batches.wait_seconds >= 0.0 and batches.produce_seconds >= 0.0   # e.g. 0.41 and 4.6 over 1,000 meta-batches
    True
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable


class Prefetcher:
    """Hands out ``make_batch(iteration)`` and starts ``make_batch(iteration + 1)`` on a worker thread.

    Args:
        make_batch: ``iteration -> batch``; must depend on nothing but ``iteration`` (and fixed
            settings), since batches are made out of order with the loop.
        total: the iteration count; nothing at or past it is produced ahead.
        start: an iteration whose batch to start making at once (default: none until the first ``get``).

    Attributes:
        wait_seconds: seconds ``get`` blocked: producing a batch the worker had not made (the first
            one, or one after the loop jumped) plus waiting for one it had not finished.
        last_wait_seconds: the part of ``wait_seconds`` that the latest ``get`` blocked.
        produce_seconds: seconds spent inside ``make_batch``, on either thread.
        batches: batches handed out.

    Asking for an iteration other than the one made ahead (a loop that rewinds after a NaN retry)
    makes that batch on the caller's thread; the batch made ahead is dropped.
    """

    def __init__(self, make_batch: Callable[[int], object], total: int, start: int | None = None):
        self._make_batch = make_batch
        self._total = total
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metabench-prefetch")
        self._ahead: tuple[int, concurrent.futures.Future] | None = None
        self.wait_seconds = 0.0
        self.last_wait_seconds = 0.0
        self.produce_seconds = 0.0
        self.batches = 0
        self._lock = threading.Lock()  # a rewind can make a batch on the caller while the worker makes one
        if start is not None and start < total:
            self._ahead = (start, self._worker.submit(self._timed, start))

    def get(self, iteration: int):
        """The batch of ``iteration``; before returning, starts making the next one."""
        started = time.perf_counter()
        if self._ahead is not None and self._ahead[0] == iteration:
            batch = self._ahead[1].result()
        else:
            batch = self._timed(iteration)
        self.last_wait_seconds = time.perf_counter() - started
        self.wait_seconds += self.last_wait_seconds
        self.batches += 1
        following = iteration + 1
        self._ahead = (following, self._worker.submit(self._timed, following)) if following < self._total else None
        return batch

    def _timed(self, iteration: int):
        started = time.perf_counter()
        try:
            return self._make_batch(iteration)
        finally:
            with self._lock:
                self.produce_seconds += time.perf_counter() - started

    def close(self) -> None:
        """Stop the worker (a batch in progress is finished and dropped)."""
        self._ahead = None
        self._worker.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Prefetcher"]
