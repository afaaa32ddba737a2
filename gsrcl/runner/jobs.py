"""Jobs: one dataset × one fold × one method (or the baselines), their ids, seeds and bodies.

A SimCLR job trains one encoder that serves every cell-type task (each task keeps its own best
checkpoint); a SupCon job trains one encoder per task; the baseline job fits every configured
baseline classifier on the expression.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from gsrcl.config.settings import (
    BASELINE,
    Classifier,
    Contrastive,
    Dataset,
    Evaluation,
    Experiment,
    Method,
    Storage,
)
from gsrcl.data import dataset as data
from gsrcl.data import preprocess
from gsrcl.data.dataset import DatasetCache
from gsrcl.data.splits import Folds, folds_from_record
from gsrcl.evaluate.classifiers import (
    FoldClassifier,
    fitted_as,
    resolve_solver,
    uses_precomputed_kernel,
)
from gsrcl.evaluate.metrics import binary_scores
from gsrcl.evaluate.workers import Share, Workers
from gsrcl.model import train
from gsrcl.model.augment import augmentation
from gsrcl.model.checkpoints import EncoderFile
from gsrcl.model.encoder import ContrastiveModel
from gsrcl.runner.run_folder import LOSS, PREDICTIONS, VALIDATION, JobFolder, RunFolder

log = logging.getLogger(__name__)

# Bumped when the same settings give other numbers (2: cells in id order, shuffled inner CV), so
# results of an older runner are redone rather than mixed with new ones.
SCORING_VERSION = 2
# how file names derive from cell-type names (gsrcl.files.safe_name): 2 = slug + hash, one file
# per name; a job written under another naming is redone, never read with the wrong names
FILE_NAMING = 2


@dataclass(frozen=True)
class Job:
    dataset: str
    method: str  # a Method's name, or BASELINE
    fold: int

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.method}/fold-{self.fold}"


def plan(experiment: Experiment) -> list[Job]:
    """Every job of the experiment; the cheap baseline jobs of a dataset come first."""
    baselines = [BASELINE] if experiment.evaluation.baselines else []
    methods = baselines + [m.name for m in experiment.methods]
    return [
        Job(d.name, method, fold)
        for d in experiment.datasets
        for method in methods
        for fold in range(experiment.split.folds)
    ]


def job_seed(experiment: Experiment, job: Job) -> int:
    """A seed of its own for each job, derived from the experiment seed and the job id."""
    digest = hashlib.sha256(f"{experiment.seed}/{job.id}".encode()).hexdigest()
    return int(digest[:8], 16)


def fingerprint(experiment: Experiment, job: Job) -> str:
    """Everything a job's numbers depend on; a finished job is redone when it changes."""
    inputs = {
        "dataset": _dataset_inputs(_dataset(experiment, job.dataset)),
        "method": asdict(method_named(experiment, job.method))
        if job.method != BASELINE
        else BASELINE,
        "contrastive": _contrastive_inputs(experiment.contrastive),
        "split": asdict(experiment.split),
        "evaluation": asdict(experiment.evaluation),
        "seed": experiment.seed,
        "scoring_version": SCORING_VERSION,
        **_sampled_search_inputs(experiment),
        "file_naming": FILE_NAMING,
        "encoder_precision": experiment.storage.encoder_precision,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _sampled_search_inputs(experiment: Experiment) -> dict:
    """Past exact_max_cells training cells, a classifier other than an RBF SVC searches its grid
    on a sample (since 2026-12-06; before, on every cell): an experiment with one gets a key of
    its own, so a job of the older runner is redone rather than mixed with new ones. An
    experiment of RBF SVCs alone keeps its fingerprint."""
    evaluation = experiment.evaluation
    specs = (evaluation.classifier, *evaluation.baselines)
    if all(uses_precomputed_kernel(spec) for spec in specs):
        return {}
    return {"non_rbf_search": "sampled past exact_max_cells"}


def _contrastive_inputs(contrastive: Contrastive) -> dict:
    """The training settings; `max_steps` only when set (no budget is what a job made before
    the setting existed did, so its results stay valid)."""
    inputs = asdict(contrastive)
    if inputs["max_steps"] is None:
        del inputs["max_steps"]
    return inputs


def _dataset_inputs(spec: Dataset) -> dict:
    """The dataset's settings the jobs' numbers depend on: the batch column serves export only."""
    inputs = asdict(spec)
    del inputs["batch"]
    return inputs


def experiment_fingerprint(experiment: Experiment) -> str:
    """Everything the results of the whole experiment depend on: its jobs' fingerprints."""
    prints = [f"{job.id}={fingerprint(experiment, job)}" for job in plan(experiment)]
    return hashlib.sha256("\n".join(prints).encode()).hexdigest()


def _dataset(experiment: Experiment, name: str) -> Dataset:
    return next(d for d in experiment.datasets if d.name == name)


def method_named(experiment: Experiment, name: str) -> Method:
    return next(m for m in experiment.methods if m.name == name)


def split_meta(spec: Dataset, experiment: Experiment, adata: ad.AnnData) -> dict:
    """What a saved split must match to be reused."""
    labels = "\n".join(adata.obs_names) + "\n" + "\n".join(adata.obs[data.LABEL])
    return {
        "dataset": spec.name,
        "seed": experiment.seed,
        "split": asdict(experiment.split),
        "cell_types": spec.cell_types,
        "cells_and_labels": hashlib.sha256(labels.encode()).hexdigest(),
    }


# ---- the body of a job ----


@dataclass
class FoldData:
    """A dataset seen from one fold: the cells of each part and their labels."""

    adata: ad.AnnData
    values: str
    labels: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    tasks: list[str]
    sampled: bool = False  # a sample of a fold, for the estimate's timing (`calibrate.sample_of`)


def run_job(
    job: Job,
    experiment: Experiment,
    run: RunFolder,
    device: str,
    datasets: DatasetCache,
    share: Share | None = None,
) -> None:
    """Compute a job and write its files into its (already cleared) folder. `share`: the
    runner's say over the job's threads while it runs (None: they stay as they are)."""
    seed = job_seed(experiment, job)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    spec = _dataset(experiment, job.dataset)
    adata = datasets.get(spec)
    meta = split_meta(spec, experiment, adata)
    folds = folds_from_record(run.read_splits(spec.name), meta)
    if folds is None:
        raise RuntimeError(f"the splits of {spec.name} are missing or stale; rerun the runner")
    fold = fold_data(adata, spec, folds, job.fold)
    out = run.job(job)
    start = time.perf_counter()
    # the worker's CPU share (pin() set torch's threads to it) serves the classifier fits too
    with Workers(torch.get_num_threads(), share) as workers:
        if job.method == BASELINE:
            output = run_baselines(fold, experiment, device, seed, workers)
        else:
            method = method_named(experiment, job.method)
            job_print = fingerprint(experiment, job)
            output = run_contrastive(
                fold, method, experiment, device, seed, out, workers, job_print
            )
    seconds = {**output.seconds, "total": time.perf_counter() - start}
    out.write_table(PREDICTIONS, pd.DataFrame(output.predictions))
    evaluation = experiment.evaluation
    cells = len(fold.train)  # what every classifier of the job is fitted on
    specs = evaluation.baselines if job.method == BASELINE else (evaluation.classifier,)
    solvers = {spec.name: _solver(evaluation, spec, device, cells) for spec in specs}
    # a row whose classifier was approximated or searched on a sample says so ("fitted");
    # exact rows stay as they were
    approximate = {
        spec.baseline_name if job.method == BASELINE else job.method: fitted_as(
            spec, solvers[spec.name], cells, evaluation.approximation
        )
        for spec in specs
    }
    rows = [
        {**row, "dataset": job.dataset, "fold": job.fold}
        | ({"fitted": approximate[row["method"]]} if approximate.get(row["method"]) else {})
        for row in output.rows
    ]
    out.write_metrics(job.id, rows, seconds, {name: s for name, s in solvers.items() if s})


def _solver(evaluation: Evaluation, spec: Classifier, device: str, cells: int) -> str:
    """The solver of an RBF SVC fitted on `cells` training cells (as FoldClassifier picks it);
    "" for another estimator."""
    if not uses_precomputed_kernel(spec):
        return ""
    return resolve_solver(evaluation.solver, spec, device, cells, evaluation.exact_max_cells)


def approximate_fits(experiment: Experiment, folds: Folds) -> dict[str, dict]:
    """The methods of a dataset (of these folds) whose classifier is fitted approximately or
    searched on a sample (too many training cells for the exact SVM), each with how and in
    which folds."""
    evaluation = experiment.evaluation
    specs = {spec.baseline_name: spec for spec in evaluation.baselines}
    specs.update({method.name: evaluation.classifier for method in experiment.methods})
    found = {}
    for method, spec in specs.items():
        named = {}
        for k in range(experiment.split.folds):
            cells = len(folds.train(k))
            solver = _solver(evaluation, spec, "cpu", cells)
            named[k] = fitted_as(spec, solver, cells, evaluation.approximation)
        approximate = [k for k, text in named.items() if text]
        if approximate:
            found[method] = {"fitted": named[approximate[0]], "folds": approximate}
    return found


@dataclass
class JobOutput:
    """What a job's body computed: a metrics row per task, per-cell predictions of the test
    fold, and seconds by part (training, waiting on validation)."""

    rows: list[dict]
    predictions: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)


def fold_data(adata: ad.AnnData, spec: Dataset, folds: Folds, fold: int) -> FoldData:
    return FoldData(
        adata=adata,
        values=spec.values,
        labels=adata.obs[data.LABEL].to_numpy(dtype=str),
        train=folds.train(fold),
        validation=folds.validation(),
        test=folds.test(fold),
        tasks=folds.scored_tasks,
    )


def _score_rows(fold: FoldData, method: str, task: str, predicted, score, extra: dict):
    """One metrics row and the per-cell predictions of a task on the test fold."""
    positive = fold.labels[fold.test] == task
    row = {"task": task, "method": method, **binary_scores(positive, predicted, score), **extra}
    cells = fold.adata.obs_names[fold.test]
    predictions = [
        {"cell": c, "task": task, "method": method, "positive": p, "predicted": bool(q), "score": s}
        for c, p, q, s in zip(cells, positive, predicted, score, strict=True)
    ]
    return row, predictions


def run_baselines(
    fold: FoldData, experiment: Experiment, device: str, seed: int, workers: Workers
) -> JobOutput:
    rows, predictions = [], []
    evaluation = experiment.evaluation
    y_train = fold.labels[fold.train]
    solvers: dict = {}  # the SVMs on the same features share kernels and fits
    for spec in evaluation.baselines:
        workers.refresh()
        x_test, classifier = baseline_classifier(
            fold, experiment, spec, device, seed, workers, solvers
        )
        prepared = classifier.prepare(x_test)
        if spec.multiclass:  # one model; each task reads its class's column
            (model,), (choice,) = classifier.fit_and_choices([y_train], [None])
            models, choices = [model] * len(fold.tasks), [choice] * len(fold.tasks)
            positives = fold.tasks
        else:
            binary = [y_train == task for task in fold.tasks]
            models, choices = classifier.fit_and_choices(binary, [None] * len(binary))
            positives = [True] * len(fold.tasks)
        for task, model, choice, positive in zip(
            fold.tasks, models, choices, positives, strict=True
        ):
            predicted, score = classifier.task_outputs(model, prepared, positive)
            extra = {"params": choice}
            row, cells = _score_rows(fold, spec.baseline_name, task, predicted, score, extra)
            rows.append(row)
            predictions += cells
    return JobOutput(rows, predictions)


def baseline_classifier(
    fold: FoldData,
    experiment: Experiment,
    spec: Classifier,
    device: str,
    seed: int,
    workers: Workers,
    solvers: dict | None = None,
) -> tuple[np.ndarray, FoldClassifier]:
    """A baseline's features of the fold's test cells, and its classifier on its training cells
    (`solvers`: the job's RBF solvers so far, shared by features: `FoldClassifier`). Each part
    is prepared on its own: the dataset's dense matrix is never made whole."""
    evaluation = experiment.evaluation
    fitted = preprocess.fit_features(spec.features, fold.adata[fold.train], fold.values)
    classifier = FoldClassifier(
        spec,
        fitted.transform(fold.adata[fold.train]),
        inner_folds=evaluation.inner_folds,
        metric=evaluation.metric,
        device=device,
        seed=seed,
        workers=workers,
        solver=evaluation.solver,
        approximation=evaluation.approximation,
        shared=solvers,
    )
    return fitted.transform(fold.adata[fold.test]), classifier


def run_contrastive(
    fold: FoldData,
    method: Method,
    experiment: Experiment,
    device: str,
    seed: int,
    out: JobFolder,
    workers: Workers,
    fingerprint: str,
) -> JobOutput:
    """Train (once, or once per task for SupCon), score each task's chosen encoder on the test
    fold, save it."""
    fitted = method_features(fold, method)
    x = fold_tensors(fold, fitted, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    # one training for SimCLR (all tasks); one per task for SupCon (it needs the task's labels)
    groups = [fold.tasks] if method.loss == "simclr" else [[t] for t in fold.tasks]
    progress = JobProgress(out, fingerprint, generator, experiment.compute.save_progress_seconds)
    for i, tasks in enumerate(groups):
        if i < len(progress.finished):
            continue  # trained by an earlier attempt: its encoders are in the folder
        progress.begin(i)
        model, result = _train_group(
            fold, method, experiment, x, tasks, generator, seed, workers, progress
        )
        part = _group_results(fold, method, tasks, result)
        _save_encoders(out, result.best, model, fitted, fold, method, experiment.storage)
        progress.finish(part)
    parts = progress.finished
    seconds = {
        name: sum(part["seconds"].get(name, 0.0) for part in parts)
        for name in ("training", "validation_wait")
    }
    losses = [row for part in parts for row in part["losses"]]
    validation = [row for part in parts for row in part["validation"]]
    out.write_table(LOSS, pd.DataFrame(losses, columns=["task", "epoch", "loss"]))
    out.write_table(VALIDATION, pd.DataFrame(validation, columns=["epoch", "task", "score"]))
    rows = [row for part in parts for row in part["rows"]]
    return JobOutput(rows, [cell for part in parts for cell in part["predictions"]], seconds)


def _group_results(fold: FoldData, method: Method, tasks: list[str], result) -> dict:
    """One training's rows, per-cell predictions, curves and seconds, as plain data."""
    curve_task = "" if method.loss == "simclr" else tasks[0]
    part = {
        "rows": [],
        "predictions": [],
        "losses": [
            {"task": curve_task, "epoch": e + 1, "loss": v} for e, v in enumerate(result.losses)
        ],
        "validation": result.validation,
        "seconds": result.seconds,
    }
    for task in tasks:
        best = result.best[task]  # its classifier's test outputs were kept in validation
        extra = {"epoch": best.epoch, "validation_score": best.score, "params": best.params}
        row, cells = _score_rows(fold, method.name, task, *best.test, extra)
        part["rows"].append(row)
        part["predictions"] += cells
    return json.loads(json.dumps(part, default=_plain))  # numpy scalars → Python's


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


class JobProgress:
    """A contrastive job's progress, saved in its folder at every validation step: the trainings
    already finished (their results; their encoders are files) and the state of the one under
    way. A rerun after the job was killed resumes it and gives the uninterrupted job's results."""

    def __init__(
        self, folder: JobFolder, fingerprint: str, generator: torch.Generator, every: float
    ) -> None:
        self.folder, self.fingerprint, self.generator = folder, fingerprint, generator
        self.every, self.last = every, time.monotonic()
        saved = folder.load_progress(str(generator.device))
        if saved is None or saved.get("fingerprint") != fingerprint:
            if any(folder.path.iterdir()):  # another config's, or unreadable: start afresh
                folder.clear()
            saved = None
        self.saved = saved
        self.finished: list[dict] = json.loads(saved["finished"]) if saved else []
        self.group = 0
        if saved and saved.get("current") is None:  # between trainings: the next one's RNG
            torch.set_rng_state(saved["torch_rng"].cpu())
            generator.set_state(saved["generator"].cpu())

    def begin(self, group: int) -> None:
        self.group = group

    def load(self) -> dict | None:
        current = self.saved.get("current") if self.saved else None
        if current is None or current["group"] != self.group:
            return None
        log.info("resuming %s at epoch %d", self.folder.path, current["epoch"])
        return current

    def due(self) -> bool:
        """A save costs a model, its optimizer and the best checkpoints (GBs at the paper's
        width): at most one every `compute.save_progress_seconds`."""
        return time.monotonic() - self.last >= self.every

    def save(self, state: dict) -> None:
        self.folder.save_progress(self._record({**state, "group": self.group}))
        self.last = time.monotonic()

    def finish(self, part: dict) -> None:
        self.finished.append(part)
        self.saved = None
        self.folder.save_progress(
            self._record(
                None, torch_rng=torch.get_rng_state(), generator=self.generator.get_state()
            )
        )

    def _record(self, current: dict | None, **rng) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "finished": json.dumps(self.finished),
            "current": current,
            **rng,
        }


def _train_group(
    fold: FoldData,
    method: Method,
    experiment: Experiment,
    x: FoldTensors,
    tasks,
    generator,
    seed: int,
    workers: Workers,
    progress: JobProgress,
):
    """One encoder trained on the fold's training cells, its checkpoints chosen for `tasks`."""
    contrastive = experiment.contrastive
    model = contrastive_model(experiment, method, x.train, fold)
    labels = supcon_labels(method, fold, tasks[0], x.train.device)
    scorer = validation_scorer(experiment, fold, x, tasks, seed, workers)
    epochs = train.epochs_for(contrastive, method.loss, len(fold.train))
    every = train.validate_every_for(contrastive, method.loss, len(fold.train))
    contrastive = replace(contrastive, validate_every=every)
    augment = augmentation(method, generator)
    return model, train.train(
        model, x.train, augment, contrastive, epochs, scorer, generator, labels, progress
    )


@dataclass
class FoldTensors:
    """A fold's cells as a method's encoder reads them, each part on the job's device."""

    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor


def fold_tensors(fold: FoldData, fitted: preprocess.Fitted, device: str) -> FoldTensors:
    """Each part prepared on its own: the whole dataset's dense matrix is never made (at 200 000
    cells × 2000 genes it, and the parts copied out of it, were 3.2 GB of a job's 6)."""

    def part(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(fitted.transform(fold.adata[rows]), device=device)

    return FoldTensors(part(fold.train), part(fold.validation), part(fold.test))


def contrastive_model(
    experiment: Experiment, method: Method, x: torch.Tensor, fold: FoldData
) -> ContrastiveModel:
    """A new network for `method` on the device of `x` (BatchNorm when it trains in batches)."""
    contrastive = experiment.contrastive
    return ContrastiveModel(
        x.shape[1],
        method.encoder,
        method.head,
        batchnorm=len(fold.train) > contrastive.batch_size,
        init_std=contrastive.init_std,
    ).to(x.device)


def supcon_labels(method: Method, fold: FoldData, task: str, device) -> torch.Tensor | None:
    """SupCon's labels for a training on `task` (None for SimCLR)."""
    if method.loss != "supcon":
        return None
    return torch.as_tensor(fold.labels[fold.train] == task, device=device)


def validation_scorer(
    experiment: Experiment,
    fold: FoldData,
    x: FoldTensors,
    tasks: list[str],
    seed: int,
    workers: Workers,
) -> train.ValidationScorer:
    """The checkpoint scorer of `tasks` on the fold's training, validation and test cells."""
    evaluation = experiment.evaluation
    task_labels = {
        t: (fold.labels[fold.train] == t, fold.labels[fold.validation] == t) for t in tasks
    }
    return train.ValidationScorer(
        x.train,
        x.validation,
        x.test,
        task_labels,
        evaluation.classifier,
        evaluation.inner_folds,
        evaluation.metric,
        seed,
        workers,
        evaluation.solver,
        approximation=evaluation.approximation,
    )


def method_features(fold: FoldData, method: Method) -> preprocess.Fitted:
    if method.augmentation == "masking":
        return preprocess.fit_masking(fold.adata[fold.train], fold.values, method.n_genes)
    return preprocess.fit_log1p(fold.values)


def _save_encoders(
    out: JobFolder, chosen: dict, model, fitted, fold, method, storage: Storage
) -> None:
    """One encoder file per task; tasks that chose the same snapshot share one file on disk
    (hard links), so a SimCLR job writes each distinct snapshot once."""
    genes = fold.adata.var_names if fitted.genes is None else fold.adata.var_names[fitted.genes]
    written: dict[int, Path] = {}
    for task, checkpoint in chosen.items():
        if checkpoint.epoch in written:
            out.share_encoder(written[checkpoint.epoch], task)
            continue
        saved = EncoderFile.of(
            checkpoint.state, model.kwargs, list(genes), fitted, method, checkpoint.epoch
        )
        written[checkpoint.epoch] = out.save_encoder(
            task, saved.to_record(storage.encoder_precision)
        )
