"""The RBF SVC grid search solved on a torch device (the "device" solver).

The same search as `gsrcl.evaluate.kernel_svm` (libsvm): every task × inner split × candidate
of the grid is a C-SVC dual solved by `gsrcl.evaluate.smo` (libsvm's algorithm), all of them in
one batch on the device; each fit's held-out cells are predicted there and only their confusion
counts (or, for AP, decision values) come back; the host ranks the candidates exactly as the
libsvm search does (mean inner-CV score, ties to the first in `ParameterGrid` order) and the
chosen candidate of each task is refit on all training cells. On a GPU the refits of every
candidate are solved in the first batch, so a step is one pass of the solver (a second, small
batch would cost as many kernel launches as the first); elsewhere only the chosen ones are.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_class_weight

from gsrcl.evaluate import smo
from gsrcl.evaluate.kernel_svm import (
    RBFSolver,
    Search,
    Splits,
    best_candidates,
    rbf_gamma,
    squared_distances,
)
from gsrcl.evaluate.metrics import count_scores

log = logging.getLogger(__name__)
# SVC parameters the device solver honours; any other makes "auto" use libsvm
DEVICE_PARAMS = {"C", "gamma", "class_weight", "tol", "kernel"}
# SVC parameters that change libsvm's speed or its logging, not the model
IGNORED_PARAMS = {"cache_size", "shrinking", "verbose", "random_state", "decision_function_shape"}


def unsupported_params(params: dict[str, Any]) -> list[str]:
    """The SVC parameters the device solver cannot honour (kernel must stay "rbf")."""
    odd = sorted(set(params) - DEVICE_PARAMS - IGNORED_PARAMS)
    return odd + (["kernel"] if params.get("kernel", "rbf") != "rbf" else [])


@dataclass
class DeviceSVM:
    """A fitted binary SVC: its dual coefficients over the training cells (zero off the
    support), on the device; it predicts from squared distances to those cells."""

    coef: torch.Tensor
    intercept: float
    gamma: float
    classes_: np.ndarray
    params: dict[str, Any]  # the SVC settings it was fitted with

    def decision_function(self, distances: torch.Tensor) -> np.ndarray:
        kernel = torch.exp(-self.gamma * distances)
        return (kernel @ self.coef + self.intercept).cpu().numpy()

    def predict(self, distances: torch.Tensor) -> np.ndarray:
        # libsvm votes for the second class when the decision value is not above 0
        return self.classes_[(self.decision_function(distances) >= 0).astype(int)]


class DeviceRBF(RBFSolver):
    """The training cells of one fold on a device: their squared distances (float64 for
    predictions, float32 for the solver, as libsvm) and what "scale" needs of any rows."""

    max_iterations: int | None = None  # the device solver's cap (None: smo.solve's default)

    def __init__(self, x_train: np.ndarray, device: str = "cpu") -> None:
        self.x = torch.as_tensor(np.asarray(x_train), dtype=torch.float64, device=device)
        self.train_distances = squared_distances(self.x, self.x)
        self.train_distances.fill_diagonal_(0.0)
        self.solver_distances = self.train_distances.float()
        x64 = np.asarray(x_train, dtype=np.float64)
        self.row_sums, self.row_squares = x64.sum(axis=1), (x64 * x64).sum(axis=1)
        self.batches: list[tuple[int, int, smo.DualSolution]] = []  # (problems, width, answers)

    def distances(self, x: np.ndarray) -> torch.Tensor:
        """Squared distances from other cells (rows) to the training cells (columns)."""
        other = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=self.x.device)
        return squared_distances(other, self.x)

    def gamma(self, value: Any, rows: np.ndarray) -> float:
        def variance() -> float:  # of every value of these rows, from per-row sums
            count = len(rows) * self.x.shape[1]
            mean = self.row_sums[rows].sum() / count
            return max(self.row_squares[rows].sum() / count - mean * mean, 0.0)

        return rbf_gamma(value, self.x.shape[1], variance)

    def _search(
        self, labels: list[np.ndarray], splits: list[Splits], candidates: list[dict], metric: str
    ) -> Search:
        """Binary label vectors only."""
        every_row = np.arange(self.x.shape[0])
        search = [
            (t, s, c, train, test)
            for t, task_splits in enumerate(splits)
            for s, (train, test) in enumerate(task_splits)
            for c in range(len(candidates))
        ]
        problems = [
            problem
            for y, task_splits in zip(labels, splits, strict=True)
            for train, _ in task_splits
            for problem in self._problems(y, train, candidates)
        ]
        speculative = self.x.device.type == "cuda"
        if speculative:  # every candidate's refit, in the same batch
            problems += [p for y in labels for p in self._problems(y, every_row, candidates)]
        solved = self._solve(problems, candidates)
        scores = [np.full((len(candidates), len(s)), np.nan) for s in splits]
        for (t, s, c, _, _), score in zip(
            search, self._held_out_scores(labels, search, solved, metric), strict=True
        ):
            scores[t][c, s] = score
        chosen = best_candidates(scores)
        if speculative:
            picked = [len(search) + t * len(candidates) + c for t, c in enumerate(chosen)]
        else:
            refits = [
                self._problems(y, every_row, [candidates[c]])[0]
                for y, c in zip(labels, chosen, strict=True)
            ]
            solved, picked = self._solve(refits, candidates), list(range(len(labels)))
        models = [
            self._model(solved, k, y, candidates[c])
            for k, y, c in zip(picked, labels, chosen, strict=True)
        ]
        return Search(models, scores, candidates, chosen)

    def _problems(
        self, y: np.ndarray, rows: np.ndarray, candidates: list[dict]
    ) -> list[smo.DualProblem | None]:
        """Each candidate's dual on these rows, or None when they hold one class (a failed fit,
        as in GridSearchCV). Class weights and gammas are resolved once per distinct value:
        this runs on the host for every fit of a step."""
        fit_y = y[rows]
        present = np.unique(fit_y)
        if len(present) < 2:
            return [None] * len(candidates)
        positive = fit_y == present[1]
        weights: dict[str, np.ndarray] = {}
        gammas: dict[Any, float] = {}
        problems = []
        for params in candidates:
            class_weight, gamma = params.get("class_weight"), params.get("gamma", "scale")
            if repr(class_weight) not in weights:
                weights[repr(class_weight)] = compute_class_weight(
                    class_weight, classes=present, y=fit_y
                )
            if gamma not in gammas:
                gammas[gamma] = self.gamma(gamma, rows)
            c, (w_negative, w_positive) = float(params.get("C", 1.0)), weights[repr(class_weight)]
            problems.append(
                smo.DualProblem(rows, positive, gammas[gamma], c * w_negative, c * w_positive)
            )
        return problems

    def _solve(self, problems: list[smo.DualProblem | None], candidates: list[dict]) -> _Solved:
        present = [k for k, p in enumerate(problems) if p is not None]
        tol = float(candidates[0].get("tol", 1e-3))
        batch = [problems[k] for k in present]
        solution = smo.solve(self.solver_distances, batch, tol, max_iterations=self.max_iterations)
        self.batches.append((len(batch), max((len(p.rows) for p in batch), default=0), solution))
        stuck = torch.nonzero(~solution.converged).flatten().tolist()
        if stuck:
            self._solve_on_libsvm([batch[k] for k in stuck], stuck, solution, tol)
        return _Solved(problems, present, solution)

    def _solve_on_libsvm(self, problems, slots: list[int], solution, tol: float) -> None:
        """Problems still above the tolerance at the device solver's cap are fitted by libsvm
        (no cap) on the host, on the kernel the libsvm solver would use, and their answers put
        in those slots: the search answers as the libsvm one would, instead of failing."""
        log.warning(
            "%d of %d SVM fits did not converge on the device within its iteration cap; "
            "fitted by libsvm instead",
            len(slots),
            len(solution.converged),
        )
        for k, problem in zip(slots, problems, strict=True):
            rows = torch.as_tensor(problem.rows, device=self.x.device)
            distances = self.train_distances[rows][:, rows].cpu().numpy()
            box = {False: problem.c_negative, True: problem.c_positive}  # C × class weight
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                svc = SVC(kernel="precomputed", C=1.0, class_weight=box, tol=tol)
                svc.fit(np.exp(-problem.gamma * distances), problem.positive)
            coef = torch.zeros(solution.coef.shape[1], dtype=torch.float64)
            coef[torch.as_tensor(svc.support_)] = torch.as_tensor(svc.dual_coef_[0])
            solution.coef[k] = coef.to(solution.coef.device)
            solution.intercept[k] = float(svc.intercept_[0])
            solution.converged[k] = True

    def _held_out_scores(self, labels, search, solved: _Solved, metric: str) -> list[float]:
        """The inner-CV score of each search fit on its held-out cells (NaN for a failed fit).
        The fits of one task and split share their kernel blocks, one per gamma."""
        scores = [np.nan] * len(search)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (t, s, _, _, _) in enumerate(search):
            if solved.problems[k] is not None:
                groups.setdefault((t, s), []).append(k)
        for (t, _), members in groups.items():
            _, _, _, train, test = search[members[0]]
            y = labels[t]
            truth = torch.as_tensor(y[test] == np.unique(y)[-1], device=self.x.device)
            decisions = self._decisions(self.train_distances[test][:, train], solved, members)
            for k, score in zip(members, _score(metric, truth, decisions), strict=True):
                scores[k] = score
        return scores

    def _decisions(self, distances: torch.Tensor, solved: _Solved, members: list[int]):
        """Decision values (fits × cells) of these fits, one kernel per distinct gamma."""
        out = torch.empty(
            (len(members), distances.shape[0]), dtype=torch.float64, device=distances.device
        )
        by_gamma: dict[float, list[int]] = {}
        for m, k in enumerate(members):
            by_gamma.setdefault(solved.problems[k].gamma, []).append(m)
        for gamma, positions in by_gamma.items():
            fits = [solved.slot[members[m]] for m in positions]
            coef = solved.solution.coef[fits, : distances.shape[1]]
            out[positions] = (torch.exp(-gamma * distances) @ coef.T).T
            out[positions] += solved.solution.intercept[fits][:, None]
        return out

    def _model(self, solved: _Solved, k: int, y: np.ndarray, params: dict) -> DeviceSVM:
        problem = solved.problems[k]
        if problem is None:
            raise ValueError("the training cells hold a single class")
        slot = solved.slot[k]
        coef = torch.zeros(self.x.shape[0], dtype=torch.float64, device=self.x.device)
        coef[torch.as_tensor(problem.rows, device=self.x.device)] = solved.solution.coef[
            slot, : len(problem.rows)
        ]
        intercept = float(solved.solution.intercept[slot])
        return DeviceSVM(coef, intercept, problem.gamma, np.unique(y), params)


class _Solved:
    """A solver's answers addressed by problem number (failed fits are None in `problems`)."""

    def __init__(self, problems, present: list[int], solution: smo.DualSolution) -> None:
        self.problems = problems
        self.slot = {k: i for i, k in enumerate(present)}
        self.solution = solution


def _score(metric: str, truth: torch.Tensor, decisions: torch.Tensor) -> np.ndarray:
    """The metric of each row of decision values against the same true labels; for MCC and F1
    only the confusion counts leave the device."""
    if metric == "ap":
        y = truth.cpu().numpy()
        return np.array([average_precision_score(y, d) for d in decisions.cpu().numpy()])
    predicted = decisions >= 0
    counts = (
        torch.stack(
            [predicted.sum(dim=1), (predicted == truth).sum(dim=1), (predicted & truth).sum(dim=1)]
        )
        .cpu()
        .numpy()
    )
    n, true = np.full(len(decisions), len(truth)), np.full(len(decisions), int(truth.sum()))
    return count_scores(metric, n, true, counts[0], counts[1], counts[2])
