"""Labelling with an exported RBF SVC decides by matrix products (gsrcl/reference/fast_kernel.py):
the same probabilities as scikit-learn's own, the model itself untouched."""

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from gsrcl.reference.fast_kernel import MatrixRBF, with_matrix_kernels


def test_an_rbf_svc_decides_by_matrix_products_as_libsvm_does():
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, 1.0, size=(300, 40))
    y = x[:, 0] + rng.normal(size=300) * 0.3 > 0.6
    for svc in (SVC(gamma="scale", C=10), SVC(gamma=0.05, class_weight="balanced")):
        calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=3, ensemble=False)
        calibrated.fit(x, y)
        faster = with_matrix_kernels(calibrated)
        query = rng.gamma(0.5, 1.0, size=(50, 40)).astype(np.float32)
        inner = faster.calibrated_classifiers_[0].estimator
        assert isinstance(inner, MatrixRBF)
        np.testing.assert_allclose(
            inner.decision_function(query),
            calibrated.calibrated_classifiers_[0].estimator.decision_function(query),
            rtol=1e-9,
            atol=1e-9,
        )
        np.testing.assert_allclose(
            faster.predict_proba(query), calibrated.predict_proba(query), atol=1e-9
        )
        assert isinstance(calibrated.calibrated_classifiers_[0].estimator, SVC)  # untouched


def test_other_classifiers_are_left_as_they_are():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(90, 5)), np.repeat(["a", "b", "c"], 30)
    logistic = LogisticRegression().fit(x, y)
    multiclass = CalibratedClassifierCV(SVC(), cv=3, ensemble=False).fit(x, y)
    linear = CalibratedClassifierCV(SVC(kernel="linear"), cv=3, ensemble=False).fit(x, y == "a")
    for classifier in (logistic, multiclass, linear):
        assert with_matrix_kernels(classifier) is classifier
