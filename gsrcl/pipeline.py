"""An experiment from validated settings to `summary.csv`: record, split, plan, run, summarise."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from gsrcl import dispatch, jobs, report, results, splits
from gsrcl.data import LABEL
from gsrcl.environment import package_versions
from gsrcl.errors import UserError
from gsrcl.evaluate import estimator_for
from gsrcl.export import export_model
from gsrcl.progress import Progress
from gsrcl.settings import Dataset, Experiment


def check_executor(experiment: Experiment) -> None:
    """A Ray run without Ray installed stops before any work, saying how to install it."""
    if experiment.compute.executor == "ray":
        from gsrcl.ray_pool import import_ray  # Ray is optional: imported only when chosen

        import_ray()


def check_classifiers(experiment: Experiment) -> None:
    """Build every configured estimator once, so a wrong name fails before any work."""
    for spec in (experiment.evaluation.classifier, *experiment.evaluation.baselines):
        estimator_for(spec)


def prepare(experiment: Experiment, log: Callable[[str], None]) -> tuple[Path, list[str]]:
    """Write experiment.json and the splits of every dataset that reads (reused when still
    valid); a dataset that does not read is reported and left out. Returns the readable ones."""
    run_dir = jobs.run_dir_of(experiment)
    results.write_json(run_dir / "experiment.json", environment_record(experiment))
    ready = []
    for spec in experiment.datasets:
        try:
            folds = dataset_folds(spec, experiment, run_dir)
        except UserError as error:
            log(f"error: {error}")
            continue
        ready.append(spec.name)
        describe_tasks(spec.name, jobs.cached_dataset(spec), folds, log)
    if not ready:
        raise UserError("no dataset could be read; fix the errors above")
    return run_dir, ready


def dataset_folds(spec: Dataset, experiment: Experiment, run_dir: Path | None) -> splits.Folds:
    """The dataset's folds: the saved ones when still valid, else new ones (saved if run_dir)."""
    adata = jobs.cached_dataset(spec)
    meta = jobs.split_meta(spec, experiment, adata)
    path = jobs.splits_path(run_dir, spec.name) if run_dir else None
    folds = splits.load_folds(path, meta) if path else None
    if folds is None:
        labels = adata.obs[LABEL].to_numpy(dtype=str)
        try:
            folds = splits.make_folds(
                list(adata.obs_names), labels, experiment.split, experiment.seed, spec.cell_types
            )
        except UserError as error:
            raise UserError(f"dataset {spec.name}: {error}") from None
        if path:
            splits.save_folds(folds, path, meta)
    return folds


def describe_tasks(name: str, adata, folds: splits.Folds, log: Callable[[str], None]) -> None:
    log(
        f"{name}: {adata.n_obs} cells × {adata.n_vars} genes, {len(folds.scored_tasks)} of "
        f"{len(folds.tasks)} cell types scored"
    )
    for task in folds.tasks:
        state = "scored" if task.scored else f"not scored: {task.reason}"
        log(f"  {task.name}: {task.cells} cells, {state}")


def check(experiment: Experiment, log: Callable[[str], None] = print) -> int:
    """`--check`: validate every dataset and print the plan, without training or writing."""
    check_executor(experiment)
    check_classifiers(experiment)
    failed = 0
    for spec in experiment.datasets:
        try:
            describe_tasks(
                spec.name, jobs.cached_dataset(spec), dataset_folds(spec, experiment, None), log
            )
        except UserError as error:
            log(f"error: {error}")
            failed += 1
    planned = jobs.plan(experiment)
    log(f"methods: {', '.join(jobs.method_names(experiment))}")
    log(
        f"folds: {experiment.split.folds} (validation {experiment.split.validation_fraction:.0%}), "
        f"seed {experiment.seed}"
    )
    log(_where_jobs_run(experiment))
    log(f"{len(planned)} jobs planned; results in {jobs.run_dir_of(experiment)}")
    return 1 if failed else 0


def environment_record(experiment: Experiment) -> dict:
    return {
        "config": asdict(experiment),
        "seed": experiment.seed,
        "versions": package_versions(),
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
    check_executor(experiment)
    check_classifiers(experiment)
    run_dir, ready = prepare(experiment, log)
    planned = [job for job in jobs.plan(experiment) if job.dataset in ready]
    todo = [job for job in planned if _selected(job, experiment, run_dir, mode)]
    log(f"{len(planned)} jobs planned, {len(planned) - len(todo)} skipped, {len(todo)} to run")
    outcomes = run_jobs(experiment, run_dir, todo, log)
    write_manifest(run_dir, planned, outcomes)
    summary = write_summary(experiment, run_dir, planned)
    log("\n" + results.mcc_table(summary))
    write_report(experiment, run_dir, log)
    exported = export_models(experiment, ready, log) if experiment.export.after_run else True
    log(f"\nresults in {run_dir}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        table = pd.DataFrame(failed)[["job", "device", "error"]].to_string(index=False)
        log(f"\n{len(failed)} jobs failed (tracebacks in their error.txt):\n{table}")
    unread = len(experiment.datasets) - len(ready)
    if unread:
        log(f"\n{unread} dataset(s) could not be read; see the errors above")
    return 1 if failed or unread or not exported else 0


def export_models(experiment: Experiment, datasets: list[str], log: Callable[[str], None]) -> bool:
    """`export.after_run`: a reference model per dataset; False when one could not be made."""
    made = True
    for name in datasets:
        try:
            export_model(experiment, name, log=log)
        except UserError as error:
            log(f"error: export of {name}: {error}")
            made = False
    return made


def _selected(job: jobs.Job, experiment: Experiment, run_dir: Path, mode: str) -> bool:
    folder = jobs.job_dir(run_dir, job)
    if mode == "force":
        return True
    if mode == "failed":
        return (folder / "error.txt").exists()
    return not results.is_done(folder, jobs.fingerprint(experiment, job))


def worker_slots(experiment: Experiment) -> list[dispatch.Slot]:
    compute = experiment.compute
    return dispatch.plan_slots(
        devices(experiment), compute.workers_per_device, compute.cpu_workers, compute.threads
    )


def _where_jobs_run(experiment: Experiment) -> str:
    compute = experiment.compute
    if compute.executor == "ray":
        address = compute.ray_address or "a local Ray started by the runner"
        return f"executor: ray at {address}, one GPU or {compute.ray_cpus_per_job} CPUs per job"
    slots = worker_slots(experiment)
    return (
        f"workers: {len(slots)} on {', '.join(sorted({s.device for s in slots}))}, "
        f"{slots[0].threads} threads each"
    )


def run_jobs(
    experiment: Experiment, run_dir: Path, todo: list[jobs.Job], log: Callable[[str], None]
) -> list[dispatch.Outcome]:
    if not todo:
        return []
    if experiment.compute.executor == "ray":
        from gsrcl.ray_pool import RayPool  # Ray is optional: imported only when chosen

        pool = RayPool(experiment, run_dir, gpus=experiment.compute.devices != "cpu")
    else:
        pool = dispatch.Pool(worker_slots(experiment), experiment, run_dir)
    progress = Progress(len(todo), log)
    try:
        return pool.run(todo, progress.started, progress.finished)
    finally:
        progress.close()


def write_report(experiment: Experiment, run_dir: Path, log: Callable[[str], None]) -> None:
    """report.html, summary.md and figures; a report that fails never costs the results."""
    try:
        log(f"report: {report.build(experiment, run_dir)}")
    except Exception as error:
        log(
            f"warning: the report could not be built ({type(error).__name__}: {error}); "
            "the results are complete; rebuild it with --report-only"
        )


def report_only(experiment: Experiment, log: Callable[[str], None] = print) -> int:
    """`--report-only`: rebuild summary and report from an existing results folder."""
    run_dir = jobs.run_dir_of(experiment)
    if not (run_dir / "experiment.json").exists():
        raise UserError(f"no results in {run_dir}; run the experiment first")
    write_summary(experiment, run_dir, jobs.plan(experiment))
    log(f"report: {report.build(experiment, run_dir)}")
    return 0


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
    job_dirs = [jobs.job_dir(run_dir, j) for j in planned]
    summary = results.summarize(run_dir, job_dirs, jobs.method_names(experiment))
    results.write_csv(run_dir / "summary.csv", summary)
    return summary
