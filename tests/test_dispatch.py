import collections
from pathlib import Path

import pytest

from gsrcl.config.settings import Classifier, Compute, Evaluation
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import tiny_experiment
from tests.helpers import failing_baseline

ROOT = Path(__file__).resolve().parents[1]
SVM = Classifier(name="svm", grid={"C": [1, 10]})


def _baseline_only(tmp_path, workers=1, baselines=(SVM,), **changes):
    return tiny_experiment(
        tmp_path,
        methods=(),
        evaluation=Evaluation(classifier=SVM, baselines=baselines, inner_folds=3),
        compute=Compute(devices="cpu", cpu_workers=workers, threads=1),
        **changes,
    )


def _run(experiment, mode="resume"):
    lines = []
    return run_experiment(experiment, mode=mode, log=lines.append), "\n".join(lines)


def _starts(run_dir: Path) -> collections.Counter:
    """How often each job was started, from the workers' logs."""
    counts = collections.Counter()
    for log in (run_dir / "logs").glob("worker-*.log"):
        for line in log.read_text().splitlines():
            if " start " in line:
                counts[line.split(" start ")[1].split(" on ")[0]] += 1
    return counts


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_job_runs_exactly_once(tmp_path, workers):
    experiment = _baseline_only(
        tmp_path, workers, split=tiny_experiment(tmp_path).split.__class__(folds=4)
    )
    status, log = _run(experiment)
    assert status == 0, log
    starts = _starts(tmp_path / "results" / "tiny")
    assert sorted(starts) == [f"pbmc68k_reduced/baseline/fold-{k}" for k in range(4)]
    assert set(starts.values()) == {1}


def _fails_once(tmp_path, how: str):
    """Baseline jobs where exactly one job meets an injected failure (`raise` or `kill`)."""
    failing = failing_baseline(tmp_path, how)
    experiment = _baseline_only(tmp_path, 2, baselines=(SVM, failing))
    status, log = _run(experiment)
    run_dir = tmp_path / "results" / "tiny"
    assert status == 1
    assert len(list(run_dir.glob("jobs/*/*/*/DONE"))) == 2
    errors = list(run_dir.glob("jobs/*/*/*/error.txt"))
    assert len(errors) == 1
    return experiment, log, errors[0].read_text()


def test_a_job_that_raises_is_isolated_and_rerun_failed_mends_it(tmp_path):
    experiment, log, error = _fails_once(tmp_path, "raise")
    assert "injected failure" in log and "ValueError" in error
    status, log = _run(experiment, mode="failed")
    assert status == 0 and "2 skipped, 1 to run" in log
    assert len(list((tmp_path / "results" / "tiny").glob("jobs/*/*/*/DONE"))) == 3


def test_a_killed_worker_is_replaced_and_the_other_jobs_finish(tmp_path):
    _, log, error = _fails_once(tmp_path, "kill")
    assert "worker process died" in log and "exit code -9" in error


def test_one_and_two_workers_give_the_same_summary(tmp_path):
    one = tiny_experiment(
        tmp_path / "one",
        methods=tiny_experiment(tmp_path).methods[:1],
        compute=Compute(devices="cpu", cpu_workers=1),
    )
    two = tiny_experiment(
        tmp_path / "two", methods=one.methods, compute=Compute(devices="cpu", cpu_workers=2)
    )
    assert _run(one)[0] == 0 and _run(two)[0] == 0
    summary = "results/tiny/summary.csv"
    assert (tmp_path / "one" / summary).read_text() == (tmp_path / "two" / summary).read_text()
