"""A class-balanced logistic regression whose balance has a floor.

scikit-learn's `class_weight="balanced"` weighs each type by 1 / its cell count, so a type of 2
reference cells weighs 150 times a type of 300: on a new donor the model then calls ambiguous
cells of common types that rare type (Baron human, donors 1 + 2 → donor 3: 4 acinar, alpha, beta
and ductal cells labelled t_cell beside the one real t_cell, whose F1 falls to 0.33). Here a type
of fewer than `balance_floor` cells is weighted as a type of that many.
Judged on the references' own held-out cells (docs/class-weights.md, `bench/class_weights.py`):
holding each Baron human donor out in turn, the best of floors 20 and 50 differs by reference
(mean of accuracy and macro-F1 0.799 / 0.901 / 0.806 against 0.812 / 0.897 / 0.817), so
`logreg-scaled` searches both with C, leaving each batch out where there are batches: 0.812 /
0.901 / 0.817, above plain balancing (0.795 / 0.886 / 0.812) on all three. Within one
batch (Baron mouse 1, inner folds) plain balancing finds rare types best (0.941 against 0.910),
which is why the plain-balanced `logreg` stays beside it for export's "best" to judge.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


class BalancedLogisticRegression(LogisticRegression):
    """`LogisticRegression` with each cell weighted by n / (types × max(its type's cells,
    balance_floor)): "balanced" for types of at least `balance_floor` cells. Every other
    parameter is LogisticRegression's; `class_weight` stays None (the weights are this one's)."""

    def __init__(self, balance_floor: int = 20, **params) -> None:
        super().__init__(**params)
        self.balance_floor = balance_floor

    @classmethod
    def _get_param_names(cls) -> list[str]:
        # scikit-learn reads parameters from __init__'s signature, where **params hides
        # LogisticRegression's: they are named here so clone and get_params keep them
        return sorted({*LogisticRegression._get_param_names(), "balance_floor"})

    def fit(self, X, y, sample_weight=None) -> BalancedLogisticRegression:
        classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
        weight = len(y) / (len(classes) * np.maximum(counts, self.balance_floor))
        weight = weight[index] if sample_weight is None else weight[index] * sample_weight
        return super().fit(X, y, sample_weight=weight)
