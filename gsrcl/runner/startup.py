"""What starting a worker process costs here: timed where this process first imports what a
worker imports, so the estimate of a run counts it (a run of seconds is mostly this).

A worker is a fresh interpreter that imports the job's modules (torch, scikit-learn, the
runner) before its first job; the command line (`gsrcl.cli`) imports the same modules first,
under the same load, through `import_worker_modules`. A process that had them already (a
notebook, the tests) has no such figure and uses FALLBACK_SECONDS, measured on 2 CPU cores.
"""

from __future__ import annotations

import importlib
import sys
import time

WORKER_MODULES = ("gsrcl.runner.dispatch", "gsrcl.runner.jobs")
FALLBACK_SECONDS = 4.0
_measured: list[float] = []


def import_worker_modules() -> None:
    """Import the worker's modules, timing it when this process had none of them yet."""
    fresh = not any(name in sys.modules for name in WORKER_MODULES)
    start = time.perf_counter()
    for name in WORKER_MODULES:
        importlib.import_module(name)
    if fresh:
        _measured.append(time.perf_counter() - start)


def worker_start_seconds() -> float:
    """Seconds from a worker's start to its first job, on this machine now."""
    return _measured[0] if _measured else FALLBACK_SECONDS
