"""An experiment from validated settings to `summary.csv`: record, split, plan, run, summarise."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

from gsrcl import dispatch, jobs, results, splits
from gsrcl.data import LABEL
from gsrcl.evaluate import estimator_for
from gsrcl.progress import Progress
from gsrcl.settings import Experiment

PACKAGES = ("torch", "scikit-learn", "scanpy", "anndata", "numpy", "pandas", "scipy")


def run_dir_of(experiment: Experiment) -> Path:
    return Path(experiment.results_dir) / experiment.name


def check_classifiers(experiment: Experiment) -> None:
    """Build every configured estimator once, so a wrong name fails before any work."""
    for spec in (experiment.evaluation.classifier, *experiment.evaluation.baselines):
        estimator_for(spec)


def prepare(experiment: Experiment, log: Callable[[str], None]) -> Path:
    """Write experiment.json and the splits of every dataset (reused when still valid)."""
    run_dir = run_dir_of(experiment)
    results.write_json(run_dir / "experiment.json", environment_record(experiment))
    for spec in experiment.datasets:
        adata = jobs.cached_dataset(spec)
        path, meta = jobs.splits_path(run_dir, spec.name), jobs.split_meta(spec, experiment, adata)
        folds = splits.load_folds(path, meta)
        if folds is None:
            labels = adata.obs[LABEL].to_numpy(dtype=str)
            folds = splits.make_folds(
                list(adata.obs_names), labels, experiment.split, experiment.seed, spec.cell_types
            )
            splits.save_folds(folds, path, meta)
        scored = len(folds.scored_tasks)
        log(
            f"{spec.name}: {adata.n_obs} cells × {adata.n_vars} genes, {scored} of "
            f"{len(folds.tasks)} cell types scored"
        )
        for task in folds.tasks:
            if not task.scored:
                log(f"  {task.name} ({task.cells} cells) not scored: {task.reason}")
    return run_dir


def environment_record(experiment: Experiment) -> dict:
    return {
        "config": asdict(experiment),
        "seed": experiment.seed,
        "versions": {
            "python": platform.python_version(),
            **{p: metadata.version(p) for p in PACKAGES},
        },
        "devices": devices(experiment),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def devices(experiment: Experiment) -> list[str]:
    """The devices jobs run on: the configured GPUs, all visible GPUs for "auto", else the CPU."""
    wanted = experiment.compute.devices
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return ["cpu"]
    if wanted == "auto":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [f"cuda:{i}" for i in wanted]


def run_experiment(
    experiment: Experiment, mode: str = "resume", log: Callable[[str], None] = print
) -> int:
    """Run the jobs `mode` selects; return the exit status (1 when a job failed).

    resume: every job not finished with the current settings; force: every job;
    failed: only jobs whose last attempt failed."""
    check_classifiers(experiment)
    run_dir = prepare(experiment, log)
    planned = jobs.plan(experiment)
    todo = [job for job in planned if _selected(job, experiment, run_dir, mode)]
    log(f"{len(planned)} jobs planned, {len(planned) - len(todo)} skipped, {len(todo)} to run")
    outcomes = run_jobs(experiment, run_dir, todo, log)
    write_manifest(run_dir, planned, outcomes)
    summary = write_summary(experiment, run_dir, planned)
    log("\n" + results.mcc_table(summary))
    log(f"\nresults in {run_dir}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        table = pd.DataFrame(failed)[["job", "device", "error"]].to_string(index=False)
        log(f"\n{len(failed)} jobs failed (tracebacks in their error.txt):\n{table}")
    return 1 if failed else 0


def _selected(job: jobs.Job, experiment: Experiment, run_dir: Path, mode: str) -> bool:
    folder = jobs.job_dir(run_dir, job)
    if mode == "force":
        return True
    if mode == "failed":
        return (folder / "error.txt").exists()
    return not results.is_done(folder, jobs.fingerprint(experiment, job))


def run_jobs(
    experiment: Experiment, run_dir: Path, todo: list[jobs.Job], log: Callable[[str], None]
) -> list[dispatch.Outcome]:
    compute = experiment.compute
    slots = dispatch.plan_slots(
        devices(experiment), compute.workers_per_device, compute.cpu_workers, compute.threads
    )
    progress = Progress(len(todo), log)
    try:
        return dispatch.Pool(slots, experiment, run_dir).run(
            todo, progress.started, progress.finished
        )
    finally:
        progress.close()


def write_manifest(
    run_dir: Path, planned: list[jobs.Job], outcomes: list[dispatch.Outcome]
) -> None:
    """One row per planned job; jobs not run now keep the row of the run that did them."""
    path = run_dir / "manifest.csv"
    rows = {}
    if path.exists():
        rows = {r["job"]: r for r in pd.read_csv(path, keep_default_na=False).to_dict("records")}
    rows.update({o.job: asdict(o) for o in outcomes})
    ordered = [rows.get(j.id, {"job": j.id, "status": "not run"}) for j in planned]
    results.write_csv(
        path, pd.DataFrame(ordered, columns=["job", "status", "device", "seconds", "error"])
    )


def write_summary(experiment: Experiment, run_dir: Path, planned: list[jobs.Job]) -> pd.DataFrame:
    order = [f"{jobs.BASELINE}-{b.name}" for b in experiment.evaluation.baselines]
    order += [m.name for m in experiment.methods]
    summary = results.summarize(run_dir, [jobs.job_dir(run_dir, j) for j in planned], order)
    results.write_csv(run_dir / "summary.csv", summary)
    return summary
