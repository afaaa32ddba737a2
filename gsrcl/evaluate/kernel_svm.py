"""Exact `GridSearchCV(SVC(kernel="rbf"))` on precomputed kernels, fitted by libsvm (the
"libsvm" solver; `gsrcl.evaluate.device_svm` is the "device" one).

An RBF kernel is exp(-gamma · squared distance). The squared distances among the training cells are
computed once (one float64 matrix product) and reused for every gamma, C, inner split and cell-type
task; `SVC(kernel="precomputed")` then fits the same model libsvm would fit on the raw features.
`gamma="scale"` keeps scikit-learn's meaning: 1 / (n_features · var(X)) of the rows being fitted.
Candidates are searched in `ParameterGrid` order and ties go to the first, as `GridSearchCV` does.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.metrics import average_precision_score
from sklearn.model_selection import ParameterGrid
from sklearn.svm import SVC

from gsrcl.evaluate.metrics import HARD_METRICS
from gsrcl.evaluate.workers import SERIAL, Workers

Splits = list[tuple[np.ndarray, np.ndarray]]

# the decision value of a held-out split whose training cells hold one class: that class, surely
ONE_CLASS_DECISION = 10.0
SHARED_KERNEL_BYTES = 1 << 30  # kernels of all training cells kept per search, at most


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||² for all pairs, as libsvm computes it: |a|² + |b|² - 2 a·b."""
    sq_a = (a * a).sum(dim=1)
    sq_b = (b * b).sum(dim=1)
    return (sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def rbf_gamma(value: Any, n_features: int, variance: Callable[[], float]) -> float:
    """A gamma setting as a number, as scikit-learn resolves it on the rows being fitted:
    "scale" = 1 / (n_features · their variance), "auto" = 1 / n_features."""
    if value == "scale":
        var = variance()
        return 1.0 / (n_features * var) if var != 0 else 1.0
    if value == "auto":
        return 1.0 / n_features
    return float(value)


def best_candidates(tables: list[np.ndarray]) -> list[int]:
    """For each problem's table (candidates × inner splits) the candidate of the best mean
    score, the first on ties (as `GridSearchCV`); a candidate with a failed fit never wins."""
    chosen = []
    for table in tables:
        means = table.mean(axis=1)
        chosen.append(int(np.argmax(np.where(np.isnan(means), -np.inf, means))))
    return chosen


@dataclass
class Search:
    """A grid search of several label vectors on one set of training cells: each one's model
    (its chosen candidate refit on all cells), its score table (candidates × inner splits), the
    candidates (full SVC settings, in `ParameterGrid` order) and the index chosen."""

    models: list[Any]
    scores: list[np.ndarray]
    candidates: list[dict[str, Any]]
    chosen: list[int]


@dataclass
class KernelSVM:
    """A fitted SVC on a precomputed RBF kernel; it predicts from distances to its training rows."""

    svc: SVC
    gamma: float

    @property
    def classes_(self) -> np.ndarray:
        return self.svc.classes_

    def decision_function(self, distances: np.ndarray) -> np.ndarray:
        return self.svc.decision_function(np.exp(-self.gamma * distances))

    def predict(self, distances: np.ndarray) -> np.ndarray:
        return self.svc.predict(np.exp(-self.gamma * distances))

    def on_features(self) -> SVC:
        """The same model, unfitted, as an `SVC` that takes features (to refit and export)."""
        return SVC(**{**self.svc.get_params(), "kernel": "rbf", "gamma": self.gamma})

    def fitted_on_features(self, x_train: np.ndarray) -> SVC:
        """The same fitted model as an RBF `SVC` on features (`x_train`: the rows of the kernel
        it was fitted on), without fitting again: libsvm's decision function is
        Σ dual_i · exp(-gamma · |sv_i - x|²) + intercept, so the support vectors' features with
        the solution found on the kernel are the whole model. Refitting `on_features()`
        instead recomputes kernel rows on every gene inside libsvm: minutes a type on 20 000
        genes (tests/test_evaluate.py checks both give the same decisions)."""
        svc = self.on_features()
        fitted = {k: v for k, v in vars(self.svc).items() if k not in vars(svc)}
        svc.__dict__.update(fitted)
        x_train = np.asarray(x_train, dtype=np.float64)
        svc.support_vectors_ = np.ascontiguousarray(x_train[self.svc.support_])
        svc.shape_fit_ = x_train.shape
        svc.n_features_in_ = x_train.shape[1]
        svc._gamma = self.gamma
        return svc


class RBFSolver(ABC):
    """The RBF SVC grid search on one fold's training cells, as some solver runs it: each
    solver is one subclass (libsvm here, `device_svm.DeviceRBF` on a torch device)."""

    def search(
        self,
        labels: list[np.ndarray],
        splits: list[Splits],
        grid: dict[str, list],
        params: dict[str, Any],
        metric: str,
    ) -> Search:
        """For each label vector: the best candidate of `grid` (over the fixed `params`) by mean
        inner-CV `metric` over its splits, refit on all training cells."""
        candidates = [{**params, **c} for c in ParameterGrid(grid)]
        return self._search(labels, splits, candidates, metric)

    @abstractmethod
    def _search(
        self, labels: list[np.ndarray], splits: list[Splits], candidates: list[dict], metric: str
    ) -> Search: ...

    @abstractmethod
    def distances(self, x: np.ndarray) -> Any:
        """Squared distances from other cells (rows) to the training cells (columns), in the
        form this solver's models predict from."""


class PrecomputedRBF(RBFSolver):
    """The training cells of one fold: their distance matrix, shared by every fit on them;
    fits by libsvm."""

    def __init__(self, x_train: np.ndarray, device: str = "cpu", workers: Workers = SERIAL) -> None:
        self.workers = workers  # threads for independent libsvm fits
        self.x = torch.as_tensor(np.asarray(x_train), dtype=torch.float64, device=device)
        self.x_np = self.x.cpu().numpy()
        self.train_distances = squared_distances(self.x, self.x).cpu().numpy()
        np.fill_diagonal(self.train_distances, 0.0)
        # each (labels, inner splits, metric) problem's scores per candidate setting: a second
        # grid on these cells (the SVM's within the class-balanced SVM's) fits only what is new
        self.scores: dict[tuple[tuple, str], np.ndarray] = {}

    def distances(self, x: np.ndarray) -> np.ndarray:
        """Squared distances from other cells (rows) to the training cells (columns)."""
        other = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=self.x.device)
        return squared_distances(other, self.x).cpu().numpy()

    def gamma(self, value: Any, rows: np.ndarray | slice = slice(None)) -> float:
        return rbf_gamma(value, self.x_np.shape[1], lambda: self.x_np[rows].var())

    def _search(
        self, labels: list[np.ndarray], splits: list[Splits], candidates: list[dict], metric: str
    ) -> Search:
        problems = list(zip(labels, splits, strict=True))
        scores = self._known_score_tables(problems, candidates, metric)
        chosen = best_candidates(scores)
        models = self.workers.map(
            lambda i: self.fit(labels[i], candidates[chosen[i]]), range(len(labels))
        )
        return Search(models, scores, candidates, chosen)

    def _known_score_tables(
        self, problems: list[tuple[np.ndarray, Splits]], candidates: list[dict], metric: str
    ) -> list[np.ndarray]:
        """`_score_tables`, fitting only the candidates some problem has not been scored on
        (the same settings, labels and splits give the same fits, so the same scores)."""
        keys = [(y.tobytes(), *(test.tobytes() for _, test in s), metric) for y, s in problems]
        names = [
            repr(sorted(svc_on_kernel(c).get_params().items()) + [c.get("gamma")])
            for c in candidates
        ]
        new = [i for i, name in enumerate(names) if any((k, name) not in self.scores for k in keys)]
        if new:
            tables = self._score_tables(
                problems, [candidates[i] for i in new], partial(_inner_score, metric)
            )
            for key, table in zip(keys, tables, strict=True):
                for row, i in zip(table, new, strict=True):
                    self.scores[key, names[i]] = row
        return [np.array([self.scores[key, name] for name in names]) for key in keys]

    def _score_tables(
        self, problems: list[tuple[np.ndarray, Splits]], candidates: list[dict], score
    ) -> list[np.ndarray]:
        """For each problem (labels, inner splits): each candidate's score on each inner split
        (`score(y, svc, test kernel)`).

        The work of all problems comes in units of one problem's inner split (for each gamma its
        kernels, then a fit per C), run on the `workers`' threads (libsvm releases the GIL); each
        score lands in the cell a sequential search would fill, so the choice is the same."""
        shared = self._shared_kernels(candidates)
        units = [(p, s) for p, (_, splits) in enumerate(problems) for s in range(len(splits))]

        def run(unit: tuple[int, int]) -> list[tuple[list[int], list[float]]]:
            p, s = unit
            y, (train, test) = problems[p][0], problems[p][1][s]
            results = []
            for gamma, members in self._by_gamma(candidates, train).items():
                if gamma in shared:  # the same numbers as exp of the sub-matrix, computed once
                    fit_kernel = shared[gamma][np.ix_(train, train)]
                    test_kernel = shared[gamma][np.ix_(test, train)]
                else:
                    fit_kernel = np.exp(-gamma * self.train_distances[np.ix_(train, train)])
                    test_kernel = np.exp(-gamma * self.train_distances[np.ix_(test, train)])
                scores = []
                for c in members:
                    model = self._fit(fit_kernel, y[train], gamma, candidates[c])
                    scores.append(
                        np.nan if model is None else score(y[test], model.svc, test_kernel)
                    )
                results.append((members, scores))
            return results

        scores = [np.full((len(candidates), len(splits)), np.nan) for _, splits in problems]
        for (p, s), results in zip(units, self.workers.map(run, units), strict=True):
            for members, unit_scores in results:
                scores[p][members, s] = unit_scores
        return scores

    def _shared_kernels(self, candidates: list[dict]) -> dict[float, np.ndarray]:
        """The kernel of all training cells for each gamma that does not depend on the rows
        (every value but "scale"): every task and inner split slices it instead of computing
        exp again. Skipped when the kernels would not fit in SHARED_KERNEL_BYTES."""
        values = {c.get("gamma", "scale") for c in candidates} - {"scale"}
        gammas = {self.gamma(v) for v in values}
        if len(gammas) * self.train_distances.nbytes > SHARED_KERNEL_BYTES:
            return {}
        kernels = self.workers.map(lambda g: np.exp(-g * self.train_distances), sorted(gammas))
        return dict(zip(sorted(gammas), kernels, strict=True))

    def _by_gamma(self, candidates: list[dict], train: np.ndarray) -> dict:
        """The candidates grouped by the gamma they resolve to on these training rows ("scale"
        is a variance over the rows: computed once, not once per candidate)."""
        resolved: dict[Any, float] = {}
        groups: dict[float, list[int]] = {}
        for c, candidate in enumerate(candidates):
            value = candidate.get("gamma", "scale")
            if value not in resolved:
                resolved[value] = self.gamma(value, train)
            groups.setdefault(resolved[value], []).append(c)
        return groups

    def held_out_decisions(
        self, y: np.ndarray, model: KernelSVM, splits: Splits, kernel: np.ndarray | None = None
    ) -> np.ndarray:
        """Each cell's decision value from `model`'s settings refit without its split's test
        cells: what cross_val_predict gives for `model.on_features()`, from the kernel (of
        `model`'s gamma on all training cells; computed when not given)."""
        if kernel is None:
            kernel = np.exp(-model.gamma * self.train_distances)
        params = model.svc.get_params()

        def decide(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            fitted = self._fit(kernel[np.ix_(train, train)], y[train], model.gamma, params)
            return fitted.svc.decision_function(kernel[np.ix_(test, train)])

        return held_out_decisions(y, splits, decide)

    def fit(self, y: np.ndarray, params: dict[str, Any]) -> KernelSVM:
        gamma = self.gamma(params.get("gamma", "scale"))
        model = self._fit(np.exp(-gamma * self.train_distances), y, gamma, params)
        if model is None:
            raise ValueError("the training cells hold a single class")
        return model

    @staticmethod
    def _fit(kernel: np.ndarray, y: np.ndarray, gamma: float, params: dict) -> KernelSVM | None:
        if len(np.unique(y)) < 2:  # GridSearchCV records such a fit as failed (NaN)
            return None
        # the inputs are ours and already checked: skip scikit-learn's per-call validation
        with (
            warnings.catch_warnings(),
            sklearn.config_context(assume_finite=True, skip_parameter_validation=True),
        ):
            warnings.simplefilter("ignore")
            return KernelSVM(svc_on_kernel(params).fit(kernel, y), gamma)


def svc_on_kernel(params: dict[str, Any]) -> SVC:
    """An unfitted SVC of these RBF settings on a precomputed kernel (gamma is the kernel's)."""
    return SVC(
        kernel="precomputed", **{k: v for k, v in params.items() if k not in ("gamma", "kernel")}
    )


def held_out_decisions(
    y: np.ndarray, splits: Splits, decide: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Each cell's decision value from a model fitted without its split's test cells
    (`decide(train, test)`); a split whose training cells hold one class (a type only one batch
    has) gives its cells that class's side, where a fit would fail."""
    decisions = np.empty(len(y))
    for train, test in splits:
        if len(np.unique(y[train])) < 2:
            decisions[test] = ONE_CLASS_DECISION if y[train][0] else -ONE_CLASS_DECISION
        else:
            decisions[test] = decide(train, test)
    return decisions


def _inner_score(metric: str, y: np.ndarray, model: SVC, kernel: np.ndarray) -> float:
    """The inner-CV score of an SVC on a kernel, computed as scikit-learn's scorer would."""
    if metric == "ap":
        return float(average_precision_score(y, model.decision_function(kernel)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(HARD_METRICS[metric](y, model.predict(kernel)))
