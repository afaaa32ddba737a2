import json
from dataclasses import replace

import pandas as pd
import torch

from gsrcl.config.settings import Storage
from gsrcl.files import safe_name, sha256
from gsrcl.model.encoder import build_encoder
from gsrcl.runner import estimate, jobs, retention
from gsrcl.runner.pipeline import run_experiment
from gsrcl.runner.run_folder import RunFolder
from tests.conftest import PBMC, tiny_experiment

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

    jobs_dir = run_dir / "jobs" / "pbmc68k_reduced"
    job = jobs_dir / "simclr-noise" / "fold-0"
    assert {"DONE", "metrics.json", "predictions.csv", "loss.csv", "validation.csv"} <= {
        p.name for p in job.iterdir()
    }
    loss = pd.read_csv(job / "loss.csv")
    assert len(loss) == 4 and loss["loss"].notna().all()
    validation = pd.read_csv(job / "validation.csv")
    assert sorted(validation["epoch"].unique()) == [0, 2, 4] and set(validation["task"]) == set(
        TASKS
    )
    _kept_encoders_are_the_ones_export_takes(experiment, jobs_dir)

    best = _best_folds(jobs_dir / "simclr-noise")
    checkpoint = torch.load(
        jobs_dir / "simclr-noise" / f"fold-{best['CD19+ B']}" / _encoder("CD19+ B"),
        weights_only=True,
    )
    assert checkpoint["state_dict"]["0.weight"].dtype == torch.float16  # storage's default
    encoder = build_encoder(**checkpoint["kwargs"])
    encoder.load_state_dict(checkpoint["state_dict"])
    assert len(checkpoint["genes"]) == 765
    assert encoder(torch.zeros(2, 765)).shape == (2, 32)
    masking = jobs_dir / "simclr-masking-200"
    masking = torch.load(
        masking / f"fold-{_best_folds(masking)['CD34+']}" / _encoder("CD34+"), weights_only=True
    )
    assert len(masking["genes"]) == 200 and masking["preprocess"]["mean"].shape == (200,)


def _encoder(task: str) -> str:
    return f"encoder-{safe_name(task)}.pt"


def _best_folds(method_dir) -> dict[str, int]:
    """Per task, the fold with the best validation score (earliest on ties), from metrics.json."""
    best: dict[str, tuple[float, int]] = {}
    for fold in range(3):
        for row in json.loads((method_dir / f"fold-{fold}" / "metrics.json").read_text())["rows"]:
            score = row["validation_score"]
            if row["task"] not in best or score > best[row["task"]][0]:
                best[row["task"]] = (score, fold)
    return {task: fold for task, (_, fold) in best.items()}


def _kept_encoders_are_the_ones_export_takes(
    experiment, jobs_dir, methods=("simclr-noise", "supcon-noise", "simclr-masking-200")
) -> None:
    """keep_encoders="chosen": one encoder per method and task, in the fold export takes;
    tasks of a job sharing a snapshot share its file; no DONE lists a removed file; and the
    same folder checked under keep_encoders="all" runs the pruned jobs again."""
    for method in methods:
        best = _best_folds(jobs_dir / method)
        for fold in range(3):
            folder = jobs_dir / method / f"fold-{fold}"
            marker = json.loads((folder / "DONE").read_text())
            held = {p.name for p in folder.glob("encoder-*.pt")}
            assert held == {_encoder(t) for t, f in best.items() if f == fold}, (method, fold)
            assert {n for n in marker["files"] if n.startswith("encoder-")} == held
            assert {e["task"] for e in marker.get("pruned", {}).values()} == {
                t for t, f in best.items() if f != fold
            }
            rows = json.loads((folder / "metrics.json").read_text())["rows"]
            epochs = {r["epoch"]: set() for r in rows if _encoder(r["task"]) in held}
            for r in rows:
                if _encoder(r["task"]) in held:
                    saved = torch.load(folder / _encoder(r["task"]), weights_only=True)
                    assert saved["epoch"] == r["epoch"]
                    epochs[r["epoch"]].add((folder / _encoder(r["task"])).stat().st_ino)
            assert all(len(inodes) == 1 for inodes in epochs.values())
    planned = jobs.plan(experiment)
    run = RunFolder.of(experiment)
    assert {s.status for s in retention.job_states(experiment, run, planned).values()} == {"done"}
    keep_all = replace(experiment, storage=Storage(keep_encoders="all"))
    again = retention.job_states(keep_all, run, planned)
    pruned = {
        job for job in planned if json.loads((run.job(job).path / "DONE").read_text()).get("pruned")
    }
    assert pruned and {job for job, s in again.items() if s.status != "done"} == pruned


def test_rerun_skips_finished_jobs_and_same_seed_gives_identical_summary(tmp_path):
    experiment = tiny_experiment(tmp_path, methods=tiny_experiment(tmp_path).methods[:1])
    assert _run(experiment)[0] == 0
    summary_path = tmp_path / "results" / "tiny" / "summary.csv"
    first = summary_path.read_text()

    status, log = _run(experiment)
    assert status == 0 and "6 skipped, 0 to run" in log
    assert summary_path.read_text() == first

    # the fold holding CD34+'s kept encoder is redone and scores lower (as a GPU rerun may):
    # the fold whose CD34+ encoder was removed is now the one export takes, so it runs again
    method_dir = tmp_path / "results" / "tiny" / "jobs" / "pbmc68k_reduced" / "simclr-noise"
    holder = method_dir / f"fold-{_best_folds(method_dir)['CD34+']}"
    metrics = json.loads((holder / "metrics.json").read_text())
    for row in metrics["rows"]:
        row["validation_score"] -= 2 * (row["task"] == "CD34+")
    (holder / "metrics.json").write_text(json.dumps(metrics))
    marker = json.loads((holder / "DONE").read_text())  # as the redone job would have written
    marker["files"]["metrics.json"] = {
        "size": (holder / "metrics.json").stat().st_size,
        "sha256": sha256(holder / "metrics.json"),
    }
    (holder / "DONE").write_text(json.dumps(marker))
    states = retention.job_states(experiment, RunFolder.of(experiment), jobs.plan(experiment))
    now_best = _best_folds(method_dir)["CD34+"]  # its encoder was removed: to be remade
    assert [job.fold for job in retention.to_remake(states)] == [now_best]
    assert now_best != int(holder.name.removeprefix("fold-"))
    status, log = _run(experiment)
    assert status == 0 and "the encoder export needs for 'CD34+' was removed" in log, log
    assert "5 skipped, 1 to run" in log  # only that fold
    assert summary_path.read_text() == first
    _kept_encoders_are_the_ones_export_takes(experiment, method_dir.parent, ["simclr-noise"])

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
    assert "simclr-masking-200" in text and "jobs: placed by need on" in text
    assert "pbmc68k_reduced/supcon-noise: 3 CPU jobs of ~" in text
    assert "estimate: the run takes ~" in text
    assert "disk: results keep up to" in text and "keep_encoders='chosen', float16" in text
    assert not (tmp_path / "results").exists()


def test_only_an_experiment_with_a_non_rbf_classifier_marks_its_sampled_search(tmp_path):
    """Past exact_max_cells a logistic regression's grid is now searched on a sample: such an
    experiment's jobs are redone rather than mixed with an older runner's; one of RBF SVCs alone
    keeps its fingerprint."""
    from gsrcl.config.presets import LOGISTIC

    svms = tiny_experiment(tmp_path)
    job = jobs.plan(svms)[0]
    assert jobs._sampled_search_inputs(svms) == {}
    evaluation = replace(svms.evaluation, baselines=(*svms.evaluation.baselines, LOGISTIC))
    logistic = replace(svms, evaluation=evaluation)
    assert jobs._sampled_search_inputs(logistic)
    fingerprint = jobs.fingerprint(logistic, job)
    assert jobs.fingerprint(logistic, job) == fingerprint  # and stable


def test_the_disk_estimate_has_the_paper_encoders_size_and_bound():
    from gsrcl.config.presets import PAPER
    from gsrcl.config.settings import Experiment

    noise = PAPER.methods[0]  # Baron Mouse's 14 878 genes at the paper's width: 412 MB
    assert round(estimate.encoder_bytes(14878, noise, "float32") / 1e6) == 412
    paper = Experiment(name="p", datasets=(PBMC,), methods=PAPER.methods)
    baron = {"baron": estimate.Shape(cells=1886, genes=14878, tasks=13, train=1206)}
    chosen = estimate.disk(paper, baron)
    assert chosen.kept <= 6e9 < chosen.keep_all  # one encoder per method and type, float16
    everything = replace(paper, storage=Storage(keep_encoders="all", encoder_precision="float32"))
    assert estimate.disk(everything, baron).kept > 9 * chosen.kept


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
