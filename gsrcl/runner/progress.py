"""Progress of a run in the main process: a live bar on a terminal, one line per job otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

from gsrcl.runner.dispatch import Outcome
from gsrcl.runner.jobs import Job


class Progress:
    """Counts done / running / failed jobs and shows where each running job is."""

    def __init__(self, total: int, log: Callable[[str], None], live: bool | None = None) -> None:
        self.total, self.log = total, log
        self.live = sys.stderr.isatty() if live is None else live
        self.running: dict[str, str] = {}  # job id → device
        self.steps: dict[str, str] = {}  # job id → where it is (its epoch)
        self.done = self.failed = 0
        self.bar = tqdm(total=total, unit="job", dynamic_ncols=True) if self.live else None

    def started(self, job: Job, device: str) -> None:
        self.running[job.id] = device
        self._refresh()

    def step(self, job: Job, text: str) -> None:
        """Where a running job is (its epoch), shown beside it on the live display."""
        if job.id in self.running:
            self.steps[job.id] = text
            self._refresh()

    def finished(self, outcome: Outcome) -> None:
        self.running.pop(outcome.job, None)
        self.steps.pop(outcome.job, None)
        self.done += outcome.status == "done"
        self.failed += outcome.status == "failed"
        note = f"  {outcome.error}" if outcome.error else ""
        line = (
            f"[{self.done + self.failed}/{self.total}] {outcome.job}: {outcome.status} in "
            f"{outcome.seconds:.1f} s on {outcome.device}{note}"
        )
        if self.bar is None:
            self.log(line)
        else:
            self.bar.write(line)
            self.bar.update(1)
        self._refresh()

    def _refresh(self) -> None:
        if self.bar is not None:
            where = ", ".join(
                f"{job} @ {device} {self.steps.get(job, '')}".rstrip()
                for job, device in self.running.items()
            )
            self.bar.set_postfix_str(f"failed {self.failed}, running {len(self.running)}: {where}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
