"""An exported RBF SVC's decisions by matrix products, for labelling.

libsvm evaluates its kernel one pair of cells at a time in scalar code: Baron Mouse's exported
SVM on expression (244 support vectors of 14 359 genes for a type) decides about 50 cells a
second per type, so a million query cells would take days. The same sum,
Σ_i dual_i · exp(-gamma · |x - sv_i|²) + b, from one matrix product of the cells with the
support vectors is hundreds of times faster and equal to rounding (tests/test_annotate.py).
Only the labelling uses it; the model files keep scikit-learn's own SVC.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC


class MatrixRBF(ClassifierMixin, BaseEstimator):
    """A fitted binary RBF `SVC`'s decision function by matrix products (predictions only)."""

    def __init__(self, svc: SVC) -> None:
        self.svc = svc

    @property
    def classes_(self) -> np.ndarray:
        return self.svc.classes_

    def decision_function(self, x: Any) -> np.ndarray:
        x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)
        vectors = self.svc.support_vectors_
        distances = (
            (x * x).sum(axis=1)[:, None]
            - 2.0 * (x @ vectors.T)
            + (vectors * vectors).sum(axis=1)[None, :]
        )
        np.maximum(distances, 0.0, out=distances)
        kernel = np.exp(-self.svc._gamma * distances, out=distances)
        return kernel @ self.svc.dual_coef_[0] + self.svc.intercept_[0]


def with_matrix_kernels(classifier: Any) -> Any:
    """`classifier` with each binary RBF SVC it calibrates deciding by matrix products: a
    shallow copy (the classifier given is left as it is), or the classifier itself when it
    holds no such SVC."""
    calibrated = getattr(classifier, "calibrated_classifiers_", None)
    if not calibrated or not all(_binary_rbf(inner.estimator) for inner in calibrated):
        return classifier
    faster = copy.copy(classifier)
    faster.calibrated_classifiers_ = []
    for inner in calibrated:
        inner = copy.copy(inner)
        inner.estimator = MatrixRBF(inner.estimator)
        faster.calibrated_classifiers_.append(inner)
    return faster


def _binary_rbf(estimator: Any) -> bool:
    return (
        isinstance(estimator, SVC)
        and estimator.kernel == "rbf"
        and len(estimator.classes_) == 2
        and not sparse.issparse(estimator.support_vectors_)
    )
