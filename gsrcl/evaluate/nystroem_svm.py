"""The RBF SVC grid search on a Nystroem approximation of its kernel (the "nystroem" solver),
for training cells too many for cell × cell kernels (`evaluation.exact_max_cells`).

scikit-learn's route for large data (its SVC documentation): each cell's `Nystroem` features,
its kernel values to m landmark cells whitened by the landmarks' own kernel, whose dot products
approximate the RBF kernel (exactly when every training cell is a landmark), and a linear SVM on
them. The linear SVM is `LinearSVC(loss="hinge")`: SVC's own objective, ½|w|² + C Σ class
weight × hinge loss, so C and class_weight mean what they mean to SVC; unlike libsvm, liblinear
penalises the intercept (as the weight of a constant feature, `intercept_scaling` = 1). The
features are centred on the training cells' mean first: SVC is unchanged by centring its kernel
(its dual's Σ yᵢαᵢ = 0 cancels the terms centring adds), liblinear is not, and on centred
features its penalised intercept is the smaller one centring leaves, while a small gamma's
nearly constant features no longer make one direction dominate the dual its coordinate descent
solves (`python3 bench/liblinear_settings.py`: docs/approximate-svm.md). With
every training cell a landmark it chose libsvm's settings for 6 of pbmc68k_reduced's 7 types
(mean |ΔMCC| 0.009); `SGDClassifier(loss="hinge")` with alpha = 1 / (C n), the same objective
with an unpenalised intercept, is faster but far noisier (6 of 7 choices moved, |ΔMCC| 0.135).
The squared hinge (L2-SVM, liblinear's fast primal solver) is 3× faster but a different
objective: its scores of pbmc68k_reduced's candidates moved by up to 0.16 MCC from libsvm's, and
one choice was a candidate libsvm scores 0.95 lower.

The grid is searched as the exact solvers search it: the same candidates, inner splits, metric
and tie-breaking (`kernel_svm.best_candidates`), the chosen candidate refit on all training
cells. The training cells' squared distances to the landmarks (cells × m, float32, computed on
the job's device) serve every gamma, and one gamma's features (cells × m, float32) serve every
C, task and inner split: nothing here is cells × cells. "scale" is SVC's 1 / (n_features ·
var(X)) of the fold's training cells, the rows the map is fitted on, for the inner splits too
(the exact solvers use each inner split's own rows: a value within about 1 % of it, and each
would need a map of its own). Only the distances run on a GPU; the features and the linear SVM
are on the CPU.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np
import sklearn
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils import check_random_state

from gsrcl.config.settings import APPROXIMATE_SOLVER, Approximation
from gsrcl.data.splits import sampled_splits
from gsrcl.evaluate.kernel_svm import (
    RBFSolver,
    Search,
    Splits,
    _inner_score,
    best_candidates,
    rbf_gamma,
    squared_distances,
)
from gsrcl.evaluate.workers import SERIAL, Workers

# what a job's metrics record of this solver: a job another version fitted is redone (1: the
# features uncentred, liblinear's tolerance 1e-4; 2: centred, 1e-2, since 2026-12-07)
VERSION = 2
# liblinear draws its coordinate order from C's one process-wide rand(), seeded at each fit's
# start: two fits at once on two threads draw from each other's sequence, and the same seed
# gave different fits run to run (bench/approximate_svm.py, 2 threads). One fit at a time.
LIBLINEAR_LOCK = threading.Lock()
# values (cells × genes or landmarks) computed at once in float64: 32 MB temporaries
BLOCK_VALUES = 1 << 22
# liblinear's passes over a fit's cells (its default 1000): on features of raw expression most
# fits of the paper's grid stop at the cap, not its tolerance, and a gamma whose features are all
# near 0 (1e-2 on 2000 genes) keeps every cell active; 300 passes gave the same inner MCC to
# ±0.03 at 0.48× the time on 8000 tiled Baron Mouse cells (docs/approximate-svm.md)
LIBLINEAR_PASSES = 300
# liblinear's stopping tolerance (the largest projected-gradient gap of its dual solver; its own
# default 0.1, scikit-learn's 1e-4, which these fits rarely reach before the pass cap): centred
# and at 1e-2 the paper's grid fits faster with test MCCs as close to libsvm's
# (bench/liblinear_settings.py); at 0.1 the inner-CV scores with every cell a landmark moved up
# to 0.014 from libsvm's, at 1e-2 under 0.01 (tests/test_approximate_svm.py)
LIBLINEAR_TOLERANCE = 1e-2


def blocks(cells: int, width: int) -> list[slice]:
    """Consecutive slices of `cells` rows, each of at most BLOCK_VALUES values of `width`."""
    rows = max(1, BLOCK_VALUES // max(width, 1))
    return [slice(start, start + rows) for start in range(0, cells, rows)]


def describe(cells: int, approximation: Approximation) -> str:
    """How results name a classifier this solver fitted on `cells` training cells."""
    text = f"approximate (Nystroem, m={min(approximation.components, cells)}"
    sample = search_cells(cells, approximation)
    return text + (f", grid searched on {sample} cells)" if sample < cells else ")")


def search_cells(cells: int, approximation: Approximation) -> int:
    """How many of `cells` training cells the grid's inner CV runs on."""
    return min(cells, approximation.search_max_cells or cells)


def features(distances: np.ndarray, gamma: float, weights: np.ndarray) -> np.ndarray:
    """Nystroem features (float32) of cells from their squared distances to the landmarks:
    exp(-gamma · d) @ weights, a block of cells at a time in float64."""
    out = np.empty((len(distances), weights.shape[1]), dtype=np.float32)
    for rows in blocks(len(distances), weights.shape[0]):
        out[rows] = np.exp(-gamma * distances[rows].astype(np.float64)) @ weights
    return out


def landmark_weights(nystroem: Nystroem) -> np.ndarray:
    """A fitted map's normalisation with its rows in the order the landmarks were given to it
    (it draws them in an order of its own), so features(d) = nystroem.transform(cells)."""
    weights = np.empty_like(nystroem.normalization_.T)
    weights[nystroem.component_indices_] = nystroem.normalization_.T
    return weights


def centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features less their mean (in place), and the mean (float32, summed in float64)."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    x -= mean
    return x, mean


def pipeline(nystroem: Nystroem, svm: LinearSVC) -> Pipeline:
    """The model on features: the map, centring on the training cells' features, the SVM."""
    return Pipeline(
        [("nystroem", nystroem), ("centre", StandardScaler(with_std=False)), ("svm", svm)]
    )


def is_pipeline(model: Any) -> bool:
    """Whether `model` is, step for step, what `pipeline` makes (a model file may hold it)."""
    kinds = [type(step) for _, step in getattr(model, "steps", [])]
    return type(model) is Pipeline and kinds == [Nystroem, StandardScaler, LinearSVC]


@dataclass
class NystroemSVM:
    """A fitted linear SVM on one gamma's centred Nystroem features; it predicts from the
    cells' squared distances to the landmarks (`NystroemRBF.distances`)."""

    svm: LinearSVC
    nystroem: Nystroem
    weights: np.ndarray  # landmark_weights(nystroem)
    mean: np.ndarray  # the mean of the training cells' features (`centred` took it off)

    @property
    def classes_(self) -> np.ndarray:
        return self.svm.classes_

    @property
    def gamma(self) -> float:
        return self.nystroem.gamma

    def decision_function(self, distances: np.ndarray) -> np.ndarray:
        return self.svm.decision_function(self._features(distances))

    def predict(self, distances: np.ndarray) -> np.ndarray:
        return self.svm.predict(self._features(distances))

    def _features(self, distances: np.ndarray) -> np.ndarray:
        x = features(distances, self.gamma, self.weights)
        x -= self.mean
        return x

    def on_features(self) -> Pipeline:
        """The same settings, unfitted, as a pipeline on features (to refit and export)."""
        return pipeline(clone(self.nystroem), clone(self.svm))


def svc_params(model: Pipeline) -> dict[str, Any]:
    """An approximate model's settings under SVC's names, with what approximated it."""
    nystroem, svm = model.named_steps["nystroem"], model.named_steps["svm"]
    return {
        "C": svm.C,
        "gamma": float(nystroem.gamma),
        "class_weight": svm.class_weight,
        "solver": APPROXIMATE_SOLVER,
        "n_components": nystroem.n_components,
    }


class NystroemRBF(RBFSolver):
    """The training cells of one fold and their squared distances to the approximation's
    landmark cells, drawn among them with the job's seed; its fits' slicing and scoring on
    `workers`' threads, liblinear itself one fit at a time (`LIBLINEAR_LOCK`). Only C, gamma
    and class_weight of the SVC settings carry
    over (the others tune libsvm itself). Past `search_max_cells` the inner CV runs on a
    stratified sample of that many cells per label vector; the choice is refit on all."""

    def __init__(
        self,
        x_train: np.ndarray,
        approximation: Approximation,
        device: str = "cpu",
        seed: int = 0,
        workers: Workers = SERIAL,
    ) -> None:
        self.x, self.device, self.workers = x_train, device, workers
        self.seed = seed % 2**32
        self.components = min(approximation.components, x_train.shape[0])
        self.search_cells = search_cells(x_train.shape[0], approximation)
        self.described = describe(x_train.shape[0], approximation)
        drawn = check_random_state(self.seed).permutation(x_train.shape[0])[: self.components]
        self.landmarks = _dense(x_train[np.sort(drawn)])
        self.train_distances = self.distances(x_train)
        self._maps: dict[float, Nystroem] = {}
        # the last gamma's centred features and their mean, reused
        self._features: tuple[float, np.ndarray, np.ndarray] | None = None

    def distances(self, x: np.ndarray) -> np.ndarray:
        """Squared distances from cells (rows) to the landmarks (columns), float32, computed
        in float64 on the solver's device a block of cells at a time."""
        landmarks = torch.as_tensor(self.landmarks, device=self.device)
        out = np.empty((x.shape[0], len(self.landmarks)), dtype=np.float32)
        for rows in blocks(x.shape[0], max(x.shape[1], len(self.landmarks))):
            block = torch.as_tensor(_dense(x[rows]), device=self.device)
            out[rows] = squared_distances(block, landmarks).cpu().numpy()
        return out

    @cached_property
    def variance(self) -> float:
        """var() of every value of the training cells, from float64 sums a block at a time
        (numpy's would make a full-size temporary)."""
        total = squares = 0.0
        for rows in blocks(self.x.shape[0], self.x.shape[1]):
            block = _dense(self.x[rows])
            total, squares = total + block.sum(), squares + (block * block).sum()
        count = self.x.shape[0] * self.x.shape[1]
        return max(squares / count - (total / count) ** 2, 0.0)

    def gamma(self, value: Any) -> float:
        return rbf_gamma(value, self.x.shape[1], lambda: self.variance)

    def nystroem(self, gamma: float) -> Nystroem:
        """The map of this gamma on the landmarks (their kernel's inverse square root)."""
        if gamma not in self._maps:
            self._maps[gamma] = Nystroem(
                kernel="rbf", gamma=gamma, n_components=self.components, random_state=self.seed
            ).fit(self.landmarks)
        return self._maps[gamma]

    def train_features(self, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """The training cells' centred features of one gamma and their mean (the last
        gamma's are kept, not more)."""
        if self._features is None or self._features[0] != gamma:
            self._features = None  # freed before the next are made
            weights = landmark_weights(self.nystroem(gamma))
            x, mean = centred(features(self.train_distances, gamma, weights))
            self._features = (gamma, x, mean)
        return self._features[1], self._features[2]

    def linear_svm(self, params: dict[str, Any]) -> LinearSVC:
        return LinearSVC(
            loss="hinge",
            max_iter=LIBLINEAR_PASSES,
            tol=LIBLINEAR_TOLERANCE,
            C=params.get("C", 1.0),
            class_weight=params.get("class_weight"),
            random_state=self.seed,
        )

    def estimator(self, params: dict[str, Any]) -> Pipeline:
        """An unfitted pipeline on features with these SVC settings ("scale" resolved on the
        training cells): what export calibrates and refits."""
        gamma = self.gamma(params.get("gamma", "scale"))
        map_ = Nystroem(gamma=gamma, n_components=self.components, random_state=self.seed)
        return pipeline(map_, self.linear_svm(params))

    def _search(
        self, labels: list[np.ndarray], splits: list[Splits], candidates: list[dict], metric: str
    ) -> Search:
        problems = list(zip(labels, map(self._sampled, labels, splits), strict=True))
        scores = [np.full((len(candidates), len(s)), np.nan) for s in splits]
        by_gamma: dict[float, list[int]] = {}
        for c, candidate in enumerate(candidates):
            by_gamma.setdefault(self.gamma(candidate.get("gamma", "scale")), []).append(c)
        units = [(p, s) for p, (_, task) in enumerate(problems) for s in range(len(task))]
        score = partial(_inner_score, metric)
        for gamma, members in by_gamma.items():
            x, _ = self.train_features(gamma)

            def run(unit: tuple[int, int], x=x, members=members) -> list[float]:
                y, (train, test) = problems[unit[0]][0], problems[unit[0]][1][unit[1]]
                fit_x, test_x = x[train], x[test]
                fitted = [self._fit(fit_x, y[train], candidates[c]) for c in members]
                return [np.nan if m is None else score(y[test], m, test_x) for m in fitted]

            for (p, s), unit_scores in zip(units, self.workers.map(run, units), strict=True):
                scores[p][members, s] = unit_scores
        chosen = best_candidates(scores)
        return Search(self._refit(labels, candidates, chosen), scores, candidates, chosen)

    def _sampled(self, y: np.ndarray, splits: Splits) -> Splits:
        return sampled_splits(y, splits, self.search_cells, self.seed)

    def _refit(self, labels: list[np.ndarray], candidates: list[dict], chosen: list[int]):
        """Each label vector's chosen candidate on all training cells, a gamma at a time (the
        features still held first)."""
        tasks: dict[float, list[int]] = {}
        for t, c in enumerate(chosen):
            tasks.setdefault(self.gamma(candidates[c].get("gamma", "scale")), []).append(t)
        held = self._features[0] if self._features else None
        models: list[Any] = [None] * len(labels)
        for gamma in sorted(tasks, key=lambda g: g != held):
            x, mean = self.train_features(gamma)
            fits = self.workers.map(
                lambda t, x=x: self._fit(x, labels[t], candidates[chosen[t]]), tasks[gamma]
            )
            nystroem = self.nystroem(gamma)
            weights = landmark_weights(nystroem)
            for t, svm in zip(tasks[gamma], fits, strict=True):
                if svm is None:
                    raise ValueError("the training cells hold a single class")
                models[t] = NystroemSVM(svm, nystroem, weights, mean)
        return models

    def _fit(self, x: np.ndarray, y: np.ndarray, params: dict) -> LinearSVC | None:
        if len(np.unique(y)) < 2:  # GridSearchCV records such a fit as failed (NaN)
            return None
        with (
            warnings.catch_warnings(),
            sklearn.config_context(assume_finite=True, skip_parameter_validation=True),
        ):
            warnings.simplefilter("ignore")  # liblinear's iteration cap, as libsvm's warnings
            with LIBLINEAR_LOCK:
                return self.linear_svm(params).fit(x, y)


def _dense(rows: Any) -> np.ndarray:
    """Rows of cells as a float64 array (from dense or sparse cells)."""
    rows = rows.toarray() if sparse.issparse(rows) else rows
    return np.asarray(rows, dtype=np.float64)
