"""Sampling a measure in the background while a benchmark runs (disk use, CPU busy share)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Sampler:
    """Calls `measure()` every `every` seconds on a thread, from `with` entry to exit, and keeps
    what it returns (None is not kept)."""

    def __init__(self, measure: Callable[[], Any], every: float = 1.0) -> None:
        self.measure, self.every = measure, every
        self.samples: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            value = self.measure()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
