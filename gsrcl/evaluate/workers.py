"""A job's CPU threads for independent classifier fits.

libsvm and numpy release the GIL while they compute, so the fits of a grid search, of several
cell-type tasks or of export's per-type refits run side by side on threads of one process, and
each result is placed where a sequential loop would have put it: the same numbers, sooner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

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
        return list(self._pool.map(function, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SERIAL = Workers(1)
