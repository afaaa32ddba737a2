"""The scores: MCC, F1 and AP of binary tasks.

MCC and F1 of many predictions at once come from their confusion counts (`count_scores`), with
scikit-learn's float64 arithmetic, so a solver that counts on its device scores exactly as
scikit-learn would from the predictions themselves.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, matthews_corrcoef

# scikit-learn scorer names for the selection metric: (binary task, multi-class labels)
SKLEARN_SCORERS = {
    "mcc": ("matthews_corrcoef", "matthews_corrcoef"),
    "f1": ("f1", "f1_macro"),
    "ap": ("average_precision", "average_precision"),
}


def mcc_from_counts(
    n: np.ndarray, true: np.ndarray, predicted: np.ndarray, correct: np.ndarray
) -> np.ndarray:
    """`matthews_corrcoef` of binary predictions from their counts (cells, true positives +
    false negatives, predicted positives, correct), as scikit-learn computes it."""
    n, t1, p1, correct = (np.asarray(a, dtype=np.float64) for a in (n, true, predicted, correct))
    t0, p0 = n - t1, n - p1
    cov_ytyp = correct * n - (t0 * p0 + t1 * p1)
    cov_ypyp = n * n - (p0 * p0 + p1 * p1)
    cov_ytyt = n * n - (t0 * t0 + t1 * t1)
    product = cov_ytyt * cov_ypyp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(product == 0, 0.0, cov_ytyp / np.sqrt(product))


def f1_from_counts(true_positive: np.ndarray, true: np.ndarray, predicted: np.ndarray):
    """`f1_score(zero_division=0)` of binary predictions from their counts."""
    tp = np.asarray(true_positive, dtype=np.float64)
    denominator = np.asarray(true, dtype=np.float64) + np.asarray(predicted, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator == 0, 0.0, 2 * tp / denominator)


def count_scores(metric: str, n, true, predicted, correct, true_positive) -> np.ndarray:
    """A hard metric ("mcc" or "f1") of many binary predictions, from their counts."""
    if metric == "mcc":
        return mcc_from_counts(n, true, predicted, correct)
    return f1_from_counts(true_positive, true, predicted)


def fast_mcc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """`matthews_corrcoef` for binary labels without its input validation (3 ms a call; the grid
    search makes thousands of calls per snapshot)."""
    counts = (
        len(y_true),
        np.count_nonzero(y_true),
        np.count_nonzero(y_pred),
        np.count_nonzero(y_true == y_pred),
    )
    return float(mcc_from_counts(*counts))


HARD_METRICS = {"mcc": fast_mcc, "f1": partial(f1_score, zero_division=0)}


def binary_scores(positive: np.ndarray, predicted: np.ndarray, score: np.ndarray) -> dict:
    """MCC and F1 from hard predictions, AP from the continuous scores."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined MCC/F1 are 0, as scikit-learn returns them
        return {
            "mcc": float(matthews_corrcoef(positive, predicted)),
            "f1": float(f1_score(positive, predicted, zero_division=0)),
            "ap": float(average_precision_score(positive, score)),
        }
