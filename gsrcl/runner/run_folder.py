"""The results folder of an experiment: its one owner. Every path in it is built here and every
file in it is read and written here.

```
results/<experiment>/
  experiment.json        resolved config, package versions, devices, seed (of the results held)
  .lock                  held by the runner using the folder: host, pid, start time
  splits/<dataset>.json  validation cells, fold assignment, tasks (with reasons for skipped ones)
  jobs/<dataset>/<method>/fold-<k>/   metrics.json, loss.csv, validation.csv, predictions.csv,
                                      encoder-<safe_name(task)>.pt (tasks sharing a snapshot
                                      share the file: hard links), DONE (written last) | error.txt
                                      (keep_encoders="chosen": the encoders another fold
                                      supersedes are removed; DONE then lists them as pruned)
  logs/worker-<n>.log    what each worker process did
  manifest.csv           one row per job: status, device, seconds, error
  summary.csv | summary.md | report.html | figures/   derived from the done jobs
  models/<dataset>-<method>/   exported reference models
```

A job is *done* when its DONE marker exists, names the fingerprint of the current config, and every
file it lists still has the size and SHA-256 it had when the job finished. That one answer
(`JobFolder.state`) serves resume, `--rerun-failed`, the summary, the report and export.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

from gsrcl.config.settings import APPROXIMATE_SOLVER
from gsrcl.errors import UserError
from gsrcl.evaluate import nystroem_svm
from gsrcl.files import (
    atomic_write,
    link_or_copy,
    safe_name,
    sha256,
    write_csv,
    write_json,
    write_text,
)

DONE = "DONE"
ERROR = "error.txt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
LOSS = "loss.csv"
VALIDATION = "validation.csv"
SUMMARY = "summary.csv"
PROGRESS = "progress.pt"  # a running job's training state, kept until it is done
DERIVED = ("summary.csv", "summary.md", "report.html", "figures")  # rebuilt from the jobs

Status = Literal["done", "stale", "corrupt", "failed", "incomplete", "missing"]


@dataclass(frozen=True)
class JobState:
    status: Status
    reason: str = ""  # what is wrong, for stale / corrupt / failed / incomplete
    device: str = ""  # done: where it ran
    seconds: float = 0.0  # done: how long it took
    remake: bool = False  # incomplete: an encoder export needs was removed; rerun to remake it


class JobFolder:
    """One job's files: written by the job, trusted only once `state` says done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # ---- writing, by the job ----

    def prepare(self) -> None:
        """Make the folder ready for an attempt: a job stopped during training keeps its files
        and progress (it resumes); anything else is cleared."""
        if (self.path / PROGRESS).exists() and not (self.path / DONE).exists():
            (self.path / ERROR).unlink(missing_ok=True)
        else:
            self.clear()

    def clear(self) -> None:
        """Remove a previous attempt, marker first, so no stale file is ever trusted."""
        (self.path / DONE).unlink(missing_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def write_metrics(
        self, job_id: str, rows: list[dict], seconds: dict[str, float], solvers: dict[str, str]
    ) -> None:
        """`solvers`: which solver fitted each RBF SVC classifier of the job, by name; an
        approximate one's version is recorded with them."""
        record = {"job": job_id, "rows": rows, "seconds": seconds, "solvers": solvers}
        if APPROXIMATE_SOLVER in solvers.values():
            record["approximate_svm"] = nystroem_svm.VERSION
        write_json(self.path / METRICS, record)

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        """predictions.csv, loss.csv or validation.csv."""
        write_csv(self.path / name, frame)

    def encoder_path(self, task: str) -> Path:
        return self.path / f"encoder-{safe_name(task)}.pt"

    def save_encoder(self, task: str, checkpoint: dict) -> Path:
        path = self.encoder_path(task)
        _save_torch(path, checkpoint)
        return path

    def share_encoder(self, source: Path, task: str) -> None:
        """`task` chose the same snapshot as the encoder at `source`: one file, two names."""
        link_or_copy(source, self.encoder_path(task))

    def save_progress(self, state: dict) -> None:
        """The job's training state at a validation step (tensors and plain data), replaced
        atomically, so a job killed later resumes from here."""
        _save_torch(self.path / PROGRESS, state)

    def load_progress(self, device: str) -> dict | None:
        """The saved training state, or None when there is none or it does not load."""
        import torch

        path = self.path / PROGRESS
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception:  # a half-written or foreign file: the job starts afresh
            return None

    def drop_progress(self) -> None:
        (self.path / PROGRESS).unlink(missing_ok=True)

    def mark_done(self, fingerprint: str, device: str, seconds: float) -> None:
        """The marker, written last: the fingerprint and each file's size and checksum."""
        digests: dict[tuple[int, int], str] = {}
        files = {
            path.name: {"size": path.stat().st_size, "sha256": _digest(path, digests)}
            for path in sorted(self.path.iterdir())
            if path.is_file() and path.name not in (DONE, PROGRESS)
        }
        marker = {"fingerprint": fingerprint, "files": files, "device": device}
        write_json(self.path / DONE, {**marker, "seconds": seconds, "finished": _now()})

    def remove_encoders(self, tasks: list[str], kept_in: dict[str, str]) -> None:
        """Remove the encoders of `tasks` from a done job (`kept_in`: the folder that holds the
        one export takes instead). The marker is rewritten first, so it never lists a removed
        file; a stop in between leaves an unlisted file, removed by the next pruning."""
        marker = json.loads((self.path / DONE).read_text())
        pruned = marker.setdefault("pruned", {})
        for task in tasks:
            name = self.encoder_path(task).name
            marker["files"].pop(name, None)
            pruned[name] = {"task": task, "kept_in": kept_in[task]}
        write_json(self.path / DONE, marker)
        for name in pruned:
            (self.path / name).unlink(missing_ok=True)

    def record_error(self, summary: str, text: str) -> None:
        """error.txt: the one-line summary, then the traceback."""
        write_text(self.path / ERROR, f"{summary}\n\n{text}")

    # ---- reading ----

    def state(self, fingerprint: str) -> JobState:
        marker = self.path / DONE
        if not marker.exists():
            return self._unfinished()
        try:
            saved = json.loads(marker.read_text())
            files = saved["files"]
            device, seconds = str(saved.get("device", "")), float(saved.get("seconds", 0.0))
        except (ValueError, KeyError, TypeError, OSError):
            return JobState("corrupt", f"{marker} is unreadable or from an older runner")
        if saved.get("fingerprint") != fingerprint:
            return JobState("stale", "made with another config")
        problem = _damage(self.path, files)
        if problem:
            return JobState("corrupt", problem)
        if self._older_approximation():
            return JobState("stale", "fitted by an older runner's approximate SVM")
        return JobState("done", device=device, seconds=seconds)

    def _older_approximation(self) -> bool:
        """Whether another version of the approximate SVM fitted this job: the config is the
        same, the numbers are not, so the job is redone rather than mixed with new ones (jobs
        the exact SVM fitted keep their fingerprint-only check)."""
        record = json.loads((self.path / METRICS).read_text())  # checked by _damage
        approximate = APPROXIMATE_SOLVER in record.get("solvers", {}).values()
        return approximate and record.get("approximate_svm") != nystroem_svm.VERSION

    def _unfinished(self) -> JobState:
        error = self.path / ERROR
        if error.exists():
            first = error.read_text(errors="replace").splitlines()[:1]
            return JobState("failed", first[0] if first else "failed")
        if (self.path / PROGRESS).exists():
            return JobState("incomplete", "stopped during training; resumes from its last step")
        if self.path.exists() and any(self.path.iterdir()):
            return JobState("incomplete", "stopped before it finished")
        return JobState("missing")

    def marker(self, fingerprint: str) -> dict | None:
        """The DONE record when it names `fingerprint`, without checking the files (`state`
        does); None otherwise."""
        try:
            saved = json.loads((self.path / DONE).read_text())
        except (ValueError, OSError):
            return None
        named = isinstance(saved, dict) and saved.get("fingerprint") == fingerprint
        return saved if named else None

    def pruned_tasks(self) -> list[str]:
        """The tasks whose encoders were removed from this done job (keep_encoders="chosen")."""
        pruned = json.loads((self.path / DONE).read_text()).get("pruned", {})
        return [entry["task"] for entry in pruned.values()]

    def validation_scores(self) -> dict[str, float]:
        """A contrastive job's validation score of each task's chosen checkpoint."""
        return {row["task"]: row["validation_score"] for row in self.metrics()}

    def metrics(self) -> list[dict]:
        """The rows of metrics.json (call on done jobs only: their files are checked)."""
        return json.loads((self.path / METRICS).read_text())["rows"]

    def checksums(self) -> dict[str, str]:
        """Each file's SHA-256 as DONE records it (call on done jobs only: `state` has checked
        that the files still have them, so they need not be read again)."""
        files = json.loads((self.path / DONE).read_text())["files"]
        return {name: entry["sha256"] for name, entry in files.items()}

    def table(self, name: str) -> pd.DataFrame:
        """A table of a done job, cell types kept as text (labels may look like numbers)."""
        path = self.path / name
        if not path.exists():
            return pd.DataFrame()
        return pd.read_csv(path, keep_default_na=False, dtype={"task": str, "cell": str})


def _damage(folder: Path, files: dict[str, dict]) -> str:
    """What is wrong with the files a DONE marker lists, or "" when all are intact."""
    digests: dict[tuple[int, int], str] = {}
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} when written"
        if _digest(path, digests) != expected["sha256"]:
            return f"{name} changed after the job wrote it"
    return ""


def _digest(path: Path, digests: dict[tuple[int, int], str]) -> str:
    """The file's SHA-256, read once per inode (tasks' hard-linked encoders share one)."""
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino)
    if key not in digests:
        digests[key] = sha256(path)
    return digests[key]


def _save_torch(path: Path, data: dict) -> None:
    """torch.save, atomically. Serialised in memory first: torch's own file writer reports a
    full disk as an opaque RuntimeError, Python's as the OSError (ENOSPC, the path) a user can
    act on."""
    import torch  # only jobs that train save torch files

    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class JobKey(Protocol):
    dataset: str
    method: str
    fold: int


class RunFolder:
    """`results/<experiment>/`: the paths and files of one experiment's results."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, experiment: Any) -> RunFolder:
        """The folder of an `Experiment`: <results_dir>/<name>."""
        return cls(Path(experiment.results_dir) / experiment.name)

    def job(self, job: JobKey) -> JobFolder:
        return JobFolder(self.path / "jobs" / job.dataset / job.method / f"fold-{job.fold}")

    def read_splits(self, dataset: str) -> dict | None:
        """The saved splits of a dataset; None when missing or unreadable (they are remade:
        the same seed and cells give the same splits)."""
        try:
            saved = json.loads((self.path / "splits" / f"{dataset}.json").read_text())
        except (ValueError, OSError):
            return None
        return saved if isinstance(saved, dict) else None

    def write_splits(self, dataset: str, record: dict) -> None:
        write_json(self.path / "splits" / f"{dataset}.json", record)

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def model_path(self, dataset: str, method: str) -> Path:
        return self.path / "models" / f"{dataset}-{method}"

    def exists(self) -> bool:
        return (self.path / "experiment.json").exists()

    def job_seconds(self, dataset: str = "*") -> list[dict[str, float]]:
        """Each finished job's seconds (total, training, validation_wait), for benchmarks."""
        paths = self.path.glob(f"jobs/{dataset}/*/*/{METRICS}")
        return [json.loads(p.read_text()).get("seconds", {}) for p in sorted(paths)]

    # ---- the record of the config ----

    def read_record(self) -> dict:
        path = self.path / "experiment.json"
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as error:
            raise UserError(f"{path} is unreadable ({error}); rerun the experiment") from None

    def write_record(self, record: dict[str, Any]) -> None:
        """experiment.json; results derived under another config (summary, report) go first, so
        the folder never shows results of one config beside the record of another."""
        previous = self._recorded_fingerprint()
        if previous is not None and previous != record["fingerprint"]:
            for name in DERIVED:
                path = self.path / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        write_json(self.path / "experiment.json", record)

    def _recorded_fingerprint(self) -> str | None:
        try:
            return json.loads((self.path / "experiment.json").read_text()).get("fingerprint")
        except (ValueError, OSError, AttributeError):
            return None

    # ---- derived files ----

    def write_manifest(self, frame: pd.DataFrame) -> None:
        write_csv(self.path / "manifest.csv", frame)

    def read_manifest(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "manifest.csv", keep_default_na=False)

    def write_summary(self, frame: pd.DataFrame) -> None:
        write_csv(self.path / SUMMARY, frame)

    def read_summary(self) -> pd.DataFrame:
        """summary.csv with its numbers as numbers and unscored tasks' empty cells as "" / NaN."""
        path = self.path / SUMMARY
        if not path.exists():
            raise UserError(f"no summary in {self.path}; run the experiment first")
        text = {"dataset": str, "task": str, "method": str, "note": str}
        summary = pd.read_csv(path, keep_default_na=False, dtype=text)
        for column in [c for c in summary if c.endswith(("_mean", "_se"))] + ["folds"]:
            summary[column] = pd.to_numeric(summary[column], errors="coerce")
        return summary

    def write_page(self, name: str, text: str) -> Path:
        """summary.md or report.html."""
        path = self.path / name
        write_text(path, text)
        return path

    def write_figure(self, name: str, png: bytes) -> None:
        atomic_write(self.figures / f"{name}.png", lambda tmp: tmp.write_bytes(png))

    # ---- one runner at a time ----

    @contextlib.contextmanager
    def lock(self, log=None) -> Iterator[None]:
        """Hold the folder for this process's life in it: a second runner stops at once, naming
        the holder. The kernel drops the lock when its holder dies (even by SIGKILL), so a
        killed runner's lock is taken over, never left to block."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.path} is in use by another runner ({_holder(path)}); wait for it to "
                    "finish or stop it, or give this run another name or results_dir"
                ) from None
            previous = _holder(path)
            if previous != "unknown holder" and log is not None:
                log(f"warning: took over the lock of a runner that stopped ({previous})")
            os.ftruncate(fd, 0)
            holder = {"host": platform.node(), "pid": os.getpid(), "started": _now()}
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, OSError, TypeError):
        return "unknown holder"
