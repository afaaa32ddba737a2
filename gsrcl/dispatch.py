"""Running jobs: `execute` runs one job safely (used by every executor); executors run many."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gsrcl import jobs
from gsrcl.jobs import Job
from gsrcl.results import atomic_write, clear_job, mark_done
from gsrcl.settings import Experiment


@dataclass(frozen=True)
class Outcome:
    job: str
    status: str  # "done" | "failed" | "skipped"
    device: str
    seconds: float
    error: str = ""


def execute(job: Job, experiment: Experiment, run_dir: Path, device: str) -> Outcome:
    """Run one job into a cleared folder; DONE is written last, a failure leaves error.txt."""
    folder = jobs.job_dir(run_dir, job)
    clear_job(folder)
    start = time.perf_counter()
    try:
        jobs.run_job(job, experiment, run_dir, device)
    except Exception as error:  # a failing job is recorded; the others go on
        text = traceback.format_exc()
        atomic_write(folder / "error.txt", lambda tmp: tmp.write_text(text))
        return Outcome(job.id, "failed", device, time.perf_counter() - start, _one_line(error))
    mark_done(folder, jobs.fingerprint(experiment, job))
    return Outcome(job.id, "done", device, time.perf_counter() - start)


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()
    return text[0] if text else type(error).__name__


def run_serial(
    todo: list[Job],
    experiment: Experiment,
    run_dir: Path,
    device: str,
    report: Callable[[Outcome], None],
) -> list[Outcome]:
    """Every job in this process, one after another."""
    outcomes = []
    for job in todo:
        outcome = execute(job, experiment, run_dir, device)
        report(outcome)
        outcomes.append(outcome)
    return outcomes
