"""An experiment from validated settings to `summary.csv`: record, split, plan, run, summarise."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from gsrcl.config.settings import Dataset, Experiment
from gsrcl.data import collection, download, splits
from gsrcl.data.collection import Entry
from gsrcl.data.dataset import LABEL, DatasetCache
from gsrcl.data.survey import SurveyCache
from gsrcl.errors import UserError
from gsrcl.evaluate.classifiers import estimator_for, resolve_solver
from gsrcl.reference.export import export_model
from gsrcl.report import page as report
from gsrcl.runner import dispatch, estimate, jobs, retention
from gsrcl.runner.environment import package_versions
from gsrcl.runner.progress import Progress
from gsrcl.runner.run_folder import JobState, RunFolder
from gsrcl.runner.schedule import Machine, Needs
from gsrcl.runner.summary import mcc_table, summarize


def check_executor(experiment: Experiment) -> None:
    """A Ray run without Ray installed stops before any work, saying how to install it."""
    if experiment.compute.executor == "ray":
        from gsrcl.runner.ray_pool import import_ray  # Ray is optional: imported only when chosen

        import_ray()


def check_classifiers(experiment: Experiment) -> None:
    """Build every configured estimator once, so a wrong name fails before any work."""
    for spec in (experiment.evaluation.classifier, *experiment.evaluation.baselines):
        estimator_for(spec)


def prepare(
    experiment: Experiment, run: RunFolder, datasets: DatasetCache, log: Callable[[str], None]
) -> dict[str, splits.Folds]:
    """Write experiment.json and the splits of every dataset that reads (reused when still
    valid); a dataset that does not read is reported and left out. Returns the readable ones'
    folds. experiment.json then says which methods' classifiers are approximate where."""
    record = environment_record(experiment)
    run.write_record(record)
    ready = {}
    for spec in experiment.datasets:
        try:
            folds = dataset_folds(spec, experiment, datasets, run)
        except UserError as error:
            log(f"error: {error}")
            continue
        ready[spec.name] = folds
        describe_tasks(spec.name, datasets.get(spec), folds, log)
    if not ready:
        raise UserError("no dataset could be read; fix the errors above")
    record["approximate"] = approximate_fits(experiment, ready, log)
    run.write_record(record)
    return ready


def approximate_fits(
    experiment: Experiment, ready: dict[str, splits.Folds], log: Callable[[str], None]
) -> dict[str, dict]:
    """Per dataset, the methods whose classifier is fitted approximately, and where; a line each."""
    found = {}
    for name, folds in ready.items():
        fits = jobs.approximate_fits(experiment, folds)
        for method, fit in fits.items():
            log(f"{name} / {method}: the classifier is {fit['fitted']} in folds {fit['folds']}")
        if fits:
            found[name] = fits
    return found


def dataset_folds(
    spec: Dataset, experiment: Experiment, datasets: DatasetCache, run: RunFolder | None
) -> splits.Folds:
    """The dataset's folds: the saved ones when still valid, else new ones (saved if `run`)."""
    adata = datasets.get(spec)
    meta = jobs.split_meta(spec, experiment, adata)
    folds = splits.folds_from_record(run.read_splits(spec.name), meta) if run else None
    if folds is None:
        labels = adata.obs[LABEL].to_numpy(dtype=str)
        try:
            folds = splits.make_folds(
                list(adata.obs_names), labels, experiment.split, experiment.seed, spec.cell_types
            )
        except UserError as error:
            raise UserError(f"dataset {spec.name}: {error}") from None
        if run:
            run.write_splits(spec.name, splits.folds_record(folds, meta))
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
    """`--check`: validate every dataset and print the plan and its estimate (from a short
    timing of each dataset and method here), without running or writing. A registered dataset
    not downloaded yet is planned from its recorded shape, and nothing is downloaded."""
    check_executor(experiment)
    check_classifiers(experiment)
    datasets = SurveyCache()  # a large dataset's matrix is never held whole here
    failed = 0
    folds: dict[str, splits.Folds] = {}
    unread: dict[str, Entry] = {}
    for spec in experiment.datasets:
        try:
            entry = collection.entry_of(spec)
            if entry is not None and not download.is_fetched(entry):
                unread[spec.name] = entry
                describe_registered(spec, entry, log)
                continue
            folds[spec.name] = dataset_folds(spec, experiment, datasets, None)
            describe_tasks(spec.name, datasets.get(spec), folds[spec.name], log)
            approximate_fits(experiment, {spec.name: folds[spec.name]}, log)
        except UserError as error:
            log(f"error: {error}")
            failed += 1
    for line in download.describe(list(unread.values())) if unread else []:
        log(line)
    shapes = {name: registered_shape(experiment, name, entry) for name, entry in unread.items()}
    planned = jobs.plan(experiment)
    log(f"methods: {', '.join(experiment.method_names)}")
    log(
        f"folds: {experiment.split.folds} (validation {experiment.split.validation_fraction:.0%}), "
        f"seed {experiment.seed}"
    )
    machine = estimate.this_machine(devices(experiment))
    log(_where_jobs_run(experiment, machine))
    log(f"{len(planned)} jobs planned; results in {RunFolder.of(experiment).path}")
    readable = [job for job in planned if job.dataset in folds or job.dataset in shapes]
    if readable:
        plan = estimate.plan(experiment, readable, folds, datasets, machine, log, shapes)
        for line in estimate.describe_plan(plan, machine):
            log(line)
        at_once = min(machine.cores // (experiment.compute.threads or 1) or 1, len(planned))
        log(estimate.describe_disk(estimate.disk(experiment, plan.shapes), experiment, at_once))
    return 1 if failed else 0


def describe_registered(spec: Dataset, entry: Entry, log: Callable[[str], None]) -> None:
    tasks = spec.cell_types or ()
    which = f"tasks: {', '.join(tasks)}" if tasks else "every cell type a task"
    log(
        f"{spec.name}: not downloaded yet, planned from the registry ({entry.description}): "
        f"{entry.cells} cells × {entry.genes} genes, {entry.types} cell types; {which}"
    )


def registered_shape(experiment: Experiment, name: str, entry: Entry) -> estimate.Shape:
    """A registered dataset's shape as the run will see it, from what the registry records."""
    spec = next(d for d in experiment.datasets if d.name == name)
    tasks = len(spec.cell_types) if spec.cell_types else entry.types
    return estimate.planned_shape(entry.cells, entry.genes, tasks, experiment.split)


def environment_record(experiment: Experiment) -> dict:
    """Also which solver fits the embeddings' RBF SVC on each device (a setting it cannot
    honour stops the run here, before any job)."""
    evaluation, where = experiment.evaluation, devices(experiment)
    return {
        "fingerprint": jobs.experiment_fingerprint(experiment),
        "config": asdict(experiment),
        "seed": experiment.seed,
        "versions": package_versions(),
        "devices": where,
        "solvers": {d: resolve_solver(evaluation.solver, evaluation.classifier, d) for d in where},
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


@dataclass
class RunResult:
    """What a run leaves: its exit status (0 all done, 1 something failed), the results folder,
    the summary (dataset × task × method scores), each job run now and the report page."""

    status: int
    folder: Path
    summary: pd.DataFrame
    outcomes: list[dispatch.Outcome]
    report: Path | None
    seconds: float = 0.0  # from the jobs' start to the end: jobs, summary, report, exports
    estimated_seconds: float | None = None  # the estimate of it made before the jobs ran
    jobs_seconds: float = 0.0  # the jobs' wall time


def run_experiment(
    experiment: Experiment, mode: str = "resume", log: Callable[[str], None] = print
) -> int:
    """Run the jobs `mode` selects; return the exit status (1 when a job failed)."""
    return execute_experiment(experiment, mode, log).status


def execute_experiment(
    experiment: Experiment, mode: str = "resume", log: Callable[[str], None] = print
) -> RunResult:
    """Run the jobs `mode` selects, then summarise, report and (export.after_run) export.

    resume: every job not done with the current settings; force: every job; failed: every job
    not done, refusing a folder that holds jobs of another config."""
    check_executor(experiment)
    check_classifiers(experiment)
    run = RunFolder.of(experiment)
    with run.lock(log):
        planned = jobs.plan(experiment)
        states = retention.job_states(experiment, run, planned)
        if mode == "failed":
            _refuse_stale(run, states, "--rerun-failed reruns failed jobs of the same config")
        datasets = SurveyCache()  # the jobs' workers read the datasets; the report a sample
        ready = prepare(experiment, run, datasets, log)
        planned = [job for job in planned if job.dataset in ready]
        todo = [job for job in planned if _selected(states[job], mode, job, log)]
        stale = sum(states[job].status == "stale" for job in todo)
        if stale:
            log(f"{stale} jobs were made with another config; they run again")
        log(f"{len(planned)} jobs planned, {len(planned) - len(todo)} skipped, {len(todo)} to run")
        if mode == "force":  # from scratch: no job resumes a saved training
            for job in todo:
                run.job(job).drop_progress()
        plan, outcomes, wall = _estimate_and_run(experiment, run, todo, ready, datasets, log)
        after_jobs = time.perf_counter()
        states = _keep_encoders(experiment, run, planned, todo, states)
        again = retention.to_remake(states)
        if again:
            outcomes += _remake_encoders(experiment, run, again, states, log)
            states = retention.job_states(experiment, run, again, known=states)
        write_manifest(run, planned, states, outcomes, plan.needs if plan else {})
        summary = write_summary(experiment, run, states)
        log("\n" + mcc_table(summary))
        page = write_report(experiment, run, states, datasets, log)
        exported = not experiment.export.after_run or _export(experiment, list(ready), plan, log)
        took = wall + time.perf_counter() - after_jobs
        if plan and plan.total_seconds > 0:
            log(_against_estimate(took, wall, plan))
    log(f"\nresults in {run.path}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        table = pd.DataFrame(failed)[["job", "device", "error"]].to_string(index=False)
        log(f"\n{len(failed)} jobs failed (tracebacks in their error.txt):\n{table}")
    unread = len(experiment.datasets) - len(ready)
    if unread:
        log(f"\n{unread} dataset(s) could not be read; see the errors above")
    status = 1 if failed or unread or not exported else 0
    estimated = plan.total_seconds if plan else None
    return RunResult(status, run.path, summary, outcomes, page, took, estimated, wall)


def _against_estimate(took: float, jobs: float, plan: estimate.Plan) -> str:
    """The run's last line on its time: what the estimate covered, against it."""
    return (
        f"\nthe run took {estimate.describe_time(took)} from its jobs' start (the jobs "
        f"{estimate.describe_time(jobs)} against ~{estimate.describe_time(plan.seconds)}, then "
        f"summary, report and export); estimated {estimate.describe_time(plan.total_seconds)} "
        f"({took / plan.total_seconds - 1:+.0%})"
    )


def _estimate_and_run(
    experiment: Experiment,
    run: RunFolder,
    todo: list[jobs.Job],
    folds: dict[str, splits.Folds],
    datasets: DatasetCache,
    log: Callable[[str], None],
) -> tuple[estimate.Plan | None, list[dispatch.Outcome], float]:
    """The estimate of `todo` on this machine (said before they start), their outcomes and
    their wall time."""
    if not todo:
        return None, [], 0.0
    machine = estimate.this_machine(devices(experiment))
    plan = estimate.plan(experiment, todo, folds, datasets, machine, log)
    log(f"estimate: {plan.describe_seconds()} on this machine")
    for warning in plan.warnings:
        log(f"warning: {warning}")
    start = time.perf_counter()
    outcomes = run_jobs(experiment, run, todo, plan.needs, machine, log)
    return plan, outcomes, time.perf_counter() - start


def _keep_encoders(
    experiment: Experiment,
    run: RunFolder,
    planned: list[jobs.Job],
    todo: list[jobs.Job],
    states: dict[jobs.Job, JobState],
) -> dict[jobs.Job, JobState]:
    """Prune every method's superseded encoders (also of jobs done before this run); the states
    after it (the other jobs' files did not change; which encoders they must hold may have)."""
    for dataset, method in {(job.dataset, job.method) for job in planned}:
        retention.prune(experiment, run, dataset, method)
    return retention.job_states(experiment, run, todo, known=states)


def _remake_encoders(
    experiment: Experiment,
    run: RunFolder,
    again: list[jobs.Job],
    states: dict[jobs.Job, JobState],
    log: Callable[[str], None],
) -> list[dispatch.Outcome]:
    """Jobs whose removed encoder became the one export needs (the fold that superseded it was
    redone and scored lower) run again now, so the run ends with every encoder export takes."""
    for job in again:
        log(f"{job.id}: {states[job].reason}")
    machine = estimate.this_machine(devices(experiment))
    needs = {job: Needs(gpu=bool(machine.gpus), seconds=0.0, host_bytes=0) for job in again}
    outcomes = run_jobs(experiment, run, again, needs, machine, log)
    for dataset, method in {(job.dataset, job.method) for job in again}:
        retention.prune(experiment, run, dataset, method)
    return outcomes


def _refuse_stale(run: RunFolder, states: dict[jobs.Job, JobState], what: str) -> None:
    stale = [job.id for job, state in states.items() if state.status == "stale"]
    if stale:
        raise UserError(
            f"{run.path} holds {len(stale)} jobs made with another config (e.g. {stale[0]}); "
            f"{what}: run `python3 runner.py` with this config to redo them, or go back to the "
            "config they were made with (experiment.json)"
        )


def _export(experiment: Experiment, datasets: list[str], plan: estimate.Plan | None, log) -> bool:
    """`export_models`, and how long it took against its estimate."""
    start = time.perf_counter()
    made = export_models(experiment, datasets, log)
    took = time.perf_counter() - start
    if plan and plan.export_seconds > 0:
        log(
            f"the export took {estimate.describe_time(took)}; estimated "
            f"{estimate.describe_time(plan.export_seconds)} ({took / plan.export_seconds - 1:+.0%})"
        )
    return made


def export_models(experiment: Experiment, datasets: list[str], log: Callable[[str], None]) -> bool:
    """`export.after_run`: a reference model per dataset; False when one could not be made."""
    made, settings = True, experiment.export
    out = Path(settings.out) if settings.out else None
    for name in datasets:
        try:
            export_model(
                experiment, name, out=out, log=log, keep_candidates=settings.keep_candidates
            )
        except UserError as error:
            log(f"error: export of {name}: {error}")
            made = False
    return made


def _selected(state: JobState, mode: str, job: jobs.Job, log: Callable[[str], None]) -> bool:
    if state.status in ("corrupt", "incomplete") and mode != "force":
        log(f"warning: {job.id} is {state.status} ({state.reason}); running it again")
    return mode == "force" or state.status != "done"


def _where_jobs_run(experiment: Experiment, machine: estimate.Machine) -> str:
    compute = experiment.compute
    if compute.executor == "ray":
        address = compute.ray_address or "a local Ray started by the runner"
        return f"executor: ray at {address}, one GPU or {compute.ray_cpus_per_job} CPUs per job"
    threads = f"{compute.threads} threads a job" if compute.threads else "cores shared out"
    gpus = f", GPU jobs on {', '.join(machine.gpus)}" if machine.gpus else ""
    return f"jobs: placed by need on {machine.cores} cores{gpus} ({threads})"


def run_jobs(
    experiment: Experiment,
    run: RunFolder,
    todo: list[jobs.Job],
    needs: dict[jobs.Job, Needs],
    machine: Machine,
    log: Callable[[str], None],
) -> list[dispatch.Outcome]:
    if not todo:
        return []
    if experiment.compute.executor == "ray":
        from gsrcl.runner.ray_pool import RayPool  # Ray is optional: imported only when chosen

        pool = RayPool(experiment, run, machine, gpus=experiment.compute.devices != "cpu")
    else:
        pool = dispatch.Pool(machine, experiment, run)
    progress = Progress(len(todo), log)
    by_id = {job.id: job for job in todo}
    unfinished = set(todo)  # a rerun's old marker stays until its worker clears the folder

    def finished(outcome: dispatch.Outcome) -> None:
        progress.finished(outcome)
        job = by_id[outcome.job]
        unfinished.discard(job)
        if outcome.status == "done":  # disk stays bounded during the run, not only after it
            retention.prune(experiment, run, job.dataset, job.method, running=unfinished)

    try:
        return pool.run(todo, needs, progress.started, finished, progress.step)
    finally:
        progress.close()


def write_report(
    experiment: Experiment,
    run: RunFolder,
    states: dict[jobs.Job, JobState],
    datasets: DatasetCache,
    log: Callable[[str], None],
) -> Path | None:
    """report.html, summary.md and figures; a report that fails never costs the results."""
    try:
        page = report.build(experiment, run, _done(states), datasets)
    except Exception as error:
        log(
            f"warning: the report could not be built ({type(error).__name__}: {error}); "
            "the results are complete; rebuild it with --report-only"
        )
        return None
    log(f"report: {page}")
    return page


def report_only(experiment: Experiment, log: Callable[[str], None] = print) -> int:
    """`--report-only`: rebuild manifest, summary and report from an existing results folder;
    a folder that holds results of another config is refused, never mixed in."""
    run = RunFolder.of(experiment)
    if not run.exists():
        raise UserError(f"no results in {run.path}; run the experiment first")
    with run.lock(log):
        planned = jobs.plan(experiment)
        states = retention.job_states(experiment, run, planned)
        _refuse_stale(run, states, "--report-only reports the current config's results")
        for job, state in states.items():
            if state.status == "corrupt":
                log(f"warning: {job.id} is corrupt ({state.reason}); left out; rerun to redo it")
        write_manifest(run, planned, states, [])
        write_summary(experiment, run, states)
        log(f"report: {report.build(experiment, run, _done(states), SurveyCache())}")
    return 0


def _done(states: dict[jobs.Job, JobState]) -> set[jobs.Job]:
    return {job for job, state in states.items() if state.status == "done"}


def write_manifest(
    run: RunFolder,
    planned: list[jobs.Job],
    states: dict[jobs.Job, JobState],
    outcomes: list[dispatch.Outcome],
    needs: dict[jobs.Job, Needs] | None = None,
) -> None:
    """One row per planned job, from the job's own folder: a job done by an earlier invocation
    keeps the device and seconds of the invocation that ran it; a job run now has its estimate
    beside them."""
    now, needs = {o.job: o for o in outcomes}, needs or {}
    rows = []
    for job in planned:
        state, outcome = states[job], now.get(job.id)
        status = "not run" if state.status == "missing" else state.status
        if state.status == "done":
            device, seconds = state.device, state.seconds
        else:
            device, seconds = (outcome.device, outcome.seconds) if outcome else ("", None)
        estimated = round(needs[job].seconds, 1) if job in needs else None
        rows.append([job.id, status, device, seconds, estimated, state.reason])
    columns = ["job", "status", "device", "seconds", "estimated_seconds", "error"]
    run.write_manifest(pd.DataFrame(rows, columns=columns))


def write_summary(
    experiment: Experiment, run: RunFolder, states: dict[jobs.Job, JobState]
) -> pd.DataFrame:
    datasets = [d.name for d in experiment.datasets]
    done = [run.job(job) for job in states if states[job].status == "done"]
    summary = summarize(run, datasets, done, experiment.method_names)
    run.write_summary(summary)
    return summary
