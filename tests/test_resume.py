"""A long job killed during training resumes from its last validation step, to the same results."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gsrcl.config.settings import Compute, Contrastive
from gsrcl.data.dataset import DatasetCache
from gsrcl.runner.dispatch import execute
from gsrcl.runner.jobs import Job
from gsrcl.runner.pipeline import prepare
from gsrcl.runner.run_folder import PROGRESS, JobFolder, RunFolder
from tests.conftest import tiny_experiment


class _Killed(BaseException):
    """What SIGKILL does to a worker, raised where the job stands (not caught as a failure)."""


def _ready(tmp_path, name, method):
    experiment = tiny_experiment(
        tmp_path / name,
        methods=(method,),
        contrastive=Contrastive(epochs=8, validate_every=2, lr=1e-3),
        compute=Compute(devices="cpu", save_progress_seconds=0),
    )
    run = RunFolder.of(experiment)
    prepare(experiment, run, DatasetCache(), log=lambda _: None)
    return experiment, run


@pytest.mark.parametrize("loss, die_at_save", [("simclr", 2), ("supcon", 6)])
def test_a_job_killed_mid_training_resumes_to_the_uninterrupted_results(
    tmp_path, monkeypatch, loss, die_at_save
):
    method = next(m for m in tiny_experiment(tmp_path).methods if m.loss == loss)
    job = Job("pbmc68k_reduced", method.name, 0)
    whole, whole_run = _ready(tmp_path, "whole", method)
    assert execute(job, whole, whole_run, "cpu", DatasetCache()).status == "done"

    killed, killed_run = _ready(tmp_path, "killed", method)
    saves = []
    save = JobFolder.save_progress

    def dying(self, state):  # SupCon's 6th save: its second task's training, after epoch 4
        save(self, state)
        saves.append(state.get("current") and state["current"]["epoch"])
        if len(saves) == die_at_save:
            raise _Killed()

    monkeypatch.setattr(JobFolder, "save_progress", dying)
    with pytest.raises(_Killed):
        execute(job, killed, killed_run, "cpu", DatasetCache())
    monkeypatch.undo()
    folder = killed_run.job(job)
    assert (folder.path / PROGRESS).exists() and folder.state("x").status == "incomplete"
    assert execute(job, killed, killed_run, "cpu", DatasetCache()).status == "done"
    assert not (folder.path / PROGRESS).exists()  # one checkpoint per task is all that stays

    a, b = whole_run.job(job), folder
    assert a.metrics() == b.metrics()
    for name in ("predictions.csv", "loss.csv", "validation.csv"):
        assert (a.path / name).read_text() == (b.path / name).read_text(), name
    encoders = sorted(p.name for p in a.path.glob("encoder-*.pt"))
    assert encoders == sorted(p.name for p in b.path.glob("encoder-*.pt"))
    for name in encoders:
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name


def test_a_forced_rerun_does_not_resume(tmp_path):
    from gsrcl.runner.pipeline import run_experiment

    experiment = dataclasses.replace(
        tiny_experiment(tmp_path), methods=tiny_experiment(tmp_path).methods[:1]
    )
    assert run_experiment(experiment, log=lambda _: None) == 0
    folder = RunFolder.of(experiment).job(Job("pbmc68k_reduced", "simclr-noise", 0))
    (folder.path / PROGRESS).write_bytes(b"not a training state")
    lines = []
    assert run_experiment(experiment, mode="force", log=lines.append) == 0
    assert not (folder.path / PROGRESS).exists()


CONFIG = """
from gsrcl.config.settings import *
from tests.conftest import tiny_experiment
from pathlib import Path
base = tiny_experiment(Path({root!r}))
EXPERIMENT = tiny_experiment(
    Path({root!r}), methods=base.methods[:1], split=Split(folds=2),
    contrastive=Contrastive(epochs=100, validate_every=20, lr=1e-3),
    compute=Compute(devices="cpu", cpu_workers=1, save_progress_seconds=0))
"""


def test_a_runner_killed_during_training_resumes_to_the_same_summary(tmp_path):
    """SIGKILL with one job done and another mid-training: the rerun skips the done job,
    resumes the other from its saved state, and ends where an uninterrupted run ends."""
    from tests.helpers import kill_runner_when, run_runner

    for name in ("killed", "whole"):
        (tmp_path / f"{name}.py").write_text(CONFIG.format(root=str(tmp_path / name)))
    jobs = tmp_path / "killed" / "results" / "tiny" / "jobs"
    done_jobs = lambda: list(jobs.glob("*/*/*/DONE"))  # noqa: E731
    caught = lambda: list(jobs.glob("*/*/*/" + PROGRESS)) and done_jobs()  # noqa: E731
    kill_runner_when(tmp_path / "killed.py", caught)
    assert caught(), "no job was caught during training after another was done"
    finished = len(done_jobs())
    for name in ("killed", "whole"):
        done = run_runner(tmp_path / f"{name}.py")
        assert done.returncode == 0, done.stderr
        if name == "killed":  # or one more, where the killed job's marker was being written
            assert any(f"{n} skipped" in done.stdout for n in (finished, finished + 1))
            logs = (tmp_path / "killed" / "results" / "tiny" / "logs").glob("worker-*.log")
            assert any("resuming" in log.read_text() for log in logs)
    summary = "results/tiny/summary.csv"
    assert (tmp_path / "killed" / summary).read_text() == (tmp_path / "whole" / summary).read_text()
    for metrics in (tmp_path / "whole" / "results/tiny/jobs").glob("*/*/*/metrics.json"):
        twin = tmp_path / "killed" / metrics.relative_to(tmp_path / "whole")
        rows = [json.loads(p.read_text())["rows"] for p in (metrics, twin)]
        assert rows[0] == rows[1], metrics
