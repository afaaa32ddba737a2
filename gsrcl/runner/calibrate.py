"""Timing a job's parts briefly on this machine, for the estimate of a run (`estimate`).

Per dataset and method: two training epochs (on the first fold's training cells, with the
method's network, augmentation and loss) and one validation step (every task's grid search on
the untrained encoder's embeddings); for the baselines, each one's grid search on the task of
median size (a multi-class baseline's on all), as many times as a job fits it. A timing that
fails (a broken estimator, say) is reported and left out: the job itself will say what is wrong.
The same code the jobs run, on the device they run on, with the threads a job will have.

A registered dataset that is not downloaded yet is timed on a stand-in: made-up counts of a
thousand cells in five types, over 2000 genes more than the widest masking method selects;
`estimate` carries those timings to the dataset's recorded shape.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace

import anndata as ad
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import ParameterGrid

from gsrcl.config.settings import BASELINE, Dataset, Experiment, Method
from gsrcl.data import splits
from gsrcl.data.dataset import LABEL
from gsrcl.evaluate.classifiers import estimator_for
from gsrcl.evaluate.workers import Workers
from gsrcl.model import train
from gsrcl.model.augment import augmentation
from gsrcl.runner import devices, jobs

CALIBRATION_EPOCHS = 2
STAND_IN_CELLS = 1000
STAND_IN_TYPES = 5
STAND_IN_GENES = 2000  # beside the most a masking method selects
# A larger dataset is timed on this many of its first fold's training cells (its other parts in
# proportion) and `TIMING_TASKS` of its cell types, with each multi-class baseline fitted once
# (not its whole grid search), and the timing carried to its size by `estimate.scaled`: the
# estimate then costs seconds and a bounded memory whatever the size (a kernel SVM on 40 000
# training cells holds 13 GB of kernel), at the price of the cost model's exponents.
TIMING_CELLS = 1000
TIMING_TASKS = 3


@dataclass(frozen=True)
class Timing:
    """Seconds measured here: a training epoch and a validation step of a contrastive method
    (`embed`: the step's embedding of the cells, the rest is scoring), or a whole job of the
    baselines (`job`, its features included); and what a contrastive job pays whatever its
    length (`setup`: its features, network and scorer made ready)."""

    epoch: float = 0.0
    step: float = 0.0
    job: float = 0.0
    linear: float = 0.0  # of `job`, the multi-class models: they grow with the cells, not squared
    embed: float = 0.0
    setup: float = 0.0
    cpu_share: float = 1.0  # of its threads' time the timing was on a core (others' load)

    def longer(self, factor: float) -> Timing:
        """The durations `factor` times longer (a busy machine: `estimate.busy_factor`)."""
        return replace(
            self,
            epoch=self.epoch * factor,
            step=self.step * factor,
            job=self.job * factor,
            linear=self.linear * factor,
            embed=self.embed * factor,
            setup=self.setup * factor,
        )


def calibrate(
    experiment: Experiment,
    fold: jobs.FoldData,
    method: str,
    device: str,
    threads: int,
    scoring: float | None = None,
) -> Timing:
    """`method` timed on `fold` (a dataset's first fold, a sample of it, or the stand-in's).
    `scoring`: the seconds of a contrastive validation step's scoring, when another method
    has already timed it on this fold (then taken, not timed again)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    logging.disable(logging.INFO)  # the short training's epochs and steps are not the run's
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with Workers(threads) as workers:
            if method == BASELINE:
                timing = _baselines(experiment, fold, device, workers)
            else:
                named = jobs.method_named(experiment, method)
                timing = _contrastive(experiment, fold, named, device, workers, scoring)
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(previous)
        devices.release(device)  # the runner's process keeps only its context on the GPU
    on_core = (time.process_time() - cpu) / max((time.perf_counter() - wall) * threads, 1e-9)
    return replace(timing, cpu_share=min(1.0, on_core))


def _baselines(
    experiment: Experiment, fold: jobs.FoldData, device: str, workers: Workers
) -> Timing:
    """Each one-vs-rest baseline's grid search on the task of median size, times the tasks a
    job fits it for; each multi-class one's search on all (on a sample: one fit of the grid's
    middle setting on an inner split's cells, times the fits the search makes). Predictions are
    left out (a small share of a job)."""
    kernel = linear = 0.0
    y_train = fold.labels[fold.train]
    by_size = _by_size(fold)
    typical = by_size[len(by_size) // 2]  # large types cost libsvm more, rare ones less
    solvers: dict = {}  # shared as a job shares them
    for spec in experiment.evaluation.baselines:
        start = time.perf_counter()
        _, classifier = jobs.baseline_classifier(
            fold, experiment, spec, device, experiment.seed, workers, solvers
        )
        if not spec.multiclass:
            classifier.fit_many([y_train == typical], [None])
            kernel += (time.perf_counter() - start) * len(fold.tasks)
        elif fold.sampled:
            linear += _one_fit(classifier, y_train) + time.perf_counter() - start
        else:
            classifier.fit(y_train)
            linear += time.perf_counter() - start
    return Timing(job=kernel + linear, linear=linear)


def _one_fit(classifier, y: np.ndarray) -> float:
    """Seconds of a multi-class grid search, from one fit of its middle setting on the cells
    of one inner split: times the search's fits (each setting on each split, and the refit)."""
    grid = list(ParameterGrid(classifier.spec.grid))
    splits = classifier.inner_splits(y)
    train, _ = splits[0]
    estimator = estimator_for(classifier.spec).set_params(**grid[len(grid) // 2])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(classifier.x_train[train], y[train])
    return (time.perf_counter() - start) * (len(grid) * len(splits) + 1)


def _contrastive(
    experiment: Experiment,
    fold: jobs.FoldData,
    method: Method,
    device: str,
    workers: Workers,
    scoring: float | None,
) -> Timing:
    start = time.perf_counter()  # a job's setup: features, network and scorer made ready
    x = jobs.fold_tensors(fold, jobs.method_features(fold, method), device)
    seed = experiment.seed
    generator = torch.Generator(device=device).manual_seed(seed)
    model = jobs.contrastive_model(experiment, method, x.train, fold)
    scorer = jobs.validation_scorer(experiment, fold, x, fold.tasks, seed, workers)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    embedded = scorer.embed(model.encoder)
    embed = time.perf_counter() - start
    if scoring is None:
        scorer.score(*embedded)
        scoring = time.perf_counter() - start - embed
    step = embed + scoring
    labels = jobs.supcon_labels(method, fold, fold.tasks[0], x.train.device)
    settings = replace(
        experiment.contrastive, overlap_validation="off", validate_every=CALIBRATION_EPOCHS
    )
    no_tasks = jobs.validation_scorer(experiment, fold, x, [], seed, workers)
    augment = augmentation(method, generator)
    result = train.train(
        model, x.train, augment, settings, CALIBRATION_EPOCHS, no_tasks, generator, labels
    )
    epoch = result.seconds["training"] / CALIBRATION_EPOCHS
    return Timing(epoch=epoch, step=step, embed=embed, setup=setup)


def sample_of(fold: jobs.FoldData, cells: int, tasks: int, seed: int) -> jobs.FoldData:
    """`fold` cut to about `cells` training cells, each part and each cell type in proportion
    (a type keeps at least 3 cells of a part where it has them), scoring `tasks` of its tasks
    (spread over their sizes); `fold` itself when it has no more training cells."""
    share = cells / len(fold.train)
    if share >= 1:
        return fold
    rng = np.random.default_rng(seed)
    train, validation, test = (
        splits.stratified_sample(rows, fold.labels, share, rng)
        for rows in (fold.train, fold.validation, fold.test)
    )
    rows = np.concatenate([train, validation, test])
    position = {row: i for i, row in enumerate(rows)}  # old row → row of the sample
    renumber = np.vectorize(position.__getitem__, otypes=[int])
    by_size = _by_size(fold)
    spread = sorted({round(i * (len(by_size) - 1) / max(1, tasks - 1)) for i in range(tasks)})
    return replace(
        fold,
        adata=fold.adata[rows].copy(),
        labels=fold.labels[rows],
        train=renumber(train),
        validation=renumber(validation),
        test=renumber(test),
        tasks=[by_size[i] for i in spread] if len(by_size) > tasks else fold.tasks,
        sampled=True,
    )


def _by_size(fold: jobs.FoldData) -> list[str]:
    """The fold's tasks from the fewest training cells to the most."""
    y_train = fold.labels[fold.train]
    return sorted(fold.tasks, key=lambda task: (y_train == task).sum())


def stand_in(experiment: Experiment) -> jobs.FoldData:
    """The first fold of made-up counts: each type with its own mean profile (so classifiers
    fit as on real types), zero-heavy as scRNA-seq counts are."""
    genes = STAND_IN_GENES + max([0, *(m.n_genes for m in experiment.methods if m.n_genes)])
    rng = np.random.default_rng(experiment.seed)
    kind = np.arange(STAND_IN_CELLS) % STAND_IN_TYPES
    means = rng.gamma(0.3, 2.0, size=(STAND_IN_TYPES, genes))
    labels = np.array([f"type {k}" for k in kind])
    cells = [f"cell{i:05d}" for i in range(STAND_IN_CELLS)]
    adata = ad.AnnData(
        X=rng.poisson(means[kind]).astype(np.float32),
        obs=pd.DataFrame({LABEL: labels}, index=cells),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(genes)]),
    )
    folds = splits.make_folds(cells, labels, experiment.split, experiment.seed, None)
    return jobs.fold_data(adata, Dataset(name="stand-in", path="stand-in"), folds, 0)
