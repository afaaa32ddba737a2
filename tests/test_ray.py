"""The Ray executor on a local Ray (CPU): the same results as the local pool, failures isolated,
finished jobs skipped; and a clear message when Ray is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gsrcl.config.settings import Classifier, Compute, Evaluation
from gsrcl.errors import UserError
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import tiny_experiment
from tests.helpers import failing_baseline

ROOT = Path(__file__).resolve().parents[1]
SVM = Classifier(name="svm", grid={"C": [1, 10]})
RAY = Compute(devices="cpu", executor="ray", ray_cpus_per_job=1)


def _run(experiment, mode="resume"):
    lines = []
    return run_experiment(experiment, mode=mode, log=lines.append), "\n".join(lines)


def test_ray_gives_the_local_pools_summary_and_a_rerun_skips_finished_jobs(tmp_path):
    pytest.importorskip("ray")
    methods = tiny_experiment(tmp_path).methods[:1]
    local = tiny_experiment(
        tmp_path / "local", methods=methods, compute=Compute(devices="cpu", cpu_workers=1)
    )
    on_ray = tiny_experiment(tmp_path / "ray", methods=methods, compute=RAY)
    assert _run(local)[0] == 0
    status, log = _run(on_ray)
    assert status == 0, log
    summary = "results/tiny/summary.csv"
    assert (tmp_path / "ray" / summary).read_text() == (tmp_path / "local" / summary).read_text()
    status, log = _run(on_ray)
    assert status == 0 and "6 skipped, 0 to run" in log


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_ray_job_is_isolated_and_rerun_failed_mends_it(tmp_path, how):
    pytest.importorskip("ray")
    failing = failing_baseline(tmp_path, how)
    experiment = tiny_experiment(
        tmp_path,
        methods=(),
        evaluation=Evaluation(classifier=SVM, baselines=(SVM, failing), inner_folds=3),
        compute=RAY,
    )
    status, log = _run(experiment)
    run_dir = tmp_path / "results" / "tiny"
    assert status == 1
    assert len(list(run_dir.glob("jobs/*/*/*/DONE"))) == 2
    (error,) = run_dir.glob("jobs/*/*/*/error.txt")
    expected = "injected failure" if how == "raise" else "ray task failed"
    assert expected in error.read_text() and expected in log
    status, log = _run(experiment, mode="failed")
    assert status == 0 and "2 skipped, 1 to run" in log
    assert len(list(run_dir.glob("jobs/*/*/*/DONE"))) == 3


def test_choosing_ray_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    experiment = tiny_experiment(tmp_path, methods=(), compute=RAY)
    with pytest.raises(UserError, match="pip install"):
        run_experiment(experiment, log=lambda line: None)


def test_the_local_executor_never_imports_ray():
    code = (
        "import sys, runner, gsrcl.runner.pipeline, gsrcl.runner.dispatch, gsrcl.runner.jobs; "
        "print('ray' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
