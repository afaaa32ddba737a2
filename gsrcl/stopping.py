"""Stopping promptly on Ctrl-C (SIGINT) or SIGTERM, whatever the command is doing.

Python runs a signal's handler in the main thread between bytecodes, so a command inside a long
native call (a libsvm fit, numba's UMAP, LAPACK) would stop only when that call returns. While
`handled` is in force, the handlers raise KeyboardInterrupt or `Stopped` in the main thread as
usual, so `finally` blocks run (workers stopped, the lock released, temporary folders removed);
and a watchdog thread, woken by the signal itself (the C-level handler writes it to the wakeup fd
even while the main thread is busy), ends the process GRACE_SECONDS later, with the line and exit
status, if it has not ended by then. Every file is written atomically and a job's DONE marker
last, so ending there loses only work in progress, as SIGKILL would.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from gsrcl.errors import Stopped

GRACE_SECONDS = 3.0
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
LINES = {
    signal.SIGINT: "interrupted (Ctrl-C): finished jobs are kept; rerun to continue",
    signal.SIGTERM: "stopped (SIGTERM): finished jobs are kept; rerun to continue",
}
WATCHDOG = "gsrcl-stop"
_said = threading.Lock()  # held once the line is out: said once, by whoever stops first


@contextmanager
def handled() -> Iterator[None]:
    """Raise on SIGINT / SIGTERM in the main thread, and end the process GRACE_SECONDS after the
    first one if it is still running then; the previous handlers come back on leaving. Enter in
    the main thread."""
    read, write = os.pipe()
    os.set_blocking(write, False)  # the C-level handler must never block
    previous_fd = signal.set_wakeup_fd(write)
    previous = {signum: signal.signal(signum, _raise) for signum in STATUS}
    threading.Thread(target=_watch, args=(read,), daemon=True, name=WATCHDOG).start()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write)  # a watchdog not woken by a signal ends


def stopped(signum: int) -> int:
    """The stop's one line, and its exit status. Threads left inside a fit (`Workers` abandons
    them) would be ended at the interpreter's exit when they next take the GIL, which can abort
    the process from native code: the process then ends here, its output flushed."""
    status = say(signum)
    if any(t.daemon and t.name != WATCHDOG for t in threading.enumerate()):
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
    return status


def say(signum: int) -> int:
    """Print the stop's one line (once per process) and return its exit status."""
    if _said.acquire(blocking=False):
        print(LINES[signum], file=sys.stderr, flush=True)
    return STATUS[signum]


def _raise(signum: int, frame) -> None:
    for other in STATUS:  # a second Ctrl-C must not break the unwinding; the watchdog ends it
        signal.signal(other, _ignore)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped()


def _ignore(signum: int, frame) -> None:
    pass


def _watch(fd: int) -> None:
    while (byte := os.read(fd, 1)) and byte[0] not in STATUS:
        pass  # a signal another library handles
    os.close(fd)
    if byte:
        time.sleep(GRACE_SECONDS)
        os._exit(say(byte[0]))
