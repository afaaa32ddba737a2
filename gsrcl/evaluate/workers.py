"""A job's CPU threads for independent classifier fits.

libsvm and numpy release the GIL while they compute, so the fits of a grid search, of several
cell-type tasks or of export's per-type refits run side by side on threads of one process, and
each result is placed where a sequential loop would have put it: the same numbers, sooner.
The threads are daemons that nothing waits for once the caller stops (Ctrl-C, SIGTERM): a fit in
progress is abandoned, at once and at the interpreter's exit (which joins a ThreadPoolExecutor's).
"""

from __future__ import annotations

import functools
import queue
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Share(Protocol):
    """A job's share of the cores, which the runner changes while the job runs."""

    def threads(self) -> int: ...  # the threads the job may use now

    def apply(self, threads: int) -> None: ...  # set the process's compute threads to that


class Workers:
    """`map` over `threads` threads (in the caller's thread when there is one). With a `share`,
    `refresh` takes the share's current thread count."""

    def __init__(self, threads: int = 1, share: Share | None = None) -> None:
        self.share = share
        self._start(threads)

    def _start(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool = _Threads(self.threads) if self.threads > 1 else None

    def refresh(self) -> None:
        """Take the cores the runner now gives the job (freed by jobs that finished). Call it
        where no `map` is under way (between validation steps, between classifiers)."""
        if self.share is None or self.share.threads() == self.threads:
            return
        threads = self.share.threads()
        self.close()
        self.share.apply(threads)
        self._start(threads)

    def map(self, function: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
        """Results in the order of `items`. Never call it from inside a mapped function: the
        outer call would hold the threads the inner one waits for."""
        if self._pool is None:
            return [function(item) for item in items]
        # the fits silence their warnings with catch_warnings, which saves and restores the
        # process's one filter list: on threads they restore each other's, so the caller's
        # list is put back here once they are done
        with _blas_threads(1), warnings.catch_warnings():
            return self._pool.map(function, items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded BLAS libraries, made once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _blas_threads(threads: int):
    """BLAS limited to `threads` while the fits run side by side: each fit's calls on its own
    multi-threaded BLAS oversubscribe the cores, and OpenBLAS then runs many times slower (a
    logistic regression's grid on three held-out donors, 2 threads: 63 s, 2.9 s with one BLAS
    thread each)."""
    return _controller().limit(limits=threads, user_api="blas")


WAKE_SECONDS = 0.2


def _get(results: queue.SimpleQueue):
    """The next result. The wait wakes every WAKE_SECONDS: a signal that lands just before a
    blocking wait begins would otherwise not interrupt it, and its handler would never run."""
    while True:
        try:
            return results.get(timeout=WAKE_SECONDS)
        except queue.Empty:
            continue


class _Threads:
    """`size` daemon threads, each taking the next call of a `map` until `close`."""

    def __init__(self, size: int) -> None:
        self.size, self.calls = size, queue.SimpleQueue()
        for _ in range(size):
            threading.Thread(target=self._serve, daemon=True, name="gsrcl-fit").start()

    def _serve(self) -> None:
        while (call := self.calls.get()) is not None:
            index, function, item, results, stopped = call
            if stopped.is_set():  # the map raised or was interrupted: its calls are dropped
                continue
            try:
                results.put((index, True, function(item)))
            except BaseException as error:  # handed to the caller, who raises it
                results.put((index, False, error))

    def map(self, function: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
        """Results in the order of `items`; the first call that raises is raised (the calls not
        begun are dropped), as is an interruption of the wait (it is interruptible)."""
        items = list(items)
        results: queue.SimpleQueue = queue.SimpleQueue()
        stopped = threading.Event()
        for index, item in enumerate(items):
            self.calls.put((index, function, item, results, stopped))
        ordered: list = [None] * len(items)
        try:
            for _ in items:
                index, ok, value = _get(results)
                if not ok:
                    raise value
                ordered[index] = value
        finally:
            stopped.set()
        return ordered

    def close(self) -> None:
        """The threads end once their current call returns; nothing waits for them."""
        for _ in range(self.size):
            self.calls.put(None)


SERIAL = Workers(1)
