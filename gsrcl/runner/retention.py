"""Which encoders a run keeps on disk (`storage.keep_encoders`).

Export takes, for each dataset, method and cell type, the encoder of the fold whose chosen
checkpoint scored best on the validation cells (the earliest fold on ties): `best_folds` is that
one rule, for both. With "chosen", each time a contrastive job is done the runner removes from
the method's other done folds the encoders a better fold supersedes, so a dataset keeps at most
one encoder per method and cell type (tasks sharing a snapshot share its file). A removed
encoder can become the one export needs again only if the fold that superseded it is redone
with a lower score; `check` then reports its job as not done, and it runs again.
"""

from __future__ import annotations

from collections import defaultdict

from gsrcl.config.settings import BASELINE, Experiment
from gsrcl.runner.jobs import Job, fingerprint
from gsrcl.runner.run_folder import JobFolder, JobState, RunFolder


def best_folds(scores: dict[int, dict[str, float]]) -> dict[str, int]:
    """For each task, the fold (of `scores`: fold → task → validation score) whose checkpoint
    scored highest; the earliest fold on ties."""
    best: dict[str, int] = {}
    for fold in sorted(scores):
        for task, score in scores[fold].items():
            if task not in best or score > scores[best[task]][task]:
                best[task] = fold
    return best


def prune(experiment: Experiment, run: RunFolder, dataset: str, method: str) -> None:
    """Remove the encoders of `dataset`'s `method` that a better done fold supersedes."""
    if experiment.storage.keep_encoders == "all" or method == BASELINE:
        return
    folders = _done_folds(experiment, run, dataset, method)
    scores = {fold: folder.validation_scores() for fold, folder in folders.items()}
    best = best_folds(scores)
    for fold, folder in folders.items():
        superseded = [t for t in scores[fold] if best[t] != fold]
        if superseded:
            kept_in = {t: folders[best[t]].path.name for t in superseded}
            folder.remove_encoders(superseded, kept_in)


def job_states(
    experiment: Experiment,
    run: RunFolder,
    planned: list[Job],
    known: dict[Job, JobState] | None = None,
) -> dict[Job, JobState]:
    """Every planned job's one answer to "is it done?": fingerprint and files checked, and the
    encoders export needs kept. `known`: states of other jobs whose files did not change."""
    states = {job: run.job(job).state(fingerprint(experiment, job)) for job in planned}
    return check(experiment, run, {**(known or {}), **states})


def check(
    experiment: Experiment, run: RunFolder, states: dict[Job, JobState]
) -> dict[Job, JobState]:
    """`states` with done jobs whose removed encoders are needed again (or, under "all",
    whose encoders were removed at all) reported incomplete, so they run again."""
    groups: dict[tuple[str, str], dict[int, Job]] = defaultdict(dict)
    for job, state in states.items():
        if state.status == "done" and job.method != BASELINE:
            groups[job.dataset, job.method][job.fold] = job
    checked = dict(states)
    for group in groups.values():
        folders = {fold: run.job(job) for fold, job in group.items()}
        # which fold export takes is known once every fold is done (until then the folds not
        # done run anyway, and may take the lead back)
        complete = len(group) == experiment.split.folds
        scores = {fold: folder.validation_scores() for fold, folder in folders.items()}
        best = best_folds(scores) if complete else {}
        for fold, folder in folders.items():
            missing = _missing(experiment, folder.pruned_tasks(), best, fold)
            if missing is not None:
                checked[group[fold]] = missing
    return checked


def _missing(
    experiment: Experiment, pruned: list[str], best: dict[str, int], fold: int
) -> JobState | None:
    """The state of a done job whose removed encoders are wanted again, or None."""
    if pruned and experiment.storage.keep_encoders == "all":
        reason = "its encoders were removed (keep_encoders='chosen'); runs again to keep all"
        return JobState("incomplete", reason)
    needed = [task for task in pruned if best.get(task) == fold]
    if needed:
        reason = f"the encoder export needs for {needed[0]!r} was removed; runs again to remake it"
        return JobState("incomplete", reason, remake=True)
    return None


def to_remake(states: dict[Job, JobState]) -> list[Job]:
    """The jobs `check` found holding no longer an encoder export needs."""
    return [job for job, state in states.items() if state.remake]


def _done_folds(
    experiment: Experiment, run: RunFolder, dataset: str, method: str
) -> dict[int, JobFolder]:
    """The method's folds on `dataset` whose DONE marker names the current config."""
    folders = {}
    for fold in range(experiment.split.folds):
        job = Job(dataset, method, fold)
        folder = run.job(job)
        if folder.marker(fingerprint(experiment, job)) is not None:
            folders[fold] = folder
    return folders
