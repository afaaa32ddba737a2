"""The results folder can be trusted: no mixing, no corruption, no loss, one runner at a time."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import runner
from gsrcl.config.settings import Classifier, Compute, Evaluation
from gsrcl.errors import UserError
from gsrcl.runner.pipeline import report_only, run_experiment
from gsrcl.runner.run_folder import JobFolder, JobState, RunFolder
from tests.conftest import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
SVM = Classifier(name="svm", grid={"C": [1, 10]})


def _baselines(tmp_path, **changes):
    settings = {
        "methods": (),
        "evaluation": Evaluation(classifier=SVM, baselines=(SVM,), inner_folds=3),
        "compute": Compute(devices="cpu", cpu_workers=1, threads=1),
    }
    return tiny_experiment(tmp_path, **{**settings, **changes})


def _run(experiment, mode="resume"):
    lines = []
    return run_experiment(experiment, mode=mode, log=lines.append), "\n".join(lines)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# ---- one definition of done ----


def test_a_job_is_done_only_with_its_fingerprint_and_intact_files(tmp_path):
    job = JobFolder(tmp_path / "job")
    assert job.state("f").status == "missing"
    job.clear()
    (job.path / "sub").mkdir()  # anything in a job folder is cleared with it
    job.clear()
    job.write_metrics("j", [{"task": "1", "mcc": 0.5}], {"total": 1.0}, {"svm": "libsvm"})
    (job.path / "encoder-a.pt").write_bytes(b"x" * 100)
    job.share_encoder(job.path / "encoder-a.pt", "b")
    assert job.state("f").status == "incomplete"
    job.mark_done("f", "cpu", 2.5)
    assert job.state("f") == JobState("done", device="cpu", seconds=2.5)
    assert job.state("g").status == "stale"
    with open(job.encoder_path("b"), "r+b") as file:  # same size, one byte changed
        file.write(b"y")
    assert job.state("f") == JobState("corrupt", "encoder-a.pt changed after the job wrote it")
    (job.path / "encoder-a.pt").write_bytes(b"x" * 50)
    assert "encoder-a.pt has 50 bytes, 100 when written" in job.state("f").reason
    (job.path / "encoder-a.pt").write_bytes(b"x" * 100)
    assert job.state("f").status == "done"
    (job.path / "metrics.json").unlink()
    assert job.state("f").reason == "metrics.json is missing"
    (job.path / "DONE").write_text('{"fingerpr')
    assert job.state("f").status == "corrupt"


def test_corrupt_or_emptied_jobs_are_rerun_with_a_warning_and_nothing_is_mixed(tmp_path):
    experiment = _baselines(tmp_path)
    assert _run(experiment)[0] == 0
    run = RunFolder.of(experiment)
    summary = (run.path / "summary.csv").read_text()
    for path in run.path.glob("**/*"):  # every file the runner wrote follows the umask
        if path.is_file() and path.name != ".lock":
            assert path.stat().st_mode & 0o777 == _umask_mode(), path

    jobs = sorted(run.path.glob("jobs/*/*/fold-*"))
    metrics = jobs[0] / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])  # truncated
    (jobs[1] / "predictions.csv").unlink()
    status, log = _run(experiment)
    assert status == 0 and "1 skipped, 2 to run" in log
    assert "fold-0 is corrupt (metrics.json has" in log and "predictions.csv is missing" in log
    assert (run.path / "summary.csv").read_text() == summary

    for item in jobs[2].iterdir():  # a job folder emptied by an interrupted run
        item.unlink()
    (jobs[2] / "half-written").write_text("")
    status, log = _run(experiment, mode="failed")
    assert status == 0 and "2 skipped, 1 to run" in log and "incomplete" in log
    assert (run.path / "summary.csv").read_text() == summary
    manifest = run.read_manifest()
    assert list(manifest["status"]) == ["done"] * 3 and (manifest["seconds"] > 0).all()


def test_results_of_another_config_are_never_reported_as_new(tmp_path):
    experiment = _baselines(tmp_path)
    assert _run(experiment)[0] == 0
    run = RunFolder.of(experiment)
    files = {p: p.read_bytes() for p in run.path.glob("*.*") if p.name != ".lock"}
    other = _baselines(tmp_path, seed=5)
    with pytest.raises(UserError, match="holds 3 jobs made with another config"):
        report_only(other, log=lambda _: None)
    with pytest.raises(UserError, match="--rerun-failed reruns failed jobs of the same config"):
        _run(other, mode="failed")
    assert {p: p.read_bytes() for p in files} == files  # experiment.json, summary, report kept

    status, log = _run(other)  # a plain run redoes them, and the record follows
    assert status == 0 and "3 jobs were made with another config" in log
    assert run.read_record()["seed"] == 5
    assert (run.path / "summary.csv").read_bytes() != files[run.path / "summary.csv"]


def test_a_failing_write_ends_in_one_line_and_keeps_finished_jobs(tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(root=str(tmp_path), methods="()"))

    def full(self, frame):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "manifest.csv"))

    monkeypatch.setattr(RunFolder, "write_manifest", full)
    assert runner.main(["--config", str(config)]) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "manifest.csv: No space left on device; free some space" in err
    assert len(list(tmp_path.glob("results/tiny/jobs/*/*/*/DONE"))) == 3


def test_a_job_that_meets_a_full_disk_says_what_to_do(tmp_path):
    from tests.helpers import failing_baseline

    failing = failing_baseline(tmp_path, "enospc")
    experiment = _baselines(tmp_path, evaluation=Evaluation(SVM, (SVM, failing), inner_folds=3))
    status, log = _run(experiment)
    assert status == 1 and "cannot write /x/y: No space left on device; free some space" in log


# ---- one runner per folder, and every way of stopping ----

CONFIG = """
from gsrcl.config.settings import *
from tests.conftest import tiny_experiment
from pathlib import Path
base = tiny_experiment(Path({root!r}))
EXPERIMENT = tiny_experiment(Path({root!r}), methods={methods},
                             compute=Compute(devices="cpu", cpu_workers=1))
"""


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, seconds=120) -> None:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.2)
    assert condition()


def test_a_second_runner_on_the_same_folder_stops_at_once_naming_the_holder(tmp_path):
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(root=str(tmp_path), methods="base.methods[:1]"))
    lock = tmp_path / "results" / "tiny" / ".lock"
    first = _start(config)
    _wait_for(lambda: lock.exists() and lock.read_text())
    second = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"in use by another runner (host {os.uname().nodename}, pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGKILL)  # its lock dies with it: the next runner takes over
    first.wait()
    third = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert third.returncode == 0, third.stderr
    assert f"took over the lock of a runner that stopped (host {os.uname().nodename}, pid " in (
        third.stderr
    )
    assert not lock.read_text()  # released


def test_sigterm_stops_like_ctrl_c_and_a_rerun_reports_every_job(tmp_path):
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(root=str(tmp_path), methods="base.methods[:1]"))
    jobs = tmp_path / "results" / "tiny" / "jobs"
    runner_process = _start(config)
    _wait_for(lambda: list(jobs.glob("*/*/*/DONE")))
    runner_process.send_signal(signal.SIGTERM)
    _, err = runner_process.communicate(timeout=60)
    assert runner_process.returncode == 143
    assert "stopped (SIGTERM): finished jobs are kept; rerun to continue" in err
    assert "Traceback" not in err
    finished = len(list(jobs.glob("*/*/*/DONE")))
    resumed = _start(config)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{finished} skipped" in out
    manifest = pd.read_csv(tmp_path / "results" / "tiny" / "manifest.csv")
    assert (manifest["status"] == "done").all() and (manifest["seconds"] > 0).all()
    page = (tmp_path / "results" / "tiny" / "report.html").read_text()
    assert "6 done, 0 not done" in page and "Failed or missing jobs" not in page


def test_integer_labels_go_through_to_the_report(tmp_path):
    import numpy as np
    import scanpy as sc

    from gsrcl.config.settings import Dataset

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.to_adata()
    codes = {t: i for i, t in enumerate(sorted(adata.obs["bulk_labels"].unique()))}
    raw.obs["code"] = np.array([codes[t] for t in adata.obs["bulk_labels"]], dtype=int)
    raw.write_h5ad(tmp_path / "coded.h5ad")
    spec = Dataset(name="coded", path=str(tmp_path / "coded.h5ad"), labels="code", values="log")
    experiment = _baselines(tmp_path, datasets=(spec,))
    status, log = _run(experiment)
    assert status == 0 and "report could not be built" not in log and "warning" not in log
    summary = RunFolder.of(experiment).read_summary()
    assert set(summary["task"]) == {str(i) for i in codes.values()}
    assert report_only(experiment, log=lambda _: None) == 0
    assert (RunFolder.of(experiment).figures / "coded-mcc.png").exists()
    record = json.loads((RunFolder.of(experiment).path / "experiment.json").read_text())
    assert record["config"]["datasets"][0]["labels"] == "code"
