import json

import pandas as pd
import torch

from gsrcl.files import safe_name
from gsrcl.model.encoder import build_encoder
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import tiny_experiment

TASKS = ["CD19+ B", "CD34+", "Dendritic"]  # the order of the config's cell_types


def _run(experiment, **kwargs):
    lines = []
    status = run_experiment(experiment, log=lines.append, **kwargs)
    return status, "\n".join(lines)


def test_tiny_run_writes_the_results_layout_with_real_numbers(tmp_path):
    experiment = tiny_experiment(tmp_path)
    status, log = _run(experiment)
    assert status == 0, log
    run_dir = tmp_path / "results" / "tiny"

    record = json.loads((run_dir / "experiment.json").read_text())
    assert record["seed"] == 0 and "torch" in record["versions"] and record["devices"] == ["cpu"]
    splits = json.loads((run_dir / "splits" / "pbmc68k_reduced.json").read_text())
    assert len(splits["cells"]) == 700 and [t["name"] for t in splits["tasks"]] == TASKS

    summary = pd.read_csv(run_dir / "summary.csv")
    methods = ["baseline-svm", "simclr-noise", "supcon-noise", "simclr-masking-200"]
    assert list(summary["task"].unique()) == TASKS
    assert sorted(zip(summary["task"], summary["method"], strict=True)) == sorted(
        (t, m) for t in TASKS for m in methods
    )
    assert (summary["folds"] == 3).all()
    easy = summary.set_index(["task", "method"]).loc[("CD19+ B", "baseline-svm")]
    assert easy["mcc_mean"] > 0.8 and easy["ap_mean"] > 0.8

    manifest = pd.read_csv(run_dir / "manifest.csv")
    assert len(manifest) == 12 and (manifest["status"] == "done").all()
    worker_log = "".join(p.read_text() for p in (run_dir / "logs").glob("worker-*.log"))
    assert "validation step at epoch 2: 3 tasks scored in" in worker_log
    assert "epoch 4/4" in worker_log

    job = run_dir / "jobs" / "pbmc68k_reduced" / "simclr-noise" / "fold-0"
    assert {"DONE", "metrics.json", "predictions.csv", "loss.csv", "validation.csv"} <= {
        p.name for p in job.iterdir()
    }
    loss = pd.read_csv(job / "loss.csv")
    assert len(loss) == 4 and loss["loss"].notna().all()
    validation = pd.read_csv(job / "validation.csv")
    assert sorted(validation["epoch"].unique()) == [0, 2, 4] and set(validation["task"]) == set(
        TASKS
    )

    checkpoint = torch.load(job / f"encoder-{safe_name('CD19+ B')}.pt", weights_only=True)
    encoder = build_encoder(**checkpoint["kwargs"])
    encoder.load_state_dict(checkpoint["state_dict"])
    assert len(checkpoint["genes"]) == 765
    assert encoder(torch.zeros(2, 765)).shape == (2, 32)
    masking = torch.load(
        job.parent.parent / "simclr-masking-200" / "fold-0" / f"encoder-{safe_name('CD34+')}.pt",
        weights_only=True,
    )
    assert len(masking["genes"]) == 200 and masking["preprocess"]["mean"].shape == (200,)

    # each distinct chosen snapshot is written once; tasks that chose it share the file
    rows = json.loads((job / "metrics.json").read_text())["rows"]
    files = {r["task"]: job / f"encoder-{safe_name(r['task'])}.pt" for r in rows}
    inodes = {r["epoch"]: set() for r in rows}
    for r in rows:
        assert torch.load(files[r["task"]], weights_only=True)["epoch"] == r["epoch"]
        inodes[r["epoch"]].add(files[r["task"]].stat().st_ino)
    assert all(len(same) == 1 for same in inodes.values())
    assert len({i for same in inodes.values() for i in same}) == len(inodes)


def test_rerun_skips_finished_jobs_and_same_seed_gives_identical_summary(tmp_path):
    experiment = tiny_experiment(tmp_path, methods=tiny_experiment(tmp_path).methods[:1])
    assert _run(experiment)[0] == 0
    summary_path = tmp_path / "results" / "tiny" / "summary.csv"
    first = summary_path.read_text()

    status, log = _run(experiment)
    assert status == 0 and "6 skipped, 0 to run" in log
    assert summary_path.read_text() == first

    again = tiny_experiment(tmp_path / "again", methods=experiment.methods)
    assert _run(again)[0] == 0
    assert (tmp_path / "again" / "results" / "tiny" / "summary.csv").read_text() == first

    status, log = _run(experiment, mode="force")
    assert "0 skipped, 6 to run" in log and summary_path.read_text() == first


def test_a_dataset_that_does_not_read_does_not_stop_the_others(tmp_path):
    from gsrcl.config.settings import Dataset

    good = tiny_experiment(tmp_path)
    broken = Dataset(name="broken", path=str(tmp_path / "missing.h5ad"))
    experiment = tiny_experiment(tmp_path, datasets=(*good.datasets, broken), methods=())
    status, log = _run(experiment)
    assert status == 1
    assert "error: dataset broken:" in log and "missing.h5ad not found" in log
    summary = pd.read_csv(tmp_path / "results" / "tiny" / "summary.csv")
    assert set(summary["dataset"]) == {"pbmc68k_reduced"} and len(summary) == 3


def test_check_prints_the_plan_without_training(tmp_path):
    from gsrcl.runner.pipeline import check

    lines = []
    assert check(tiny_experiment(tmp_path), log=lines.append) == 0
    text = "\n".join(lines)
    assert "CD34+: 13 cells, scored" in text and "12 jobs planned" in text
    assert "simclr-masking-200" in text and "workers: 1 on cpu" in text
    assert not (tmp_path / "results").exists()


def test_the_api_runs_an_experiment_and_returns_its_summary(tmp_path):
    import gsrcl

    experiment = tiny_experiment(tmp_path, methods=())
    result = gsrcl.run(experiment, log=lambda _: None)
    assert result.status == 0 and result.folder == tmp_path / "results" / "tiny"
    assert list(result.summary["task"].unique()) == TASKS
    assert {o.status for o in result.outcomes} == {"done"} and len(result.outcomes) == 3
    assert result.report == result.folder / "report.html" and result.report.exists()
    again = gsrcl.run(experiment, log=lambda _: None)
    assert again.outcomes == [] and again.summary.equals(result.summary)


def test_the_live_display_shows_where_each_running_job_is():
    from gsrcl.runner.jobs import Job
    from gsrcl.runner.progress import Progress

    progress = Progress(2, log=lambda _: None, live=True)
    job = Job("d", "simclr-noise", 0)
    progress.started(job, "cuda:0")
    progress.step(job, "epoch 50/3000")
    assert "d/simclr-noise/fold-0 @ cuda:0 epoch 50/3000" in str(progress.bar.postfix)
    progress.close()
