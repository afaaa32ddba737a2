"""How closely the device solver gives libsvm's answers: both searches of one fold's features,
side by side, measured as the issue of the device solver asks (choices, validation scores,
dual objectives, optimality)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gsrcl.config.settings import Classifier
from gsrcl.evaluate.classifiers import FoldClassifier
from gsrcl.evaluate.kernel_svm import Search
from gsrcl.evaluate.smo import objective_and_violation


@dataclass
class Agreement:
    """Counts over searches (one per task); `worst_*` are over the searches they concern."""

    searches: int = 0
    same_choice: int = 0
    # where the choices differ: libsvm's best mean inner-CV score minus its score of the
    # device's choice (0 when they agree)
    worst_choice_loss: float = 0.0
    same_validation: int = 0
    worst_validation_gap: float = 0.0  # |validation metric, device - libsvm|
    # refits of the same candidate: |objective, device - libsvm| / max(1, |libsvm's|)
    worst_objective_gap: float = 0.0
    worst_violation: float = 0.0  # the device refits' maximal violating pair
    seconds: dict[str, float] = field(default_factory=lambda: {"libsvm": 0.0, "device": 0.0})

    def add(self, other: Agreement) -> Agreement:
        merged = Agreement(
            self.searches + other.searches,
            self.same_choice + other.same_choice,
            max(self.worst_choice_loss, other.worst_choice_loss),
            self.same_validation + other.same_validation,
            max(self.worst_validation_gap, other.worst_validation_gap),
            max(self.worst_objective_gap, other.worst_objective_gap),
            max(self.worst_violation, other.worst_violation),
        )
        merged.seconds = {k: self.seconds[k] + other.seconds[k] for k in self.seconds}
        return merged


@dataclass
class _Run:
    fold: FoldClassifier
    search: Search
    validation: list[float]  # each task's validation metric
    seconds: float


def _run(solver: str, spec: Classifier, x_train, x_val, tasks, inner_folds, metric, seed, device):
    fold = FoldClassifier(
        spec,
        x_train,
        inner_folds=inner_folds,
        metric=metric,
        device=device,
        seed=seed,
        solver=solver,
    )
    start = time.perf_counter()
    labels = [y for y, _ in tasks.values()]
    search = fold.search(labels, [fold.inner_splits(y) for y in labels])
    prepared = fold.prepare(x_val)
    validation = [
        fold.score_metric(model, prepared, y_val)
        for model, (_, y_val) in zip(search.models, tasks.values(), strict=True)
    ]
    return _Run(fold, search, validation, time.perf_counter() - start)


def compare_solvers(
    spec: Classifier,
    x_train: np.ndarray,
    x_val: np.ndarray,
    tasks: dict[str, tuple[np.ndarray, np.ndarray]],
    inner_folds: int,
    metric: str,
    seed: int = 0,
    device: str = "cpu",
) -> Agreement:
    """Both solvers' searches for every task (`tasks[name] = (training, validation labels)`,
    binary), their choices and validation scores compared."""
    args = (spec, x_train, x_val, tasks, inner_folds, metric, seed, device)
    theirs, ours = _run("libsvm", *args), _run("device", *args)
    agreement = Agreement(searches=len(tasks))
    agreement.seconds = {"libsvm": theirs.seconds, "device": ours.seconds}
    for t, (y, _) in enumerate(tasks.values()):
        mine, reference = ours.search.chosen[t], theirs.search.chosen[t]
        means = np.nan_to_num(theirs.search.scores[t].mean(axis=1), nan=-np.inf)
        loss = float(means[reference] - means[mine])
        agreement.worst_choice_loss = max(agreement.worst_choice_loss, loss)
        gap = abs(ours.validation[t] - theirs.validation[t])
        agreement.same_validation += gap == 0
        agreement.worst_validation_gap = max(agreement.worst_validation_gap, gap)
        if mine == reference:
            agreement.same_choice += 1
            objective_gap, violation = _refit_gaps(
                theirs.fold.rbf_solver.train_distances,
                y,
                theirs.search.models[t],
                ours.search.models[t].coef.cpu().numpy(),
            )
            agreement.worst_objective_gap = max(agreement.worst_objective_gap, objective_gap)
            agreement.worst_violation = max(agreement.worst_violation, violation)
    return agreement


def _refit_gaps(distances: np.ndarray, y: np.ndarray, reference, coef: np.ndarray):
    """The relative objective gap of a device refit to libsvm's of the same candidate, and the
    device refit's maximal violating pair (with float32 kernel values, as both solvers saw)."""
    kernel = np.exp(-reference.gamma * distances).astype(np.float32).astype(np.float64)
    positive = y == reference.classes_[1]
    # each cell's bound: C times its class's weight, as libsvm was given them
    box = reference.svc.C * reference.svc.class_weight_[positive.astype(int)]
    dense = np.zeros(len(y))
    dense[reference.svc.support_] = reference.svc.dual_coef_[0]
    device_objective, violation = objective_and_violation(kernel, positive, coef, box)
    libsvm_objective, _ = objective_and_violation(kernel, positive, dense, box)
    gap = abs(device_objective - libsvm_objective) / max(1.0, abs(libsvm_objective))
    return gap, violation
