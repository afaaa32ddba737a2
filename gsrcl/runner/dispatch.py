"""Running jobs on a pool of long-lived worker processes, one per device slot.

Each worker is spawned, pinned to its device (GPU index, or a share of the CPU cores) before any
work, and asks the main process for jobs one at a time through its own inbox, so the main process
always knows which job each worker holds: a job is handed out exactly once, and a worker that dies
(killed, out of memory) is replaced and its job recorded as failed. `execute` runs every job.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp

from gsrcl.config.settings import Experiment
from gsrcl.data.dataset import DatasetCache
from gsrcl.errors import UserError
from gsrcl.files import describe_os_error
from gsrcl.runner import jobs
from gsrcl.runner.jobs import Job
from gsrcl.runner.run_folder import RunFolder

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Outcome:
    job: str
    status: str  # "done" | "failed"
    device: str
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class Slot:
    """One worker's place: its device and how many CPU threads it may use."""

    index: int
    device: str
    threads: int


def execute(
    job: Job, experiment: Experiment, run: RunFolder, device: str, datasets: DatasetCache
) -> Outcome:
    """Run one job into a cleared folder; DONE is written last, a failure leaves error.txt."""
    folder = run.job(job)
    start = time.perf_counter()
    try:
        folder.prepare()
        jobs.run_job(job, experiment, run, device, datasets)
        seconds = time.perf_counter() - start
        folder.drop_progress()
        folder.mark_done(jobs.fingerprint(experiment, job), device, seconds)
    except Exception as error:  # a failing job is recorded; the others go on
        return record_failure(job, run, device, start, traceback.format_exc(), error)
    return Outcome(job.id, "done", device, seconds)


def record_failure(
    job: Job, run: RunFolder, device: str, start: float, text: str, error: BaseException | str
) -> Outcome:
    """The failed job's Outcome, and its error.txt where the disk still takes it."""
    if isinstance(error, torch.OutOfMemoryError):
        summary = f"out of memory on {device}: {str(error).splitlines()[0]}"
    elif isinstance(error, OSError) and error.errno is not None:
        summary = describe_os_error(error)
    elif isinstance(error, BaseException):
        summary = f"{type(error).__name__}: {error}".splitlines()[0]
    else:
        summary = error
    try:
        run.job(job).record_error(summary, text)
    except OSError as write_error:  # a full disk cannot take the report of the full disk
        summary += f" (error.txt not written: {write_error.strerror})"
    return Outcome(job.id, "failed", device, time.perf_counter() - start, summary)


def plan_slots(
    devices: list[str], workers_per_device: int, cpu_workers: int, threads
) -> list[Slot]:
    """Worker slots; CPU cores are divided between all workers so none is oversubscribed."""
    places = ["cpu"] * cpu_workers if devices == ["cpu"] else devices * workers_per_device
    share = threads or max(1, (os.cpu_count() or 1) // len(places))
    return [Slot(i, device, share) for i, device in enumerate(places)]


# ---- the worker process ----


def _worker(slot: Slot, experiment: Experiment, run: RunFolder, inbox, outbox, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle: it stops us
    pin(slot)
    _exit_with_parent(parent)
    _log_to_file(run.logs / f"worker-{slot.index}.log")
    logging.getLogger("gsrcl.runner.progress").addHandler(_ToRunner(outbox, slot.index))
    log = logging.getLogger("gsrcl.worker")
    datasets = DatasetCache()  # each dataset read once by this worker, for all its jobs
    outbox.put(("ready", slot.index, None))
    while (job := inbox.get()) is not None:
        log.info("start %s on %s", job.id, slot.device)
        outcome = execute(job, experiment, run, slot.device, datasets)
        log.info("%s %s in %.1f s %s", outcome.status, job.id, outcome.seconds, outcome.error)
        outbox.put(("outcome", slot.index, outcome))


class _ToRunner(logging.Handler):
    """A job's progress (its epoch) sent to the runner, which shows it beside the job."""

    def __init__(self, outbox, index: int) -> None:
        super().__init__()
        self.outbox, self.index = outbox, index

    def emit(self, record: logging.LogRecord) -> None:
        self.outbox.put(("progress", self.index, record.getMessage()))


def pin(slot: Slot) -> None:
    """Bind the process to its GPU and its share of CPU threads before any other work."""
    from threadpoolctl import threadpool_limits

    if slot.device.startswith("cuda"):
        torch.cuda.set_device(slot.device)
    torch.set_num_threads(slot.threads)
    threadpool_limits(slot.threads)  # numpy / scipy BLAS used by scikit-learn


def _exit_with_parent(parent: int) -> None:
    """A worker whose runner was killed stops instead of running on unseen."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# ---- the pool, in the main process ----


class Pool:
    """Workers on slots; `run` hands out jobs until every job has an outcome."""

    def __init__(self, slots: list[Slot], experiment: Experiment, run: RunFolder) -> None:
        self.context = mp.get_context("spawn")
        self.outbox = self.context.Queue()
        self.experiment, self.folder = experiment, run
        self.workers: dict[int, tuple] = {}  # slot index → (process, inbox)
        self.slots = slots
        self.failed_starts = 0

    def _start(self, slot: Slot) -> None:
        inbox = self.context.Queue()
        process = self.context.Process(
            target=_worker,
            args=(slot, self.experiment, self.folder, inbox, self.outbox, os.getpid()),
            daemon=True,
            name=f"gsrcl-worker-{slot.index}",
        )
        process.start()
        self.workers[slot.index] = (process, inbox)

    def run(
        self,
        todo: list[Job],
        on_start: Callable[[Job, str], None],
        on_outcome: Callable[[Outcome], None],
        on_progress: Callable[[Job, str], None] = lambda job, text: None,
    ) -> list[Outcome]:
        pending = list(reversed(todo))
        running: dict[int, tuple[Job, float]] = {}
        outcomes: list[Outcome] = []
        for slot in self.slots[: len(todo)]:
            self._start(slot)
        try:
            while len(outcomes) < len(todo):
                try:
                    kind, index, outcome = self.outbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    outcomes += self._replace_dead(running, pending, on_outcome)
                    continue
                if kind == "progress":
                    if index in running:
                        on_progress(running[index][0], outcome)
                    continue
                if kind == "outcome":
                    running.pop(index)
                    outcomes.append(outcome)
                    on_outcome(outcome)
                self._give_work(index, pending, running, on_start)
        finally:
            self.stop()
        return outcomes

    def _give_work(self, index: int, pending: list[Job], running: dict, on_start) -> None:
        inbox = self.workers[index][1]
        if not pending:
            inbox.put(None)
            return
        job = pending.pop()
        running[index] = (job, time.perf_counter())
        inbox.put(job)
        on_start(job, self.slots[index].device)

    def _replace_dead(self, running: dict, pending: list[Job], on_outcome) -> list[Outcome]:
        """A worker that died mid-job: record the job as failed, start a new worker in its slot."""
        failed = []
        for index, (process, _) in list(self.workers.items()):
            if process.is_alive() or process.exitcode == 0:
                continue
            if index not in running:  # died before taking a job: retry, but not for ever
                self.failed_starts += 1
                if self.failed_starts > 3 * len(self.slots):
                    raise UserError(
                        f"worker processes fail to start; see {self.folder.logs}. A script "
                        "that calls gsrcl must guard its top level with "
                        "`if __name__ == '__main__':` (workers are spawned)"
                    )
                self._start(self.slots[index])
                continue
            job, start = running.pop(index)
            device = self.slots[index].device
            reason = f"worker process died (exit code {process.exitcode}; killed or out of memory)"
            outcome = record_failure(job, self.folder, device, start, reason + "\n", reason)
            on_outcome(outcome)
            failed.append(outcome)
            if pending:
                self._start(self.slots[index])
        return failed

    def stop(self) -> None:
        for process, _ in self.workers.values():
            if process.is_alive():
                process.terminate()
        for process, _ in self.workers.values():
            process.join(timeout=5)
        self.workers.clear()
