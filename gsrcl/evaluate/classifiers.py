"""Classifiers on features (embeddings or expression): inner-CV grid search and predictions.

An RBF `SVC` is searched on precomputed kernels, which gives the same model as `GridSearchCV` in
a fraction of the time, by one of two solvers (`evaluation.solver`): libsvm on the CPU
(`gsrcl.evaluate.kernel_svm`) or libsvm's algorithm batched on a torch device
(`gsrcl.evaluate.device_svm`; "auto" picks it on a GPU). Past `evaluation.exact_max_cells`
training cells, whose kernels would not fit its memory budget, the same grid is searched on a
Nystroem approximation instead (`gsrcl.evaluate.nystroem_svm`, on any device). Every other
estimator goes through `GridSearchCV`.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
from scipy import sparse
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import get_scorer
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold
from sklearn.pipeline import Pipeline

from gsrcl.config.settings import (
    APPROXIMATE_SOLVER,
    EXACT,
    Approximation,
    Classifier,
    approximates,
    past_exact,
)
from gsrcl.data.splits import sampled_splits, sampled_training, within_sample
from gsrcl.errors import UserError
from gsrcl.evaluate.device_svm import DeviceRBF, unsupported_params
from gsrcl.evaluate.kernel_svm import (
    KernelSVM,
    PrecomputedRBF,
    RBFSolver,
    Search,
    Splits,
    best_candidates,
    held_out_decisions,
    svc_on_kernel,
)
from gsrcl.evaluate.metrics import SKLEARN_SCORERS, binary_scores
from gsrcl.evaluate.nystroem_svm import (
    NystroemRBF,
    NystroemSVM,
    describe,
    search_cells,
    svc_params,
)
from gsrcl.evaluate.workers import SERIAL, Workers


def estimator_for(spec: Classifier) -> Any:
    """Import and build the configured estimator; a wrong path or parameter is a UserError."""
    module_name, _, class_name = spec.estimator.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        estimator = cls(**spec.params)
    except (ImportError, AttributeError) as error:
        raise UserError(
            f"classifier {spec.name}: cannot import {spec.estimator} ({error})"
        ) from None
    except (TypeError, ValueError) as error:
        raise UserError(
            f"classifier {spec.name}: bad params for {spec.estimator}: {error}"
        ) from None
    unknown = sorted(set(spec.grid) - set(estimator.get_params()))
    if unknown:
        raise UserError(f"classifier {spec.name}: {spec.estimator} has no parameters {unknown}")
    return estimator


def uses_precomputed_kernel(spec: Classifier) -> bool:
    return (
        spec.estimator == "sklearn.svm.SVC"
        and spec.params.get("kernel", "rbf") == "rbf"
        and "kernel" not in spec.grid
    )


def resolve_solver(
    solver: str,
    spec: Classifier,
    device: str,
    cells: int | None = None,
    exact_max_cells: int | None = None,
) -> str:
    """Which solver fits an RBF SVC on `cells` training cells: "nystroem" (the approximation)
    when asked or past `exact_max_cells` (None: never), else "device" (on the job's device;
    "auto" on a GPU) or "libsvm". Multi-class models and SVC settings the device solver cannot
    honour stay on libsvm under "auto", and are refused under "device"."""
    odd = unsupported_params(spec.params)
    if solver == "device" and (odd or spec.multiclass):
        what = f"parameters {odd}" if odd else "multi-class models"
        raise UserError(
            f"classifier {spec.name}: evaluation.solver='device' does not support {what}; "
            "set evaluation.solver='libsvm' or 'auto'"
        )
    if approximates(solver, cells, exact_max_cells):
        return APPROXIMATE_SOLVER
    on_gpu = str(device).startswith("cuda")
    if solver == "device" or (solver == "auto" and on_gpu and not odd and not spec.multiclass):
        return "device"
    return "libsvm"


SPARSE_DENSITY = 0.3  # log-normalised counts are 5-15 % non-zero; scaled genes are dense


def fitted_as(spec: Classifier, solver: str, cells: int, approximation: Approximation) -> str:
    """How results name a classifier's fit on `cells` training cells: an RBF SVC's
    approximation by `solver` with its m (and its search's sample), another estimator's grid
    searched on a sample, or "" for the exact fit searched on every cell."""
    if solver == APPROXIMATE_SOLVER:
        return describe(cells, approximation)
    searched = grid_search_cells(spec, cells, approximation)
    return f"grid searched on {searched} of {cells} cells" if searched < cells else ""


def grid_search_cells(spec: Classifier, cells: int, approximation: Approximation) -> int:
    """The cells of `cells` training cells that the grid's inner CV of an estimator other than
    an RBF SVC runs on: every one up to `exact_max_cells`, past it `search_max_cells` (as the
    approximate SVM's search), the choice refit on every cell. An exact SVM searches on all."""
    if uses_precomputed_kernel(spec) or not past_exact(cells, approximation.exact_max_cells):
        return cells
    return search_cells(cells, approximation)


def sparse_if_worth_it(estimator: Any, x: np.ndarray) -> Any:
    """`x` as CSR for an estimator that takes sparse input when most of it is zeros: a
    logistic regression on 16 000 log-normalised genes fits 1.8× faster (Baron human, lbfgs;
    the same labels, probabilities within 2e-5)."""
    if not estimator.__sklearn_tags__().input_tags.sparse or sparse.issparse(x):
        return x
    return sparse.csr_matrix(x) if np.count_nonzero(x) < SPARSE_DENSITY * x.size else x


@dataclass
class Prepared:
    """Cells ready for prediction: distances to the training cells, or the features themselves."""

    features: np.ndarray


def inner_splits(y: np.ndarray, inner_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified inner folds of a seeded shuffle: cells stored grouped by subtype (sorted
    files are common) must not put a whole subtype in one inner fold and skew the search.
    They depend only on the labels, so a job builds them once, not once per checkpoint."""
    smallest = np.unique(y, return_counts=True)[1].min()
    n_splits = max(2, min(inner_folds, smallest))
    kfold = StratifiedKFold(n_splits, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():  # multi-class baselines may hold a class smaller than k
        warnings.simplefilter("ignore")
        return list(kfold.split(np.zeros(len(y)), y))


class FoldClassifier:
    """The configured classifier on one set of training features, fitted once per label vector;
    independent libsvm or liblinear fits run on `workers`' threads, device fits in one batch.
    An RBF SVC is approximated as `approximation` says (by default never, unless `solver` is
    "nystroem")."""

    def __init__(
        self,
        spec: Classifier,
        x_train: np.ndarray,
        *,
        inner_folds: int,
        metric: str,
        device: str = "cpu",
        seed: int = 0,
        workers: Workers = SERIAL,
        solver: str = "auto",
        approximation: Approximation = EXACT,
        shared: dict[tuple[str, str], RBFSolver] | None = None,
    ) -> None:
        """`shared`: RBF solvers by (features, solver) of other classifiers on the same
        training cells; an RBF SVC takes its solver from there (its kernels and fits), or puts
        the one it makes there."""
        self.spec, self.inner_folds, self.metric, self.seed = spec, inner_folds, metric, seed
        self.workers = workers
        self.rbf_solver: RBFSolver | None = None  # who fits an RBF SVC on this fold's kernel
        self.solver = ""  # its name ("" for any other estimator)
        cells = x_train.shape[0]
        if not uses_precomputed_kernel(spec):
            self.x_train = sparse_if_worth_it(estimator_for(spec), x_train)
            self.search_cells = grid_search_cells(spec, cells, approximation)
            return
        self.solver = resolve_solver(solver, spec, device, cells, approximation.exact_max_cells)
        self.search_cells = cells
        if self.solver == APPROXIMATE_SOLVER:
            self.x_train = x_train  # export's pipelines refit on the features
            self.search_cells = search_cells(cells, approximation)
        key = (spec.features, self.solver)
        if shared is not None and key in shared:
            self.rbf_solver = shared[key]
        elif self.solver == APPROXIMATE_SOLVER:
            self.rbf_solver = NystroemRBF(x_train, approximation, device, seed, workers)
        elif self.solver == "device":
            self.rbf_solver = DeviceRBF(x_train, device)
        else:
            self.rbf_solver = PrecomputedRBF(x_train, device, workers)
        if shared is not None:
            shared[key] = self.rbf_solver

    @property
    def approximation(self) -> str:
        """How results name the RBF SVC's approximation, or "" when it is exact."""
        if isinstance(self.rbf_solver, NystroemRBF):
            return self.rbf_solver.described
        return ""

    def estimator(self, settings: dict[str, Any]) -> Any:
        """An unfitted estimator on features with these settings (fixed params included)."""
        if isinstance(self.rbf_solver, NystroemRBF):
            return self.rbf_solver.estimator(settings)
        return estimator_for(self.spec).set_params(**settings)

    def prepare(self, x: np.ndarray) -> Prepared:
        return Prepared(self.rbf_solver.distances(x) if self.rbf_solver else x)

    def fit(self, y: np.ndarray, splits: Splits | None = None) -> Any:
        """Grid search by inner CV scored with the metric, then refit on all training cells."""
        return self.fit_many([y], [splits])[0]

    def fit_many(self, labels: list[np.ndarray], splits: list[Splits | None]) -> list[Any]:
        """`fit` for several label vectors (tasks) at once, their fits spread over the workers."""
        return self.fit_and_choices(labels, splits)[0]

    def fit_and_choices(
        self, labels: list[np.ndarray], splits: list[Splits | None]
    ) -> tuple[list[Any], list[dict[str, Any]]]:
        """`fit_many`, with each label vector's choice among the grid's values as the grid
        writes them (gamma "scale", not the number it resolved to): what export reuses."""
        splits = [
            s if s is not None else self.inner_splits(y)
            for y, s in zip(labels, splits, strict=True)
        ]
        if self.rbf_solver is None:
            searches = [self._grid_search(y, s) for y, s in zip(labels, splits, strict=True)]
            return [s.best_estimator_ for s in searches], [s.best_params_ for s in searches]
        search = self.search(labels, splits)
        grid = self.spec.grid
        choices = [{k: search.candidates[c][k] for k in grid} for c in search.chosen]
        return search.models, choices

    def search(self, labels: list[np.ndarray], splits: list[Splits]) -> Search:
        """The RBF SVC's grid search with its score tables (see `Search`)."""
        return self.rbf_solver.search(labels, splits, self.spec.grid, self.spec.params, self.metric)

    def _grid_search(self, y: np.ndarray, splits: Splits) -> GridSearchCV:
        splits = sampled_splits(y, splits, self.search_cells, self.seed)  # refit on every cell
        scorer = SKLEARN_SCORERS[self.metric][len(np.unique(y)) > 2]
        threads = self.workers.threads if self.workers.threads > 1 else None
        search = GridSearchCV(
            estimator_for(self.spec), self.spec.grid, scoring=scorer, cv=splits, n_jobs=threads
        )
        with warnings.catch_warnings(), joblib.parallel_backend("threading"):
            warnings.simplefilter("ignore")
            return search.fit(self.x_train, y)

    def inner_splits(self, y: np.ndarray) -> Splits:
        return inner_splits(y, self.inner_folds, self.seed)

    def task_outputs(self, model: Any, prepared: Prepared, task: str | bool = True):
        """(predicted positive, score) for one task: `task` is the positive class."""
        x = prepared.features
        predicted = model.predict(x) == task
        classes = list(getattr(model, "classes_", [False, True]))
        if len(classes) == 2 and hasattr(model, "decision_function"):
            score = model.decision_function(x)
            return predicted, score if classes[1] == task else -score
        column = classes.index(task)
        if hasattr(model, "predict_proba"):
            return predicted, model.predict_proba(x)[:, column]
        return predicted, model.decision_function(x)[:, column]

    def score_metric(self, model: Any, prepared: Prepared, positive: np.ndarray) -> float:
        """The selection metric of a binary model on held-out cells (checkpoint selection)."""
        predicted, score = self.task_outputs(model, prepared)
        return binary_scores(positive, predicted, score)[self.metric]


@dataclass
class Calibrated:
    """A classifier with probabilities, as export needs it: each cell's probability from the
    split that held it out (`held_out`: cells, or cells × `classes` for a multi-class model),
    the settings its search chose, and `model()`, the model on features fitted on every cell.
    `model` is built only when asked: a candidate export does not keep is never fitted."""

    held_out: np.ndarray
    params: dict[str, Any]
    model: Callable[[], Any]
    classes: list | None = None  # a multi-class model's, the columns of `held_out`
    seconds: float = 0.0  # its calibration and held-out fits took (its search not counted)


def calibrated_classifiers(
    spec: Classifier,
    x: np.ndarray,
    labels: list[np.ndarray],
    *,
    inner_folds: int,
    metric: str,
    seed: int,
    held_out_splits: Splits | None = None,
    workers: Workers = SERIAL,
    choices: list[dict[str, Any] | None] | None = None,
    approximation: Approximation = EXACT,
) -> list[Calibrated]:
    """For each label vector (one cell type against the rest) on features `x`: the settings
    of `choices` (values of the grid, as `FoldClassifier.fit_and_choices` gives them), or
    where it has none the grid search's choice by inner CV; with Platt-calibrated
    probabilities learnt from inner-CV decision values, and each cell's probability from the
    split that held it out: the inner folds, or `held_out_splits` (one per batch, say) with
    the chosen settings refit without them. An RBF SVC is searched, calibrated and held out on
    one precomputed kernel shared by every type (the types' fits side by side on `workers`),
    as libsvm on the features would do it; approximated (`approximation`) as a Nystroem
    pipeline on the features; any other estimator through scikit-learn."""
    fold = FoldClassifier(
        spec,
        x,
        inner_folds=inner_folds,
        metric=metric,
        seed=seed,
        workers=workers,
        solver="libsvm",
        approximation=approximation,
    )
    splits = [fold.inner_splits(y) for y in labels]
    settings = _settings(fold, labels, splits, choices or [None] * len(labels))
    on_kernel = isinstance(fold.rbf_solver, PrecomputedRBF)

    def calibrate(i: int) -> Calibrated:
        start = time.perf_counter()
        if on_kernel:
            calibrated = _calibrated_on_kernel(
                fold.rbf_solver, labels[i], splits[i], settings[i], held_out_splits
            )
        else:
            calibrated = _calibrated_on_features(
                fold, labels[i], splits[i], settings[i], held_out_splits
            )
        calibrated.seconds = time.perf_counter() - start
        return calibrated

    if not on_kernel:  # a pipeline's liblinear fits one at a time (nystroem_svm.LIBLINEAR_LOCK)
        return [calibrate(i) for i in range(len(labels))]
    return workers.map(calibrate, range(len(labels)))


def _settings(
    fold: FoldClassifier, labels: list[np.ndarray], splits: list[Splits], choices: list
) -> list[dict[str, Any]]:
    """Each label vector's settings: the fixed params with its choice where given, else with
    the grid search's choice (all the searches at once)."""
    searched = [i for i, choice in enumerate(choices) if choice is None]
    if searched:
        _, found = fold.fit_and_choices(
            [labels[i] for i in searched], [splits[i] for i in searched]
        )
        choices = list(choices)
        for i, choice in zip(searched, found, strict=True):
            choices[i] = choice
    return [{**fold.spec.params, **choice} for choice in choices]


def _calibrated_on_kernel(
    solver: PrecomputedRBF,
    y: np.ndarray,
    splits: Splits,
    settings: dict[str, Any],
    held_out_splits: Splits | None,
) -> Calibrated:
    """scikit-learn's calibration of the SVC of `settings` on its precomputed kernel
    (cross-validation splits a precomputed kernel by rows and columns), carried over to
    features when the model is asked for."""
    gamma = solver.gamma(settings.get("gamma", "scale"))
    kernel = np.exp(-gamma * solver.train_distances)
    calibrated = CalibratedClassifierCV(
        svc_on_kernel(settings), method="sigmoid", cv=splits, ensemble=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrated.fit(kernel, y)
    fitted = KernelSVM(calibrated.calibrated_classifiers_[0].estimator, gamma)
    decisions = solver.held_out_decisions(y, fitted, held_out_splits or splits, kernel)
    held_out = calibrated.calibrated_classifiers_[0].calibrators[0].predict(decisions)
    x = solver.x_np  # what the model on features needs of the solver (not its kernels)

    def on_features() -> CalibratedClassifierCV:
        inner = calibrated.calibrated_classifiers_[0]
        if inner.estimator.kernel == "precomputed":  # carried over once
            inner.estimator = fitted.fitted_on_features(x)
            calibrated.estimator = fitted.on_features()
            calibrated.n_features_in_ = x.shape[1]
        return calibrated

    return Calibrated(held_out, plain_params(fitted.on_features()), on_features)


def _calibrated_on_features(
    fold: FoldClassifier, y: np.ndarray, splits: Splits, settings: dict[str, Any], held_out_splits
) -> Calibrated:
    """Any estimator but an RBF SVC on its kernel: its calibration and held-out decision
    values on the features, with `settings`. Past exact_max_cells (`fold.search_cells` fewer
    than the cells) the calibration's inner CV runs on the search's stratified sample and each
    held-out split's fit on that sample's cells of its training cells, every held-out cell
    predicted: export then costs the same at any size but for the model itself, fitted on
    every cell when asked for."""
    estimator, x, cells = fold.estimator(settings), fold.x_train, fold.search_cells
    sampled = cells < len(y)
    rows, inner = slice(None), splits
    if sampled:
        rows, inner = within_sample(sampled_splits(y, splits, cells, fold.seed))
    calibrated = CalibratedClassifierCV(estimator, method="sigmoid", cv=inner, ensemble=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrated.fit(x[rows], y[rows])
        # the held-out fits on the calibration's sample (its cells of each training part)
        held = sampled_training(y, held_out_splits or splits, cells, fold.seed, like=splits)
        decisions = _held_out_decisions(estimator, x, y, held)
    held_out = calibrated.calibrated_classifiers_[0].calibrators[0].predict(decisions)

    pending = sampled  # the model on every cell, fitted once when first asked for

    def model() -> CalibratedClassifierCV:
        nonlocal pending
        if pending:
            calibrated.calibrated_classifiers_[0].estimator = _fit_on_all(estimator, x, y)()
            pending = False
        return calibrated

    return Calibrated(held_out, plain_params(estimator), model)


def plain_params(estimator: Any) -> dict[str, Any]:
    """An estimator's parameters that are plain values (for a manifest); an approximate SVC's
    under SVC's names."""
    params = svc_params(estimator) if isinstance(estimator, Pipeline) else estimator.get_params()
    return {k: v for k, v in params.items() if isinstance(v, str | int | float | bool | None)}


def _held_out_decisions(estimator: Any, x: np.ndarray, y: np.ndarray, splits: Splits):
    """cross_val_predict's decision values (a split with one class among its training cells
    gives that class's side)."""

    def decide(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return clone(estimator).fit(x[train], y[train]).decision_function(x[test])

    return held_out_decisions(y, splits, decide)


def multiclass_classifier(
    spec: Classifier,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    inner_folds: int,
    metric: str,
    seed: int,
    held_out_splits: Splits | None = None,
    workers: Workers = SERIAL,
    approximation: Approximation = EXACT,
) -> Calibrated:
    """One model of all the labels (a multi-class baseline) with probabilities (Platt-calibrated
    when the estimator has none), and each cell's probabilities (columns: `classes`) from the
    split that held it out: the inner folds, or `held_out_splits`. Given `held_out_splits` (one
    per batch), the grid is searched on them too: settings chosen for what a new batch looks
    like (Baron human, two donors as reference: the weighting of rare types that held-out
    donors favour differs from the one inner folds favour; docs/class-weights.md). A model of
    all the labels fits whatever types a split's training cells hold, so any split will do.
    The held-out probabilities come from the search's own fits of the chosen settings; the
    model on every cell is fitted when `model()` asks for it."""
    estimator = estimator_for(spec)
    x = sparse_if_worth_it(estimator, x)
    splits = held_out_splits or inner_splits(labels, inner_folds, seed)
    # past exact_max_cells each split's fits run on a sample of its training cells, as the
    # jobs' search does; every held-out cell is predicted
    sample = grid_search_cells(spec, len(labels), approximation)
    splits = sampled_training(labels, splits, sample, seed)
    classes = list(np.unique(labels))
    if not hasattr(estimator, "predict_proba"):
        return _calibrated_multiclass(
            spec, x, labels, splits, classes, metric, workers, approximation
        )
    candidates = [clone(estimator).set_params(**c) for c in ParameterGrid(spec.grid)]
    scorer = get_scorer(SKLEARN_SCORERS[metric][len(classes) > 2])
    units = [(c, s) for c in range(len(candidates)) for s in range(len(splits))]

    def fit(unit: tuple[int, int]) -> tuple[float, Any]:
        candidate, (train, test) = candidates[unit[0]], splits[unit[1]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fitted = clone(candidate).fit(x[train], labels[train])
            except ValueError:  # recorded as failed (NaN), as GridSearchCV does
                return np.nan, None
            return scorer(fitted, x[test], labels[test]), fitted

    results = workers.map(fit, units)
    table = np.array([score for score, _ in results]).reshape(len(candidates), len(splits))
    if np.isnan(table.mean(axis=1)).all():
        raise UserError(f"classifier {spec.name}: no setting of its grid could be fitted here")
    best = best_candidates([table])[0]
    fitted = [model for (c, _), (_, model) in zip(units, results, strict=True) if c == best]
    held_out = _probabilities_of(fitted, x, splits, classes)
    chosen = candidates[best]
    return Calibrated(held_out, plain_params(chosen), _fit_on_all(chosen, x, labels), classes)


def _probabilities_of(models: list, x: np.ndarray, splits: Splits, classes: list) -> np.ndarray:
    """Each cell's probabilities from the model of the split that held it out (columns in
    `classes` order; a class a split's training cells lack gets 0)."""
    probabilities = np.zeros((x.shape[0], len(classes)))
    for model, (_, test) in zip(models, splits, strict=True):
        columns = [classes.index(c) for c in model.classes_]
        probabilities[np.ix_(test, columns)] = model.predict_proba(x[test])
    return probabilities


def _fit_on_all(estimator: Any, x: np.ndarray, labels: np.ndarray) -> Callable[[], Any]:
    def fit() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clone(estimator).fit(x, labels)

    return fit


def _calibrated_multiclass(
    spec, x, labels, splits: Splits, classes, metric, workers, approximation: Approximation
) -> Calibrated:
    """A multi-class estimator without probabilities: its grid search, then Platt-calibrated on
    the search's splits (each held-out split's refit on scikit-learn's own three folds)."""
    fold = FoldClassifier(
        spec,
        x,
        inner_folds=len(splits),
        metric=metric,
        workers=workers,
        approximation=approximation,
    )
    chosen = _as_estimator(fold.fit(labels, splits))
    estimator = CalibratedClassifierCV(chosen, method="sigmoid", cv=splits, ensemble=False)
    refit = clone(estimator).set_params(cv=3)  # `splits` index all cells, not a split's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = [clone(refit).fit(x[train], labels[train]) for train, _ in splits]
    held_out = _probabilities_of(fitted, x, splits, classes)
    return Calibrated(held_out, plain_params(chosen), _fit_on_all(estimator, x, labels), classes)


def _as_estimator(chosen: Any) -> Any:
    """A search's choice as an unfitted estimator on features."""
    return chosen.on_features() if isinstance(chosen, KernelSVM | NystroemSVM) else clone(chosen)
