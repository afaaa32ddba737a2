"""Running jobs on worker processes placed by the scheduler (`gsrcl.runner.schedule`).

A worker is spawned for a device (a GPU, or the CPU) when the scheduler places a job there and no
idle worker of that device is free (a GPU worker sees that GPU alone: `devices`); it takes its
jobs one at a time through its own inbox, so the main process always knows which job each worker
holds: a job is handed out exactly once, and a worker that dies (killed, out of memory) is
replaced and its job recorded as failed. Each worker's share of the cores lives in shared memory
(`CoreShare`): the runner shares the cores out again whenever a job starts or finishes, and a
running job takes its new share at its next validation step. `execute` runs every job, and gives
the GPU back what the job left cached when it ends.
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
from gsrcl.evaluate.workers import Share
from gsrcl.files import describe_os_error
from gsrcl.runner import devices, jobs
from gsrcl.runner.jobs import Job
from gsrcl.runner.run_folder import RunFolder
from gsrcl.runner.schedule import Machine, Needs, Scheduler

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
    """One worker process: its device and its share of the cores (`CoreShare`, `FixedShare`)."""

    index: int
    device: str
    share: Share


def execute(
    job: Job,
    experiment: Experiment,
    run: RunFolder,
    device: str,
    datasets: DatasetCache,
    share: Share | None = None,
    name: str | None = None,
) -> Outcome:
    """Run one job into a cleared folder; DONE is written last, a failure leaves error.txt.
    `share`: the worker's share of the cores, when the runner may change it mid-job. `name`:
    the device as the runner names it, recorded (a worker computes on its GPU as cuda:0)."""
    folder = run.job(job)
    start = time.perf_counter()
    name = name or device
    try:
        folder.prepare()
        jobs.run_job(job, experiment, run, device, datasets, share)
        seconds = time.perf_counter() - start
        folder.drop_progress()
        folder.mark_done(jobs.fingerprint(experiment, job), name, seconds)
    except Exception as error:  # a failing job is recorded; the others go on
        return record_failure(job, run, name, start, traceback.format_exc(), error)
    finally:
        devices.release(device)
    return Outcome(job.id, "done", name, seconds)


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
    device = devices.worker_device(slot.device)
    while (job := inbox.get()) is not None:
        set_threads(slot.share.threads())
        log.info("start %s on %s", job.id, slot.device)
        outcome = execute(job, experiment, run, device, datasets, slot.share, slot.device)
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
    """Make the process's one visible GPU current and take its share of CPU threads, before
    any other work (the pool starts a GPU worker seeing only its GPU, as Ray does)."""
    if slot.device.startswith("cuda"):
        torch.cuda.set_device(devices.worker_device(slot.device))
    set_threads(slot.share.threads())


def set_threads(threads: int) -> None:
    """torch's threads and the BLAS threads numpy / scipy use under scikit-learn."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


class CoreShare:
    """A worker's share of the cores: set by the runner, read by the worker's job (`Workers`),
    in shared memory so it can change while the job runs."""

    def __init__(self, context, threads: int) -> None:
        self.value = context.Value("i", threads, lock=False)

    def threads(self) -> int:
        return self.value.value

    def set(self, threads: int) -> None:
        self.value.value = threads

    def apply(self, threads: int) -> None:
        set_threads(threads)


class FixedShare:
    """A share that does not change (a Ray task's cores)."""

    def __init__(self, threads: int) -> None:
        self.fixed = threads

    def threads(self) -> int:
        return self.fixed

    def apply(self, threads: int) -> None:
        set_threads(threads)


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
    """Worker processes started as the scheduler places jobs: one per running job, each bound to
    its device (an idle one of the same device takes the next job there). `run` hands out jobs
    until every job has an outcome."""

    def __init__(self, machine: Machine, experiment: Experiment, run: RunFolder) -> None:
        self.context = mp.get_context("spawn")
        self.outbox = self.context.Queue()
        self.machine, self.experiment, self.folder = machine, experiment, run
        self.workers: dict[int, tuple] = {}  # index → (process, inbox, slot)
        self.idle: set[int] = set()
        self.starting: set[int] = set()  # started workers that have not said they are ready
        self.failed_starts = 0

    def run(
        self,
        todo: list[Job],
        needs: dict[Job, Needs],
        on_start: Callable[[Job, str], None],
        on_outcome: Callable[[Outcome], None],
        on_progress: Callable[[Job, str], None] = lambda job, text: None,
    ) -> list[Outcome]:
        scheduler = Scheduler(
            self.machine, {job: needs[job] for job in todo}, self.experiment.compute
        )
        running: dict[int, tuple[Job, float]] = {}
        outcomes: list[Outcome] = []
        try:
            self._place(scheduler, running, on_start)
            while len(outcomes) < len(todo):
                try:
                    kind, index, message = self.outbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    outcomes += self._replace_dead(scheduler, running, on_outcome)
                    self._place(scheduler, running, on_start)
                    continue
                if kind == "progress" and index in running:
                    on_progress(running[index][0], message)
                elif kind == "ready":
                    self.starting.discard(index)
                elif kind == "outcome":
                    scheduler.finish(running.pop(index)[0])
                    self.idle.add(index)
                    outcomes.append(message)
                    on_outcome(message)
                    self._place(scheduler, running, on_start)
        finally:
            self.stop()
        return outcomes

    def _place(self, scheduler: Scheduler, running: dict, on_start) -> None:
        """Start the jobs the scheduler places now, then give every running job its share."""
        for job, device in scheduler.place():
            index = self._worker_on(device)
            running[index] = (job, time.perf_counter())
            self.workers[index][1].put(job)
            on_start(job, device)
        shares = scheduler.shares()
        for index, (job, _) in running.items():
            self.workers[index][2].share.set(shares[job])

    def _worker_on(self, device: str) -> int:
        """An idle worker on `device`, or a new one."""
        for index in sorted(self.idle):
            if self.workers[index][2].device == device:
                self.idle.discard(index)
                return index
        index = max(self.workers, default=-1) + 1
        self._start(Slot(index, device, CoreShare(self.context, 1)))
        return index

    def _start(self, slot: Slot) -> None:
        inbox = self.context.Queue()
        process = self.context.Process(
            target=_worker,
            args=(slot, self.experiment, self.folder, inbox, self.outbox, os.getpid()),
            daemon=True,
            name=f"gsrcl-worker-{slot.index}",
        )
        with devices.environment(devices.worker_environment(slot.device)):
            process.start()  # spawned: the new interpreter sees its GPU alone from the start
        self.workers[slot.index] = (process, inbox, slot)
        self.starting.add(slot.index)

    def _replace_dead(self, scheduler: Scheduler, running: dict, on_outcome) -> list[Outcome]:
        """A worker that died: a job it had not begun goes back to the scheduler (a worker that
        never starts, not for ever); a job it was running is recorded as failed."""
        failed = []
        for index, (process, _, slot) in list(self.workers.items()):
            if process.is_alive() or process.exitcode == 0:
                continue
            del self.workers[index]
            self.idle.discard(index)
            scheduler.worker_gone(slot.device)
            job, start = running.pop(index, (None, 0.0))
            if index in self.starting:
                self.starting.discard(index)
                self.failed_starts += 1
                if self.failed_starts > 3 * self.machine.cores:
                    raise UserError(
                        f"worker processes fail to start; see {self.folder.logs}. A script "
                        "that calls gsrcl must guard its top level with "
                        "`if __name__ == '__main__':` (workers are spawned)"
                    )
                if job is not None:
                    scheduler.requeue(job)
                continue
            if job is None:
                continue
            scheduler.finish(job)
            reason = f"worker process died (exit code {process.exitcode}; killed or out of memory)"
            outcome = record_failure(job, self.folder, slot.device, start, reason + "\n", reason)
            on_outcome(outcome)
            failed.append(outcome)
        return failed

    def stop(self) -> None:
        for process, _, _ in self.workers.values():
            if process.is_alive():
                process.terminate()
        for process, _, _ in self.workers.values():
            process.join(timeout=5)
        self.workers.clear()
